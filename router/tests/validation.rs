//! Every config error, with the exact message `setgate check` prints.

mod common;

use common::errors;
use setgate_router::{KeySource, Router, RoutingConfig};

const SETS: &str = r#"
    sets = [
      { name = "set-a", pool = "pool-a", failover = "set-b" },
      { name = "set-b", pool = "pool-b" },
    ]
"#;

fn with_sets(rest: &str) -> String {
    format!("default = \"center\"\n{SETS}\n{rest}")
}

#[test]
fn everything_is_reported_at_once() {
    let found = errors(
        r#"
        default = ""
        sets = [
          { name = "set-a", pool = "pool-a", failover = "set-z" },
          { name = "set-a", pool = "" },
          { name = "", pool = "p" },
          { name = "set-c", pool = "pool-c", failover = "set-c" },
        ]
        bucket_map = [{ range = "0-9", set = "set-a" }]
        overrides = { "vip-42" = "set-y" }
        "#,
    );
    assert_eq!(
        found,
        [
            "routing.default: is empty; name the pool for keys that map to no SET, e.g. \"center\"",
            "routing.sets[0].failover: SET \"set-z\" is not defined; name one of set-a, set-c",
            "routing.sets[1].name: SET \"set-a\" is already defined by routing.sets[0]; SET names must be unique",
            "routing.sets[1].pool: is empty; name the pool that serves SET \"set-a\"",
            "routing.sets[2].name: is empty; give the SET a name",
            "routing.sets[3].failover: SET \"set-c\" cannot fail over to itself; name another SET or remove failover",
            "routing.overrides.\"vip-42\": \"set-y\" is neither a SET nor the default pool \"\"; name one of set-a, set-c, or the default pool \"\"",
            "routing.bucket_map: given with strategy = \"consistent-hash\", which would ignore it; set strategy = \"buckets\" or remove it",
        ]
    );
}

#[test]
fn unknown_failover() {
    let found = errors(
        r#"
        default = "center"
        sets = [
          { name = "set-a", pool = "set-a", failover = "set-b" },
          { name = "set-b", pool = "set-b", failover = "set-z" },
        ]
        "#,
    );
    assert_eq!(
        found,
        ["routing.sets[1].failover: SET \"set-z\" is not defined; name one of set-a, set-b"]
    );
}

#[test]
fn overrides_name_a_set_or_the_default_pool() {
    let found = errors(&with_sets(
        r#"overrides = { "vip-42" = "set-z", "" = "set-a" }"#,
    ));
    assert_eq!(
        found,
        [
            "routing.overrides.\"\": an empty key never reaches an override (empty and missing keys go to the default pool); remove it",
            "routing.overrides.\"vip-42\": \"set-z\" is neither a SET nor the default pool \"center\"; name one of set-a, set-b, or the default pool \"center\"",
        ]
    );
    let found = errors("default = \"center\"\noverrides = { \"vip\" = \"set-a\" }");
    assert_eq!(
        found,
        ["routing.overrides.\"vip\": \"set-a\" is neither a SET nor the default pool \"center\"; name the default pool \"center\""]
    );
}

#[test]
fn unknown_set_with_no_sets_defined() {
    let found = errors(
        r#"
        strategy = "buckets"
        default = "center"
        buckets = 1
        bucket_map = [{ range = "0", set = "set-a" }]
        "#,
    );
    assert_eq!(
        found,
        ["routing.bucket_map[0].set: SET \"set-a\" is not defined; routing.sets defines no SET"]
    );
}

#[test]
fn weight_zero_is_allowed_and_too_much_weight_is_not() {
    common::router(
        "default = \"c\"\nsets = [{ name = \"a\", pool = \"a\", weight = 0 }, { name = \"b\", pool = \"b\", weight = 256 }]",
    );
    let found = errors(
        "default = \"c\"\nsets = [{ name = \"a\", pool = \"a\", weight = 200 }, { name = \"b\", pool = \"b\", weight = 57 }]",
    );
    assert_eq!(
        found,
        ["routing.sets: the weights add up to 257, more than 256 (each unit of weight is 4096 points on the ring); weights are relative, so divide them by a common factor"]
    );
    // The buckets strategy ignores weights, so it does not limit them either.
    common::router(
        r#"
        strategy = "buckets"
        default = "c"
        buckets = 1
        sets = [{ name = "a", pool = "a", weight = 4000000000 }]
        bucket_map = [{ range = "0", set = "a" }]
        "#,
    );
}

#[test]
fn empty_client_property_built_in_code() {
    let config = RoutingConfig {
        key: KeySource::ClientProperty(String::new()),
        ..RoutingConfig::new("center")
    };
    let found: Vec<String> = Router::new(&config)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        found,
        ["routing.key: names no client property; write \"client_property:NAME\", e.g. \"client_property:user_id\""]
    );
}

#[test]
fn buckets_strategy_needs_a_bucket_count() {
    let found = errors(&with_sets(
        "strategy = \"buckets\"\nbucket_map = [{ range = \"0-9\", set = \"set-a\" }]",
    ));
    assert_eq!(
        found,
        ["routing.buckets: strategy = \"buckets\" needs the number of buckets; add e.g. buckets = 100"]
    );
    let found = errors(&with_sets(
        "strategy = \"buckets\"\nbuckets = 0\nbucket_map = [{ range = \"0\", set = \"set-a\" }]",
    ));
    assert_eq!(
        found,
        ["routing.buckets: is 0; there must be at least 1 bucket (e.g. buckets = 100)"]
    );
}

#[test]
fn bucket_settings_with_consistent_hash_would_be_ignored() {
    let found = errors(&with_sets(
        "buckets = 10\nbucket_map = [{ range = \"0-9\", set = \"set-a\" }]",
    ));
    assert_eq!(
        found,
        [
            "routing.buckets: given with strategy = \"consistent-hash\", which would ignore it; set strategy = \"buckets\" or remove it",
            "routing.bucket_map: given with strategy = \"consistent-hash\", which would ignore it; set strategy = \"buckets\" or remove it",
        ]
    );
}

fn bucket_map(buckets: u32, ranges: &[(&str, &str)]) -> Vec<String> {
    let map: Vec<String> = ranges
        .iter()
        .map(|(range, set)| format!("{{ range = {range:?}, set = {set:?} }}"))
        .collect();
    errors(&with_sets(&format!(
        "strategy = \"buckets\"\nbuckets = {buckets}\nbucket_map = [{}]",
        map.join(", ")
    )))
}

#[test]
fn malformed_ranges() {
    let found = bucket_map(
        100,
        &[
            ("0-49", "set-a"),
            ("50-x", "set-b"),
            ("", "set-b"),
            ("99-50", "set-b"),
        ],
    );
    assert_eq!(
        found,
        [
            "routing.bucket_map[1].range: \"50-x\" is not a bucket range; write \"FIRST-LAST\" (e.g. \"0-49\") or one bucket (e.g. \"37\")",
            "routing.bucket_map[2].range: \"\" is not a bucket range; write \"FIRST-LAST\" (e.g. \"0-49\") or one bucket (e.g. \"37\")",
            "routing.bucket_map[3].range: \"99-50\" starts after it ends; write \"50-99\"",
        ],
        "a malformed range is not reported a second time as a gap"
    );
}

#[test]
fn out_of_range() {
    let found = bucket_map(
        100,
        &[
            ("0-49", "set-a"),
            ("50-120", "set-b"),
            ("100", "set-b"),
            ("99999999999999999999999", "set-a"),
        ],
    );
    assert_eq!(
        found,
        [
            "routing.bucket_map[1].range: \"50-120\" goes past the last bucket, 99 (buckets = 100)",
            "routing.bucket_map[2].range: \"100\" goes past the last bucket, 99 (buckets = 100)",
            "routing.bucket_map[3].range: \"99999999999999999999999\" goes past the last bucket, 99 (buckets = 100)",
        ]
    );
}

#[test]
fn overlaps() {
    let found = bucket_map(
        100,
        &[
            ("0-49", "set-a"),
            ("40-60", "set-b"),
            ("61-99", "set-b"),
            ("99", "set-a"),
            ("45", "set-a"),
        ],
    );
    assert_eq!(
        found,
        [
            "routing.bucket_map[1].range: \"40-60\" overlaps routing.bucket_map[0] (\"0-49\") on buckets 40-49; every bucket belongs to exactly one SET",
            "routing.bucket_map[4].range: \"45\" overlaps routing.bucket_map[1] (\"40-60\") on bucket 45; every bucket belongs to exactly one SET",
            "routing.bucket_map[3].range: \"99\" overlaps routing.bucket_map[2] (\"61-99\") on bucket 99; every bucket belongs to exactly one SET",
        ]
    );
}

#[test]
fn gaps_are_listed_compactly() {
    let found = bucket_map(
        100,
        &[("0-49", "set-a"), ("60-69", "set-b"), ("71-89", "set-b")],
    );
    assert_eq!(
        found,
        ["routing.bucket_map: buckets 50-59, 70, 90-99 are not assigned to any SET; every bucket from 0 to 99 needs one"]
    );
    let found = bucket_map(100, &[("0-49", "set-a"), ("51-99", "set-b")]);
    assert_eq!(
        found,
        ["routing.bucket_map: bucket 50 is not assigned to any SET; every bucket from 0 to 99 needs one"]
    );
    let found = bucket_map(10, &[]);
    assert_eq!(
        found,
        ["routing.bucket_map: buckets 0-9 are not assigned to any SET; every bucket from 0 to 9 needs one"]
    );
    // Every other bucket: eight gaps spelled out, the rest counted.
    let odd: Vec<(String, &str)> = (0..20).map(|i| ((2 * i).to_string(), "set-a")).collect();
    let odd: Vec<(&str, &str)> = odd.iter().map(|(r, s)| (r.as_str(), *s)).collect();
    assert_eq!(
        bucket_map(40, &odd),
        ["routing.bucket_map: buckets 1, 3, 5, 7, 9, 11, 13, 15 and 12 more ranges are not assigned to any SET; every bucket from 0 to 39 needs one"]
    );
}

#[test]
fn bucket_map_naming_unknown_sets() {
    let found = bucket_map(100, &[("0-49", "set-a"), ("50-99", "set-z")]);
    assert_eq!(
        found,
        ["routing.bucket_map[1].set: SET \"set-z\" is not defined; name one of set-a, set-b"]
    );
}

#[test]
fn reroute_window_is_checked_and_stays_out_of_the_fingerprint() {
    assert_eq!(
        errors(&with_sets("reroute = { window = \"0s\" }")),
        ["routing.reroute.window: is 0s; give the time over which the moved connections are closed, e.g. \"30s\" (or remove reroute to leave them open)"]
    );
    assert_eq!(
        errors(&with_sets("reroute = { window = \"2h\" }")),
        ["routing.reroute.window: is 2h, more than 1h; moved clients would stay on their old SET that long; use a shorter window (e.g. \"30s\")"]
    );
    let with = common::router(&with_sets("reroute = { window = \"30s\" }"));
    assert_eq!(
        with.config().reroute.map(|r| r.window),
        Some(std::time::Duration::from_secs(30))
    );
    let without = common::router(&with_sets(""));
    assert_eq!(with.fingerprint(), without.fingerprint());
    // A typo in the table, or a window that is not a duration, is refused by the parser.
    for bad in [
        "reroute = { windw = \"30s\" }",
        "reroute = { window = \"soon\" }",
        "reroute = {}",
    ] {
        assert!(
            toml::from_str::<RoutingConfig>(&with_sets(bad)).is_err(),
            "{bad}"
        );
    }
}
