//! The floor of a forwarding hot path of our own: one task, two sockets, no lapin. It consumes a
//! queue on the source (manual acks, a prefetch), republishes each message to an exchange on the
//! downstream in confirm mode, decodes and re-encodes each content header to add one header entry
//! (as `x-received-from` is added), passes bodies through as they came, and acks the source with
//! `multiple` as the downstream confirms. No reconnects, no routing, no status, no watchdogs: it
//! measures what the frames of the hot path cost when they are not handed through lapin's I/O
//! threads and per-publish promises; it is not a forwarder.
//!
//! It runs as its own process (`setgate-bench forward-floor`) so that its CPU is its own, and
//! prints it when done.

use amq_protocol::frame::{gen_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, channel, confirm, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use anyhow::{bail, Context};
use setgate_amqp::frame::parse;
use setgate_amqp::names::method_name;
use setgate_testkit::amqp_lite;
use std::collections::VecDeque;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Options of `setgate-bench forward-floor`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The source broker's AMQP address (guest/guest, vhost /).
    #[arg(long)]
    pub from: SocketAddr,
    /// The queue consumed there.
    #[arg(long)]
    pub queue: String,
    /// The downstream broker's AMQP address.
    #[arg(long)]
    pub to: SocketAddr,
    /// The exchange published to there (routing keys kept).
    #[arg(long)]
    pub exchange: String,
    /// Messages to move before stopping.
    #[arg(long)]
    pub count: u64,
    /// Unacknowledged deliveries the source may send ahead.
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u16,
}

/// A socket with the bytes read from it and not yet parsed, and those to write.
struct Side {
    stream: TcpStream,
    rd: Vec<u8>,
    wr: Vec<u8>,
}

impl Side {
    async fn open(addr: SocketAddr) -> anyhow::Result<Side> {
        let c = amqp_lite::connect(addr, "guest", "guest", "/").await?;
        Ok(Side {
            stream: c.into_stream(),
            rd: Vec::with_capacity(1 << 20),
            wr: Vec::with_capacity(1 << 20),
        })
    }

    fn push(&mut self, frame: &AMQPFrame) {
        let wr = std::mem::take(&mut self.wr);
        let ctx = gen_frame(frame)(WriteContext::from(wr)).expect("into a Vec");
        self.wr = ctx.into_inner().0;
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.wr.is_empty() {
            self.stream.write_all(&self.wr).await?;
            self.wr.clear();
        }
        Ok(())
    }

    /// Reads more bytes; false when the peer closed. Cancel-safe (`select!` drops it): only
    /// the bytes read are appended.
    async fn fill(&mut self) -> anyhow::Result<bool> {
        self.rd.reserve(256 * 1024);
        Ok(self.stream.read_buf(&mut self.rd).await? > 0)
    }

    /// The length of the whole frame at `pos` in `rd`, if it is all there.
    fn frame_at(&self, pos: usize) -> Option<usize> {
        let b = self.rd.get(pos..pos + 7)?;
        let len = u32::from_be_bytes([b[3], b[4], b[5], b[6]]) as usize + 8;
        (self.rd.len() >= pos + len).then_some(len)
    }

    /// Sends a method on channel 1 and waits for the next method back.
    async fn call(&mut self, method: AMQPClass) -> anyhow::Result<AMQPClass> {
        self.push(&AMQPFrame::Method(1, method));
        self.flush().await?;
        loop {
            while let Some(len) = self.frame_at(0) {
                let frame = parse(&self.rd[..len])?;
                self.rd.drain(..len);
                match frame {
                    AMQPFrame::Method(_, m) => return Ok(m),
                    AMQPFrame::Heartbeat => continue,
                    other => bail!("unexpected frame {other:?}"),
                }
            }
            if !self.fill().await? {
                bail!("closed during setup");
            }
        }
    }
}

/// Moves `args.count` messages, then prints `{"cpu_s": ...}` (its own user + system CPU).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut up = Side::open(args.from).await.context("source")?;
    let mut down = Side::open(args.to).await.context("downstream")?;
    let open = || AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}));
    up.call(open()).await?;
    down.call(open()).await?;
    up.call(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
        prefetch_count: args.prefetch,
        global: false,
    })))
    .await?;
    down.call(AMQPClass::Confirm(confirm::AMQPMethod::Select(
        confirm::Select { nowait: false },
    )))
    .await?;
    up.call(AMQPClass::Basic(basic::AMQPMethod::Consume(
        basic::Consume {
            queue: args.queue.as_str().into(),
            consumer_tag: "floor".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        },
    )))
    .await?;

    let exchange: ShortString = args.exchange.as_str().into();
    let origin = AMQPValue::LongString(LongString::from("bench-source"));
    // The source's delivery tag of each publish not yet acked upstream and whether the downstream
    // confirmed it, in publish order (sequence numbers start at 1 and go up by one).
    let mut unconfirmed: VecDeque<(u64, bool)> = VecDeque::new();
    let mut next_seq = 1u64;
    let mut confirmed = 0u64;
    // The read that brought ConsumeOk may have brought deliveries after it: with a small
    // prefetch, all the source will send until acked.
    republish(
        &mut up,
        &mut down,
        &exchange,
        &origin,
        &mut unconfirmed,
        &mut next_seq,
    )?;
    down.flush().await?;
    while confirmed < args.count {
        tokio::select! {
            more = up.fill() => {
                if !more? { bail!("source closed"); }
                republish(&mut up, &mut down, &exchange, &origin, &mut unconfirmed, &mut next_seq)?;
                down.flush().await?;
            }
            more = down.fill() => {
                if !more? { bail!("downstream closed"); }
                let mut ack_to = None;
                let mut pos = 0;
                while let Some(len) = down.frame_at(pos) {
                    let frame = parse(&down.rd[pos..pos + len])?;
                    pos += len;
                    match frame {
                        AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => {
                            // Confirms of single publishes may come out of order: mark, then
                            // take the confirmed prefix.
                            let oldest = next_seq - unconfirmed.len() as u64;
                            if let Some(at) = a.delivery_tag.checked_sub(oldest) {
                                let at = at as usize;
                                let from = if a.multiple { 0 } else { at };
                                for entry in unconfirmed.iter_mut().take(at + 1).skip(from) {
                                    entry.1 = true;
                                }
                            }
                            while unconfirmed.front().is_some_and(|e| e.1) {
                                ack_to = unconfirmed.pop_front().map(|e| e.0);
                                confirmed += 1;
                            }
                        }
                        AMQPFrame::Heartbeat => {}
                        AMQPFrame::Method(_, m) => bail!("downstream sent {}", method_name(&m)),
                        other => bail!("downstream sent {other:?}"),
                    }
                }
                down.rd.drain(..pos);
                if let Some(tag) = ack_to {
                    up.push(&AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                        delivery_tag: tag,
                        multiple: true,
                    }))));
                    up.flush().await?;
                }
            }
        }
    }
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    println!(
        "{}",
        serde_json::json!({"cpu_s": secs(usage.ru_utime) + secs(usage.ru_stime), "moved": confirmed})
    );
    Ok(())
}

/// Republishes every whole delivery read from the source: its method and header re-encoded
/// (one header entry added), its body frames as they came. Records each publish's source tag.
fn republish(
    up: &mut Side,
    down: &mut Side,
    exchange: &ShortString,
    origin: &AMQPValue,
    unconfirmed: &mut VecDeque<(u64, bool)>,
    next_seq: &mut u64,
) -> anyhow::Result<()> {
    let mut pos = 0;
    while let Some(len) = up.frame_at(pos) {
        let frame = &up.rd[pos..pos + len];
        pos += len;
        // A body frame (type 3) goes through as it came, unparsed.
        if frame[0] == 3 {
            down.wr.extend_from_slice(frame);
            continue;
        }
        match parse(frame)? {
            AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) => {
                unconfirmed.push_back((d.delivery_tag, false));
                *next_seq += 1;
                down.push(&AMQPFrame::Method(
                    1,
                    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                        exchange: exchange.clone(),
                        routing_key: d.routing_key,
                        mandatory: false,
                        immediate: false,
                    })),
                ));
            }
            AMQPFrame::Header(_, mut h) => {
                let mut headers = h.properties.headers().clone().unwrap_or_default();
                headers.insert("x-received-from".into(), origin.clone());
                h.properties = h.properties.with_headers(headers);
                down.push(&AMQPFrame::Header(1, h));
            }
            AMQPFrame::Heartbeat => {}
            AMQPFrame::Method(_, m) => bail!("source sent {}", method_name(&m)),
            other => bail!("source sent {other:?}"),
        }
    }
    up.rd.drain(..pos);
    Ok(())
}

/// Runs the floor forwarder as a child process until it moved `count` messages; returns the CPU
/// seconds it used.
pub async fn spawn(
    from: SocketAddr,
    queue: &str,
    to: SocketAddr,
    exchange: &str,
    count: u64,
    prefetch: u32,
) -> anyhow::Result<f64> {
    let prefetch = u16::try_from(prefetch)
        .with_context(|| format!("forward-floor: a prefetch of {prefetch} is over AMQP's 65535"))?;
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .arg("forward-floor")
        .args(["--from", &from.to_string(), "--queue", queue])
        .args(["--to", &to.to_string(), "--exchange", exchange])
        .args([
            "--count",
            &count.to_string(),
            "--prefetch",
            &prefetch.to_string(),
        ])
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "forward-floor failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "forward-floor printed {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    v["cpu_s"].as_f64().context("no cpu_s")
}
