//! The hot loop of a flow: take upstream deliveries, republish them downstream, acknowledge
//! upstream according to `ack_mode`.
//!
//! Publishing never waits for a confirm: up to `prefetch_count` publishes are in flight. Ready
//! deliveries are republished as one batch (one wake-up of lapin's I/O thread), confirms are
//! taken in publish order, and the [`AckTracker`] turns the confirmed prefix into `multiple`
//! acks, sent every quarter of the prefetch under load and at once when nothing is in flight.
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
//! [`REQUEST_DEADLINE`] end the attempt with [`LinkError::Silent`]. What the flow is doing
//! (forwarding, idle and why, backing off, blocked) is kept in its status.

use crate::config::AckMode;
use crate::error::{LinkError, Side};
use crate::hops::{outgoing_properties, with_received_from, HopPolicy, Origin, Verdict};
use crate::metrics::FlowMetrics;
use crate::plan::FlowSpec;
use crate::status::FlowStatus;
use crate::stop::stopped;
use crate::tracker::{AckTracker, Outcome, Seq, UpstreamAck};
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation, ConnectionStatus, Consumer, Event, PublisherConfirm};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the upstream queue depth is refreshed.
const DEPTH_INTERVAL: Duration = Duration::from_secs(5);
/// Most deliveries republished in one go.
const BATCH: usize = 256;
/// First pause after the downstream refused a publish; doubled while refusals go on.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest pause between rounds of refused publishes.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A publish unconfirmed this long means the downstream stopped answering.
pub(crate) const CONFIRM_DEADLINE: Duration = Duration::from_secs(15);
/// How long the upstream may take to answer the periodic queue-depth request.
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How often the watchdog and the activity shown in the status are updated.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// A running flow that has moved nothing for this long while work waits says so in its
/// activity (`waiting: ...`): a link that reports `running` is moving messages or names why not.
pub(crate) const STALL_NAMED_AFTER: Duration = Duration::from_secs(1);
/// How often an operation in progress checks that its connection is still open.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// A publish's confirm with its sequence number and publish time.
type Confirmed = (Seq, Instant, lapin::Result<Confirmation>);

/// Publishes awaiting their confirm, oldest first. Only the oldest is awaited: the tracker acks
/// nothing past an unconfirmed publish anyway, and the broker confirms in order in practice,
/// so this costs no latency and saves a task and an allocation per message.
#[derive(Default)]
struct Pending(VecDeque<(Seq, Instant, PublisherConfirm)>);

impl Pending {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn push(&mut self, seq: Seq, start: Instant, confirm: PublisherConfirm) {
        self.0.push_back((seq, start, confirm));
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// When the oldest publish still waiting for its confirm went out.
    fn oldest(&self) -> Option<Instant> {
        self.0.front().map(|p| p.1)
    }

    /// The oldest publish's confirm. Cancel-safe: it is removed only once resolved.
    async fn next(&mut self) -> Option<Confirmed> {
        let front = self.0.front_mut()?;
        let result = (&mut front.2).await;
        let (seq, start, _) = self.0.pop_front()?;
        Some((seq, start, result))
    }
}

/// A connected, set-up flow.
pub(crate) struct Forwarder {
    pub spec: Arc<FlowSpec>,
    pub status: Arc<FlowStatus>,
    pub metrics: FlowMetrics,
    /// A spare upstream channel for the periodic passive declare of the queue.
    pub depth_channel: Channel,
    pub up: Channel,
    pub up_status: ConnectionStatus,
    pub down: Channel,
    pub down_status: ConnectionStatus,
    pub consumer: Consumer,
    pub origin: Origin,
    pub policy: HopPolicy,
}

/// The connection events of both sides (kept apart from [`Forwarder`], which must be `Sync`).
///
/// lapin reports channel errors (a refused declare, say) on the same stream as connection
/// errors; only an error that left the connection unusable ends the attempt.
pub(crate) struct Events {
    pub up: BoxStream<'static, Event>,
    pub down: BoxStream<'static, Event>,
}

/// Per-run state of the loop.
struct Run {
    exchange: ShortString,
    tracker: AckTracker,
    confirms: Pending,
    /// The downstream returned (mandatory) or nacked a publish since the last acks went out.
    returned: bool,
    nacked: bool,
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
}

impl Forwarder {
    /// Forwards until an error (the flow reconnects) or a stop request (drains, then `Ok`).
    pub async fn run(
        mut self,
        events: Events,
        stop: &mut watch::Receiver<Option<Duration>>,
    ) -> Result<(), LinkError> {
        let Events {
            up: mut up_events,
            down: mut down_events,
        } = events;
        let mut run = Run {
            exchange: self.spec.exchange.as_str().into(),
            tracker: AckTracker::default(),
            confirms: Pending::default(),
            returned: false,
            nacked: false,
            backoff: Duration::ZERO,
            paused_until: None,
            last_delivery: Instant::now(),
            depth_at: Instant::now(),
            consumers: 1,
            activity: Activity::Starting,
        };
        let mut depth_tick = tokio::time::interval(DEPTH_INTERVAL);
        depth_tick.tick().await; // the first tick is immediate; the queue was just declared
        let mut watch_tick = tokio::time::interval(WATCH_INTERVAL);
        let mut batch: Vec<Delivery> = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                biased;
                _ = stopped(stop) => {
                    let grace = stop.borrow().unwrap_or_default();
                    return self.drain(&mut run, grace).await;
                }
                ev = up_events.next() => lost(Side::Upstream, &self.spec.upstream.name, &self.up_status, ev)?,
                ev = down_events.next() => lost(Side::Downstream, &self.spec.downstream.name, &self.down_status, ev)?,
                Some(c) = run.confirms.next(), if !run.confirms.is_empty() => self.on_confirm(&mut run, c)?,
                _ = tokio::time::sleep_until(run.paused_until.unwrap_or_else(tokio::time::Instant::now)),
                    if run.paused_until.is_some() => run.paused_until = None,
                d = self.consumer.next(), if run.paused_until.is_none() => {
                    run.last_delivery = Instant::now();
                    batch.push(self.delivery(d)?);
                    // Take what else is already here: one wake-up of the I/O thread per batch.
                    while batch.len() < BATCH {
                        match self.consumer.next().now_or_never() {
                            Some(d) => batch.push(self.delivery(d)?),
                            None => break,
                        }
                    }
                    self.forward(&mut run, &mut batch).await?;
                    // New deliveries are no progress while older publishes wait for their
                    // confirms (a downstream that stopped reading): keep naming that wait.
                    if run.confirms.oldest().is_none_or(|o| o.elapsed() < STALL_NAMED_AFTER) {
                        self.show(&mut run, Activity::Forwarding);
                    }
                }
                _ = depth_tick.tick() => self.refresh_depth(&mut run).await?,
                _ = watch_tick.tick() => {
                    self.watch(&mut run)?;
                    if let Activity::AskingUpstream { .. } = run.activity {
                        self.refresh_depth(&mut run).await?;
                        depth_tick.reset();
                        self.watch(&mut run)?;
                    }
                }
            }
            while let Some(Some(c)) = run.confirms.next().now_or_never() {
                self.on_confirm(&mut run, c)?;
            }
            self.maybe_send_acks(&mut run).await?;
        }
    }

    fn delivery(&self, d: Option<lapin::Result<Delivery>>) -> Result<Delivery, LinkError> {
        match d {
            Some(Ok(d)) => Ok(d),
            Some(Err(e)) => Err(LinkError::broker(
                "consuming",
                Side::Upstream,
                &self.spec.upstream.name,
                &e,
            )),
            None => Err(LinkError::ConsumerCancelled {
                cluster: self.spec.upstream.name.clone(),
                queue: self.spec.queue_name(),
            }),
        }
    }

    /// Checks hops and republishes a batch of deliveries. All publishes of the batch are queued
    /// before any is awaited, in delivery order (lapin queues a publish's frames and assigns its
    /// confirm sequence number when the future is first polled, which `join_all` does in order).
    async fn forward(&self, run: &mut Run, batch: &mut Vec<Delivery>) -> Result<(), LinkError> {
        let counters = &self.status.counters;
        let mode = self.spec.upstream.ack_mode;
        let options = BasicPublishOptions {
            mandatory: self.spec.mandatory,
            immediate: false,
        };
        let mut publishes = Vec::with_capacity(batch.len());
        let mut seqs = Vec::with_capacity(batch.len());
        for d in batch.iter() {
            if d.redelivered {
                counters.redelivered.fetch_add(1, Relaxed);
                self.metrics.redelivered.increment(1);
            }
            let seq = (mode != AckMode::NoAck).then(|| run.tracker.push(d.delivery_tag));
            let verdict = self.policy.verdict(d.properties.headers().as_ref());
            if verdict != Verdict::Forward {
                counters.dropped.fetch_add(1, Relaxed);
                match verdict {
                    Verdict::MaxHops => self.metrics.dropped_max_hops.increment(1),
                    _ => self.metrics.dropped_cycle.increment(1),
                }
                tracing::trace!(reason = verdict.reason(), "message not forwarded");
                if let Some(seq) = seq {
                    run.tracker.resolve(seq, Outcome::Done);
                }
                continue;
            }
            let headers =
                with_received_from(d.properties.headers().as_ref(), &self.origin, d.redelivered);
            let props =
                outgoing_properties(&d.properties, headers, self.spec.upstream.trust_user_id);
            seqs.push(seq);
            publishes.push(self.down.basic_publish(
                run.exchange.clone(),
                d.routing_key.clone(),
                options,
                &d.data,
                props,
            ));
        }
        let start = Instant::now();
        let n = publishes.len();
        let results = {
            let sent = while_open(
                Side::Downstream,
                &self.spec.downstream.name,
                &self.down_status,
                "publishing",
                futures_util::future::join_all(publishes),
            );
            tokio::pin!(sent);
            // A downstream whose socket stays open but which stops reading (no reset, no heartbeat
            // missed yet) would hold the loop here, and with it the watchdog: bound the wait too.
            // Only a resource alarm the broker announced (connection.blocked) is waited out.
            let bounded = async {
                loop {
                    match tokio::time::timeout(CONFIRM_DEADLINE, &mut sent).await {
                        Ok(r) => break r,
                        Err(_) if self.down_status.blocked() => continue,
                        Err(_) => {
                            return Err(LinkError::Silent {
                                side: Side::Downstream,
                                cluster: self.spec.downstream.name.clone(),
                                what: format!(
                                    "publishing {n} messages did not complete in {}s",
                                    CONFIRM_DEADLINE.as_secs()
                                ),
                            })
                        }
                    }
                }
            };
            self.named(run, Side::Downstream, "publishing", bounded)
                .await?
        };
        batch.clear();
        for (seq, result) in seqs.into_iter().zip(results) {
            let confirm = result.map_err(|e| {
                LinkError::broker(
                    format!("publishing to exchange \"{}\"", self.spec.exchange),
                    Side::Downstream,
                    &self.spec.downstream.name,
                    &e,
                )
            })?;
            match (mode, seq) {
                (AckMode::OnConfirm, Some(seq)) => run.confirms.push(seq, start, confirm),
                (_, seq) => {
                    drop(confirm);
                    if let Some(seq) = seq {
                        run.tracker.resolve(seq, Outcome::Done);
                    }
                    counters.forwarded.fetch_add(1, Relaxed);
                    self.metrics.forwarded.increment(1);
                }
            }
        }
        Ok(())
    }

    fn on_confirm(&self, run: &mut Run, (seq, start, result): Confirmed) -> Result<(), LinkError> {
        let counters = &self.status.counters;
        let outcome = match result {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {
                self.metrics
                    .confirm_latency
                    .record(start.elapsed().as_secs_f64());
                counters.forwarded.fetch_add(1, Relaxed);
                self.metrics.forwarded.increment(1);
                run.backoff = Duration::ZERO;
                Outcome::Done
            }
            Ok(Confirmation::Ack(Some(_))) => {
                counters.rejected.fetch_add(1, Relaxed);
                self.metrics.returned.increment(1);
                run.returned = true;
                Outcome::Rejected
            }
            Ok(Confirmation::Nack(_)) => {
                counters.rejected.fetch_add(1, Relaxed);
                self.metrics.nacked.increment(1);
                run.nacked = true;
                Outcome::Rejected
            }
            Err(e) => {
                return Err(LinkError::broker(
                    "waiting for a publish confirm",
                    Side::Downstream,
                    &self.spec.downstream.name,
                    &e,
                ))
            }
        };
        run.tracker.resolve(seq, outcome);
        Ok(())
    }

    /// Acks in batches of a quarter of the prefetch while publishes are in flight (fewer ack
    /// frames for the upstream's channel and queue), and everything ready once none is.
    async fn maybe_send_acks(&self, run: &mut Run) -> Result<(), LinkError> {
        let batch = (self.spec.upstream.prefetch_count as usize / 4).max(1);
        if run.tracker.ready() >= batch || run.confirms.is_empty() || run.returned || run.nacked {
            self.send_acks(run).await?;
        }
        Ok(())
    }

    async fn send_acks(&self, run: &mut Run) -> Result<(), LinkError> {
        for ack in run.tracker.take_acks() {
            let sent = async {
                match ack {
                    UpstreamAck::Ack { tag, multiple } => {
                        self.up.basic_ack(tag, BasicAckOptions { multiple }).await
                    }
                    UpstreamAck::Requeue { tag } => {
                        let requeue = BasicNackOptions {
                            multiple: false,
                            requeue: true,
                        };
                        self.up.basic_nack(tag, requeue).await
                    }
                }
            };
            let name = &self.spec.upstream.name;
            let acked = while_open(Side::Upstream, name, &self.up_status, "acknowledging", sent);
            let acked = tokio::time::timeout(REQUEST_DEADLINE, acked);
            let r = self
                .named(run, Side::Upstream, "acknowledging", acked)
                .await
                .map_err(|_| LinkError::Silent {
                    side: Side::Upstream,
                    cluster: name.clone(),
                    what: format!(
                        "sending acknowledgements did not complete in {}s",
                        REQUEST_DEADLINE.as_secs()
                    ),
                })??;
            r.map_err(|e| {
                LinkError::broker(
                    "acknowledging deliveries",
                    Side::Upstream,
                    &self.spec.upstream.name,
                    &e,
                )
            })?;
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

    /// Once a second: a downstream that stopped confirming ends the attempt, and the status
    /// says what the flow is doing.
    fn watch(&self, run: &mut Run) -> Result<(), LinkError> {
        let blocked = self.down_status.blocked();
        if let Some(oldest) = run.confirms.oldest() {
            let waited = oldest.elapsed();
            if waited >= CONFIRM_DEADLINE && !blocked {
                return Err(LinkError::Silent {
                    side: Side::Downstream,
                    cluster: self.spec.downstream.name.clone(),
                    what: format!(
                        "{} publishes unconfirmed, the oldest for {}s",
                        run.confirms.len(),
                        waited.as_secs()
                    ),
                });
            }
        }
        // Messages wait upstream, this is the queue's only consumer, nothing is in flight, and
        // yet nothing was delivered: the upstream stopped delivering.
        let ready = self.status.counters.queue_depth.load(Relaxed);
        let starved = run.last_delivery.elapsed();
        if run.paused_until.is_none()
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
        let activity = if run.paused_until.is_some() {
            run.activity
        } else if blocked {
            Activity::Blocked
        } else if let Some(waited) = run
            .confirms
            .oldest()
            .map(|o| o.elapsed())
            .filter(|w| *w >= STALL_NAMED_AFTER)
        {
            Activity::AwaitingConfirms {
                publishes: run.confirms.len(),
                secs: waited.as_secs(),
            }
        } else if ready > 0
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
        } else if !run.confirms.is_empty() || run.last_delivery.elapsed() < 2 * WATCH_INTERVAL {
            Activity::Forwarding
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
        tokio::pin!(op);
        if let Ok(v) = tokio::time::timeout(STALL_NAMED_AFTER, &mut op).await {
            return v;
        }
        self.show(run, Activity::AwaitingAnswer { side, what });
        op.await
    }

    fn show(&self, run: &mut Run, activity: Activity) {
        if run.activity != activity {
            run.activity = activity;
            self.status.set_activity(activity.describe());
        }
    }

    /// Stops consuming, waits up to `grace` for outstanding confirms, acks what was confirmed.
    /// Everything else stays unacked and goes back to the upstream queue when the flow closes.
    async fn drain(&mut self, run: &mut Run, grace: Duration) -> Result<(), LinkError> {
        let tag = self.consumer.tag();
        let _ = tokio::time::timeout(
            grace,
            self.up.basic_cancel(tag, BasicCancelOptions::default()),
        )
        .await;
        let deadline = tokio::time::Instant::now() + grace;
        while !run.confirms.is_empty() {
            match tokio::time::timeout_at(deadline, run.confirms.next()).await {
                Ok(Some(c)) => self.on_confirm(run, c)?,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        unconfirmed = run.tracker.unconfirmed(),
                        "shutdown grace over; unconfirmed messages stay upstream"
                    );
                    break;
                }
            }
        }
        self.send_acks(run).await?;
        tracing::info!(requeued = run.tracker.outstanding(), "flow drained");
        Ok(())
    }

    /// Reads the queue depth (a passive declare). It doubles as a probe of the upstream: a
    /// request unanswered for [`REQUEST_DEADLINE`] ends the attempt, heartbeats or not.
    async fn refresh_depth(&self, run: &mut Run) -> Result<(), LinkError> {
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
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
