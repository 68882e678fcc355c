//! `[routing] reroute`: after a reload that moves keys, close the established `set` connections
//! whose key now routes to another SET, spread evenly over a window, so their clients reconnect
//! to their new SET without all landing on it at once.
//!
//! [`Sessions`] remembers, per spliced `set` connection, the key and the SET it was routed by,
//! and how to ask it to close ([`Registration`]). A reload calls [`Sessions::reroute`] with the
//! new table: it picks the connections that move and signals them one by one, at `window / n`
//! intervals; each connection closes itself (see `session::pump`). A leaf: it knows the router,
//! not the proxy around it.

use setgate_router::Router;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Where a connection's user goes now; sent to a connection that must close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The SET it was routed to (`None`: the default pool).
    pub from: Option<String>,
    /// The SET its key routes to now (`None`: the default pool).
    pub to: Option<String>,
    /// The pool `to` is served by.
    pub pool: String,
}

impl Moved {
    /// The reply text of the Connection.Close the client gets.
    pub fn reply_text(&self) -> String {
        match &self.to {
            Some(set) => format!("setgate: user moved to SET {set}"),
            None => format!("setgate: user moved to the default pool {}", self.pool),
        }
    }
}

/// One spliced `set` connection as a reroute sees it.
#[derive(Debug)]
struct Entry {
    key: Option<String>,
    /// The SET the key was routed to.
    set: Option<String>,
    /// The SET whose broker serves it: `set`, or its failover SET while `set` was down.
    on: Option<String>,
    /// Taken when the connection is told to close, so it is told once.
    close: Option<oneshot::Sender<Moved>>,
}

/// The spliced `set` connections, and the reroute under way.
#[derive(Debug, Default)]
pub struct Sessions {
    /// Locked briefly: to register or drop a connection, and by a reroute to pick or signal one.
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Ascending ids: the order connections were spliced, the order a reroute closes them in.
    next: u64,
    live: BTreeMap<u64, Entry>,
    /// The table in use and, when `reroute` is on, its window: a connection routed by an older
    /// table but spliced after the reroute picked its connections is checked against it.
    current: Option<(Arc<Router>, Option<Duration>)>,
    /// Stops the reroute under way when the next reload brings another table.
    pass: Option<CancellationToken>,
}

/// A registered connection: its entry lives as long as this, and [`Registration::moved`]
/// resolves when a reroute tells it to close.
#[derive(Debug)]
pub struct Registration<'a> {
    sessions: &'a Sessions,
    id: u64,
    rx: oneshot::Receiver<Moved>,
}

impl Registration<'_> {
    /// Resolves when this connection's user moved to another SET; pending forever otherwise.
    pub async fn moved(&mut self) -> Moved {
        match (&mut self.rx).await {
            Ok(m) => m,
            // The entry was dropped without a word: never.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.sessions.lock().live.remove(&self.id);
    }
}

/// The [`Moved`] for a connection routed to `set` and served by `on` whose key `router` sends
/// elsewhere: to a SET that is neither (a connection already on its new SET, through failover,
/// stays).
fn target(
    router: &Router,
    key: Option<&str>,
    set: Option<&str>,
    on: Option<&str>,
) -> Option<Moved> {
    let r = router.route(key);
    (r.set != set && r.set != on).then(|| Moved {
        from: set.map(str::to_owned),
        to: r.set.map(str::to_owned),
        pool: r.pool.to_owned(),
    })
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of registered connections.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// True when no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a connection routed by `router` to `set` for `key`, served by the broker of
    /// SET `on` (`set`, or its failover SET). If a reload with
    /// `reroute` has already put another table in use that sends the key elsewhere, the
    /// connection is told at once (it missed the reroute's pick).
    pub fn register(
        &self,
        key: Option<String>,
        set: Option<&str>,
        on: Option<&str>,
        router: &Arc<Router>,
    ) -> Registration<'_> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        let id = inner.next;
        inner.next += 1;
        let mut close = Some(tx);
        if let Some((current, Some(_))) = &inner.current {
            if !Arc::ptr_eq(current, router) {
                if let Some(m) = target(current, key.as_deref(), set, on) {
                    let _ = close.take().map(|tx| tx.send(m));
                }
            }
        }
        let (set, on) = (set.map(str::to_owned), on.map(str::to_owned));
        inner.live.insert(
            id,
            Entry {
                key,
                set,
                on,
                close,
            },
        );
        drop(inner);
        Registration {
            sessions: self,
            id,
            rx,
        }
    }

    /// A reload put `router` in use, with `window` when `reroute` is on: stops the reroute
    /// under way, and with a window closes every connection whose key `router` sends to
    /// another SET, the i-th of n at `window * i / n`. Returns how many will be closed. Must be
    /// called inside the tokio runtime.
    pub fn reroute(
        self: &Arc<Self>,
        router: Option<Arc<Router>>,
        window: Option<Duration>,
    ) -> usize {
        let mut inner = self.lock();
        if let Some(pass) = inner.pass.take() {
            pass.cancel();
        }
        inner.current = router.clone().map(|r| (r, window));
        let (Some(router), Some(window)) = (router, window) else {
            return 0;
        };
        let ids: Vec<u64> = inner
            .live
            .iter()
            .filter(|(_, e)| {
                e.close.is_some()
                    && target(&router, e.key.as_deref(), e.set.as_deref(), e.on.as_deref())
                        .is_some()
            })
            .map(|(&id, _)| id)
            .collect();
        if ids.is_empty() {
            return 0;
        }
        let n = ids.len();
        let token = CancellationToken::new();
        inner.pass = Some(token.clone());
        drop(inner);
        info!(connections = n, window = ?window, "reroute: closing the connections whose user moved to another SET");
        let sessions = self.clone();
        let start = tokio::time::Instant::now();
        tokio::spawn(token.clone().run_until_cancelled_owned(async move {
            for (i, id) in ids.into_iter().enumerate() {
                tokio::time::sleep_until(start + spread(window, i, n)).await;
                let mut inner = sessions.lock();
                let Some(e) = inner.live.get_mut(&id) else {
                    continue;
                };
                if let Some(m) =
                    target(&router, e.key.as_deref(), e.set.as_deref(), e.on.as_deref())
                {
                    if let Some(tx) = e.close.take() {
                        let _ = tx.send(m);
                    }
                }
            }
        }));
        n
    }
}

/// When the `i`-th of `n` closes happens: evenly spread, the first at once, the last one step
/// before the end of the window.
pub fn spread(window: Duration, i: usize, n: usize) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    let nanos = window.as_nanos() * i as u128 / n as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use setgate_router::RoutingConfig;

    fn router(overrides: &str) -> Arc<Router> {
        let text = format!(
            "strategy = \"buckets\"\ndefault = \"center\"\nbuckets = 10\nsets = [{{ name = \"a\", pool = \"pa\" }}, {{ name = \"b\", pool = \"pb\" }}]\nbucket_map = [{{ range = \"0-9\", set = \"a\" }}]\noverrides = {overrides}\n"
        );
        let cfg: RoutingConfig = toml::from_str(&text).unwrap();
        Arc::new(Router::new(&cfg).unwrap())
    }

    #[test]
    fn closes_are_spread_evenly_over_the_window() {
        let w = Duration::from_secs(30);
        let at: Vec<Duration> = (0..3).map(|i| spread(w, i, 3)).collect();
        assert_eq!(at, [0, 10, 20].map(Duration::from_secs));
        assert_eq!(spread(w, 0, 0), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_moved_connections_are_told_in_order_over_the_window() {
        let sessions = Arc::new(Sessions::default());
        let old = router("{}");
        let mut regs: Vec<Registration> = ["u1", "u2", "u3", "u4"]
            .iter()
            .map(|k| sessions.register(Some(k.to_string()), Some("a"), Some("a"), &old))
            .collect();
        let new = router(r#"{ "u1" = "b", "u3" = "b", "u4" = "center" }"#);
        let started = tokio::time::Instant::now();
        assert_eq!(
            sessions.reroute(Some(new.clone()), Some(Duration::from_secs(3))),
            3
        );

        let mut u2 = regs.remove(1);
        let mut told = Vec::new();
        for mut r in regs {
            let m = r.moved().await;
            told.push((m.reply_text(), started.elapsed()));
        }
        assert_eq!(
            told,
            [
                ("setgate: user moved to SET b".to_string(), Duration::ZERO),
                (
                    "setgate: user moved to SET b".to_string(),
                    Duration::from_secs(1)
                ),
                (
                    "setgate: user moved to the default pool center".to_string(),
                    Duration::from_secs(2)
                ),
            ]
        );
        let never = tokio::time::timeout(Duration::from_secs(60), u2.moved()).await;
        assert!(never.is_err(), "u2 stays where it is");

        // A connection routed by the old table but registered after the pick is told at once.
        let mut late = sessions.register(Some("u1".into()), Some("a"), Some("a"), &old);
        assert_eq!(late.moved().await.to.as_deref(), Some("b"));
        // One routed by the new table is not.
        let mut fresh = sessions.register(Some("u1".into()), Some("b"), Some("b"), &new);
        assert!(tokio::time::timeout(Duration::from_secs(60), fresh.moved())
            .await
            .is_err());
        drop((late, fresh, u2));
        assert!(sessions.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_reload_replans_and_reroute_off_closes_nothing() {
        let sessions = Arc::new(Sessions::default());
        let old = router("{}");
        let mut u1 = sessions.register(Some("u1".into()), Some("a"), Some("a"), &old);
        let mut u2 = sessions.register(Some("u2".into()), Some("a"), Some("a"), &old);
        // u3 was routed to a but served by its failover b: moved to b, it is where it belongs.
        let mut u3 = sessions.register(Some("u3".into()), Some("a"), Some("b"), &old);
        let moved = router(r#"{ "u1" = "b", "u2" = "b", "u3" = "b" }"#);
        assert_eq!(
            sessions.reroute(Some(moved), Some(Duration::from_secs(10))),
            2,
            "u3 is already served by b"
        );
        assert!(tokio::time::timeout(Duration::from_secs(1), u1.moved())
            .await
            .is_ok());
        // Before u2's turn, the operator moves it back: it stays.
        assert_eq!(
            sessions.reroute(Some(old.clone()), Some(Duration::from_secs(10))),
            0
        );
        assert!(tokio::time::timeout(Duration::from_secs(60), u2.moved())
            .await
            .is_err());
        assert!(tokio::time::timeout(Duration::from_secs(60), u3.moved())
            .await
            .is_err());
        // Without reroute nothing is closed, whatever moves.
        let moved = router(r#"{ "u2" = "b" }"#);
        assert_eq!(sessions.reroute(Some(moved), None), 0);
        assert!(tokio::time::timeout(Duration::from_secs(60), u2.moved())
            .await
            .is_err());
    }
}
