//! setgate's edge proxy: what HAProxy does in front of RabbitMQ, plus AMQP-aware SET routing.
//!
//! A map of the crate, in the order a connection meets it:
//!
//! - [`config`] and [`validate`]: the `[admin]`, `[[listener]]` and `[[pool]]` sections.
//! - [`runtime`]: [`Proxy`] — start, reload (one snapshot swapped whole), readiness, drain.
//! - [`listener`]: bound sockets, accept loops, `maxconn`.
//! - [`conn`]: one connection: PROXY header, TLS, then `tcp` mode or [`set_mode`].
//! - [`amqp`]: the AMQP frames setgate speaks itself (via `setgate-amqp`) and the routing key.
//! - [`upstream`] and [`pool`]: picking a server (`balance`, backups, `maxconn`) and connecting
//!   with retries.
//! - [`splice`]: copying bytes both ways without holding buffers while idle.
//! - [`health`] and [`check`]: the rise/fall state machine and the tcp/amqp/http probes.
//! - [`admin`], [`status`] and [`status_page`]: the HTTP API, metrics endpoint and status page.
//! - [`tls`], [`proxy_proto`], [`addr`], [`stream`]: the plumbing.

pub mod addr;
pub mod admin;
pub mod amqp;
mod check;
pub mod config;
mod conn;
pub mod health;
pub mod listener;
pub mod pool;
pub mod proxy_proto;
pub mod runtime;
mod set_mode;
pub mod splice;
pub mod status;
pub mod status_page;
pub mod stream;
pub mod tls;
pub mod upstream;
pub mod validate;

pub use admin::AdminExtensions;
pub use config::ProxyConfig;
pub use runtime::Proxy;
