//! The encoded length of a field-table value, read from its type octet and bytes: what walking a
//! table where it lies (without parsing it) needs. The types are amq-protocol's, which are
//! RabbitMQ's.

/// The encoded length of a value of type `kind` whose bytes start `rest` (a table or an array
/// with its size prefix, a long string or byte array with theirs); `None` for a type nobody
/// defined, or a size prefix cut short.
pub fn value_len(kind: u8, rest: &[u8]) -> Option<usize> {
    Some(match kind {
        b'V' => 0,
        b't' | b'b' | b'B' => 1,
        // `s` is a 16-bit integer in RabbitMQ's tables (not a short string).
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'L' | b'l' | b'd' | b'T' => 8,
        b'S' | b'x' | b'A' | b'F' => {
            let s = rest.get(..4)?;
            4 + u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize
        }
        _ => return None,
    })
}
