//! A connection's life once it has a server: the splice until either side closes (or the server
//! is marked down, or the shutdown grace ends), and the count of those that never got that far.
//! Shared by `tcp` mode ([`crate::conn`]) and `set` mode ([`crate::set_mode`]).

use crate::amqp::frame;
use crate::reroute::{Moved, Registration};
use crate::shared::{ListenerRuntime, Shared};
use crate::splice::Boundaries;
use crate::stream::Stream;
use crate::upstream::{PoolRuntime, Upstream};
use metrics::counter;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

/// Reply code for "cannot serve you now, try again": CONNECTION_FORCED.
pub(crate) const CONNECTION_FORCED: u16 = 320;

/// How long a moved connection may take to reach the end of the frames in flight before it is
/// closed without a Connection.Close.
const FINISH_TIMEOUT: Duration = Duration::from_secs(1);

/// Counts a connection that ended before it was spliced, by cause.
pub(crate) fn handshake_failed(listener: &str, cause: &'static str) {
    counter!("setgate_handshake_failures_total", "listener" => listener.to_string(), "cause" => cause).increment(1);
}

/// Copies bytes until either side closes, the server is marked down with `shutdown-sessions`, the
/// shutdown grace ends, or (a `set` connection, `registered`) a reroute says its user moved.
pub(crate) async fn pump(
    shared: &Shared,
    lst: &ListenerRuntime,
    pool: &PoolRuntime,
    mut client: Stream,
    mut up: Upstream,
    mut registered: Option<Registration<'_>>,
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
    let mut splice =
        crate::splice::splice(&mut client, &mut up.stream, &up_counters, &down_counters);
    if registered.is_some() {
        // Set connections start right after the handshake setgate read frame by frame.
        splice = splice.track_frames();
    }
    let moved = async {
        match &mut registered {
            Some(r) => r.moved().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = &mut splice => match r {
            Ok(t) => debug!(pool = pool_name, server = %up.server, bytes_up = t.up, bytes_down = t.down, duration = ?started.elapsed(), "closed"),
            Err(e) => debug!(pool = pool_name, server = %up.server, error = %e, duration = ?started.elapsed(), "closed on error"),
        },
        _ = marked_down => info!(pool = pool_name, server = %up.server, "closing: server marked down (on_marked_down = shutdown-sessions)"),
        _ = shared.closing.cancelled() => info!(pool = pool_name, server = %up.server, "closing: shutdown grace is over"),
        m = moved => {
            // Boxed: this rare path's futures (two 512-byte drains among them) would otherwise
            // be part of every spliced connection's task for its whole life.
            let at = Box::pin(tokio::time::timeout(FINISH_TIMEOUT, splice.finish())).await.unwrap_or_default();
            drop(splice);
            Box::pin(close_moved(&mut client, &mut up.stream, &m, at)).await;
            info!(pool = pool_name, server = %up.server, from = m.from.as_deref().unwrap_or("-"), to = m.to.as_deref().unwrap_or("-"), clean = at.client, "closed: user moved to another SET (reroute)");
        }
    }
}

/// Closes a connection whose user moved: a Connection.Close (320, "setgate: user moved to SET
/// x") to the client and one to the broker where the stream stands between two frames, else
/// only the TCP close; each side gets up to a second to answer and hang up.
async fn close_moved<C, S>(client: &mut C, server: &mut S, m: &Moved, at: Boundaries)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !at.client {
        warn!("the client's stream did not reach a frame boundary within {FINISH_TIMEOUT:?}; closing it without a Connection.Close");
    }
    let to_client = close_frame_if(at.client, &m.reply_text());
    let to_server = close_frame_if(
        at.server,
        "setgate: closed for the client, whose user moved to another SET",
    );
    tokio::join!(
        send_and_linger(client, &to_client),
        send_and_linger(server, &to_server)
    );
    counter!(
        "setgate_set_rerouted_total",
        "from" => m.from.clone().unwrap_or_else(|| "-".into()),
        "to" => m.to.clone().unwrap_or_else(|| "-".into())
    )
    .increment(1);
}

fn close_frame_if(at_boundary: bool, text: &str) -> Vec<u8> {
    if at_boundary {
        frame::close_frame(CONNECTION_FORCED, text)
    } else {
        Vec::new()
    }
}

/// Sends `bytes` (a Connection.Close, or nothing), then waits up to a second for the peer to
/// hang up before closing our side: after a Close the peer answers Close-Ok and closes, as with
/// a broker's own Close. Closing first would put the end of the stream right behind the Close,
/// and a client may see the lost connection before it reads why.
async fn send_and_linger<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) {
    if bytes.is_empty() {
        return linger_close(s).await;
    }
    let sent = tokio::time::timeout(Duration::from_secs(1), async {
        s.write_all(bytes).await?;
        s.flush().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut sink = [0u8; 512];
        while s.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), s.shutdown()).await;
}

/// Sends Connection.Close, then closes gracefully (see [`linger_close`]).
pub(crate) async fn close_client(client: &mut Stream, code: u16, text: &str) {
    let sent = tokio::time::timeout(
        Duration::from_secs(1),
        client.write_all(&frame::close_frame(code, text)),
    )
    .await;
    if matches!(sent, Ok(Ok(()))) {
        linger_close(client).await;
    }
}

/// Closes our side and reads (and drops) what the peer still sends, for at most a second:
/// closing a socket with unread input sends a reset, which can destroy our last words (a Close, or
/// the protocol header) before the peer reads them.
pub(crate) async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        s.flush().await?;
        s.shutdown().await?;
        let mut sink = [0u8; 512];
        while s.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}
