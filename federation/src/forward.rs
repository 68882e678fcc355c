//! The hot loop of a flow: take upstream deliveries, republish them to their destination,
//! acknowledge upstream according to `ack_mode`.
//!
//! Publishing never waits for a confirm: up to `prefetch_count` publishes are in flight. Ready
//! deliveries are republished as one batch (one write per destination), confirms are
//! taken in publish order per destination ([`Outlets`]), and the [`AckTracker`] turns the
//! confirmed prefix into `multiple` acks, sent when a quarter of the prefetch is ready or
//! [`ACK_DELAY`] after the first was. While half the prefetch or more is unacked (a backlog, a
//! flow falling behind) acks go out by a sixteenth of the prefetch ([`ack_batch`]). Confirms
//! are read in rounds (`wire::lazy`) to save wake-ups, unless the window is filling and a
//! round would hold back a fair part of it ([`round_holds_little`]): then as they come.
//! Deliveries are read in rounds too while the upstream sends many at a time.
//!
//! A destination that routes each message to a SET picks the message's cluster through the
//! router; a message whose SET is down is parked in that SET's hold queue on the source (or sent
//! to its failover SET), and a SET that goes down mid-stream has its unconfirmed publishes
//! requeued upstream (from where they are parked), while the other SETs go on.
//!
//! A message the downstream refused (nack, e.g. a queue at its `x-max-length` with
//! `x-overflow = reject-publish`; or returned, with `mandatory`) is requeued upstream, and the
//! flow then *pauses* consuming, doubling the pause from [`BACKOFF_MIN`] to [`BACKOFF_MAX`] while
//! refusals go on, so a full queue is not spun on at the speed of both brokers. The pause never
//! blocks the loop: confirms, connection events and a stop are handled during it.
//!
//! Watchdogs make a silent peer an error instead of a stall (heartbeats, negotiated in
//! `connect`, are the first line): a publish unconfirmed for [`CONFIRM_DEADLINE`] (unless the
//! downstream said it is blocked by a resource alarm) and a queue-depth request unanswered for
//! [`REQUEST_DEADLINE`] end the attempt with [`LinkError::Silent`] (for a SET of a routed
//! destination: take that SET down). What the flow is doing (forwarding, idle and why, backing
//! off, blocked) is kept in its status.

use crate::config::AckMode;
use crate::connect::CLOSE_TIMEOUT;
use crate::error::{LinkError, Side};
use crate::hops::{HopPolicy, Verdict, RECEIVED_FROM};
use crate::metrics::FlowMetrics;
use crate::outlet::{wire_error, Confirmed, Outlet, OutletEvent, Outlets};
use crate::plan::{hold_queue, Downstream, FlowSpec, Headers, Target, HOLD_ROUTING_KEY};
use crate::raw_props::{header, long_string_value, splice, unwalkable, Edit};
use crate::route::Choice;
use crate::shovelled::{timestamp_value, Shovelled, SHOVELLED, SHOVELLED_TIMESTAMP};
use crate::status::FlowStatus;
use crate::stop::stopped;
use crate::tracker::{AckTracker, Outcome, Seq, UpstreamAck};
use crate::wire::{Delivery, Settled, Wire, WireError, LAZY_ROUND};
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, ConnectionStatus, Event};
use std::future::poll_fn;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Longest a confirmed delivery's upstream ack waits to go out with others. Acking each round
/// of confirms as it arrived cost a write for setgate and an ack frame for the source's channel
/// per round, and under a live publisher a round holds a handful of messages: gathering them
/// took the source broker's CPU per live message from 64-70 us to 61-62 and the live rate from
/// 0.75 to 0.82-0.91 of the source's own (`setgate-bench federation`). A crash in the meantime
/// redelivers what was not acked yet, as any lost ack does.
const ACK_DELAY: Duration = Duration::from_millis(10);
/// How often the upstream queue depth is refreshed.
const DEPTH_INTERVAL: Duration = Duration::from_secs(5);
/// Most deliveries republished in one go.
const BATCH: usize = 256;
/// Most body bytes gathered into one batch (the delivery that passes it included). A batch's
/// deliveries hold the inlet's read buffers until the batch is written: this bounds that memory
/// (256 deliveries of 64 KiB bodies were 16 MiB) so that the inlet reads into the same few
/// buffers again.
const BATCH_BYTES: usize = 512 * 1024;
/// First pause after the downstream refused a publish; doubled while refusals go on.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest pause between rounds of refused publishes.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A publish unconfirmed this long means the downstream stopped answering.
pub(crate) const CONFIRM_DEADLINE: Duration = Duration::from_secs(15);
/// How long the upstream may take to answer the periodic queue-depth request.
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long an attempt that met a message it cannot read waits for the confirms of what it
/// forwarded before it, to ack those: as long as a publish may go unconfirmed.
const UNREADABLE_GRACE: Duration = CONFIRM_DEADLINE;
/// How often the watchdog and the activity shown in the status are updated. A stall is named
/// within [`STALL_NAMED_AFTER`] plus one tick: at 500 ms that was up to 1.5 s, and a 3-minute
/// chaos run in CI once saw 2.01 s of "forwarding" with nothing moving (the watcher's poll on
/// top). The tick is a few atomics and a comparison; a quarter second costs nothing.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Shortest time a flow's delivery rate is measured over.
const RATE_OVER: Duration = Duration::from_millis(200);
/// A running flow that has moved nothing for this long while work waits says so in its
/// activity (`waiting: ...`): a link that reports `running` is moving messages or names why not.
pub(crate) const STALL_NAMED_AFTER: Duration = Duration::from_secs(1);
/// How often an operation in progress checks that its connection is still open.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// A connected, set-up flow.
pub(crate) struct Forwarder {
    pub spec: Arc<FlowSpec>,
    pub status: Arc<FlowStatus>,
    pub metrics: FlowMetrics,
    /// An upstream channel for the periodic passive declare of the queue.
    pub depth_channel: Channel,
    pub up_status: ConnectionStatus,
    /// Where messages go: the one destination, or (routed) each cluster then the hold outlet.
    pub outlets: Outlets,
    pub policy: HopPolicy,
    /// A shovel with `add_forward_headers`: the `x-shovelled` entry's fixed part.
    pub shovelled: Option<Shovelled>,
    /// `delete_after`: how many more messages this attempt may take (`None`: no limit).
    pub limit: Option<u64>,
    /// A federation flow's `x-received-from` entry as bytes, for a first delivery and a
    /// redelivery ([`crate::hops::received_from_elements`]); empty otherwise.
    pub received_from: [Vec<u8>; 2],
    /// Where republished properties are written before they are published.
    pub scratch: Vec<u8>,
}

/// [`Forwarder::named`] for an operation that borrows the forwarder itself.
async fn named<T>(
    status: &FlowStatus,
    run: &mut Run,
    side: Side,
    what: &'static str,
    op: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(op);
    if let Ok(v) = tokio::time::timeout(STALL_NAMED_AFTER, &mut op).await {
        return v;
    }
    show(status, run, Activity::AwaitingAnswer { side, what });
    op.await
}

fn show(status: &FlowStatus, run: &mut Run, activity: Activity) {
    if run.activity != activity {
        run.activity = activity;
        status.set_activity(activity.describe());
    }
}

/// How a forwarder ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// A stop was requested; what was confirmed is acked, the rest stays upstream.
    Stopped,
    /// `delete_after` is done: every message it asked for was moved.
    Completed,
}

/// The connection events of both sides (kept apart from [`Forwarder`], which must be `Sync`).
///
/// lapin reports channel errors (a refused declare, say) on the same stream as connection
/// errors; only an error that left the connection unusable ends the attempt. `down` is the
/// plain destination's connection; routed destinations' outlets watch their own.
pub(crate) struct Events {
    pub up: BoxStream<'static, Event>,
    pub down: Option<(BoxStream<'static, Event>, ConnectionStatus)>,
}

/// Per-run state of the loop.
struct Run {
    tracker: AckTracker,
    /// The downstream returned (mandatory) or nacked a publish since the last acks went out.
    returned: bool,
    nacked: bool,
    /// Publishes given up with their destination are to be requeued upstream now.
    requeue_now: bool,
    /// The current refusal backoff (zero while publishes are confirmed).
    backoff: Duration,
    /// Consuming is paused until then.
    paused_until: Option<tokio::time::Instant>,
    /// When a delivery last arrived, for the activity shown in the status.
    last_delivery: Instant,
    /// When the upstream queue depth was last read: a depth read before the last delivery may be
    /// stale, so it never makes the status claim that messages wait.
    depth_at: Instant,
    /// Consumers on the upstream queue at the last look (others: single active consumer).
    consumers: u32,
    activity: Activity,
    /// `delete_after`: deliveries accepted (forwarded or in flight) this attempt, and whether
    /// the consumer was cancelled because they reached the limit.
    taken: u64,
    limit_reached: bool,
    /// When the acks ready now go out at the latest ([`ACK_DELAY`]).
    acks_due: Option<tokio::time::Instant>,
    /// Deliveries since `rate_at`, and the rate (per second) measured then (for
    /// [`round_holds_little`]), over at least [`RATE_OVER`].
    delivered: u64,
    rate: u64,
    rate_at: Instant,
}

impl Run {
    /// Measures the delivery rate, once at least [`RATE_OVER`] has passed since the last time
    /// (the watch tick's first turn is at once, and a long wait elsewhere delays the next).
    fn measure_rate(&mut self) {
        let over = self.rate_at.elapsed();
        if over >= RATE_OVER {
            self.rate = self.delivered * 1000 / over.as_millis().max(1) as u64;
            self.delivered = 0;
            self.rate_at = Instant::now();
        }
    }
}

/// What one batch wrote, per outlet: whether it was published to (and so is flushed), and,
/// without confirms, which upstream deliveries its write settles once flushed.
struct BatchWrites {
    mode: AckMode,
    start: Instant,
    written: Vec<bool>,
    unconfirmed: Vec<Vec<Option<Seq>>>,
}

impl BatchWrites {
    fn new(outlets: usize, mode: AckMode) -> BatchWrites {
        BatchWrites {
            mode,
            start: Instant::now(),
            written: vec![false; outlets],
            unconfirmed: (0..outlets).map(|_| Vec::new()).collect(),
        }
    }

    /// Delivery `seq` was published to `outlet` (`o`) as `published` (its tag and fingerprint):
    /// in confirm mode it waits for the confirm, otherwise for the flush.
    fn note(&mut self, o: &mut Outlet, outlet: usize, seq: Option<Seq>, published: (u64, u64)) {
        self.written[outlet] = true;
        match (self.mode, seq) {
            (AckMode::OnConfirm, Some(seq)) => o.confirms.push(seq, self.start, published),
            (_, seq) => self.unconfirmed[outlet].push(seq),
        }
    }

    /// The outlets written to.
    fn outlets(&self) -> Vec<usize> {
        (0..self.written.len())
            .filter(|&i| self.written[i])
            .collect()
    }
}

impl Forwarder {
    /// Forwards until an error (the flow reconnects), a stop request (drains, then
    /// [`Ended::Stopped`]) or, with `delete_after`, the last message moved.
    ///
    /// `inlet` is the flow's consuming connection to the upstream: closing it (here, after the
    /// outlets) hands back to the upstream queue every delivery not acknowledged.
    pub async fn run(
        mut self,
        mut inlet: Wire,
        events: Events,
        stop: &mut watch::Receiver<Option<Duration>>,
    ) -> Result<Ended, LinkError> {
        let result = self.forward_loop(&mut inlet, events, stop).await;
        std::mem::take(&mut self.outlets).close().await;
        inlet.close(CLOSE_TIMEOUT).await;
        result
    }

    async fn forward_loop(
        &mut self,
        inlet: &mut Wire,
        events: Events,
        stop: &mut watch::Receiver<Option<Duration>>,
    ) -> Result<Ended, LinkError> {
        let Events {
            up: mut up_events,
            down,
        } = events;
        let (mut down_events, down_status) = match down {
            Some((e, s)) => (Some(e), Some(s)),
            None => (None, None),
        };
        let mut run = Run {
            tracker: AckTracker::default(),
            returned: false,
            nacked: false,
            requeue_now: false,
            backoff: Duration::ZERO,
            paused_until: None,
            last_delivery: Instant::now(),
            depth_at: Instant::now(),
            consumers: 1,
            activity: Activity::Starting,
            taken: 0,
            limit_reached: false,
            acks_due: None,
            delivered: 0,
            // Unknown until measured: no rounds while the window is tight.
            rate: u64::MAX,
            rate_at: Instant::now(),
        };
        if self.limit == Some(0) {
            return Ok(Ended::Completed);
        }
        self.refresh_hold_depths().await;
        let mut depth_tick = tokio::time::interval(DEPTH_INTERVAL);
        depth_tick.tick().await; // the first tick is immediate; the queue was just declared
        let mut watch_tick = tokio::time::interval(WATCH_INTERVAL);
        // One timer, reset when acks start waiting ([`ACK_DELAY`]), not one per turn of the loop.
        let ack_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(ack_timer);
        let mut batch: Vec<Delivery> = Vec::with_capacity(BATCH);
        let down_name = self.spec.downstream_name().to_string();
        loop {
            let consuming = run.paused_until.is_none() && !run.limit_reached;
            tokio::select! {
                biased;
                _ = stopped(stop) => {
                    let grace = stop.borrow().unwrap_or_default();
                    self.drain(&mut run, grace, inlet).await?;
                    return Ok(Ended::Stopped);
                }
                ev = up_events.next() => lost(Side::Upstream, &self.spec.upstream.name, &self.up_status, ev)?,
                ev = next_event(&mut down_events), if down_events.is_some() => {
                    let status = down_status.as_ref().expect("with its events");
                    lost(Side::Downstream, &down_name, status, ev)?
                }
                ev = self.outlets.next() => self.on_outlet(&mut run, ev)?,
                _ = tokio::time::sleep_until(run.paused_until.unwrap_or_else(tokio::time::Instant::now)),
                    if run.paused_until.is_some() => run.paused_until = None,
                () = &mut ack_timer, if run.acks_due.is_some() => {}
                // While not consuming, the inlet is still read and written (heartbeats, a
                // cancel), its deliveries kept for later.
                d = poll_fn(|cx| if consuming {
                    inlet.poll_delivery(cx)
                } else {
                    inlet.poll_alive(cx).map(Err)
                }) => {
                    run.last_delivery = Instant::now();
                    let d = self.delivery(d)?;
                    let mut bytes = d.body().len();
                    batch.push(d);
                    // Take what else is already read or readable: one batch per wake-up.
                    while batch.len() < BATCH && bytes < BATCH_BYTES {
                        match poll_fn(|cx| inlet.poll_delivery(cx)).now_or_never() {
                            Some(d) => {
                                let d = self.delivery(d)?;
                                bytes += d.body().len();
                                batch.push(d);
                            }
                            None => break,
                        }
                    }
                    run.delivered += batch.len() as u64;
                    self.forward(&mut run, &mut batch, inlet).await?;
                    // New deliveries are no progress while older publishes wait for their
                    // confirms (a downstream that stopped reading): keep naming that wait.
                    if self.outlets.oldest().is_none_or(|(_, o)| o.elapsed() < STALL_NAMED_AFTER) {
                        self.show(&mut run, Activity::Forwarding);
                    }
                }
                _ = depth_tick.tick() => self.refresh_depth(&mut run, inlet).await?,
                _ = watch_tick.tick() => {
                    run.measure_rate();
                    self.watch(&mut run)?;
                    if let Activity::AskingUpstream { .. } = run.activity {
                        self.refresh_depth(&mut run, inlet).await?;
                        depth_tick.reset();
                        self.watch(&mut run)?;
                    }
                }
            }
            while let Some(ev) = self.outlets.next_now() {
                self.on_outlet(&mut run, ev)?;
            }
            let prefetch = self.spec.upstream.prefetch_count;
            let little = round_holds_little(run.rate, prefetch);
            self.outlets
                .confirm_rounds(little || !self.window_tight(&run));
            inlet.rounds(little);
            let waiting = run.acks_due;
            self.maybe_send_acks(&mut run, inlet).await?;
            if let Some(due) = run.acks_due.filter(|&d| waiting != Some(d)) {
                ack_timer.as_mut().reset(due);
            }
            if run.limit_reached && run.tracker.outstanding() == 0 && self.outlets.settled() {
                return self.limit_done();
            }
        }
    }

    /// Every message `delete_after` allowed was taken and answered: done, unless the
    /// destination refused some (requeued), which the next attempt takes again.
    fn limit_done(&self) -> Result<Ended, LinkError> {
        let c = &self.status.counters;
        let limit = c.limit.load(Relaxed);
        let moved = c.forwarded.load(Relaxed);
        if moved >= limit {
            tracing::info!(moved, "delete_after reached: every message moved");
            Ok(Ended::Completed)
        } else {
            Err(LinkError::Broker {
                what: "moving the last messages".into(),
                side: Side::Downstream,
                cluster: self.spec.downstream_name().into(),
                reason: format!(
                    "{} of {limit} moved; the destination refused the others, which are taken again",
                    moved
                ),
            })
        }
    }

    fn delivery(&self, d: Result<Delivery, WireError>) -> Result<Delivery, LinkError> {
        d.map_err(|e| self.inlet_error(&e))
    }

    /// The inlet failed: the upstream cancelled the consumer, closed, went silent or was lost.
    fn inlet_error(&self, e: &WireError) -> LinkError {
        let cluster = self.spec.upstream.name.clone();
        match e {
            WireError::Cancelled => LinkError::ConsumerCancelled {
                cluster,
                queue: self.spec.queue_name(),
            },
            WireError::Silent => LinkError::Silent {
                side: Side::Upstream,
                cluster,
                what: e.to_string(),
            },
            WireError::Closed(_) => LinkError::Broker {
                what: "consuming".into(),
                side: Side::Upstream,
                cluster,
                reason: e.to_string(),
            },
            // (Blocked: only a SET's outlet says it, never the inlet.)
            WireError::Lost(_) | WireError::Protocol(_) | WireError::Blocked => LinkError::Broker {
                what: "connection".into(),
                side: Side::Upstream,
                cluster,
                reason: e.to_string(),
            },
        }
    }

    fn on_outlet(&mut self, run: &mut Run, ev: OutletEvent) -> Result<(), LinkError> {
        match ev {
            OutletEvent::Confirm(i, c) => self.on_confirm(run, i, c),
            OutletEvent::Lost(i, e) if self.outlets.0[i].fatal => Err(e),
            OutletEvent::Lost(i, e) => {
                self.outlet_down(run, i, &e);
                Ok(())
            }
            OutletEvent::Connected(i) => {
                tracing::info!(cluster = %self.outlets.0[i].name, "destination back; its messages flow again");
                Ok(())
            }
            OutletEvent::ConnectFailed(i, e) => {
                tracing::debug!(cluster = %self.outlets.0[i].name, error = %e, "destination still down");
                Ok(())
            }
        }
    }

    /// A destination of a routed flow went down: what it had not confirmed goes back upstream
    /// (and from there to its hold queue or failover SET); the others go on.
    fn outlet_down(&mut self, run: &mut Run, i: usize, err: &LinkError) {
        for seq in self.outlets.0[i].go_down(err) {
            run.tracker.resolve(seq, Outcome::Rejected);
            run.requeue_now = true;
        }
    }

    /// Chooses each delivery's destination, checks hops and republishes a batch: each
    /// publish is appended to its destination's wire in delivery order (which numbers its
    /// confirm), then every destination written to is flushed once.
    async fn forward(
        &mut self,
        run: &mut Run,
        batch: &mut Vec<Delivery>,
        inlet: &mut Wire,
    ) -> Result<(), LinkError> {
        let mode = self.spec.upstream.ack_mode;
        let mut writes = BatchWrites::new(self.outlets.0.len(), mode);
        let limit = self.limit;
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut unreadable = None;
        for d in batch.iter() {
            if let Some(limit) = limit {
                if run.taken >= limit {
                    // Delivered before the consumer was cancelled: not ours to move.
                    let seq = run.tracker.push(d.delivery_tag);
                    run.tracker.resolve(seq, Outcome::Rejected);
                    run.requeue_now = true;
                    continue;
                }
                run.taken += 1;
            }
            if d.redelivered {
                self.status.counters.redelivered.fetch_add(1, Relaxed);
                self.metrics.redelivered.increment(1);
            }
            let seq = (mode != AckMode::NoAck).then(|| run.tracker.push(d.delivery_tag));
            if self.republish(run, d, seq, &mut writes, now_secs) {
                continue;
            }
            // Properties in a shape no broker sends (RabbitMQ refuses it from publishers).
            let reason = unwalkable(d.raw_properties());
            if seq.is_none() {
                // Without acks the broker let the message go when it delivered it: it cannot
                // stay upstream, and stopping would only hold up the ones after it.
                tracing::error!(
                    queue = %self.spec.queue_name(),
                    reason,
                    "a message whose properties setgate cannot read was not forwarded \
                     (ack_mode no-ack: the broker had already let it go)"
                );
                continue;
            }
            // The batch stops here: what came before it is confirmed and acked, it and what
            // follows stay upstream.
            unreadable = Some(LinkError::Unreadable {
                cluster: self.spec.upstream.name.clone(),
                queue: self.spec.queue_name(),
                reason: reason.into(),
            });
            break;
        }
        if let Some(limit) = limit {
            if run.taken >= limit && !run.limit_reached {
                run.limit_reached = true;
                // Written with the next acks or upkeep; what was delivered meanwhile is
                // requeued above.
                inlet.cancel();
            }
        }
        batch.clear();
        let which = writes.outlets();
        let flushed = inlet
            .alive_during(self.flush(run, &which))
            .await
            .map_err(|e| self.inlet_error(&e))?;
        for (i, result) in flushed {
            let seqs = std::mem::take(&mut writes.unconfirmed[i]);
            match result {
                Ok(()) => {
                    for seq in seqs {
                        if let Some(seq) = seq {
                            run.tracker.resolve(seq, Outcome::Done);
                        }
                        self.count_forwarded(i);
                    }
                }
                Err(e) if self.outlets.0[i].fatal => return Err(e),
                Err(e) => {
                    self.give_back(run, &seqs);
                    self.outlet_down(run, i, &e);
                }
            }
        }
        if let Some(e) = unreadable {
            // Acked, what was forwarded before it is not forwarded again at the next attempt.
            self.drain(run, UNREADABLE_GRACE, inlet).await?;
            return Err(e);
        }
        Ok(())
    }

    /// A message loop prevention does not forward: counted, and acked with the others.
    fn drop_message(&self, run: &mut Run, seq: Option<Seq>, verdict: Verdict) {
        self.status.counters.dropped.fetch_add(1, Relaxed);
        match verdict {
            Verdict::MaxHops => self.metrics.dropped_max_hops.increment(1),
            _ => self.metrics.dropped_cycle.increment(1),
        }
        tracing::trace!(reason = verdict.reason(), "message not forwarded");
        if let Some(seq) = seq {
            run.tracker.resolve(seq, Outcome::Done);
        }
    }

    /// Writes a batch's publishes to their outlets. A destination whose socket stays open but
    /// which stops reading (no reset, no heartbeat missed yet) would hold the loop here, and
    /// with it the watchdog: the wait is bounded too, and names only the destinations still
    /// writing. Only a resource alarm the broker announced (connection.blocked) is waited out,
    /// and only by a flow with a single destination: a SET's is that SET down, as soon as its
    /// write waits ([`Outlets::flush`]).
    async fn flush(
        &mut self,
        run: &mut Run,
        which: &[usize],
    ) -> Vec<(usize, Result<(), LinkError>)> {
        if which.is_empty() {
            return Vec::new();
        }
        let mut waited = Duration::ZERO;
        loop {
            let op = tokio::time::timeout(CONFIRM_DEADLINE, self.outlets.flush(which));
            let flushed = named(&self.status, run, Side::Downstream, "publishing", op).await;
            match flushed {
                Ok(results) => {
                    return results
                        .into_iter()
                        .map(|(i, r)| {
                            let o = &self.outlets.0[i];
                            (i, r.map_err(|e| wire_error(o.side, &o.name, &e)))
                        })
                        .collect()
                }
                Err(_) => {
                    waited += CONFIRM_DEADLINE;
                    // What the brokers said meanwhile is taken in (a Connection.Blocked sent
                    // before the broker stopped reading, say; confirms stay queued).
                    for &i in which {
                        if let Some(w) = self.outlets.0[i].wire() {
                            let _ = poll_fn(|cx| std::task::Poll::Ready(w.poll_alive(cx)))
                                .now_or_never();
                        }
                    }
                    // Which outlets are still writing: each is tried once more, now. Those done
                    // keep their result; only a stuck one is named.
                    let mut results = Vec::with_capacity(which.len());
                    let mut wait_on = false;
                    for &i in which {
                        let done = self.outlets.flush(&[i]).now_or_never();
                        let o = &self.outlets.0[i];
                        let result = match done.and_then(|mut r| r.pop()) {
                            Some((_, r)) => r.map_err(|e| wire_error(o.side, &o.name, &e)),
                            // A flow with a single destination waits a resource alarm out.
                            None if o.fatal && o.blocked() => {
                                wait_on = true;
                                break;
                            }
                            // A SET's alarm: down to the others (a broker that stopped
                            // reading before the outlet saw Connection.Blocked).
                            None if o.blocked() => Err(LinkError::Blocked {
                                cluster: o.name.clone(),
                            }),
                            None => Err(LinkError::Silent {
                                side: Side::Downstream,
                                cluster: o.name.clone(),
                                what: format!(
                                    "writing publishes did not complete in {}s",
                                    waited.as_secs()
                                ),
                            }),
                        };
                        results.push((i, result));
                    }
                    if !wait_on {
                        return results;
                    }
                }
            }
        }
    }

    /// Publishes to a destination that failed before they were all sent: requeued upstream.
    fn give_back(&self, run: &mut Run, seqs: &[Option<u64>]) {
        for seq in seqs.iter().flatten() {
            run.tracker.resolve(*seq, Outcome::Rejected);
            run.requeue_now = true;
        }
    }

    /// Forwards, holds or drops a delivery, its properties republished from the bytes they
    /// arrived as, never parsed ([`crate::raw_props`]); `false`, having done and counted
    /// nothing, when they cannot be walked (a shape RabbitMQ refuses from publishers).
    fn republish(
        &mut self,
        run: &mut Run,
        d: &Delivery,
        seq: Option<Seq>,
        writes: &mut BatchWrites,
        now_secs: u64,
    ) -> bool {
        let raw = d.raw_properties();
        let released;
        let routing_key: &str = match (&self.spec.target, &self.spec.headers) {
            (_, Headers::Release) => match header(raw, HOLD_ROUTING_KEY) {
                None => return false,
                Some(Some((b'S', k))) => {
                    released = String::from_utf8_lossy(&k[4..]);
                    &released
                }
                Some(_) => d.routing_key.as_str(),
            },
            (
                Target::Exchange {
                    routing_key: Some(k),
                    ..
                },
                _,
            ) => k,
            (Target::Exchange { .. }, _) => d.routing_key.as_str(),
            (Target::Queue(q), _) => q,
        };
        // Where it goes: an outlet, and the SET it is held for.
        let (outlet, hold_for, routed) = match &self.spec.downstream {
            Downstream::Cluster { .. } => (0, None, None),
            Downstream::Sets { routes, .. } => {
                let Some(key) = routes.key.of_raw(raw, d.routing_key.as_str()) else {
                    return false;
                };
                let home = routes.cluster_of(key.as_deref());
                let choice = routes.choose(home, |i| self.outlets.0[i].is_up());
                let routed = Some((key.is_some(), home, choice));
                match choice {
                    Choice::Cluster { index, .. } => (index, None, routed),
                    Choice::Hold(home) => (self.outlets.0.len() - 1, Some(home), routed),
                }
            }
        };
        let dest = hold_for.unwrap_or(outlet);
        if self.spec.headers == Headers::Federation {
            let cluster = match &self.spec.downstream {
                Downstream::Cluster { .. } => self.policy.downstream_cluster.as_str(),
                Downstream::Sets { .. } => self.outlets.0[dest].cluster_name.as_str(),
            };
            match crate::raw_hops::verdict(&self.policy, raw, cluster) {
                None => return false,
                Some(Verdict::Forward) => {}
                Some(drop) => {
                    if let Some((keyed, home, choice)) = routed {
                        self.count_choice(keyed, home, choice);
                    }
                    self.drop_message(run, seq, drop);
                    return true;
                }
            }
        }
        // What its headers gain and lose.
        let (timestamp, held);
        let mut set: [(&str, &[u8]); 2] = [("", &[]); 2];
        let mut n_set = 0;
        let prepend = match &self.spec.headers {
            Headers::Federation => Some((
                RECEIVED_FROM,
                self.received_from[usize::from(d.redelivered)].as_slice(),
            )),
            Headers::Shovel { forward: true } => {
                let s = self
                    .shovelled
                    .as_mut()
                    .expect("set up with forward headers");
                timestamp = timestamp_value(now_secs);
                set[n_set] = (SHOVELLED_TIMESTAMP, &timestamp);
                n_set += 1;
                Some((SHOVELLED, s.element(dest, &self.outlets.0[dest].uri)))
            }
            Headers::Shovel { forward: false } | Headers::Release => None,
        };
        if hold_for.is_some() {
            held = long_string_value(routing_key.as_bytes());
            set[n_set] = (HOLD_ROUTING_KEY, &held);
            n_set += 1;
        }
        let edit = Edit {
            prepend,
            set: &set[..n_set],
            remove: (self.spec.headers == Headers::Release).then_some(HOLD_ROUTING_KEY),
            keep_user_id: self.spec.upstream.trust_user_id,
        };
        let mut props = std::mem::take(&mut self.scratch);
        if !splice(raw, &edit, &mut props) {
            self.scratch = props;
            return false;
        }
        if let Some((keyed, home, choice)) = routed {
            self.count_choice(keyed, home, choice);
        }
        let hold;
        let (exchange, routing_key) = match (hold_for, &self.spec.downstream, &self.spec.target) {
            (Some(home), Downstream::Sets { hold_prefix, .. }, _) => {
                hold = hold_queue(hold_prefix, &self.outlets.0[home].name);
                ("", hold.as_str())
            }
            (_, _, Target::Exchange { name, .. }) => (name.as_str(), routing_key),
            (_, _, Target::Queue(_)) => ("", routing_key),
        };
        let o = &mut self.outlets.0[outlet];
        let Some(wire) = o.wire() else {
            unreachable!("messages are only sent to outlets that are up");
        };
        let published = wire.publish(exchange, routing_key, self.spec.mandatory, &props, d.body());
        writes.note(o, outlet, seq, published);
        self.scratch = props;
        true
    }

    /// Counts where a routed delivery went: without a key, to its SET's failover, or held.
    fn count_choice(&self, keyed: bool, home: usize, choice: Choice) {
        let counters = &self.status.counters;
        if !keyed {
            counters.unkeyed.fetch_add(1, Relaxed);
            self.metrics.unkeyed.increment(1);
        }
        let stats = self.outlets.0[home].stats.as_ref();
        match choice {
            Choice::Cluster {
                failed_over: true, ..
            } => {
                if let Some(s) = stats {
                    s.failed_over.fetch_add(1, Relaxed);
                }
            }
            Choice::Cluster { .. } => {}
            Choice::Hold(_) => {
                if let Some(s) = stats {
                    s.held.fetch_add(1, Relaxed);
                }
                self.metrics.held(&self.outlets.0[home].name).increment(1);
            }
        }
    }

    fn count_forwarded(&self, outlet: usize) {
        self.status.counters.forwarded.fetch_add(1, Relaxed);
        self.metrics.forwarded.increment(1);
        if let Some(s) = &self.outlets.0[outlet].stats {
            s.forwarded.fetch_add(1, Relaxed);
        }
    }

    fn on_confirm(
        &mut self,
        run: &mut Run,
        i: usize,
        (seq, start, result): Confirmed,
    ) -> Result<(), LinkError> {
        let counters = &self.status.counters;
        let outcome = match result {
            Settled::Ack => {
                self.metrics
                    .confirm_latency
                    .record(start.elapsed().as_secs_f64());
                self.count_forwarded(i);
                run.backoff = Duration::ZERO;
                Outcome::Done
            }
            Settled::Returned => {
                counters.rejected.fetch_add(1, Relaxed);
                self.metrics.returned.increment(1);
                run.returned = true;
                Outcome::Rejected
            }
            Settled::Nack => {
                counters.rejected.fetch_add(1, Relaxed);
                self.metrics.nacked.increment(1);
                run.nacked = true;
                Outcome::Rejected
            }
        };
        run.tracker.resolve(seq, outcome);
        Ok(())
    }

    /// Half the prefetch or more is delivered and not acked yet: the source is about to stop
    /// sending (a backlog being drained, a flow falling behind). Then every confirm is read and
    /// every ack sent as soon as it can be, for the rate; with room in the window they are
    /// gathered, for the CPU (the wake-ups, the source's ack frames).
    fn window_tight(&self, run: &Run) -> bool {
        run.tracker.outstanding() * 2 >= self.spec.upstream.prefetch_count as usize
    }

    /// Acks in batches ([`ack_batch`]: fewer ack frames for the upstream's channel and queue,
    /// fewer writes for setgate), or [`ACK_DELAY`] after the first of them was ready; requeues,
    /// refusals and the end of a `delete_after` go out at once.
    async fn maybe_send_acks(&self, run: &mut Run, inlet: &mut Wire) -> Result<(), LinkError> {
        let ready = run.tracker.ready();
        let due = run
            .acks_due
            .is_some_and(|t| t <= tokio::time::Instant::now());
        let batch = ack_batch(self.spec.upstream.prefetch_count, self.window_tight(run));
        if ready >= batch
            || due
            || run.returned
            || run.nacked
            || run.requeue_now
            || run.limit_reached
        {
            run.requeue_now = false;
            run.acks_due = None;
            self.send_acks(run, inlet).await?;
        } else if ready > 0 && run.acks_due.is_none() {
            run.acks_due = Some(tokio::time::Instant::now() + ACK_DELAY);
        }
        Ok(())
    }

    /// Writes the acks (and requeues) the tracker has ready, on the inlet. An upstream that
    /// stops reading is given [`REQUEST_DEADLINE`].
    async fn send_acks(&self, run: &mut Run, inlet: &mut Wire) -> Result<(), LinkError> {
        let acks = run.tracker.take_acks();
        if !acks.is_empty() {
            for ack in acks {
                match ack {
                    UpstreamAck::Ack { tag, multiple } => inlet.ack(tag, multiple),
                    UpstreamAck::Requeue { tag } => inlet.requeue(tag),
                }
            }
            let sent = tokio::time::timeout(REQUEST_DEADLINE, inlet.flush());
            match self.named(run, Side::Upstream, "acknowledging", sent).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(self.inlet_error(&e)),
                Err(_) => {
                    return Err(LinkError::Silent {
                        side: Side::Upstream,
                        cluster: self.spec.upstream.name.clone(),
                        what: format!(
                            "sending acknowledgements did not complete in {}s",
                            REQUEST_DEADLINE.as_secs()
                        ),
                    })
                }
            }
        }
        let returned = std::mem::take(&mut run.returned);
        let nacked = std::mem::take(&mut run.nacked);
        if returned || nacked {
            self.back_off(run, if nacked { "nack" } else { "returned" });
        }
        Ok(())
    }

    /// After refused publishes went back upstream: pause consuming, for longer each round the
    /// downstream goes on refusing, so the requeued messages are not republished at once.
    fn back_off(&self, run: &mut Run, reason: &'static str) {
        run.backoff = next_backoff(run.backoff);
        run.paused_until = Some(tokio::time::Instant::now() + run.backoff);
        self.status.counters.backoffs.fetch_add(1, Relaxed);
        self.metrics.backoff(reason).increment(1);
        let activity = Activity::BackingOff {
            reason,
            pause: run.backoff,
        };
        tracing::debug!(reason, pause = ?run.backoff, "downstream refused publishes; pausing");
        self.show(run, activity);
    }

    /// Twice a second: a destination that stopped confirming ends the attempt (or, one SET of
    /// a routed destination, goes down), and the status says what the flow is doing.
    fn watch(&mut self, run: &mut Run) -> Result<(), LinkError> {
        if let Some((i, oldest)) = self.outlets.oldest() {
            let o = &self.outlets.0[i];
            let waited = o.confirmable_since(oldest).elapsed();
            let blocked = o.blocked();
            if waited >= CONFIRM_DEADLINE && !blocked {
                let err = LinkError::Silent {
                    side: Side::Downstream,
                    cluster: o.name.clone(),
                    what: format!(
                        "{} publishes unconfirmed, the oldest for {}s",
                        o.confirms.len(),
                        waited.as_secs()
                    ),
                };
                if o.fatal {
                    return Err(err);
                }
                self.outlet_down(run, i, &err);
            }
        }
        // Messages wait upstream, this is the queue's only consumer, nothing is in flight, and
        // yet nothing was delivered: the upstream stopped delivering.
        let ready = self.status.counters.queue_depth.load(Relaxed);
        let starved = run.last_delivery.elapsed();
        let consuming = run.paused_until.is_none() && !run.limit_reached;
        if consuming
            && ready > 0
            && ready != u64::MAX
            && run.consumers <= 1
            && run.tracker.outstanding() == 0
            && starved >= CONFIRM_DEADLINE
        {
            return Err(LinkError::Silent {
                side: Side::Upstream,
                cluster: self.spec.upstream.name.clone(),
                what: format!(
                    "{ready} messages ready in the queue but none delivered for {}s",
                    starved.as_secs()
                ),
            });
        }
        let blocked = self.outlets.0.iter().any(Outlet::blocked);
        let activity = if run.paused_until.is_some() {
            run.activity
        } else if blocked {
            Activity::Blocked
        } else if let Some(waited) = self
            .outlets
            .oldest()
            .map(|(_, o)| o.elapsed())
            .filter(|w| *w >= STALL_NAMED_AFTER)
        {
            Activity::AwaitingConfirms {
                publishes: self.outlets.unconfirmed(),
                secs: waited.as_secs(),
            }
        } else if consuming
            && ready > 0
            && ready != u64::MAX
            && run.depth_at > run.last_delivery
            && run.consumers <= 1
            && run.tracker.outstanding() == 0
            && starved >= STALL_NAMED_AFTER
        {
            Activity::AwaitingDeliveries {
                ready,
                secs: starved.as_secs(),
            }
        } else if !self.outlets.settled() || run.last_delivery.elapsed() < STALL_NAMED_AFTER {
            Activity::Forwarding
        } else if run.limit_reached {
            Activity::Finishing
        } else if run.consumers > 1 {
            Activity::Standby
        } else if run.depth_at < run.last_delivery {
            // Deliveries stopped, and the depth on hand is older than the last one: only the
            // upstream can say whether this is idle or a stall, so ask it (the loop does).
            Activity::AskingUpstream {
                secs: starved.as_secs(),
            }
        } else {
            Activity::Idle
        };
        self.show(run, activity);
        Ok(())
    }

    /// Awaits `op`, an operation on one side; when it takes longer than [`STALL_NAMED_AFTER`],
    /// the status says so (the watch tick cannot run while the loop waits here).
    async fn named<T>(
        &self,
        run: &mut Run,
        side: Side,
        what: &'static str,
        op: impl std::future::Future<Output = T>,
    ) -> T {
        named(&self.status, run, side, what, op).await
    }

    fn show(&self, run: &mut Run, activity: Activity) {
        show(&self.status, run, activity);
    }

    /// Stops consuming, waits up to `grace` for outstanding confirms, acks what was confirmed.
    /// Everything else stays unacked and goes back to the upstream queue when the flow closes.
    async fn drain(
        &mut self,
        run: &mut Run,
        grace: Duration,
        inlet: &mut Wire,
    ) -> Result<(), LinkError> {
        inlet.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        while !self.outlets.settled() {
            let next = inlet.alive_during(self.outlets.next());
            match tokio::time::timeout_at(deadline, next).await {
                Ok(Ok(ev)) => self.on_outlet(run, ev)?,
                Ok(Err(e)) => return Err(self.inlet_error(&e)),
                Err(_) => {
                    tracing::warn!(
                        unconfirmed = run.tracker.unconfirmed(),
                        "shutdown grace over; unconfirmed messages stay upstream"
                    );
                    break;
                }
            }
        }
        self.send_acks(run, inlet).await?;
        tracing::info!(requeued = run.tracker.outstanding(), "flow drained");
        Ok(())
    }

    /// Reads the queue depth (a passive declare). It doubles as a probe of the upstream: a
    /// request unanswered for [`REQUEST_DEADLINE`] ends the attempt, heartbeats or not.
    async fn refresh_depth(&self, run: &mut Run, inlet: &mut Wire) -> Result<(), LinkError> {
        inlet
            .alive_during(self.read_depth(run))
            .await
            .map_err(|e| self.inlet_error(&e))?
    }

    async fn read_depth(&self, run: &mut Run) -> Result<(), LinkError> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let queue = self.spec.queue_name();
        let declare =
            self.depth_channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default());
        let name = &self.spec.upstream.name;
        let answer = tokio::time::timeout(
            REQUEST_DEADLINE,
            while_open(
                Side::Upstream,
                name,
                &self.up_status,
                "reading the queue depth",
                declare,
            ),
        );
        let answer = self
            .named(run, Side::Upstream, "reading the queue depth", answer)
            .await
            .map_err(|_| LinkError::Silent {
                side: Side::Upstream,
                cluster: name.clone(),
                what: format!(
                    "a queue.declare of \"{queue}\" unanswered for {}s",
                    REQUEST_DEADLINE.as_secs()
                ),
            })?;
        // A lost connection is the event stream's to report; here it only ends the wait.
        if let Ok(Ok(q)) = answer {
            self.status
                .counters
                .queue_depth
                .store(u64::from(q.message_count()), Relaxed);
            self.metrics.queue_depth.set(f64::from(q.message_count()));
            run.consumers = q.consumer_count();
            run.depth_at = Instant::now();
        }
        self.refresh_hold_depths().await;
        Ok(())
    }

    /// A routed flow reads its hold queues' depths too: they are on its upstream, while the
    /// flows that release them cannot look while their SET is down (they connect to it first).
    async fn refresh_hold_depths(&self) {
        let Downstream::Sets { hold_prefix, .. } = &self.spec.downstream else {
            return;
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        for o in &self.outlets.0 {
            let Some(stats) = &o.stats else { continue };
            let queue = hold_queue(hold_prefix, &o.name);
            let declare = self.depth_channel.queue_declare(
                queue.as_str().into(),
                passive,
                FieldTable::default(),
            );
            // Best effort, for the status: a slow answer is the depth request's to judge.
            if let Ok(Ok(q)) = tokio::time::timeout(LIVENESS_CHECK, declare).await {
                stats
                    .hold_depth
                    .store(u64::from(q.message_count()), Relaxed);
            }
        }
    }
}

/// The pause after another round of refused publishes: [`BACKOFF_MIN`], then doubling up to
/// [`BACKOFF_MAX`].
fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(BACKOFF_MIN, BACKOFF_MAX)
}

/// What a running flow is doing, for the status: a flow that shows `running` is moving
/// messages or says why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    Starting,
    Forwarding,
    /// Nothing to forward: no deliveries and nothing in flight.
    Idle,
    /// Another consumer holds the single-active-consumer queue (another setgate on this link).
    Standby,
    /// `delete_after` took its last message; waiting for the last confirms.
    Finishing,
    /// The downstream announced `connection.blocked` (memory or disk alarm).
    Blocked,
    BackingOff {
        reason: &'static str,
        pause: Duration,
    },
    /// Publishes sent, none confirmed for a while: the downstream is slow or gone (the watchdog
    /// and the heartbeat decide which).
    AwaitingConfirms {
        publishes: usize,
        secs: u64,
    },
    /// Messages ready upstream, nothing in flight, none delivered for a while.
    AwaitingDeliveries {
        ready: u64,
        secs: u64,
    },
    /// Nothing delivered for a while and no depth read since: the queue depth is being asked
    /// for, and the answer tells idle (empty queue) from a stall (messages ready, or no answer).
    AskingUpstream {
        secs: u64,
    },
    /// Inside an operation on one side that has not completed for a while.
    AwaitingAnswer {
        side: Side,
        what: &'static str,
    },
}

impl Activity {
    fn describe(self) -> String {
        match self {
            Activity::Starting => "starting".into(),
            Activity::Forwarding => "forwarding".into(),
            Activity::Idle => "idle: nothing to forward".into(),
            Activity::Finishing => {
                "finishing: delete_after took its last message; waiting for its confirms".into()
            }
            Activity::Standby => {
                "idle: another consumer holds the upstream queue (single active consumer)".into()
            }
            Activity::Blocked => {
                "waiting: the downstream blocked publishing (resource alarm)".into()
            }
            Activity::AwaitingConfirms { publishes, secs } => {
                format!("waiting: {publishes} publishes unconfirmed by the downstream for {secs}s")
            }
            Activity::AwaitingAnswer { side, what } => format!(
                "waiting: {what} on the {side} not done for over {}s",
                STALL_NAMED_AFTER.as_secs()
            ),
            Activity::AskingUpstream { secs } => format!(
                "waiting: nothing delivered for {secs}s; asking the upstream whether messages wait"
            ),
            Activity::AwaitingDeliveries { ready, secs } => {
                format!("waiting: {ready} messages ready upstream, none delivered for {secs}s")
            }
            Activity::BackingOff { reason, pause } => format!(
                "backing off {}ms: the downstream {} publishes; requeued upstream",
                pause.as_millis(),
                match reason {
                    "nack" => "nacked (a queue at its limit with reject-publish?)",
                    _ => "returned unroutable mandatory",
                }
            ),
        }
    }
}

/// Awaits `op`, an operation on the connection behind `status`, giving up (with an error that
/// names `what`) once that connection is no longer open.
///
/// The run loop hears of a lost connection from the event streams, but only between
/// operations. lapin settles an operation's future when its connection fails, yet a flow that
/// stalls here would stall silently, unacked messages and all, so the wait is bounded by the
/// connection's own state too: the edge must not depend on that guarantee holding in every race.
async fn while_open<T>(
    side: Side,
    cluster: &str,
    status: &ConnectionStatus,
    what: &str,
    op: impl std::future::Future<Output = T>,
) -> Result<T, LinkError> {
    tokio::pin!(op);
    loop {
        match tokio::time::timeout(LIVENESS_CHECK, &mut op).await {
            Ok(v) => return Ok(v),
            Err(_) if !status.connected() => {
                tracing::warn!(%side, cluster, what, "connection lost while an operation was in progress");
                return Err(LinkError::Broker {
                    what: what.into(),
                    side,
                    cluster: cluster.into(),
                    reason: "connection lost while waiting for it".into(),
                });
            }
            Err(_) => {}
        }
    }
}

/// The next event of a stream that may be absent (`select!` polls this branch only when present).
async fn next_event(events: &mut Option<BoxStream<'static, Event>>) -> Option<Event> {
    match events {
        Some(e) => e.next().await,
        None => std::future::pending().await,
    }
}

/// A connection event that ends the flow attempt.
fn lost(
    side: Side,
    cluster: &str,
    status: &ConnectionStatus,
    ev: Option<Event>,
) -> Result<(), LinkError> {
    match ev {
        Some(Event::Error(e)) if !status.connected() => {
            Err(LinkError::broker("connection", side, cluster, &e))
        }
        Some(_) => Ok(()),
        None => Err(LinkError::Broker {
            what: "connection".into(),
            side,
            cluster: cluster.into(),
            reason: "closed".into(),
        }),
    }
}

/// How many confirmed deliveries are acked upstream together: a quarter of the prefetch while
/// the window has room; a sixteenth while it is tight (half the prefetch or more unacked), so
/// that the source gets its window back soon, held back by at most 6% of it. Acking each round
/// of confirms in a tight window, as before, cost a write for setgate and an ack frame for the
/// source per round, a handful of messages each: on a drain of four flows at once
/// (`setgate-bench federation --exchanges 4`) that was 0.14 acks per message, and a sixteenth
/// took setgate's CPU per drained message from 7.1 and 7.7 us to 6.7 and 5.5, and the source
/// broker's from 35 to 27 us. Never less than one: a prefetch under 16 acks each delivery while
/// the window is tight, one under 8 always.
fn ack_batch(prefetch: u32, window_tight: bool) -> usize {
    let share = if window_tight { 16 } else { 4 };
    (prefetch as usize / share).max(1)
}

/// Whether a round of lazy reads (`wire::lazy`) holds back no more than an eighth of the
/// window at the flow's `rate` (deliveries a second; `u64::MAX` while unknown). Then deliveries
/// are read in rounds while the upstream is busy, and confirms are read in rounds even with the
/// window full; otherwise only confirms, and only while the window has room.
///
/// A flow draining a backlog keeps its window full (the source refills it as it is acked):
/// with a prefetch of 1,000 and thousands of messages a second, a round of [`LAZY_ROUND`]
/// delays a few dozen acks, and reading each confirm as it came was most of setgate's
/// wake-ups on a drain (`setgate-bench federation --exchanges 4`). With a small prefetch or a
/// fast flow, the window needs every confirm at once, and a delivery left unread while the
/// source waits for acks would hold the flow up to a round.
fn round_holds_little(rate: u64, prefetch: u32) -> bool {
    let held = rate.saturating_mul(LAZY_ROUND.as_millis() as u64) / 1000;
    held.saturating_mul(8) <= u64::from(prefetch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_holds_little_at_a_rate_known_and_low_for_the_prefetch() {
        // A rate not known yet.
        assert!(!round_holds_little(u64::MAX, 1000));
        // A prefetch of 1,000: a 4 ms round holds 80 deliveries at 20k/s (a twelfth), 160 at
        // 40k/s (a sixth).
        assert!(round_holds_little(20_000, 1000));
        assert!(!round_holds_little(40_000, 1000));
        // A prefetch of 100 allows rounds at 2k/s, not at 5k/s.
        assert!(round_holds_little(2_000, 100));
        assert!(!round_holds_little(5_000, 100));
        // Nothing delivered in the last tick: nothing a round could hold.
        assert!(round_holds_little(0, 1));
    }

    #[test]
    fn acks_gather_less_as_the_window_fills() {
        assert_eq!(ack_batch(1000, false), 250);
        assert_eq!(ack_batch(1000, true), 62);
        // A small prefetch acks each delivery, tight or not.
        assert_eq!(ack_batch(10, true), 1);
        assert_eq!(ack_batch(3, false), 1);
        assert_eq!(ack_batch(1, true), 1);
    }

    /// A status that was never connected reads as a lost connection.
    fn lost_status() -> ConnectionStatus {
        let status = ConnectionStatus::default();
        assert!(!status.connected());
        status
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_on_a_lost_connection_ends_within_a_liveness_check() {
        let start = tokio::time::Instant::now();
        let r = while_open(
            Side::Downstream,
            "dc2",
            &lost_status(),
            "publishing",
            std::future::pending::<()>(),
        )
        .await;
        let err = r.expect_err("a pending operation on a lost connection must end");
        assert_eq!(start.elapsed(), LIVENESS_CHECK);
        let text = err.to_string();
        assert!(
            text.contains("publishing") && text.contains("downstream dc2"),
            "{text}"
        );
    }

    #[test]
    fn refusals_back_off_doubling_up_to_the_maximum() {
        let mut pause = Duration::ZERO;
        let mut pauses = Vec::new();
        for _ in 0..8 {
            pause = next_backoff(pause);
            pauses.push(pause.as_millis());
        }
        assert_eq!(pauses, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
    }

    #[test]
    fn the_activity_says_why_a_running_flow_moves_nothing() {
        let pause = Duration::from_millis(500);
        let nack = Activity::BackingOff {
            reason: "nack",
            pause,
        };
        assert_eq!(
            nack.describe(),
            "backing off 500ms: the downstream nacked (a queue at its limit with reject-publish?) publishes; requeued upstream"
        );
        assert!(Activity::Standby
            .describe()
            .contains("single active consumer"));
        assert!(Activity::Blocked.describe().contains("resource alarm"));
        let stuck = Activity::AwaitingConfirms {
            publishes: 120,
            secs: 3,
        };
        assert_eq!(
            stuck.describe(),
            "waiting: 120 publishes unconfirmed by the downstream for 3s"
        );
        assert!(Activity::AskingUpstream { secs: 1 }
            .describe()
            .starts_with("waiting: nothing delivered for 1s"));
        assert!(Activity::AwaitingDeliveries { ready: 5, secs: 2 }
            .describe()
            .starts_with("waiting: 5 messages ready upstream"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_operation_is_returned_whatever_the_status() {
        let slow = async {
            tokio::time::sleep(LIVENESS_CHECK / 2).await;
            7
        };
        let r = while_open(Side::Upstream, "dc1", &lost_status(), "acknowledging", slow).await;
        assert_eq!(r.ok(), Some(7));
    }
}
