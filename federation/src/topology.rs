//! What a flow sets up on each connection: exchange checks on both sides, then the upstream
//! queue, its bindings and the consumer. Run again after every reconnect.

use crate::config::AckMode;
use crate::config::UpstreamConfig;
use crate::error::{describe, LinkError, Side};
use crate::plan::{FlowSpec, Source, Target};
use crate::wire::Wire;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};

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

/// The arguments of a queue setgate declares on the upstream (hold queues: the same, without
/// `expires` and `message_ttl`, which their flows never have).
pub(crate) fn queue_arguments(spec: &FlowSpec) -> FieldTable {
    hold_queue_arguments(
        &spec.upstream,
        !matches!(spec.source, Source::Own { hold: true, .. }),
    )
}

/// The arguments of a queue setgate declares: its type, single active consumer, and (unless
/// it is a hold queue) the upstream's `expires` and `message_ttl`.
pub(crate) fn hold_queue_arguments(up: &UpstreamConfig, with_limits: bool) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(up.queue_type.as_str().as_bytes().to_vec())),
    );
    // Several setgate instances may run the same link: exactly one of them consumes.
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    if !with_limits {
        return args;
    }
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
    /// The channel the queue was set up on, kept for the periodic depth reads.
    pub channel: Channel,
    /// Ready messages when the queue was declared.
    pub depth: u32,
    /// `delete_after`: messages this attempt may still move.
    pub remaining: Option<u64>,
}

/// Declares (or, for an existing queue, looks up) the upstream queue and binds it with every
/// key on `conn`, then sets the prefetch and starts consuming on `inlet`, the flow's own
/// connection to the same upstream (manual acks unless `no-ack`).
///
/// `prefetch_for` gets the queue's ready messages and answers the prefetch and, with
/// `delete_after`, how many messages the flow may still move.
pub(crate) async fn consume_upstream(
    conn: &Connection,
    inlet: &mut Wire,
    spec: &FlowSpec,
    prefetch_for: impl FnOnce(u32) -> (u16, Option<u64>),
) -> Result<UpstreamQueue, LinkError> {
    let cluster = spec.upstream.name.as_str();
    let queue = spec.queue_name();
    let channel = open_channel(conn, Side::Upstream, cluster).await?;
    let depth = match &spec.source {
        Source::Own {
            exchange,
            binding_keys,
            ..
        } => {
            let declared = declare_own(&channel, spec, &queue).await?;
            if let Some(exchange) = exchange {
                bind(&channel, cluster, &queue, exchange, binding_keys).await?;
            }
            declared
        }
        Source::Existing { declare, .. } => {
            if *declare {
                ensure_queue(conn, Side::Upstream, cluster, &queue).await?;
            }
            queue_depth(&channel, Side::Upstream, cluster, &queue)
                .await?
                .0
        }
    };
    let (prefetch, remaining) = prefetch_for(depth);
    let no_ack = spec.upstream.ack_mode == AckMode::NoAck;
    let tag = format!("setgate {}", spec.link);
    inlet
        .consume(&queue, &tag, prefetch, no_ack)
        .await
        .map_err(|reason| LinkError::Broker {
            what: format!("consuming from queue \"{queue}\""),
            side: Side::Upstream,
            cluster: cluster.into(),
            reason,
        })?;
    Ok(UpstreamQueue {
        channel,
        depth,
        remaining,
    })
}

async fn declare_own(channel: &Channel, spec: &FlowSpec, queue: &str) -> Result<u32, LinkError> {
    let cluster = spec.upstream.name.as_str();
    let declared = channel
        .queue_declare(
            queue.into(),
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
    Ok(declared.message_count())
}

async fn bind(
    channel: &Channel,
    cluster: &str,
    queue: &str,
    exchange: &str,
    keys: &[String],
) -> Result<(), LinkError> {
    for key in keys {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
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
    Ok(())
}

/// A passive declare: (ready messages, consumers) of a queue that must exist.
pub(crate) async fn queue_depth(
    channel: &Channel,
    side: Side,
    cluster: &str,
    queue: &str,
) -> Result<(u32, u32), LinkError> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(q) => Ok((q.message_count(), q.consumer_count())),
        Err(e) if soft_error(&e) == Some(AMQPSoftError::NOTFOUND) => Err(LinkError::QueueMissing {
            side,
            queue: queue.into(),
            cluster: cluster.into(),
        }),
        Err(e) => Err(LinkError::broker(
            format!("looking up queue \"{queue}\""),
            side,
            cluster,
            &e,
        )),
    }
}

/// Checks that what a flow publishes to exists: the target exchange, or the target queue.
pub(crate) async fn check_target(
    conn: &Connection,
    cluster: &str,
    vhost: &str,
    target: &Target,
) -> Result<(), LinkError> {
    match target {
        Target::Exchange { name, .. } if !name.is_empty() => {
            let side = ExchangeSide {
                side: Side::Downstream,
                cluster,
                vhost,
                conn,
            };
            exchange_type(name, &side, false).await.map(|_| ())
        }
        Target::Exchange { .. } => Ok(()),
        Target::Queue(q) => ensure_queue(conn, Side::Downstream, cluster, q).await,
    }
}

/// A queue of the user's that a shovel consumes or publishes to: kept as it is when it exists
/// (whatever its arguments), declared durable when it does not, as RabbitMQ's shovel plugin
/// does.
async fn ensure_queue(
    conn: &Connection,
    side: Side,
    cluster: &str,
    queue: &str,
) -> Result<(), LinkError> {
    // A failed passive declare closes its channel, so each try gets its own.
    let ch = open_channel(conn, side, cluster).await?;
    match queue_depth(&ch, side, cluster, queue).await {
        Ok(_) => {
            let _ = ch.close(200, "OK".into()).await;
            return Ok(());
        }
        Err(LinkError::QueueMissing { .. }) => {}
        Err(e) => return Err(e),
    }
    let ch = open_channel(conn, side, cluster).await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| LinkError::broker(format!("declaring queue \"{queue}\""), side, cluster, &e))?;
    let _ = ch.close(200, "OK".into()).await;
    tracing::info!(%side, cluster, queue, "declared the missing queue (durable)");
    Ok(())
}

/// Checks that a shovel's source exchange exists (an existing queue is checked as it is
/// consumed).
pub(crate) async fn check_source(
    conn: &Connection,
    spec: &FlowSpec,
    vhost: &str,
) -> Result<(), LinkError> {
    if let Source::Own {
        exchange: Some(x), ..
    } = &spec.source
    {
        let side = ExchangeSide {
            side: Side::Upstream,
            cluster: &spec.upstream.name,
            vhost,
            conn,
        };
        exchange_type(x, &side, false).await?;
    }
    Ok(())
}
