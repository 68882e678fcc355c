//! Golden vectors: the mapping, frozen.
//!
//! CHANGING ANY VALUE IN THIS FILE BREAKS EVERY DEPLOYED EDGE: users would silently move to
//! another SET. These values were computed once by an independent Python implementation
//! written from ROUTING.md alone (python-xxhash), then frozen. If a test here fails, the code
//! changed the contract; fix the code, or bump `CONTRACT_VERSION` and migrate deliberately.

mod common;

use setgate_router::{key_hash, Reason, CONTRACT_VERSION, VNODES_PER_WEIGHT};

/// The consistent-hash table the vectors are for.
const HASH_CONFIG: &str = r#"
    default = "center"
    sets = [
      { name = "set-a", pool = "pool-a" },
      { name = "set-b", pool = "pool-b" },
      { name = "set-c", pool = "pool-c" },
    ]
"#;

/// The buckets table the vectors are for.
const BUCKETS_CONFIG: &str = r#"
    strategy = "buckets"
    default = "center"
    buckets = 100
    sets = [
      { name = "set-a", pool = "pool-a" },
      { name = "set-b", pool = "pool-b" },
      { name = "set-c", pool = "pool-c" },
    ]
    bucket_map = [
      { range = "0-32", set = "set-a" },
      { range = "33-65", set = "set-b" },
      { range = "66-99", set = "set-c" },
    ]
"#;

/// (key, XXH64(key), SET under HASH_CONFIG, bucket under BUCKETS_CONFIG, SET there).
const VECTORS: [(&str, u64, &str, u32, &str); 20] = [
    ("alice", 0x73a3ea485f2e6049, "set-c", 89, "set-c"),
    ("bob", 0x92878a3b42bad03b, "set-a", 27, "set-a"),
    ("carol", 0xc1ceb4e654b4cc38, "set-c", 48, "set-b"),
    ("dave", 0x2857ed8653e4fb22, "set-b", 14, "set-a"),
    ("erin", 0xb0f752ee64e96213, "set-c", 43, "set-b"),
    ("user-0001", 0x444865835a5454d7, "set-c", 15, "set-a"),
    ("user-0002", 0x4be51ccc589db78c, "set-a", 84, "set-c"),
    ("user-12345", 0x64797fca50bfc10c, "set-a", 96, "set-c"),
    ("12345", 0xc6f2d2dd0ad64fb6, "set-b", 45, "set-b"),
    ("007", 0xb19e5c56f2bcf864, "set-b", 7, "set-a"),
    ("0", 0x633457081244afec, "set-b", 0, "set-a"),
    (
        "18446744073709551615",
        0x8d1f8f6d8dfa7c47,
        "set-a",
        15,
        "set-a",
    ),
    (
        "18446744073709551616",
        0x06c54e6e2de7459b,
        "set-b",
        91,
        "set-c",
    ),
    ("müller", 0x8b6752efe2f64187, "set-c", 95, "set-c"),
    ("Müller", 0xda6f31bbd2b0d282, "set-c", 26, "set-a"),
    ("李雷", 0x707a426b148747ed, "set-a", 45, "set-b"),
    ("x@example.com", 0x93fce85c931ed27a, "set-a", 82, "set-c"),
    ("a", 0xd24ec4f1a98c6e5b, "set-a", 55, "set-b"),
    ("user with spaces", 0xe6c0b277330ed7e0, "set-c", 68, "set-c"),
    (
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        0xcc97a589a90ab2f2,
        "set-a",
        66,
        "set-c",
    ),
];

#[test]
fn contract_constants_are_frozen() {
    assert_eq!(CONTRACT_VERSION, "setgate-routing/1");
    assert_eq!(VNODES_PER_WEIGHT, 4096);
}

/// Published reference values of XXH64 with seed 0 (xxHash's `xxhsum -H1`).
#[test]
fn xxh64_reference_values() {
    assert_eq!(key_hash(""), 0xEF46DB3751D8E999);
    assert_eq!(key_hash("a"), 0xD24EC4F1A98C6E5B);
    assert_eq!(key_hash("abc"), 0x44BC2CF5AD770999);
    assert_eq!(
        key_hash("Nobody inspects the spammish repetition"),
        0xFBCEA83C8A378BF1
    );
}

#[test]
fn consistent_hash_vectors() {
    let router = common::router(HASH_CONFIG);
    for (key, hash, set, _, _) in VECTORS {
        assert_eq!(key_hash(key), hash, "XXH64({key:?})");
        let route = router.route(Some(key));
        assert_eq!(route.set, Some(set), "{key:?}");
        assert_eq!(route.pool, set.replace("set-", "pool-"), "{key:?}");
        assert_eq!(route.reason, Reason::Hash, "{key:?}");
    }
    let empty = router.route(Some(""));
    assert_eq!(
        (empty.set, empty.pool, empty.reason),
        (None, "center", Reason::Default)
    );
    assert_eq!(router.fingerprint(), "3a98809aa2585895");
}

#[test]
fn buckets_vectors() {
    let router = common::router(BUCKETS_CONFIG);
    for (key, _, _, bucket, set) in VECTORS {
        assert_eq!(router.bucket(key), Some(bucket), "bucket of {key:?}");
        let route = router.route(Some(key));
        assert_eq!(
            (route.set, route.reason),
            (Some(set), Reason::Bucket),
            "{key:?}"
        );
    }
    let empty = router.route(Some(""));
    assert_eq!(
        (empty.set, empty.pool, empty.reason),
        (None, "center", Reason::Default)
    );
    assert_eq!(router.fingerprint(), "ddf54461f373f5c2");
}
