//! Destinations that route each message to a SET's cluster: which key a message carries, and
//! which cluster (or hold queue) it goes to. Pure: the answer key -> SET is the router's
//! ([`setgate_router::Router::route`]), never recomputed here, so a message for alice lands on
//! the cluster her connection lands on.

use crate::raw_props;
use crate::uri::AmqpUri;
#[cfg(test)]
use lapin::{
    types::{AMQPValue, FieldTable},
    BasicProperties,
};
use serde::Deserialize;
use setgate_router::{Router, RoutingConfig};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// `route = "sets"` or `"all-sets"` on a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteKind {
    /// Each message to the cluster of the SET its key routes to.
    Sets,
    /// Every message to every SET's cluster.
    AllSets,
}

/// What happens to a message whose SET's cluster is down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnSetDown {
    /// Park it in a hold queue on the source cluster; delivered when the SET is back.
    #[default]
    Hold,
    /// Send it to the SET's failover SET (held if that one is down too).
    Failover,
}

/// Where a message's routing key is read: `header:NAME`, `property:NAME` or `routing_key`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MessageKey {
    /// A header of the message.
    Header(String),
    /// A basic property.
    Property(Property),
    /// The routing key it was published with.
    RoutingKey,
}

/// The basic properties a key may be read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Property {
    /// `user_id`.
    UserId,
    /// `message_id`.
    MessageId,
    /// `correlation_id`.
    CorrelationId,
    /// `app_id`.
    AppId,
    /// `type`.
    Type,
    /// `reply_to`.
    ReplyTo,
}

const PROPERTIES: &[(&str, Property)] = &[
    ("user_id", Property::UserId),
    ("message_id", Property::MessageId),
    ("correlation_id", Property::CorrelationId),
    ("app_id", Property::AppId),
    ("type", Property::Type),
    ("reply_to", Property::ReplyTo),
];

impl MessageKey {
    /// Parses the config spelling; the error says what is accepted.
    pub fn parse(s: &str) -> Result<MessageKey, String> {
        if s == "routing_key" {
            return Ok(MessageKey::RoutingKey);
        }
        if let Some(name) = s.strip_prefix("header:") {
            if name.is_empty() {
                return Err(format!(
                    "\"{s}\" names no header; write \"header:NAME\", e.g. \"header:x-user-id\""
                ));
            }
            return Ok(MessageKey::Header(name.to_string()));
        }
        if let Some(name) = s.strip_prefix("property:") {
            return PROPERTIES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, p)| MessageKey::Property(*p))
                .ok_or_else(|| {
                    let names: Vec<&str> = PROPERTIES.iter().map(|(n, _)| *n).collect();
                    format!(
                        "\"{s}\": unknown property; use one of {}",
                        names
                            .iter()
                            .map(|n| format!("property:{n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                });
        }
        Err(format!(
            "\"{s}\" is not a message key; write \"header:NAME\", \"property:user_id\" (or another basic property) or \"routing_key\""
        ))
    }

    /// The key of one message's parsed properties: the model [`MessageKey::of_raw`], which
    /// the flow uses, is checked against.
    #[cfg(test)]
    pub fn of<'a>(&self, props: &'a BasicProperties, routing_key: &'a str) -> Option<Cow<'a, str>> {
        let key: Option<Cow<'a, str>> = match self {
            MessageKey::RoutingKey => Some(Cow::Borrowed(routing_key)),
            MessageKey::Header(name) => {
                props.headers().as_ref().and_then(|h| header_value(h, name))
            }
            MessageKey::Property(p) => {
                let v = match p {
                    Property::UserId => props.user_id(),
                    Property::MessageId => props.message_id(),
                    Property::CorrelationId => props.correlation_id(),
                    Property::AppId => props.app_id(),
                    Property::Type => props.kind(),
                    Property::ReplyTo => props.reply_to(),
                };
                v.as_ref().map(|s| Cow::Borrowed(s.as_str()))
            }
        };
        key.filter(|k| !k.is_empty())
    }

    /// The key of one message, if it has one, read from its properties as they arrived (a
    /// content header's flags and fields, unparsed). Header values that are strings are taken
    /// as UTF-8 (each invalid sequence replaced); integers in decimal (a numeric user id routes
    /// as its digits, as the router's buckets expect). Anything else, or an empty value, is no
    /// key. `None` when the properties cannot be walked.
    pub(crate) fn of_raw<'a>(
        &self,
        raw: &'a [u8],
        routing_key: &'a str,
    ) -> Option<Option<Cow<'a, str>>> {
        let key = match self {
            MessageKey::RoutingKey => Some(Cow::Borrowed(routing_key)),
            MessageKey::Header(name) => match raw_props::header(raw, name)? {
                Some((kind, value)) => raw_header_value(kind, value)?,
                None => None,
            },
            MessageKey::Property(p) => {
                let bit = match p {
                    Property::UserId => raw_props::USER_ID,
                    Property::MessageId => raw_props::MESSAGE_ID,
                    Property::CorrelationId => raw_props::CORRELATION_ID,
                    Property::AppId => raw_props::APP_ID,
                    Property::Type => raw_props::TYPE,
                    Property::ReplyTo => raw_props::REPLY_TO,
                };
                // Not UTF-8 (which brokers let through): read as a header's long string is,
                // where a parser would refuse the whole message.
                raw_props::short_string(raw, bit)?.map(String::from_utf8_lossy)
            }
        };
        Some(key.filter(|k| !k.is_empty()))
    }
}

impl fmt::Display for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageKey::RoutingKey => f.write_str("routing_key"),
            MessageKey::Header(n) => write!(f, "header:{n}"),
            MessageKey::Property(p) => {
                let name = PROPERTIES.iter().find(|(_, q)| q == p).map_or("?", |x| x.0);
                write!(f, "property:{name}")
            }
        }
    }
}

/// [`header_value`] of a value as encoded (`kind`, then `value`'s bytes): `Some(None)` for a
/// type that is no key. Types as amq-protocol reads RabbitMQ's tables: `s` is a 16-bit integer
/// and `l` a signed 64-bit one.
fn raw_header_value(kind: u8, value: &[u8]) -> Option<Option<Cow<'_, str>>> {
    fn int<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
        v.try_into().ok()
    }
    Some(Some(match kind {
        b'S' => String::from_utf8_lossy(value.get(4..)?),
        b'b' => Cow::Owned(i8::from_be_bytes(int(value)?).to_string()),
        b'B' => Cow::Owned(u8::from_be_bytes(int(value)?).to_string()),
        b's' | b'U' => Cow::Owned(i16::from_be_bytes(int(value)?).to_string()),
        b'u' => Cow::Owned(u16::from_be_bytes(int(value)?).to_string()),
        b'I' => Cow::Owned(i32::from_be_bytes(int(value)?).to_string()),
        b'i' => Cow::Owned(u32::from_be_bytes(int(value)?).to_string()),
        b'L' | b'l' => Cow::Owned(i64::from_be_bytes(int(value)?).to_string()),
        _ => return Some(None),
    }))
}

#[cfg(test)]
fn header_value<'a>(h: &'a FieldTable, name: &str) -> Option<Cow<'a, str>> {
    Some(match h.inner().get(name)? {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()),
        AMQPValue::ShortString(s) => Cow::Borrowed(s.as_str()),
        AMQPValue::ShortShortInt(v) => Cow::Owned(v.to_string()),
        AMQPValue::ShortShortUInt(v) => Cow::Owned(v.to_string()),
        AMQPValue::ShortInt(v) => Cow::Owned(v.to_string()),
        AMQPValue::ShortUInt(v) => Cow::Owned(v.to_string()),
        AMQPValue::LongInt(v) => Cow::Owned(v.to_string()),
        AMQPValue::LongUInt(v) => Cow::Owned(v.to_string()),
        AMQPValue::LongLongInt(v) => Cow::Owned(v.to_string()),
        _ => return None,
    })
}

/// The name of the center in per-SET status and hold queues.
pub const DEFAULT_TARGET: &str = "default";

/// One cluster a routed destination can publish to: a SET's, or the default (center).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cluster {
    /// The SET's name, or [`DEFAULT_TARGET`].
    pub name: String,
    pub uris: Vec<AmqpUri>,
}

/// A `route = "sets"` destination, resolved: the router, where each key is read, and the
/// clusters (index 0 is the default, then the SETs in config order).
#[derive(Debug, Clone)]
pub(crate) struct SetRoutes {
    pub router: Arc<Router>,
    pub key: MessageKey,
    pub clusters: Vec<Cluster>,
    pub on_set_down: OnSetDown,
    by_set: HashMap<String, usize>,
    /// Each cluster's failover cluster (index), from the router's `failover`.
    failover: Vec<Option<usize>>,
}

impl PartialEq for SetRoutes {
    fn eq(&self, other: &Self) -> bool {
        // `reroute` is about the proxy's open connections: changing it moves no message.
        let table = |r: &Router| RoutingConfig {
            reroute: None,
            ..r.config().clone()
        };
        table(&self.router) == table(&other.router)
            && self.key == other.key
            && self.clusters == other.clusters
            && self.on_set_down == other.on_set_down
    }
}

/// Where one message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Choice {
    /// Publish to cluster `i` (`failed_over`: it is the failover of the key's SET, which is down).
    Cluster { index: usize, failed_over: bool },
    /// Park it in the hold queue of cluster `i` (its SET, and any failover, is down).
    Hold(usize),
}

impl SetRoutes {
    /// Resolves the clusters' URIs from `[routing]`. `validate` has checked that each SET has
    /// URIs; a config that gets here without them fails with the same words.
    pub fn new(
        routing: &RoutingConfig,
        key: MessageKey,
        on_set_down: OnSetDown,
    ) -> Result<SetRoutes, String> {
        let router = Router::new(routing).map_err(|errs| {
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let mut clusters = vec![Cluster {
            name: DEFAULT_TARGET.into(),
            uris: routing.default_uris.iter().map(AmqpUri::new).collect(),
        }];
        clusters.extend(routing.sets.iter().map(|s| Cluster {
            name: s.name.clone(),
            uris: s.uris.iter().map(AmqpUri::new).collect(),
        }));
        let by_set: HashMap<String, usize> = clusters
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let failover = clusters
            .iter()
            .map(|c| {
                router
                    .failover(&c.name)
                    .and_then(|(set, _)| by_set.get(set).copied())
            })
            .collect();
        Ok(SetRoutes {
            router: Arc::new(router),
            key,
            clusters,
            on_set_down,
            by_set,
            failover,
        })
    }

    /// The cluster a key routes to (0, the default, for no key or a key of no SET).
    pub fn cluster_of(&self, key: Option<&str>) -> usize {
        self.router
            .route(key)
            .set
            .and_then(|s| self.by_set.get(s).copied())
            .unwrap_or(0)
    }

    /// Where a message whose key routes to cluster `home` goes, given which clusters are up.
    pub fn choose(&self, home: usize, up: impl Fn(usize) -> bool) -> Choice {
        if up(home) {
            return Choice::Cluster {
                index: home,
                failed_over: false,
            };
        }
        if self.on_set_down == OnSetDown::Failover {
            if let Some(f) = self.failover[home].filter(|&f| up(f)) {
                return Choice::Cluster {
                    index: f,
                    failed_over: true,
                };
            }
        }
        Choice::Hold(home)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{LongString, ShortString};

    fn routing() -> RoutingConfig {
        toml::from_str(
            r#"
            default = "center"
            default_uris = ["amqp://c:5672/%2f"]
            strategy = "buckets"
            buckets = 4
            bucket_map = [{ range = "0-1", set = "set-a" }, { range = "2-3", set = "set-b" }]
            overrides = { "vip" = "set-b", "boss" = "center" }
            sets = [
              { name = "set-a", pool = "pa", failover = "set-b", uris = ["amqp://a:5672/%2f"] },
              { name = "set-b", pool = "pb", uris = ["amqp://b:5672/%2f"] },
            ]
            "#,
        )
        .unwrap()
    }

    #[test]
    fn keys_parse_and_print_back() {
        for s in [
            "header:x-user-id",
            "property:user_id",
            "property:type",
            "routing_key",
        ] {
            assert_eq!(MessageKey::parse(s).unwrap().to_string(), s);
        }
        assert!(MessageKey::parse("header:")
            .unwrap_err()
            .contains("header:NAME"));
        assert!(MessageKey::parse("property:colour")
            .unwrap_err()
            .contains("property:user_id"));
        assert!(MessageKey::parse("username")
            .unwrap_err()
            .contains("is not a message key"));
    }

    #[test]
    fn keys_are_read_from_headers_properties_and_the_routing_key() {
        let mut h = FieldTable::default();
        h.insert(
            "x-user-id".into(),
            AMQPValue::LongString(LongString::from("alice")),
        );
        h.insert("uid".into(), AMQPValue::LongLongInt(42));
        h.insert("empty".into(), AMQPValue::LongString(LongString::from("")));
        h.insert("flag".into(), AMQPValue::Boolean(true));
        let p = BasicProperties::default()
            .with_headers(h)
            .with_user_id(ShortString::from("bob"));
        let of = |k: &str| {
            MessageKey::parse(k)
                .unwrap()
                .of(&p, "rk.1")
                .map(|c| c.into_owned())
        };
        assert_eq!(of("header:x-user-id").as_deref(), Some("alice"));
        assert_eq!(of("header:uid").as_deref(), Some("42"));
        assert_eq!(of("header:empty"), None);
        assert_eq!(of("header:flag"), None);
        assert_eq!(of("header:missing"), None);
        assert_eq!(of("property:user_id").as_deref(), Some("bob"));
        assert_eq!(of("property:message_id"), None);
        assert_eq!(of("routing_key").as_deref(), Some("rk.1"));
    }

    #[test]
    fn a_key_goes_where_the_router_sends_its_connection() {
        let cfg = routing();
        let r = SetRoutes::new(&cfg, MessageKey::RoutingKey, OnSetDown::Hold).unwrap();
        let router = Router::new(&cfg).unwrap();
        for key in ["alice", "bob", "carol", "vip", "boss", "0", "3"] {
            let want = match router.route(Some(key)).set {
                None => "default",
                Some(s) => s,
            };
            assert_eq!(r.clusters[r.cluster_of(Some(key))].name, want, "{key}");
        }
        assert_eq!(r.cluster_of(None), 0);
        assert_eq!(r.clusters[r.cluster_of(Some("vip"))].name, "set-b");
        assert_eq!(r.cluster_of(Some("boss")), 0);
    }

    #[test]
    fn a_down_set_holds_or_fails_over() {
        let cfg = routing();
        let a = 1;
        let b = 2;
        let hold = SetRoutes::new(&cfg, MessageKey::RoutingKey, OnSetDown::Hold).unwrap();
        let all_up = |_| true;
        let a_down = |i| i != a;
        assert_eq!(
            hold.choose(a, all_up),
            Choice::Cluster {
                index: a,
                failed_over: false
            }
        );
        assert_eq!(hold.choose(a, a_down), Choice::Hold(a));
        let fo = SetRoutes::new(&cfg, MessageKey::RoutingKey, OnSetDown::Failover).unwrap();
        assert_eq!(
            fo.choose(a, a_down),
            Choice::Cluster {
                index: b,
                failed_over: true
            }
        );
        // set-b has no failover; both down: held for the key's own SET.
        assert_eq!(fo.choose(b, |i| i != b), Choice::Hold(b));
        assert_eq!(fo.choose(a, |i| i == 0), Choice::Hold(a));
        // The default has no failover.
        assert_eq!(fo.choose(0, |i| i != 0), Choice::Hold(0));
    }

    /// Encoded as they travel: a content header's property flags and fields.
    fn encode(p: &BasicProperties) -> Vec<u8> {
        use amq_protocol::frame::WriteContext;
        amq_protocol::protocol::basic::gen_properties(p)(WriteContext::from(Vec::new()))
            .unwrap()
            .into_inner()
            .0
    }

    #[test]
    fn a_key_read_unparsed_is_the_key_parsed() {
        use lapin::types::{FieldArray, LongLongInt};
        let mut h = FieldTable::default();
        let values = [
            ("s", AMQPValue::LongString(LongString::from("alice"))),
            ("s-empty", AMQPValue::LongString(LongString::from(""))),
            (
                "s-bad",
                AMQPValue::LongString(LongString::from(vec![0xff, b'x'])),
            ),
            ("i8", AMQPValue::ShortShortInt(-8)),
            ("u8", AMQPValue::ShortShortUInt(200)),
            ("i16", AMQPValue::ShortInt(-1600)),
            ("u16", AMQPValue::ShortUInt(60000)),
            ("i32", AMQPValue::LongInt(-320_000)),
            ("u32", AMQPValue::LongUInt(4_000_000_000)),
            ("i64", AMQPValue::LongLongInt(LongLongInt::MIN)),
            ("bool", AMQPValue::Boolean(true)),
            ("f32", AMQPValue::Float(1.5)),
            ("table", AMQPValue::FieldTable(FieldTable::default())),
            ("list", AMQPValue::FieldArray(FieldArray::from(vec![]))),
            ("void", AMQPValue::Void),
            ("at", AMQPValue::Timestamp(7)),
        ];
        for (k, v) in values.clone() {
            h.insert(k.into(), v);
        }
        let keys: Vec<String> = values
            .iter()
            .map(|(k, _)| format!("header:{k}"))
            .chain(["header:missing".into(), "routing_key".into()])
            .chain(PROPERTIES.iter().map(|(n, _)| format!("property:{n}")))
            .collect();
        let full = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(h.clone())
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("c-9".into())
            .with_reply_to("".into())
            .with_expiration("1000".into())
            .with_message_id("m-1".into())
            .with_timestamp(1_700_000_000)
            .with_type("order".into())
            .with_user_id("bob".into())
            .with_app_id("shop".into())
            .with_cluster_id("c".into());
        let cases = [
            BasicProperties::default(),
            BasicProperties::default().with_delivery_mode(2),
            BasicProperties::default().with_headers(FieldTable::default()),
            BasicProperties::default().with_headers(h),
            BasicProperties::default().with_app_id("only".into()),
            full,
        ];
        for (i, p) in cases.iter().enumerate() {
            let raw = encode(p);
            for (rk, k) in ["rk.1", ""]
                .iter()
                .flat_map(|rk| keys.iter().map(move |k| (rk, k)))
            {
                let key = MessageKey::parse(k).unwrap();
                assert_eq!(
                    key.of_raw(&raw, rk),
                    Some(key.of(p, rk)),
                    "case {i}, {k}, routing key {rk:?}"
                );
            }
        }
    }

    #[test]
    fn a_repeated_header_reads_as_parsed_and_what_cannot_be_walked_is_left_to_parsing() {
        // Headers only: {"k": "a", "k": "b"}, as a client may write them.
        let entry = |v: &[u8]| [&[1, b'k', b'S'][..], &(v.len() as u32).to_be_bytes(), v].concat();
        let table = [entry(b"a"), entry(b"b")].concat();
        let raw = [&[0x20, 0][..], &(table.len() as u32).to_be_bytes(), &table].concat();
        let (_, parsed) = amq_protocol::protocol::basic::parse_properties(raw.as_slice()).unwrap();
        let key = MessageKey::parse("header:k").unwrap();
        assert_eq!(key.of_raw(&raw, ""), Some(key.of(&parsed, "")));
        assert_eq!(key.of_raw(&raw, "").flatten().as_deref(), Some("b"));
        // Cut inside the table, an unknown value type, a flag word that says another follows.
        assert_eq!(key.of_raw(&raw[..raw.len() - 1], ""), None);
        let mut odd = raw.clone();
        odd[8] = b'?';
        assert_eq!(key.of_raw(&odd, ""), None);
        assert_eq!(key.of_raw(&[0x20, 1, 0, 0, 0, 0], ""), None);
        // A property before the one wanted is cut short; the routing key needs no walk.
        // A property that is not UTF-8: a key all the same (the parsed path cannot read it).
        let id = MessageKey::parse("property:message_id").unwrap();
        let raw = [0x00, 0x80, 2, 0xff, b'7'];
        assert!(amq_protocol::protocol::basic::parse_properties(&raw[..]).is_err());
        assert_eq!(id.of_raw(&raw, "").flatten().as_deref(), Some("\u{fffd}7"));
        let user = MessageKey::parse("property:user_id").unwrap();
        assert_eq!(user.of_raw(&[0x80, 0x10, 9, b'x'], ""), None);
        assert_eq!(
            user.of_raw(&[0x00, 0x10, 3, b'b', b'o', b'b'], "")
                .flatten()
                .as_deref(),
            Some("bob")
        );
        assert_eq!(
            MessageKey::RoutingKey
                .of_raw(&[], "rk")
                .flatten()
                .as_deref(),
            Some("rk")
        );
    }
}
