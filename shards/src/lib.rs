//! Where setgate's data path runs: one single-threaded runtime per core, each with its own epoll,
//! and every proxied connection and every federation flow pinned to one of them for life
//! (HAProxy's threads work the same way).
//!
//! Why not the process's multi-threaded runtime: a proxied connection is mostly idle, and each
//! message through it is a socket event that wakes a parked worker. Tokio's work-stealing
//! scheduler then unparks a second worker to look for work (`transition_from_searching`), which
//! finds none: a futex wake and a context switch per event that do nothing. Measured with
//! `setgate-bench scale` (2,000 confirmed msg/s over 1,000 and 9,850 connections): about one
//! futex call per message, and 1.25x HAProxy's CPU per message at 9,850 connections; with one
//! runtime per thread the wake-up is the socket's own, nothing else.
//!
//! A federation flow is the same shape: one task woken by its sockets a few thousand times a
//! second, each wake-up carrying a handful of deliveries or confirms. On the multi-threaded
//! runtime a flow cost 6.9 us of CPU per forwarded message under a live publisher
//! (`setgate-bench federation`, one run each), 5.6 to 6.4 us on a shard.
//!
//! Accept loops, health checks, pre-opening, the admin API and the supervision of flows stay on
//! the main runtime; what a task here opens (sockets, lapin's connections and their tasks) is
//! registered with its own shard's epoll and runs on its thread.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use tokio::runtime::{Builder, Handle};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// Runtimes, each driven by a thread of its own, and the one the next task gets.
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
                    .expect("a data-path runtime (threads and an epoll instance)");
                let handle = rt.handle().clone();
                std::thread::Builder::new()
                    .name(format!("setgate-shard-{i}"))
                    // Drives the runtime's tasks, timers and sockets; never returns.
                    .spawn(move || rt.block_on(std::future::pending::<()>()))
                    .expect("a data-path thread");
                handle
            })
            .collect();
        Shards {
            handles,
            next: AtomicUsize::new(0),
        }
    }

    /// The runtime the next task goes to, in turn.
    fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }
}

/// The process's data-path runtimes, started with the first task.
static SHARDS: OnceLock<Shards> = OnceLock::new();

fn shards() -> &'static Shards {
    SHARDS.get_or_init(|| Shards::start(count()))
}

/// How many runtimes: one per core this process may run on (affinity and cgroup quota included).
fn count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `task` on the next data-path runtime in turn.
pub fn spawn<F>(task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    shards().next().spawn(task)
}

/// [`spawn`], tracked by `tracker` (a listener's connections, waited for when it drains).
pub fn spawn_tracked<F>(tracker: &TaskTracker, task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tracker.spawn_on(task, shards().next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[tokio::test]
    async fn tasks_are_spread_over_one_thread_per_core() {
        let mut tasks = Vec::new();
        for _ in 0..(2 * count()) {
            tasks.push(spawn(async {
                std::thread::current().name().unwrap_or("").to_string()
            }));
        }
        let mut seen = BTreeSet::new();
        for t in tasks {
            seen.insert(t.await.unwrap());
        }
        let want: BTreeSet<String> = (0..count()).map(|i| format!("setgate-shard-{i}")).collect();
        assert_eq!(seen, want);
    }

    #[tokio::test]
    async fn a_tracked_task_is_waited_for() {
        let tracker = TaskTracker::new();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        spawn_tracked(&tracker, async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            d.store(true, Ordering::SeqCst);
        });
        tracker.close();
        tracker.wait().await;
        assert!(done.load(Ordering::SeqCst));
    }
}
