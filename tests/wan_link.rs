//! A federation link over a slow, lossy WAN (50 ms round trip, 1 % of packets dropped each way)
//! keeps at-least-once, and its throughput is printed next to the same link on loopback.

mod common;

use common::BIN;
use setgate_testkit::config::{Config, Link, Upstream};
use setgate_testkit::fed::{self, Collector, PublishOptions, Tally};
use setgate_testkit::wan::WanLink;
use setgate_testkit::{Node, Setgate};
use std::time::{Duration, Instant};

const MESSAGES: u64 = 5_000;

fn config(upstream_uri: &str, downstream_uri: &str) -> Config {
    Config::new()
        .shutdown_grace("5s")
        .upstream(Upstream::new("dc1", &[upstream_uri]))
        .link(Link::new(
            "wan",
            &["dc1"],
            "dc2",
            &[downstream_uri],
            &["wan.x"],
        ))
}

/// Drains a backlog: publishes `ids` upstream while the link is down (its upstream queue exists
/// from a first run), then starts the link and returns (messages/s from its start to the last
/// arrival downstream, the tally). A drain measures the link, not the publisher.
async fn run_case(
    case: &str,
    up: &Node,
    link_uri: &str,
    down: &Node,
    ids: std::ops::Range<u64>,
) -> anyhow::Result<(f64, Tally)> {
    let queue = format!("wan-sink-{case}");
    fed::declare_bound_queue(&down.amqp_uri(), &queue, "wan.x").await?;
    let cfg = config(link_uri, &down.amqp_uri());
    let first = Setgate::start(BIN, &cfg).await?;
    fed::wait_running(&first, "wan").await?;
    drop(first);
    let n = (ids.end - ids.start) as usize;
    let confirmed = fed::publish(&up.amqp_uri(), ids, &PublishOptions::new("wan.x")).await?;
    let sink = Collector::start(&down.amqp_uri(), &queue);
    let started = Instant::now();
    let _sg = Setgate::start(BIN, &cfg).await?;
    fed::wait_received(&sink, n).await?;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    // Anything still in flight (a redelivered duplicate) has a moment to arrive and be counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.stop();
    let tally = Tally::of(&confirmed, &sink.received());
    tally.print(case);
    println!("{case}: drained {n} messages at {rate:.0} msg/s");
    Ok((rate, tally))
}

#[tokio::test]
async fn a_link_over_a_slow_lossy_wan_loses_nothing() -> anyhow::Result<()> {
    let (up, down) = (Node::start().await?, Node::start().await?);
    for n in [&up, &down] {
        fed::declare_exchange(&n.amqp_uri(), "wan.x", "topic").await?;
    }
    let (loopback, t1) = run_case("loopback", &up, &up.amqp_uri(), &down, 0..MESSAGES).await?;
    let wan = WanLink::start(up.amqp_addr(), Duration::from_millis(25), 0.01).await?;
    let wan_uri = format!("amqp://guest:guest@{}/%2f", wan.addr);
    let (slow, t2) = run_case("wan", &up, &wan_uri, &down, MESSAGES..2 * MESSAGES).await?;
    println!(
        "federation link, 50 ms RTT + 1% loss: {slow:.0} msg/s = {:.2} of loopback ({loopback:.0} msg/s)",
        slow / loopback
    );
    for t in [t1, t2] {
        assert_eq!(t.missing, 0, "{t:?}");
        assert_eq!(t.confirmed, MESSAGES as usize, "{t:?}");
    }
    Ok(())
}
