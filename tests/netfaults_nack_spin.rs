//! A downstream that refuses publishes (a queue at its `x-max-length` with
//! `x-overflow = reject-publish` nacks them) must not be spun on: every refused message goes back
//! upstream, and the link pauses, longer each round, instead of republishing it at once at the
//! speed of both brokers. The pause is counted and shown in the status, and once the downstream
//! has room again every message arrives.

mod netfaults_common;

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use netfaults_common::{config, cpu_seconds, default_link, BIN};
use setgate_testkit::fed::{
    declare_exchange, link_status, metric, publish, wait_running, Collector, PublishOptions,
};
use setgate_testkit::{amqp, wait_until, Node, Setgate};
use std::time::{Duration, Instant};

const MESSAGES: u64 = 300;
const ROOM: i64 = 20;
/// Nacks per second allowed while the downstream refuses. With the backoff (250 ms doubling to
/// 5 s, 280 refused messages per round) the 10 s window below sees about 3 rounds, ~85/s;
/// without it the flow republishes as fast as the brokers nack, thousands per second.
const NACK_RATE_LIMIT: f64 = 300.0;
const WINDOW: Duration = Duration::from_secs(10);

/// A queue bound to `exchange` that takes `ROOM` messages and nacks the rest.
async fn full_queue(uri: &str, queue: &str, exchange: &str) -> anyhow::Result<()> {
    let conn = amqp::connect(uri).await?;
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(ROOM));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from(b"reject-publish".to_vec())),
    );
    ch.queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let _ = conn.close(200, "OK".into()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_nacks_are_backed_off_not_spun_on() -> anyhow::Result<()> {
    let (up, down) = tokio::join!(Node::start(), Node::start());
    let (up, down) = (up?, down?);
    let x = "nf-nack";
    declare_exchange(&up.amqp_uri(), x, "topic").await?;
    declare_exchange(&down.amqp_uri(), x, "topic").await?;
    full_queue(&down.amqp_uri(), "nf-nack.full", x).await?;
    let cfg = config(&default_link(
        "full",
        &up.amqp_uri(),
        &down.amqp_uri(),
        x,
        "",
    ));
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_running(&sg, "full").await?;
    let pid = sg.pid().expect("setgate runs");

    let confirmed = publish(&up.amqp_uri(), 0..MESSAGES, &PublishOptions::new(x)).await?;
    let labels = [("link", "full")];
    let nacked = || async {
        metric(&sg, "setgate_federation_nacked_total", &labels)
            .await
            .unwrap_or(0.0)
    };
    wait_until("the first nacks", Duration::from_secs(30), || async {
        (nacked().await > 0.0).then_some(())
    })
    .await?;

    // The status says what is going on while the downstream refuses.
    let activity = wait_until(
        "a backoff in the status",
        Duration::from_secs(30),
        || async {
            let s = link_status(&sg, "full").await.ok()?;
            let a = s["flows"][0]["activity"].as_str()?.to_string();
            (s["state"] == "running" && a.starts_with("backing off")).then_some(a)
        },
    )
    .await?;

    // Measure over a fixed window (the window is the measurement, not a wait for an event).
    let (n0, cpu0, t0) = (nacked().await, cpu_seconds(pid)?, Instant::now());
    tokio::time::sleep(WINDOW).await;
    let (n1, cpu1, secs) = (
        nacked().await,
        cpu_seconds(pid)?,
        t0.elapsed().as_secs_f64(),
    );
    let rate = (n1 - n0) / secs;
    let cpu = 100.0 * (cpu1 - cpu0) / secs;
    let backoffs = metric(
        &sg,
        "setgate_federation_backoffs_total",
        &[("link", "full"), ("reason", "nack")],
    )
    .await?;
    println!(
        "downstream refusing: {rate:.0} nacks/s, setgate CPU {cpu:.0}%, {backoffs} backoffs, status activity: {activity}"
    );
    assert!(backoffs > 0.0, "backoffs are counted");
    assert!(
        rate <= NACK_RATE_LIMIT,
        "{rate:.0} nacks/s while the downstream refuses: the flow spins (limit {NACK_RATE_LIMIT}/s)"
    );

    // Room again: a consumer drains the queue, and every message arrives.
    let sink = Collector::start(&down.amqp_uri(), "nf-nack.full");
    let missing = sink.wait_for(&confirmed, Duration::from_secs(60)).await;
    assert!(
        missing.is_empty(),
        "missing after the downstream had room: {missing:?}"
    );
    assert_eq!(confirmed.len() as u64, MESSAGES);
    wait_until(
        "the activity back to forwarding or idle",
        Duration::from_secs(30),
        || async {
            let s = link_status(&sg, "full").await.ok()?;
            let a = s["flows"][0]["activity"].as_str()?.to_string();
            (!a.starts_with("backing off")).then_some(())
        },
    )
    .await?;
    Ok(())
}
