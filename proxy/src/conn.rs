//! One client connection, from accept to close: PROXY header and TLS under the handshake deadline,
//! then `tcp` mode (straight to the listener's pool) or `set` mode (see [`crate::set_mode`]); both
//! end in [`crate::session`]'s splice.

use crate::listener_stats::ListenerSlot;
use crate::session::{handshake_failed, pump};
use crate::shared::{ListenerRuntime, Shared, Snapshot};
use crate::stream::Stream;
use crate::upstream::{self, ClientInfo};
use metrics::counter;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

pub(crate) async fn handle(
    shared: Arc<Shared>,
    snap: Arc<Snapshot>,
    lst: Arc<ListenerRuntime>,
    tcp: TcpStream,
    peer: SocketAddr,
    _slot: ListenerSlot,
) {
    // Accepted on the main runtime; from here on its events go to this connection's runtime
    // (see `setgate_shards`).
    let mut tcp = match crate::stream::rehome(tcp) {
        Ok(tcp) => tcp,
        Err(e) => {
            warn!(error = %e, "closing: cannot register the socket with a connection runtime");
            return handshake_failed(&lst.cfg.name, "register");
        }
    };
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
        // Boxed, as every handshake step below: a future's size is that of its largest state and
        // a connection's task keeps it for life, so an inline TLS handshake would cost every
        // spliced connection its bytes.
        Some(acceptor) => {
            match tokio::time::timeout_at(deadline, Box::pin(acceptor.accept(tcp))).await {
                Ok(Ok(tls)) => Stream::TlsServer(Box::new(tls)),
                Ok(Err(e)) => {
                    info!(error = %e, "closing: TLS handshake failed");
                    return handshake_failed(&lst.cfg.name, "tls");
                }
                Err(_) => {
                    info!(timeout = ?lst.cfg.handshake_timeout, "closing: TLS handshake not done before the deadline");
                    return handshake_failed(&lst.cfg.name, "timeout");
                }
            }
        }
        None => Stream::Tcp(tcp),
    };
    // Boxed, each mode its own size: inline, a `tcp` connection's task would be as large as the
    // larger `set` one's.
    match lst.cfg.mode {
        crate::config::ListenerMode::Tcp => {
            Box::pin(tcp_mode(&shared, snap, &lst, stream, client, deadline)).await
        }
        crate::config::ListenerMode::Set => {
            Box::pin(crate::set_mode::serve(
                &shared, snap, &lst, stream, client, deadline,
            ))
            .await
        }
    }
}

async fn tcp_mode(
    shared: &Shared,
    snap: Arc<Snapshot>,
    lst: &ListenerRuntime,
    stream: Stream,
    client: ClientInfo,
    deadline: tokio::time::Instant,
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
    // Connect attempts (retries included) stay inside the handshake deadline, as in set mode.
    let connected =
        match tokio::time::timeout_at(deadline, Box::pin(upstream::connect(&pool, client, None)))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(crate::pool::PickError::Deadline(lst.cfg.handshake_timeout)),
        };
    match connected {
        Ok(up) => pump(shared, lst, &pool, stream, up, None).await,
        Err(e) => {
            warn!(pool = %pool.pool.cfg.name, error = %e, "closing: no server for this client");
            counter!("setgate_listener_refused_total", "listener" => lst.cfg.name.clone(), "reason" => "no_server").increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    /// The size of the future an async fn of six arguments returns, without calling it.
    fn future_size<A, B, C, D, E, G, Fut>(_: impl FnOnce(A, B, C, D, E, G) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// A connection's task keeps its future's largest state for its whole life, so with 10,000
    /// connections every byte here is 10 KB of RSS (the scale bench measures it). Budgets with
    /// some room over today's sizes (debug build): a failure means a rare path got inlined into
    /// every connection; box it.
    #[test]
    fn a_connections_task_stays_small() {
        let sizes = [
            ("conn::handle", future_size(super::handle), 1024),
            ("tcp_mode", future_size(super::tcp_mode), 2048),
            ("set_mode::serve", future_size(crate::set_mode::serve), 2048),
            ("session::pump", future_size(crate::session::pump), 1536),
        ];
        for (name, size, budget) in sizes {
            println!("{name}: {size} bytes (budget {budget})");
            assert!(
                size <= budget,
                "{name}'s future is {size} bytes, over its budget of {budget}"
            );
        }
    }
}
