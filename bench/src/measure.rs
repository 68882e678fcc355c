//! The instruments of the federation and shovel benchmarks: a pipelined confirmed publisher,
//! consumers that time arrivals, and the figures taken from them.

use anyhow::bail;
use futures_util::stream::{select_all, SelectAll};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer, PublisherConfirm};
use setgate_testkit::amqp::{confirm_channel, connect};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How a run publishes.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Messages.
    pub messages: u64,
    /// Body bytes.
    pub body_size: usize,
    /// Unconfirmed publishes in flight.
    pub window: usize,
    /// Messages per second, or as fast as confirms allow.
    pub rate: Option<f64>,
    /// Give each message an `x-user-id` header, `user-{i % users}` (the key of SET routing).
    pub users: Option<u64>,
    /// Persistent messages (delivery mode 2), or transient ones (1).
    pub persistent: bool,
}

/// The options of every throughput benchmark.
#[derive(clap::Args, Debug, Clone)]
pub struct Throughput {
    /// Messages per throughput run.
    #[arg(long, default_value_t = 50_000)]
    pub messages: u64,
    /// Runs per case and contender, interleaved (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 128)]
    pub body_size: usize,
    /// Unconfirmed publishes the publisher keeps in flight.
    #[arg(long, default_value_t = 1000)]
    pub window: usize,
    /// prefetch_count of setgate's link or shovel, and of the plugin's.
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u32,
    /// Publish transient messages (delivery mode 1) instead of persistent ones. The queues stay
    /// durable; the brokers keep the messages in memory, so the forwarder's own cost weighs more.
    #[arg(long)]
    pub transient: bool,
}

impl Throughput {
    /// As fast as confirms allow, without user ids.
    pub fn load(&self) -> Load {
        Load {
            messages: self.messages,
            body_size: self.body_size,
            window: self.window,
            rate: None,
            users: None,
            persistent: !self.transient,
        }
    }
}

/// What a consumer saw.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Messages per second from the first arrival to the last.
    pub rate: f64,
    /// Publish-to-arrival latency percentiles.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

/// How the measuring consumer acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// `no_ack`: the cheapest for the broker.
    Auto,
    /// Manual `multiple` acks every 100 messages, as a federation link would.
    Batched,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Publishes messages (persistent unless the load says otherwise) with pipelined confirms;
/// returns confirmed messages per second from the first publish to the last confirm. Each
/// message carries its publish time (`ts_ns`).
pub async fn publish(uri: &str, exchange: &str, load: Load) -> anyhow::Result<f64> {
    let (start, end) = publish_span(uri, exchange, load).await?;
    Ok(load.messages as f64 / end.duration_since(start).as_secs_f64())
}

/// Publishes `load` spread over `exchanges` at once: one publisher (a connection) each, with an
/// equal share of the messages and of the rate, and each its own window. Returns the confirmed
/// messages per second of them all, from the first publish to the last confirm. With one
/// exchange, it is [`publish`].
pub async fn publish_spread(uri: &str, exchanges: &[String], load: Load) -> anyhow::Result<f64> {
    let n = exchanges.len() as u64;
    anyhow::ensure!(n > 0, "no exchange to publish to");
    let spans = futures_util::future::try_join_all(exchanges.iter().enumerate().map(|(i, x)| {
        let share = Load {
            messages: load.messages / n + u64::from((i as u64) < load.messages % n),
            rate: load.rate.map(|r| r / n as f64),
            ..load
        };
        publish_span(uri, x, share)
    }))
    .await?;
    let start = spans.iter().map(|s| s.0).min().expect("one span at least");
    let end = spans.iter().map(|s| s.1).max().expect("one span at least");
    Ok(load.messages as f64 / end.duration_since(start).as_secs_f64())
}

/// When the first publish went out and when the last confirm came back.
async fn publish_span(uri: &str, exchange: &str, load: Load) -> anyhow::Result<(Instant, Instant)> {
    let conn = connect(uri).await?;
    let ch = confirm_channel(&conn).await?;
    let body = vec![b'x'; load.body_size];
    let start = Instant::now();
    let mut inflight: VecDeque<PublisherConfirm> = VecDeque::with_capacity(load.window);
    for i in 0..load.messages {
        if let Some(r) = load.rate {
            tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / r)).into()).await;
        }
        inflight.push_back(publish_one(&ch, exchange, i, &body, load).await?);
        while inflight.len() >= load.window {
            check(inflight.pop_front().unwrap().await?)?;
        }
    }
    while let Some(c) = inflight.pop_front() {
        check(c.await?)?;
    }
    let end = Instant::now();
    let _ = conn.close(200, "OK".into()).await;
    Ok((start, end))
}

async fn publish_one(
    ch: &Channel,
    exchange: &str,
    i: u64,
    body: &[u8],
    load: Load,
) -> anyhow::Result<PublisherConfirm> {
    let mut headers = FieldTable::default();
    headers.insert("ts_ns".into(), AMQPValue::LongLongInt(now_ns()));
    if let Some(users) = load.users {
        let user = format!("user-{}", i % users);
        headers.insert("x-user-id".into(), AMQPValue::LongString(user.into()));
    }
    let props = BasicProperties::default()
        .with_delivery_mode(if load.persistent { 2 } else { 1 })
        .with_message_id(i.to_string().into())
        .with_headers(headers);
    let rk = format!("k{}", i % 10);
    Ok(ch
        .basic_publish(
            exchange.into(),
            rk.as_str().into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await?)
}

fn check(c: lapin::Confirmation) -> anyhow::Result<()> {
    if !c.is_ack() {
        bail!("the source nacked a publish");
    }
    Ok(())
}

/// Empties a queue.
pub async fn purge(uri: &str, queue: &str) -> anyhow::Result<()> {
    let conn = connect(uri).await?;
    let ch = conn.create_channel().await?;
    ch.queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    let _ = conn.close(200, "OK".into()).await;
    Ok(())
}

/// Publishes `load` on `exchange` at `pub_uri` while a consumer on `queue` at `sub_uri` times
/// the arrivals.
pub async fn through(
    pub_uri: &str,
    exchange: &str,
    sub_uri: &str,
    queue: &str,
    load: Load,
    acks: Acks,
) -> anyhow::Result<Measured> {
    let arrivals = Arrivals::start(&[(sub_uri, queue)], load.messages, acks).await?;
    publish(pub_uri, exchange, load).await?;
    arrivals.finish().await
}

/// Publishes `load` spread over `exchanges` at `pub_uri` ([`publish_spread`]) while consumers
/// on `queues` at `sub_uri` time the arrivals, all queues together.
pub async fn through_spread(
    pub_uri: &str,
    exchanges: &[String],
    sub_uri: &str,
    queues: &[String],
    load: Load,
) -> anyhow::Result<Measured> {
    let at: Vec<(&str, &str)> = queues.iter().map(|q| (sub_uri, q.as_str())).collect();
    let arrivals = Arrivals::start(&at, load.messages, Acks::Auto).await?;
    publish_spread(pub_uri, exchanges, load).await?;
    arrivals.finish().await
}

/// When the last measurement finished (`now_ns`). A message published before that belongs to an
/// earlier case: redelivered by the source after that case's forwarder was killed (`kill -9`,
/// between cases) with deliveries confirmed downstream but not yet acked upstream, as
/// at-least-once allows. Counted as this case's, it displaced one of them and showed its age as
/// a latency of seconds.
static LAST_FINISHED_NS: AtomicI64 = AtomicI64::new(0);

/// Consumers on one or more queues (each `(uri, queue)`, emptied first) that time the arrival of
/// `n` messages in all, from the first to the last.
pub struct Arrivals {
    conns: Vec<Connection>,
    collect: tokio::task::JoinHandle<anyhow::Result<Measured>>,
}

impl Arrivals {
    /// Purges the queues and starts consuming; returns once every consumer is registered.
    pub async fn start(queues: &[(&str, &str)], n: u64, acks: Acks) -> anyhow::Result<Arrivals> {
        for &(uri, queue) in queues {
            purge(uri, queue).await?;
        }
        Arrivals::consume(queues, n, acks).await
    }

    /// Starts consuming what the queues hold (a backlog) and what arrives; returns once every
    /// consumer is registered.
    pub async fn consume(queues: &[(&str, &str)], n: u64, acks: Acks) -> anyhow::Result<Arrivals> {
        // A `multiple` ack covers one channel's deliveries: batched acks need a single queue.
        anyhow::ensure!(
            acks == Acks::Auto || queues.len() == 1,
            "batched acks time one queue"
        );
        let mut conns = Vec::new();
        let mut consumers = Vec::new();
        for &(uri, queue) in queues {
            let conn = connect(uri).await?;
            let ch = conn.create_channel().await?;
            ch.basic_qos(2000, BasicQosOptions::default()).await?;
            let options = BasicConsumeOptions {
                no_ack: acks == Acks::Auto,
                ..Default::default()
            };
            let consumer = ch
                .basic_consume(queue.into(), "bench".into(), options, FieldTable::default())
                .await?;
            consumers.push(consumer);
            conns.push(conn);
        }
        let since = LAST_FINISHED_NS.load(Ordering::Relaxed);
        let collect = tokio::spawn(collect(select_all(consumers), n, acks, since));
        Ok(Arrivals { conns, collect })
    }

    /// Waits for the `n` messages (at most 60 s between two) and closes the consumers.
    pub async fn finish(self) -> anyhow::Result<Measured> {
        let m = self.collect.await??;
        LAST_FINISHED_NS.store(now_ns(), Ordering::Relaxed);
        for conn in self.conns {
            let _ = conn.close(200, "OK".into()).await;
        }
        Ok(m)
    }
}

/// Takes `n` messages published since `since` (`LAST_FINISHED_NS`), skipping older ones.
async fn collect(
    mut consumer: SelectAll<Consumer>,
    n: u64,
    acks: Acks,
    since: i64,
) -> anyhow::Result<Measured> {
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut lat_ns: Vec<i64> = Vec::with_capacity(n as usize);
    let (mut seen, mut earlier) = (0, 0u64);
    while seen < n {
        let d = match tokio::time::timeout(Duration::from_secs(60), consumer.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(other) => bail!("consumer ended: {other:?}"),
            Err(_) => bail!("no message for 60 s after {seen} of {n}"),
        };
        let ts = match d
            .properties
            .headers()
            .as_ref()
            .map(|h| h.inner().get("ts_ns"))
        {
            Some(Some(AMQPValue::LongLongInt(ts))) => Some(*ts),
            _ => None,
        };
        if ts.is_some_and(|ts| ts < since) {
            earlier += 1;
            continue;
        }
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        if let Some(ts) = ts {
            lat_ns.push(now_ns() - ts);
        }
        seen += 1;
        if acks == Acks::Batched && (seen % 100 == 0 || seen == n) {
            d.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    if earlier > 0 {
        eprintln!("  ({earlier} messages of an earlier case skipped: redelivered after its forwarder was killed)");
    }
    lat_ns.sort_unstable();
    let pct = |p: f64| {
        let i = ((lat_ns.len() as f64 - 1.0) * p).round() as usize;
        let ms = lat_ns.get(i).copied().unwrap_or(0) as f64 / 1e6;
        (ms * 100.0).round() / 100.0
    };
    let span = last.duration_since(first.unwrap_or(last)).as_secs_f64();
    Ok(Measured {
        rate: if span > 0.0 {
            (n - 1) as f64 / span
        } else {
            0.0
        },
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

/// The median, rounded to 0.01.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (m * 100.0).round() / 100.0
}

/// a / b rounded to 0.001.
pub fn ratio(a: f64, b: f64) -> f64 {
    (a / b * 1000.0).round() / 1000.0
}

/// Prints a case's figures: one JSON line `{"bench", "case", "result"}` on standard output.
pub fn line(bench: &str, case: &str, result: serde_json::Value) {
    println!(
        "{}",
        serde_json::json!({"bench": bench, "case": case, "result": result})
    );
}
