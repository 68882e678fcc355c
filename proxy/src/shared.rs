//! The state every part of the running proxy reads: the current [`Snapshot`] of the config and the
//! shutdown signals. A leaf: it knows what a snapshot holds, not who builds or serves it, so the
//! accept loops, connections, checkers and the admin server all read it without importing the
//! runtime that owns them.

use crate::config::{ListenerConfig, ProxyConfig};
use crate::listener_stats::ListenerStats;
use crate::pool::{ServerState, BROKER_PROPERTIES_VERSION};
use crate::reroute::Sessions;
use crate::upstream::PoolRuntime;
use amq_protocol::types::FieldTable;
use arc_swap::ArcSwap;
use setgate_router::Router;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A listener of the current config with what it needs per connection.
pub struct ListenerRuntime {
    /// Its config entry.
    pub cfg: ListenerConfig,
    /// TLS acceptor, when the listener terminates TLS.
    pub tls: Option<TlsAcceptor>,
    /// Counters kept across reloads.
    pub stats: Arc<ListenerStats>,
    /// The address its socket is bound to (the kernel's port for `:0`); set before the snapshot
    /// is put in use.
    pub addr: std::sync::OnceLock<std::net::SocketAddr>,
}

impl std::fmt::Debug for ListenerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerRuntime")
            .field("cfg", &self.cfg)
            .field("tls", &self.tls.is_some())
            .field("addr", &self.addr.get())
            .finish()
    }
}

/// Everything one config says, ready to use. Connections take the snapshot current when they
/// arrive; a reload builds a new one and swaps it in whole, so no connection ever sees half a config.
#[derive(Debug)]
pub struct Snapshot {
    /// The config it was built from.
    pub cfg: ProxyConfig,
    /// Listeners by name.
    pub listeners: HashMap<String, Arc<ListenerRuntime>>,
    /// Pools by name.
    pub pools: HashMap<String, Arc<PoolRuntime>>,
    /// The SET routing table, when `[routing]` is configured.
    pub router: Option<Arc<Router>>,
    /// The admin bearer token, when `token_file` is set.
    pub token: Option<crate::config::Secret>,
    /// The Connection.Start a `set` listener sends, with the [`BROKER_PROPERTIES_VERSION`] it was
    /// built at: built again only when a broker's properties change, not per connection.
    pub(crate) client_start: Mutex<Option<(u64, Arc<[u8]>)>>,
}

impl Snapshot {
    /// The Connection.Start for `set` listeners: the properties of the brokers the router can
    /// send a client to (the default pool's, then each SET's, in file order), and only the
    /// capabilities all of them share (see [`crate::amqp::frame::start_frame`]).
    pub fn client_start(&self) -> Arc<[u8]> {
        let version = BROKER_PROPERTIES_VERSION.load(Ordering::Acquire);
        let mut cached = self.client_start.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((v, start)) = cached.as_ref() {
            if *v == version {
                return start.clone();
            }
        }
        let mut pools: Vec<&str> = Vec::new();
        if let Some(router) = &self.router {
            pools.push(router.default_pool());
            pools.extend(router.sets().iter().map(|s| s.pool()));
        }
        let mut seen = Vec::new();
        let brokers: Vec<Arc<FieldTable>> = pools
            .into_iter()
            .filter(|p| {
                let new = !seen.contains(p);
                seen.push(p);
                new
            })
            .filter_map(|p| self.pools.get(p))
            .flat_map(|p| p.pool.servers.iter())
            .filter_map(|s| s.state.broker_properties())
            .collect();
        let refs: Vec<&FieldTable> = brokers.iter().map(|b| b.as_ref()).collect();
        let start: Arc<[u8]> = crate::amqp::frame::start_frame(&refs).into();
        *cached = Some((version, start.clone()));
        start
    }

    /// The listener whose socket is bound to `bind` (the config's `bind` string). Accept loops
    /// look their listener up by address, not by name, so renaming a listener keeps its socket.
    pub fn listener_on(&self, bind: &str) -> Option<&Arc<ListenerRuntime>> {
        self.listeners.values().find(|l| l.cfg.bind == bind)
    }
}

/// State shared by listeners, connections, checkers and the admin server.
#[derive(Debug)]
pub struct Shared {
    /// The current config. Swapped whole by a reload, never edited in place.
    snapshot: ArcSwap<Snapshot>,
    /// Cancelled on shutdown: stop accepting, stop checking.
    pub stopping: CancellationToken,
    /// Cancelled when the shutdown grace is over: close what is still open.
    pub closing: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// The spliced `set` connections by key and SET, for `[routing] reroute`. An `Arc`: a
    /// reroute's task outlives the reload that started it.
    pub sessions: Arc<Sessions>,
    /// Held while the state file is written, so two API changes never interleave their writes.
    pub(crate) state_file_lock: Mutex<()>,
}

impl Shared {
    /// Shared state serving `snapshot`.
    pub(crate) fn new(snapshot: Snapshot) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            stopping: CancellationToken::new(),
            closing: CancellationToken::new(),
            tracker: TaskTracker::new(),
            sessions: Arc::new(Sessions::default()),
            state_file_lock: Mutex::new(()),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Makes `snapshot` the current one (a reload's commit).
    pub(crate) fn store(&self, snapshot: Arc<Snapshot>) {
        self.snapshot.store(snapshot);
    }

    /// The state of a server in the current snapshot.
    pub fn server_state(&self, pool: &str, server: &str) -> Option<Arc<ServerState>> {
        let snap = self.snapshot.load();
        Some(snap.pools.get(pool)?.pool.server(server)?.state.clone())
    }

    /// `Ok` when setgate should get traffic: listeners bound, and some pool has a checked, up
    /// server (when there are pools at all).
    pub fn readiness(&self) -> Result<(), String> {
        if self.stopping.is_cancelled() {
            return Err("shutting down".into());
        }
        let snap = self.snapshot.load();
        if snap.pools.is_empty() || snap.pools.values().any(|p| p.pool.has_up()) {
            Ok(())
        } else {
            Err("no pool has a healthy server".into())
        }
    }
}
