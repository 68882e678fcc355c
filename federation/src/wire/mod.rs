//! An AMQP connection of the flow's own: the hot path from the source and to a destination.
//!
//! Through lapin every publish and every delivery was handed between the connection's I/O
//! thread and the flow's task, and every confirm resolved a promise: at thousands of messages a
//! second those hand-offs (futex wake-ups, context switches, a promise and its allocations per
//! message) were most of setgate's CPU per forwarded message. A `Wire` belongs to the flow's
//! task: a publish appends its frames to a buffer (a long body goes out from where it was read,
//! `outgoing`), one write sends a batch; confirms and deliveries are read on the same task, a
//! whole read buffer at a time (a delivery's method in place, its properties and body kept as
//! slices of the read, not copied: `reads`).
//!
//! It speaks what forwarding needs and nothing else: the connection handshake (PLAIN, or
//! EXTERNAL when the URI asks), one channel (in confirm mode for `on-confirm`); for publishing
//! Basic.Publish, confirms, Basic.Return, Connection.Blocked/Unblocked; for consuming
//! Basic.Qos, Basic.Consume, deliveries, acks and requeues, Basic.Cancel either way; heartbeats
//! both ways and Close from either side. Declares and checks stay on lapin.
//!
//! `handshake` opens a wire (an `impl Wire` of its own), `encode` writes publishes, `delivery`
//! assembles what the consumer is delivered, `error` says how a wire failed, `reads` and
//! `outgoing` hold what is read and what is to be written; this file is the connection:
//! reading, writing, upkeep, closing.

use crate::connect::Io;
use amq_protocol::frame::{gen_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::FieldTable;
use bytes::Bytes;
use setgate_amqp::frame::{parse, FRAME_END};
use setgate_amqp::names::method_name;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

mod delivery;
mod encode;
mod error;
mod handshake;
mod lazy;
mod outgoing;
mod reads;

pub(crate) use delivery::Delivery;
use delivery::Incoming;
pub(crate) use encode::fingerprint;
use encode::{begin_frame, encode_publish, end_frame, frame_len, CHANNEL, FRAME_OVERHEAD};
pub(crate) use error::WireError;
use lazy::LazyReads;
pub(crate) use lazy::ROUND as LAZY_ROUND;
use outgoing::Outgoing;
use reads::Reads;

/// The frame_max a wire asks for when neither the broker nor the URI sets one (RabbitMQ's
/// default); also the limit on frames read during the handshake.
const FRAME_MAX: u32 = 128 * 1024;

/// What the broker said about a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Confirmed.
    Ack,
    /// Refused (a queue at its length limit with `reject-publish`, say).
    Nack,
    /// Returned as unroutable (`mandatory`), then confirmed.
    Returned,
}

/// What the broker said, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Said {
    /// A confirm (`Ack` or `Nack`) of the publish `tag`, and with `multiple` of every one before.
    Confirm {
        tag: u64,
        multiple: bool,
        settled: Settled,
    },
    /// A publish was returned as unroutable; its confirm follows. A return names no delivery
    /// tag, and which confirm it precedes cannot be told from the order of frames (RabbitMQ may
    /// confirm publishes of other queues in between, with `multiple`), so it is known by its
    /// content: the [`fingerprint`] of its exchange, routing key, properties and body, the same
    /// as [`Wire::publish`] gave it.
    Returned { fingerprint: u64 },
}

/// A returned message being read: its content is needed for its fingerprint.
struct Returning {
    exchange: String,
    routing_key: String,
    /// The properties, as the broker sent them.
    properties: Option<Vec<u8>>,
    body: Vec<u8>,
    left: u64,
}

/// An open publishing connection with one channel.
pub(crate) struct Wire {
    io: Box<dyn Io>,
    rd: Reads,
    /// What is queued to write.
    wr: Outgoing,
    /// Largest frame either side sends, and body chunk per frame.
    frame_max: usize,
    chunk: usize,
    heartbeat: Option<Duration>,
    last_read: Instant,
    last_write: Instant,
    tick: Option<Pin<Box<Sleep>>>,
    /// A publishing wire over TCP reads its confirms in rounds ([`lazy`]).
    lazy: Option<LazyReads>,
    blocked: bool,
    /// When the broker last lifted a resource alarm (Connection.Unblocked): publishes it could
    /// not read while blocked are waited for from then on.
    unblocked_at: Option<std::time::Instant>,
    confirm: bool,
    /// The tag the next publish gets (confirm mode).
    next_tag: u64,
    /// The highest tag a confirm (ack or nack) named.
    confirmed_to: u64,
    /// Deliveries read since reading last had to wait (see [`Wire::next_round`]).
    delivered: usize,
    returning: Option<Returning>,
    said: VecDeque<Said>,
    /// The consumer's tag while it consumes.
    consumer_tag: Option<String>,
    /// A delivery whose content is being read.
    incoming: Option<Incoming>,
    deliveries: VecDeque<Delivery>,
    /// The broker answered the close [`Wire::close`] sent last.
    closed: bool,
    failed: Option<WireError>,
}

impl Wire {
    fn new(io: Box<dyn Io>, confirm: bool) -> Wire {
        Wire {
            io,
            rd: Reads::new(),
            wr: Outgoing::new(),
            frame_max: FRAME_MAX as usize,
            chunk: FRAME_MAX as usize - FRAME_OVERHEAD,
            heartbeat: None,
            last_read: Instant::now(),
            last_write: Instant::now(),
            tick: None,
            lazy: None,
            blocked: false,
            unblocked_at: None,
            confirm,
            next_tag: 1,
            confirmed_to: 0,
            delivered: 0,
            returning: None,
            said: VecDeque::new(),
            consumer_tag: None,
            incoming: None,
            deliveries: VecDeque::new(),
            closed: false,
            failed: None,
        }
    }

    /// Whether what comes may be read in rounds ([`lazy`]); a round on ends now when not. A
    /// flow whose window of unacked deliveries is filling up may need each confirm as it
    /// comes, to ack the source and be sent more, and each delivery as it comes when the
    /// source cannot send more (see `forward::round_holds_little`).
    pub fn rounds(&mut self, allowed: bool) {
        if let Some(l) = &mut self.lazy {
            l.allow(allowed);
        }
    }

    /// A wire over `io` as a handshake leaves it, sending and expecting heartbeats `every`
    /// (tests of what drives wires).
    #[cfg(test)]
    pub fn for_test(io: Box<dyn Io>, confirm: bool, every: Option<Duration>) -> Wire {
        let mut w = Wire::new(io, confirm);
        w.heartbeat = every;
        w.tick = every.map(|e| Box::pin(tokio::time::sleep(e / 2)));
        w
    }

    /// Publishes are confirmed (confirm mode).
    pub fn confirms(&self) -> bool {
        self.confirm
    }

    /// The broker announced a resource alarm (Connection.Blocked) and has not lifted it.
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    /// When the broker last lifted a resource alarm on this connection.
    pub fn unblocked_at(&self) -> Option<std::time::Instant> {
        self.unblocked_at
    }

    /// Queues a publish with its properties as encoded (flags and fields, see
    /// [`crate::raw_props`]); returns its delivery tag (meaningful in confirm mode) and, with
    /// `mandatory`, its [`fingerprint`] (0 without), which a return of it carries too: the
    /// broker sends back the properties as they were published. Nothing is written until
    /// [`Wire::poll_flush`].
    pub fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        properties: &[u8],
        body: &Bytes,
    ) -> (u64, u64) {
        encode_publish(
            &mut self.wr,
            self.chunk,
            (exchange, routing_key, mandatory),
            properties,
            body,
        );
        let fp = if mandatory {
            fingerprint(exchange, routing_key, properties, body)
        } else {
            0
        };
        (self.queued(), fp)
    }

    /// A publish was queued: a round of lazy confirm reads begins if none is on; returns the
    /// publish's delivery tag.
    fn queued(&mut self) -> u64 {
        if let Some(l) = self.lazy.as_mut().filter(|_| self.confirm) {
            l.begin();
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        tag
    }

    /// A confirm came: kept for [`Wire::poll_said`].
    fn confirmed(&mut self, tag: u64, multiple: bool, settled: Settled) {
        self.confirmed_to = self.confirmed_to.max(tag);
        self.said.push_back(Said::Confirm {
            tag,
            multiple,
            settled,
        });
    }

    /// Everything read, nothing more to read now: the next round of lazy reads begins at once
    /// ([`LazyReads::resume`]) while publishes still wait for their confirms, or, consuming,
    /// while the upstream is busy (this turn of reading brought [`lazy::BUSY`] deliveries or
    /// more). Without this, confirms landing between a round's end and the next publish woke
    /// the flow one by one, and a flow draining a backlog publishes and is confirmed without
    /// pause.
    fn next_round(&mut self, cx: &mut Context<'_>) {
        let delivered = std::mem::take(&mut self.delivered);
        let Some(l) = &mut self.lazy else { return };
        let go_on = if self.confirm {
            self.next_tag - 1 > self.confirmed_to
        } else {
            self.consumer_tag.is_some() && delivered >= lazy::BUSY
        };
        if go_on {
            l.resume(cx);
        }
    }

    /// Writes what is queued. Ready when all of it is written.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        if let Some(e) = &self.failed {
            return Poll::Ready(Err(e.clone()));
        }
        while !self.wr.is_empty() {
            let io = Pin::new(&mut self.io);
            let wrote = if self.wr.spliced() {
                io.poll_write_vectored(cx, &self.wr.slices())
            } else {
                io.poll_write(cx, &self.wr.buf[self.wr.written()..])
            };
            match wrote {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(self.fail(WireError::Lost("closed".into()))))
                }
                Poll::Ready(Ok(n)) => self.wr.advance(n),
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(self.fail(WireError::Lost(e.to_string()))))
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.wr.reset_if_written() {
            self.last_write = Instant::now();
        }
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.fail(WireError::Lost(e.to_string())))),
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes what is queued.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// The next thing the broker said about publishes. Meanwhile reads what the broker sends,
    /// answers its Close, keeps writing what is queued, and sends heartbeats when nothing else
    /// went out.
    pub fn poll_said(&mut self, cx: &mut Context<'_>) -> Poll<Result<Said, WireError>> {
        self.poll_next(cx, |w| w.said.pop_front())
    }

    /// The next message delivered to the wire's consumer (see [`Wire::consume`]), with the
    /// same upkeep as [`Wire::poll_said`].
    pub fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Result<Delivery, WireError>> {
        self.poll_next(cx, |w| w.deliveries.pop_front())
    }

    /// Only the upkeep: reads (deliveries are kept for [`Wire::poll_delivery`]), writes,
    /// heartbeats. Ready only with the error that ended the connection; a wire polled this way
    /// while its task waits for something else stays alive.
    pub fn poll_alive(&mut self, cx: &mut Context<'_>) -> Poll<WireError> {
        match self.poll_next(cx, |_| None::<()>) {
            Poll::Ready(Err(e)) => Poll::Ready(e),
            _ => Poll::Pending,
        }
    }

    /// Awaits `op` while keeping the wire alive ([`Wire::poll_alive`]): a peer must not take a
    /// long wait elsewhere for a dead client. Ends early with the wire's error if it fails.
    pub async fn alive_during<T>(&mut self, op: impl Future<Output = T>) -> Result<T, WireError> {
        tokio::pin!(op);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = op.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            self.poll_alive(cx).map(Err)
        })
        .await
    }

    /// Reads, answers and writes until `take` has something or the connection fails.
    fn poll_next<T>(
        &mut self,
        cx: &mut Context<'_>,
        take: impl Fn(&mut Wire) -> Option<T>,
    ) -> Poll<Result<T, WireError>> {
        if let Some(c) = take(self) {
            return Poll::Ready(Ok(c));
        }
        if let Some(e) = &self.failed {
            return Poll::Ready(Err(e.clone()));
        }
        if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
            return Poll::Ready(Err(e));
        }
        if let Err(e) = self.poll_heartbeat(cx) {
            return Poll::Ready(Err(e));
        }
        if let Some(l) = &mut self.lazy {
            l.poll_round(cx);
        }
        // Frames read already (by the heartbeat's check) are handled before reading more.
        let mut read = !self.rd.buf.is_empty();
        loop {
            if read {
                if let Err(e) = self.take_frames() {
                    // Best effort: the CloseOk answering a Close, if that is what ended it.
                    let _ = self.poll_flush(cx);
                    return Poll::Ready(Err(self.fail(e)));
                }
                // A Close answered, a heartbeat to send: written now.
                if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
                    return Poll::Ready(Err(e));
                }
                if let Some(e) = &self.failed {
                    return Poll::Ready(Err(e.clone()));
                }
                if let Some(c) = take(self) {
                    return Poll::Ready(Ok(c));
                }
            }
            match self.poll_read(cx) {
                Poll::Ready(Ok(())) => read = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.next_round(cx);
                    return Poll::Pending;
                }
            }
        }
    }

    /// Starts consuming `queue` on the wire's channel with `prefetch` unacknowledged
    /// deliveries at most (per consumer), acknowledging them by hand unless `no_ack`.
    /// Deliveries are read by [`Wire::poll_delivery`].
    pub async fn consume(
        &mut self,
        queue: &str,
        consumer_tag: &str,
        prefetch: u16,
        no_ack: bool,
    ) -> Result<(), String> {
        self.call(
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: prefetch,
                global: false,
            })),
            |m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::QosOk(_))),
        )
        .await?;
        self.call(
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue.into(),
                consumer_tag: consumer_tag.into(),
                no_local: false,
                no_ack,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
            |m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))),
        )
        .await?;
        self.consumer_tag = Some(consumer_tag.to_string());
        Ok(())
    }

    /// Queues an acknowledgement of delivery `tag` (with `multiple`, of every one before it).
    pub fn ack(&mut self, tag: u64, multiple: bool) {
        let at = begin_frame(&mut self.wr.buf, 1);
        self.wr.buf.extend_from_slice(&[0, 60, 0, 80]);
        self.wr.buf.extend_from_slice(&tag.to_be_bytes());
        self.wr.buf.push(u8::from(multiple));
        end_frame(&mut self.wr.buf, at);
    }

    /// Queues a rejection of delivery `tag` that puts it back in its queue.
    pub fn requeue(&mut self, tag: u64) {
        let at = begin_frame(&mut self.wr.buf, 1);
        self.wr.buf.extend_from_slice(&[0, 60, 0, 120]);
        self.wr.buf.extend_from_slice(&tag.to_be_bytes());
        self.wr.buf.push(0b10); // requeue, not multiple
        end_frame(&mut self.wr.buf, at);
    }

    /// Queues the cancel of the wire's consumer: nothing more is delivered once the broker
    /// reads it (what was already sent still arrives).
    pub fn cancel(&mut self) {
        if let Some(tag) = self.consumer_tag.take() {
            self.push(&AMQPFrame::Method(
                CHANNEL,
                AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: tag.as_str().into(),
                    nowait: false,
                })),
            ));
        }
    }

    /// Closes the connection politely, waiting at most `timeout` for the broker's answer.
    pub async fn close(mut self, timeout: Duration) {
        if self.failed.is_some() {
            return;
        }
        if let Some(l) = &mut self.lazy {
            l.eager();
        }
        // The channel first, everything the broker sends meanwhile read: it answers once it
        // has handled what came before on the channel (acks), and delivers nothing after. A
        // connection closed with deliveries unread is reset by the kernel, and a reset can
        // drop acks the broker had not read yet; and RabbitMQ may stop a channel, on a
        // connection close, before the acks queued for it are handled.
        let _ = tokio::time::timeout(timeout, async {
            self.push(&AMQPFrame::Method(
                CHANNEL,
                AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                    reply_code: 200,
                    reply_text: "setgate flow closing".into(),
                    class_id: 0,
                    method_id: 0,
                })),
            ));
            std::future::poll_fn(|cx| self.poll_next(cx, |w| w.closed.then_some(()))).await?;
            self.closed = false;
            self.push(&AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                    reply_code: 200,
                    reply_text: "setgate flow closing".into(),
                    class_id: 0,
                    method_id: 0,
                })),
            ));
            std::future::poll_fn(|cx| self.poll_next(cx, |w| w.closed.then_some(()))).await
        })
        .await;
    }

    fn fail(&mut self, e: WireError) -> WireError {
        self.failed = Some(e.clone());
        e
    }

    /// Sends a heartbeat when nothing was written for half the interval; fails when nothing was
    /// read for two.
    fn poll_heartbeat(&mut self, cx: &mut Context<'_>) -> Result<(), WireError> {
        let Some(every) = self.heartbeat else {
            return Ok(());
        };
        loop {
            let tick = self.tick.as_mut().expect("set with the heartbeat");
            if tick.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            let now = Instant::now();
            tick.as_mut().reset(now + every / 2);
            if now.duration_since(self.last_read) >= 2 * every {
                // Only a wire with nothing to read is silent: one its task did not poll for a
                // while (busy writing to another broker) has the broker's bytes waiting, taken
                // in here and handled with the rest ([`Wire::poll_next`]).
                match self.poll_read(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => return Err(self.fail(WireError::Silent)),
                }
            }
            if now.duration_since(self.last_write) >= every / 2 && self.wr.is_empty() {
                self.wr
                    .buf
                    .extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, FRAME_END]);
                if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
                    return Err(e);
                }
            }
        }
    }

    /// Reads more bytes into `rd`.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        self.rd.make_room();
        let len = self.rd.buf.len();
        let spare = self.rd.buf.spare_capacity_mut();
        let mut buf = ReadBuf::uninit(spare);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(
                        self.fail(WireError::Lost("the broker closed the connection".into()))
                    ));
                }
                // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
                unsafe { self.rd.buf.set_len(len + n) };
                self.last_read = Instant::now();
                if let Some(l) = &mut self.lazy {
                    l.read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.fail(WireError::Lost(e.to_string())))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Handles every whole frame read so far. They leave `rd` together, so that deliveries
    /// keep their properties and bodies as slices of them.
    fn take_frames(&mut self) -> Result<(), WireError> {
        let mut whole = 0;
        while let Some(len) = frame_len(&self.rd.buf[whole..]) {
            if len > self.frame_max + FRAME_OVERHEAD {
                return Err(WireError::Protocol(format!(
                    "a frame of {len} bytes, over the frame_max of {}",
                    self.frame_max
                )));
            }
            if self.rd.buf.len() < whole + len {
                break;
            }
            whole += len;
        }
        if whole == 0 {
            return Ok(());
        }
        let read = self.rd.take(whole);
        let mut pos = 0;
        while pos < whole {
            let len = frame_len(&read[pos..]).expect("whole frames");
            let frame = &read[pos..pos + len];
            let payload = pos + 7..pos + len - 1;
            pos += len;
            // Bodies are taken unparsed, and deliveries' methods read in place.
            if frame[0] == 3 {
                if let Some(i) = &mut self.incoming {
                    i.body(read.slice(payload))?;
                    self.delivered_if_complete();
                    continue;
                }
                match &mut self.returning {
                    Some(r) if r.properties.is_some() && r.left > 0 => {
                        let part = &read[payload];
                        r.body.extend_from_slice(part);
                        r.left = r.left.saturating_sub(part.len() as u64);
                        self.returned_if_complete();
                        continue;
                    }
                    _ => return Err(WireError::Protocol("a content body out of place".into())),
                }
            }
            if frame[0] == 2 {
                if let Some(i) = &mut self.incoming {
                    i.header(read.slice(payload))?;
                    self.delivered_if_complete();
                    continue;
                }
                // A return's properties, as bytes: the broker sends them back as they were
                // published, which is what its publish's fingerprint was taken over.
                match &mut self.returning {
                    Some(r) if r.properties.is_none() => {
                        let header = &read[payload];
                        let (Some(size), Some(properties)) = (header.get(4..12), header.get(12..))
                        else {
                            return Err(WireError::Protocol("a content header cut short".into()));
                        };
                        r.left = u64::from_be_bytes(size.try_into().expect("8 bytes"));
                        r.properties = Some(properties.to_vec());
                        self.returned_if_complete();
                        continue;
                    }
                    _ => return Err(WireError::Protocol("a content header out of place".into())),
                }
            }
            if frame[0] == 1 && frame.get(7..11) == Some(&[0, 60, 0, 60]) {
                let incoming = Incoming::begin(&frame[11..len - 1])?;
                if self.incoming.is_some() || self.returning.is_some() {
                    return Err(WireError::Protocol(
                        "a delivery inside another message".into(),
                    ));
                }
                self.incoming = Some(incoming);
                continue;
            }
            let frame = parse(frame).map_err(|e| WireError::Protocol(e.to_string()))?;
            self.on_frame(frame)?;
        }
        Ok(())
    }

    fn on_frame(&mut self, frame: AMQPFrame) -> Result<(), WireError> {
        let method = match frame {
            AMQPFrame::Heartbeat => return Ok(()),
            AMQPFrame::Method(_, m) => m,
            other => {
                return Err(WireError::Protocol(format!(
                    "unexpected {}",
                    setgate_amqp::frame::describe(&other)
                )))
            }
        };
        match method {
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                self.confirmed(a.delivery_tag, a.multiple, Settled::Ack)
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => {
                self.confirmed(n.delivery_tag, n.multiple, Settled::Nack)
            }
            AMQPClass::Basic(basic::AMQPMethod::Return(r)) => {
                self.returning = Some(Returning {
                    exchange: r.exchange.to_string(),
                    routing_key: r.routing_key.to_string(),
                    properties: None,
                    body: Vec::new(),
                    left: 0,
                });
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))
            | AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => self.closed = true,
            AMQPClass::Basic(basic::AMQPMethod::QosOk(_))
            | AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))
            | AMQPClass::Basic(basic::AMQPMethod::CancelOk(_)) => {}
            AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => {
                // The broker cancelled the consumer: its queue was deleted, or its node is
                // stopping.
                if !c.nowait {
                    self.push(&AMQPFrame::Method(
                        CHANNEL,
                        AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    ));
                }
                return Err(WireError::Cancelled);
            }
            AMQPClass::Connection(connection::AMQPMethod::Blocked(b)) => {
                tracing::warn!(reason = %b.reason, "destination blocked by a resource alarm");
                self.blocked = true;
            }
            AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)) => {
                self.blocked = false;
                self.unblocked_at = Some(std::time::Instant::now());
            }
            AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                self.push(&AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                ));
                return Err(WireError::Closed(c.reply_text.to_string()));
            }
            AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                self.push(&AMQPFrame::Method(
                    CHANNEL,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                ));
                return Err(WireError::Closed(c.reply_text.to_string()));
            }
            other => {
                return Err(WireError::Protocol(format!(
                    "unexpected {}",
                    method_name(&other)
                )))
            }
        }
        Ok(())
    }

    /// A delivery whose content is all read is handed out.
    fn delivered_if_complete(&mut self) {
        if self.incoming.as_ref().is_some_and(Incoming::complete) {
            let i = self.incoming.take().expect("checked");
            self.deliveries.push_back(i.into_delivery());
            self.delivered += 1;
        }
    }

    /// A returned message whose content is all read is said (in confirm mode).
    fn returned_if_complete(&mut self) {
        let complete = self
            .returning
            .as_ref()
            .is_some_and(|r| r.properties.is_some() && r.left == 0);
        if !complete {
            return;
        }
        let r = self.returning.take().expect("checked");
        if self.confirm {
            let props = r.properties.as_deref().unwrap_or_default();
            self.said.push_back(Said::Returned {
                fingerprint: fingerprint(&r.exchange, &r.routing_key, props, &r.body),
            });
        }
    }

    fn push(&mut self, frame: &AMQPFrame) {
        let buf = std::mem::take(&mut self.wr.buf);
        let ctx = gen_frame(frame)(WriteContext::from(buf)).expect("serialising into a Vec");
        self.wr.buf = ctx.into_inner().0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::parsing::parse_frame;
    use amq_protocol::frame::AMQPContentHeader;
    use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
    use amq_protocol::types::AMQPValue;
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frames(mut bytes: &[u8]) -> Vec<AMQPFrame> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (rest, f) = parse_frame(bytes).expect("a frame");
            out.push(f);
            bytes = rest;
        }
        out
    }

    fn method(m: basic::AMQPMethod) -> Vec<u8> {
        setgate_amqp::frame::encode(&AMQPFrame::Method(CHANNEL, AMQPClass::Basic(m)))
    }

    fn ack(tag: u64, multiple: bool) -> Vec<u8> {
        method(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple,
        }))
    }

    /// A return with its header and a body of `size` bytes in one frame (none when empty).
    fn returned(size: usize) -> Vec<u8> {
        let mut b = method(basic::AMQPMethod::Return(basic::Return {
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
            exchange: "x".into(),
            routing_key: "k".into(),
        }));
        b.extend(setgate_amqp::frame::encode(&AMQPFrame::Header(
            CHANNEL,
            AMQPContentHeader {
                class_id: 60,
                body_size: size as u64,
                properties: AMQPProperties::default(),
            },
        )));
        if size > 0 {
            b.extend(setgate_amqp::frame::encode(&AMQPFrame::Body(
                CHANNEL,
                vec![1; size],
            )));
        }
        b
    }

    /// A wire over an in-memory pipe; the other end plays the broker.
    fn wire() -> (Wire, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        (Wire::new(Box::new(ours), true), theirs)
    }

    async fn said(w: &mut Wire, n: usize) -> Vec<Said> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(std::future::poll_fn(|cx| w.poll_said(cx)).await.unwrap());
        }
        out
    }

    /// Properties as the flow publishes them: encoded.
    fn encoded(p: &AMQPProperties) -> Vec<u8> {
        gen_properties(p)(WriteContext::from(Vec::new()))
            .unwrap()
            .into_inner()
            .0
    }

    #[test]
    fn a_publish_is_the_method_the_header_and_the_body_in_chunks() {
        let mut wr = Outgoing::default();
        let props = AMQPProperties::default().with_delivery_mode(2);
        encode_publish(
            &mut wr,
            4,
            ("x", "rk", true),
            &encoded(&props),
            &Bytes::from_static(&[7; 10]),
        );
        let got = frames(&wr.joined());
        assert_eq!(got.len(), 5, "method, header, three body frames");
        assert_eq!(
            got[0],
            AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: "x".into(),
                    routing_key: "rk".into(),
                    mandatory: true,
                    immediate: false,
                }))
            )
        );
        assert_eq!(
            got[1],
            AMQPFrame::Header(
                1,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: 10,
                    properties: props,
                }
            )
        );
        assert_eq!(got[2], AMQPFrame::Body(1, vec![7; 4]));
        assert_eq!(got[4], AMQPFrame::Body(1, vec![7; 2]));
    }

    #[test]
    fn an_empty_body_has_no_body_frame() {
        let mut wr = Outgoing::default();
        let empty = Bytes::new();
        encode_publish(&mut wr, 4, ("", "q", false), &[0, 0], &empty);
        assert_eq!(frames(&wr.joined()).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wire_left_unpolled_reads_what_waits_before_it_calls_the_broker_silent() {
        let (mut w, mut broker) = wire();
        let every = Duration::from_secs(5);
        w.heartbeat = Some(every);
        w.tick = Some(Box::pin(tokio::time::sleep(every / 2)));
        let props = encoded(&AMQPProperties::default());
        w.publish("x", "k", false, &props, &Bytes::from_static(b"m"));
        w.flush().await.unwrap();
        // The broker confirms while the wire's task is busy elsewhere for longer than two
        // heartbeat intervals (writing a large message to another broker, say).
        broker.write_all(&ack(1, false)).await.unwrap();
        tokio::time::advance(3 * every).await;
        let confirm = Said::Confirm {
            tag: 1,
            multiple: false,
            settled: Settled::Ack,
        };
        assert_eq!(said(&mut w, 1).await, vec![confirm], "read, not a silence");
        // A broker that truly sends nothing is silent after two intervals.
        tokio::time::advance(3 * every).await;
        let e = std::future::poll_fn(|cx| w.poll_said(cx))
            .await
            .unwrap_err();
        assert_eq!(e, WireError::Silent);
    }

    #[tokio::test]
    async fn long_bodies_go_out_from_where_they_lie_between_their_frames() {
        let (mut w, mut broker) = wire();
        let props = AMQPProperties::default().with_delivery_mode(2);
        let long: Vec<u8> = (0..=255).cycle().take(100_000).collect();
        let bodies = [
            Bytes::from(long),
            Bytes::from_static(b"short"),
            Bytes::new(),
        ];
        for body in &bodies {
            w.publish("x", "k", false, &encoded(&props), body);
        }
        w.flush().await.unwrap();
        drop(w);
        let mut wrote = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut broker, &mut wrote)
            .await
            .unwrap();
        let got = frames(&wrote);
        assert_eq!(
            got.len(),
            3 + 3 + 2,
            "each: method, header, a body frame unless empty"
        );
        assert_eq!(got[2], AMQPFrame::Body(1, bodies[0].to_vec()));
        assert_eq!(got[5], AMQPFrame::Body(1, b"short".to_vec()));
        assert!(matches!(got[7], AMQPFrame::Header(1, ref h) if h.body_size == 0));
    }

    #[tokio::test]
    async fn a_returned_message_is_known_by_the_fingerprint_its_publish_had() {
        let (mut w, mut broker) = wire();
        let mut headers = FieldTable::default();
        headers.insert("x-user-id".into(), AMQPValue::LongString("u7".into()));
        let props = AMQPProperties::default()
            .with_delivery_mode(2)
            .with_message_id("42".into())
            .with_headers(headers);
        let body = b"for u7".to_vec();
        let (tag, fp) = w.publish(
            "x",
            "k1",
            true,
            &encoded(&props),
            &Bytes::from(body.clone()),
        );
        assert_eq!(tag, 1);
        // What RabbitMQ sends back: the return, the content as published, then the confirm.
        let mut bytes = method(basic::AMQPMethod::Return(basic::Return {
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
            exchange: "x".into(),
            routing_key: "k1".into(),
        }));
        bytes.extend(setgate_amqp::frame::encode(&AMQPFrame::Header(
            CHANNEL,
            AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: props.clone(),
            },
        )));
        // In two body frames, as a broker with a small frame_max would send it.
        for part in body.chunks(4) {
            bytes.extend(setgate_amqp::frame::encode(&AMQPFrame::Body(
                CHANNEL,
                part.to_vec(),
            )));
        }
        bytes.extend(ack(1, false));
        broker.write_all(&bytes).await.unwrap();
        assert_eq!(
            said(&mut w, 2).await,
            vec![
                Said::Returned { fingerprint: fp },
                Said::Confirm {
                    tag: 1,
                    multiple: false,
                    settled: Settled::Ack
                },
            ]
        );
        let other = w
            .publish(
                "x",
                "k1",
                true,
                &encoded(&props),
                &Bytes::from_static(b"for u8"),
            )
            .1;
        assert_ne!(other, fp, "another body, another fingerprint");
        assert_eq!(
            w.publish(
                "x",
                "k1",
                false,
                &encoded(&props),
                &Bytes::from(body.clone())
            )
            .1,
            0,
            "not mandatory"
        );
    }

    #[tokio::test]
    async fn an_empty_returned_body_completes_at_its_header() {
        let (mut w, mut broker) = wire();
        let mut bytes = returned(0);
        bytes.extend(ack(5, true));
        broker.write_all(&bytes).await.unwrap();
        let got = said(&mut w, 2).await;
        assert!(matches!(got[0], Said::Returned { .. }), "{got:?}");
        assert!(
            matches!(
                got[1],
                Said::Confirm {
                    tag: 5,
                    multiple: true,
                    ..
                }
            ),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn a_body_frame_out_of_place_is_a_protocol_error() {
        let (mut w, mut broker) = wire();
        let body = setgate_amqp::frame::encode(&AMQPFrame::Body(CHANNEL, vec![1; 3]));
        broker.write_all(&body).await.unwrap();
        let e = std::future::poll_fn(|cx| w.poll_said(cx))
            .await
            .unwrap_err();
        assert!(matches!(e, WireError::Protocol(_)), "{e:?}");
    }

    #[tokio::test]
    async fn a_channel_close_is_answered_and_named() {
        let (mut w, mut broker) = wire();
        let close = setgate_amqp::frame::encode(&AMQPFrame::Method(
            CHANNEL,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 404,
                reply_text: "NOT_FOUND - no exchange 'x' in vhost '/'".into(),
                class_id: 60,
                method_id: 40,
            })),
        ));
        broker.write_all(&close).await.unwrap();
        let e = std::future::poll_fn(|cx| w.poll_said(cx))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            WireError::Closed("NOT_FOUND - no exchange 'x' in vhost '/'".into())
        );
        let mut answer = vec![0; 12];
        tokio::io::AsyncReadExt::read_exact(&mut broker, &mut answer)
            .await
            .unwrap();
        assert!(matches!(
            &frames(&answer)[..],
            [AMQPFrame::Method(
                1,
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))
            )]
        ));
    }

    /// A delivery: Basic.Deliver, its header, its body in frames of at most `chunk` bytes.
    fn delivered(tag: u64, redelivered: bool, body: &[u8], chunk: usize) -> Vec<u8> {
        let mut b = method(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: "setgate link".into(),
            delivery_tag: tag,
            redelivered,
            exchange: "fed".into(),
            routing_key: "user.42".into(),
        }));
        let props = AMQPProperties::default()
            .with_delivery_mode(2)
            .with_message_id("m-1".into());
        b.extend(setgate_amqp::frame::encode(&AMQPFrame::Header(
            CHANNEL,
            AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: props,
            },
        )));
        for part in body.chunks(chunk) {
            b.extend(setgate_amqp::frame::encode(&AMQPFrame::Body(
                CHANNEL,
                part.to_vec(),
            )));
        }
        b
    }

    async fn deliveries(w: &mut Wire, n: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(
                std::future::poll_fn(|cx| w.poll_delivery(cx))
                    .await
                    .unwrap(),
            );
        }
        out
    }

    #[tokio::test]
    async fn deliveries_are_read_whole_with_their_tag_key_properties_and_body() {
        let (mut w, mut broker) = wire();
        let body: Vec<u8> = (0..=255).cycle().take(10_000).collect();
        let mut bytes = delivered(7, false, &body, 4096);
        bytes.extend(delivered(8, true, b"", 4096));
        bytes.extend(delivered(9, false, b"last", 4096));
        // Written in uneven pieces: frames arrive split across reads.
        for piece in bytes.chunks(1000) {
            broker.write_all(piece).await.unwrap();
        }
        let got = deliveries(&mut w, 3).await;
        assert_eq!(got[0].delivery_tag, 7);
        assert!(!got[0].redelivered);
        assert_eq!(got[0].routing_key.as_str(), "user.42");
        let props = AMQPProperties::default()
            .with_delivery_mode(2)
            .with_message_id("m-1".into());
        assert_eq!(got[0].raw_properties(), encoded(&props), "as sent");
        assert_eq!(got[0].body()[..], body);
        assert_eq!((got[1].delivery_tag, got[1].redelivered), (8, true));
        assert!(
            got[1].body().is_empty(),
            "an empty body completes at its header"
        );
        assert_eq!(got[2].body()[..], b"last"[..]);
    }

    #[tokio::test]
    async fn deliveries_held_while_more_are_read_keep_their_own_bodies() {
        // Bodies are slices of the reads: many reads' worth held at once, each body intact.
        let (mut w, mut broker) = wire();
        let body = |tag: u64| format!("body of {tag} ").repeat(1 + tag as usize % 40);
        let writer = tokio::spawn(async move {
            for tag in 1..=2_000u64 {
                let bytes = delivered(tag, false, body(tag).as_bytes(), 4096);
                broker.write_all(&bytes).await.unwrap();
            }
            broker
        });
        let got = deliveries(&mut w, 2_000).await;
        let _broker = writer.await.unwrap();
        assert!(got.iter().map(|d| d.body().len()).sum::<usize>() > 4 * reads::FIRST);
        for (d, tag) in got.iter().zip(1..) {
            assert_eq!(d.delivery_tag, tag);
            assert_eq!(d.body()[..], *body(tag).as_bytes());
        }
    }

    #[tokio::test]
    async fn deliveries_read_while_only_kept_alive_wait_for_the_consumer() {
        let (mut w, mut broker) = wire();
        broker
            .write_all(&delivered(1, false, b"kept", 4096))
            .await
            .unwrap();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // Upkeep reads the delivery but does not hand it out.
        assert!(w.poll_alive(&mut cx).is_pending());
        assert_eq!(w.deliveries.len(), 1);
        assert_eq!(deliveries(&mut w, 1).await[0].body()[..], b"kept"[..]);
    }

    #[tokio::test]
    async fn a_body_longer_than_its_header_said_is_a_protocol_error() {
        let (mut w, mut broker) = wire();
        let mut bytes = delivered(1, false, b"abc", 4096);
        // The header says 3 bytes: a body frame of 4 cannot belong to it.
        bytes.truncate(bytes.len() - (FRAME_OVERHEAD + 3));
        bytes.extend(setgate_amqp::frame::encode(&AMQPFrame::Body(
            CHANNEL,
            b"abcd".to_vec(),
        )));
        broker.write_all(&bytes).await.unwrap();
        let e = std::future::poll_fn(|cx| w.poll_delivery(cx))
            .await
            .unwrap_err();
        assert!(matches!(e, WireError::Protocol(_)), "{e:?}");
    }

    #[tokio::test]
    async fn a_consumer_cancelled_by_the_broker_ends_the_wire_and_is_answered() {
        let (mut w, mut broker) = wire();
        broker
            .write_all(&method(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: "setgate link".into(),
                nowait: false,
            })))
            .await
            .unwrap();
        let e = std::future::poll_fn(|cx| w.poll_delivery(cx))
            .await
            .unwrap_err();
        assert_eq!(e, WireError::Cancelled);
        let mut answer = vec![0; 4 + 8 + 1 + "setgate link".len()];
        tokio::io::AsyncReadExt::read_exact(&mut broker, &mut answer)
            .await
            .unwrap();
        assert!(matches!(
            &frames(&answer)[..],
            [AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::CancelOk(c)))]
                if c.consumer_tag.as_str() == "setgate link"
        ));
    }

    #[test]
    fn acks_and_requeues_are_written_as_the_protocol_has_them() {
        let (mut w, _broker) = wire();
        w.ack(41, true);
        w.ack(42, false);
        w.requeue(43);
        assert_eq!(
            frames(&w.wr.joined()),
            [
                AMQPFrame::Method(
                    1,
                    AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                        delivery_tag: 41,
                        multiple: true
                    }))
                ),
                AMQPFrame::Method(
                    1,
                    AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                        delivery_tag: 42,
                        multiple: false
                    }))
                ),
                AMQPFrame::Method(
                    1,
                    AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                        delivery_tag: 43,
                        multiple: false,
                        requeue: true
                    }))
                ),
            ]
        );
    }

    /// Reads whole frames from the wire's peer until one is a method; returns it.
    async fn next_method_from(peer: &mut tokio::io::DuplexStream) -> AMQPClass {
        use tokio::io::AsyncReadExt;
        loop {
            let mut head = [0; 7];
            peer.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let mut rest = vec![0; len + 1];
            peer.read_exact(&mut rest).await.unwrap();
            let mut bytes = head.to_vec();
            bytes.extend(rest);
            if let [AMQPFrame::Method(_, m)] = &frames(&bytes)[..] {
                return m.clone();
            }
        }
    }

    #[tokio::test]
    async fn close_closes_the_channel_first_and_reads_what_arrives_meanwhile() {
        let (mut w, mut broker) = wire();
        w.ack(5, true);
        let closing = tokio::spawn(async move { w.close(Duration::from_secs(5)).await });
        // The ack, then Channel.Close: acks are handled before the channel's answer.
        assert!(matches!(
            next_method_from(&mut broker).await,
            AMQPClass::Basic(basic::AMQPMethod::Ack(_))
        ));
        assert!(matches!(
            next_method_from(&mut broker).await,
            AMQPClass::Channel(channel::AMQPMethod::Close(_))
        ));
        // Deliveries still on their way are read, not left to reset the connection.
        broker
            .write_all(&delivered(9, false, &[1; 5000], 4096))
            .await
            .unwrap();
        let close_ok = AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}));
        broker
            .write_all(&setgate_amqp::frame::encode(&AMQPFrame::Method(
                CHANNEL, close_ok,
            )))
            .await
            .unwrap();
        assert!(matches!(
            next_method_from(&mut broker).await,
            AMQPClass::Connection(connection::AMQPMethod::Close(_))
        ));
        let close_ok = connection::AMQPMethod::CloseOk(connection::CloseOk {});
        broker
            .write_all(&setgate_amqp::frame::encode(&AMQPFrame::Method(
                0,
                AMQPClass::Connection(close_ok),
            )))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), closing)
            .await
            .expect("close ends once the broker answered")
            .unwrap();
    }

    /// A wire over a real TCP socket, with lazy reads as `handshake` sets them up; the other
    /// end plays the broker.
    async fn over_tcp(confirm: bool) -> (Wire, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (broker, _) = l.accept().await.unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&ours);
        let mut w = Wire::new(Box::new(ours), confirm);
        let mark = if confirm {
            lazy::CONFIRM_MARK
        } else {
            lazy::DELIVERY_MARK
        };
        w.lazy = Some(LazyReads::new(fd, mark));
        (w, broker)
    }

    /// A publishing wire over TCP with publishes `1..=n` flushed.
    async fn publishing_over_tcp(n: usize) -> (Wire, tokio::net::TcpStream) {
        let (mut w, broker) = over_tcp(true).await;
        for _ in 0..n {
            w.publish("x", "k", false, &[0, 0], &Bytes::from_static(b"m"));
        }
        w.flush().await.unwrap();
        (w, broker)
    }

    fn round_on(w: &Wire) -> bool {
        w.lazy.as_ref().is_some_and(LazyReads::on)
    }

    /// Confirms read in rounds: each one that lands below the read mark is read when its round
    /// ends, never lost; a new round begins after each read while publishes still wait, and
    /// none once every publish is confirmed.
    #[tokio::test]
    async fn confirms_read_in_rounds_are_never_lost_and_rounds_go_on_while_publishes_wait() {
        let (mut w, mut broker) = publishing_over_tcp(3).await;
        assert!(round_on(&w), "a publish begins a round");
        // Read what the wire wrote, so that its socket never waits on ours.
        let mut sink = vec![0u8; 1 << 16];
        let _ = broker.read(&mut sink).await.unwrap();
        // Nothing to read yet: the wire waits (registering for the round's end).
        assert!(std::future::poll_fn(|cx| Poll::Ready(w.poll_said(cx)))
            .await
            .is_pending());
        for tag in 1..=3 {
            broker.write_all(&ack(tag, false)).await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(10), said(&mut w, 1))
                .await
                .unwrap_or_else(|_| panic!("the confirm of publish {tag} was never read"));
            assert_eq!(
                got,
                vec![Said::Confirm {
                    tag,
                    multiple: false,
                    settled: Settled::Ack
                }]
            );
            // The wire waits again: with publishes unconfirmed, a new round is on.
            assert!(std::future::poll_fn(|cx| Poll::Ready(w.poll_said(cx)))
                .await
                .is_pending());
            assert_eq!(round_on(&w), tag < 3, "after the confirm of publish {tag}");
        }
    }

    /// Polls `w` once for a delivery: whether it had to wait.
    async fn waits(w: &mut Wire) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(w.poll_delivery(cx)))
            .await
            .is_pending()
    }

    /// A consuming wire reads a quiet upstream's deliveries as they come, and a busy one's (a
    /// turn of reading brought `lazy::BUSY` or more) in rounds, losing none.
    #[tokio::test]
    async fn deliveries_are_read_in_rounds_while_the_upstream_is_busy_and_none_is_lost() {
        let (mut w, mut broker) = over_tcp(false).await;
        w.consumer_tag = Some("setgate link".into());
        let within = Duration::from_secs(10);
        let tags = |d: Vec<Delivery>| d.iter().map(|d| d.delivery_tag).collect::<Vec<_>>();

        one_delivery(&mut w, &mut broker, 1, "read as it came").await;
        assert!(!round_on(&w), "one delivery: no round");

        let busy = lazy::BUSY as u64;
        let burst: Vec<u8> = (2..2 + busy)
            .flat_map(|t| delivered(t, false, b"busy", 4096))
            .collect();
        broker.write_all(&burst).await.unwrap();
        let got = tokio::time::timeout(within, deliveries(&mut w, lazy::BUSY)).await;
        assert_eq!(
            tags(got.expect("a burst read")),
            (2..2 + busy).collect::<Vec<_>>()
        );
        assert!(waits(&mut w).await);
        assert!(round_on(&w), "a burst: a round");

        // Below the mark: read when the round ends, not lost; then quiet again.
        one_delivery(&mut w, &mut broker, 100, "read at the round's end").await;
        assert!(!round_on(&w));
    }

    /// The broker sends delivery `tag` alone; it is read (`what`), then the wire waits.
    async fn one_delivery(w: &mut Wire, broker: &mut tokio::net::TcpStream, tag: u64, what: &str) {
        broker
            .write_all(&delivered(tag, false, b"one", 4096))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), deliveries(w, 1))
            .await
            .unwrap_or_else(|_| panic!("delivery {tag} not {what}"));
        assert_eq!(got[0].delivery_tag, tag, "{what}");
        assert!(waits(w).await);
    }

    /// Bursts and trickles in turn, read as the flow reads them (a delivery, then what else is
    /// ready now, with rounds allowed or not from one batch to the next): every delivery is
    /// read, the last ones too, with nothing more coming to wake the wire.
    #[tokio::test]
    async fn every_delivery_is_read_through_bursts_and_trickles() {
        let (mut w, mut broker) = over_tcp(false).await;
        w.consumer_tag = Some("setgate link".into());
        const PHASES: u64 = 30;
        const EACH: u64 = 20;
        let writer = tokio::spawn(async move {
            let mut tag = 0;
            for phase in 0..PHASES {
                let mut burst = Vec::new();
                for _ in 0..EACH {
                    tag += 1;
                    let d = delivered(tag, false, b"x", 4096);
                    if phase.is_multiple_of(2) {
                        burst.extend(d);
                    } else {
                        broker.write_all(&d).await.unwrap();
                        tokio::time::sleep(Duration::from_micros(700)).await;
                    }
                }
                broker.write_all(&burst).await.unwrap();
            }
            broker
        });
        let mut next = 1;
        let mut batches = 0u64;
        let read_all = async {
            while next <= PHASES * EACH {
                let d = std::future::poll_fn(|cx| w.poll_delivery(cx))
                    .await
                    .unwrap();
                assert_eq!(d.delivery_tag, next);
                next += 1;
                while let Some(d) = std::future::poll_fn(|cx| w.poll_delivery(cx)).now_or_never() {
                    assert_eq!(d.unwrap().delivery_tag, next);
                    next += 1;
                }
                batches += 1;
                w.rounds(!batches.is_multiple_of(7));
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read_all)
            .await
            .unwrap_or_else(|_| panic!("delivery {next} was never read"));
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_closed_socket_is_a_lost_connection() {
        let (mut w, broker) = wire();
        drop(broker);
        let e = std::future::poll_fn(|cx| w.poll_said(cx))
            .await
            .unwrap_err();
        assert!(matches!(e, WireError::Lost(_)), "{e:?}");
    }
}
