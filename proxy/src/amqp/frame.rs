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

/// The Connection.Start setgate sends a client in `set` mode: RabbitMQ's capability table, so
/// clients enable the same features they would against the broker, and the mechanisms whose
/// response carries the user name.
pub fn start_frame() -> Vec<u8> {
    let mut capabilities = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        capabilities.insert(ShortString::from(cap), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    props.insert("product".into(), AMQPValue::LongString("setgate".into()));
    props.insert(
        "version".into(),
        AMQPValue::LongString(env!("CARGO_PKG_VERSION").into()),
    );
    props.insert("platform".into(), AMQPValue::LongString("Rust".into()));
    props.insert(
        "information".into(),
        AMQPValue::LongString("AMQP edge: routes this connection to its SET's broker".into()),
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_round_trips_through_amq_protocol() {
        let bytes = start_frame();
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
}
