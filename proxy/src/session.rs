//! A connection's life once it has a server: the splice until either side closes (or the server
//! is marked down, or the shutdown grace ends), and the count of those that never got that far.
//! Shared by `tcp` mode ([`crate::conn`]) and `set` mode ([`crate::set_mode`]).

use crate::shared::{ListenerRuntime, Shared};
use crate::stream::Stream;
use crate::upstream::{PoolRuntime, Upstream};
use metrics::counter;
use std::time::Instant;
use tracing::{debug, info};

/// Counts a connection that ended before it was spliced, by cause.
pub(crate) fn handshake_failed(listener: &str, cause: &'static str) {
    counter!("setgate_handshake_failures_total", "listener" => listener.to_string(), "cause" => cause).increment(1);
}

/// Copies bytes until either side closes, the server is marked down with `shutdown-sessions`, or
/// the shutdown grace ends.
pub(crate) async fn pump(
    shared: &Shared,
    lst: &ListenerRuntime,
    pool: &PoolRuntime,
    mut client: Stream,
    mut up: Upstream,
) {
    let state = up.slot.state().clone();
    let pool_name = pool.pool.cfg.name.as_str();
    let shutdown_sessions = pool.pool.cfg.on_marked_down.is_some();
    let marked_down = state.marked_down.notified();
    tokio::pin!(marked_down);
    // Listen for "marked down" first, then look: a server marked down while this connection was
    // still connecting (TCP, TLS, the broker's Connection.Start) is caught here, and one marked
    // down from now on wakes the select below. Nothing falls between the two.
    marked_down.as_mut().enable();
    if shutdown_sessions && !state.is_up() {
        info!(pool = pool_name, server = %up.server, "closing: server was marked down while connecting (on_marked_down = shutdown-sessions)");
        return;
    }
    let up_counters = [lst.stats.bytes_in.clone(), state.metrics().bytes_in.clone()];
    let down_counters = [
        lst.stats.bytes_out.clone(),
        state.metrics().bytes_out.clone(),
    ];
    let started = Instant::now();
    debug!(pool = pool_name, server = %up.server, "spliced");
    tokio::select! {
        r = crate::splice::splice(&mut client, &mut up.stream, &up_counters, &down_counters) => match r {
            Ok(t) => debug!(pool = pool_name, server = %up.server, bytes_up = t.up, bytes_down = t.down, duration = ?started.elapsed(), "closed"),
            Err(e) => debug!(pool = pool_name, server = %up.server, error = %e, duration = ?started.elapsed(), "closed on error"),
        },
        _ = marked_down => info!(pool = pool_name, server = %up.server, "closing: server marked down (on_marked_down = shutdown-sessions)"),
        _ = shared.closing.cancelled() => info!(pool = pool_name, server = %up.server, "closing: shutdown grace is over"),
    }
}
