//! Pools of servers and how a new connection picks one.
//!
//! Selection order: primaries that are up (health) and ready (admin); only when none is, the backups.
//! Within that set the pool's `balance` orders the candidates and the first one with a free slot
//! under its `maxconn` wins. A connect that fails is retried on the next server (`retries`), never
//! on one already tried; once every primary has been tried the backups get their turn.

use crate::addr::ServerAddr;
use crate::config::{Balance, PoolConfig, ServerConfig};
use crate::health::Health;
use amq_protocol::types::FieldTable;
use metrics::{counter, gauge, Counter, Gauge};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

/// The operator's say over a server, separate from its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new connections (when healthy).
    Ready,
    /// Takes no new connections; established ones stay.
    Drain,
    /// Maintenance: takes no new connections; established ones stay.
    Maint,
}

impl AdminState {
    fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }
    fn as_u8(self) -> u8 {
        match self {
            AdminState::Ready => 0,
            AdminState::Drain => 1,
            AdminState::Maint => 2,
        }
    }
}

/// The result of the last health check of a server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckRecord {
    /// Whether it passed.
    pub ok: bool,
    /// When it finished.
    #[serde(serialize_with = "unix_seconds")]
    pub at: SystemTime,
    /// How long it took.
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn unix_seconds<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
    )
}
fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Everything about a server that outlives a reload: health, admin state, connection counts.
///
/// Shared (`Arc`) between the pool snapshot, its health checker and every connection to it; the
/// hot fields are atomics so picking a server takes no lock.
#[derive(Debug)]
pub struct ServerState {
    up: AtomicBool,
    admin: AtomicU8,
    active: AtomicUsize,
    total: AtomicU64,
    /// Woken when the server is marked down and its pool closes its sessions.
    pub(crate) marked_down: Notify,
    /// Health and last check, written by the checker every few seconds, read by the API: a plain
    /// mutex is cheaper than anything cleverer at that rate.
    detail: Mutex<(Health, Option<CheckRecord>)>,
    /// The server properties of the broker's Connection.Start, as its last `amqp` check read them:
    /// what a `set` listener presents to its clients. Written once per check, read per snapshot
    /// change (see [`BROKER_PROPERTIES_VERSION`]).
    broker: Mutex<Option<Arc<FieldTable>>>,
    metrics: ServerMetrics,
}

/// Bumped whenever any broker's server properties change, so the Connection.Start a `set`
/// listener sends is built again only then, not per connection.
pub static BROKER_PROPERTIES_VERSION: AtomicU64 = AtomicU64::new(0);

#[derive(Debug)]
pub(crate) struct ServerMetrics {
    pub active: Gauge,
    pub total: Counter,
    pub connect_errors: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub up: Gauge,
}

impl ServerState {
    fn new(pool: &str, server: &str) -> Self {
        let labels = [("pool", pool.to_string()), ("server", server.to_string())];
        let metrics = ServerMetrics {
            active: gauge!("setgate_server_connections_active", &labels),
            total: counter!("setgate_server_connections_total", &labels),
            connect_errors: counter!("setgate_server_connect_errors_total", &labels),
            bytes_in: counter!("setgate_server_bytes_in_total", &labels),
            bytes_out: counter!("setgate_server_bytes_out_total", &labels),
            up: gauge!("setgate_server_up", &labels),
        };
        metrics.up.set(1.0);
        ServerState {
            up: AtomicBool::new(true),
            admin: AtomicU8::new(AdminState::Ready.as_u8()),
            active: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            marked_down: Notify::new(),
            detail: Mutex::new((Health::new(), None)),
            broker: Mutex::new(None),
            metrics,
        }
    }

    /// Records the server properties of the broker's Connection.Start.
    pub fn set_broker_properties(&self, props: FieldTable) {
        let mut broker = self.broker.lock().unwrap_or_else(|p| p.into_inner());
        if broker.as_deref() != Some(&props) {
            *broker = Some(Arc::new(props));
            BROKER_PROPERTIES_VERSION.fetch_add(1, Ordering::Release);
        }
    }

    /// The broker's server properties, once an `amqp` check has read them.
    pub fn broker_properties(&self) -> Option<Arc<FieldTable>> {
        self.broker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Up as far as health checks go.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Up and ready: may take new connections (if not full).
    pub fn is_usable(&self) -> bool {
        self.is_up() && self.admin() == AdminState::Ready
    }

    /// The admin state.
    pub fn admin(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Relaxed))
    }

    /// Sets the admin state.
    pub fn set_admin(&self, state: AdminState) {
        self.admin.store(state.as_u8(), Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections made since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Health and last check result.
    pub fn health(&self) -> (Health, Option<CheckRecord>) {
        self.detail.lock().unwrap().clone()
    }

    /// Records a check result; returns the new up/down state when it changed.
    pub fn record_check(&self, rec: CheckRecord, rise: u32, fall: u32) -> (Option<bool>, Health) {
        let mut detail = self.detail.lock().unwrap();
        let changed = detail.0.record(rec.ok, rise, fall);
        detail.1 = Some(rec);
        if let Some(up) = changed {
            self.up.store(up, Ordering::Relaxed);
            self.metrics.up.set(if up { 1.0 } else { 0.0 });
        }
        (changed, detail.0)
    }

    pub(crate) fn metrics(&self) -> &ServerMetrics {
        &self.metrics
    }

    /// Takes a connection slot if the server is below `maxconn`.
    fn try_acquire(self: &Arc<Self>, maxconn: Option<usize>) -> Option<Slot> {
        let max = maxconn.unwrap_or(usize::MAX);
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.total.fetch_add(1, Ordering::Relaxed);
        self.metrics.active.increment(1.0);
        self.metrics.total.increment(1);
        Some(Slot {
            state: self.clone(),
        })
    }
}

/// One connection's claim on a server; gives the slot back when dropped.
#[derive(Debug)]
pub struct Slot {
    state: Arc<ServerState>,
}

impl Slot {
    /// The server's state.
    pub fn state(&self) -> &Arc<ServerState> {
        &self.state
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::AcqRel);
        self.state.metrics.active.decrement(1.0);
    }
}

/// A server as the current config describes it, with its long-lived state.
#[derive(Debug)]
pub struct Server {
    /// Its config entry.
    pub cfg: ServerConfig,
    /// Parsed `addr`.
    pub addr: ServerAddr,
    /// Health, admin state and counters (kept across reloads).
    pub state: Arc<ServerState>,
}

/// Why no server could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// No server (primary or backup) is up and ready.
    #[error("no server is up")]
    NoServer,
    /// Servers are up but every one is at its maxconn.
    #[error("every server is at its maxconn")]
    Full,
    /// Every usable server was tried already.
    #[error("every usable server failed to connect")]
    Exhausted,
    /// The listener's `handshake_timeout` ran out while connecting.
    #[error("no server answered within the handshake_timeout of {0:?}")]
    Deadline(std::time::Duration),
}

/// A pool as the current config describes it.
#[derive(Debug)]
pub struct Pool {
    /// Its config entry.
    pub cfg: PoolConfig,
    /// Servers in file order.
    pub servers: Vec<Server>,
    /// Where round robin continues; shared by all connections of this snapshot of the pool.
    rr: AtomicUsize,
}

impl Pool {
    /// Builds the pool, reusing the state of servers that `previous` had under the same name and
    /// address, so health, admin state and connection counts survive a reload.
    pub fn build(cfg: &PoolConfig, previous: Option<&Pool>) -> Result<Pool, String> {
        let mut servers = Vec::with_capacity(cfg.servers.len());
        for s in &cfg.servers {
            let addr = ServerAddr::parse(&s.addr)?;
            let state = previous
                .and_then(|p| {
                    p.servers
                        .iter()
                        .find(|o| o.cfg.name == s.name && o.addr == addr)
                })
                .map(|o| o.state.clone())
                .unwrap_or_else(|| Arc::new(ServerState::new(&cfg.name, &s.name)));
            servers.push(Server {
                cfg: s.clone(),
                addr,
                state,
            });
        }
        Ok(Pool {
            cfg: cfg.clone(),
            servers,
            rr: AtomicUsize::new(previous.map(|p| p.rr.load(Ordering::Relaxed)).unwrap_or(0)),
        })
    }

    /// The server called `name`.
    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.cfg.name == name)
    }

    /// True when some server (primary or backup) is up and ready.
    pub fn has_usable(&self) -> bool {
        self.servers.iter().any(|s| s.state.is_usable())
    }

    /// True when some server is up (ignoring admin state): the pool is healthy.
    pub fn has_up(&self) -> bool {
        self.servers
            .iter()
            .any(|s| s.state.is_up() && s.state.health().0.is_checked())
    }

    /// Picks a server for a new connection and takes a slot on it. `tried` lists servers (by index)
    /// whose connect already failed for this client.
    pub fn pick(&self, tried: &[usize]) -> Result<(usize, Slot), PickError> {
        let usable = |i: &usize| self.servers[*i].state.is_usable();
        let primaries: Vec<usize> = (0..self.servers.len())
            .filter(|i| !self.servers[*i].cfg.backup)
            .collect();
        let any_primary_usable = primaries.iter().any(usable);
        let untried_primaries: Vec<usize> = primaries
            .iter()
            .copied()
            .filter(|i| usable(i) && !tried.contains(i))
            .collect();
        let candidates = if !untried_primaries.is_empty() {
            untried_primaries
        } else {
            let backups: Vec<usize> = (0..self.servers.len())
                .filter(|i| self.servers[*i].cfg.backup && usable(i) && !tried.contains(i))
                .collect();
            if backups.is_empty() {
                let any_backup_usable = self
                    .servers
                    .iter()
                    .any(|s| s.cfg.backup && s.state.is_usable());
                return Err(if any_primary_usable || any_backup_usable {
                    PickError::Exhausted
                } else {
                    PickError::NoServer
                });
            }
            backups
        };
        for i in self.order(candidates) {
            let server = &self.servers[i];
            if let Some(slot) = server.state.try_acquire(server.cfg.maxconn) {
                return Ok((i, slot));
            }
        }
        Err(PickError::Full)
    }

    /// The candidates in the order `balance` wants them tried.
    fn order(&self, mut candidates: Vec<usize>) -> Vec<usize> {
        match self.cfg.balance {
            Balance::First => candidates,
            Balance::Roundrobin => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed) % candidates.len();
                candidates.rotate_left(start);
                candidates
            }
            Balance::Leastconn => {
                // Rotate first so ties are shared out in turn instead of always going to the first.
                let start = self.rr.fetch_add(1, Ordering::Relaxed) % candidates.len();
                candidates.rotate_left(start);
                candidates.sort_by_key(|i| self.servers[*i].state.active());
                candidates
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckConfig;

    fn pool(balance: Balance, servers: &[(&str, bool, Option<usize>)]) -> Pool {
        let cfg = PoolConfig {
            name: "p".into(),
            balance,
            check: CheckConfig::default(),
            send_proxy: false,
            tls: None,
            retries: 3,
            connect_timeout: Duration::from_secs(1),
            on_marked_down: None,
            preopen: 0,
            preopen_max_age: Duration::from_secs(3),
            servers: servers
                .iter()
                .enumerate()
                .map(|(i, (name, backup, maxconn))| ServerConfig {
                    name: name.to_string(),
                    addr: format!("127.0.0.1:{}", 5000 + i),
                    backup: *backup,
                    maxconn: *maxconn,
                    check_port: None,
                })
                .collect(),
        };
        Pool::build(&cfg, None).unwrap()
    }

    fn mark(p: &Pool, i: usize, ok: bool) {
        let rec = CheckRecord {
            ok,
            at: SystemTime::now(),
            duration: Duration::ZERO,
            error: None,
        };
        p.servers[i].state.record_check(rec, 1, 1);
    }

    #[test]
    fn roundrobin_spreads_evenly() {
        let p = pool(
            Balance::Roundrobin,
            &[("a", false, None), ("b", false, None), ("c", false, None)],
        );
        let mut slots = Vec::new();
        let mut counts = [0; 3];
        for _ in 0..30 {
            let (i, slot) = p.pick(&[]).unwrap();
            counts[i] += 1;
            slots.push(slot);
        }
        assert_eq!(counts, [10, 10, 10]);
        assert_eq!(p.servers[0].state.active(), 10);
        drop(slots);
        assert_eq!(p.servers[0].state.active(), 0);
    }

    #[test]
    fn leastconn_fills_the_emptiest() {
        let p = pool(
            Balance::Leastconn,
            &[("a", false, None), ("b", false, None)],
        );
        let held: Vec<Slot> = (0..4).map(|_| p.pick(&[]).unwrap().1).collect();
        assert_eq!(
            (p.servers[0].state.active(), p.servers[1].state.active()),
            (2, 2)
        );
        // Close two connections on "a": the next two go to "a".
        let mut held: Vec<Slot> = held
            .into_iter()
            .filter(|s| !Arc::ptr_eq(s.state(), &p.servers[0].state))
            .collect();
        for _ in 0..2 {
            let (i, slot) = p.pick(&[]).unwrap();
            assert_eq!(i, 0);
            held.push(slot);
        }
    }

    #[test]
    fn first_fills_in_order_up_to_maxconn() {
        let p = pool(
            Balance::First,
            &[("a", false, Some(2)), ("b", false, Some(1))],
        );
        let picks: Vec<(usize, Slot)> = (0..3).map(|_| p.pick(&[]).unwrap()).collect();
        assert_eq!(picks.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 0, 1]);
        assert_eq!(p.pick(&[]).unwrap_err(), PickError::Full);
    }

    #[test]
    fn backups_only_when_no_primary_is_up() {
        let p = pool(
            Balance::Roundrobin,
            &[("a", false, None), ("b", false, None), ("bk", true, None)],
        );
        for _ in 0..6 {
            assert_ne!(p.pick(&[]).unwrap().0, 2);
        }
        mark(&p, 0, false);
        mark(&p, 1, false);
        assert_eq!(p.pick(&[]).unwrap().0, 2);
        mark(&p, 2, false);
        assert_eq!(p.pick(&[]).unwrap_err(), PickError::NoServer);
        mark(&p, 1, true);
        assert_eq!(p.pick(&[]).unwrap().0, 1);
    }

    #[test]
    fn retries_skip_tried_servers_then_use_backups() {
        let p = pool(
            Balance::Roundrobin,
            &[("a", false, None), ("b", false, None), ("bk", true, None)],
        );
        let (first, _) = p.pick(&[]).unwrap();
        let (second, _) = p.pick(&[first]).unwrap();
        assert_ne!(first, second);
        assert_eq!(p.pick(&[first, second]).unwrap().0, 2);
        assert_eq!(p.pick(&[0, 1, 2]).unwrap_err(), PickError::Exhausted);
    }

    #[test]
    fn drained_servers_get_nothing_new() {
        let p = pool(
            Balance::Roundrobin,
            &[("a", false, None), ("b", false, None)],
        );
        p.servers[0].state.set_admin(AdminState::Drain);
        for _ in 0..4 {
            assert_eq!(p.pick(&[]).unwrap().0, 1);
        }
    }

    #[test]
    fn reload_keeps_state_of_servers_that_stay() {
        let p = pool(
            Balance::Roundrobin,
            &[("a", false, None), ("b", false, None)],
        );
        mark(&p, 0, false);
        let mut cfg = p.cfg.clone();
        cfg.servers[1].addr = "127.0.0.1:6000".into(); // "b" moved: new state
        let q = Pool::build(&cfg, Some(&p)).unwrap();
        assert!(Arc::ptr_eq(&p.servers[0].state, &q.servers[0].state));
        assert!(!q.servers[0].state.is_up());
        assert!(!Arc::ptr_eq(&p.servers[1].state, &q.servers[1].state));
    }
}
