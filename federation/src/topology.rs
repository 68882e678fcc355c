//! What a flow sets up on each connection: exchange checks on both sides, then the upstream
//! queue, its bindings and the consumer. Run again after every reconnect.

use crate::config::AckMode;
use crate::error::{describe, LinkError, Side};
use crate::plan::FlowSpec;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, Consumer, ExchangeKind};

/// One side of the check: where the exchange should be.
pub(crate) struct ExchangeSide<'a> {
    pub side: Side,
    pub cluster: &'a str,
    pub vhost: &'a str,
    pub conn: &'a Connection,
}

/// Checks that the exchange exists on both sides and, with `compare_types` and when the broker
/// lets us see it, that both are of the same type.
///
/// The type probe makes the broker close a channel, which lapin logs as an error; flows compare
/// types on their first set-up and after an exchange problem, not on every reconnect.
pub(crate) async fn check_exchanges(
    exchange: &str,
    up: ExchangeSide<'_>,
    down: ExchangeSide<'_>,
    compare_types: bool,
) -> Result<(), LinkError> {
    let up_type = exchange_type(exchange, &up, compare_types).await?;
    let down_type = exchange_type(exchange, &down, compare_types).await?;
    match (up_type, down_type) {
        (Some(u), Some(d)) if u != d => Err(LinkError::ExchangeType {
            exchange: exchange.into(),
            upstream: up.cluster.into(),
            upstream_type: u,
            downstream: down.cluster.into(),
            downstream_type: d,
        }),
        _ => Ok(()),
    }
}

/// Passive declare (exists?), then the exchange's type, or `None` if the user may not learn it.
///
/// AMQP has no "describe exchange". A non-passive declare of an existing exchange with another
/// type fails with "inequivalent arg 'type' ... current is 'T'"; with the same type it fails on
/// `internal` (or succeeds if the exchange really is internal). The probe is declared transient,
/// auto-delete and internal, so in the unlikely case the exchange is deleted between the two
/// declares, what is created by mistake can neither receive publishes nor survive a restart.
async fn exchange_type(
    exchange: &str,
    s: &ExchangeSide<'_>,
    probe_type: bool,
) -> Result<Option<String>, LinkError> {
    let what = || format!("checking exchange \"{exchange}\"");
    let ch = open_channel(s.conn, s.side, s.cluster).await?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    if let Err(e) = ch
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            passive,
            FieldTable::default(),
        )
        .await
    {
        return Err(if soft_error(&e) == Some(AMQPSoftError::NOTFOUND) {
            LinkError::ExchangeMissing {
                side: s.side,
                exchange: exchange.into(),
                cluster: s.cluster.into(),
                vhost: s.vhost.into(),
            }
        } else {
            LinkError::broker(what(), s.side, s.cluster, &e)
        });
    }
    if !probe_type {
        let _ = ch.close(200, "OK".into()).await;
        return Ok(None);
    }
    let probe = ExchangeDeclareOptions {
        passive: false,
        durable: false,
        auto_delete: true,
        internal: true,
        nowait: false,
    };
    let result = ch
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            probe,
            FieldTable::default(),
        )
        .await;
    // After an error the broker has closed the channel already; closing it again would be a
    // protocol error that costs the whole connection.
    if result.is_ok() {
        let _ = ch.close(200, "OK".into()).await;
    }
    match result {
        Ok(()) => Ok(Some("fanout".into())),
        Err(e) if soft_error(&e) == Some(AMQPSoftError::PRECONDITIONFAILED) => {
            let text = describe(&e);
            Ok(Some(match text.split_once("current is '") {
                Some((_, rest)) if text.contains("'type'") => {
                    rest.split('\'').next().unwrap_or(rest).to_string()
                }
                _ => "fanout".into(),
            }))
        }
        Err(e) if soft_error(&e) == Some(AMQPSoftError::ACCESSREFUSED) => {
            tracing::debug!(side = %s.side, exchange, "no configure permission; exchange types not compared");
            Ok(None)
        }
        Err(e) => Err(LinkError::broker(what(), s.side, s.cluster, &e)),
    }
}

fn soft_error(e: &lapin::Error) -> Option<AMQPSoftError> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => match p.kind() {
            AMQPErrorKind::Soft(s) => Some(s.clone()),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

async fn open_channel(conn: &Connection, side: Side, cluster: &str) -> Result<Channel, LinkError> {
    conn.create_channel()
        .await
        .map_err(|e| LinkError::broker("opening a channel", side, cluster, &e))
}

/// The arguments of the upstream queue.
pub(crate) fn queue_arguments(spec: &FlowSpec) -> FieldTable {
    let up = &spec.upstream;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(up.queue_type.as_str().as_bytes().to_vec())),
    );
    // Several setgate instances may run the same link: exactly one of them consumes.
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    if let Some(d) = up.expires {
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(d.as_millis() as i64),
        );
    }
    if let Some(d) = up.message_ttl {
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(d.as_millis() as i64),
        );
    }
    args
}

/// The consuming side of a flow on the upstream.
pub(crate) struct UpstreamQueue {
    pub channel: Channel,
    pub consumer: Consumer,
    /// Ready messages when the queue was declared.
    pub depth: u32,
}

/// Declares the durable upstream queue, binds it with every key, sets the prefetch and starts
/// consuming (manual acks unless `no-ack`).
pub(crate) async fn consume_upstream(
    conn: &Connection,
    spec: &FlowSpec,
) -> Result<UpstreamQueue, LinkError> {
    let cluster = spec.upstream.name.as_str();
    let queue = spec.queue_name();
    let channel = open_channel(conn, Side::Upstream, cluster).await?;
    let declared = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            queue_arguments(spec),
        )
        .await
        .map_err(|e| {
            let mut err = LinkError::broker(
                format!("declaring queue \"{queue}\""),
                Side::Upstream,
                cluster,
                &e,
            );
            if soft_error(&e) == Some(AMQPSoftError::PRECONDITIONFAILED) {
                if let LinkError::Broker { reason, .. } = &mut err {
                    reason.push_str(
                        "; the queue exists with other settings: delete it or restore the old ones",
                    );
                }
            }
            err
        })?;
    for key in &spec.binding_keys {
        channel
            .queue_bind(
                queue.as_str().into(),
                spec.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                LinkError::broker(
                    format!("binding queue \"{queue}\" with key \"{key}\""),
                    Side::Upstream,
                    cluster,
                    &e,
                )
            })?;
    }
    // validate() keeps prefetch_count within 1..=65535.
    let prefetch = u16::try_from(spec.upstream.prefetch_count).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| {
            LinkError::broker("setting the prefetch count", Side::Upstream, cluster, &e)
        })?;
    let options = BasicConsumeOptions {
        no_ack: spec.upstream.ack_mode == AckMode::NoAck,
        ..Default::default()
    };
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            format!("setgate federation {}", spec.link).as_str().into(),
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            LinkError::broker(
                format!("consuming from queue \"{queue}\""),
                Side::Upstream,
                cluster,
                &e,
            )
        })?;
    Ok(UpstreamQueue {
        channel,
        consumer,
        depth: declared.message_count(),
    })
}
