//! `set` listeners: learn who the client is from its AMQP handshake, route it to its SET's pool
//! (or the SET's failover, or the default pool), and hand the connection to that broker.
//!
//! setgate answers the protocol header with its own Connection.Start and reads the client's
//! StartOk. It then connects to a broker and sends the protocol header followed by the client's
//! StartOk, byte for byte, and reads (and drops) the broker's Start. From then on (Tune, Open, and everything after) the
//! client and the broker talk directly, so authentication failures, confirms, heartbeats and
//! blocked notifications are the broker's own.

use crate::amqp::handshake;
use crate::amqp::key::routing_key;
use crate::limits::Permit;
use crate::pool::PickError;
use crate::reroute::Registration;
use crate::session::{close_client, handshake_failed, linger_close, pump, CONNECTION_FORCED};
use crate::shared::{ListenerRuntime, Shared, Snapshot};
use crate::stream::Stream;
use crate::upstream::{self, ClientInfo, PoolRuntime, Upstream};
use metrics::{counter, histogram};
use std::sync::Arc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub(crate) async fn serve(
    shared: &Shared,
    snap: Arc<Snapshot>,
    lst: &ListenerRuntime,
    client: Stream,
    info: ClientInfo,
    deadline: Instant,
) {
    // Boxed, and over before the splice starts: a task keeps its future's largest state for
    // life, and the handshake's (the client's StartOk, the route, the connect attempts) is
    // larger than the splice's. This way a spliced connection's task holds only what it needs.
    let Some(ready) = Box::pin(route_and_connect(shared, snap, lst, client, info, deadline)).await
    else {
        return;
    };
    let Ready {
        client,
        up,
        pool,
        registered,
        permit,
    } = ready;
    pump(shared, lst, &pool, client, up, Some(registered)).await;
    drop(permit);
}

/// A `set` client whose handshake is done, with its broker: what the splice needs, and what
/// must live as long as the connection.
struct Ready<'a> {
    client: Stream,
    up: Upstream,
    pool: Arc<PoolRuntime>,
    /// Remembered while spliced, so a reload with `reroute` can close it if its user moves.
    registered: Registration<'a>,
    /// Its place under the user's and vhost's limits.
    permit: Permit,
}

/// From the protocol header to the client's Connection.Open: reads the client's StartOk,
/// routes it, connects to its SET's broker (or the failover's), and applies the vhost limits.
/// `None` when the connection ended here (it has been answered and counted).
async fn route_and_connect<'a>(
    shared: &'a Shared,
    snap: Arc<Snapshot>,
    lst: &ListenerRuntime,
    mut client: Stream,
    info: ClientInfo,
    deadline: Instant,
) -> Option<Ready<'a>> {
    let listener = lst.cfg.name.as_str();
    let started = Instant::now();
    let arrival = crate::limits::on_arrival(lst, info.source.ip());
    let hello = match tokio::time::timeout_at(
        deadline,
        // Boxed: see `conn::handle`.
        Box::pin(handshake::accept_client(&mut client, &snap.client_start())),
    )
    .await
    {
        Ok(Ok(hello)) => hello,
        Ok(Err(e)) => {
            // A client that leaves before saying anything is a port check or a balancer probe:
            // worth a counter, not a log line each.
            if matches!(e.error, crate::amqp::frame::FrameError::Closed) && !e.started {
                debug!("closed before the AMQP handshake");
            } else {
                info!(error = %e.error, "closing: AMQP handshake failed");
            }
            handshake_failed(listener, e.error.cause());
            if e.started {
                close_client(
                    &mut client,
                    e.error.reply_code(),
                    &format!("setgate: {}", e.error),
                )
                .await;
            } else {
                linger_close(&mut client).await;
            }
            return None;
        }
        Err(_) => {
            info!(timeout = ?lst.cfg.handshake_timeout, "closing: no Connection.StartOk before the handshake deadline");
            handshake_failed(listener, "timeout");
            // If we got as far as sending Start, the client can read why.
            close_client(&mut client, CONNECTION_FORCED, "setgate: handshake timeout").await;
            return None;
        }
    };
    let mut permit = match crate::limits::admit_user(lst, arrival, &hello.start_ok) {
        Ok(p) => p,
        Err(r) => {
            // The Close RabbitMQ sends for its own connection limits: 530 NOT_ALLOWED.
            handshake_failed(listener, r.limit.as_str());
            close_client(&mut client, crate::limits::NOT_ALLOWED, &r.text).await;
            return None;
        }
    };
    let Some(router) = snap.router.clone() else {
        warn!("closing: set listener without [routing]");
        return None;
    };
    let key = routing_key(&hello.start_ok, router.key_source());
    let route = router.route(key.as_deref());
    let set_label = route.set.unwrap_or("-").to_string();
    let reason = route.reason.to_string();
    tracing::Span::current().record("set", set_label.as_str());
    debug!(key = key.as_deref().unwrap_or(""), set = %set_label, pool = route.pool, %reason, "routed");

    // The route's pool first; when it has no usable server, the SET's failover.
    let mut candidates = vec![(route.set, route.pool)];
    if let Some(set) = route.set {
        if let Some((fset, fpool)) = router.failover(set) {
            candidates.push((Some(fset), fpool));
        }
    }
    // Every connect attempt (each pool's retries, the failover's too) stays inside the handshake
    // deadline: a client is answered by then, with a broker or with the reason.
    let mut why = Vec::new();
    let attempts = async {
        for (n, (set, pool_name)) in candidates.iter().enumerate() {
            let Some(pool) = snap.pools.get(*pool_name).cloned() else {
                why.push(PickError::NoServer);
                continue;
            };
            if n > 0 {
                info!(
                    set = route.set.unwrap_or("-"),
                    failover = set.unwrap_or("-"),
                    "SET has no healthy server; using its failover SET"
                );
                counter!("setgate_set_failovers_total", "set" => set_label.clone(), "to" => set.unwrap_or("-").to_string()).increment(1);
            }
            match Box::pin(upstream::connect(&pool, info, Some(&hello.raw))).await {
                Ok(up) => return Some((up, pool, *set)),
                Err(e) => why.push(e),
            }
        }
        None
    };
    let outcome = tokio::time::timeout_at(deadline, attempts).await;
    drop(snap);
    let (up, pool, serving) = match outcome {
        Ok(Some(found)) => found,
        failed => {
            if failed.is_err() {
                why.push(PickError::Deadline(lst.cfg.handshake_timeout));
            }
            // Each candidate with its own reason: the SET's, then its failover's.
            let reason = |i: usize| why.get(i).map(|e| format!(" ({e})")).unwrap_or_default();
            let failover = candidates.get(1).and_then(|(s, _)| *s);
            let text = match (route.set, failover) {
                (Some(set), Some(f)) => format!(
                    "setgate: no healthy server in SET {set}{}, nor in its failover SET {f}{}",
                    reason(0),
                    reason(1)
                ),
                (Some(set), None) => {
                    format!("setgate: no healthy server in SET {set}{}", reason(0))
                }
                (None, _) => format!(
                    "setgate: no healthy server in default pool {}{}",
                    route.pool,
                    reason(0)
                ),
            };
            warn!(set = %set_label, "closing: {text}");
            handshake_failed(listener, "no_server");
            close_client(&mut client, CONNECTION_FORCED, &text).await;
            return None;
        }
    };
    let mut up = up;
    let vhost = crate::limits::admit_vhost(lst, &mut permit, &mut client, &mut up.stream);
    match tokio::time::timeout_at(deadline, Box::pin(vhost)).await {
        Ok(Ok(())) => {}
        Ok(Err(crate::limits::VhostError::Refused(r))) => {
            handshake_failed(listener, r.limit.as_str());
            close_client(&mut client, crate::limits::NOT_ALLOWED, &r.text).await;
            return None;
        }
        Ok(Err(crate::limits::VhostError::Frame(e))) => {
            info!(error = %e, "closing: the AMQP handshake broke off before Connection.Open");
            handshake_failed(listener, e.cause());
            return None;
        }
        Err(_) => {
            info!(timeout = ?lst.cfg.handshake_timeout, "closing: no Connection.Open before the handshake deadline");
            handshake_failed(listener, "timeout");
            return None;
        }
    }
    counter!("setgate_set_connections_total", "set" => set_label, "reason" => reason).increment(1);
    histogram!("setgate_handshake_duration_seconds", "listener" => listener.to_string())
        .record(started.elapsed().as_secs_f64());
    let registered = shared
        .sessions
        .register(key.clone(), route.set, serving, &router);
    Some(Ready {
        client,
        up,
        pool,
        registered,
        permit,
    })
}
