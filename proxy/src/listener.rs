//! Listening sockets and their accept loops.
//!
//! The accept loop does as little as possible: wait for room under the listener's `maxconn` and
//! for its `rate_limit` (the kernel queues clients meanwhile, up to `backlog`), accept, then spawn the connection's task. PROXY header, TLS and the AMQP handshake
//! all happen inside that task under its deadline, so a slow client holds only its own task.

use crate::config::ListenerConfig;
use crate::shared::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

/// A bound socket: listening (the kernel queues connections) from [`bind`] on, accepting only
/// once [`BoundListener::serve`] started its loop. A reload binds first and serves only after the
/// snapshot that names the listener is in place, so no connection meets a snapshot without it.
#[derive(Debug)]
pub struct BoundListener {
    /// The address it is bound to (the port the kernel chose, for port 0).
    pub addr: SocketAddr,
    /// The config's `bind` string: how the accept loop finds its listener in a snapshot.
    bind: String,
    socket: Option<TcpListener>,
    stop: CancellationToken,
}

impl BoundListener {
    /// Starts the accept loop. Connections are served by whichever listener of the current
    /// snapshot is bound to this address, so a rename needs no new socket.
    pub fn serve(&mut self, shared: &Arc<Shared>) {
        let Some(socket) = self.socket.take() else {
            return;
        };
        self.stop = shared.stopping.child_token();
        let span = tracing::info_span!("listener", bind = %self.bind);
        tokio::spawn(
            accept_loop(shared.clone(), self.bind.clone(), socket, self.stop.clone())
                .instrument(span),
        );
    }

    /// Stops accepting (open connections are not touched) and closes the socket.
    pub fn stop(self) {
        self.stop.cancel();
    }
}

/// Binds `cfg.bind` and listens; nothing is accepted until [`BoundListener::serve`].
pub fn bind(cfg: &ListenerConfig) -> std::io::Result<BoundListener> {
    let addr: SocketAddr = cfg.bind.parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{:?}: {e}", cfg.bind),
        )
    })?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if cfg.freebind {
        // The address may be a virtual IP that VRRP has not moved here yet.
        socket2::SockRef::from(&socket).set_freebind_v4(true)?;
        if addr.is_ipv6() {
            socket2::SockRef::from(&socket).set_freebind_v6(true)?;
        }
    }
    socket.bind(addr)?;
    let listener = socket.listen(cfg.backlog)?;
    Ok(BoundListener {
        addr: listener.local_addr()?,
        bind: cfg.bind.clone(),
        socket: Some(listener),
        stop: CancellationToken::new(),
    })
}

async fn accept_loop(
    shared: Arc<Shared>,
    bind: String,
    listener: TcpListener,
    stop: CancellationToken,
) {
    loop {
        // At `maxconn`, stop accepting until a connection ends: new clients wait in the kernel's
        // accept queue (backpressure, as HAProxy does) instead of being accepted and dropped.
        if let Some(lst) = shared.snapshot().listener_on(&bind).cloned() {
            if lst.stats.active() >= lst.cfg.maxconn {
                lst.stats.maxconn_reached.increment(1);
                debug!(
                    maxconn = lst.cfg.maxconn,
                    "at maxconn: not accepting until a connection ends"
                );
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = lst.stats.room_under(lst.cfg.maxconn) => {}
                }
            }
            // Over `rate_limit`: the same, until the bucket has a token again.
            if let Some(rate) = lst.cfg.rate_limit {
                if let Some(wait) = lst.stats.limits.accept_wait(rate) {
                    metrics::counter!("setgate_listener_rate_limit_waits_total", "listener" => lst.cfg.name.clone()).increment(1);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            }
        }
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors or memory: back off instead of spinning, and keep
                    // the listener. Connections already open are unaffected.
                    warn!(error = %e, "accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let snap = shared.snapshot();
        let Some(lst) = snap.listener_on(&bind).cloned() else {
            // Only while a reload retires this socket: its stop token is about to fire. The
            // loop never ends on its own, so a listener cannot silently stop accepting.
            debug!(client = %peer, "closing: this address is being retired by a reload");
            continue;
        };
        let slot = loop {
            // Full only if a reload lowered maxconn since the check above: wait with this one.
            if let Some(slot) = lst.stats.try_acquire(lst.cfg.maxconn) {
                break slot;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = lst.stats.room_under(lst.cfg.maxconn) => {}
            }
        };
        crate::stream::tune_socket(&tcp);
        let span = tracing::info_span!("conn", listener = %lst.cfg.name, client = %peer, set = tracing::field::Empty);
        // Runs on a connection runtime, not this one; `handle` moves the socket there.
        let conn = crate::conn::handle(shared.clone(), snap, lst, tcp, peer, slot);
        setgate_shards::spawn_tracked(&shared.tracker, conn.instrument(span));
    }
}
