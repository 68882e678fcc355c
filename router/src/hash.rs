//! The only hash in the mapping: XXH64 with seed 0, over exact bytes.
//!
//! XXH64's output is fixed by its published definition, so any language can recompute a route.
//! `std`'s `DefaultHasher` is explicitly unstable across releases, and `impl Hash for str` feeds
//! the hasher an extra `0xff` byte, so neither may ever touch a key: everything here hashes a byte
//! slice directly.

use std::io::Write;

/// XXH64 of the key's UTF-8 bytes, seed 0: the key's point on the ring, and the bucket hash for
/// non-numeric keys.
#[inline]
pub fn key_hash(key: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(key.as_bytes(), 0)
}

/// Writes the bytes that name virtual node `index` of SET `set`: the SET name, `#`, then `index`
/// in decimal ASCII without leading zeros (`set-a#0`, `set-a#4095`).
///
/// The last `#` splits the string unambiguously (the index has no `#`), so two different
/// (SET, index) pairs never share bytes even if a SET name contains `#`.
pub(crate) fn vnode_bytes(buf: &mut Vec<u8>, set: &str, index: u64) {
    buf.clear();
    buf.extend_from_slice(set.as_bytes());
    buf.push(b'#');
    write!(buf, "{index}").expect("writing to a Vec cannot fail");
}

/// XXH64 of [`vnode_bytes`], seed 0: where virtual node `index` of `set` sits on the ring.
/// `buf` is scratch space, reused so that building a large ring does not allocate per node.
pub(crate) fn vnode_point(buf: &mut Vec<u8>, set: &str, index: u64) -> u64 {
    vnode_bytes(buf, set, index);
    xxhash_rust::xxh64::xxh64(buf, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from xxHash's own implementation (`xxhsum -H1`), so a change of hash
    /// crate that altered the output would be caught here, not in production.
    #[test]
    fn xxh64_matches_the_reference_implementation() {
        assert_eq!(key_hash(""), 0xEF46_DB37_51D8_E999);
        assert_eq!(key_hash("a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(key_hash("abc"), 0x44BC_2CF5_AD77_0999);
        assert_eq!(key_hash("xxhash"), 0x32DD_3895_2C4B_C720);
        assert_eq!(
            key_hash("Nobody inspects the spammish repetition"),
            0xFBCE_A83C_8A37_8BF1
        );
    }

    #[test]
    fn vnode_names_are_set_hash_decimal_index() {
        let mut buf = Vec::new();
        vnode_bytes(&mut buf, "set-a", 0);
        assert_eq!(buf, b"set-a#0");
        vnode_bytes(&mut buf, "set-a", 4095);
        assert_eq!(buf, b"set-a#4095");
        vnode_bytes(&mut buf, "müller#1", 10);
        assert_eq!(buf, "müller#1#10".as_bytes());
        assert_eq!(vnode_point(&mut buf, "set-a", 7), key_hash("set-a#7"));
    }
}
