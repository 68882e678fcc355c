//! setgate's exchange federation: messages published to an exchange on one RabbitMQ cluster
//! appear on the same exchange of another, at-least-once, from outside the brokers (no plugin).
//!
//! Each link runs one *flow* per (upstream, exchange): a durable queue
//! `federation: X -> DOWNSTREAM` on the upstream, bound to X, consumed with manual acks and
//! prefetch (single active consumer, so several setgate instances can run the same link);
//! every message is republished to X downstream with an `x-received-from` entry, and
//! acknowledged upstream only once the downstream confirmed it (`ack_mode = on-confirm`).
//!
//! Modules:
//! - [`config`]: the `[federation]` config section and its defaults; `validate`: its checks.
//! - [`uri`]: AMQP URIs whose passwords never reach logs, status or metrics.
//! - `plan`: links resolved into flows; the reload diff.
//! - `supervisor`: [`Federation`], the running links (start, status, reload, shutdown).
//! - `flow`: one flow's connect / set up / forward / retry loop.
//! - `connect`: ordered multi-URI connection and the broker's `cluster_name`.
//! - `topology`: exchange checks, the upstream queue, bindings, consumer.
//! - `forward`: the pipelined republish loop. `wire`: the connections it consumes from and
//!   publishes to.
//! - `stop`: the stop signal `flow` and `forward` both wait on.
//! - `tracker`: publish sequence -> delivery tag; which upstream acks a confirm allows.
//! - `hops`: `x-received-from`, `max_hops` and cycle checks; republished properties.
//!   `raw_props`: the same republished from the bytes read, where no parsing is needed;
//!   `raw_hops`: drops by `max_hops` and cycle decided from the bytes read.
//! - `status`: what `GET /api/links` shows. `metrics`: the `setgate_federation_*` series.
//! - [`error`]: why a flow attempt failed.

pub mod config;
pub mod error;
pub mod uri;

pub mod route;
pub mod shovel;

mod connect;
mod flow;
mod forward;
mod hops;
mod metrics;
mod oneshot;
mod outlet;
mod plan;
mod raw_hops;
mod raw_props;
mod shovelled;
mod status;
mod stop;
mod supervisor;
mod tls;
mod topology;
mod tracker;
mod validate;
mod validate_messaging;
mod wire;

pub use config::{
    AckMode, DownstreamConfig, FederationConfig, LinkConfig, QueueType, UpstreamConfig,
};
pub use error::{LinkError, Side};
pub use hops::RECEIVED_FROM;
pub use oneshot::OneShot;
pub use plan::{diff_config as diff, Change as LinkChange, MessagingConfig, UnitKind};
pub use shovel::{DeleteAfter, ShovelConfig};
pub use supervisor::{Control, ControlError, Federation};
pub use uri::AmqpUri;
