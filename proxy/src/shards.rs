//! Where proxied connections run: one single-threaded runtime per core, each with its own epoll,
//! and every connection pinned to one of them for life (HAProxy's threads work the same way).
//!
//! Why not the process's multi-threaded runtime: a proxied connection is mostly idle, and each
//! message through it is a socket event that wakes a parked worker. Tokio's work-stealing
//! scheduler then unparks a second worker to look for work (`transition_from_searching`), which
//! finds none: a futex wake and a context switch per event that do nothing. Measured with
//! `setgate-bench scale` (2,000 confirmed msg/s over 1,000 and 9,850 connections): about one
//! futex call per message, and 1.25x HAProxy's CPU per message at 9,850 connections; with one
//! runtime per thread the wake-up is the socket's own, nothing else.
//!
//! The accept loops stay on the main runtime (they are few and cheap); each accepted socket is
//! moved to the next shard in turn ([`spawn`]), which registers it with its own epoll. Health
//! checks, pre-opening, the admin API and federation stay on the main runtime.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use tokio::runtime::{Builder, Handle};
use tokio_util::task::TaskTracker;

/// Connection runtimes, each driven by a thread of its own, and the one the next connection gets.
struct Shards {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

impl Shards {
    /// Starts `n` runtimes; their threads live as long as the process.
    fn start(n: usize) -> Shards {
        let handles = (0..n)
            .map(|i| {
                let rt = Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a connection runtime (threads and an epoll instance)");
                let handle = rt.handle().clone();
                std::thread::Builder::new()
                    .name(format!("setgate-conn-{i}"))
                    // Drives the runtime's tasks, timers and sockets; never returns.
                    .spawn(move || rt.block_on(std::future::pending::<()>()))
                    .expect("a connection thread");
                handle
            })
            .collect();
        Shards {
            handles,
            next: AtomicUsize::new(0),
        }
    }

    fn spawn<F>(&self, tracker: &TaskTracker, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        tracker.spawn_on(task, &self.handles[i]);
    }
}

/// The process's connection runtimes, started with the first connection.
static SHARDS: OnceLock<Shards> = OnceLock::new();

/// How many connection runtimes: one per core this process may run on (affinity and cgroup
/// quota included).
fn count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `task` (a connection) on the next connection runtime in turn, tracked by `tracker`.
/// `task` registers its sockets with that runtime (see [`crate::stream::rehome`]); that costs
/// two `epoll_ctl` calls per connection, since tokio registers an accepted socket with the
/// accepting runtime first.
pub(crate) fn spawn<F>(tracker: &TaskTracker, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    SHARDS
        .get_or_init(|| Shards::start(count()))
        .spawn(tracker, task);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::Mutex;

    #[tokio::test]
    async fn connections_are_spread_over_one_thread_per_core() {
        // Runtimes of its own: the process's are shared with whatever else runs connections.
        let shards = Shards::start(count());
        let tracker = TaskTracker::new();
        let seen = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        for _ in 0..(2 * count()) {
            let seen = seen.clone();
            shards.spawn(&tracker, async move {
                let name = std::thread::current().name().unwrap_or("").to_string();
                seen.lock().unwrap().insert(name);
            });
        }
        tracker.close();
        tracker.wait().await;
        let seen = seen.lock().unwrap().clone();
        let want: std::collections::BTreeSet<String> =
            (0..count()).map(|i| format!("setgate-conn-{i}")).collect();
        assert_eq!(seen, want);
    }
}
