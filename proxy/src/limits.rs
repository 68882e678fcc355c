//! Connection limits: a listener's `rate_limit` (paces its accept loop) and a `set` listener's
//! `limits` (per SASL user, per vhost, per client address), each refusal counted with its reason.
//!
//! The state (connections open per user and vhost, the buckets' levels, the refusal counts) lives
//! in a [`crate::limit_state::LimitState`] inside the listener's [`ListenerStats`], which a reload hands on to the
//! listener of the same name: connections counted before a reload are still counted after it.
//! The limits themselves come from the config of the snapshot a connection started with.
//!
//! Where each limit is applied in a `set` connection's life:
//! - `source_rate` on arrival, before the handshake (so it covers clients that never send a user
//!   name); the refusal waits for the StartOk so that the client can read why;
//! - `user_maxconn` and `user_rate` after the StartOk, before any broker is contacted;
//! - `vhost_maxconn` and `vhost_rate` at Connection.Open, which the client sends after the
//!   broker's Tune: setgate forwards Tune and TuneOk frame by frame and holds the Open until the
//!   vhost is admitted (only when a vhost limit is set). A refused client never reaches the vhost.

use crate::amqp::frame::{self, FrameError, HANDSHAKE_FRAME_MAX};
use crate::config::LimitsConfig;
use crate::limit_state::{Limit, Over};
use crate::listener_stats::ListenerStats;
use crate::shared::ListenerRuntime;
use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::connection::{AMQPMethod, StartOk};
use amq_protocol::protocol::AMQPClass;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::info;

/// The limits of a listener for `setgate check`'s summary: `", rate_limit 500/s, limits:
/// user_maxconn 50, ..., 1 override"`, or nothing when it has none.
pub fn describe(l: &crate::config::ListenerConfig) -> String {
    let mut out = String::new();
    if let Some(r) = l.rate_limit {
        out.push_str(&format!(", rate_limit {r}/s"));
    }
    let Some(limits) = &l.limits else {
        return out;
    };
    let mut parts = Vec::new();
    for (name, v, unit) in [
        ("user_maxconn", limits.user_maxconn, ""),
        ("user_rate", limits.user_rate, "/s"),
        ("vhost_maxconn", limits.vhost_maxconn, ""),
        ("vhost_rate", limits.vhost_rate, "/s"),
        ("source_rate", limits.source_rate, "/s"),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name} {v}{unit}"));
        }
    }
    if !limits.overrides.is_empty() {
        let n = limits.overrides.len();
        parts.push(format!(
            "{n} user override{}",
            if n == 1 { "" } else { "s" }
        ));
    }
    if !limits.enforce {
        parts.push("counting only (enforce = false)".into());
    }
    out.push_str(&format!(", limits: {}", parts.join(", ")));
    out
}

/// The reply code RabbitMQ itself uses when a user or vhost connection limit is reached.
pub(crate) const NOT_ALLOWED: u16 = 530;

/// A connection over a limit, with the reply text the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) limit: Limit,
    pub(crate) text: String,
}

/// Records an over-limit connection: counted, logged, and returned as a refusal when enforced.
fn over(
    lst: &ListenerRuntime,
    limits: &LimitsConfig,
    limit: Limit,
    text: String,
) -> Option<Refusal> {
    let enforced = limits.enforce;
    lst.stats.limits.count(&lst.cfg.name, limit, enforced);
    if enforced {
        info!(limit = limit.as_str(), "refusing: {text}");
        Some(Refusal { limit, text })
    } else {
        info!(
            limit = limit.as_str(),
            "over a limit, let through (enforce = false): {text}"
        );
        None
    }
}

/// `source_rate`, when the connection arrives. A refusal is sent once the client has sent its
/// StartOk (see [`admit_user`]), so that it reads why.
pub(crate) fn on_arrival(lst: &ListenerRuntime, source: IpAddr) -> Option<Refusal> {
    let limits = lst.cfg.limits.as_ref()?;
    let rate = limits.source_rate?;
    let ok = lst
        .stats
        .limits
        .sources
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take(&source, rate, Instant::now());
    if ok {
        return None;
    }
    over(
        lst,
        limits,
        Limit::SourceRate,
        format!("setgate: source {source} opens more than {rate} connections a second, the limit"),
    )
}

/// A connection's place under its user's and vhost's limits, given back when it ends.
#[derive(Debug)]
pub(crate) struct Permit {
    stats: Arc<ListenerStats>,
    user: Option<(String, Option<u32>)>,
    vhost: Option<(String, Option<u32>)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let now = Instant::now();
        let l = &self.stats.limits;
        if let Some((user, rate)) = &self.user {
            l.users
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .release(user, *rate, now);
        }
        if let Some((vhost, rate)) = &self.vhost {
            l.vhosts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .release(vhost, *rate, now);
        }
    }
}

/// After the StartOk: the refusal [`on_arrival`] decided, if any, then the user's limits (the
/// SASL user of PLAIN or AMQPLAIN; clients with no user name are not counted per user).
pub(crate) fn admit_user(
    lst: &ListenerRuntime,
    arrival: Option<Refusal>,
    start_ok: &StartOk,
) -> Result<Permit, Refusal> {
    if let Some(r) = arrival {
        return Err(r);
    }
    let mut permit = Permit {
        stats: lst.stats.clone(),
        user: None,
        vhost: None,
    };
    let Some(limits) = lst.cfg.limits.as_ref() else {
        return Ok(permit);
    };
    let user_limits = (limits.user_maxconn, limits.user_rate);
    if user_limits == (None, None) && limits.overrides.is_empty() {
        return Ok(permit);
    }
    let Some(user) =
        crate::amqp::key::sasl_user(start_ok.mechanism.as_str(), start_ok.response.as_bytes())
    else {
        return Ok(permit);
    };
    let o = limits.overrides.get(&user);
    let maxconn = o.and_then(|o| o.maxconn).or(limits.user_maxconn);
    let rate = o.and_then(|o| o.rate).or(limits.user_rate);
    let verdict = lst
        .stats
        .limits
        .users
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .admit(&user, maxconn, rate, limits.enforce, Instant::now());
    let refusal = match verdict {
        None => None,
        Some(Over::Maxconn(m)) => over(
            lst,
            limits,
            Limit::UserMaxconn,
            format!("setgate: user {user} has {m} connections, the limit"),
        ),
        Some(Over::Rate(r)) => over(
            lst,
            limits,
            Limit::UserRate,
            format!("setgate: user {user} opens more than {r} connections a second, the limit"),
        ),
    };
    match refusal {
        Some(r) => Err(r),
        None => {
            permit.user = Some((user, rate));
            Ok(permit)
        }
    }
}

/// Why [`admit_vhost`] did not let a connection through.
#[derive(Debug)]
pub(crate) enum VhostError {
    /// Over a vhost limit; the broker has been told, the client not yet.
    Refused(Refusal),
    /// The client or the broker broke the handshake off.
    Frame(FrameError),
}

impl From<FrameError> for VhostError {
    fn from(e: FrameError) -> Self {
        VhostError::Frame(e)
    }
}

impl From<std::io::Error> for VhostError {
    fn from(e: std::io::Error) -> Self {
        VhostError::Frame(e.into())
    }
}

/// With a vhost limit set: forwards the broker's Tune and the client's TuneOk frame by frame, then
/// reads the client's Connection.Open and admits its vhost, forwarding the Open only when it is
/// under the limits. Both streams stay at frame boundaries, as the splice expects. Anything
/// other than that sequence (the broker refused the login, say) is forwarded and left to the
/// broker and the client: a connection that never opens a vhost uses none.
pub(crate) async fn admit_vhost<C, S>(
    lst: &ListenerRuntime,
    permit: &mut Permit,
    client: &mut C,
    server: &mut S,
) -> Result<(), VhostError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(limits) = lst.cfg.limits.as_ref() else {
        return Ok(());
    };
    if limits.vhost_maxconn.is_none() && limits.vhost_rate.is_none() {
        return Ok(());
    }
    let mut buf = Vec::with_capacity(512);
    let from_broker = frame::read_frame(server, &mut buf, HANDSHAKE_FRAME_MAX).await?;
    client.write_all(&buf).await?;
    if !matches!(connection_method(&from_broker), Some(AMQPMethod::Tune(_))) {
        return Ok(());
    }
    let vhost = loop {
        let from_client = frame::read_frame(client, &mut buf, HANDSHAKE_FRAME_MAX).await?;
        match connection_method(&from_client) {
            Some(AMQPMethod::Open(open)) => break open.virtual_host.as_str().to_string(),
            Some(AMQPMethod::TuneOk(_)) => server.write_all(&buf).await?,
            None if matches!(from_client, AMQPFrame::Heartbeat) => server.write_all(&buf).await?,
            _ => {
                server.write_all(&buf).await?;
                return Ok(());
            }
        }
    };
    let rate = limits.vhost_rate;
    let verdict = lst
        .stats
        .limits
        .vhosts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .admit(
            &vhost,
            limits.vhost_maxconn,
            rate,
            limits.enforce,
            Instant::now(),
        );
    let refusal = match verdict {
        None => None,
        Some(Over::Maxconn(m)) => over(
            lst,
            limits,
            Limit::VhostMaxconn,
            format!("setgate: vhost {vhost} has {m} connections, the limit"),
        ),
        Some(Over::Rate(r)) => over(
            lst,
            limits,
            Limit::VhostRate,
            format!(
                "setgate: vhost {vhost} gets more than {r} new connections a second, the limit"
            ),
        ),
    };
    if let Some(r) = refusal {
        // The broker never sees the Open: close its side politely so it logs a clean close.
        let close = frame::close_frame(200, "setgate: the client was refused by a vhost limit");
        let _ = tokio::time::timeout(Duration::from_secs(1), server.write_all(&close)).await;
        return Err(VhostError::Refused(r));
    }
    permit.vhost = Some((vhost, rate));
    server.write_all(&buf).await?;
    Ok(())
}

fn connection_method(f: &AMQPFrame) -> Option<&AMQPMethod> {
    match f {
        AMQPFrame::Method(0, AMQPClass::Connection(m)) => Some(m),
        _ => None,
    }
}
