//! Route order, failover, accessors and the fingerprint.

mod common;

use setgate_router::{KeySource, Reason, Route, Strategy};

const TABLE: &str = r#"
    key = "client_property:user_id"
    default = "center"
    sets = [
      { name = "set-a", pool = "pool-a", failover = "set-b" },
      { name = "set-b", pool = "pool-b", weight = 2 },
      { name = "set-c", pool = "pool-c", weight = 0, failover = "set-a" },
    ]
    overrides = { "vip-42" = "set-c", "ops" = "center", "12345" = "set-a" }
"#;

fn route(set: Option<&'static str>, pool: &'static str, reason: Reason) -> Route<'static> {
    Route { set, pool, reason }
}

#[test]
fn overrides_win_over_the_strategy() {
    let router = common::router(TABLE);
    // set-c has weight 0: only an override can reach it.
    assert_eq!(
        router.route(Some("vip-42")),
        route(Some("set-c"), "pool-c", Reason::Override)
    );
    assert_eq!(
        router.route(Some("ops")),
        route(None, "center", Reason::Override)
    );
    // Find a key the ring sends to set-b, then pin it to set-a.
    let key = (0..)
        .map(|i| format!("user-{i}"))
        .find(|k| router.route(Some(k)).set == Some("set-b"))
        .unwrap();
    let mut config = common::config(TABLE);
    config.overrides.insert(key.clone(), "set-a".into());
    let pinned = setgate_router::Router::new(&config).unwrap();
    assert_eq!(
        pinned.route(Some(&key)),
        route(Some("set-a"), "pool-a", Reason::Override)
    );
}

#[test]
fn overrides_win_over_buckets_too() {
    let router = common::router(
        r#"
        strategy = "buckets"
        default = "center"
        buckets = 10
        sets = [{ name = "a", pool = "pa" }, { name = "b", pool = "pb" }]
        bucket_map = [{ range = "0-4", set = "a" }, { range = "5-9", set = "b" }]
        overrides = { "7" = "a", "center" = "center" }
        "#,
    );
    assert_eq!(
        router.route(Some("17")),
        route(Some("b"), "pb", Reason::Bucket)
    );
    assert_eq!(
        router.route(Some("7")),
        route(Some("a"), "pa", Reason::Override)
    );
    assert_eq!(
        router.route(Some("center")),
        route(None, "center", Reason::Override)
    );
}

#[test]
fn a_set_named_like_the_default_pool_wins_an_override() {
    let router = common::router(
        r#"
        default = "center"
        sets = [{ name = "center", pool = "pool-center-set" }]
        overrides = { "vip" = "center" }
        "#,
    );
    assert_eq!(
        router.route(Some("vip")),
        route(Some("center"), "pool-center-set", Reason::Override)
    );
}

#[test]
fn missing_or_empty_key_goes_to_the_default_pool() {
    let router = common::router(TABLE);
    assert_eq!(router.route(None), route(None, "center", Reason::Default));
    assert_eq!(
        router.route(Some("")),
        route(None, "center", Reason::Default)
    );
    let hashed = router.route(Some("alice"));
    assert_eq!(hashed.reason, Reason::Hash);
    assert!(matches!(hashed.set, Some("set-a" | "set-b")), "{hashed:?}");
}

#[test]
fn no_weighted_set_sends_everything_to_the_default_pool() {
    let router = common::router(
        r#"
        default = "center"
        sets = [{ name = "a", pool = "pa", weight = 0 }]
        overrides = { "vip" = "a" }
        "#,
    );
    assert_eq!(
        router.route(Some("alice")),
        route(None, "center", Reason::Default)
    );
    assert_eq!(
        router.route(Some("vip")),
        route(Some("a"), "pa", Reason::Override)
    );
    let empty = common::router(r#"default = "center""#);
    assert_eq!(
        empty.route(Some("alice")),
        route(None, "center", Reason::Default)
    );
}

#[test]
fn reasons_display_in_lowercase() {
    let shown: Vec<String> = [
        Reason::Override,
        Reason::Hash,
        Reason::Bucket,
        Reason::Default,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(shown, ["override", "hash", "bucket", "default"]);
}

#[test]
fn failover_and_accessors() {
    let router = common::router(TABLE);
    assert_eq!(router.failover("set-a"), Some(("set-b", "pool-b")));
    assert_eq!(router.failover("set-c"), Some(("set-a", "pool-a")));
    assert_eq!(router.failover("set-b"), None, "no failover configured");
    assert_eq!(router.failover("set-z"), None, "unknown SET");

    let names: Vec<(&str, &str, u32, Option<&str>)> = router
        .sets()
        .iter()
        .map(|s| (s.name(), s.pool(), s.weight(), s.failover()))
        .collect();
    assert_eq!(
        names,
        [
            ("set-a", "pool-a", 1, Some("set-b")),
            ("set-b", "pool-b", 2, None),
            ("set-c", "pool-c", 0, Some("set-a")),
        ]
    );
    assert_eq!(router.set("set-b").map(|s| s.weight()), Some(2));
    assert_eq!(router.default_pool(), "center");
    assert_eq!(
        router.key_source(),
        &KeySource::ClientProperty("user_id".into())
    );
    assert_eq!(router.strategy(), Strategy::ConsistentHash);
    assert_eq!((router.buckets(), router.bucket("42")), (None, None));
    assert_eq!(router.config(), &common::config(TABLE));
    assert_eq!(
        router.config().referenced_pools(),
        ["center", "pool-a", "pool-b", "pool-c"]
    );
}

/// The example of ROUTING.md, byte for byte.
#[test]
fn canonical_form_matches_the_documented_example() {
    let router = common::router(
        r#"
        default = "center"
        sets = [
          { name = "set-b", pool = "set-b", weight = 1, failover = "set-a" },
          { name = "set-a", pool = "set-a", weight = 1, failover = "set-b" },
        ]
        overrides = { "vip-42" = "set-b" }
        "#,
    );
    assert_eq!(
        router.canonical_form(),
        "setgate-routing/1\nkey 8:username\nstrategy 15:consistent-hash\ndefault 6:center\n\
         set 5:set-a 5:set-a 1 5:set-b\nset 5:set-b 5:set-b 1 5:set-a\noverride 6:vip-42 5:set-b\n"
    );
    assert_eq!(router.fingerprint(), "dc022633d750a516");
}

#[test]
fn fingerprint_ignores_formatting_and_order() {
    let a = common::router(
        r#"
        default = "center"
        sets = [
          { name = "set-a", pool = "pool-a", weight = 1, failover = "set-b" },
          { name = "set-b", pool = "pool-b", weight = 2 },
        ]
        overrides = { "x" = "set-a", "y" = "set-b" }
        "#,
    );
    let b = common::router(
        r#"
        key = "username"
        strategy = "consistent-hash"   # the default, spelled out
        default = 'center'

        [overrides]
        y = "set-b"
        x = "set-a"

        [[sets]]
        weight = 2
        pool = "pool-b"
        name = "set-b"

        [[sets]]
        failover = "set-b"
        name = "set-a"
        pool = "pool-a"
        "#,
    );
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_eq!(a.fingerprint().len(), 16);
    assert!(a
        .fingerprint()
        .bytes()
        .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
}

#[test]
fn fingerprint_changes_with_what_routes_where() {
    let base = common::config(TABLE);
    let fingerprint = |config: &setgate_router::RoutingConfig| {
        setgate_router::Router::new(config).unwrap().fingerprint()
    };
    let original = fingerprint(&base);
    let mut changes = Vec::new();
    let mut c = base.clone();
    c.sets[1].weight = 3;
    changes.push(("weight", c));
    let mut c = base.clone();
    c.sets[0].pool = "pool-x".into();
    changes.push(("pool", c));
    let mut c = base.clone();
    c.sets[1].failover = Some("set-c".into());
    changes.push(("failover", c));
    let mut c = base.clone();
    c.overrides.remove("ops");
    changes.push(("override", c));
    let mut c = base.clone();
    c.default = "center-2".into();
    c.overrides.insert("ops".into(), "center-2".into());
    changes.push(("default", c));
    let mut c = base.clone();
    c.key = KeySource::Username;
    changes.push(("key", c));
    let mut c = base.clone();
    c.sets[2].name = "set-d".into();
    c.overrides.insert("vip-42".into(), "set-d".into());
    changes.push(("set name", c));
    for (what, config) in changes {
        assert_ne!(fingerprint(&config), original, "changing the {what}");
    }
}

#[test]
fn bucket_fingerprint_merges_adjacent_ranges_and_ignores_weights() {
    let split = common::router(
        r#"
        strategy = "buckets"
        default = "center"
        buckets = 100
        sets = [{ name = "a", pool = "pa", weight = 5 }, { name = "b", pool = "pb" }]
        bucket_map = [{ range = "50-99", set = "b" }, { range = "0-9", set = "a" }, { range = "10-49", set = "a" }]
        "#,
    );
    let whole = common::router(
        r#"
        strategy = "buckets"
        default = "center"
        buckets = 100
        sets = [{ name = "a", pool = "pa" }, { name = "b", pool = "pb" }]
        bucket_map = [{ range = "0-49", set = "a" }, { range = "50-99", set = "b" }]
        "#,
    );
    assert_eq!(split.canonical_form(), whole.canonical_form());
    assert!(
        whole.canonical_form().ends_with(
            "set 1:a 2:pa - -\nset 1:b 2:pb - -\nbuckets 100\nrange 0-49 1:a\nrange 50-99 1:b\n"
        ),
        "{}",
        whole.canonical_form()
    );
    let moved = common::router(
        r#"
        strategy = "buckets"
        default = "center"
        buckets = 100
        sets = [{ name = "a", pool = "pa" }, { name = "b", pool = "pb" }]
        bucket_map = [{ range = "0-48", set = "a" }, { range = "49-99", set = "b" }]
        "#,
    );
    assert_ne!(moved.fingerprint(), whole.fingerprint());
}
