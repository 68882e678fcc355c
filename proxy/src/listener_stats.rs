//! Connection counters of a listener and a connection's place under its `maxconn`: kept across
//! reloads, shared by the accept loop, the connection tasks and the admin API.

use metrics::{counter, gauge, Counter, Gauge};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Connection counters of one listener, kept across reloads.
#[derive(Debug)]
pub struct ListenerStats {
    active: AtomicUsize,
    pub(crate) active_gauge: Gauge,
    pub(crate) total: Counter,
    /// Times the accept loop paused because the listener was at `maxconn`.
    pub(crate) maxconn_reached: Counter,
    /// Woken when a connection ends, for an accept loop paused at `maxconn`.
    released: tokio::sync::Notify,
    pub(crate) bytes_in: Counter,
    pub(crate) bytes_out: Counter,
    /// `rate_limit` and `limits`: connections counted per user and vhost, buckets, refusals.
    pub limits: crate::limit_state::LimitState,
}

impl ListenerStats {
    pub(crate) fn new(name: &str) -> Self {
        let l = [("listener", name.to_string())];
        ListenerStats {
            active: AtomicUsize::new(0),
            active_gauge: gauge!("setgate_listener_connections_active", &l),
            total: counter!("setgate_listener_connections_total", &l),
            maxconn_reached: counter!("setgate_listener_maxconn_reached_total", &l),
            released: tokio::sync::Notify::new(),
            bytes_in: counter!("setgate_listener_bytes_in_total", &l),
            bytes_out: counter!("setgate_listener_bytes_out_total", &l),
            limits: Default::default(),
        }
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Returns once fewer than `max` connections are open (at once when they are). Checks again
    /// every second as well, since a reload may raise `max`.
    pub(crate) async fn room_under(&self, max: usize) {
        while self.active() >= max {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.active() < max {
                return;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), released).await;
        }
    }

    pub(crate) fn try_acquire(self: &Arc<Self>, max: usize) -> Option<ListenerSlot> {
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
        self.0.released.notify_one();
    }
}
