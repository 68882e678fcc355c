//! Listening sockets and their accept loops.
//!
//! The accept loop does as little as possible: take a slot under the listener's `maxconn` (or
//! refuse at once), then spawn the connection's task. PROXY header, TLS and the AMQP handshake
//! all happen inside that task under its deadline, so a slow client holds only its own task.

use crate::config::ListenerConfig;
use crate::runtime::Shared;
use metrics::{counter, gauge, Counter, Gauge};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

/// Connection counters of one listener, kept across reloads.
#[derive(Debug)]
pub struct ListenerStats {
    active: AtomicUsize,
    pub(crate) active_gauge: Gauge,
    pub(crate) total: Counter,
    pub(crate) refused_maxconn: Counter,
    pub(crate) bytes_in: Counter,
    pub(crate) bytes_out: Counter,
}

impl ListenerStats {
    pub(crate) fn new(name: &str) -> Self {
        let l = [("listener", name.to_string())];
        ListenerStats {
            active: AtomicUsize::new(0),
            active_gauge: gauge!("setgate_listener_connections_active", &l),
            total: counter!("setgate_listener_connections_total", &l),
            refused_maxconn: counter!(
                "setgate_listener_refused_total",
                &[
                    ("listener", name.to_string()),
                    ("reason", "maxconn".to_string())
                ]
            ),
            bytes_in: counter!("setgate_listener_bytes_in_total", &l),
            bytes_out: counter!("setgate_listener_bytes_out_total", &l),
        }
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    fn try_acquire(self: &Arc<Self>, max: usize) -> Option<ListenerSlot> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.active_gauge.increment(1.0);
        self.total.increment(1);
        Some(ListenerSlot(self.clone()))
    }
}

/// A connection's place under its listener's `maxconn`.
#[derive(Debug)]
pub struct ListenerSlot(Arc<ListenerStats>);

impl Drop for ListenerSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.active_gauge.decrement(1.0);
    }
}

/// A bound socket and the accept loop serving it.
#[derive(Debug)]
pub struct BoundListener {
    /// The address it is bound to.
    pub addr: SocketAddr,
    bind: String,
    freebind: bool,
    stop: CancellationToken,
}

impl BoundListener {
    /// True when `cfg` can keep using this socket.
    pub fn matches(&self, cfg: &ListenerConfig) -> bool {
        self.bind == cfg.bind && self.freebind == cfg.freebind
    }

    /// Stops accepting (open connections are not touched) and closes the socket.
    pub fn stop(self) {
        self.stop.cancel();
    }
}

/// Binds `cfg.bind` and starts its accept loop.
pub fn bind(shared: &Arc<Shared>, cfg: &ListenerConfig) -> std::io::Result<BoundListener> {
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
    let listener = socket.listen(4096)?;
    let addr = listener.local_addr()?;
    let stop = shared.stopping.child_token();
    let span = tracing::info_span!("listener", listener = %cfg.name);
    tokio::spawn(
        accept_loop(shared.clone(), cfg.name.clone(), listener, stop.clone()).instrument(span),
    );
    Ok(BoundListener {
        addr,
        bind: cfg.bind.clone(),
        freebind: cfg.freebind,
        stop,
    })
}

async fn accept_loop(
    shared: Arc<Shared>,
    name: String,
    listener: TcpListener,
    stop: CancellationToken,
) {
    loop {
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
        let Some(lst) = snap.listeners.get(&name).cloned() else {
            return;
        };
        let Some(slot) = lst.stats.try_acquire(lst.cfg.maxconn) else {
            lst.stats.refused_maxconn.increment(1);
            debug!(client = %peer, maxconn = lst.cfg.maxconn, "refused: listener is at maxconn");
            drop(tcp);
            continue;
        };
        crate::stream::tune_socket(&tcp);
        let span = tracing::info_span!("conn", listener = %name, client = %peer, set = tracing::field::Empty);
        shared.tracker.spawn(
            crate::conn::handle(shared.clone(), snap, lst, tcp, peer, slot).instrument(span),
        );
    }
}
