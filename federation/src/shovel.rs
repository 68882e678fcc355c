//! `[[shovel]]`: move a queue's or an exchange's messages to an exchange or a queue of another
//! cluster, in the RabbitMQ shovel plugin's words (`src`/`dest`, `ack-mode`, `prefetch-count`,
//! `reconnect-delay`, `delete-after`, `add-forward-headers`). The checks are in `validate`;
//! shovels run on the same flow engine as federation links (`plan` turns both into flows).

use crate::config::AckMode;
use crate::route::{OnSetDown, RouteKind};
use crate::uri::AmqpUri;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// One shovel.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShovelConfig {
    /// Label for logs, metrics and `/api/shovels`; part of an exchange source's queue name.
    pub name: String,
    /// Where messages are taken from.
    pub source: SourceConfig,
    /// Where they go.
    pub destination: DestinationConfig,
    /// When the source message is acknowledged. Default on-confirm.
    #[serde(default)]
    pub ack_mode: AckMode,
    /// Unacknowledged messages in flight (1..=65535). Default 1000.
    #[serde(default = "default_prefetch_count")]
    pub prefetch_count: u32,
    /// Wait after every URI failed, or after a connection was lost. Default 5 s.
    #[serde(default = "default_reconnect_delay", with = "humantime_serde")]
    pub reconnect_delay: Duration,
    /// Stop after moving what the source queue holds at start, or N messages. Default never.
    #[serde(default)]
    pub delete_after: DeleteAfter,
    /// Prepend an entry to the `x-shovelled` header and set `x-shovelled-timestamp`.
    #[serde(default)]
    pub add_forward_headers: bool,
}

/// `source = { uris, queue }` or `{ uris, exchange, binding_keys }`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Tried in order within one connection attempt.
    #[serde(default)]
    pub uris: Vec<AmqpUri>,
    /// An existing queue to consume.
    pub queue: Option<String>,
    /// An exchange: setgate declares and binds its own durable queue `shovel: NAME`.
    pub exchange: Option<String>,
    /// Keys that queue is bound with. Default `["#"]`.
    pub binding_keys: Option<Vec<String>>,
}

/// `destination = { uris, exchange, routing_key }`, `{ uris, queue }`, or a routed destination
/// `{ route = "sets", key, exchange, on_set_down }` / `{ route = "all-sets", exchange,
/// include_default }`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Tried in order within one connection attempt (not with `route`).
    #[serde(default)]
    pub uris: Vec<AmqpUri>,
    /// The exchange messages are published to.
    pub exchange: Option<String>,
    /// Replaces each message's routing key.
    pub routing_key: Option<String>,
    /// A queue messages are published to (through the default exchange).
    pub queue: Option<String>,
    /// Route each message to its SET's cluster, or to every SET's.
    pub route: Option<RouteKind>,
    /// `route = "sets"`: where the message's key is read.
    pub key: Option<String>,
    /// `route = "sets"`: what happens to messages of a SET that is down. Default hold.
    pub on_set_down: Option<OnSetDown>,
    /// `route = "all-sets"`: the default (center) cluster receives them too. Default false.
    pub include_default: Option<bool>,
}

/// `delete_after`: `"never"`, `"queue-length"` or a number of messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DeleteAfter {
    /// Run until stopped.
    #[default]
    Never,
    /// Move the messages the source queue holds when the shovel starts, then stop.
    QueueLength,
    /// Move this many messages, then stop.
    Messages(u64),
}

impl DeleteAfter {
    /// The config spelling, for status and summaries.
    pub fn describe(self) -> String {
        match self {
            DeleteAfter::Never => "never".into(),
            DeleteAfter::QueueLength => "queue-length".into(),
            DeleteAfter::Messages(n) => n.to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for DeleteAfter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = DeleteAfter;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"never\", \"queue-length\" or a number of messages")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DeleteAfter, E> {
                match s {
                    "never" => Ok(DeleteAfter::Never),
                    "queue-length" => Ok(DeleteAfter::QueueLength),
                    other => Err(E::custom(format!(
                        "delete_after = \"{other}\": use \"never\", \"queue-length\" or a number of messages"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<DeleteAfter, E> {
                u64::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .map(DeleteAfter::Messages)
                    .ok_or_else(|| {
                        E::custom(format!(
                            "delete_after = {n}: a number of messages must be at least 1"
                        ))
                    })
            }
        }
        d.deserialize_any(V)
    }
}

fn default_prefetch_count() -> u32 {
    1000
}
fn default_reconnect_delay() -> Duration {
    Duration::from_secs(5)
}

impl ShovelConfig {
    /// The name of the queue setgate declares for an exchange source (per SET with all-sets).
    pub fn own_queue(&self, set: Option<&str>) -> String {
        match set {
            None => format!("shovel: {}", self.name),
            Some(s) => format!("shovel: {} -> {s}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        shovel: Vec<ShovelConfig>,
    }

    fn parse(s: &str) -> Result<Vec<ShovelConfig>, String> {
        toml::from_str::<File>(s)
            .map(|f| f.shovel)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn parses_the_plugin_words_and_defaults() {
        let s = parse(
            r#"
            [[shovel]]
            name = "dlq"
            source = { uris = ["amqp://u:p@a:5672/%2f"], queue = "orders.dlq" }
            destination = { uris = ["amqp://u:p@b:5672/%2f"], exchange = "orders", routing_key = "k" }
            delete_after = "queue-length"
            add_forward_headers = true

            [[shovel]]
            name = "n"
            source = { uris = ["amqp://a/%2f"], exchange = "x" }
            destination = { route = "sets", key = "header:x-user-id", on_set_down = "failover" }
            delete_after = 250
            ack_mode = "on-publish"
            prefetch_count = 10
            reconnect_delay = "1s"
            "#,
        )
        .unwrap();
        assert_eq!(s[0].delete_after, DeleteAfter::QueueLength);
        assert_eq!(s[0].ack_mode, AckMode::OnConfirm);
        assert_eq!(s[0].prefetch_count, 1000);
        assert_eq!(s[0].reconnect_delay, Duration::from_secs(5));
        assert!(s[0].add_forward_headers);
        assert_eq!(s[0].destination.routing_key.as_deref(), Some("k"));
        assert_eq!(s[1].delete_after, DeleteAfter::Messages(250));
        assert_eq!(s[1].destination.route, Some(RouteKind::Sets));
        assert_eq!(s[1].destination.on_set_down, Some(OnSetDown::Failover));
        assert_eq!(s[1].own_queue(None), "shovel: n");
        assert_eq!(s[1].own_queue(Some("set-a")), "shovel: n -> set-a");
    }

    #[test]
    fn bad_values_name_themselves() {
        let base = "[[shovel]]\nname='x'\nsource={queue='q'}\ndestination={queue='q'}\n";
        let e = parse(&format!("{base}delete_after='sometimes'\n")).unwrap_err();
        assert!(e.contains("delete_after = \"sometimes\""), "{e}");
        let e = parse(&format!("{base}delete_after=0\n")).unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        let e =
            parse(&base.replace("{queue='q'}\n", "{queue='q', route='some-sets'}\n")).unwrap_err();
        assert!(e.contains("some-sets"), "{e}");
        let e =
            parse(&base.replace("source={queue='q'}", "source={queue='q', tls=1}")).unwrap_err();
        assert!(e.contains("unknown field `tls`"), "{e}");
    }
}
