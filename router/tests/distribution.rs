//! How keys spread over SETs, and how few move when the table changes.

mod common;

use common::{assign, share, weighted};
use setgate_router::{Router, RoutingConfig};

const KEYS: usize = 100_000;

fn build(config: &RoutingConfig) -> Router {
    Router::new(config).expect("valid config")
}

#[test]
fn four_equal_sets_get_a_quarter_each() {
    let router = build(&weighted(&[
        ("set-a", 1),
        ("set-b", 1),
        ("set-c", 1),
        ("set-d", 1),
    ]));
    let assignment = assign(&router, KEYS);
    for set in ["set-a", "set-b", "set-c", "set-d"] {
        let s = share(&assignment, set);
        assert!((s - 25.0).abs() <= 2.0, "{set} got {s:.2}%");
    }
}

#[test]
fn weights_are_honoured() {
    let router = build(&weighted(&[
        ("set-a", 1),
        ("set-b", 2),
        ("set-c", 3),
        ("set-d", 4),
    ]));
    let assignment = assign(&router, KEYS);
    for (set, target) in [
        ("set-a", 10.0),
        ("set-b", 20.0),
        ("set-c", 30.0),
        ("set-d", 40.0),
    ] {
        let s = share(&assignment, set);
        assert!(
            (s - target).abs() <= 2.0,
            "{set} got {s:.2}%, wants {target}%"
        );
    }
}

#[test]
fn adding_a_set_moves_only_its_share_and_only_onto_it() {
    let four = [("set-a", 1), ("set-b", 1), ("set-c", 1), ("set-d", 1)];
    let before = assign(&build(&weighted(&four)), KEYS);
    let mut five = four.to_vec();
    five.push(("set-e", 1));
    let after = assign(&build(&weighted(&five)), KEYS);

    let mut moved = 0;
    for (old, new) in before.iter().zip(&after) {
        if old != new {
            moved += 1;
            assert_eq!(
                new.as_deref(),
                Some("set-e"),
                "a key moved between old SETs"
            );
        }
    }
    let moved = 100.0 * moved as f64 / KEYS as f64;
    assert!(moved <= 20.0 + 2.0, "{moved:.2}% of the keys moved");
    assert!(moved >= 20.0 - 2.0, "the new SET took only {moved:.2}%");
}

#[test]
fn removing_a_set_moves_only_its_keys() {
    let four = [("set-a", 1), ("set-b", 1), ("set-c", 1), ("set-d", 1)];
    let before = assign(&build(&weighted(&four)), KEYS);
    let after = assign(&build(&weighted(&four[..3])), KEYS);
    for (old, new) in before.iter().zip(&after) {
        if old.as_deref() == Some("set-d") {
            assert_ne!(new.as_deref(), Some("set-d"));
        } else {
            assert_eq!(old, new, "a key of a remaining SET moved");
        }
    }
    // The removed SET's keys spread over all the others, not onto one neighbour.
    for set in ["set-a", "set-b", "set-c"] {
        let s = share(&after, set);
        assert!((s - 100.0 / 3.0).abs() <= 2.0, "{set} got {s:.2}%");
    }
}

#[test]
fn weight_zero_takes_a_set_out_of_the_ring() {
    let before = assign(
        &build(&weighted(&[("set-a", 1), ("set-b", 1), ("set-c", 1)])),
        20_000,
    );
    let after = assign(
        &build(&weighted(&[("set-a", 1), ("set-b", 1), ("set-c", 0)])),
        20_000,
    );
    assert_eq!(share(&after, "set-c"), 0.0);
    for (old, new) in before.iter().zip(&after) {
        if old.as_deref() != Some("set-c") {
            assert_eq!(old, new);
        }
    }
}

#[test]
fn raising_a_weight_moves_keys_only_onto_that_set() {
    let before = assign(&build(&weighted(&[("set-a", 1), ("set-b", 1)])), 20_000);
    let after = assign(&build(&weighted(&[("set-a", 1), ("set-b", 2)])), 20_000);
    for (old, new) in before.iter().zip(&after) {
        if old != new {
            assert_eq!(new.as_deref(), Some("set-b"));
        }
    }
    let s = share(&after, "set-b");
    assert!((s - 200.0 / 3.0).abs() <= 2.0, "set-b got {s:.2}%");
}

#[test]
fn set_order_and_pool_names_do_not_move_keys() {
    let a = build(&weighted(&[("set-a", 1), ("set-b", 2), ("set-c", 1)]));
    let mut reordered = weighted(&[("set-c", 1), ("set-a", 1), ("set-b", 2)]);
    for set in &mut reordered.sets {
        set.pool = format!("renamed-{}", set.pool);
    }
    let b = build(&reordered);
    assert_eq!(assign(&a, 20_000), assign(&b, 20_000));
}

const BUCKETS: &str = r#"
    strategy = "buckets"
    default = "center"
    buckets = 100
    sets = [{ name = "set-a", pool = "a" }, { name = "set-b", pool = "b" }]
    bucket_map = [{ range = "0-49", set = "set-a" }, { range = "50-99", set = "set-b" }]
"#;

#[test]
fn numeric_ids_go_to_their_value_mod_n() {
    let router = common::router(BUCKETS);
    for id in [0u64, 7, 49, 50, 99, 100, 12345, 1_000_049, u64::MAX] {
        let key = id.to_string();
        assert_eq!(router.bucket(&key), Some((id % 100) as u32), "{key}");
        let expected = if id % 100 < 50 { "set-a" } else { "set-b" };
        assert_eq!(router.route(Some(&key)).set, Some(expected), "{key}");
    }
    assert_eq!(router.bucket("0000012345"), Some(45));
}

#[test]
fn other_keys_go_by_hash_mod_n() {
    let router = common::router(BUCKETS);
    for key in ["alice", "user-7", "12a", "-5", "99999999999999999999"] {
        let expected = (setgate_router::key_hash(key) % 100) as u32;
        assert_eq!(router.bucket(key), Some(expected), "{key}");
    }
}

#[test]
fn hashed_keys_spread_evenly_over_buckets() {
    let router = common::router(BUCKETS);
    let mut counts = [0u32; 100];
    for i in 0..KEYS {
        counts[router.bucket(&format!("user-{i}")).unwrap() as usize] += 1;
    }
    // 1000 expected per bucket; 5 standard deviations is about 160.
    assert!(
        counts.iter().all(|&c| (800..=1200).contains(&c)),
        "{counts:?}"
    );
}

#[test]
fn moving_bucket_37_moves_exactly_its_keys() {
    let before = common::router(BUCKETS);
    let after = common::router(&BUCKETS.replace(
        r#"bucket_map = [{ range = "0-49", set = "set-a" }, { range = "50-99", set = "set-b" }]"#,
        r#"bucket_map = [
            { range = "0-36", set = "set-a" },
            { range = "37", set = "set-b" },
            { range = "38-49", set = "set-a" },
            { range = "50-99", set = "set-b" },
        ]"#,
    ));
    let mut moved = 0;
    for i in 0..20_000 {
        // Half numeric ids, half names: both kinds of bucket.
        let key = if i % 2 == 0 {
            (i / 2).to_string()
        } else {
            format!("user-{i}")
        };
        let in_37 = before.bucket(&key) == Some(37);
        let (old, new) = (before.route(Some(&key)).set, after.route(Some(&key)).set);
        if in_37 {
            assert_eq!((old, new), (Some("set-a"), Some("set-b")), "{key}");
            moved += 1;
        } else {
            assert_eq!(old, new, "{key} is not in bucket 37 but moved");
        }
    }
    // 100 numeric ids (37, 137, ...) and about 100 hashed names.
    assert!(moved > 150, "only {moved} keys were in bucket 37");
}
