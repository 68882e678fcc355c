//! The running proxy: one snapshot of the whole config, swapped whole on reload, and the state that
//! outlives snapshots (bound sockets, listener counters, server health).

use crate::admin::{self, AdminExtensions};
use crate::config::{ListenerConfig, ProxyConfig};
use crate::listener::{self, BoundListener, ListenerStats};
use crate::pool::{Pool, ServerState};
use crate::upstream::{PoolRuntime, PoolTls};
use arc_swap::ArcSwap;
use setgate_router::Router;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// A listener of the current config with what it needs per connection.
pub struct ListenerRuntime {
    /// Its config entry.
    pub cfg: ListenerConfig,
    /// TLS acceptor, when the listener terminates TLS.
    pub tls: Option<TlsAcceptor>,
    /// Counters kept across reloads.
    pub stats: Arc<ListenerStats>,
}

impl std::fmt::Debug for ListenerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerRuntime")
            .field("cfg", &self.cfg)
            .field("tls", &self.tls.is_some())
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
    pub token: Option<String>,
}

/// State shared by listeners, connections, checkers and the admin server.
#[derive(Debug)]
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// Cancelled on shutdown: stop accepting, stop checking.
    pub stopping: CancellationToken,
    /// Cancelled when the shutdown grace is over: close what is still open.
    pub closing: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Bound listener sockets by listener name. Locked only by start, reload and shutdown.
    bound: Mutex<HashMap<String, BoundListener>>,
    /// Listener counters by name, kept across reloads. Same lock discipline as `bound`.
    stats: Mutex<HashMap<String, Arc<ListenerStats>>>,
}

impl Shared {
    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
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

fn build_snapshot(
    cfg: ProxyConfig,
    prev: Option<&Snapshot>,
    stats: &mut HashMap<String, Arc<ListenerStats>>,
) -> Result<Snapshot, Vec<String>> {
    let mut errs = Vec::new();
    let mut pools = HashMap::new();
    for (i, p) in cfg.pools.iter().enumerate() {
        let previous = prev.and_then(|s| s.pools.get(&p.name)).map(|r| &r.pool);
        let pool = match Pool::build(p, previous) {
            Ok(pool) => pool,
            Err(e) => {
                errs.push(format!("pool[{i}] ({}): {e}", p.name));
                continue;
            }
        };
        let tls = match &p.tls {
            Some(t) => match PoolTls::new(t, &format!("pool[{i}] ({}).tls", p.name)) {
                Ok(t) => Some(t),
                Err(e) => {
                    errs.push(e.to_string());
                    continue;
                }
            },
            None => None,
        };
        pools.insert(p.name.clone(), Arc::new(PoolRuntime { pool, tls }));
    }
    let mut listeners = HashMap::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let tls = match &l.tls {
            Some(t) => {
                match crate::tls::server_config(t, &format!("listener[{i}] ({}).tls", l.name)) {
                    Ok(c) => Some(TlsAcceptor::from(c)),
                    Err(e) => {
                        errs.push(e.to_string());
                        continue;
                    }
                }
            }
            None => None,
        };
        let stats = stats
            .entry(l.name.clone())
            .or_insert_with(|| Arc::new(ListenerStats::new(&l.name)))
            .clone();
        listeners.insert(
            l.name.clone(),
            Arc::new(ListenerRuntime {
                cfg: l.clone(),
                tls,
                stats,
            }),
        );
    }
    let router = match &cfg.routing {
        Some(r) => match Router::new(r) {
            Ok(router) => Some(Arc::new(router)),
            Err(problems) => {
                errs.extend(problems.into_iter().map(|p| p.to_string()));
                None
            }
        },
        None => None,
    };
    let token = match cfg.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                errs.push(format!(
                    "admin.token_file: cannot read {}: {e}",
                    path.display()
                ));
                None
            }
        },
        None => None,
    };
    if errs.is_empty() {
        Ok(Snapshot {
            cfg,
            listeners,
            pools,
            router,
            token,
        })
    } else {
        Err(errs)
    }
}

/// The running proxy. Built by [`Proxy::start`]; [`Proxy::reload`] swaps in a new config;
/// [`Proxy::shutdown`] drains it.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    admin_addr: Option<SocketAddr>,
}

impl Proxy {
    /// Validates `cfg`, binds every listener and the admin server, and starts health checks.
    /// Every problem found is returned at once.
    pub async fn start(cfg: ProxyConfig, ext: AdminExtensions) -> Result<Proxy, Vec<String>> {
        let errs = crate::validate::validate(&cfg);
        if !errs.is_empty() {
            return Err(errs);
        }
        let mut stats = HashMap::new();
        let snapshot = build_snapshot(cfg, None, &mut stats)?;
        let admin_cfg = snapshot.cfg.admin.clone();
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            stopping: CancellationToken::new(),
            closing: CancellationToken::new(),
            tracker: TaskTracker::new(),
            bound: Mutex::new(HashMap::new()),
            stats: Mutex::new(stats),
        });
        let snap = shared.snapshot();
        let mut bound = HashMap::new();
        let mut errs = Vec::new();
        for (i, l) in snap.cfg.listeners.iter().enumerate() {
            match listener::bind(&shared, l) {
                Ok(b) => {
                    bound.insert(l.name.clone(), b);
                }
                Err(e) => errs.push(format!("listener[{i}] ({}).bind: {e}", l.name)),
            }
        }
        let admin_addr = match &admin_cfg {
            Some(a) => match admin::start(shared.clone(), &a.listen, ext).await {
                Ok(addr) => Some(addr),
                Err(e) => {
                    errs.push(format!("admin.listen: cannot listen on {}: {e}", a.listen));
                    None
                }
            },
            None => None,
        };
        if !errs.is_empty() {
            shared.stopping.cancel();
            return Err(errs);
        }
        for (name, b) in &bound {
            info!(listener = %name, addr = %b.addr, "listening");
        }
        *shared.bound.lock().unwrap() = bound;
        spawn_checkers(&shared, &snap, None);
        publish_routing_info(None, &snap);
        Ok(Proxy { shared, admin_addr })
    }

    /// The admin server's bound address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// `Ok` when ready for traffic, else why not (the same answer as `/readyz`).
    pub fn readiness(&self) -> Result<(), String> {
        self.shared.readiness()
    }

    /// A cheap, shareable readiness probe (for VRRP tracking).
    pub fn ready_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || shared.readiness().is_ok()
    }

    /// Swaps in a new config without dropping established connections: listeners whose name and
    /// address stay keep their socket, servers that stay keep their health. An invalid config
    /// changes nothing and returns every problem.
    pub fn reload(&self, cfg: ProxyConfig) -> Result<(), Vec<String>> {
        let errs = crate::validate::validate(&cfg);
        if !errs.is_empty() {
            return Err(errs);
        }
        let old = self.shared.snapshot();
        if old.cfg.admin.as_ref().map(|a| &a.listen) != cfg.admin.as_ref().map(|a| &a.listen) {
            warn!(
                "admin.listen changed: the admin server keeps its address until setgate restarts"
            );
        }
        let mut stats = self.shared.stats.lock().unwrap();
        let snapshot = build_snapshot(cfg, Some(&old), &mut stats)?;
        drop(stats);
        let mut bound = self.shared.bound.lock().unwrap();
        // Bind what is new first: if any bind fails, nothing has changed yet.
        let mut fresh = HashMap::new();
        let mut errs = Vec::new();
        for (i, l) in snapshot.cfg.listeners.iter().enumerate() {
            let keep = bound.get(&l.name).is_some_and(|b| b.matches(l));
            if !keep {
                match listener::bind(&self.shared, l) {
                    Ok(b) => {
                        fresh.insert(l.name.clone(), b);
                    }
                    Err(e) => errs.push(format!("listener[{i}] ({}).bind: {e}", l.name)),
                }
            }
        }
        if !errs.is_empty() {
            for b in fresh.into_values() {
                b.stop();
            }
            return Err(errs);
        }
        let snapshot = Arc::new(snapshot);
        self.shared.snapshot.store(snapshot.clone());
        // Retire listeners that are gone or were re-bound; their open connections carry on.
        let names: Vec<String> = bound.keys().cloned().collect();
        for name in names {
            if !snapshot.listeners.contains_key(&name) || fresh.contains_key(&name) {
                if let Some(b) = bound.remove(&name) {
                    info!(listener = %name, addr = %b.addr, "stopped listening");
                    b.stop();
                }
            }
        }
        for (name, b) in fresh {
            info!(listener = %name, addr = %b.addr, "listening");
            bound.insert(name, b);
        }
        drop(bound);
        spawn_checkers(&self.shared, &snapshot, Some(&old));
        publish_routing_info(Some(&old), &snapshot);
        Ok(())
    }

    /// Stops accepting, waits up to `grace` for open connections to end, then closes the rest.
    pub async fn shutdown(self, grace: Duration) {
        self.shared.stopping.cancel();
        for (_, b) in self.shared.bound.lock().unwrap().drain() {
            b.stop();
        }
        self.shared.tracker.close();
        let open = self.shared.tracker.len();
        if open > 0 {
            info!(open, ?grace, "waiting for open connections to end");
        }
        if tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                open = self.shared.tracker.len(),
                "shutdown grace is over; closing the remaining connections"
            );
            self.shared.closing.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), self.shared.tracker.wait()).await;
        }
    }
}

/// `setgate_routing_info{fingerprint}` = 1 for the routing table in use (0 for the one replaced), so
/// a dashboard shows at a glance whether every edge routes the same way.
fn publish_routing_info(old: Option<&Snapshot>, new: &Snapshot) {
    let fp = |s: &Snapshot| s.router.as_ref().map(|r| r.fingerprint());
    let (old_fp, new_fp) = (old.and_then(fp), fp(new));
    if old_fp == new_fp {
        return;
    }
    if let Some(f) = old_fp {
        metrics::gauge!("setgate_routing_info", "fingerprint" => f).set(0.0);
    }
    if let Some(f) = new_fp {
        info!(fingerprint = %f, "routing table in use");
        metrics::gauge!("setgate_routing_info", "fingerprint" => f).set(1.0);
    }
}

/// Starts a health checker for every server whose state is new in `snap`.
fn spawn_checkers(shared: &Arc<Shared>, snap: &Snapshot, old: Option<&Snapshot>) {
    for (pool_name, pool) in &snap.pools {
        for server in &pool.pool.servers {
            let existed = old
                .and_then(|o| o.pools.get(pool_name))
                .and_then(|p| p.pool.server(&server.cfg.name))
                .is_some_and(|s| Arc::ptr_eq(&s.state, &server.state));
            if !existed {
                tokio::spawn(crate::check::run(
                    shared.clone(),
                    pool_name.clone(),
                    server.cfg.name.clone(),
                ));
            }
        }
    }
}
