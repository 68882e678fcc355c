//! setgate's routing function: user id (key) → SET.
//!
//! A pure library: no I/O, no threads, no clock. Every edge, tool and test that links it
//! computes the same mapping, and the mapping itself is a documented contract (below, and in
//! `router/ROUTING.md`) so that it can be recomputed outside Rust.
//!
//! # Map of the crate
//!
//! - `config` — [`RoutingConfig`] and friends: the `[routing]` TOML section as written.
//! - `router` — [`Router`]: validation ([`Router::new`]), [`Router::route`], failover, accessors.
//! - `validate` — cross-field checks that collect every [`ConfigError`] at once.
//! - `hash` — XXH64 over exact bytes ([`key_hash`]), the only hash in the mapping.
//! - `ring` — the consistent-hash ring of virtual nodes.
//! - `buckets` — the buckets strategy ([`bucket_of`]) and bucket-map checks.
//! - `set` — [`Set`]: one SET as the router sees it.
//! - `moves` — [`moves`]: what a new table moves (share, buckets, overrides, listed keys).
//! - `fingerprint` — the canonical form behind [`Router::fingerprint`].
//! - `error` — [`ConfigError`].
//!
//! # Example
//!
//! ```
//! use setgate_router::{Reason, Router, RoutingConfig, SetConfig};
//!
//! let config = RoutingConfig {
//!     default: "center".into(),
//!     sets: vec![
//!         SetConfig { name: "set-a".into(), pool: "pool-a".into(), weight: 1, failover: Some("set-b".into()), uris: vec![] },
//!         SetConfig { name: "set-b".into(), pool: "pool-b".into(), weight: 1, failover: None, uris: vec![] },
//!     ],
//!     overrides: [("vip-42".to_string(), "set-b".to_string())].into(),
//!     ..RoutingConfig::new("center")
//! };
//! let router = Router::new(&config).expect("valid config");
//!
//! let route = router.route(Some("vip-42"));
//! assert_eq!((route.set, route.pool, route.reason), (Some("set-b"), "pool-b", Reason::Override));
//! assert_eq!(router.route(None).pool, "center");
//! assert_eq!(router.route(Some("alice")).reason, Reason::Hash);
//! assert_eq!(router.failover("set-a"), Some(("set-b", "pool-b")));
//! assert_eq!(router.fingerprint().len(), 16);
//! ```
//!
#![doc = include_str!("../ROUTING.md")]
#![deny(missing_docs)]

mod buckets;
mod config;
mod error;
mod fingerprint;
mod hash;
mod moves;
mod ring;
mod router;
mod set;
mod validate;

pub use buckets::bucket_of;
pub use config::{BucketRange, KeySource, Reroute, RoutingConfig, SetConfig, Strategy};
pub use error::ConfigError;
pub use fingerprint::CONTRACT_VERSION;
pub use hash::key_hash;
pub use moves::{moves, BucketMove, Flow, KeyMove, Moves, OverrideChange, PoolChange, SAMPLE_KEYS};
pub use ring::{MAX_TOTAL_WEIGHT, VNODES_PER_WEIGHT};
pub use router::{Reason, Route, Router};
pub use set::Set;
pub use validate::MAX_REROUTE_WINDOW;
