//! `[[federation.upstream]]` and `[[federation.link]]`: the config and its defaults (the checks
//! are in `validate`).
//!
//! Names follow RabbitMQ's federation plugin (`reconnect-delay`, `prefetch-count`, `ack-mode`,
//! `max-hops`, `expires`, `message-ttl`, `queue-type`, `trust-user-id`) with TOML underscores.

use crate::route::{OnSetDown, RouteKind};
use crate::uri::AmqpUri;
use serde::Deserialize;
use std::time::Duration;

/// `[federation]`: the upstream clusters and the links that move exchanges from them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// `[[federation.upstream]]`: clusters messages are taken from.
    #[serde(default)]
    pub upstream: Vec<UpstreamConfig>,
    /// `[[federation.link]]`: which exchanges go from which upstreams to which downstream.
    #[serde(default)]
    pub link: Vec<LinkConfig>,
}

/// One upstream cluster and how links consume from it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name that links refer to; also a metric label.
    pub name: String,
    /// Tried in order within one connection attempt.
    pub uris: Vec<AmqpUri>,
    /// Wait after every URI failed, or after a connection was lost. Default 5 s.
    #[serde(default = "default_reconnect_delay", with = "humantime_serde")]
    pub reconnect_delay: Duration,
    /// Unacknowledged messages in flight per upstream queue (1..=65535). Default 1000.
    #[serde(default = "default_prefetch_count")]
    pub prefetch_count: u32,
    /// When the upstream message is acknowledged. Default on-confirm.
    #[serde(default)]
    pub ack_mode: AckMode,
    /// A message that already crossed this many links is not forwarded again. Default 1.
    #[serde(default = "default_max_hops")]
    pub max_hops: u32,
    /// `x-expires` of the upstream queue: deleted after being unused this long.
    #[serde(default, with = "humantime_serde")]
    pub expires: Option<Duration>,
    /// `x-message-ttl` of the upstream queue: messages older than this are discarded there.
    #[serde(default, with = "humantime_serde")]
    pub message_ttl: Option<Duration>,
    /// `x-queue-type` of the upstream queue. Default classic.
    #[serde(default)]
    pub queue_type: QueueType,
    /// Keep the `user_id` property when republishing (the downstream user must be allowed to
    /// impersonate). Default false: `user_id` is dropped.
    #[serde(default)]
    pub trust_user_id: bool,
}

/// When an upstream delivery is acknowledged (RabbitMQ's `ack-mode`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum AckMode {
    /// After the downstream confirmed the publish: nothing is lost, duplicates are possible.
    #[default]
    OnConfirm,
    /// As soon as the publish is written to the downstream connection.
    OnPublish,
    /// The upstream forgets the message on delivery: fastest, loses in-flight messages on faults.
    NoAck,
}

impl AckMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::OnConfirm => "on-confirm",
            AckMode::OnPublish => "on-publish",
            AckMode::NoAck => "no-ack",
        }
    }
}

/// `x-queue-type` of the upstream queue.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum QueueType {
    /// A classic queue.
    #[default]
    Classic,
    /// A replicated quorum queue.
    Quorum,
}

impl QueueType {
    /// The `x-queue-type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// One federation link: `exchanges` of every cluster in `upstreams` appear on `downstream`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Defaults to `UPSTREAMS->DOWNSTREAM`, e.g. `dc1->dc2` or `dc1+dc3->dc2`.
    #[serde(default)]
    pub name: Option<String>,
    /// Names of `[[federation.upstream]]` entries; several = multi-upstream.
    pub upstreams: Vec<String>,
    /// The cluster messages are republished to.
    pub downstream: DownstreamConfig,
    /// Exchanges federated: each must exist, with the same type, on both sides.
    pub exchanges: Vec<String>,
    /// Keys the upstream queue is bound with. Default `["#"]`.
    #[serde(default = "default_binding_keys")]
    pub binding_keys: Vec<String>,
    /// Publish with `mandatory`: a message the downstream exchange cannot route is returned,
    /// counted and requeued upstream (kept until a binding exists) instead of being dropped
    /// downstream. Default false, as RabbitMQ's plugin.
    #[serde(default)]
    pub mandatory: bool,
}

impl LinkConfig {
    /// The configured name, or `UPSTREAMS->DOWNSTREAM`.
    pub fn name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("{}->{}", self.upstreams.join("+"), self.downstream.label()),
        }
    }
}

/// The downstream of a link: one cluster (`{ name, uris }`), or the SETs' clusters of
/// `[routing]` (`{ route = "sets", key, exchange, on_set_down }` or `{ route = "all-sets",
/// exchange, include_default }`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DownstreamConfig {
    /// The cluster's name: part of the upstream queue name `federation: X -> NAME`. Routed
    /// downstreams default to `sets` / `all-sets`.
    #[serde(default)]
    pub name: String,
    /// Tried in order within one connection attempt (not with `route`).
    #[serde(default)]
    pub uris: Vec<AmqpUri>,
    /// Route each message to its SET's cluster, or to every SET's.
    pub route: Option<RouteKind>,
    /// `route = "sets"`: where the message's key is read (`header:NAME`, `property:NAME`,
    /// `routing_key`).
    pub key: Option<String>,
    /// With `route`: the exchange published to on the SETs' clusters. Default: the federated
    /// exchange.
    pub exchange: Option<String>,
    /// `route = "sets"`: what happens to messages of a SET that is down. Default hold.
    pub on_set_down: Option<OnSetDown>,
    /// `route = "all-sets"`: the default (center) cluster receives them too. Default false.
    pub include_default: Option<bool>,
}

impl DownstreamConfig {
    /// The name used in queue names and labels: the configured one, or the route's.
    pub fn label(&self) -> &str {
        match (self.name.is_empty(), self.route) {
            (true, Some(RouteKind::Sets)) => "sets",
            (true, Some(RouteKind::AllSets)) => "all-sets",
            _ => &self.name,
        }
    }
}

fn default_reconnect_delay() -> Duration {
    Duration::from_secs(5)
}
fn default_prefetch_count() -> u32 {
    1000
}
fn default_max_hops() -> u32 {
    1
}
fn default_binding_keys() -> Vec<String> {
    vec!["#".into()]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn parse(s: &str) -> FederationConfig {
        toml::from_str(s).unwrap()
    }

    pub(crate) const GOOD: &str = r#"
        [[upstream]]
        name = "dc1"
        uris = ["amqp://fed:secret@dc1-a:5672/%2f", "amqp://fed:secret@dc1-b:5672/%2f"]
        reconnect_delay = "2s"
        prefetch_count = 500
        ack_mode = "on-publish"
        max_hops = 2
        queue_type = "quorum"
        expires = "1h"
        message_ttl = "10m"
        trust_user_id = true

        [[upstream]]
        name = "dc3"
        uris = ["amqp://fed:secret@dc3:5672/%2f"]

        [[link]]
        upstreams = ["dc1", "dc3"]
        downstream = { name = "dc2", uris = ["amqp://fed:secret@127.0.0.1:5672/%2f"] }
        exchanges = ["orders", "events"]
    "#;

    #[test]
    fn parses_fields_and_defaults() {
        let c = parse(GOOD);
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let u = &c.upstream[0];
        assert_eq!(u.reconnect_delay, Duration::from_secs(2));
        assert_eq!(u.prefetch_count, 500);
        assert_eq!(u.ack_mode, AckMode::OnPublish);
        assert_eq!(u.max_hops, 2);
        assert_eq!(u.queue_type, QueueType::Quorum);
        assert_eq!(u.expires, Some(Duration::from_secs(3600)));
        assert_eq!(u.message_ttl, Some(Duration::from_secs(600)));
        assert!(u.trust_user_id);
        let d = &c.upstream[1];
        assert_eq!(d.reconnect_delay, Duration::from_secs(5));
        assert_eq!(d.prefetch_count, 1000);
        assert_eq!(d.ack_mode, AckMode::OnConfirm);
        assert_eq!(d.max_hops, 1);
        assert_eq!(d.queue_type, QueueType::Classic);
        assert_eq!(
            (d.expires, d.message_ttl, d.trust_user_id),
            (None, None, false)
        );
        let l = &c.link[0];
        assert_eq!(l.name(), "dc1+dc3->dc2");
        assert_eq!(l.binding_keys, vec!["#".to_string()]);
        assert!(!l.mandatory);
    }

    #[test]
    fn unknown_fields_and_values_are_rejected() {
        let e = toml::from_str::<FederationConfig>("[[upstream]]\nname='a'\nuris=[]\nprefetch=1\n")
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `prefetch`"), "{e}");
        let e = toml::from_str::<FederationConfig>(
            "[[upstream]]\nname='a'\nuris=[]\nack_mode='later'\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown variant `later`"), "{e}");
        let e = toml::from_str::<FederationConfig>(
            "[[upstream]]\nname='a'\nuris=[]\nqueue_type='stream'\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown variant `stream`"), "{e}");
        let e = toml::from_str::<FederationConfig>(
            "[[link]]\nupstreams=[]\nexchanges=[]\ndownstream={name='x',uris=[],tls=1}\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `tls`"), "{e}");
    }
}
