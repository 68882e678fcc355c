//! End-to-end federation: real RabbitMQ nodes, the real setgate binary.
//!
//! Tests that do not break a broker share three nodes (dc1, dc2, dc3) and use their own exchange
//! and queue names; tests that kill or stop a broker start their own. A semaphore caps how many
//! tests run at once so the brokers of a 2-core machine are not starved. One test binary, so the
//! shared nodes start once; one module per concern.

mod faults;
mod forwarding;
mod status;
mod tls;

// What every module uses; each starts with `use super::*`.
use lapin::types::AMQPValue;
use setgate_testkit::config::{Config, Link, Upstream};
use setgate_testkit::fed::{
    declare_exchange, declare_queue_bound_by, header, link_status, metric, publish, received_from,
    topology, wait_received, wait_running, wait_state, Collector, PublishOptions, Tally,
};
use setgate_testkit::{free_port, wait_until, Node, Setgate};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit};

const BIN: &str = env!("CARGO_BIN_EXE_setgate");

/// Concurrent tests. Each uses at most two brokers of its own plus the shared ones.
static PERMITS: Semaphore = Semaphore::const_new(3);

async fn permit() -> SemaphorePermit<'static> {
    PERMITS.acquire().await.expect("semaphore closed")
}

/// Brokers shared by every test that leaves them running.
struct Shared {
    dc1: Node,
    dc2: Node,
}

static SHARED: OnceCell<Shared> = OnceCell::const_new();
static DC3: OnceCell<Node> = OnceCell::const_new();

async fn shared() -> &'static Shared {
    SHARED
        .get_or_init(|| async {
            let (dc1, dc2) = tokio::join!(Node::start(), Node::start());
            Shared {
                dc1: dc1.expect("start dc1"),
                dc2: dc2.expect("start dc2"),
            }
        })
        .await
}

async fn dc3() -> &'static Node {
    DC3.get_or_init(|| async { Node::start().await.expect("start dc3") })
        .await
}

/// Two fresh nodes for a test that kills or stops one of them.
async fn fresh_pair() -> anyhow::Result<(Node, Node)> {
    let (a, b) = tokio::join!(Node::start(), Node::start());
    Ok((a?, b?))
}

/// A config for federation tests: a 10 s shutdown grace, no listeners.
fn config() -> Config {
    Config::new().shutdown_grace("10s")
}

/// One link `name` from `up` to `down` for exchange `x`, reconnecting every second.
fn one_link(name: &str, up: &Node, down: &Node, x: &str) -> Config {
    config()
        .upstream(Upstream::new("dc1", &[up.amqp_uri()]))
        .link(link(name, "dc1", "dc2", down, x))
}

/// Link `name` for exchange `x` from upstream `up` to the downstream `down` on node `to`.
fn link(name: &str, up: &str, down: &str, to: &Node, x: &str) -> Link {
    Link::new(name, &[up], down, &[to.amqp_uri()], &[x])
}

/// Publishes `n` messages at `rate` on `up`'s exchange `x` in the background.
fn publish_in_background(
    up: &Node,
    x: &str,
    n: u64,
    rate: f64,
) -> tokio::task::JoinHandle<anyhow::Result<BTreeSet<u64>>> {
    let uri = up.amqp_uri();
    let mut opts = PublishOptions::new(x);
    opts.rate = Some(rate);
    opts.window = 200;
    tokio::spawn(async move { publish(&uri, 0..n, &opts).await })
}

/// The sink's count once it has gone quiet (unchanged for half a second): deliveries a broker
/// had already written to the collector's socket, or publishes it read just before a fault,
/// still arrive for a moment after it.
async fn quiet_count(sink: &Collector) -> usize {
    let mut before = sink.count();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sink.count();
        if now == before {
            return now;
        }
        before = now;
    }
}

/// Waits (up to 90 s) for every confirmed message, then checks the outcome of a fault test and
/// prints the tally.
async fn assert_no_loss(
    sg: &Setgate,
    case: &str,
    confirmed: &BTreeSet<u64>,
    sink: &Collector,
    before_fault: usize,
) -> Tally {
    let missing = sink.wait_for(confirmed, Duration::from_secs(90)).await;
    if !missing.is_empty() {
        // Where the flow was when messages stopped arriving: the first thing to read.
        match sg.get_json("/api/links").await {
            Ok(links) => eprintln!(
                "{case}: links while {} messages are missing: {links:#}",
                missing.len()
            ),
            Err(e) => eprintln!("{case}: /api/links did not answer: {e}"),
        }
    }
    let received = sink.received();
    let tally = Tally::of(confirmed, &received);
    tally.print(case);
    let missing: Vec<u64> = confirmed
        .difference(&sink.ids())
        .copied()
        .take(10)
        .collect();
    assert_eq!(tally.missing, 0, "{case}: lost messages, e.g. {missing:?}");
    assert!(
        before_fault > 0,
        "{case}: nothing was forwarded before the fault"
    );
    assert!(
        received.len() > before_fault,
        "{case}: nothing was forwarded after the fault ({before_fault} before)"
    );
    assert!(
        before_fault < confirmed.len(),
        "{case}: the fault came after the last message"
    );
    tally
}
