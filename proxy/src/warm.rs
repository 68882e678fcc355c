//! The broker connections a pool keeps open ahead of its `set` clients (`preopen`): TCP (and TLS)
//! connected, protocol header sent, the broker's Connection.Start read. A client's StartOk then
//! goes out on one at once, and the broker's accept and Start are off the client's path.
//!
//! A leaf: it holds and hands out the connections; [`crate::preopen`] opens them. Each one waits
//! at most `preopen_max_age`, well inside the broker's own `handshake_timeout` (a broker closes a
//! connection that sends no StartOk in time), so the client that takes one still has most of that
//! time for Tune and Open. A server keeps its connections only while clients keep wanting them
//! (one in the last [`IDLE_AFTER`]), and none while it is down or drained.

use crate::stream::Stream;
use metrics::{counter, gauge, Counter, Gauge};
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The most pre-opened connections per server `preopen` may ask for.
pub const MAX_PREOPEN: usize = 16;

/// RabbitMQ's default `handshake_timeout`: `preopen_max_age` must stay under it.
pub const BROKER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A server no client wanted for this long lets its pre-opened connections expire unreplaced.
pub const IDLE_AFTER: Duration = Duration::from_secs(30);

/// After a pre-open failed, the next one to that server waits this long (the health check, not
/// the pre-opener, decides whether the server is down).
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The pre-opened connections of one pool, by server index.
#[derive(Debug)]
pub struct Warm {
    count: usize,
    max_age: Duration,
    servers: Vec<ServerWarm>,
    /// Set when the pool left the config (or setgate stops): nothing is kept from then on.
    shut: AtomicBool,
    /// Wakes the pre-opener: a client took a connection, or found none.
    pub(crate) wake: Notify,
}

#[derive(Debug)]
struct ServerWarm {
    /// Locked for a push or a pop, never across an await.
    state: Mutex<State>,
    idle_gauge: Gauge,
    used: Counter,
    closed: Counter,
}

#[derive(Debug, Default)]
struct State {
    /// Oldest first, with the time each was opened.
    idle: VecDeque<(Stream, Instant)>,
    /// Being opened now.
    opening: usize,
    /// When a client last wanted a connection to this server.
    last_demand: Option<Instant>,
    /// No pre-open before this (set after a failed one).
    retry_at: Option<Instant>,
}

impl Warm {
    /// `count` connections per server of `servers` (the names, for the metrics' labels), each kept
    /// at most `max_age`.
    pub fn new(pool: &str, servers: &[&str], count: usize, max_age: Duration) -> Warm {
        let servers = servers
            .iter()
            .map(|s| {
                let labels = [("pool", pool.to_string()), ("server", s.to_string())];
                ServerWarm {
                    state: Mutex::new(State::default()),
                    idle_gauge: gauge!("setgate_server_preopen_idle", &labels),
                    used: counter!("setgate_server_preopen_used_total", &labels),
                    closed: counter!("setgate_server_preopen_closed_total", &labels),
                }
            })
            .collect();
        Warm {
            count,
            max_age,
            servers,
            shut: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// True when this pool pre-opens at all.
    pub fn enabled(&self) -> bool {
        self.count > 0 && !self.shut.load(Ordering::Acquire)
    }

    /// A pre-opened connection to server `i` that is young enough and still open, if one is
    /// waiting. Also records that a client wanted one, so the pre-opener keeps (or starts)
    /// filling.
    pub fn take(&self, i: usize) -> Option<Stream> {
        let s = self.servers.get(i)?;
        if !self.enabled() {
            return None;
        }
        let now = Instant::now();
        let mut found = None;
        let mut dropped = Vec::new();
        {
            let mut st = lock(&s.state);
            st.last_demand = Some(now);
            while let Some((stream, opened)) = st.idle.pop_front() {
                if now.duration_since(opened) < self.max_age && is_open(&stream) {
                    found = Some(stream);
                    break;
                }
                dropped.push(stream);
            }
        }
        let gone = dropped.len() + usize::from(found.is_some());
        s.idle_gauge.decrement(gone as f64);
        s.closed.increment(dropped.len() as u64);
        if found.is_some() {
            s.used.increment(1);
        }
        self.wake.notify_one();
        found
    }

    /// Closes server `i`'s connections that are too old (or all of them, when the server is not
    /// `usable`), and returns how many the pre-opener should open now; those count as opening
    /// until [`Warm::opened`] or [`Warm::failed`].
    pub fn refill(&self, i: usize, usable: bool) -> usize {
        let Some(s) = self.servers.get(i) else {
            return 0;
        };
        let now = Instant::now();
        let mut st = lock(&s.state);
        let before = st.idle.len();
        if usable {
            let max_age = self.max_age;
            st.idle
                .retain(|(_, opened)| now.duration_since(*opened) < max_age);
        } else {
            st.idle.clear();
        }
        let closed = before - st.idle.len();
        s.idle_gauge.decrement(closed as f64);
        s.closed.increment(closed as u64);
        let wanted = st
            .last_demand
            .is_some_and(|t| now.duration_since(t) < IDLE_AFTER);
        let may = st.retry_at.is_none_or(|t| now >= t);
        if !(usable && wanted && may && self.enabled()) {
            return 0;
        }
        let n = self.count.saturating_sub(st.idle.len() + st.opening);
        st.opening += n;
        n
    }

    /// A connection to server `i` that the pre-opener finished opening.
    pub fn opened(&self, i: usize, stream: Stream) {
        let Some(s) = self.servers.get(i) else {
            return;
        };
        let mut st = lock(&s.state);
        st.opening = st.opening.saturating_sub(1);
        st.retry_at = None;
        if self.shut.load(Ordering::Acquire) {
            // Opened for a pool that is gone: close it now, not when the last client leaves.
            s.closed.increment(1);
            return;
        }
        st.idle.push_back((stream, Instant::now()));
        s.idle_gauge.increment(1.0);
    }

    /// A pre-open of server `i` that failed: the next waits [`RETRY_AFTER`].
    pub fn failed(&self, i: usize) {
        let Some(s) = self.servers.get(i) else {
            return;
        };
        let mut st = lock(&s.state);
        st.opening = st.opening.saturating_sub(1);
        st.retry_at = Some(Instant::now() + RETRY_AFTER);
    }

    /// When the oldest waiting connection expires, if any waits.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.servers
            .iter()
            .filter_map(|s| lock(&s.state).idle.front().map(|(_, t)| *t + self.max_age))
            .min()
    }

    /// Connections waiting for server `i` now.
    pub fn idle(&self, i: usize) -> usize {
        self.servers.get(i).map_or(0, |s| lock(&s.state).idle.len())
    }

    /// Closes every waiting connection and keeps none from now on (the pool left the config, or
    /// setgate stops).
    pub fn shut(&self) {
        self.shut.store(true, Ordering::Release);
        for i in 0..self.servers.len() {
            self.refill(i, false);
        }
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        self.shut();
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// False when the broker has closed the connection (or, on plain TCP, sent anything: after its
/// Connection.Start a broker says nothing until it gets a StartOk, except to close). Peeks without
/// blocking and consumes nothing.
fn is_open(stream: &Stream) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(stream.tcp()).peek(&mut byte) {
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        Ok(0) => false,
        // Under TLS, records such as session tickets may still be unread.
        Ok(_) => !matches!(stream, Stream::Tcp(_)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: our side (as a pre-opened stream) and the "broker's".
    async fn pair() -> (Stream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (theirs, _) = l.accept().await.unwrap();
        (Stream::Tcp(ours), theirs)
    }

    #[tokio::test]
    async fn refills_only_while_clients_want_connections() {
        let w = Warm::new("p", &["a"], 2, Duration::from_secs(3));
        // Nobody asked yet: nothing to open.
        assert_eq!(w.refill(0, true), 0);
        assert!(w.take(0).is_none());
        // A client wanted one: open two, and not again while they are in flight.
        assert_eq!(w.refill(0, true), 2);
        assert_eq!(w.refill(0, true), 0);
        let (s1, _b1) = pair().await;
        let (s2, _b2) = pair().await;
        w.opened(0, s1);
        w.opened(0, s2);
        assert_eq!(w.idle(0), 2);
        assert!(w.take(0).is_some());
        assert_eq!(w.refill(0, true), 1);
        w.failed(0);
        // After a failure, the next try waits.
        assert_eq!(w.refill(0, true), 0);
    }

    #[tokio::test]
    async fn a_server_that_is_not_usable_keeps_none() {
        let w = Warm::new("p", &["a"], 2, Duration::from_secs(3));
        assert!(w.take(0).is_none());
        assert_eq!(w.refill(0, true), 2);
        let (s1, _b1) = pair().await;
        w.opened(0, s1);
        assert_eq!(w.refill(0, false), 0);
        assert_eq!(w.idle(0), 0);
    }

    #[tokio::test]
    async fn a_connection_the_broker_closed_or_wrote_on_is_not_handed_out() {
        let w = Warm::new("p", &["a"], 3, Duration::from_secs(3));
        assert!(w.take(0).is_none());
        assert_eq!(w.refill(0, true), 3);
        let (closed, b1) = pair().await;
        let (spoke, mut b2) = pair().await;
        let (good, b3) = pair().await;
        drop(b1);
        b2.write_all(b"\x01").await.unwrap();
        w.opened(0, closed);
        w.opened(0, spoke);
        w.opened(0, good);
        // Let the FIN and the byte arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = w.take(0).expect("the open one");
        let Stream::Tcp(got) = got else {
            unreachable!()
        };
        assert_eq!(got.peer_addr().unwrap(), b3.local_addr().unwrap());
        assert_eq!(w.idle(0), 0);
    }

    #[tokio::test]
    async fn too_old_is_closed_not_handed_out() {
        let w = Warm::new("p", &["a"], 1, Duration::from_millis(100));
        assert!(w.take(0).is_none());
        assert_eq!(w.refill(0, true), 1);
        let (s, _b) = pair().await;
        w.opened(0, s);
        assert!(w.next_expiry().is_some());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(w.take(0).is_none());
        assert_eq!(w.idle(0), 0);
    }
}
