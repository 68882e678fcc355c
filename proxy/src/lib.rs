//! setgate's edge proxy: what HAProxy does in front of RabbitMQ, plus AMQP-aware SET routing.
//!
//! A map of the crate, in the order a connection meets it:
//!
//! - [`config`] and [`validate`]: the `[admin]`, `[[listener]]` and `[[pool]]` sections.
//! - [`build()`](build::build): config -> [`Snapshot`] (TLS files, token, router loaded once);
//!   [`diff()`](diff::diff): what a reload changes, pure.
//! - [`shared`]: the snapshot in use and the shutdown signals, read by everything below.
//! - [`runtime`]: [`Proxy`] — start, stage + commit a reload, readiness, drain.
//! - [`listener`] and [`listener_stats`]: bound sockets, accept loops, `maxconn`; [`limits`]:
//!   `rate_limit` and a `set` listener's per-user, per-vhost and per-source limits.
//! - connections run on `setgate-shards`' single-threaded runtimes, one per core.
//! - `conn`: one connection: PROXY header, TLS, then `tcp` mode or `set_mode`; `session`: the
//!   splice that both end in.
//! - [`amqp`]: the AMQP frames setgate speaks itself (via `setgate-amqp`) and the routing key.
//! - [`upstream`] and [`pool`]: picking a server (`balance`, backups, `maxconn`) and connecting
//!   with retries; [`warm`] and `preopen`: broker connections opened ahead of `set` clients.
//! - [`splice`]: copying bytes both ways without holding buffers while idle (and, for `set`
//!   connections, stopping between two AMQP frames).
//! - [`reroute`]: the spliced `set` connections by key and SET; closing those a reload moved.
//! - [`health`] and [`check`]: the rise/fall state machine and the tcp/amqp/http probes.
//! - [`admin`], [`status`] and [`status_page`]: the HTTP API, metrics endpoint and status page;
//!   [`state_file`]: admin states and weights kept across restarts.
//! - [`tls`], [`proxy_proto`], [`addr`], [`stream`]: the plumbing.

pub mod addr;
pub mod admin;
pub mod amqp;
pub mod build;
mod check;
pub mod config;
mod conn;
pub mod diff;
pub mod health;
pub mod limit_state;
pub mod limits;
pub mod listener;
pub mod listener_stats;
pub mod pool;
mod preopen;
pub mod proxy_proto;
pub mod reroute;
pub mod runtime;
mod session;
mod set_mode;
pub mod shared;
pub mod splice;
pub mod state_file;
pub mod status;
pub mod status_page;
pub mod stream;
pub mod tls;
pub mod upstream;
pub mod validate;
mod validate_limits;
pub mod warm;

pub use admin::AdminExtensions;
pub use build::build;
pub use config::ProxyConfig;
pub use diff::{diff, Change};
pub use runtime::{Proxy, Staged};
pub use shared::Snapshot;
