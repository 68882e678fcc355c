//! One client connection, from accept to close: PROXY header and TLS under the handshake deadline,
//! then `tcp` mode (straight to the listener's pool) or `set` mode (see [`crate::set_mode`]), then
//! the splice until either side closes.

use crate::listener::ListenerSlot;
use crate::runtime::{ListenerRuntime, Shared, Snapshot};
use crate::stream::Stream;
use crate::upstream::{self, ClientInfo, Upstream};
use metrics::counter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

/// Counts a connection that ended before it was spliced, by cause.
pub(crate) fn handshake_failed(listener: &str, cause: &'static str) {
    counter!("setgate_handshake_failures_total", "listener" => listener.to_string(), "cause" => cause).increment(1);
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    snap: Arc<Snapshot>,
    lst: Arc<ListenerRuntime>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    _slot: ListenerSlot,
) {
    let deadline = tokio::time::Instant::now() + lst.cfg.handshake_timeout;
    let local = tcp.local_addr().unwrap_or(peer);
    let mut client = ClientInfo {
        source: peer,
        destination: local,
    };
    if lst.cfg.accept_proxy {
        match tokio::time::timeout_at(deadline, crate::proxy_proto::read_header(&mut tcp)).await {
            Ok(Ok(Some((source, destination)))) => {
                client = ClientInfo {
                    source,
                    destination,
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(crate::proxy_proto::ProxyHeaderError::Io(e)))
                if e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                debug!("closed before sending a PROXY header");
                return handshake_failed(&lst.cfg.name, "closed");
            }
            Ok(Err(e)) => {
                info!(error = %e, "closing: bad PROXY header");
                return handshake_failed(&lst.cfg.name, "proxy_header");
            }
            Err(_) => {
                info!(timeout = ?lst.cfg.handshake_timeout, "closing: no PROXY header before the handshake deadline");
                return handshake_failed(&lst.cfg.name, "timeout");
            }
        }
    }
    let stream = match &lst.tls {
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => Stream::TlsServer(Box::new(tls)),
            Ok(Err(e)) => {
                info!(error = %e, "closing: TLS handshake failed");
                return handshake_failed(&lst.cfg.name, "tls");
            }
            Err(_) => {
                info!(timeout = ?lst.cfg.handshake_timeout, "closing: TLS handshake not done before the deadline");
                return handshake_failed(&lst.cfg.name, "timeout");
            }
        },
        None => Stream::Tcp(tcp),
    };
    match lst.cfg.mode {
        crate::config::ListenerMode::Tcp => tcp_mode(&shared, snap, &lst, stream, client).await,
        crate::config::ListenerMode::Set => {
            crate::set_mode::serve(&shared, snap, &lst, stream, client, deadline).await
        }
    }
}

async fn tcp_mode(
    shared: &Shared,
    snap: Arc<Snapshot>,
    lst: &ListenerRuntime,
    stream: Stream,
    client: ClientInfo,
) {
    let pool_name = lst.cfg.pool.as_deref().unwrap_or_default();
    let Some(pool) = snap.pools.get(pool_name).cloned() else {
        warn!(
            pool = pool_name,
            "closing: the listener's pool is not in the config"
        );
        return;
    };
    drop(snap);
    match upstream::connect(&pool, client, None).await {
        Ok(up) => pump(shared, lst, &pool.pool.cfg.name, stream, up).await,
        Err(e) => {
            warn!(pool = %pool.pool.cfg.name, error = %e, "closing: no server for this client");
            counter!("setgate_listener_refused_total", "listener" => lst.cfg.name.clone(), "reason" => "no_server").increment(1);
        }
    }
}

/// Copies bytes until either side closes, the server is marked down with `shutdown-sessions`, or
/// the shutdown grace ends.
pub(crate) async fn pump(
    shared: &Shared,
    lst: &ListenerRuntime,
    pool: &str,
    mut client: Stream,
    mut up: Upstream,
) {
    let state = up.slot.state().clone();
    let marked_down = state.marked_down.notified();
    let up_counters = [lst.stats.bytes_in.clone(), state.metrics().bytes_in.clone()];
    let down_counters = [
        lst.stats.bytes_out.clone(),
        state.metrics().bytes_out.clone(),
    ];
    let started = Instant::now();
    debug!(pool, server = %up.server, "spliced");
    tokio::select! {
        r = crate::splice::splice(&mut client, &mut up.stream, &up_counters, &down_counters) => match r {
            Ok(t) => debug!(pool, server = %up.server, bytes_up = t.up, bytes_down = t.down, duration = ?started.elapsed(), "closed"),
            Err(e) => debug!(pool, server = %up.server, error = %e, duration = ?started.elapsed(), "closed on error"),
        },
        _ = marked_down => info!(pool, server = %up.server, "closing: server marked down (on_marked_down = shutdown-sessions)"),
        _ = shared.closing.cancelled() => info!(pool, server = %up.server, "closing: shutdown grace is over"),
    }
}
