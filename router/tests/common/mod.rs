//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use setgate_router::{ConfigError, Router, RoutingConfig, SetConfig};

/// Parses a `[routing]` section body (without the header).
pub fn config(toml_text: &str) -> RoutingConfig {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("bad test TOML: {e}\n{toml_text}"))
}

/// Builds a router from TOML, panicking with every error if invalid.
pub fn router(toml_text: &str) -> Router {
    Router::new(&config(toml_text)).unwrap_or_else(|errors| panic!("invalid config: {errors:#?}"))
}

/// The errors of an invalid config, as displayed to the user.
pub fn errors(toml_text: &str) -> Vec<String> {
    match Router::new(&config(toml_text)) {
        Ok(_) => panic!("config unexpectedly valid:\n{toml_text}"),
        Err(errors) => errors.iter().map(ConfigError::to_string).collect(),
    }
}

/// A consistent-hash config with the given (name, weight) SETs, pool = name, default "center".
pub fn weighted(sets: &[(&str, u32)]) -> RoutingConfig {
    RoutingConfig {
        sets: sets
            .iter()
            .map(|&(name, weight)| SetConfig {
                name: name.into(),
                pool: name.into(),
                weight,
                failover: None,
                uris: Vec::new(),
            })
            .collect(),
        ..RoutingConfig::new("center")
    }
}

/// The SET of every key `user-{i}` for `i` in `0..n`.
pub fn assign(router: &Router, n: usize) -> Vec<Option<String>> {
    let mut key = String::new();
    (0..n)
        .map(|i| {
            key.clear();
            std::fmt::Write::write_fmt(&mut key, format_args!("user-{i}")).unwrap();
            router.route(Some(&key)).set.map(str::to_owned)
        })
        .collect()
}

/// Share (in %) of `assignment` that went to `set`.
pub fn share(assignment: &[Option<String>], set: &str) -> f64 {
    let hits = assignment
        .iter()
        .filter(|s| s.as_deref() == Some(set))
        .count();
    100.0 * hits as f64 / assignment.len() as f64
}
