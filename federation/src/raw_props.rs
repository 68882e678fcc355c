//! Republishing a message's properties from the bytes they arrived as.
//!
//! A forwarded message keeps every property but two: its headers gain an entry (federation's
//! `x-received-from`) and `user_id` goes unless the upstream is trusted. Parsing the content
//! header into amq-protocol's types and encoding it again was a fifth of setgate's CPU per
//! forwarded message (every string and header an allocation, both ways). Here the property
//! fields are walked where they lie and copied, the new entry appended to the headers table as
//! bytes encoded once per flow.
//!
//! It covers what needs no decision about the content: a message whose headers already hold
//! the entry's key (a second hop, whose hop count and cycle check need the parsed array), or
//! properties in a shape it does not walk (continued flag words, unknown field types), is left
//! to the parsing path, which [`splice`] says by returning `false`.
//!
//! A routed destination reads each message's key the same way, where it lies
//! ([`short_string`], [`header`]), so that choosing a SET parses nothing either.

use setgate_amqp::field::value_len;
use setgate_amqp::nesting::MAX_DEPTH;

/// Property flags, in the order their fields follow (AMQP 0-9-1, class basic).
const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
pub(crate) const CORRELATION_ID: u16 = 1 << 10;
pub(crate) const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
pub(crate) const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
pub(crate) const TYPE: u16 = 1 << 5;
pub(crate) const USER_ID: u16 = 1 << 4;
pub(crate) const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;
/// Bit 0 says another flag word follows; bit 1 is unused in class basic.
const UNWALKED: u16 = 0b11;

/// How to republish: what to add to the headers, and when to leave it to the parsing path.
#[derive(Debug, Clone, Default)]
pub(crate) struct Splice {
    /// A headers table entry (key, type, value) to append, as encoded; empty for none.
    pub entry: Vec<u8>,
    /// The entry's key: a message whose headers already hold it is not spliced.
    pub key: Option<&'static str>,
    /// Keep `user_id` (a trusted upstream); otherwise it is dropped.
    pub keep_user_id: bool,
}

/// Writes to `out` the republished form of `raw` (a content header's property flags and
/// fields, as read). `false`, with `out` unspecified, when the parsing path must do it.
pub(crate) fn splice(raw: &[u8], how: &Splice, out: &mut Vec<u8>) -> bool {
    out.clear();
    let Some(flags) = raw.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return false;
    };
    if flags & UNWALKED != 0 {
        return false;
    }
    let mut out_flags = flags;
    if !how.entry.is_empty() {
        out_flags |= HEADERS;
    }
    if !how.keep_user_id {
        out_flags &= !USER_ID;
    }
    out.extend_from_slice(&out_flags.to_be_bytes());
    let mut at = 2;
    let mut headers_done = false;
    for bit in [
        CONTENT_TYPE,
        CONTENT_ENCODING,
        HEADERS,
        DELIVERY_MODE,
        PRIORITY,
        CORRELATION_ID,
        REPLY_TO,
        EXPIRATION,
        MESSAGE_ID,
        TIMESTAMP,
        TYPE,
        USER_ID,
        APP_ID,
        CLUSTER_ID,
    ] {
        if bit == HEADERS && !how.entry.is_empty() && flags & HEADERS == 0 {
            out.extend_from_slice(&(how.entry.len() as u32).to_be_bytes());
            out.extend_from_slice(&how.entry);
            headers_done = true;
        }
        if flags & bit == 0 {
            continue;
        }
        let Some(field) = field_at(raw, at, bit) else {
            return false;
        };
        at += field.len();
        match bit {
            HEADERS if !how.entry.is_empty() => {
                let table = &field[4..];
                if how.key.is_some_and(|k| has_key(table, k) != Some(false)) {
                    return false;
                }
                let size = table.len() + how.entry.len();
                let Ok(size) = u32::try_from(size) else {
                    return false;
                };
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(table);
                out.extend_from_slice(&how.entry);
                headers_done = true;
            }
            HEADERS => {
                if how
                    .key
                    .is_some_and(|k| has_key(&field[4..], k) != Some(false))
                {
                    return false;
                }
                out.extend_from_slice(field);
            }
            USER_ID if !how.keep_user_id => {}
            _ => out.extend_from_slice(field),
        }
    }
    debug_assert!(headers_done || how.entry.is_empty());
    at == raw.len()
}

/// The property `bit`'s field as encoded (with its size prefix, if it has one), where it
/// starts at `at`.
fn field_at(raw: &[u8], at: usize, bit: u16) -> Option<&[u8]> {
    let rest = raw.get(at..)?;
    let len = match bit {
        DELIVERY_MODE | PRIORITY => 1,
        TIMESTAMP => 8,
        HEADERS => 4 + long_len(rest)?,
        _ => 1 + usize::from(*rest.first()?),
    };
    rest.get(..len)
}

/// The field of property `want` (one flag bit) in `raw` (a content header's property flags and
/// fields, as read): `Some(None)` when the message does not have it, `None` when the fields
/// before it cannot be walked.
fn field(raw: &[u8], want: u16) -> Option<Option<&[u8]>> {
    let flags = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
    if flags & UNWALKED != 0 {
        return None;
    }
    if flags & want == 0 {
        return Some(None);
    }
    let mut at = 2;
    let mut bit = CONTENT_TYPE;
    while bit != want {
        if flags & bit != 0 {
            at += field_at(raw, at, bit)?.len();
        }
        bit >>= 1;
    }
    field_at(raw, at, want).map(Some)
}

/// A short-string property (`want` one of [`CORRELATION_ID`], [`REPLY_TO`], [`MESSAGE_ID`],
/// [`TYPE`], [`USER_ID`], [`APP_ID`]), without its size; as [`field`] says.
pub(crate) fn short_string(raw: &[u8], want: u16) -> Option<Option<&[u8]>> {
    debug_assert!(want & (CORRELATION_ID | REPLY_TO | MESSAGE_ID | TYPE | USER_ID | APP_ID) != 0);
    Some(field(raw, want)?.map(|f| &f[1..]))
}

/// The value of header `name`: its type and its bytes (a long string with its size prefix);
/// `Some(None)` when the message has no such header, `None` when the properties or the
/// headers table cannot be walked. A name repeated in the table reads as its last value, as
/// a parsed table keeps it.
pub(crate) fn header<'a>(raw: &'a [u8], name: &str) -> Option<Option<(u8, &'a [u8])>> {
    match field(raw, HEADERS)? {
        Some(f) => table_entry(&f[4..], name),
        None => Some(None),
    }
}

/// The last entry of a field table's entries (`table`, without its size) with key `key`: its
/// type and value bytes; `None` when the table cannot be walked.
pub(crate) fn table_entry<'a>(table: &'a [u8], key: &str) -> Option<Option<(u8, &'a [u8])>> {
    let mut at = 0;
    let mut found = None;
    while at < table.len() {
        let n = usize::from(*table.get(at)?);
        let k = table.get(at + 1..at + 1 + n)?;
        at += 1 + n;
        let kind = *table.get(at)?;
        let len = value_len(kind, table.get(at + 1..)?)?;
        let value = table.get(at + 1..at + 1 + len)?;
        if k == key.as_bytes() {
            found = Some((kind, value));
        }
        at += 1 + len;
    }
    Some(found)
}

/// The properties `raw` with every short string made UTF-8: property values and the keys of
/// the headers table and of the tables nested in it, each invalid sequence replaced by U+FFFD
/// (and cut to 255 bytes on a character boundary). amq-protocol refuses a short string that
/// is not UTF-8; RabbitMQ, whose strings are bytes, accepts and delivers it, so a message with
/// one would otherwise stop every flow that must parse it, at each redelivery. Long strings
/// are bytes to amq-protocol too and are kept as they are. `None` when the properties cannot
/// be walked (continued flag words, an unknown field type, cut short).
pub(crate) fn utf8_lossy(raw: &[u8]) -> Option<Vec<u8>> {
    let flags = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
    if flags & UNWALKED != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len() + 16);
    out.extend_from_slice(&raw[..2]);
    let mut at = 2;
    let mut bit = CONTENT_TYPE;
    while bit >= CLUSTER_ID {
        if flags & bit != 0 {
            let field = field_at(raw, at, bit)?;
            at += field.len();
            match bit {
                DELIVERY_MODE | PRIORITY | TIMESTAMP => out.extend_from_slice(field),
                HEADERS => lossy_entries(&field[4..], true, 1, &mut out)?,
                _ => push_short_lossy(&field[1..], &mut out),
            }
        }
        bit >>= 1;
    }
    (at == raw.len()).then_some(out)
}

/// Writes a field table's (`keyed`) or array's entries with their size prefix, keys made
/// UTF-8; nested tables and arrays likewise, down to nesting level `depth` (the headers table
/// is 1) of at most [`MAX_DEPTH`].
fn lossy_entries(entries: &[u8], keyed: bool, depth: usize, out: &mut Vec<u8>) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    let size_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut at = 0;
    while at < entries.len() {
        if keyed {
            let n = usize::from(*entries.get(at)?);
            push_short_lossy(entries.get(at + 1..at + 1 + n)?, out);
            at += 1 + n;
        }
        let kind = *entries.get(at)?;
        let rest = entries.get(at + 1..)?;
        let len = value_len(kind, rest)?;
        out.push(kind);
        match kind {
            b'F' | b'A' => lossy_entries(rest.get(4..len)?, kind == b'F', depth + 1, out)?,
            _ => out.extend_from_slice(rest.get(..len)?),
        }
        at += 1 + len;
    }
    let size = u32::try_from(out.len() - size_at - 4).ok()?;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    Some(())
}

/// Writes `s` as a short string (size octet, then bytes), made UTF-8 and kept within 255 bytes.
fn push_short_lossy(s: &[u8], out: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(s);
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&text.as_bytes()[..end]);
}

/// The length a long (u32) size prefix announces.
fn long_len(b: &[u8]) -> Option<usize> {
    let b = b.get(..4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Whether a field table's entries (`table`, without its size) hold `key`; `None` when they
/// cannot be walked.
fn has_key(table: &[u8], key: &str) -> Option<bool> {
    table_entry(table, key).map(|e| e.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hops::{outgoing_properties, with_received_from, Origin};
    use amq_protocol::frame::WriteContext;
    use amq_protocol::protocol::basic::{gen_properties, parse_properties, AMQPProperties};
    use amq_protocol::types::generation::gen_field_table;
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};

    fn encode(p: &AMQPProperties) -> Vec<u8> {
        gen_properties(p)(WriteContext::from(Vec::new()))
            .unwrap()
            .into_inner()
            .0
    }

    fn origin() -> Origin {
        Origin {
            uri: "amqp://dc1:5672/%2f".into(),
            exchange: "orders".into(),
            cluster_name: "dc1".into(),
            vhost: "/".into(),
        }
    }

    /// Federation's splice: the `x-received-from` table for a message with no headers, less
    /// its size prefix, is the entry appended.
    fn federation(keep_user_id: bool, redelivered: bool) -> Splice {
        let table = with_received_from(None, &origin(), redelivered);
        let bytes = gen_field_table(&table)(WriteContext::from(Vec::new()))
            .unwrap()
            .into_inner()
            .0;
        Splice {
            entry: bytes[4..].to_vec(),
            key: Some("x-received-from"),
            keep_user_id,
        }
    }

    /// The parsing path's answer, to compare with.
    fn parsed(p: &AMQPProperties, keep_user_id: bool, redelivered: bool) -> AMQPProperties {
        let headers = with_received_from(p.headers().as_ref(), &origin(), redelivered);
        outgoing_properties(p, headers, keep_user_id)
    }

    fn headers() -> FieldTable {
        let mut nested = FieldTable::default();
        nested.insert("n".into(), AMQPValue::ShortShortInt(-3));
        let mut h = FieldTable::default();
        h.insert("ts_ns".into(), AMQPValue::LongLongInt(1_700_000_000_000));
        h.insert("x-user-id".into(), AMQPValue::LongString("user-7".into()));
        h.insert("flag".into(), AMQPValue::Boolean(true));
        h.insert("small".into(), AMQPValue::ShortInt(-2));
        h.insert("ratio".into(), AMQPValue::Double(0.5));
        h.insert("at".into(), AMQPValue::Timestamp(1_700_000_000));
        h.insert("nested".into(), AMQPValue::FieldTable(nested));
        h.insert(
            "list".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongInt(1)])),
        );
        h.insert("bytes".into(), AMQPValue::ByteArray(vec![1, 2, 3].into()));
        h.insert("nothing".into(), AMQPValue::Void);
        h.insert("text".into(), AMQPValue::LongString(LongString::from("é")));
        h
    }

    fn cases() -> Vec<AMQPProperties> {
        let all = AMQPProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("gzip".into())
            .with_headers(headers())
            .with_delivery_mode(2)
            .with_priority(5)
            .with_correlation_id("c-1".into())
            .with_reply_to("replies".into())
            .with_expiration("60000".into())
            .with_message_id("m-1".into())
            .with_timestamp(1_700_000_000)
            .with_type("order.created".into())
            .with_user_id("guest".into())
            .with_app_id("shop".into())
            .with_cluster_id("c".into());
        vec![
            AMQPProperties::default(),
            AMQPProperties::default().with_delivery_mode(2),
            AMQPProperties::default()
                .with_delivery_mode(2)
                .with_message_id("42".into())
                .with_headers(headers()),
            AMQPProperties::default().with_headers(FieldTable::default()),
            AMQPProperties::default()
                .with_user_id("guest".into())
                .with_app_id("a".into()),
            all,
        ]
    }

    #[test]
    fn a_spliced_header_reads_as_the_parsing_path_writes_it() {
        for (i, p) in cases().iter().enumerate() {
            for keep in [false, true] {
                for redelivered in [false, true] {
                    let mut out = Vec::new();
                    assert!(
                        splice(&encode(p), &federation(keep, redelivered), &mut out),
                        "{i}"
                    );
                    let (rest, got) = parse_properties(out.as_slice()).expect("parses");
                    assert!(rest.is_empty(), "case {i}: {} bytes left", rest.len());
                    assert_eq!(got, parsed(p, keep, redelivered), "case {i} keep {keep}");
                }
            }
        }
    }

    #[test]
    fn without_an_entry_only_user_id_changes() {
        for (i, p) in cases().iter().enumerate() {
            let mut out = Vec::new();
            let plain = Splice::default();
            assert!(splice(&encode(p), &plain, &mut out), "{i}");
            let (_, got) = parse_properties(out.as_slice()).unwrap();
            let want = match p.headers() {
                Some(h) => outgoing_properties(p, h.clone(), false),
                None => outgoing_properties(p, FieldTable::default(), false),
            };
            assert_eq!(got.user_id(), &None);
            assert_eq!(got.headers(), p.headers(), "{i}");
            assert_eq!(got.message_id(), want.message_id());
            assert_eq!(got.app_id(), want.app_id());
        }
    }

    #[test]
    fn a_second_hop_and_unknown_shapes_are_left_to_the_parsing_path() {
        let how = federation(false, false);
        let hopped = with_received_from(None, &origin(), false);
        let p = AMQPProperties::default().with_headers(hopped);
        let mut out = Vec::new();
        assert!(!splice(&encode(&p), &how, &mut out), "a second hop");
        // A flag word that says another follows.
        assert!(!splice(&[0, 1, 0, 0], &how, &mut out));
        // Cut short, and an unknown field type in the headers.
        let full = encode(&cases()[5]);
        assert!(!splice(&full[..full.len() - 1], &how, &mut out));
        // Headers {k: ?}: a field type nobody defined.
        let mut odd = vec![0x20, 0, 0, 0, 0, 3, 1, b'k', b'?'];
        assert!(!splice(&odd, &how, &mut out));
        odd[8] = b'V';
        assert!(splice(&odd, &how, &mut out), "void is a type");
    }

    /// `encoded` with every occurrence of `from` (a placeholder amq-protocol wrote) replaced by
    /// `to`, of the same length: bytes amq-protocol would refuse to write.
    fn patched(encoded: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let mut out = encoded.to_vec();
        let mut found = 0;
        let mut i = 0;
        while i + from.len() <= out.len() {
            if &out[i..i + from.len()] == from {
                out[i..i + from.len()].copy_from_slice(to);
                found += 1;
                i += from.len();
            } else {
                i += 1;
            }
        }
        assert!(found > 0, "placeholder {from:?} not found");
        out
    }

    #[test]
    fn properties_already_utf8_come_out_of_the_repair_unchanged() {
        for (i, p) in cases().iter().enumerate() {
            let raw = encode(p);
            assert_eq!(
                utf8_lossy(&raw).as_deref(),
                Some(raw.as_slice()),
                "case {i}"
            );
        }
    }

    #[test]
    fn short_strings_that_are_not_utf8_are_made_utf8_and_all_else_kept() {
        // A property, a header key, a key in a table inside an array inside the headers, and a
        // long string (bytes to amq-protocol, kept as they are).
        let mut inner = FieldTable::default();
        inner.insert("KKKK".into(), AMQPValue::LongInt(7));
        let mut h = headers();
        h.insert("KKKK".into(), AMQPValue::LongString("LLLL".into()));
        h.insert(
            "deep".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(inner)])),
        );
        let p = AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(h)
            .with_delivery_mode(2)
            .with_message_id("ZZZZ".into())
            .with_timestamp(1_700_000_000)
            .with_app_id("app".into());
        let raw = patched(&encode(&p), b"ZZZZ", &[0xFF, b'a', 0xC3, b'b']);
        let raw = patched(&raw, b"KKKK", &[b'k', 0x80, 0x80, b'!']);
        let raw = patched(&raw, b"LLLL", &[0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(
            parse_properties(raw.as_slice()).is_err(),
            "amq-protocol refuses it"
        );
        let repaired = utf8_lossy(&raw).expect("walked");
        let (rest, got) = parse_properties(repaired.as_slice()).expect("parses once repaired");
        assert!(rest.is_empty());
        assert_eq!(
            got.message_id().as_ref().map(|m| m.as_str()),
            Some("\u{FFFD}a\u{FFFD}b")
        );
        let key = "k\u{FFFD}\u{FFFD}!";
        let gh = got.headers().as_ref().unwrap().inner();
        assert_eq!(
            gh.get(key),
            Some(&AMQPValue::LongString(vec![0xFF; 4].into()))
        );
        let AMQPValue::FieldArray(deep) = &gh["deep"] else {
            panic!("deep: {:?}", gh["deep"]);
        };
        let AMQPValue::FieldTable(t) = &deep.as_slice()[0] else {
            panic!("{deep:?}");
        };
        assert_eq!(t.inner().get(key), Some(&AMQPValue::LongInt(7)));
        // Everything else as it was.
        let mut want = headers();
        for (k, v) in want.inner().iter() {
            assert_eq!(gh.get(k.as_str()), Some(v), "header {k}");
        }
        want.insert(key.into(), AMQPValue::Void);
        assert_eq!(gh.len(), want.inner().len() + 1, "plus deep");
        assert_eq!(got.content_type(), p.content_type());
        assert_eq!(got.delivery_mode(), p.delivery_mode());
        assert_eq!(got.timestamp(), p.timestamp());
        assert_eq!(got.app_id(), p.app_id());
    }

    #[test]
    fn a_repaired_short_string_stays_within_255_bytes_on_a_character_boundary() {
        // 255 invalid bytes become 255 replacement characters of 3 bytes each: cut to 85.
        let p = AMQPProperties::default().with_correlation_id("Z".repeat(255).as_str().into());
        let raw = patched(&encode(&p), &[b'Z'; 255], &[0xFF; 255]);
        let (_, got) = parse_properties(utf8_lossy(&raw).unwrap().as_slice()).unwrap();
        let id = got.correlation_id().as_ref().unwrap().as_str().to_string();
        assert_eq!(id, "\u{FFFD}".repeat(85));
    }

    #[test]
    fn what_cannot_be_walked_is_not_repaired() {
        // A continued flag word; an unknown field type; cut short.
        assert_eq!(utf8_lossy(&[0, 1, 0, 0]), None);
        assert_eq!(utf8_lossy(&[0x20, 0, 0, 0, 0, 3, 1, b'k', b'?']), None);
        let full = encode(&cases()[5]);
        assert_eq!(utf8_lossy(&full[..full.len() - 1]), None);
        // Nested past the limit: the headers table, then MAX_DEPTH tables each inside the last
        // (built as bytes).
        let mut table: Vec<u8> = Vec::new();
        for _ in 0..MAX_DEPTH {
            let mut outer = vec![1u8, b'a', b'F'];
            outer.extend_from_slice(&(table.len() as u32).to_be_bytes());
            outer.extend_from_slice(&table);
            table = outer;
        }
        let mut raw = vec![0x20, 0];
        raw.extend_from_slice(&(table.len() as u32).to_be_bytes());
        raw.extend_from_slice(&table);
        assert_eq!(utf8_lossy(&raw), None);
        // One level less is walked: the innermost table is at the limit.
        let inner = &table[7..];
        let mut raw = vec![0x20, 0];
        raw.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        raw.extend_from_slice(inner);
        assert!(utf8_lossy(&raw).is_some());
    }
}
