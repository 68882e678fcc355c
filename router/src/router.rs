//! [`Router`]: a validated routing table and the lookup every connection goes through.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;

use crate::buckets::{self, BucketTable};
use crate::config::{KeySource, RoutingConfig, Strategy};
use crate::error::ConfigError;
use crate::fingerprint;
use crate::hash::key_hash;
use crate::ring::Ring;
use crate::set::Set;
use crate::validate;

/// A validated, ready-to-use routing table. Immutable: a reload builds a new one.
///
/// `Send + Sync` with no interior mutability, and `route` takes `&self` and never allocates, so
/// one `Router` (behind an `Arc` in the runtime snapshot) serves every connection of an edge.
#[derive(Debug, Clone)]
pub struct Router {
    config: RoutingConfig,
    sets: Vec<Set>,
    /// SET name → index in `sets`, for `failover` and `set`.
    by_name: BTreeMap<String, usize>,
    /// Override key → where it goes; resolved once so a lookup is one map probe.
    overrides: BTreeMap<String, Target>,
    table: Table,
    fingerprint: u64,
}

/// Where an override sends its key.
#[derive(Debug, Clone, Copy)]
enum Target {
    Set(usize),
    Default,
}

/// The strategy's lookup structure.
#[derive(Debug, Clone)]
enum Table {
    Ring(Ring),
    Buckets(BucketTable),
}

/// The answer for one key: which SET (if any), which pool, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// The SET the key belongs to; `None` when it goes to the default pool.
    pub set: Option<&'a str>,
    /// The pool to connect to: the SET's pool, or the default pool.
    pub pool: &'a str,
    /// Which rule decided.
    pub reason: Reason,
}

/// Which rule decided a [`Route`]. Displayed in lowercase (`override`, `hash`, `bucket`,
/// `default`), as `setgate route` and the logs print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The key is listed in `routing.overrides`.
    Override,
    /// The consistent-hash ring placed the key.
    Hash,
    /// The key's bucket is owned by the SET.
    Bucket,
    /// No SET: the key is missing or empty, or no SET has weight > 0 on the ring.
    Default,
}

impl Reason {
    /// The lowercase name: `override`, `hash`, `bucket` or `default`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Override => "override",
            Reason::Hash => "hash",
            Reason::Bucket => "bucket",
            Reason::Default => "default",
        }
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Router {
    /// Validates `config` and builds the table, or returns every problem found.
    ///
    /// Pools are not checked: see [`RoutingConfig::referenced_pools`].
    pub fn new(config: &RoutingConfig) -> Result<Router, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let names = validate::check(config, &mut errors);
        // Also reports a bucket map given with consistent-hash, so it runs for both strategies.
        let bucket_table = buckets::check(config, &names, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }

        let sets: Vec<Set> = config
            .sets
            .iter()
            .map(|s| Set {
                name: s.name.clone(),
                pool: s.pool.clone(),
                weight: s.weight,
                failover: s.failover.clone(),
                failover_index: s.failover.as_deref().and_then(|f| names.index_of(f)),
            })
            .collect();
        let by_name: BTreeMap<String, usize> = sets
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        // A value that is both a SET name and the default pool's name means the SET.
        let overrides = config
            .overrides
            .iter()
            .map(|(key, to)| {
                let target = by_name.get(to).map_or(Target::Default, |&i| Target::Set(i));
                (key.clone(), target)
            })
            .collect();
        let table = match config.strategy {
            Strategy::ConsistentHash => {
                let weights: Vec<(&str, u32)> =
                    sets.iter().map(|s| (s.name.as_str(), s.weight)).collect();
                Table::Ring(Ring::build(&weights))
            }
            Strategy::Buckets => Table::Buckets(bucket_table.expect("valid buckets config")),
        };
        let mut router = Router {
            config: config.clone(),
            sets,
            by_name,
            overrides,
            table,
            fingerprint: 0,
        };
        // XXH64 seed 0 over the canonical bytes: the one hash of the contract, here too.
        router.fingerprint = key_hash(&router.canonical_form());
        Ok(router)
    }

    /// Routes one connection by its key (`None` when the handshake carried none).
    ///
    /// In order: an override for the key wins; a missing or empty key goes to the default pool;
    /// then the strategy decides; a consistent-hash ring with no SET of weight > 0 sends
    /// everything to the default pool. Never allocates.
    #[inline]
    pub fn route<'a>(&'a self, key: Option<&str>) -> Route<'a> {
        if let Some(target) = key.and_then(|k| self.overrides.get(k)) {
            return match *target {
                Target::Set(i) => self.set_route(i, Reason::Override),
                Target::Default => self.default_route(Reason::Override),
            };
        }
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return self.default_route(Reason::Default);
        };
        match &self.table {
            Table::Ring(ring) => match ring.owner(key_hash(key)) {
                Some(i) => self.set_route(i as usize, Reason::Hash),
                None => self.default_route(Reason::Default),
            },
            Table::Buckets(table) => self.set_route(table.owner(key).0 as usize, Reason::Bucket),
        }
    }

    #[inline]
    fn set_route(&self, i: usize, reason: Reason) -> Route<'_> {
        let set = &self.sets[i];
        Route {
            set: Some(&set.name),
            pool: &set.pool,
            reason,
        }
    }

    #[inline]
    fn default_route(&self, reason: Reason) -> Route<'_> {
        Route {
            set: None,
            pool: &self.config.default,
            reason,
        }
    }

    /// The standby of `set`: `(failover SET name, its pool)`, or `None` if `set` is unknown or
    /// has no failover. One step only: the caller decides whether to follow a chain.
    pub fn failover(&self, set: &str) -> Option<(&str, &str)> {
        let standby = &self.sets[self.set(set)?.failover_index?];
        Some((&standby.name, &standby.pool))
    }

    /// The SET called `name`.
    pub fn set(&self, name: &str) -> Option<&Set> {
        self.by_name.get(name).map(|&i| &self.sets[i])
    }

    /// Every SET, in config order.
    pub fn sets(&self) -> &[Set] {
        &self.sets
    }

    /// The pool for keys that map to no SET.
    pub fn default_pool(&self) -> &str {
        &self.config.default
    }

    /// Where the key comes from in the handshake.
    pub fn key_source(&self) -> &KeySource {
        &self.config.key
    }

    /// The strategy in use.
    pub fn strategy(&self) -> Strategy {
        self.config.strategy
    }

    /// The bucket of `key` under the buckets strategy (`None` under consistent-hash), for
    /// printing next to a route.
    pub fn bucket(&self, key: &str) -> Option<u32> {
        match &self.table {
            Table::Buckets(table) => Some(table.owner(key).1),
            Table::Ring(_) => None,
        }
    }

    /// The number of buckets under the buckets strategy.
    pub fn buckets(&self) -> Option<NonZeroU32> {
        match &self.table {
            Table::Buckets(table) => Some(table.buckets()),
            Table::Ring(_) => None,
        }
    }

    /// The consistent-hash ring, when that is the strategy (for [`crate::moves`]).
    pub(crate) fn ring(&self) -> Option<&Ring> {
        match &self.table {
            Table::Ring(ring) => Some(ring),
            Table::Buckets(_) => None,
        }
    }

    /// The bucket ranges as (first, last, SET name), ascending, when the strategy is buckets
    /// (for [`crate::moves`]).
    pub(crate) fn bucket_ranges(&self) -> Option<Vec<(u32, u32, &str)>> {
        match &self.table {
            Table::Buckets(table) => Some(
                table
                    .ranges()
                    .map(|(first, last, owner)| (first, last, self.sets[owner as usize].name()))
                    .collect(),
            ),
            Table::Ring(_) => None,
        }
    }

    /// The config this router was built from, as given.
    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// 16 lowercase hex digits: XXH64 (seed 0) of [`Router::canonical_form`]. Two edges print
    /// the same fingerprint exactly when they route every key the same way.
    pub fn fingerprint(&self) -> String {
        format!("{:016x}", self.fingerprint)
    }

    /// The normalized routing table as text, the input of [`Router::fingerprint`]; see
    /// ROUTING.md for its exact form. Useful to diff two edges whose fingerprints differ.
    pub fn canonical_form(&self) -> String {
        let ranges = self.bucket_ranges().unwrap_or_default();
        fingerprint::canonical(&fingerprint::Table {
            key: &self.config.key,
            strategy: self.config.strategy,
            default: &self.config.default,
            sets: &self.sets,
            buckets: self.buckets().map(NonZeroU32::get),
            ranges: &ranges,
            overrides: &self.config.overrides,
        })
    }
}
