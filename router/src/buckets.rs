//! The buckets strategy: key → bucket number → the SET that owns that bucket.
//!
//! Buckets exist for operators who move users by hand: moving one bucket moves exactly the keys
//! in it, and numeric user ids land in predictable buckets (`12345 % 100 = 45`).

use std::num::NonZeroU32;

use crate::config::{RoutingConfig, Strategy};
use crate::error::ConfigError;
use crate::hash::key_hash;
use crate::validate::SetNames;

/// The bucket of `key` among `buckets`: the key's decimal value if it is 1 to 20 ASCII digits
/// that fit in a `u64` (leading zeros allowed: `"007"` is 7), otherwise XXH64(key bytes, seed 0);
/// either way taken modulo `buckets`.
#[inline]
pub fn bucket_of(key: &str, buckets: NonZeroU32) -> u32 {
    let n = numeric_value(key.as_bytes()).unwrap_or_else(|| key_hash(key));
    // The remainder is below `buckets`, itself a u32, so the narrowing cannot lose bits.
    (n % u64::from(buckets.get())) as u32
}

/// `Some(value)` if `key` is 1..=20 ASCII digits whose value fits in a `u64`.
#[inline]
fn numeric_value(key: &[u8]) -> Option<u64> {
    if key.is_empty() || key.len() > 20 {
        return None;
    }
    key.iter().try_fold(0u64, |acc, &c| {
        if c.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(c - b'0'))
        } else {
            None
        }
    })
}

/// A validated bucket map: contiguous ranges covering `0..buckets`, neighbours with the same
/// owner merged, so a lookup is one binary search over a handful of starts.
#[derive(Debug, Clone)]
pub(crate) struct BucketTable {
    buckets: NonZeroU32,
    /// First bucket of each range, ascending; `starts[0] == 0`.
    starts: Vec<u32>,
    /// SET index owning each range.
    owners: Vec<u32>,
}

impl BucketTable {
    /// Number of buckets.
    pub(crate) fn buckets(&self) -> NonZeroU32 {
        self.buckets
    }

    /// The SET index owning `key`, and its bucket.
    #[inline]
    pub(crate) fn owner(&self, key: &str) -> (u32, u32) {
        let bucket = bucket_of(key, self.buckets);
        // starts[0] == 0, so at least one start is <= bucket.
        let i = self.starts.partition_point(|&s| s <= bucket) - 1;
        (self.owners[i], bucket)
    }

    /// The ranges as (first, last, owner), ascending, neighbours with one owner merged: the
    /// canonical form the fingerprint hashes.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        let ends = self.starts[1..]
            .iter()
            .map(|&s| s - 1)
            .chain(std::iter::once(self.buckets.get() - 1));
        self.starts
            .iter()
            .zip(ends)
            .zip(&self.owners)
            .map(|((&first, last), &owner)| (first, last, owner))
    }
}

/// One parsed `bucket_map` entry.
struct Entry {
    index: usize,
    first: u64,
    last: u64,
    owner: Option<usize>,
}

/// Checks `buckets` and `bucket_map` against the strategy and the SETs, pushing every problem to
/// `errors`; returns the table when this part of the config is valid and the strategy uses it.
pub(crate) fn check(
    cfg: &RoutingConfig,
    sets: &SetNames,
    errors: &mut Vec<ConfigError>,
) -> Option<BucketTable> {
    if cfg.strategy == Strategy::ConsistentHash {
        // Silently ignoring a bucket map would let someone believe they moved a bucket.
        let fix = "set strategy = \"buckets\" or remove it";
        if cfg.buckets.is_some() {
            errors.push(ConfigError::new(
                "routing.buckets",
                format!("given with strategy = \"consistent-hash\", which would ignore it; {fix}"),
            ));
        }
        if !cfg.bucket_map.is_empty() {
            errors.push(ConfigError::new(
                "routing.bucket_map",
                format!("given with strategy = \"consistent-hash\", which would ignore it; {fix}"),
            ));
        }
        return None;
    }

    let buckets = match cfg.buckets {
        None => {
            errors.push(ConfigError::new(
                "routing.buckets",
                "strategy = \"buckets\" needs the number of buckets; add e.g. buckets = 100",
            ));
            None
        }
        Some(0) => {
            errors.push(ConfigError::new(
                "routing.buckets",
                "is 0; there must be at least 1 bucket (e.g. buckets = 100)",
            ));
            None
        }
        Some(n) => NonZeroU32::new(n),
    };
    let before = errors.len();
    let mut malformed = false;
    let mut entries = Vec::with_capacity(cfg.bucket_map.len());
    for (index, item) in cfg.bucket_map.iter().enumerate() {
        let path = format!("routing.bucket_map[{index}]");
        let owner = sets.index_of(&item.set);
        if owner.is_none() {
            errors.push(sets.unknown(format!("{path}.set"), &item.set));
        }
        match parse_range(&item.range) {
            Err(problem) => {
                malformed = true;
                errors.push(ConfigError::new(format!("{path}.range"), problem));
            }
            Ok((first, mut last)) => {
                if let Some(n) = buckets.map(|n| u64::from(n.get())) {
                    if last >= n {
                        errors.push(ConfigError::new(
                            format!("{path}.range"),
                            format!(
                                "{:?} goes past the last bucket, {} (buckets = {n})",
                                item.range,
                                n - 1
                            ),
                        ));
                        // Keep the part inside so the overlap and gap checks still speak sense.
                        last = n - 1;
                    }
                }
                if first <= last {
                    entries.push(Entry {
                        index,
                        first,
                        last,
                        owner,
                    });
                }
            }
        }
    }
    let buckets = buckets?;
    entries.sort_by_key(|e| (e.first, e.index));
    check_overlaps(cfg, &entries, errors);
    // An unparsable range would show up again as a gap: one mistake, one message.
    if !malformed {
        check_gaps(u64::from(buckets.get()), &entries, errors);
    }
    if errors.len() > before {
        return None;
    }
    let mut table = BucketTable {
        buckets,
        starts: Vec::new(),
        owners: Vec::new(),
    };
    for e in &entries {
        let owner = u32::try_from(e.owner?).expect("fewer than 2^32 SETs");
        if table.owners.last() != Some(&owner) {
            table
                .starts
                .push(u32::try_from(e.first).expect("checked against buckets"));
            table.owners.push(owner);
        }
    }
    Some(table)
}

/// Parses `"FIRST-LAST"` or `"N"` (ASCII digits only, inclusive, FIRST <= LAST).
fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let malformed = || {
        format!(
            "{text:?} is not a bucket range; write \"FIRST-LAST\" (e.g. \"0-49\") or one bucket (e.g. \"37\")"
        )
    };
    let number = |s: &str| {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        // Digits that overflow are simply past any bucket count: report them as out of range.
        Some(s.parse::<u64>().unwrap_or(u64::MAX))
    };
    match text.split_once('-') {
        Some((a, b)) => {
            let (first, last) = (
                number(a).ok_or_else(malformed)?,
                number(b).ok_or_else(malformed)?,
            );
            if first > last {
                return Err(format!("{text:?} starts after it ends; write \"{b}-{a}\""));
            }
            Ok((first, last))
        }
        None => number(text).map(|n| (n, n)).ok_or_else(malformed),
    }
}

fn check_overlaps(cfg: &RoutingConfig, sorted: &[Entry], errors: &mut Vec<ConfigError>) {
    // Compare each range with the earlier-starting one that reaches furthest: that is the one
    // it overlaps if it overlaps any.
    let mut reach: Option<&Entry> = None;
    for e in sorted {
        if let Some(r) = reach {
            if r.last >= e.first {
                let to = r.last.min(e.last);
                let on = if e.first == to {
                    format!("bucket {to}")
                } else {
                    format!("buckets {}-{to}", e.first)
                };
                errors.push(ConfigError::new(
                    format!("routing.bucket_map[{}].range", e.index),
                    format!(
                        "{:?} overlaps routing.bucket_map[{}] ({:?}) on {on}; every bucket belongs to exactly one SET",
                        cfg.bucket_map[e.index].range, r.index, cfg.bucket_map[r.index].range
                    ),
                ));
            }
        }
        if reach.is_none_or(|r| e.last > r.last) {
            reach = Some(e);
        }
    }
}

/// How many unassigned ranges to spell out before summarising the rest.
const GAPS_SHOWN: usize = 8;

fn check_gaps(buckets: u64, sorted: &[Entry], errors: &mut Vec<ConfigError>) {
    let mut gaps = Vec::new();
    let mut next = 0u64;
    for e in sorted {
        if e.first > next {
            gaps.push((next, e.first - 1));
        }
        next = next.max(e.last + 1);
    }
    if next < buckets {
        gaps.push((next, buckets - 1));
    }
    if gaps.is_empty() {
        return;
    }
    let shown: Vec<String> = gaps
        .iter()
        .take(GAPS_SHOWN)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    let mut list = shown.join(", ");
    if gaps.len() > GAPS_SHOWN {
        list.push_str(&format!(" and {} more ranges", gaps.len() - GAPS_SHOWN));
    }
    let (what, verb) = if gaps.len() == 1 && gaps[0].0 == gaps[0].1 {
        ("bucket", "is")
    } else {
        ("buckets", "are")
    };
    errors.push(ConfigError::new(
        "routing.bucket_map",
        format!(
            "{what} {list} {verb} not assigned to any SET; every bucket from 0 to {} needs one",
            buckets - 1
        ),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).unwrap()
    }

    #[test]
    fn numeric_keys_use_their_value() {
        assert_eq!(bucket_of("12345", n(100)), 45);
        assert_eq!(bucket_of("007", n(100)), 7, "leading zeros are allowed");
        assert_eq!(bucket_of("0", n(100)), 0);
        assert_eq!(bucket_of("18446744073709551615", n(1000)), 615, "u64::MAX");
        assert_eq!(bucket_of("00000000000000000042", n(100)), 42, "20 digits");
    }

    #[test]
    fn other_keys_use_xxh64() {
        for key in [
            "alice",
            "12a",
            "+7",
            " 7",
            "7 ",
            "-7",
            "18446744073709551616",  // u64::MAX + 1
            "000000000000000000042", // 21 digits
            "٣",                     // a digit, but not ASCII
        ] {
            assert_eq!(
                bucket_of(key, n(1000)),
                (key_hash(key) % 1000) as u32,
                "{key:?}"
            );
        }
    }

    #[test]
    fn ranges_parse_strictly() {
        assert_eq!(parse_range("0-49"), Ok((0, 49)));
        assert_eq!(parse_range("37"), Ok((37, 37)));
        assert_eq!(parse_range("5-5"), Ok((5, 5)));
        assert_eq!(
            parse_range("49-0"),
            Err("\"49-0\" starts after it ends; write \"0-49\"".into())
        );
        for bad in ["", "-", "1-", "-1", "a-b", "0 - 49", "1-2-3", "+1", "0x10"] {
            assert!(parse_range(bad).is_err(), "{bad:?}");
        }
    }
}
