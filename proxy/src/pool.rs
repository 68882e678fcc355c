//! Pools of servers and how a new connection picks one.
//!
//! Selection order: primaries that are up (health) and ready (admin); only when none is, the backups.
//! Within that set the pool's `balance` orders the candidates and the first one with a free slot
//! under its `maxconn` wins. A connect that fails is retried on the next server (`retries`), never
//! on one already tried; once every primary has been tried the backups get their turn.
//!
//! Weights: `roundrobin` is smooth weighted round robin (each candidate earns its weight in credit
//! per pick, the one with the most credit takes the connection and pays the sum of the weights),
//! so 3:1 interleaves a a b a a a b ... instead of sending bursts; `leastconn` compares
//! `(active + 1) / weight`; `first` ignores weights. Weight 0 takes nothing new, like a drain.
//! During a pool's `slowstart` window a server that came back counts with a weight that grows
//! from 1/16 of its weight to all of it. Weights are counted in sixteenths internally so that even
//! weight 1 can ramp.

use crate::addr::ServerAddr;
use crate::config::{Balance, PoolConfig, ServerConfig, MAX_WEIGHT};
use crate::health::Health;
use amq_protocol::types::FieldTable;
use metrics::{counter, gauge, Counter, Gauge};
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
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
    /// The weight in force: the config's, or one set through the API.
    weight: AtomicU32,
    /// The config's weight when it was last applied: a reload that changes it overrides a weight
    /// set through the API, a reload that keeps it does not.
    config_weight: AtomicU32,
    /// When the server last came back (health up, or admin back to ready), in [`clock_ms`];
    /// 0: never, no slowstart ramp.
    back_at: AtomicU64,
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
    fn new(pool: &str, server: &str, weight: u32) -> Self {
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
            weight: AtomicU32::new(weight),
            config_weight: AtomicU32::new(weight),
            back_at: AtomicU64::new(0),
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

    /// Up, ready and with a weight: may take new connections (if not full).
    pub fn is_usable(&self) -> bool {
        self.is_up() && self.admin() == AdminState::Ready && self.weight() > 0
    }

    /// The admin state.
    pub fn admin(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Relaxed))
    }

    /// Sets the admin state. Back to ready from drain or maint starts the slowstart ramp.
    pub fn set_admin(&self, state: AdminState) {
        let before = AdminState::from_u8(self.admin.swap(state.as_u8(), Ordering::Relaxed));
        if before != AdminState::Ready && state == AdminState::Ready {
            self.back_at.store(clock_ms(), Ordering::Relaxed);
        }
    }

    /// The weight in force (the config's, or the API's).
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// The config's weight as last applied.
    pub fn config_weight(&self) -> u32 {
        self.config_weight.load(Ordering::Relaxed)
    }

    /// Sets the weight at runtime (the API): it stays until the API changes it again or a reload
    /// changes this server's weight in the file.
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight.min(MAX_WEIGHT), Ordering::Relaxed);
    }

    /// Applies the config's weight: when it differs from the one applied last, it replaces the
    /// weight in force (the operator edited the file); otherwise a weight set through the API
    /// stays.
    pub fn apply_config_weight(&self, weight: u32) {
        if self.config_weight.swap(weight, Ordering::Relaxed) != weight {
            self.weight.store(weight, Ordering::Relaxed);
        }
    }

    /// Restores what a state file saved: the admin state, and the weight when the config's weight
    /// is still the one it was saved against (else the file wins over an old runtime weight).
    pub fn restore(&self, admin: AdminState, weight: u32, saved_config_weight: u32) -> bool {
        self.admin.store(admin.as_u8(), Ordering::Relaxed);
        let weight_kept = saved_config_weight == self.config_weight();
        if weight_kept {
            self.set_weight(weight);
        }
        weight_kept
    }

    /// The weight this server counts with now, in sixteenths, with `slowstart`'s ramp applied.
    pub fn effective_weight(&self, slowstart: Option<Duration>, now_ms: u64) -> u64 {
        let back_at = self.back_at.load(Ordering::Relaxed);
        let since_back = (back_at != 0).then(|| now_ms.saturating_sub(back_at));
        ramp(self.weight(), slowstart, since_back)
    }

    /// How long the slowstart ramp still runs, if it does.
    pub fn slowstart_left(&self, slowstart: Option<Duration>) -> Option<Duration> {
        let ss = slowstart?.as_millis() as u64;
        let back_at = self.back_at.load(Ordering::Relaxed);
        let elapsed = clock_ms().saturating_sub(back_at);
        (back_at != 0 && elapsed < ss).then(|| Duration::from_millis(ss - elapsed))
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
            if up {
                self.back_at.store(clock_ms(), Ordering::Relaxed);
            }
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

/// Weights are counted in this many parts, so a slowstart ramp has steps even for weight 1.
pub const WEIGHT_SCALE: u64 = 16;

/// Milliseconds on a monotonic clock that starts at 1 (0 means "never" in [`ServerState`]).
pub fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The weight a server counts with, in sixteenths: all of `weight`, or during `slowstart` after it
/// came back `since_back` ago, the elapsed share of it and never less than one sixteenth. Pure.
pub fn ramp(weight: u32, slowstart: Option<Duration>, since_back: Option<u64>) -> u64 {
    let full = u64::from(weight) * WEIGHT_SCALE;
    match (slowstart, since_back) {
        (Some(ss), Some(elapsed)) if full > 0 && elapsed < ss.as_millis() as u64 => {
            (full * elapsed / ss.as_millis() as u64).max(1)
        }
        _ => full,
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
    /// Where `leastconn` starts looking among equals; shared by all connections of this snapshot.
    rr: AtomicUsize,
    /// Smooth weighted round robin credit per server (by index). Atomics, not a lock: concurrent
    /// picks may see each other's credit a step late, but every pick adds and takes away the same
    /// total, so the shares hold.
    credit: Vec<AtomicI64>,
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
                .unwrap_or_else(|| Arc::new(ServerState::new(&cfg.name, &s.name, s.weight)));
            servers.push(Server {
                cfg: s.clone(),
                addr,
                state,
            });
        }
        Ok(Pool {
            cfg: cfg.clone(),
            credit: servers.iter().map(|_| AtomicI64::new(0)).collect(),
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
        let now = if self.cfg.slowstart.is_some() {
            clock_ms()
        } else {
            0
        };
        let weight = |i: usize| {
            self.servers[i]
                .state
                .effective_weight(self.cfg.slowstart, now)
        };
        let picked = match self.cfg.balance {
            Balance::First => candidates.into_iter().find_map(|i| self.acquire(i)),
            Balance::Roundrobin => {
                let weighted: Vec<(usize, u64)> =
                    candidates.into_iter().map(|i| (i, weight(i))).collect();
                self.smooth_round_robin(&weighted)
            }
            Balance::Leastconn => {
                // Rotate first so ties are shared out in turn instead of always going to the first.
                let mut weighted: Vec<(usize, u64, u64)> = candidates
                    .into_iter()
                    .map(|i| (i, self.servers[i].state.active() as u64 + 1, weight(i)))
                    .collect();
                let start = self.rr.fetch_add(1, Ordering::Relaxed) % weighted.len();
                weighted.rotate_left(start);
                // (active + 1) / weight, compared without division.
                weighted.sort_by(|a, b| {
                    (u128::from(a.1) * u128::from(b.2)).cmp(&(u128::from(b.1) * u128::from(a.2)))
                });
                weighted.into_iter().find_map(|(i, _, _)| self.acquire(i))
            }
        };
        picked.ok_or(PickError::Full)
    }

    fn acquire(&self, i: usize) -> Option<(usize, Slot)> {
        let server = &self.servers[i];
        server
            .state
            .try_acquire(server.cfg.maxconn)
            .map(|slot| (i, slot))
    }

    /// Smooth weighted round robin over `(server, weight)`: every candidate earns its weight in
    /// credit, the richest one with a free slot takes the connection and pays the sum of the
    /// weights; a full server gives its credit back (it could not take its turn).
    fn smooth_round_robin(&self, weighted: &[(usize, u64)]) -> Option<(usize, Slot)> {
        let mut total: i64 = weighted.iter().map(|(_, w)| *w as i64).sum();
        let mut ranked: Vec<(usize, i64, i64)> = weighted
            .iter()
            .map(|&(i, w)| {
                let w = w as i64;
                (i, w, self.credit[i].fetch_add(w, Ordering::AcqRel) + w)
            })
            .collect();
        // Most credit first; equals keep file order (a stable sort).
        ranked.sort_by_key(|r| std::cmp::Reverse(r.2));
        for (i, w, _) in ranked {
            if let Some(picked) = self.acquire(i) {
                self.credit[i].fetch_sub(total, Ordering::AcqRel);
                return Some(picked);
            }
            self.credit[i].fetch_sub(w, Ordering::AcqRel);
            total -= w;
        }
        None
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
            slowstart: None,
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
                    weight: 1,
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

    fn weighted(balance: Balance, weights: &[u32], slowstart: Option<Duration>) -> Pool {
        let p = pool(
            balance,
            &weights
                .iter()
                .map(|_| ("s", false, None))
                .collect::<Vec<_>>(),
        );
        let mut cfg = p.cfg.clone();
        for (i, (s, w)) in cfg.servers.iter_mut().zip(weights).enumerate() {
            s.name = format!("s{i}");
            s.weight = *w;
        }
        cfg.slowstart = slowstart;
        Pool::build(&cfg, None).unwrap()
    }

    #[test]
    fn weighted_roundrobin_interleaves_smoothly() {
        let p = weighted(Balance::Roundrobin, &[3, 1], None);
        let order: Vec<usize> = (0..8).map(|_| p.pick(&[]).unwrap().0).collect();
        // Never a run of more than three on s0, and s1 every fourth pick.
        assert_eq!(order, [0, 0, 1, 0, 0, 0, 1, 0]);
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[p.pick(&[]).unwrap().0] += 1;
        }
        assert_eq!(counts, [300, 100]);

        let p = weighted(Balance::Roundrobin, &[5, 1, 1], None);
        let order: Vec<usize> = (0..7).map(|_| p.pick(&[]).unwrap().0).collect();
        assert_eq!(
            order,
            [0, 0, 1, 0, 2, 0, 0],
            "nginx's classic 5:1:1 sequence"
        );
    }

    #[test]
    fn weighted_roundrobin_holds_its_shares_under_concurrent_picks() {
        let p = Arc::new(weighted(Balance::Roundrobin, &[3, 1], None));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let mut counts = [0usize; 2];
                    for _ in 0..10_000 {
                        counts[p.pick(&[]).unwrap().0] += 1;
                    }
                    counts
                })
            })
            .collect();
        let mut counts = [0usize; 2];
        for t in threads {
            let c = t.join().unwrap();
            counts[0] += c[0];
            counts[1] += c[1];
        }
        // Credit is conserved pick by pick, so racing picks cannot drift the shares: at most a
        // few picks off 30000/10000.
        assert!(counts[0].abs_diff(30_000) <= 8, "{counts:?}");
    }

    #[test]
    fn a_full_server_does_not_bank_credit() {
        let p = weighted(Balance::Roundrobin, &[1, 1], None);
        let mut cfg = p.cfg.clone();
        cfg.servers[0].maxconn = Some(1);
        let p = Pool::build(&cfg, None).unwrap();
        let held = p.pick(&[]).unwrap();
        assert_eq!(held.0, 0);
        let mut rest = Vec::new();
        for _ in 0..10 {
            rest.push(p.pick(&[]).unwrap());
        }
        assert!(rest.iter().all(|(i, _)| *i == 1));
        drop(held);
        // Freed, s0 takes its turn again, not ten turns in a row.
        let order: Vec<usize> = (0..4)
            .map(|_| {
                let (i, slot) = p.pick(&[]).unwrap();
                drop(slot);
                i
            })
            .collect();
        assert_eq!(order.iter().filter(|i| **i == 0).count(), 2, "{order:?}");
    }

    #[test]
    fn weighted_leastconn_compares_active_over_weight() {
        let p = weighted(Balance::Leastconn, &[3, 1], None);
        let held: Vec<(usize, Slot)> = (0..400).map(|_| p.pick(&[]).unwrap()).collect();
        assert_eq!(
            (p.servers[0].state.active(), p.servers[1].state.active()),
            (300, 100)
        );
        drop(held);
    }

    #[test]
    fn weight_zero_takes_nothing_new_like_a_drain() {
        let p = weighted(Balance::Roundrobin, &[1, 0], None);
        for _ in 0..5 {
            assert_eq!(p.pick(&[]).unwrap().0, 0);
        }
        p.servers[1].state.set_weight(2);
        let picks: Vec<usize> = (0..3).map(|_| p.pick(&[]).unwrap().0).collect();
        assert_eq!(picks.iter().filter(|i| **i == 1).count(), 2, "{picks:?}");
        p.servers[0].state.set_weight(0);
        p.servers[1].state.set_weight(0);
        assert_eq!(p.pick(&[]).unwrap_err(), PickError::NoServer);
    }

    #[test]
    fn the_slowstart_ramp() {
        let ss = Some(Duration::from_secs(30));
        assert_eq!(ramp(2, ss, None), 32, "never came back: full weight");
        assert_eq!(ramp(2, None, Some(0)), 32, "no slowstart: full weight");
        assert_eq!(ramp(1, ss, Some(0)), 1, "at least one sixteenth");
        assert_eq!(ramp(2, ss, Some(15_000)), 16, "half way: half");
        assert_eq!(ramp(1, ss, Some(29_999)), 15);
        assert_eq!(ramp(1, ss, Some(30_000)), 16, "after the window: all");
        assert_eq!(ramp(0, ss, Some(1_000)), 0, "weight 0 stays 0");
    }

    #[test]
    fn a_server_back_up_ramps_in_over_slowstart() {
        let p = weighted(
            Balance::Roundrobin,
            &[1, 1],
            Some(Duration::from_secs(3600)),
        );
        mark(&p, 1, false);
        mark(&p, 1, true); // back now: a sixteenth of its weight at first
        let mut counts = [0; 2];
        for _ in 0..170 {
            counts[p.pick(&[]).unwrap().0] += 1;
        }
        assert!(counts[1] <= 12, "{counts:?}");
        // Back from drain ramps too; a server that never left does not.
        let q = weighted(
            Balance::Roundrobin,
            &[1, 1],
            Some(Duration::from_secs(3600)),
        );
        assert_eq!(
            q.servers[0]
                .state
                .effective_weight(q.cfg.slowstart, clock_ms()),
            16
        );
        q.servers[0].state.set_admin(AdminState::Drain);
        q.servers[0].state.set_admin(AdminState::Ready);
        assert!(
            q.servers[0]
                .state
                .effective_weight(q.cfg.slowstart, clock_ms())
                < 16
        );
    }

    #[test]
    fn a_runtime_weight_stays_until_the_config_weight_changes() {
        let p = weighted(Balance::Roundrobin, &[1, 1], None);
        let s = &p.servers[0].state;
        s.set_weight(4);
        s.apply_config_weight(1); // reload, same weight in the file
        assert_eq!((s.weight(), s.config_weight()), (4, 1));
        s.apply_config_weight(2); // the file changed: it wins
        assert_eq!((s.weight(), s.config_weight()), (2, 2));
    }
}
