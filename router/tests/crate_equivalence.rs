//! The router's own ring and the `consistent_hash` crate's `StaticHashRing` are the same
//! mapping: first virtual node at or after the key's point, wrapping, ties by SET name.

mod common;
mod crate_ring;

#[test]
fn router_ring_and_consistent_hash_crate_agree_key_for_key() {
    for sets in [
        &[("set-a", 1), ("set-b", 1), ("set-c", 1)][..],
        &[("set-a", 1), ("set-b", 2), ("set-c", 3), ("set-d", 4)][..],
        &[("müller", 1), ("a#1", 1), ("a", 0)][..],
    ] {
        let router = setgate_router::Router::new(&common::weighted(sets)).unwrap();
        let ring = crate_ring::build(sets);
        for i in 0..5_000 {
            let key = format!("user-{i}");
            assert_eq!(
                router.route(Some(&key)).set,
                crate_ring::owner(&ring, &key),
                "{key} in {sets:?}"
            );
        }
    }
}
