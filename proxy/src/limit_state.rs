//! The state behind [`crate::limits`], kept across reloads inside a listener's
//! [`crate::listener_stats::ListenerStats`]: token buckets, connections open per key, refusal
//! counts. A leaf: pure bookkeeping on a clock, no I/O and no config.

use metrics::counter;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Which limit refused (or would have refused) a connection: the `limit` label of
/// `setgate_limit_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    UserMaxconn,
    UserRate,
    VhostMaxconn,
    VhostRate,
    SourceRate,
}

impl Limit {
    const ALL: [Limit; 5] = [
        Limit::UserMaxconn,
        Limit::UserRate,
        Limit::VhostMaxconn,
        Limit::VhostRate,
        Limit::SourceRate,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Limit::UserMaxconn => "user_maxconn",
            Limit::UserRate => "user_rate",
            Limit::VhostMaxconn => "vhost_maxconn",
            Limit::VhostRate => "vhost_rate",
            Limit::SourceRate => "source_rate",
        }
    }
}

/// A token bucket of `rate` tokens a second holding at most `rate` (one second of burst). The
/// rate is passed on each call, so a reload that changes it keeps the level.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn full(rate: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(rate),
            at: now,
        }
    }

    fn refill(&mut self, rate: u32, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(rate));
        self.at = now;
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, rate: u32, now: Instant) -> bool {
        self.refill(rate, now);
        // The epsilon absorbs float error: a token refilled over many steps is still a token.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            true
        } else {
            false
        }
    }

    /// How long until a token is there (zero when one is).
    pub(crate) fn until_next(&mut self, rate: u32, now: Instant) -> Duration {
        self.refill(rate, now);
        let missing = (1.0 - self.tokens).max(0.0);
        // Rounded up, so that waiting this long always finds the token there.
        Duration::from_nanos((missing / f64::from(rate.max(1)) * 1e9).ceil() as u64)
    }

    fn is_full(&mut self, rate: u32, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= f64::from(rate)
    }
}

/// Why a key is over its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Over {
    /// Has `maxconn` connections open.
    Maxconn(u32),
    /// Opens connections faster than `rate` a second.
    Rate(u32),
}

#[derive(Debug)]
struct Tally {
    open: u32,
    bucket: Option<Bucket>,
}

/// Connections open and buckets per key (user, vhost or address). Entries that hold nothing (no
/// connection open, a full bucket) are dropped, so the table stays as large as the keys in use.
#[derive(Debug)]
pub(crate) struct Table<K> {
    map: HashMap<K, Tally>,
    sweep_at: usize,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Table {
            map: HashMap::new(),
            sweep_at: 1024,
        }
    }
}

impl<K: Hash + Eq + Clone> Table<K> {
    /// Checks a new connection of `key` against `maxconn` and `rate` (a token is taken only when
    /// under `maxconn`) and counts it as open when it is under both, or when `!enforce`.
    pub(crate) fn admit(
        &mut self,
        key: &K,
        maxconn: Option<u32>,
        rate: Option<u32>,
        enforce: bool,
        now: Instant,
    ) -> Option<Over> {
        if self.map.len() >= self.sweep_at {
            self.sweep(rate, now);
        }
        let tally = self.map.entry(key.clone()).or_insert(Tally {
            open: 0,
            bucket: None,
        });
        let over = match (maxconn, rate) {
            (Some(m), _) if tally.open >= m => Some(Over::Maxconn(m)),
            (_, Some(r)) => {
                let bucket = tally.bucket.get_or_insert_with(|| Bucket::full(r, now));
                (!bucket.take(r, now)).then_some(Over::Rate(r))
            }
            _ => None,
        };
        if over.is_none() || !enforce {
            tally.open += 1;
        } else if tally.open == 0 && tally.bucket.is_none() {
            self.map.remove(key);
        }
        over
    }

    /// A connection [`Table::admit`] counted has ended.
    pub(crate) fn release(&mut self, key: &K, rate: Option<u32>, now: Instant) {
        if let Some(t) = self.map.get_mut(key) {
            t.open = t.open.saturating_sub(1);
            if t.open == 0 && idle(t, rate, now) {
                self.map.remove(key);
            }
        }
    }

    /// Only takes a token (no connection is counted): the per-address rate.
    pub(crate) fn take(&mut self, key: &K, rate: u32, now: Instant) -> bool {
        if self.map.len() >= self.sweep_at {
            self.sweep(Some(rate), now);
        }
        let tally = self.map.entry(key.clone()).or_insert(Tally {
            open: 0,
            bucket: None,
        });
        tally
            .bucket
            .get_or_insert_with(|| Bucket::full(rate, now))
            .take(rate, now)
    }

    /// Connections open for `key`.
    pub(crate) fn open(&self, key: &K) -> u32 {
        self.map.get(key).map_or(0, |t| t.open)
    }

    /// Keys with an entry.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    fn sweep(&mut self, rate: Option<u32>, now: Instant) {
        self.map.retain(|_, t| t.open > 0 || !idle(t, rate, now));
        self.sweep_at = (self.map.len() * 2).max(1024);
    }
}

/// Holds no connection and a bucket that is full again: the same as no entry at all. (With no
/// rate configured now, a bucket is as good as full.)
fn idle(t: &mut Tally, rate: Option<u32>, now: Instant) -> bool {
    match (&mut t.bucket, rate) {
        (Some(b), Some(r)) => b.is_full(r, now),
        _ => true,
    }
}

/// The limits state of one listener, kept across reloads (see the module doc).
#[derive(Debug, Default)]
pub struct LimitState {
    /// `rate_limit`: the accept loop's bucket.
    accept: Mutex<Option<Bucket>>,
    pub(crate) users: Mutex<Table<String>>,
    pub(crate) vhosts: Mutex<Table<String>>,
    pub(crate) sources: Mutex<Table<IpAddr>>,
    /// Refusals by [`Limit`] (in `Limit::ALL` order) and enforced (1) or only counted (0).
    refusals: [[AtomicU64; 2]; 5],
    /// Times the accept loop waited for `rate_limit`.
    rate_waits: AtomicU64,
}

impl LimitState {
    /// `None` when a connection may be accepted now under `rate` (its token is taken), else how
    /// long until one may.
    pub(crate) fn accept_wait(&self, rate: u32) -> Option<Duration> {
        let now = Instant::now();
        let mut b = self.accept.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = b.get_or_insert_with(|| Bucket::full(rate, now));
        if bucket.take(rate, now) {
            return None;
        }
        self.rate_waits.fetch_add(1, Ordering::Relaxed);
        Some(bucket.until_next(rate, now).max(Duration::from_millis(1)))
    }

    pub(crate) fn count(&self, listener: &str, limit: Limit, enforced: bool) {
        let i = Limit::ALL.iter().position(|l| *l == limit).unwrap_or(0);
        self.refusals[i][usize::from(enforced)].fetch_add(1, Ordering::Relaxed);
        counter!(
            "setgate_limit_refusals_total",
            "listener" => listener.to_string(),
            "limit" => limit.as_str(),
            "enforced" => if enforced { "true" } else { "false" }
        )
        .increment(1);
    }

    /// `/api/listeners`: the refusals so far and the keys being tracked.
    pub(crate) fn status(&self) -> Value {
        let mut refusals = serde_json::Map::new();
        for (i, limit) in Limit::ALL.iter().enumerate() {
            refusals.insert(
                limit.as_str().into(),
                json!({
                    "refused": self.refusals[i][1].load(Ordering::Relaxed),
                    "counted_only": self.refusals[i][0].load(Ordering::Relaxed),
                }),
            );
        }
        json!({
            "refusals": refusals,
            "rate_limit_waits": self.rate_waits.load(Ordering::Relaxed),
            "users_tracked": self.users.lock().map(|t| t.len()).unwrap_or(0),
            "vhosts_tracked": self.vhosts.lock().map(|t| t.len()).unwrap_or(0),
        })
    }

    /// Connections open now for `user` through this listener.
    pub fn user_open(&self, user: &str) -> u32 {
        self.users
            .lock()
            .map(|t| t.open(&user.to_string()))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_one_second_of_burst_then_its_rate() {
        let rate = 10;
        let mut b = Bucket::full(rate, Instant::now());
        for _ in 0..10 {
            assert!(b.take(rate, Instant::now()));
        }
        assert!(!b.take(rate, Instant::now()), "burst is one second's worth");
        assert_eq!(
            b.until_next(rate, Instant::now()),
            Duration::from_millis(100)
        );
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(!b.take(rate, Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.take(rate, Instant::now()));
        // A long idle time refills only up to the burst.
        tokio::time::advance(Duration::from_secs(60)).await;
        let taken = (0..100).filter(|_| b.take(rate, Instant::now())).count();
        assert_eq!(taken, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_paces_a_steady_stream_at_its_rate() {
        let rate = 50;
        let mut b = Bucket::full(rate, Instant::now());
        let start = Instant::now();
        let mut admitted = 0;
        while Instant::now() - start < Duration::from_secs(10) {
            if b.take(rate, Instant::now()) {
                admitted += 1;
            } else {
                let wait = b.until_next(rate, Instant::now());
                tokio::time::advance(wait).await;
            }
        }
        // 50 of burst at 0, then one every 20 ms: at 20 ms, 40 ms, ... 9.98 s.
        assert_eq!(admitted, 50 + 499);
    }

    #[tokio::test(start_paused = true)]
    async fn maxconn_counts_open_connections_and_enforce_false_only_counts() {
        let now = Instant::now();
        let mut t: Table<String> = Table::default();
        let alice = "alice".to_string();
        for _ in 0..3 {
            assert_eq!(t.admit(&alice, Some(3), None, true, now), None);
        }
        assert_eq!(
            t.admit(&alice, Some(3), None, true, now),
            Some(Over::Maxconn(3))
        );
        assert_eq!(t.open(&alice), 3, "a refused connection is not counted");
        t.release(&alice, None, now);
        assert_eq!(t.admit(&alice, Some(3), None, true, now), None);
        // Not enforced: over the limit, reported, and counted as open.
        let bob = "bob".to_string();
        let mut over = 0;
        for _ in 0..10 {
            over += usize::from(t.admit(&bob, Some(3), None, false, now).is_some());
        }
        assert_eq!((over, t.open(&bob)), (7, 10));
        for _ in 0..10 {
            t.release(&bob, None, now);
        }
        assert_eq!(t.open(&bob), 0);
        assert_eq!(t.len(), 1, "bob's entry is gone once he holds nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_refusal_keeps_the_entry_until_its_bucket_refills() {
        let mut t: Table<String> = Table::default();
        let k = "svc".to_string();
        assert_eq!(t.admit(&k, None, Some(1), true, Instant::now()), None);
        assert_eq!(
            t.admit(&k, None, Some(1), true, Instant::now()),
            Some(Over::Rate(1))
        );
        t.release(&k, Some(1), Instant::now());
        assert_eq!(t.len(), 1, "the empty bucket is state worth keeping");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.admit(&k, None, Some(1), true, Instant::now()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        t.release(&k, Some(1), Instant::now());
        assert_eq!(t.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_addresses_are_swept_so_the_table_stays_small() {
        let mut t: Table<IpAddr> = Table::default();
        for i in 0..5000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            assert!(t.take(&ip, 100, Instant::now()));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        // Each address took one token and refills within 10 ms: only the recent ones remain.
        assert!(t.len() < 1100, "{}", t.len());
    }
}
