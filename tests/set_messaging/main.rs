//! SET messaging end to end: shovels, per-message SET routing and global data, with the real
//! setgate binary, real RabbitMQ nodes and lapin clients.
//!
//! Each "cluster" (the center, set-a, set-b) is one RabbitMQ node. Tests that leave the brokers
//! running share four nodes (those three, plus `hq`, an upstream with RabbitMQ's own shovel
//! plugin); tests that kill a broker take turns on three nodes of their own. Every test uses its
//! own exchanges and queues (prefixed with its number), so no test sees another's messages.
//! One module per concern.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod control;
mod global_data;
mod oneshot;
mod routing;
mod set_down;
mod shovels;

// What every module uses; each starts with `use super::*`.
use common::{route_cli, BIN};
use setgate_testkit::config::{Config, Destination, Link, Pool, Routing, Shovel, Source, Upstream};
use setgate_testkit::fed::{
    declare_bound_queue, declare_exchange, header, link_status, log_tail, metric, publish,
    queue_info, queue_messages, shovel_status, wait_running, wait_shovel_state, Collector,
    KeyHeader, PublishOptions, Received, Tally,
};
use setgate_testkit::{free_port, wait_until, Node, NodeOptions, Setgate};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, MutexGuard, OnceCell};

/// The three clusters a routed flow delivers to, by the names `setgate route` gives them: a
/// SET's name, or `center` (the default pool) for keys of no SET.
const CLUSTERS: [&str; 3] = ["center", "set-a", "set-b"];

/// The header that names a message's user.
const KEY_HEADER: &str = "x-user-id";

/// How many users the routed tests publish for.
const USERS: usize = 300;

fn user(i: usize) -> String {
    format!("user-{i:03}")
}

fn users() -> Vec<String> {
    (0..USERS).map(user).collect()
}

/// One node per cluster.
struct Clusters {
    center: Node,
    a: Node,
    b: Node,
}

impl Clusters {
    async fn start() -> Clusters {
        let (center, a, b) = tokio::join!(Node::start(), Node::start(), Node::start());
        Clusters {
            center: center.expect("start the center's broker"),
            a: a.expect("start set-a's broker"),
            b: b.expect("start set-b's broker"),
        }
    }

    /// The node of cluster `name` (one of [`CLUSTERS`]).
    fn node(&self, name: &str) -> &Node {
        match name {
            "center" => &self.center,
            "set-a" => &self.a,
            "set-b" => &self.b,
            other => panic!("no cluster {other}"),
        }
    }

    /// Restarts any node a failed test left killed.
    async fn ensure_up(&mut self) -> anyhow::Result<()> {
        for n in [&mut self.center, &mut self.a, &mut self.b] {
            if n.pid().is_none() {
                n.restart().await?;
            }
        }
        Ok(())
    }
}

/// The brokers no test breaks.
struct Steady {
    /// An upstream that is none of the clusters, with RabbitMQ's shovel plugin enabled.
    hq: Node,
    clusters: Clusters,
}

static STEADY: OnceCell<Steady> = OnceCell::const_new();

async fn steady() -> &'static Steady {
    STEADY
        .get_or_init(|| async {
            let with_shovel = NodeOptions {
                plugins: vec!["rabbitmq_shovel".into()],
                ..Default::default()
            };
            let (hq, clusters) = tokio::join!(Node::start_with(with_shovel), Clusters::start());
            Steady {
                hq: hq.expect("start hq (with rabbitmq_shovel)"),
                clusters,
            }
        })
        .await
}

static FAULTY: OnceCell<Mutex<Clusters>> = OnceCell::const_new();

/// The brokers the kill -9 tests break, one test at a time, all running when handed out.
async fn faulty() -> MutexGuard<'static, Clusters> {
    let cell = FAULTY
        .get_or_init(|| async { Mutex::new(Clusters::start().await) })
        .await;
    let mut guard = cell.lock().await;
    guard
        .ensure_up()
        .await
        .expect("restart a broker a failed test left killed");
    guard
}

/// set-a and set-b (each other's failover) by buckets, keys of no SET to the center,
/// user-007 pinned to the center; each SET with its cluster's messaging URIs.
fn routing(c: &Clusters) -> Routing {
    Routing::new("center")
        .buckets(10, &[("0-4", "set-a"), ("5-9", "set-b")])
        .default_uris(&[c.center.amqp_uri()])
        .set("set-a", "set-a", "set-b")
        .set("set-b", "set-b", "set-a")
        .uris("set-a", &[c.a.amqp_uri()])
        .uris("set-b", &[c.b.amqp_uri()])
        .override_key("user-007", "center")
}

/// A config with a pool per cluster and [`routing`]: what a routed flow needs; tests add the
/// flow.
fn base_config(c: &Clusters) -> Config {
    let pool = |name: &str, node: &Node| Pool::new(name).server("n1", node.amqp_addr());
    Config::new()
        .shutdown_grace("2s")
        .pool(pool("center", &c.center))
        .pool(pool("set-a", &c.a))
        .pool(pool("set-b", &c.b))
        .routing(routing(c))
}

/// `{ route = "sets", key = "header:x-user-id", exchange }`.
fn to_sets(exchange: &str) -> Destination {
    Destination::sets(&format!("header:{KEY_HEADER}")).exchange_name(exchange)
}

/// Where `setgate route --config FILE` sends each of `keys`: a SET, or `center`.
fn routes(sg: &Setgate, keys: &[String]) -> BTreeMap<String, String> {
    route_cli(&sg.config_path(), keys)
        .into_iter()
        .map(|(k, (set, pool, _))| (k, set.unwrap_or(pool)))
        .collect()
}

/// Users per cluster in `routes`; fails unless both SETs have a fair share and user-007 (the
/// override) is on the center.
fn spread(routes: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for c in routes.values() {
        *per.entry(c.clone()).or_default() += 1;
    }
    assert!(
        per.get("set-a").copied().unwrap_or(0) > 50 && per.get("set-b").copied().unwrap_or(0) > 50,
        "setgate route should spread {} users over both SETs: {per:?}",
        routes.len()
    );
    assert_eq!(
        routes.get("user-007").map(String::as_str),
        Some("center"),
        "user-007 is overridden to the default pool"
    );
    per
}

/// Publisher options for `exchange`: messages for `users` in turn (header `x-user-id`).
fn keyed(exchange: &str, users: Vec<String>) -> PublishOptions {
    PublishOptions {
        window: 100,
        key_header: Some(KeyHeader::new(KEY_HEADER, users)),
        ..PublishOptions::new(exchange)
    }
}

/// Which cluster each of `ids` belongs on: cluster -> ids (every cluster present).
fn expected_by_cluster(
    ids: &BTreeSet<u64>,
    key: &KeyHeader,
    routes: &BTreeMap<String, String>,
) -> BTreeMap<String, BTreeSet<u64>> {
    let mut by: BTreeMap<String, BTreeSet<u64>> = CLUSTERS
        .iter()
        .map(|c| (c.to_string(), BTreeSet::new()))
        .collect();
    for &id in ids {
        let user = key.user_of(id);
        let cluster = routes
            .get(user)
            .unwrap_or_else(|| panic!("no route for {user}"));
        by.get_mut(cluster).unwrap().insert(id);
    }
    by
}

/// A sink on each cluster: exchange `exchange` (topic) with the durable queue `queue` bound to
/// it with `#`, and a collector on that queue.
async fn sinks(
    c: &Clusters,
    exchange: &str,
    queue: &str,
) -> anyhow::Result<BTreeMap<String, Collector>> {
    let mut out = BTreeMap::new();
    for name in CLUSTERS {
        let node = c.node(name);
        declare_exchange(&node.amqp_uri(), exchange, "topic").await?;
        declare_bound_queue(&node.amqp_uri(), queue, exchange).await?;
        out.insert(name.to_string(), Collector::start(&node.amqp_uri(), queue));
    }
    Ok(out)
}

/// The `x-user-id` header of a received message.
fn user_header(r: &Received) -> Option<String> {
    match header(r, KEY_HEADER) {
        Some(lapin::types::AMQPValue::LongString(s)) => {
            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        _ => None,
    }
}

/// Waits (up to `timeout`) until every cluster's sink has all of its expected messages, then
/// fails if any is missing or if a sink holds a message that belongs elsewhere.
async fn assert_routed(
    case: &str,
    sinks: &BTreeMap<String, Collector>,
    expected: &BTreeMap<String, BTreeSet<u64>>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    for (cluster, want) in expected {
        let left = deadline.saturating_duration_since(Instant::now());
        sinks[cluster].wait_for(want, left).await;
    }
    let mut problems = Vec::new();
    for (cluster, want) in expected {
        let got = sinks[cluster].received();
        Tally::of(want, &got).print(&format!("{case}: {cluster}"));
        let have: BTreeSet<u64> = got.iter().map(|r| r.id).collect();
        let missing: Vec<u64> = want.difference(&have).copied().collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{cluster}: {} of its {} messages never arrived (lost or sent elsewhere), e.g. ids {:?}",
                missing.len(),
                want.len(),
                &missing[..missing.len().min(10)]
            ));
        }
        let wrong: Vec<(u64, Option<String>)> = got
            .iter()
            .filter(|r| !want.contains(&r.id))
            .map(|r| (r.id, user_header(r)))
            .collect();
        // Published with routing key k{id % 10} (PublishOptions' 10 keys); held or not, kept.
        let rekeyed: Vec<(u64, &str)> = got
            .iter()
            .filter(|r| r.routing_key != format!("k{}", r.id % 10))
            .map(|r| (r.id, r.routing_key.as_str()))
            .collect();
        if !rekeyed.is_empty() {
            problems.push(format!(
                "{cluster}: {} messages arrived with another routing key than their own, e.g. {:?}",
                rekeyed.len(),
                &rekeyed[..rekeyed.len().min(10)]
            ));
        }
        if !wrong.is_empty() {
            problems.push(format!(
                "{cluster}: {} messages that belong on another cluster arrived here, e.g. (id, user) {:?}",
                wrong.len(),
                &wrong[..wrong.len().min(10)]
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{case}: every message should land on the cluster `setgate route` names for its user, \
         once at least:\n{}",
        problems.join("\n")
    );
}

/// The longest time `sink` went without a message between `from` and `to` (counting from
/// `from` to its first message and from its last one to `to`).
fn longest_gap(sink: &Collector, from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = sink
        .received()
        .iter()
        .map(|r| r.at)
        .filter(|t| *t >= from && *t <= to)
        .collect();
    times.sort();
    let mut prev = from;
    let mut longest = Duration::ZERO;
    for t in times.into_iter().chain(std::iter::once(to)) {
        longest = longest.max(t - prev);
        prev = t;
    }
    longest
}

/// Every `last_error` text anywhere in a status document (the shovel's own, its flows', its SETs').
fn last_errors(status: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "last_error" {
                        if let Some(s) = v.as_str() {
                            out.push(s.to_string());
                        }
                    }
                    walk(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(status, &mut out);
    out
}

/// Publishes `n` messages for `users` at `rate` per second on `exchange` of `node`, in the
/// background.
fn paced_publisher(
    node: &Node,
    exchange: &str,
    ids: std::ops::Range<u64>,
    rate: f64,
    users: Vec<String>,
) -> tokio::task::JoinHandle<anyhow::Result<BTreeSet<u64>>> {
    let uri = node.amqp_uri();
    let opts = PublishOptions {
        rate: Some(rate),
        window: 50,
        ..keyed(exchange, users)
    };
    tokio::spawn(async move { publish(&uri, ids, &opts).await })
}

/// Field `key` of SET (or `default`) `set` in a status document's `sets`, as a number.
fn set_count(status: &serde_json::Value, set: &str, key: &str) -> Option<u64> {
    status["sets"][set][key].as_u64()
}

/// `sets` calls the center `default`.
fn status_key(cluster: &str) -> &str {
    match cluster {
        "center" => "default",
        other => other,
    }
}
