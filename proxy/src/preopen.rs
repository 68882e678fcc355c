//! The task that keeps a pool's pre-opened broker connections ([`crate::warm`]) filled: per
//! server, up to `preopen` while clients keep coming and the server is up and ready; it closes
//! those that reach `preopen_max_age` and, within a second, all of a server that goes down or is
//! drained. One task per pool of a snapshot; it ends (closing what it holds) when a reload
//! replaces the pool or setgate stops.

use crate::shared::{Shared, Snapshot};
use crate::upstream::PoolRuntime;
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;

/// The longest the task sleeps: how soon it sees a server go down, be drained, or leave.
const TICK: Duration = Duration::from_secs(1);

/// Starts the pre-opener of every pool of `snap` that pre-opens.
pub(crate) fn spawn(shared: &Arc<Shared>, snap: &Snapshot) {
    for (name, pool) in &snap.pools {
        if pool.warm.enabled() {
            tokio::spawn(run(shared.clone(), name.clone(), pool.clone()));
        }
    }
}

async fn run(shared: Arc<Shared>, name: String, pool: Arc<PoolRuntime>) {
    loop {
        let current = shared
            .snapshot()
            .pools
            .get(&name)
            .is_some_and(|p| Arc::ptr_eq(p, &pool));
        if !current || shared.stopping.is_cancelled() {
            pool.warm.shut();
            return;
        }
        for (i, server) in pool.pool.servers.iter().enumerate() {
            for _ in 0..pool.warm.refill(i, server.state.is_usable()) {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let opened = tokio::time::timeout(
                        pool.pool.cfg.connect_timeout,
                        crate::upstream::preopen(&pool, i),
                    )
                    .await;
                    match opened {
                        Ok(Ok(stream)) => pool.warm.opened(i, stream),
                        Ok(Err(e)) => {
                            debug!(pool = %pool.pool.cfg.name, server = %pool.pool.servers[i].cfg.name, error = %e, "pre-open failed");
                            pool.warm.failed(i);
                        }
                        Err(_) => {
                            debug!(pool = %pool.pool.cfg.name, server = %pool.pool.servers[i].cfg.name, "pre-open timed out");
                            pool.warm.failed(i);
                        }
                    }
                });
            }
        }
        let tick = tokio::time::Instant::now() + TICK;
        let wake_at = pool.warm.next_expiry().map_or(tick, |t| t.min(tick));
        tokio::select! {
            _ = pool.warm.wake.notified() => {}
            _ = tokio::time::sleep_until(wake_at) => {}
            _ = shared.stopping.cancelled() => {}
        }
    }
}
