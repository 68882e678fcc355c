//! The running proxy: the bound sockets and the tasks around one [`Snapshot`].
//!
//! A reload has two steps so that nothing half-new is ever visible: [`Proxy::stage`] binds the
//! sockets the new config adds (the only step that can fail, and it changes nothing in use), then
//! [`Staged::commit`] puts the new snapshot in use and only then starts accepting on the new
//! sockets and closes the ones the config dropped. Build the snapshot with [`crate::build()`] and
//! the changes with [`crate::diff()`].

use crate::admin::{self, AdminExtensions};
use crate::diff::Change;
use crate::listener::{self, BoundListener};
use crate::shared::{Shared, Snapshot};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// The running proxy. Built by [`Proxy::start`]; [`Proxy::stage`] and [`Staged::commit`] swap in
/// a new config; [`Proxy::shutdown`] drains it.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    /// Bound sockets by the config's `bind` string. Locked only by commit and shutdown.
    bound: Mutex<HashMap<String, BoundListener>>,
    /// The admin socket, bound at start, served once the binary hands over its extensions.
    admin: Mutex<Option<TcpListener>>,
    admin_addr: Option<SocketAddr>,
}

/// A reload whose new sockets are bound; nothing in use has changed yet.
#[derive(Debug)]
pub struct Staged<'a> {
    proxy: &'a Proxy,
    snapshot: Arc<Snapshot>,
    fresh: HashMap<String, BoundListener>,
    closing: Vec<String>,
}

impl Proxy {
    /// Binds every listener and the admin address of `snapshot` (from [`crate::build()`]), starts
    /// accepting and checking. Every bind that fails is returned at once. The admin API answers
    /// once [`Proxy::serve_admin`] is called.
    pub async fn start(snapshot: Snapshot) -> Result<Proxy, Vec<String>> {
        let mut bound = HashMap::new();
        let mut errs = Vec::new();
        for (i, l) in snapshot.cfg.listeners.iter().enumerate() {
            match listener::bind(l) {
                Ok(b) => {
                    bound.insert(l.bind.clone(), b);
                }
                Err(e) => errs.push(format!("listener[{i}] ({}).bind: {e}", l.name)),
            }
        }
        let admin = match &snapshot.cfg.admin {
            Some(a) => match admin::bind(&a.listen).await {
                Ok(l) => Some(l),
                Err(e) => {
                    errs.push(format!("admin.listen: cannot listen on {}: {e}", a.listen));
                    None
                }
            },
            None => None,
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        if let Some(path) = snapshot
            .cfg
            .admin
            .as_ref()
            .and_then(|a| a.state_file.as_ref())
        {
            crate::state_file::load(path, &snapshot);
        }
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let proxy = Proxy {
            shared: Arc::new(Shared::new(snapshot)),
            bound: Mutex::new(HashMap::new()),
            admin: Mutex::new(admin),
            admin_addr,
        };
        let staged = Staged {
            proxy: &proxy,
            snapshot: proxy.shared.snapshot(),
            fresh: bound,
            closing: Vec::new(),
        };
        staged.commit_with(None);
        Ok(proxy)
    }

    /// Starts answering on the admin address with `ext` (metrics, `/api/links`, `/api/vrrp`).
    /// Called once, after the parts that serve those documents have started.
    pub fn serve_admin(&self, ext: AdminExtensions) {
        if let Some(listener) = self.admin.lock().unwrap().take() {
            admin::serve(listener, self.shared.clone(), ext);
        }
    }

    /// The admin server's bound address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The snapshot in use: what the next [`crate::build()`] carries health and counters from.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
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

    /// Binds the sockets `changes` add. If any bind fails, the ones bound are closed and every
    /// failure is returned: nothing in use has changed.
    pub fn stage(&self, snapshot: Snapshot, changes: &[Change]) -> Result<Staged<'_>, Vec<String>> {
        let mut fresh = HashMap::new();
        let mut closing = Vec::new();
        let mut errs = Vec::new();
        for change in changes {
            match change {
                Change::Bind { listener, bind } => {
                    let Some(cfg) = snapshot.cfg.listeners.iter().find(|l| &l.name == listener)
                    else {
                        continue;
                    };
                    match listener::bind(cfg) {
                        Ok(b) => {
                            fresh.insert(bind.clone(), b);
                        }
                        Err(e) => errs.push(format!("listener {listener:?}.bind: {e}")),
                    }
                }
                Change::Close { bind, .. } => closing.push(bind.clone()),
                _ => {}
            }
        }
        if !errs.is_empty() {
            for b in fresh.into_values() {
                b.stop();
            }
            return Err(errs);
        }
        Ok(Staged {
            proxy: self,
            snapshot: Arc::new(snapshot),
            fresh,
            closing,
        })
    }

    /// Stops accepting, waits up to `grace` for open connections to end, then closes the rest.
    pub async fn shutdown(self, grace: Duration) {
        let shared = &self.shared;
        shared.stopping.cancel();
        for (_, b) in self.bound.lock().unwrap().drain() {
            b.stop();
        }
        shared.tracker.close();
        let open = shared.tracker.len();
        if open > 0 {
            info!(open, ?grace, "waiting for open connections to end");
        }
        if tokio::time::timeout(grace, shared.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                open = shared.tracker.len(),
                "shutdown grace is over; closing the remaining connections"
            );
            shared.closing.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), shared.tracker.wait()).await;
        }
        shared.closing.cancel();
    }
}

impl Staged<'_> {
    /// Puts the new snapshot in use, then starts accepting on the new sockets and closes the
    /// dropped ones (their open connections carry on). Cannot fail.
    pub fn commit(self) {
        let old = self.proxy.shared.snapshot();
        let shared = self.proxy.shared.clone();
        self.commit_with(Some(&old));
        // Weights the reload changed replaced runtime ones, servers may be gone: the file follows.
        tokio::spawn(async move {
            let _ = crate::state_file::persist(&shared).await;
        });
    }

    fn commit_with(self, old: Option<&Snapshot>) {
        let Staged {
            proxy,
            snapshot,
            fresh,
            closing,
        } = self;
        let shared = &proxy.shared;
        let mut bound = proxy.bound.lock().unwrap();
        // Every listener knows its address before anyone can see the snapshot.
        for l in snapshot.listeners.values() {
            if let Some(b) = fresh.get(&l.cfg.bind).or_else(|| bound.get(&l.cfg.bind)) {
                let _ = l.addr.set(b.addr);
            }
        }
        // A server whose weight in the file changed takes it; a runtime weight stays otherwise.
        for pool in snapshot.pools.values() {
            for s in &pool.pool.servers {
                s.state.apply_config_weight(s.cfg.weight);
            }
        }
        shared.store(snapshot.clone());
        for bind in closing {
            if let Some(b) = bound.remove(&bind) {
                info!(%bind, addr = %b.addr, "stopped listening");
                b.stop();
            }
        }
        for (bind, mut b) in fresh {
            b.serve(shared);
            if let Some(l) = snapshot.listener_on(&bind) {
                info!(listener = %l.cfg.name, addr = %b.addr, "listening");
            }
            bound.insert(bind, b);
        }
        drop(bound);
        spawn_checkers(shared, &snapshot, old);
        crate::preopen::spawn(shared, &snapshot);
        publish_routing_info(old, &snapshot);
        if old.is_none_or(|o| o.cfg.routing != snapshot.cfg.routing) {
            let window = snapshot
                .cfg
                .routing
                .as_ref()
                .and_then(|r| r.reroute)
                .map(|r| r.window);
            shared.sessions.reroute(snapshot.router.clone(), window);
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
