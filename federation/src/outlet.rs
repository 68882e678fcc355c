//! Where a flow publishes: one *outlet* per destination cluster, each with its publishing
//! connection (a [`Wire`], the flow's own, not lapin's) and the publishes awaiting their confirms.
//!
//! A plain link or shovel has one outlet, opened with the flow's attempt; losing it ends the
//! attempt (`fatal`), as it always did. A destination that routes messages to SETs has an outlet
//! per cluster (the center's, then each SET's), each connecting on its own, plus the *hold*
//! outlet: a connection to the upstream that parks messages of a SET that is down in a queue on
//! the source. A SET's outlet that goes down is local news: its unconfirmed
//! publishes are requeued upstream (and then parked, or sent to the failover SET), it reconnects
//! on its own every `reconnect_delay`, and the other SETs never wait for it. A SET whose broker
//! blocks publishing (a resource alarm) is down the same way, its connection kept open until the
//! broker unblocks it.

use crate::connect::{connect, CLOSE_TIMEOUT};
use crate::error::{LinkError, Side};
use crate::plan::Target;
use crate::status::SetStats;
use crate::topology::check_target;
use crate::tracker::Seq;
use crate::uri::AmqpUri;
use crate::wire::{Said, Settled, Wire, WireError};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use sync_wrapper::SyncWrapper;

/// A publish's confirm with its sequence number and publish time.
pub(crate) type Confirmed = (Seq, Instant, Settled);

/// A publish awaiting its confirm.
struct Entry {
    seq: Seq,
    start: Instant,
    tag: u64,
    /// Its content's fingerprint (publishes with `mandatory`), to know it by when returned.
    fingerprint: u64,
    settled: Option<Settled>,
}

/// Publishes awaiting their confirm, in publish order (so in delivery-tag order, one tag after
/// the other). A confirm marks its publishes; they leave from the front, so the oldest is
/// always the one still waiting longest (the watchdog's), and out-of-order confirms wait for the
/// ones before them (the tracker acks nothing past an unconfirmed publish anyway).
#[derive(Default)]
pub(crate) struct Pending {
    entries: VecDeque<Entry>,
    /// Returns that matched no publish waiting: the next confirm's publishes are all taken as
    /// returned (requeued, so a duplicate at worst, never a loss).
    unmatched_returns: usize,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn push(&mut self, seq: Seq, start: Instant, (tag, fingerprint): (u64, u64)) {
        self.entries.push_back(Entry {
            seq,
            start,
            tag,
            fingerprint,
            settled: None,
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// When the oldest publish still waiting for its confirm went out.
    pub fn oldest(&self) -> Option<Instant> {
        self.entries.front().map(|p| p.start)
    }

    /// Takes what the broker said: a return marks the oldest waiting publish with its content
    /// (its confirm follows and leaves the mark), a confirm marks the publishes it covers.
    fn said(&mut self, said: Said) {
        match said {
            Said::Returned { fingerprint } => {
                let waiting = self
                    .entries
                    .iter_mut()
                    .find(|e| e.settled.is_none() && e.fingerprint == fingerprint);
                match waiting {
                    Some(e) => e.settled = Some(Settled::Returned),
                    None => self.unmatched_returns += 1,
                }
            }
            Said::Confirm {
                tag,
                multiple,
                settled,
            } => {
                let settled = match settled {
                    Settled::Ack if self.unmatched_returns > 0 => {
                        self.unmatched_returns = 0;
                        Settled::Returned
                    }
                    s => s,
                };
                self.settle(tag, multiple, settled);
            }
        }
    }

    /// Marks the publishes a confirm covers; those marked already (returned) keep their mark.
    fn settle(&mut self, tag: u64, multiple: bool, settled: Settled) {
        let Some(first) = self.entries.front().map(|e| e.tag) else {
            return;
        };
        let Some(last) = tag.checked_sub(first) else {
            return; // settled and gone already
        };
        let last = (last as usize).min(self.entries.len().saturating_sub(1));
        if !multiple && self.entries[last].tag != tag {
            return; // a tag never published: nothing to mark
        }
        let from = if multiple { 0 } else { last };
        for e in self.entries.range_mut(from..=last) {
            e.settled.get_or_insert(settled);
        }
    }

    /// The oldest publish, if its confirm came.
    fn pop_settled(&mut self) -> Option<Confirmed> {
        let settled = self.entries.front()?.settled?;
        let e = self.entries.pop_front().expect("front exists");
        Some((e.seq, e.start, settled))
    }

    /// Gives up on every publish still waiting (their outlet is gone): their sequence numbers.
    /// Those confirmed behind an unconfirmed one go too: at-least-once allows the duplicate.
    fn abandon(&mut self) -> Vec<Seq> {
        self.unmatched_returns = 0;
        self.entries.drain(..).map(|e| e.seq).collect()
    }
}

/// The forwarder is shared by reference across awaits, so it must be `Sync`; the boxed
/// stream and future are only ever used through `&mut`, which `SyncWrapper` makes explicit.
enum State {
    Up(Box<Wire>),
    Down(Pin<Box<tokio::time::Sleep>>),
    Connecting(SyncWrapper<BoxFuture<'static, Result<Opened, LinkError>>>),
    /// A SET's broker blocked publishing (a resource alarm): down to the flow, its connection
    /// kept open to hear Connection.Unblocked, which brings it back up. (A new connection would
    /// not tell: a broker blocks a connection only once it publishes.)
    Blocked(Box<Wire>),
}

/// How an outlet of a routed destination (re)connects.
#[derive(Clone)]
pub(crate) struct Dial {
    pub uris: Vec<AmqpUri>,
    pub conn_name: String,
    pub target: Target,
    pub confirm: bool,
    pub reconnect_delay: Duration,
}

/// One destination cluster of a flow.
pub(crate) struct Outlet {
    /// The configured cluster name (a SET's, `default`, the downstream's, or `hold`).
    pub name: String,
    /// Losing it ends the flow's attempt.
    pub fatal: bool,
    /// The side of the link its cluster is on (the hold outlet publishes to the upstream).
    pub side: Side,
    state: State,
    pub confirms: Pending,
    /// The SET's counters in the status (routed destinations).
    pub stats: Option<Arc<SetStats>>,
    /// How to reconnect (outlets with their own connection).
    dial: Option<Dial>,
    /// The broker's `cluster_name` and the URI (without credentials) in use.
    pub cluster_name: String,
    pub uri: String,
}

/// Something that happened to an outlet.
// A confirm is the common event and lives for one match; boxing it would cost an allocation per
// message on the hot path.
#[allow(clippy::large_enum_variant)]
pub(crate) enum OutletEvent {
    Confirm(usize, Confirmed),
    /// Its connection failed.
    Lost(usize, LinkError),
    /// It (re)connected.
    Connected(usize),
    /// A connection attempt failed; it tries again after `reconnect_delay`.
    ConnectFailed(usize, LinkError),
}

impl Outlet {
    /// An outlet on a publishing connection the flow opened; losing it ends the attempt.
    pub fn fixed(name: &str, side: Side, wire: Wire) -> Outlet {
        Outlet {
            name: name.to_string(),
            fatal: true,
            side,
            state: State::Up(Box::new(wire)),
            confirms: Pending::default(),
            stats: None,
            dial: None,
            cluster_name: name.to_string(),
            uri: String::new(),
        }
    }

    /// An outlet with its own connection, connecting now.
    pub fn dialed(name: &str, dial: Dial, stats: Arc<SetStats>) -> Outlet {
        let state = State::Connecting(SyncWrapper::new(
            open(name.to_string(), dial.clone()).boxed(),
        ));
        Outlet {
            name: name.to_string(),
            fatal: false,
            side: Side::Downstream,
            state,
            confirms: Pending::default(),
            stats: Some(stats),
            dial: Some(dial),
            cluster_name: name.to_string(),
            uri: String::new(),
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up(_))
    }

    pub fn is_connecting(&self) -> bool {
        matches!(self.state, State::Connecting(_))
    }

    /// The publishing connection, if up.
    pub fn wire(&mut self) -> Option<&mut Wire> {
        match &mut self.state {
            State::Up(w) => Some(w),
            _ => None,
        }
    }

    /// Its broker announced a resource alarm.
    pub fn blocked(&self) -> bool {
        matches!(&self.state, State::Up(w) if w.blocked())
    }

    /// Since when its oldest unconfirmed publish, sent at `oldest`, has had a broker reading:
    /// `oldest`, or the end of a resource alarm after it (a broker confirms nothing it cannot
    /// read, and after a long alarm it has a backlog to take in first).
    pub fn confirmable_since(&self, oldest: Instant) -> Instant {
        match &self.state {
            State::Up(w) => w.unblocked_at().map_or(oldest, |u| u.max(oldest)),
            _ => oldest,
        }
    }

    /// Takes the outlet down after `err`: closes its connection in the background, gives up on
    /// its unconfirmed publishes (returned, to be requeued upstream) and reconnects after
    /// `reconnect_delay`.
    pub fn go_down(&mut self, err: &LinkError) -> Vec<Seq> {
        let delay = self.retry_after(err);
        let old = std::mem::replace(
            &mut self.state,
            State::Down(Box::pin(tokio::time::sleep(delay))),
        );
        match old {
            State::Up(wire) if matches!(err, LinkError::Blocked { .. }) => {
                self.state = State::Blocked(wire);
            }
            State::Up(wire) | State::Blocked(wire) => {
                tokio::spawn(wire.close(CLOSE_TIMEOUT));
            }
            State::Down(_) | State::Connecting(_) => {}
        }
        if let Some(s) = &self.stats {
            s.set_down(err.to_string());
        }
        if matches!(self.state, State::Blocked(_)) {
            tracing::warn!(cluster = %self.name, error = %err, "destination blocked; its messages are held or failed over until it unblocks");
        } else {
            tracing::warn!(cluster = %self.name, error = %err, retry_in = ?delay, "destination down; its messages are held or failed over");
        }
        self.confirms.abandon()
    }

    /// How long it waits before connecting again after `err`: `reconnect_delay`, or no time
    /// for a silent peer, which is knocked on again at once, as a flow does (the connect knocks).
    fn retry_after(&self, err: &LinkError) -> Duration {
        if err.peer_silent() {
            return Duration::ZERO;
        }
        self.dial
            .as_ref()
            .map_or(Duration::from_secs(5), |d| d.reconnect_delay)
    }

    /// A (re)connection failed, or a blocked connection was lost: down, to connect again after
    /// [`Outlet::retry_after`].
    fn connect_failed(&mut self, i: usize, err: LinkError) -> OutletEvent {
        self.state = State::Down(Box::pin(tokio::time::sleep(self.retry_after(&err))));
        if let Some(s) = &self.stats {
            s.set_down(err.to_string());
        }
        OutletEvent::ConnectFailed(i, err)
    }

    /// Reads what its broker sent and sends heartbeats, whatever its state; a failure is kept
    /// by the wire, for [`Outlet::poll_event`] to take.
    fn keep_alive(&mut self, cx: &mut Context<'_>) {
        if let State::Up(wire) | State::Blocked(wire) = &mut self.state {
            let _ = wire.poll_alive(cx);
        }
    }

    /// Closes the outlet's connection.
    pub async fn close(self) {
        if let State::Up(wire) | State::Blocked(wire) = self.state {
            wire.close(CLOSE_TIMEOUT).await;
        }
    }

    fn poll_event(&mut self, i: usize, cx: &mut Context<'_>) -> Poll<OutletEvent> {
        loop {
            match &mut self.state {
                State::Down(sleep) => {
                    std::task::ready!(sleep.as_mut().poll(cx));
                    let dial = self.dial.clone().expect("only dialed outlets go down");
                    self.state =
                        State::Connecting(SyncWrapper::new(open(self.name.clone(), dial).boxed()));
                }
                State::Connecting(fut) => {
                    let result = std::task::ready!(fut.get_mut().as_mut().poll(cx));
                    return Poll::Ready(match result {
                        Ok(opened) => {
                            self.cluster_name = opened.cluster_name;
                            self.uri = opened.uri;
                            self.state = State::Up(Box::new(opened.wire));
                            if let Some(s) = &self.stats {
                                s.set_up();
                            }
                            OutletEvent::Connected(i)
                        }
                        Err(e) => self.connect_failed(i, e),
                    });
                }
                State::Up(wire) => loop {
                    if let Some(c) = self.confirms.pop_settled() {
                        return Poll::Ready(OutletEvent::Confirm(i, c));
                    }
                    // A flow with one destination waits an alarm out; a SET must not make the
                    // others wait (its unconfirmed publishes are requeued, its messages held).
                    if !self.fatal && wire.blocked() {
                        let cluster = self.name.clone();
                        return Poll::Ready(OutletEvent::Lost(i, LinkError::Blocked { cluster }));
                    }
                    match wire.poll_said(cx) {
                        Poll::Ready(Ok(said)) => self.confirms.said(said),
                        Poll::Ready(Err(e)) => {
                            return Poll::Ready(OutletEvent::Lost(
                                i,
                                wire_error(self.side, &self.name, &e),
                            ))
                        }
                        // Connection.Blocked was read: taken at the top of the loop.
                        Poll::Pending if !self.fatal && wire.blocked() => {}
                        Poll::Pending => return Poll::Pending,
                    }
                },
                State::Blocked(wire) => {
                    // Confirms and returns of what was abandoned may still come: nothing waits
                    // for them, and they must not be matched with later publishes.
                    while wire.blocked() {
                        match wire.poll_said(cx) {
                            Poll::Ready(Ok(_)) => {}
                            Poll::Ready(Err(e)) => {
                                let err = wire_error(self.side, &self.name, &e);
                                return Poll::Ready(self.connect_failed(i, err));
                            }
                            // Connection.Unblocked was read: the loop ends.
                            Poll::Pending if !wire.blocked() => {}
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    let unblocked = std::mem::replace(
                        &mut self.state,
                        State::Down(Box::pin(tokio::time::sleep(Duration::ZERO))),
                    );
                    if let State::Blocked(wire) = unblocked {
                        self.state = State::Up(wire);
                    }
                    if let Some(s) = &self.stats {
                        s.set_up();
                    }
                    tracing::info!(cluster = %self.name, "destination unblocked; its messages flow again");
                    return Poll::Ready(OutletEvent::Connected(i));
                }
            }
        }
    }
}

/// A publishing connection's failure, named.
pub(crate) fn wire_error(side: Side, cluster: &str, e: &WireError) -> LinkError {
    match e {
        WireError::Silent => LinkError::Silent {
            side,
            cluster: cluster.to_string(),
            what: e.to_string(),
        },
        WireError::Closed(_) => LinkError::Broker {
            what: "publishing".into(),
            side,
            cluster: cluster.to_string(),
            reason: e.to_string(),
        },
        WireError::Blocked => LinkError::Blocked {
            cluster: cluster.to_string(),
        },
        WireError::Lost(_) | WireError::Protocol(_) | WireError::Cancelled => LinkError::Broker {
            what: "connection".into(),
            side,
            cluster: cluster.to_string(),
            reason: e.to_string(),
        },
    }
}

/// An outlet that connected.
struct Opened {
    wire: Wire,
    cluster_name: String,
    uri: String,
}

/// Connects an outlet: its URIs in order, the target checked (on a lapin connection, closed
/// then), and its publishing connection to the same URI.
async fn open(cluster: String, dial: Dial) -> Result<Opened, LinkError> {
    let ep = connect(Side::Downstream, &cluster, &dial.uris, &dial.conn_name).await?;
    let checked = check_target(&ep.conn, &cluster, ep.uri.vhost(), &dial.target).await;
    if ep.conn.status().connected() {
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            ep.conn.close(200, "setgate: target checked".into()),
        )
        .await;
    }
    checked?;
    let wire = open_wire(
        Side::Downstream,
        &cluster,
        &ep.uri,
        &dial.conn_name,
        WireUse::Publish {
            confirm: dial.confirm,
        },
    )
    .await?;
    tracing::info!(cluster = %cluster, uri = ep.uri.masked(), "destination up");
    Ok(Opened {
        wire,
        cluster_name: ep.cluster_name,
        uri: ep.uri.without_credentials().to_string(),
    })
}

/// What a flow opens a [`Wire`] for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WireUse {
    /// Consuming from the source.
    Consume,
    /// Publishing, with publisher confirms if `confirm`.
    Publish { confirm: bool },
}

/// A wire to `uri`, a URI lapin just connected to; a failure names the cluster and the use.
pub(crate) async fn open_wire(
    side: Side,
    cluster: &str,
    uri: &AmqpUri,
    conn_name: &str,
    usage: WireUse,
) -> Result<Wire, LinkError> {
    let (confirm, what) = match usage {
        WireUse::Consume => (false, "opening the consuming connection"),
        WireUse::Publish { confirm } => (confirm, "opening the publishing connection"),
    };
    Wire::open(uri, conn_name, confirm)
        .await
        .map_err(|reason| LinkError::Broker {
            what: what.into(),
            side,
            cluster: cluster.to_string(),
            reason,
        })
}

/// The outlets of a flow.
#[derive(Default)]
pub(crate) struct Outlets(pub Vec<Outlet>);

impl Outlets {
    /// The next thing that happened to any outlet. Cancel-safe: all state lives in the outlets.
    pub async fn next(&mut self) -> OutletEvent {
        std::future::poll_fn(|cx| {
            for (i, o) in self.0.iter_mut().enumerate() {
                if let Poll::Ready(ev) = o.poll_event(i, cx) {
                    return Poll::Ready(ev);
                }
            }
            Poll::Pending
        })
        .await
    }

    /// An event if one is ready now.
    pub fn next_now(&mut self) -> Option<OutletEvent> {
        self.next().now_or_never()
    }

    /// Whether the outlets' confirms may be read in rounds ([`Wire::rounds`]).
    pub fn confirm_rounds(&mut self, allowed: bool) {
        for o in &mut self.0 {
            if let Some(w) = o.wire() {
                w.rounds(allowed);
            }
        }
    }

    /// No publish awaits a confirm.
    pub fn settled(&self) -> bool {
        self.0.iter().all(|o| o.confirms.is_empty())
    }

    /// Writes what was published to the outlets `which`, all at once: each one's result. A
    /// SET's outlet is not waited for: once its write would wait, it is done, as
    /// [`WireError::Blocked`] if its broker blocked publishing, or (with confirms) `Ok`, the
    /// rest written in the background.
    pub async fn flush(&mut self, which: &[usize]) -> Vec<(usize, Result<(), WireError>)> {
        let mut done: Vec<Option<Result<(), WireError>>> = vec![None; which.len()];
        std::future::poll_fn(|cx| {
            let mut all = true;
            for (k, &i) in which.iter().enumerate() {
                if done[k].is_some() {
                    continue;
                }
                let fatal = self.0[i].fatal;
                match self.0[i].wire() {
                    Some(w) => match w.poll_flush(cx) {
                        Poll::Ready(r) => done[k] = Some(r),
                        // A SET is not waited for: one slow to take a large message, or
                        // gone, must not hold the others. What its broker said is read now:
                        // a broker that stops reading under a resource alarm says so first
                        // (Connection.Blocked), and the SET is down. Otherwise, with
                        // confirms, the rest is written in the background (its upkeep,
                        // `Outlet::poll_event`), and a broker that takes none of it is found
                        // out by the confirm deadline.
                        Poll::Pending if !fatal => match w.poll_alive(cx) {
                            Poll::Ready(e) => done[k] = Some(Err(e)),
                            Poll::Pending if w.blocked() => done[k] = Some(Err(WireError::Blocked)),
                            Poll::Pending if w.confirms() => done[k] = Some(Ok(())),
                            Poll::Pending => all = false,
                        },
                        Poll::Pending => all = false,
                    },
                    None => done[k] = Some(Err(WireError::Lost("down".into()))),
                }
            }
            if all {
                return Poll::Ready(());
            }
            // While a write waits, every connection is kept alive: what its broker sends is
            // read (confirms are kept for later) and heartbeats go out, or a long wait on one
            // broker would have the others close the connections as dead.
            for o in &mut self.0 {
                o.keep_alive(cx);
            }
            Poll::Pending
        })
        .await;
        which
            .iter()
            .zip(done)
            .map(|(&i, r)| (i, r.expect("all done")))
            .collect()
    }

    /// Publishes awaiting confirms, over all outlets.
    pub fn unconfirmed(&self) -> usize {
        self.0.iter().map(|o| o.confirms.len()).sum()
    }

    /// The oldest unconfirmed publish over all outlets: (outlet, when).
    pub fn oldest(&self) -> Option<(usize, Instant)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.confirms.oldest().map(|t| (i, t)))
            .min_by_key(|(_, t)| *t)
    }

    /// Some outlet is still making its first connection.
    pub fn connecting(&self) -> bool {
        self.0.iter().any(Outlet::is_connecting)
    }

    pub async fn close(self) {
        futures_util::future::join_all(self.0.into_iter().map(Outlet::close)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn while_a_write_waits_the_other_connections_are_kept_alive() {
        let every = Duration::from_secs(5);
        // A destination that takes nothing: its pipe holds 64 bytes, and nobody reads them.
        let (stuck_io, _stuck_broker) = tokio::io::duplex(64);
        let (live_io, mut live_broker) = tokio::io::duplex(1 << 16);
        let mut stuck = Wire::for_test(Box::new(stuck_io), true, None);
        let live = Wire::for_test(Box::new(live_io), true, Some(every));
        stuck.publish("x", "k", false, &[0, 0], &Bytes::from(vec![0u8; 4096]));
        let mut outlets = Outlets(vec![
            Outlet::fixed("stuck", Side::Downstream, stuck),
            Outlet::fixed("live", Side::Downstream, live),
        ]);
        let waited = tokio::time::timeout(3 * every, outlets.flush(&[0])).await;
        assert!(waited.is_err(), "the write to the stuck destination waits");
        // Meanwhile the live connection sent its heartbeats (its broker would otherwise
        // close it as dead after two intervals).
        let mut got = vec![0u8; 64];
        let read = tokio::time::timeout(Duration::from_millis(1), live_broker.read(&mut got)).await;
        let n = read.map_or(0, |r| r.unwrap());
        assert!(n >= 8, "no heartbeat sent while the write waited");
        assert_eq!(got[..8], [8, 0, 0, 0, 0, 0, 0, 0xCE]);
    }

    fn ack(tag: u64, multiple: bool) -> Said {
        Said::Confirm {
            tag,
            multiple,
            settled: Settled::Ack,
        }
    }

    /// Publishes with tags 1..=n; publish `t` has fingerprint 100 + t.
    fn pending(n: u64) -> Pending {
        let mut p = Pending::default();
        for t in 1..=n {
            p.push(t, Instant::now(), (t, 100 + t));
        }
        p
    }

    fn settled(p: &mut Pending) -> Vec<(Seq, Settled)> {
        std::iter::from_fn(|| p.pop_settled().map(|(seq, _, s)| (seq, s))).collect()
    }

    #[test]
    fn a_return_marks_its_publish_whatever_confirm_covers_it() {
        let mut p = pending(4);
        // 3 is returned; one `multiple` confirm then covers 1 to 4 (queues confirmed the rest).
        p.said(Said::Returned { fingerprint: 103 });
        p.said(ack(4, true));
        assert_eq!(
            settled(&mut p),
            vec![
                (1, Settled::Ack),
                (2, Settled::Ack),
                (3, Settled::Returned),
                (4, Settled::Ack)
            ]
        );
        assert!(p.is_empty());
    }

    #[test]
    fn confirms_out_of_order_wait_for_the_ones_before_them() {
        let mut p = pending(3);
        p.said(ack(2, false));
        assert!(settled(&mut p).is_empty(), "1 is still waiting");
        assert!(p.oldest().is_some());
        p.said(ack(1, false));
        assert_eq!(settled(&mut p), vec![(1, Settled::Ack), (2, Settled::Ack)]);
        p.said(ack(9, false));
        assert!(
            settled(&mut p).is_empty(),
            "a tag never published marks nothing"
        );
    }

    #[test]
    fn a_return_that_matches_nothing_makes_the_next_confirm_a_requeue() {
        let mut p = pending(2);
        p.said(Said::Returned { fingerprint: 7 });
        p.said(ack(2, true));
        assert_eq!(
            settled(&mut p),
            vec![(1, Settled::Returned), (2, Settled::Returned)],
            "a duplicate at worst, never a loss"
        );
    }
}
