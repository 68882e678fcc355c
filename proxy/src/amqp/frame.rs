//! The frames a `set` listener, an upstream greeting and an `amqp` check read and write. The
//! framing itself (protocol header, one frame under a size cap, [`FrameError`], Connection.Close)
//! is `setgate-amqp`'s, shared with federation; this module re-exports it and adds the
//! Connection.Start setgate sends its own clients.

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};

pub use setgate_amqp::frame::{
    close_frame, describe, encode, expect_start, parse, read_frame, read_protocol_header,
    FrameError, HANDSHAKE_FRAME_MAX, PROTOCOL_HEADER,
};

/// The capabilities setgate advertises when no broker has told it its own (no `amqp` check has
/// answered yet): RabbitMQ's, so clients enable the features they would against the broker.
const RABBITMQ_CAPABILITIES: [&str; 9] = [
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "consumer_priorities",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
];

/// The server properties a client may read and rely on, taken from a broker's Start.
const PRESENTED: [&str; 5] = ["product", "version", "platform", "copyright", "information"];

/// The Connection.Start a `set` listener sends its clients, before it knows which broker they
/// will get. From `brokers` (the server properties of every broker the listener can route to, as
/// their `amqp` checks saw them): `product`, `version`, `platform`, `copyright` and `information`
/// of the first, and only the capabilities that every one of them has, so a client never enables
/// a feature its broker lacks. With no broker known yet, setgate's own product and RabbitMQ's
/// capability table. Mechanisms are PLAIN and AMQPLAIN (their response carries the user name).
pub fn start_frame(brokers: &[&FieldTable]) -> Vec<u8> {
    let mut props = FieldTable::default();
    let mut capabilities = FieldTable::default();
    match brokers.split_first() {
        None => {
            for cap in RABBITMQ_CAPABILITIES {
                capabilities.insert(ShortString::from(cap), AMQPValue::Boolean(true));
            }
            props.insert("product".into(), AMQPValue::LongString("setgate".into()));
            props.insert(
                "version".into(),
                AMQPValue::LongString(env!("CARGO_PKG_VERSION").into()),
            );
            props.insert("platform".into(), AMQPValue::LongString("Rust".into()));
            props.insert(
                "information".into(),
                AMQPValue::LongString(
                    "AMQP edge: routes this connection to its SET's broker".into(),
                ),
            );
        }
        Some((first, rest)) => {
            for key in PRESENTED {
                if let Some(v) = first.inner().get(key) {
                    props.insert(key.into(), v.clone());
                }
            }
            for (cap, on) in caps(first) {
                if on && rest.iter().all(|b| caps(b).any(|(c, on)| c == cap && on)) {
                    capabilities.insert(ShortString::from(cap), AMQPValue::Boolean(true));
                }
            }
        }
    }
    props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    encode(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: props,
            mechanisms: LongString::from("PLAIN AMQPLAIN"),
            locales: LongString::from("en_US"),
        })),
    ))
}

/// A broker's `capabilities` table as (name, enabled) pairs.
fn caps(props: &FieldTable) -> impl Iterator<Item = (&str, bool)> {
    let table = match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => Some(t),
        _ => None,
    };
    table
        .into_iter()
        .flat_map(|t| t.inner().iter())
        .map(|(k, v)| (k.as_str(), matches!(v, AMQPValue::Boolean(true))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_round_trips_through_amq_protocol() {
        let bytes = start_frame(&[]);
        let frame = parse(&bytes).unwrap();
        let start = expect_start(&frame).unwrap();
        assert_eq!(start.mechanisms.to_string(), "PLAIN AMQPLAIN");
        let caps = match start.server_properties.inner().get("capabilities") {
            Some(AMQPValue::FieldTable(t)) => t.clone(),
            other => panic!("no capabilities: {other:?}"),
        };
        assert_eq!(caps.inner().len(), 9);
        assert_eq!(
            caps.inner().get("authentication_failure_close"),
            Some(&AMQPValue::Boolean(true))
        );
    }

    fn broker(product: &str, version: &str, caps: &[(&str, bool)]) -> FieldTable {
        let mut c = FieldTable::default();
        for (k, on) in caps {
            c.insert(ShortString::from(*k), AMQPValue::Boolean(*on));
        }
        let mut p = FieldTable::default();
        p.insert("product".into(), AMQPValue::LongString(product.into()));
        p.insert("version".into(), AMQPValue::LongString(version.into()));
        p.insert(
            "cluster_name".into(),
            AMQPValue::LongString("rabbit@a".into()),
        );
        p.insert("capabilities".into(), AMQPValue::FieldTable(c));
        p
    }

    fn presented(brokers: &[&FieldTable]) -> FieldTable {
        let bytes = start_frame(brokers);
        let frame = parse(&bytes).unwrap();
        expect_start(&frame).unwrap().server_properties.clone()
    }

    #[test]
    fn brokers_properties_and_only_the_capabilities_all_of_them_have() {
        let a = broker(
            "RabbitMQ",
            "3.12.1",
            &[
                ("publisher_confirms", true),
                ("direct_reply_to", true),
                ("x_new", true),
            ],
        );
        let b = broker(
            "RabbitMQ",
            "3.11.0",
            &[("publisher_confirms", true), ("direct_reply_to", false)],
        );
        let p = presented(&[&a, &b]);
        assert_eq!(
            p.inner().get("product"),
            Some(&AMQPValue::LongString("RabbitMQ".into()))
        );
        assert_eq!(
            p.inner().get("version"),
            Some(&AMQPValue::LongString("3.12.1".into()))
        );
        // One SET's cluster name would be a lie for the others.
        assert_eq!(p.inner().get("cluster_name"), None);
        let caps: Vec<(&str, bool)> = caps(&p).collect();
        assert_eq!(caps, vec![("publisher_confirms", true)]);
        // One broker: all of its capabilities.
        let p = presented(&[&a]);
        assert_eq!(caps_of(&p), 3);
    }

    fn caps_of(p: &FieldTable) -> usize {
        caps(p).count()
    }
}
