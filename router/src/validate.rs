//! Cross-field checks of the `[routing]` section (everything but the bucket map, which lives
//! with the buckets strategy in `buckets.rs`).
//!
//! Every check pushes to one list instead of returning early: `setgate check` promises every
//! error in one run.

use std::collections::BTreeMap;

use crate::config::{KeySource, RoutingConfig, Strategy};
use crate::error::ConfigError;
use crate::ring::{MAX_TOTAL_WEIGHT, VNODES_PER_WEIGHT};
use std::time::Duration;

/// The longest `routing.reroute.window`: past an hour, moved users would sit on their old SET
/// longer than any migration should take.
pub const MAX_REROUTE_WINDOW: Duration = Duration::from_secs(3600);

/// The SET names of a config, for resolving references and for "name one of ..." hints.
pub(crate) struct SetNames<'a> {
    /// Distinct non-empty names in config order: what the hints list.
    ordered: Vec<&'a str>,
    /// Name → index of its first definition (duplicates are reported, not indexed).
    index: BTreeMap<&'a str, usize>,
}

impl<'a> SetNames<'a> {
    fn new(cfg: &'a RoutingConfig) -> Self {
        let mut index = BTreeMap::new();
        for (i, set) in cfg.sets.iter().enumerate() {
            index.entry(set.name.as_str()).or_insert(i);
        }
        let mut ordered: Vec<&str> = Vec::with_capacity(cfg.sets.len());
        for set in &cfg.sets {
            if !set.name.is_empty() && !ordered.contains(&set.name.as_str()) {
                ordered.push(&set.name);
            }
        }
        SetNames { ordered, index }
    }

    /// Index (in `routing.sets`) of the SET called `name`.
    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The "no such SET" error for the field at `path`.
    pub(crate) fn unknown(&self, path: String, name: &str) -> ConfigError {
        ConfigError::new(
            path,
            format!("SET {name:?} is not defined; {}", self.hint()),
        )
    }

    fn override_hint(&self, default: &str) -> String {
        if self.ordered.is_empty() {
            format!("name the default pool {default:?}")
        } else {
            format!(
                "name one of {}, or the default pool {default:?}",
                self.ordered.join(", ")
            )
        }
    }

    fn hint(&self) -> String {
        if self.ordered.is_empty() {
            "routing.sets defines no SET".to_owned()
        } else {
            format!("name one of {}", self.ordered.join(", "))
        }
    }
}

/// Checks the key, the default pool, the SETs, their failovers and the overrides, pushing
/// every problem to `errors`. Returns the SET names for the checks that follow.
pub(crate) fn check<'a>(cfg: &'a RoutingConfig, errors: &mut Vec<ConfigError>) -> SetNames<'a> {
    let names = SetNames::new(cfg);

    // The deserializer refuses this, but a config can also be built in code.
    if cfg.key == KeySource::ClientProperty(String::new()) {
        errors.push(ConfigError::new(
            "routing.key",
            "names no client property; write \"client_property:NAME\", e.g. \"client_property:user_id\"",
        ));
    }
    if cfg.default.is_empty() {
        errors.push(ConfigError::new(
            "routing.default",
            "is empty; name the pool for keys that map to no SET, e.g. \"center\"",
        ));
    }

    for (i, set) in cfg.sets.iter().enumerate() {
        let path = format!("routing.sets[{i}]");
        if set.name.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.name"),
                "is empty; give the SET a name",
            ));
        } else if let Some(first) = names.index_of(&set.name).filter(|&first| first != i) {
            errors.push(ConfigError::new(
                format!("{path}.name"),
                format!(
                    "SET {:?} is already defined by routing.sets[{first}]; SET names must be unique",
                    set.name
                ),
            ));
        }
        if set.pool.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.pool"),
                format!("is empty; name the pool that serves SET {:?}", set.name),
            ));
        }
        match &set.failover {
            Some(to) if *to == set.name => errors.push(ConfigError::new(
                format!("{path}.failover"),
                format!(
                    "SET {to:?} cannot fail over to itself; name another SET or remove failover"
                ),
            )),
            Some(to) if names.index_of(to).is_none() => {
                errors.push(names.unknown(format!("{path}.failover"), to));
            }
            _ => {}
        }
    }

    if cfg.strategy == Strategy::ConsistentHash {
        let total: u64 = cfg.sets.iter().map(|s| u64::from(s.weight)).sum();
        if total > MAX_TOTAL_WEIGHT {
            errors.push(ConfigError::new(
                "routing.sets",
                format!(
                    "the weights add up to {total}, more than {MAX_TOTAL_WEIGHT} (each unit of weight is {VNODES_PER_WEIGHT} points on the ring); weights are relative, so divide them by a common factor"
                ),
            ));
        }
    }

    if let Some(reroute) = &cfg.reroute {
        let window = reroute.window;
        if window.is_zero() {
            errors.push(ConfigError::new(
                "routing.reroute.window",
                "is 0s; give the time over which the moved connections are closed, e.g. \"30s\" (or remove reroute to leave them open)",
            ));
        } else if window > MAX_REROUTE_WINDOW {
            errors.push(ConfigError::new(
                "routing.reroute.window",
                format!(
                    "is {}, more than {}; moved clients would stay on their old SET that long; use a shorter window (e.g. \"30s\")",
                    humantime_serde::re::humantime::format_duration(window),
                    humantime_serde::re::humantime::format_duration(MAX_REROUTE_WINDOW)
                ),
            ));
        }
    }

    for (key, target) in &cfg.overrides {
        let path = format!("routing.overrides.{key:?}");
        if key.is_empty() {
            errors.push(ConfigError::new(
                path,
                "an empty key never reaches an override (empty and missing keys go to the default pool); remove it",
            ));
        } else if names.index_of(target).is_none() && *target != cfg.default {
            errors.push(ConfigError::new(
                path,
                format!(
                    "{target:?} is neither a SET nor the default pool {:?}; {}",
                    cfg.default,
                    names.override_hint(&cfg.default)
                ),
            ));
        }
    }
    names
}
