//! The `consistent_hash` crate's `StaticHashRing`, fed exactly the inputs of the
//! setgate-routing/1 contract. Shared by `tests/crate_equivalence.rs` (same mapping as
//! `setgate-router`) and `benches/lookup.rs` (why the router does not look up through it).
//!
//! The crate's `RingHash` only ever sees values through `std::hash::Hash`, whose byte stream
//! for `str` is not a contract (it appends `0xff`). So nothing of `str` is hashed: SET names
//! are wrapped in [`SetName`], whose `Hash` writes exactly the UTF-8 bytes, and keys are
//! hashed beforehand and wrapped in [`Point`], whose `Hash` writes exactly that `u64`.

use std::hash::{Hash, Hasher};

use consistent_hash::{Node, RingHash, StaticHashRing};

/// A SET name whose `Hash` writes its UTF-8 bytes and nothing else.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SetName(pub String);

impl Hash for SetName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

/// A key's precomputed point, XXH64(key); its `Hash` writes that `u64` and nothing else.
pub struct Point(pub u64);

impl Hash for Point {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

/// Collects the exact bytes a `Hash` impl writes.
struct Bytes(Vec<u8>);

impl Hasher for Bytes {
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only the collected bytes are used")
    }
}

/// Returns the one `u64` a [`Point`] writes.
struct PassThrough(Option<u64>);

impl Hasher for PassThrough {
    fn write(&mut self, _: &[u8]) {
        panic!("only a Point may be looked up: any other type's Hash bytes are not the contract");
    }
    fn write_u64(&mut self, point: u64) {
        self.0 = Some(point);
    }
    fn finish(&self) -> u64 {
        self.0.expect("a Point writes one u64")
    }
}

/// XXH64 (seed 0) of `name#index` for virtual nodes; pass-through for [`Point`]s.
pub struct Xxh64Ring;

impl RingHash for Xxh64Ring {
    fn hash_item<T: Hash>(&self, item: &T) -> u64 {
        let mut hasher = PassThrough(None);
        item.hash(&mut hasher);
        hasher.finish()
    }

    fn hash_vnode<K: Hash>(&self, node_key: &K, vnode_seq: usize) -> u64 {
        let mut bytes = Bytes(Vec::new());
        node_key.hash(&mut bytes);
        bytes.0.push(b'#');
        bytes.0.extend_from_slice(vnode_seq.to_string().as_bytes());
        xxhash_rust::xxh64::xxh64(&bytes.0, 0)
    }
}

/// The crate's ring for (name, weight) SETs: `weight * V` virtual nodes each.
pub fn build(sets: &[(&str, u32)]) -> StaticHashRing<'static, SetName, (), Xxh64Ring> {
    let v = setgate_router::VNODES_PER_WEIGHT as usize;
    StaticHashRing::new(
        Xxh64Ring,
        sets.iter().map(|&(name, weight)| {
            Node::new(SetName(name.to_owned())).quantity(weight as usize * v)
        }),
    )
}

/// The SET the crate's ring picks for `key`.
pub fn owner<'r>(
    ring: &'r StaticHashRing<'static, SetName, (), Xxh64Ring>,
    key: &str,
) -> Option<&'r str> {
    ring.calc_candidates(&Point(setgate_router::key_hash(key)))
        .next()
        .map(|node| node.key.0.as_str())
}
