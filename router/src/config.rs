//! The `[routing]` section of setgate's TOML config, as written by people.
//!
//! These types only describe the file; they accept anything that is well-typed. Checking that the
//! names refer to each other and that the buckets add up is [`Router::new`](crate::Router::new)'s
//! job, so that every problem is reported at once instead of serde's first-error-wins.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `[routing]` section: how a client's key picks a SET.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Where the key comes from in the AMQP handshake. Default: the SASL user name.
    #[serde(default)]
    pub key: KeySource,
    /// How a key maps to a SET. Default: consistent hashing.
    #[serde(default)]
    pub strategy: Strategy,
    /// The pool for connections whose key maps to no SET (no key, or no SET in the ring).
    pub default: String,
    /// The SETs, in the order the operator listed them (the order does not change the mapping).
    #[serde(default)]
    pub sets: Vec<SetConfig>,
    /// Number of buckets; required with `strategy = "buckets"`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<u32>,
    /// Which SET owns which buckets; must cover every bucket exactly once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bucket_map: Vec<BucketRange>,
    /// Keys pinned to a SET (or to the default pool), whatever the strategy says.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, String>,
    /// Messaging URIs of the default (center) cluster, for flows whose destination routes each
    /// message to a SET (`route = "sets"`). Opaque text to the router: it never reads them, and
    /// they are not part of the mapping (nor of the fingerprint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_uris: Vec<String>,
    /// `reroute = { window = "30s" }`: what a reload does to the established connections whose
    /// key the new table sends to another SET (close them, spread over the window). Opt-in.
    /// It says what happens to open connections, not where keys go, so it is not part of the
    /// mapping (nor of the fingerprint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reroute: Option<Reroute>,
}

impl RoutingConfig {
    /// A config with every default and the given default pool: no SETs, so every key goes to
    /// `default`. Handy as the base of a struct literal (`..RoutingConfig::new("center")`).
    pub fn new(default: impl Into<String>) -> Self {
        RoutingConfig {
            key: KeySource::default(),
            strategy: Strategy::default(),
            default: default.into(),
            sets: Vec::new(),
            buckets: None,
            bucket_map: Vec::new(),
            overrides: BTreeMap::new(),
            default_uris: Vec::new(),
            reroute: None,
        }
    }

    /// Every pool name this section sends traffic to: `default` first, then each SET's pool in
    /// config order, without duplicates.
    ///
    /// The router knows nothing about pools (that would drag the proxy's config into a pure
    /// library), so the caller checks that each of these is defined.
    pub fn referenced_pools(&self) -> Vec<&str> {
        let mut pools: Vec<&str> = Vec::with_capacity(self.sets.len() + 1);
        for pool in std::iter::once(&self.default).chain(self.sets.iter().map(|s| &s.pool)) {
            if !pools.contains(&pool.as_str()) {
                pools.push(pool);
            }
        }
        pools
    }
}

/// One SET: a self-contained cluster serving a slice of the users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    /// The SET's name. It is what gets hashed onto the ring, so renaming a SET moves its keys.
    pub name: String,
    /// The pool that serves this SET. Changing it moves no keys.
    pub pool: String,
    /// Relative share of the keys under consistent hashing (0 = out of the ring, still reachable
    /// by overrides and failover). Ignored by the buckets strategy. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The SET that takes over when this SET's whole pool is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<String>,
    /// Messaging URIs of this SET's cluster, for flows that route messages to SETs. Opaque text
    /// to the router (see [`RoutingConfig::default_uris`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uris: Vec<String>,
}

fn default_weight() -> u32 {
    1
}

/// `[routing] reroute`: on a reload that moves keys, close the established connections whose key
/// now routes to another SET, spread evenly over `window` so the new SET is not hit by a
/// reconnect storm. The proxy does the closing; the router only carries and checks the setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reroute {
    /// How long the closes are spread over (`"30s"`); more than 0, at most
    /// [`MAX_REROUTE_WINDOW`](crate::MAX_REROUTE_WINDOW).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

/// One entry of `bucket_map`: a range of buckets and the SET that owns them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketRange {
    /// `"FIRST-LAST"` (inclusive, e.g. `"0-49"`) or a single bucket (`"37"`). Kept as text here
    /// and parsed by the router so that a malformed range is reported along with everything else.
    pub range: String,
    /// The SET that owns these buckets.
    pub set: String,
}

/// How a key is turned into a SET.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// A hash ring of virtual nodes: adding or removing a SET moves only that SET's share.
    #[default]
    ConsistentHash,
    /// A fixed number of buckets assigned to SETs by hand: moves happen one bucket at a time.
    Buckets,
}

impl Strategy {
    /// The name used in the config file: `consistent-hash` or `buckets`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::ConsistentHash => "consistent-hash",
            Strategy::Buckets => "buckets",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of the AMQP handshake is the routing key.
///
/// Written in the config as `"username"` or `"client_property:NAME"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// The SASL user name (PLAIN or AMQPLAIN).
    #[default]
    Username,
    /// A string entry of the client-properties table in Connection.StartOk, by name.
    ClientProperty(String),
}

const CLIENT_PROPERTY_PREFIX: &str = "client_property:";

impl KeySource {
    /// Parses the config spelling; the error says what is accepted.
    pub fn parse(s: &str) -> Result<KeySource, String> {
        if s == "username" {
            return Ok(KeySource::Username);
        }
        match s.strip_prefix(CLIENT_PROPERTY_PREFIX) {
            Some("") => Err(format!(
                "routing key {s:?} names no client property; write \"client_property:NAME\", e.g. \"client_property:user_id\""
            )),
            Some(name) => Ok(KeySource::ClientProperty(name.to_owned())),
            None => Err(format!(
                "routing key {s:?} is not understood; write \"username\" or \"client_property:NAME\", e.g. \"client_property:user_id\""
            )),
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Username => f.write_str("username"),
            KeySource::ClientProperty(name) => write!(f, "{CLIENT_PROPERTY_PREFIX}{name}"),
        }
    }
}

impl Serialize for KeySource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeySource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        KeySource::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<RoutingConfig, String> {
        toml::from_str(toml_text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn defaults_apply() {
        let c = parse(r#"default = "center""#).unwrap();
        assert_eq!(c.key, KeySource::Username);
        assert_eq!(c.strategy, Strategy::ConsistentHash);
        assert!(c.sets.is_empty() && c.bucket_map.is_empty() && c.overrides.is_empty());
        assert_eq!(c.buckets, None);

        let c = parse("default = \"c\"\nsets = [{ name = \"a\", pool = \"p\" }]").unwrap();
        assert_eq!(c.sets[0].weight, 1);
        assert_eq!(c.sets[0].failover, None);
    }

    #[test]
    fn key_source_spellings() {
        assert_eq!(KeySource::parse("username"), Ok(KeySource::Username));
        assert_eq!(
            KeySource::parse("client_property:user_id"),
            Ok(KeySource::ClientProperty("user_id".into()))
        );
        assert_eq!(
            KeySource::parse("user").unwrap_err(),
            "routing key \"user\" is not understood; write \"username\" or \"client_property:NAME\", e.g. \"client_property:user_id\""
        );
        assert_eq!(
            KeySource::parse("client_property:").unwrap_err(),
            "routing key \"client_property:\" names no client property; write \"client_property:NAME\", e.g. \"client_property:user_id\""
        );
        // Through serde the same message reaches the user.
        let err = parse("key = \"email\"\ndefault = \"c\"").unwrap_err();
        assert!(
            err.contains("routing key \"email\" is not understood"),
            "{err}"
        );
    }

    #[test]
    fn strategy_spellings() {
        assert_eq!(
            parse("strategy = \"buckets\"\ndefault = \"c\"")
                .unwrap()
                .strategy,
            Strategy::Buckets
        );
        let err = parse("strategy = \"ring\"\ndefault = \"c\"").unwrap_err();
        assert!(
            err.contains("consistent-hash") && err.contains("buckets"),
            "{err}"
        );
        assert_eq!(Strategy::ConsistentHash.to_string(), "consistent-hash");
    }

    #[test]
    fn unknown_fields_and_negative_weights_are_refused() {
        assert!(parse("default = \"c\"\nstrategie = \"buckets\"").is_err());
        assert!(
            parse("default = \"c\"\nsets = [{ name = \"a\", pool = \"p\", wieght = 2 }]").is_err()
        );
        assert!(
            parse("default = \"c\"\nsets = [{ name = \"a\", pool = \"p\", weight = -1 }]").is_err()
        );
        assert!(
            parse("default = \"c\"\nbucket_map = [{ range = \"0\", set = \"a\", x = 1 }]").is_err()
        );
    }

    #[test]
    fn serializes_back_to_the_same_config() {
        let text = r#"
            key = "client_property:user_id"
            strategy = "buckets"
            default = "center"
            buckets = 10
            sets = [{ name = "a", pool = "pa", weight = 3, failover = "b" }, { name = "b", pool = "pb" }]
            bucket_map = [{ range = "0-9", set = "a" }]
            overrides = { "vip" = "b" }
        "#;
        let c = parse(text).unwrap();
        let printed = toml::to_string(&c).unwrap();
        assert!(
            printed.contains("key = \"client_property:user_id\""),
            "{printed}"
        );
        assert!(printed.contains("strategy = \"buckets\""), "{printed}");
        assert_eq!(parse(&printed).unwrap(), c);
    }

    #[test]
    fn referenced_pools_lists_default_then_set_pools_once() {
        let c = parse(
            "default = \"center\"\nsets = [{ name = \"a\", pool = \"pa\" }, { name = \"b\", pool = \"pa\" }, { name = \"c\", pool = \"center\" }]",
        )
        .unwrap();
        assert_eq!(c.referenced_pools(), ["center", "pa"]);
    }
}
