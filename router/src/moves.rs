//! What a new routing table moves: [`moves`] compares two [`Router`]s before anything changes
//! (`setgate route --diff OLD NEW`).
//!
//! The share of the key space that changes SET is exact whenever both tables use the same
//! strategy: two rings are compared arc by arc over the whole 64-bit hash space, two bucket
//! maps bucket by bucket. Across strategies (or bucket counts) there is no common partition, so
//! the share is estimated from a fixed, deterministic sample of keys. Overrides and listed keys
//! are routed one by one through both tables, which is exact by definition.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ring::Ring;
use crate::router::{Reason, Router};

/// How many keys [`moves`] routes through both tables when it cannot compare them exactly
/// (the strategy or the number of buckets changed): about ±0.1% (one standard deviation) on
/// the share of a SET.
pub const SAMPLE_KEYS: u32 = 1 << 20;

/// Everything that changes SET from one routing table to the next. A SET of `None` is the
/// default pool (no SET).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Moves {
    /// `(old, new)` when the key source changed: the key is then another value of the
    /// handshake, and any connection may move whatever the shares below say.
    pub key_source: Option<(String, String)>,
    /// Share (0 to 1) of the keys no override names that route to another SET.
    pub share: f64,
    /// `None` when [`Moves::share`] and [`Moves::flows`] are exact; `Some(n)` when they are
    /// estimated from `n` sample keys (see [`SAMPLE_KEYS`]).
    pub sampled: Option<u32>,
    /// The share moving from each SET to each other, largest first.
    pub flows: Vec<Flow>,
    /// `Some(n)` when both tables use `n` buckets: then [`Moves::buckets`] is the exact list.
    pub bucket_count: Option<u32>,
    /// The bucket ranges whose owner changes, ascending (buckets strategy on both sides).
    pub buckets: Vec<BucketMove>,
    /// Every override added, removed or retargeted, with where its key went and goes.
    pub overrides: Vec<OverrideChange>,
    /// The listed keys that route to another SET, in the order given.
    pub keys: Vec<KeyMove>,
    /// How many keys were listed.
    pub keys_checked: usize,
    /// SETs only in the new table.
    pub sets_added: Vec<String>,
    /// SETs only in the old table.
    pub sets_removed: Vec<String>,
    /// SETs in both tables served by another pool: their keys stay, their connections would
    /// go to other brokers (not a move; `reroute` leaves them alone).
    pub pools: Vec<PoolChange>,
}

impl Moves {
    /// True when no key changes SET: no share, no bucket, no override or listed key moves, and
    /// the key source is the same.
    pub fn is_empty(&self) -> bool {
        self.key_source.is_none()
            && self.share == 0.0
            && self.buckets.is_empty()
            && self.keys.is_empty()
            && self.overrides.iter().all(|o| o.from == o.to)
    }
}

/// Part of the key space moving from one SET to another.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flow {
    /// Where those keys went (`None`: the default pool).
    pub from: Option<String>,
    /// Where they go now.
    pub to: Option<String>,
    /// Their share of the key space, 0 to 1.
    pub share: f64,
}

/// A run of buckets `first..=last` that moves from one SET to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BucketMove {
    /// First bucket.
    pub first: u32,
    /// Last bucket (inclusive).
    pub last: u32,
    /// Old owner.
    pub from: String,
    /// New owner.
    pub to: String,
}

/// An override that differs between the tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverrideChange {
    /// The overridden key.
    pub key: String,
    /// Its override target in the old table (`None`: not overridden there).
    pub before: Option<String>,
    /// Its override target in the new table (`None`: not overridden there).
    pub after: Option<String>,
    /// The key's SET under the old table, override or not.
    pub from: Option<String>,
    /// The key's SET under the new table: the key moves when it differs from `from`.
    pub to: Option<String>,
}

/// One listed key that routes to another SET.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyMove {
    /// The key.
    pub key: String,
    /// Its SET under the old table.
    pub from: Option<String>,
    /// Which rule placed it there.
    pub from_reason: Reason,
    /// Its SET under the new table.
    pub to: Option<String>,
    /// Which rule places it there.
    pub to_reason: Reason,
}

/// A SET served by another pool in the new table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolChange {
    /// The SET.
    pub set: String,
    /// Its old pool.
    pub from: String,
    /// Its new pool.
    pub to: String,
}

/// Compares the table in use (`old`) with the one a reload would bring (`new`): the share of
/// the key space changing SET (exact for two rings or two bucket maps of one size, otherwise
/// from [`SAMPLE_KEYS`] keys), the buckets that change owner, the overrides that changed and
/// where their keys go, and which of `keys` move. Pure and deterministic.
pub fn moves<'k>(old: &Router, new: &Router, keys: impl IntoIterator<Item = &'k str>) -> Moves {
    moves_sampling(old, new, keys, SAMPLE_KEYS)
}

pub(crate) fn moves_sampling<'k>(
    old: &Router,
    new: &Router,
    keys: impl IntoIterator<Item = &'k str>,
    sample: u32,
) -> Moves {
    // Keys of the space (2^64 hash points, N buckets, or sample keys) per (from, to).
    let mut weights: BTreeMap<(Option<&str>, Option<&str>), u128> = BTreeMap::new();
    let mut buckets = Vec::new();
    let mut bucket_count = None;
    let mut sampled = None;
    let total: u128 = match (
        old.ring(),
        new.ring(),
        old.bucket_ranges(),
        new.bucket_ranges(),
    ) {
        (Some(a), Some(b), _, _) => {
            ring_weights(old, a, new, b, &mut weights);
            1u128 << 64
        }
        (_, _, Some(a), Some(b)) if old.buckets() == new.buckets() => {
            let n = old.buckets().expect("a bucket table has a count").get();
            bucket_count = Some(n);
            bucket_weights(&a, &b, &mut weights, &mut buckets);
            u128::from(n)
        }
        _ => {
            sampled = Some(sample);
            sample_weights(old, new, sample, &mut weights);
            u128::from(sample)
        }
    };
    let share_of = |w: u128| w as f64 / total as f64;
    let mut flows: Vec<Flow> = weights
        .iter()
        .filter(|((a, b), w)| a != b && **w > 0)
        .map(|(&(a, b), &w)| Flow {
            from: a.map(str::to_owned),
            to: b.map(str::to_owned),
            share: share_of(w),
        })
        .collect();
    flows.sort_by(|x, y| y.share.total_cmp(&x.share));
    let moved: u128 = weights
        .iter()
        .filter(|((a, b), _)| a != b)
        .map(|(_, w)| w)
        .sum();

    let owned = |s: Option<&str>| s.map(str::to_owned);
    let (before, after) = (&old.config().overrides, &new.config().overrides);
    let mut override_keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    override_keys.sort();
    override_keys.dedup();
    let overrides = override_keys
        .into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| OverrideChange {
            key: k.clone(),
            before: before.get(k).cloned(),
            after: after.get(k).cloned(),
            from: owned(old.route(Some(k)).set),
            to: owned(new.route(Some(k)).set),
        })
        .collect();

    let mut keys_checked = 0;
    let keys = keys
        .into_iter()
        .inspect(|_| keys_checked += 1)
        .filter_map(|k| {
            let (a, b) = (old.route(Some(k)), new.route(Some(k)));
            (a.set != b.set).then(|| KeyMove {
                key: k.to_owned(),
                from: owned(a.set),
                from_reason: a.reason,
                to: owned(b.set),
                to_reason: b.reason,
            })
        })
        .collect();

    let names = |r: &Router| -> Vec<String> { r.sets().iter().map(|s| s.name.clone()).collect() };
    let (old_names, new_names) = (names(old), names(new));
    let pools = old
        .sets()
        .iter()
        .filter_map(|s| {
            let n = new.set(&s.name)?;
            (n.pool != s.pool).then(|| PoolChange {
                set: s.name.clone(),
                from: s.pool.clone(),
                to: n.pool.clone(),
            })
        })
        .collect();
    let key_source = (old.key_source() != new.key_source())
        .then(|| (old.key_source().to_string(), new.key_source().to_string()));
    Moves {
        key_source,
        share: share_of(moved),
        sampled,
        flows,
        bucket_count,
        buckets,
        overrides,
        keys,
        keys_checked,
        sets_added: new_names
            .iter()
            .filter(|n| !old_names.contains(n))
            .cloned()
            .collect(),
        sets_removed: old_names
            .iter()
            .filter(|n| !new_names.contains(n))
            .cloned()
            .collect(),
        pools,
    }
}

/// Adds, per (old SET, new SET), how many of `n` deterministic sample keys the two tables send
/// there. The keys are not numeric, so under buckets they spread by hash, as user names do.
fn sample_weights<'a>(
    old: &'a Router,
    new: &'a Router,
    n: u32,
    out: &mut BTreeMap<(Option<&'a str>, Option<&'a str>), u128>,
) {
    for i in 0..n {
        let key = format!("setgate-sample-{i}");
        let (a, b) = (old.route(Some(&key)).set, new.route(Some(&key)).set);
        *out.entry((a, b)).or_default() += 1;
    }
}

/// Adds, per (old SET, new SET), how many of the 2^64 hash points the two rings send there.
///
/// Between two consecutive points of either ring, both rings have a fixed owner (the first of
/// their own points at or after the segment's end), so walking the merged points once covers
/// the whole space; the segment before the smallest point wraps around from past the largest.
fn ring_weights<'a>(
    old: &'a Router,
    a: &Ring,
    new: &'a Router,
    b: &Ring,
    out: &mut BTreeMap<(Option<&'a str>, Option<&'a str>), u128>,
) {
    let (pa, pb) = (a.points(), b.points());
    let name = |r: &'a Router, owner: Option<u32>| owner.map(|i| r.sets()[i as usize].name());
    let Some(largest) = pa.last().max(pb.last()).copied() else {
        // Two empty rings: every key goes to the default pool in both.
        *out.entry((None, None)).or_default() += 1u128 << 64;
        return;
    };
    let (mut i, mut j) = (0, 0);
    let mut prev: Option<u64> = None;
    while i < pa.len() || j < pb.len() {
        let m = match (pa.get(i), pb.get(j)) {
            (Some(&x), Some(&y)) => x.min(y),
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => unreachable!("the loop condition"),
        };
        // Every point before i (j) is < m, so i (j) is where a lookup of m lands.
        let len = match prev {
            Some(p) => u128::from(m - p),
            None => u128::from(u64::MAX - largest) + u128::from(m) + 1,
        };
        let from = name(old, a.owner_at(i));
        let to = name(new, b.owner_at(j));
        *out.entry((from, to)).or_default() += len;
        prev = Some(m);
        while pa.get(i) == Some(&m) {
            i += 1;
        }
        while pb.get(j) == Some(&m) {
            j += 1;
        }
    }
}

/// Adds, per (old SET, new SET), how many buckets the two maps give them, and lists the runs
/// of buckets whose owner changes. Both maps cover the same `0..n` with ascending ranges.
fn bucket_weights<'a>(
    a: &[(u32, u32, &'a str)],
    b: &[(u32, u32, &'a str)],
    out: &mut BTreeMap<(Option<&'a str>, Option<&'a str>), u128>,
    moved: &mut Vec<BucketMove>,
) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (ra, rb) = (a[i], b[j]);
        let first = ra.0.max(rb.0);
        let last = ra.1.min(rb.1);
        *out.entry((Some(ra.2), Some(rb.2))).or_default() += u128::from(last - first) + 1;
        if ra.2 != rb.2 {
            match moved.last_mut() {
                Some(m) if m.last + 1 == first && m.from == ra.2 && m.to == rb.2 => m.last = last,
                _ => moved.push(BucketMove {
                    first,
                    last,
                    from: ra.2.to_owned(),
                    to: rb.2.to_owned(),
                }),
            }
        }
        if ra.1 == last {
            i += 1;
        }
        if rb.1 == last {
            j += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoutingConfig;

    fn router(toml_text: &str) -> Router {
        let config: RoutingConfig = toml::from_str(toml_text).expect("test config parses");
        Router::new(&config).expect("test config is valid")
    }

    const BUCKETS: &str = r#"
        strategy = "buckets"
        default = "center"
        buckets = 10
        sets = [{ name = "set-a", pool = "pa" }, { name = "set-b", pool = "pb" }]
    "#;

    fn buckets(map: &str, overrides: &str) -> Router {
        router(&format!(
            "{BUCKETS}bucket_map = {map}\noverrides = {overrides}\n"
        ))
    }

    fn s(x: &str) -> Option<String> {
        Some(x.to_owned())
    }

    #[test]
    fn the_same_table_moves_nothing() {
        let a = buckets(r#"[{ range = "0-9", set = "set-a" }]"#, "{}");
        let m = moves(&a, &a, ["1", "alice"]);
        assert!(m.is_empty(), "{m:?}");
        assert_eq!((m.share, m.sampled, m.keys_checked), (0.0, None, 2));
        assert_eq!(m.bucket_count, Some(10));
    }

    #[test]
    fn buckets_and_overrides_are_listed_exactly() {
        let old = buckets(
            r#"[{ range = "0-4", set = "set-a" }, { range = "5-9", set = "set-b" }]"#,
            r#"{ "vip" = "set-a", "gone" = "set-b", "same" = "set-a" }"#,
        );
        // Buckets 3 and 4 move to set-b; "vip" moves to set-b; "gone" loses its override and
        // goes by its bucket; "new" is pinned where its bucket already was.
        let new = buckets(
            r#"[{ range = "0-2", set = "set-a" }, { range = "3-9", set = "set-b" }]"#,
            r#"{ "vip" = "set-b", "same" = "set-a", "17" = "set-b" }"#,
        );
        let m = moves(&old, &new, ["13", "14", "15", "2", "vip", "same"]);
        assert_eq!(
            m.buckets,
            [BucketMove {
                first: 3,
                last: 4,
                from: "set-a".into(),
                to: "set-b".into()
            }]
        );
        assert_eq!((m.share, m.sampled, m.bucket_count), (0.2, None, Some(10)));
        assert_eq!(
            m.flows,
            [Flow {
                from: s("set-a"),
                to: s("set-b"),
                share: 0.2
            }]
        );
        assert_eq!(
            m.overrides,
            [
                OverrideChange {
                    key: "17".into(),
                    before: None,
                    after: s("set-b"),
                    from: s("set-b"),
                    to: s("set-b"),
                },
                OverrideChange {
                    key: "gone".into(),
                    before: s("set-b"),
                    after: None,
                    from: s("set-b"),
                    to: new.route(Some("gone")).set.map(str::to_owned),
                },
                OverrideChange {
                    key: "vip".into(),
                    before: s("set-a"),
                    after: s("set-b"),
                    from: s("set-a"),
                    to: s("set-b"),
                },
            ]
        );
        let moved: Vec<(&str, Reason, Reason)> = m
            .keys
            .iter()
            .map(|k| (k.key.as_str(), k.from_reason, k.to_reason))
            .collect();
        assert_eq!(
            moved,
            [
                ("13", Reason::Bucket, Reason::Bucket),
                ("14", Reason::Bucket, Reason::Bucket),
                ("vip", Reason::Override, Reason::Override),
            ]
        );
        assert_eq!(m.keys_checked, 6);
        assert!(!m.is_empty());
    }

    const RING: &str = r#"
        default = "center"
        sets = [{ name = "set-a", pool = "pa" }, { name = "set-b", pool = "pb" }]
    "#;

    #[test]
    fn a_new_set_on_the_ring_takes_its_share_and_only_that_exactly() {
        let old = router(RING);
        let new = router(&RING.replace(
            "{ name = \"set-b\", pool = \"pb\" }",
            "{ name = \"set-b\", pool = \"pb\" }, { name = \"set-c\", pool = \"pc\" }",
        ));
        let keys: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let m = moves(&old, &new, keys.iter().map(String::as_str));
        assert_eq!(m.sampled, None, "two rings compare exactly");
        assert!((m.share - 1.0 / 3.0).abs() < 0.02, "{}", m.share);
        // Consistent hashing: keys only move to the new SET.
        assert!(m.flows.iter().all(|f| f.to == s("set-c")), "{:?}", m.flows);
        assert_eq!(m.flows.len(), 2);
        let sum: f64 = m.flows.iter().map(|f| f.share).sum();
        assert!((sum - m.share).abs() < 1e-12);
        assert_eq!(m.sets_added, ["set-c"]);
        // The listed keys that move are a sample of the same space: the shares agree.
        let listed = m.keys.len() as f64 / keys.len() as f64;
        assert!((listed - m.share).abs() < 0.015, "{listed} vs {}", m.share);
        assert!(m.keys.iter().all(|k| k.to == s("set-c")));
        // The exact walk over the rings and a sample of the same pair agree, flow by flow.
        let (mut exact, mut sample) = (BTreeMap::new(), BTreeMap::new());
        ring_weights(
            &old,
            old.ring().unwrap(),
            &new,
            new.ring().unwrap(),
            &mut exact,
        );
        sample_weights(&old, &new, 50_000, &mut sample);
        assert_eq!(
            exact.keys().collect::<Vec<_>>(),
            sample.keys().collect::<Vec<_>>()
        );
        for (pair, w) in &exact {
            let (e, s) = (*w as f64 / 2f64.powi(64), sample[pair] as f64 / 50_000.0);
            assert!((e - s).abs() < 0.01, "{pair:?}: exact {e}, sampled {s}");
        }
        let sampled = moves_sampling(&old, &router(&RING.replace("pb", "pb2")), [], 1);
        assert_eq!(sampled.share, 0.0);
        assert_eq!(
            sampled.pools,
            [PoolChange {
                set: "set-b".into(),
                from: "pb".into(),
                to: "pb2".into()
            }]
        );
    }

    #[test]
    fn weights_and_an_empty_ring() {
        let old = router(RING);
        let heavier = router(&RING.replace(
            "{ name = \"set-b\", pool = \"pb\" }",
            "{ name = \"set-b\", pool = \"pb\", weight = 3 }",
        ));
        let m = moves(&old, &heavier, []);
        // set-b goes from 1/2 to 3/4 of the ring: a quarter moves, all of it from set-a.
        assert!((m.share - 0.25).abs() < 0.02, "{}", m.share);
        assert_eq!(m.flows.len(), 1);
        assert_eq!(
            (m.flows[0].from.as_deref(), m.flows[0].to.as_deref()),
            (Some("set-a"), Some("set-b"))
        );

        let empty = router(
            &RING
                .replace("pool = \"pa\"", "pool = \"pa\", weight = 0")
                .replace("pool = \"pb\"", "pool = \"pb\", weight = 0"),
        );
        let m = moves(&old, &empty, []);
        assert_eq!(m.share, 1.0, "everything goes to the default pool");
        assert!(m.flows.iter().all(|f| f.to.is_none()));
        let m = moves(&empty, &empty, []);
        assert_eq!((m.share, m.flows.len()), (0.0, 0));
    }

    #[test]
    fn across_strategies_the_share_is_sampled_and_agrees_with_the_keys() {
        let old = router(RING);
        let new = buckets(r#"[{ range = "0-9", set = "set-a" }]"#, "{}");
        let m = moves_sampling(&old, &new, [], 20_000);
        assert_eq!(m.sampled, Some(20_000));
        // Everything on set-b moves to set-a: about half.
        assert!((m.share - 0.5).abs() < 0.02, "{}", m.share);
        assert_eq!(m.flows.len(), 1);
        assert_eq!(m.bucket_count, None);

        let other_key = router(&format!("key = \"client_property:uid\"\n{RING}"));
        let m = moves(&old, &other_key, []);
        assert_eq!(
            m.key_source,
            Some(("username".into(), "client_property:uid".into()))
        );
        assert!(!m.is_empty());
    }
}
