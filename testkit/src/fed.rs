//! Federation test and benchmark helpers: a publisher that survives broker restarts and reports
//! what was confirmed, a collector that consumes a queue across restarts, the tally of the two
//! (published-and-confirmed vs received vs duplicates vs missing), and setgate status and metric
//! helpers for federation links (their configs come from [`crate::config`]).
//!
//! Every message carries its id as `message_id` (and as the body); the routing key is
//! `k{id % keys}` so order can be checked per key.

use crate::amqp::{confirm_channel, connect};
use crate::net::wait_until;
use crate::node::Node;
use crate::setgate::Setgate;
use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, ExchangeKind, PublisherConfirm};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Declares a durable exchange of `kind` ("topic", "fanout", ...).
pub async fn declare_exchange(uri: &str, name: &str, kind: &str) -> anyhow::Result<()> {
    let conn = connect(uri).await?;
    let ch = conn.create_channel().await?;
    let kind = match kind {
        "topic" => ExchangeKind::Topic,
        "fanout" => ExchangeKind::Fanout,
        "direct" => ExchangeKind::Direct,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.into()),
    };
    let opts = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(name.into(), kind, opts, FieldTable::default())
        .await
        .with_context(|| format!("declare exchange {name}"))?;
    let _ = conn.close(200, "OK".into()).await;
    Ok(())
}

/// Declares a durable queue bound to `exchange` with `#`.
pub async fn declare_bound_queue(uri: &str, queue: &str, exchange: &str) -> anyhow::Result<()> {
    declare_queue_bound_by(uri, queue, exchange, &["#"]).await
}

/// Declares a durable queue bound to `exchange` with each of `keys`.
pub async fn declare_queue_bound_by(
    uri: &str,
    queue: &str,
    exchange: &str,
    keys: &[&str],
) -> anyhow::Result<()> {
    let conn = connect(uri).await?;
    let ch = conn.create_channel().await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .with_context(|| format!("declare queue {queue}"))?;
    for key in keys {
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            (*key).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("bind queue {queue} to {exchange} with {key}"))?;
    }
    let _ = conn.close(200, "OK".into()).await;
    Ok(())
}

/// How [`publish`] publishes.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Exchange to publish to.
    pub exchange: String,
    /// Number of distinct routing keys (`k0`..).
    pub keys: u64,
    /// Messages per second, or as fast as confirms allow.
    pub rate: Option<f64>,
    /// Unconfirmed publishes in flight.
    pub window: usize,
    /// Give up when no connection could be made for this long.
    pub patience: Duration,
    /// Body size in bytes (at least the id's digits).
    pub body_size: usize,
    /// Who each message is for, in a header (the key of SET-routed flows); none by default.
    pub key_header: Option<KeyHeader>,
}

/// Who each message is for: message `id` carries header `name` = `users[id % users.len()]`.
#[derive(Debug, Clone)]
pub struct KeyHeader {
    /// The header, e.g. `x-user-id`.
    pub name: String,
    /// The users, taken in turn.
    pub users: Vec<String>,
}

impl KeyHeader {
    /// Header `name` naming `users` in turn.
    pub fn new(name: &str, users: Vec<String>) -> KeyHeader {
        assert!(!users.is_empty(), "KeyHeader needs at least one user");
        KeyHeader {
            name: name.into(),
            users,
        }
    }

    /// The user message `id` is for.
    pub fn user_of(&self, id: u64) -> &str {
        &self.users[(id % self.users.len() as u64) as usize]
    }

    /// [`message_properties`] of `id` with this header added.
    pub fn properties(&self, id: u64) -> BasicProperties {
        let props = message_properties(id);
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(
            self.name.as_str().into(),
            AMQPValue::LongString(LongString::from(self.user_of(id).as_bytes().to_vec())),
        );
        props.with_headers(headers)
    }
}

impl PublishOptions {
    /// Defaults: 10 keys, unpaced, window 500, 60 s patience, small bodies.
    pub fn new(exchange: &str) -> PublishOptions {
        PublishOptions {
            exchange: exchange.into(),
            keys: 10,
            rate: None,
            window: 500,
            patience: Duration::from_secs(60),
            body_size: 0,
            key_header: None,
        }
    }
}

/// The properties every test message carries; `id` goes into `message_id` and a header.
pub fn message_properties(id: u64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("seq".into(), AMQPValue::LongLongInt(id as i64));
    headers.insert(
        "origin".into(),
        AMQPValue::LongString(LongString::from(b"fedtest".to_vec())),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(id.to_string().into())
        .with_content_type("text/plain".into())
        .with_correlation_id(format!("corr-{id}").into())
        .with_app_id("fedtest".into())
        .with_type("test.message".into())
        .with_priority(1)
        .with_timestamp(1_700_000_000 + id)
        .with_user_id("guest".into())
        .with_headers(headers)
}

/// Publishes persistent messages `ids` with pipelined confirms, reconnecting (and republishing
/// what was not confirmed) when the broker goes away. Returns the ids the broker confirmed.
pub async fn publish(
    uri: &str,
    ids: std::ops::Range<u64>,
    opts: &PublishOptions,
) -> anyhow::Result<BTreeSet<u64>> {
    let mut todo: VecDeque<u64> = ids.collect();
    let mut confirmed = BTreeSet::new();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut last_ok = Instant::now();
    while !todo.is_empty() {
        let conn = match connect(uri).await {
            Ok(c) => c,
            Err(e) => {
                if last_ok.elapsed() > opts.patience {
                    return Err(e.context("publisher gave up"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let ch = match confirm_channel(&conn).await {
            Ok(c) => c,
            Err(_) => continue,
        };
        last_ok = Instant::now();
        let mut inflight: VecDeque<(u64, PublisherConfirm)> = VecDeque::new();
        let mut failed: Vec<u64> = Vec::new();
        while let Some(&id) = todo.front() {
            if let Some(rate) = opts.rate {
                let due = start + Duration::from_secs_f64(sent as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let body = body(id, opts.body_size);
            let rk = format!("k{}", id % opts.keys.max(1));
            let props = match &opts.key_header {
                Some(k) => k.properties(id),
                None => message_properties(id),
            };
            match ch
                .basic_publish(
                    opts.exchange.as_str().into(),
                    rk.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
            {
                Ok(c) => {
                    todo.pop_front();
                    sent += 1;
                    inflight.push_back((id, c));
                }
                Err(_) => break,
            }
            while inflight.len() >= opts.window {
                let (id, c) = inflight.pop_front().unwrap();
                settle(id, c.await, &mut confirmed, &mut failed);
            }
        }
        while let Some((id, c)) = inflight.pop_front() {
            settle(id, c.await, &mut confirmed, &mut failed);
        }
        failed.sort_unstable();
        for id in failed.into_iter().rev() {
            todo.push_front(id);
        }
        let _ = conn.close(200, "OK".into()).await;
    }
    Ok(confirmed)
}

fn settle(
    id: u64,
    r: lapin::Result<lapin::Confirmation>,
    confirmed: &mut BTreeSet<u64>,
    failed: &mut Vec<u64>,
) {
    match r {
        Ok(c) if c.is_ack() => {
            confirmed.insert(id);
        }
        _ => failed.push(id),
    }
}

/// The body of message `id`: its decimal id, padded with spaces to `size`.
pub fn body(id: u64, size: usize) -> Vec<u8> {
    let mut b = id.to_string().into_bytes();
    if b.len() < size {
        b.resize(size, b' ');
    }
    b
}

/// One message as the collector saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// From `message_id`.
    pub id: u64,
    /// The routing key it arrived with.
    pub routing_key: String,
    /// Its properties.
    pub properties: BasicProperties,
    /// The body.
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
}

/// How long one step of the collector's connect and consume may take.
const COLLECTOR_STEP: Duration = Duration::from_secs(10);
/// The collector's heartbeat (seconds): a dead connection is noticed within about twice this.
const COLLECTOR_HEARTBEAT: u16 = 2;

/// Consumes a queue in the background (reconnecting across broker restarts) and keeps every
/// message it received, in arrival order.
#[derive(Debug, Clone)]
pub struct Collector {
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl Collector {
    /// Starts consuming `queue` on `uri` (the queue must exist).
    pub fn start(uri: &str, queue: &str) -> Collector {
        let c = Collector {
            received: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (uri, queue, me) = (uri.to_string(), queue.to_string(), c.clone());
        tokio::spawn(async move {
            while !me.stop.load(Ordering::Relaxed) {
                if let Err(e) = me.consume_once(&uri, &queue).await {
                    tracing::debug!(error = %e, "collector reconnecting");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        c
    }

    /// One connection's worth of consuming. Every step is bounded and the connection carries a
    /// short heartbeat: a broker killed mid-call must send the collector round its reconnect
    /// loop, never leave it waiting on a dead connection (it once sat out a whole test that way
    /// while the messages it waited for were in its queue).
    async fn consume_once(&self, uri: &str, queue: &str) -> anyhow::Result<()> {
        let mut parsed: lapin::uri::AMQPUri = uri.parse().map_err(anyhow::Error::msg)?;
        parsed.query.heartbeat = Some(COLLECTOR_HEARTBEAT);
        let conn = tokio::time::timeout(
            COLLECTOR_STEP,
            lapin::Connection::connect_uri(parsed, lapin::ConnectionProperties::default()),
        )
        .await
        .context("collector: connecting timed out")??;
        let setup = async {
            let ch = conn.create_channel().await?;
            ch.basic_qos(1000, BasicQosOptions::default()).await?;
            let consumer = ch
                .basic_consume(
                    queue.into(),
                    "collector".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>(consumer)
        };
        let mut consumer = tokio::time::timeout(COLLECTOR_STEP, setup)
            .await
            .context("collector: setting up the consumer timed out")??;
        loop {
            let d = match tokio::time::timeout(COLLECTOR_STEP, consumer.next()).await {
                Ok(Some(d)) => d?,
                Ok(None) => break,
                // Quiet is fine on a live connection; a dead one must not be waited on.
                Err(_) if conn.status().connected() => continue,
                Err(_) => anyhow::bail!("collector: connection lost without an error"),
            };
            let id = d
                .properties
                .message_id()
                .as_ref()
                .and_then(|m| m.as_str().parse().ok())
                .unwrap_or(u64::MAX);
            self.received.lock().unwrap().push(Received {
                id,
                routing_key: d.routing_key.as_str().to_string(),
                properties: d.properties.clone(),
                body: d.data.clone(),
                at: Instant::now(),
            });
            tokio::time::timeout(COLLECTOR_STEP, d.ack(BasicAckOptions::default()))
                .await
                .context("collector: ack timed out")??;
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
        }
        Ok(())
    }

    /// Messages received so far (with duplicates).
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// A copy of everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Distinct ids received so far.
    pub fn ids(&self) -> BTreeSet<u64> {
        self.received.lock().unwrap().iter().map(|r| r.id).collect()
    }

    /// Waits until every id of `want` arrived; returns the ids still missing after `timeout`.
    pub async fn wait_for(&self, want: &BTreeSet<u64>, timeout: Duration) -> BTreeSet<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.ids();
            let missing: BTreeSet<u64> = want.difference(&have).copied().collect();
            if missing.is_empty() || Instant::now() >= deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops consuming (at the next message or reconnect).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Published-and-confirmed vs received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Ids the upstream confirmed.
    pub confirmed: usize,
    /// Messages received, duplicates included.
    pub received: usize,
    /// Received more than once (or received although only published unconfirmed, then again).
    pub duplicates: usize,
    /// Confirmed but never received.
    pub missing: usize,
}

impl Tally {
    /// Compares what was confirmed with what a collector received.
    pub fn of(confirmed: &BTreeSet<u64>, received: &[Received]) -> Tally {
        let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
        for r in received {
            *seen.entry(r.id).or_default() += 1;
        }
        Tally {
            confirmed: confirmed.len(),
            received: received.len(),
            duplicates: seen.values().map(|n| n - 1).sum(),
            missing: confirmed.iter().filter(|id| !seen.contains_key(id)).count(),
        }
    }

    /// Prints one line: `CASE: published-confirmed N, received N, duplicates N, missing N`.
    pub fn print(&self, case: &str) {
        println!(
            "{case}: published-confirmed {}, received {}, duplicates {}, missing {}",
            self.confirmed, self.received, self.duplicates, self.missing
        );
    }
}

// ---- setgate status and metrics for federation tests (configs: crate::config) ----

/// The status of link `name` from `/api/links`.
pub async fn link_status(sg: &Setgate, name: &str) -> anyhow::Result<serde_json::Value> {
    status_of(sg, "links", name).await
}

/// The status of shovel `name` from `/api/shovels`.
pub async fn shovel_status(sg: &Setgate, name: &str) -> anyhow::Result<serde_json::Value> {
    status_of(sg, "shovels", name).await
}

/// Entry `name` of `/api/{kind}` (`links` or `shovels`), which answers `{"kind": [...]}`.
async fn status_of(sg: &Setgate, kind: &str, name: &str) -> anyhow::Result<serde_json::Value> {
    let all = sg.get_json(&format!("/api/{kind}")).await?;
    all[kind]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == name).cloned())
        .ok_or_else(|| anyhow::anyhow!("no {kind} entry named {name} in {all}"))
}

/// Waits until link `name` is running (every flow consumes).
pub async fn wait_running(sg: &Setgate, name: &str) -> anyhow::Result<()> {
    wait_until(
        &format!("link {name} running"),
        Duration::from_secs(60),
        || async {
            let s = link_status(sg, name).await.ok()?;
            (s["state"] == "running").then_some(())
        },
    )
    .await
    .map_err(|e| e.context(format!("setgate log:\n{}", sg.log())))
}

/// Sum of the samples of metric `name` whose labels include all of `labels`.
pub async fn metric(sg: &Setgate, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
    let body = sg.get("/metrics").await?.body;
    Ok(body
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum())
}

/// Declares `exchange` (topic) on every node and a durable queue bound to it on each `sinks`.
pub async fn topology(
    exchange: &str,
    nodes: &[&Node],
    sinks: &[(&Node, &str)],
) -> anyhow::Result<()> {
    for n in nodes {
        declare_exchange(&n.amqp_uri(), exchange, "topic").await?;
    }
    for (n, q) in sinks {
        declare_bound_queue(&n.amqp_uri(), q, exchange).await?;
    }
    Ok(())
}

/// A header of a received message.
pub fn header<'a>(r: &'a Received, key: &str) -> Option<&'a AMQPValue> {
    r.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key))
}

/// The `x-received-from` entries of a received message, each as text fields.
pub fn received_from(r: &Received) -> Vec<BTreeMap<String, String>> {
    match header(r, "x-received-from") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .filter_map(|e| e.as_field_table())
            .map(|t| {
                t.inner()
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            AMQPValue::LongString(s) => {
                                String::from_utf8_lossy(s.as_bytes()).into_owned()
                            }
                            AMQPValue::Boolean(b) => b.to_string(),
                            other => format!("{other:?}"),
                        };
                        (k.as_str().to_string(), v)
                    })
                    .collect()
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Waits until `sink` received at least `n` messages.
pub async fn wait_received(sink: &Collector, n: usize) -> anyhow::Result<()> {
    wait_until(
        &format!("{n} messages downstream"),
        Duration::from_secs(60),
        || async { (sink.count() >= n).then_some(()) },
    )
    .await
}

/// Waits until link `name` is in `state`; returns its status.
pub async fn wait_state(
    sg: &Setgate,
    name: &str,
    state: &str,
) -> anyhow::Result<serde_json::Value> {
    wait_state_of(sg, "links", name, state).await
}

/// Waits until shovel `name` is in `state`; returns its status.
pub async fn wait_shovel_state(
    sg: &Setgate,
    name: &str,
    state: &str,
) -> anyhow::Result<serde_json::Value> {
    wait_state_of(sg, "shovels", name, state).await
}

async fn wait_state_of(
    sg: &Setgate,
    kind: &str,
    name: &str,
    state: &str,
) -> anyhow::Result<serde_json::Value> {
    let what = match kind {
        "shovels" => "shovel",
        _ => "link",
    };
    let last = std::sync::Mutex::new(serde_json::Value::Null);
    let found = wait_until(
        &format!("{what} {name} {state}"),
        Duration::from_secs(60),
        || async {
            let s = match status_of(sg, kind, name).await {
                Ok(s) => s,
                Err(e) => {
                    *last.lock().unwrap() = serde_json::Value::String(format!("{e:#}"));
                    return None;
                }
            };
            if s["state"] == state {
                return Some(s);
            }
            *last.lock().unwrap() = s;
            None
        },
    )
    .await;
    // On a timeout, say what it showed instead and what setgate logged.
    found.map_err(|e| {
        e.context(format!(
            "last status of {what} {name}: {}\n---- setgate log (last 40 lines) ----\n{}",
            last.lock().unwrap(),
            log_tail(sg, 40)
        ))
    })
}

/// The last `n` lines of setgate's log.
pub fn log_tail(sg: &Setgate, n: usize) -> String {
    let log = sg.log();
    let tail: Vec<&str> = log.lines().rev().take(n).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    tail.join("\n")
}

/// The management API's view of queue `queue` on the default vhost of `node`, or `None` when it
/// does not exist. Its `messages` (ready + unacknowledged) is sampled every second.
pub async fn queue_info(node: &Node, queue: &str) -> anyhow::Result<Option<serde_json::Value>> {
    let r = node
        .mgmt(
            "GET",
            &format!("/api/queues/%2f/{}", path_segment(queue)),
            None,
        )
        .await?;
    match r.status {
        200 => Ok(Some(r.json()?)),
        404 => Ok(None),
        other => anyhow::bail!("GET queue {queue} on {}: {other} {}", node.name, r.body),
    }
}

/// `messages` (ready + unacknowledged) of `queue` on `node`, once the management API has a
/// figure for it; `None` while the queue does not exist.
pub async fn queue_messages(node: &Node, queue: &str) -> anyhow::Result<Option<u64>> {
    Ok(queue_info(node, queue)
        .await?
        .and_then(|q| q["messages"].as_u64()))
}

/// `s` percent-encoded for one path segment of a management API URL (queue names such as
/// `shovel: x -> set-a` have spaces, colons and `>`).
pub fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
