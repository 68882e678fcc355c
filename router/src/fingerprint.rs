//! The canonical form of a routing table, whose XXH64 is the fingerprint.
//!
//! Hand-written rather than derived from serde so that its bytes are a contract (ROUTING.md)
//! that no serde or TOML upgrade can change, and so that it contains what routes where and
//! nothing else: SET order, TOML formatting, split-but-adjacent bucket ranges and weights under
//! the buckets strategy do not appear in it.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::config::{KeySource, Strategy};
use crate::set::Set;

/// First line of the canonical form. It names the version of the whole mapping contract
/// (hash, V, clockwise rule, bucket rule): bump it whenever any of them changes, so the
/// fingerprints of old and new edges differ.
pub const CONTRACT_VERSION: &str = "setgate-routing/1";

/// What the canonical form is made of, already validated and normalized by the router.
pub(crate) struct Table<'a> {
    pub(crate) key: &'a KeySource,
    pub(crate) strategy: Strategy,
    pub(crate) default: &'a str,
    pub(crate) sets: &'a [Set],
    pub(crate) buckets: Option<u32>,
    /// (first, last, SET name), ascending, adjacent ranges of one SET merged.
    pub(crate) ranges: &'a [(u32, u32, &'a str)],
    pub(crate) overrides: &'a BTreeMap<String, String>,
}

/// Writes `s` as `<byte length>:<bytes>`, so that no name, whatever characters it holds, can
/// be confused with a separator.
fn string(out: &mut String, s: &str) {
    write!(out, "{}:{s}", s.len()).expect("writing to a String cannot fail");
}

/// The canonical text of `t`; see ROUTING.md, "Fingerprint".
pub(crate) fn canonical(t: &Table<'_>) -> String {
    let mut out = String::new();
    out.push_str(CONTRACT_VERSION);
    out.push_str("\nkey ");
    string(&mut out, &t.key.to_string());
    out.push_str("\nstrategy ");
    string(&mut out, t.strategy.as_str());
    out.push_str("\ndefault ");
    string(&mut out, t.default);
    out.push('\n');

    let mut sets: Vec<&Set> = t.sets.iter().collect();
    sets.sort_by(|a, b| a.name().as_bytes().cmp(b.name().as_bytes()));
    for set in sets {
        out.push_str("set ");
        string(&mut out, set.name());
        out.push(' ');
        string(&mut out, set.pool());
        match t.strategy {
            Strategy::ConsistentHash => write!(out, " {}", set.weight()).expect("String"),
            Strategy::Buckets => out.push_str(" -"),
        }
        out.push(' ');
        match set.failover() {
            Some(f) => string(&mut out, f),
            None => out.push('-'),
        }
        out.push('\n');
    }

    if let Some(n) = t.buckets {
        writeln!(out, "buckets {n}").expect("String");
        for &(first, last, set) in t.ranges {
            write!(out, "range {first}-{last} ").expect("String");
            string(&mut out, set);
            out.push('\n');
        }
    }

    // BTreeMap<String, _> iterates in byte order of the keys.
    for (key, target) in t.overrides {
        out.push_str("override ");
        string(&mut out, key);
        out.push(' ');
        string(&mut out, target);
        out.push('\n');
    }
    out
}
