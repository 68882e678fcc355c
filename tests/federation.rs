//! End-to-end federation: real RabbitMQ nodes, the real setgate binary.
//!
//! Tests that do not break a broker share three nodes (dc1, dc2, dc3) and use their own exchange
//! and queue names; tests that kill or stop a broker start their own. A semaphore caps how many
//! tests run at once so the brokers of a 2-core machine are not starved.

use lapin::types::AMQPValue;
use setgate_testkit::fed::{
    config, declare_exchange, header, link, link_status, metric, publish, received_from, topology,
    upstream, wait_received, wait_running, wait_state, Collector, PublishOptions, Tally,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_20000_persistent_messages_in_order_with_properties() -> anyhow::Result<()> {
    let _p = permit().await;
    let s = shared().await;
    let x = "t-bulk";
    topology(x, &[&s.dc1, &s.dc2], &[(&s.dc2, "t-bulk.sink")]).await?;
    let cfg = config(
        &(upstream("dc1", &[s.dc1.amqp_uri()], "")
            + &link("bulk", &["dc1"], "dc2", &[s.dc2.amqp_uri()], &[x])),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_running(&sg, "bulk").await?;
    let sink = Collector::start(&s.dc2.amqp_uri(), "t-bulk.sink");

    let confirmed = publish(&s.dc1.amqp_uri(), 0..20_000, &PublishOptions::new(x)).await?;
    let missing = sink.wait_for(&confirmed, Duration::from_secs(120)).await;
    let received = sink.received();
    let tally = Tally::of(&confirmed, &received);
    tally.print("20k persistent messages");
    assert!(missing.is_empty() && tally.missing == 0, "{tally:?}");
    assert_eq!(tally.confirmed, 20_000);
    assert_eq!(tally.duplicates, 0, "no fault, no duplicates");

    // Order per routing key.
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &received {
        if let Some(prev) = last.insert(&r.routing_key, r.id) {
            assert!(
                prev < r.id,
                "key {}: {} arrived after {}",
                r.routing_key,
                r.id,
                prev
            );
        }
        assert_eq!(r.routing_key, format!("k{}", r.id % 10));
    }
    // Properties and headers intact, user_id dropped, one x-received-from entry.
    let up_cluster = link_status(&sg, "bulk").await?["flows"][0]["upstream_cluster"].clone();
    for r in received.iter().step_by(997) {
        let want = setgate_testkit::fed::message_properties(r.id);
        let p = &r.properties;
        assert_eq!(p.delivery_mode(), want.delivery_mode());
        assert_eq!(p.content_type(), want.content_type());
        assert_eq!(p.correlation_id(), want.correlation_id());
        assert_eq!(p.app_id(), want.app_id());
        assert_eq!(p.kind(), want.kind());
        assert_eq!(p.priority(), want.priority());
        assert_eq!(p.timestamp(), want.timestamp());
        assert_eq!(
            p.user_id(),
            &None,
            "user_id is dropped without trust_user_id"
        );
        assert_eq!(header(r, "seq"), Some(&AMQPValue::LongLongInt(r.id as i64)));
        assert!(header(r, "origin").is_some());
        assert_eq!(r.body, r.id.to_string().into_bytes());
        let hops = received_from(r);
        assert_eq!(hops.len(), 1, "{hops:?}");
        assert_eq!(hops[0]["exchange"], x);
        assert_eq!(hops[0]["redelivered"], "false");
        assert_eq!(hops[0]["uri"], format!("amqp://{}/%2f", s.dc1.amqp_addr()));
        assert_eq!(
            serde_json::Value::String(hops[0]["cluster-name"].clone()),
            up_cluster
        );
    }

    // Status and metrics agree.
    let st = link_status(&sg, "bulk").await?;
    assert_eq!(st["forwarded"], 20_000, "{st}");
    assert_eq!(st["flows"][0]["queue"], "federation: t-bulk -> dc2");
    let labels = [("link", "bulk"), ("upstream", "dc1"), ("exchange", x)];
    assert_eq!(
        metric(&sg, "setgate_federation_forwarded_total", &labels).await?,
        20_000.0
    );
    assert!(
        metric(
            &sg,
            "setgate_federation_confirm_latency_seconds_count",
            &labels
        )
        .await?
            >= 20_000.0
    );
    assert_eq!(
        metric(&sg, "setgate_federation_flow_running", &labels).await?,
        1.0
    );
    let metrics_text = sg.get("/metrics").await?.body;
    assert!(
        metrics_text.contains("setgate_federation_connected_uri{"),
        "connected URI gauge missing"
    );
    assert!(
        !metrics_text.contains("guest:guest"),
        "a password leaked into /metrics"
    );
    assert!(
        !st.to_string().contains("guest:guest"),
        "a password leaked into the status"
    );
    Ok(())
}

/// Two fresh nodes for a test that kills or stops one of them.
async fn fresh_pair() -> anyhow::Result<(Node, Node)> {
    let (a, b) = tokio::join!(Node::start(), Node::start());
    Ok((a?, b?))
}

/// One link `name` from `up` to `down` for exchange `x`, reconnecting every second.
fn one_link(name: &str, up: &Node, down: &Node, x: &str) -> String {
    config(
        &(upstream("dc1", &[up.amqp_uri()], "")
            + &link(name, &["dc1"], "dc2", &[down.amqp_uri()], &[x])),
    )
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

/// Checks the outcome of a fault test and prints the tally.
fn assert_no_loss(
    case: &str,
    confirmed: &BTreeSet<u64>,
    sink: &Collector,
    before_fault: usize,
) -> Tally {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_when_the_downstream_is_killed_and_restarted() -> anyhow::Result<()> {
    let _p = permit().await;
    let (up, mut down) = fresh_pair().await?;
    let x = "t-kill-down";
    topology(x, &[&up, &down], &[(&down, "sink")]).await?;
    let sg = Setgate::start(BIN, &one_link("kd", &up, &down, x)).await?;
    wait_running(&sg, "kd").await?;
    let sink = Collector::start(&down.amqp_uri(), "sink");
    let publisher = publish_in_background(&up, x, 10_000, 2_000.0);
    wait_received(&sink, 2_000).await?;

    down.kill9();
    let before = sink.count();
    let st = wait_state(&sg, "kd", "reconnecting").await?;
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("downstream dc2"),
        "{st}"
    );
    down.restart().await?;
    let confirmed = publisher.await??;
    sink.wait_for(&confirmed, Duration::from_secs(90)).await;
    assert_no_loss("kill -9 downstream", &confirmed, &sink, before);
    assert_eq!(link_status(&sg, "kd").await?["state"], "running");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_when_the_upstream_is_killed_and_restarted() -> anyhow::Result<()> {
    let _p = permit().await;
    let (mut up, down) = fresh_pair().await?;
    let x = "t-kill-up";
    topology(x, &[&up, &down], &[(&down, "sink")]).await?;
    let sg = Setgate::start(BIN, &one_link("ku", &up, &down, x)).await?;
    wait_running(&sg, "ku").await?;
    let sink = Collector::start(&down.amqp_uri(), "sink");
    let publisher = publish_in_background(&up, x, 10_000, 2_000.0);
    wait_received(&sink, 2_000).await?;

    up.kill9();
    let before = sink.count();
    let st = wait_state(&sg, "ku", "reconnecting").await?;
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("upstream dc1"),
        "{st}"
    );
    up.restart().await?;
    let confirmed = publisher.await??;
    sink.wait_for(&confirmed, Duration::from_secs(90)).await;
    assert_no_loss("kill -9 upstream", &confirmed, &sink, before);
    let reconnects = metric(
        &sg,
        "setgate_federation_reconnects_total",
        &[("link", "ku")],
    )
    .await?;
    assert!(reconnects >= 1.0, "reconnects metric: {reconnects}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_when_setgate_is_killed_and_started_again() -> anyhow::Result<()> {
    let _p = permit().await;
    let s = shared().await;
    let x = "t-kill-sg";
    topology(x, &[&s.dc1, &s.dc2], &[(&s.dc2, "t-kill-sg.sink")]).await?;
    let mut sg = Setgate::start(BIN, &one_link("ks", &s.dc1, &s.dc2, x)).await?;
    wait_running(&sg, "ks").await?;
    let sink = Collector::start(&s.dc2.amqp_uri(), "t-kill-sg.sink");
    let publisher = publish_in_background(&s.dc1, x, 10_000, 2_000.0);
    wait_received(&sink, 2_000).await?;

    sg.kill9();
    let before = sink.count();
    sg.restart().await?;
    wait_running(&sg, "ks").await?;
    let confirmed = publisher.await??;
    sink.wait_for(&confirmed, Duration::from_secs(90)).await;
    assert_no_loss("kill -9 setgate", &confirmed, &sink, before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_when_the_downstream_is_stopped_for_20_seconds() -> anyhow::Result<()> {
    let _p = permit().await;
    let (up, down) = fresh_pair().await?;
    let x = "t-stop-down";
    topology(x, &[&up, &down], &[(&down, "sink")]).await?;
    let sg = Setgate::start(BIN, &one_link("sd", &up, &down, x)).await?;
    wait_running(&sg, "sd").await?;
    let sink = Collector::start(&down.amqp_uri(), "sink");
    let publisher = publish_in_background(&up, x, 16_000, 500.0);
    wait_received(&sink, 2_000).await?;

    down.sigstop();
    // Deliveries the broker had already written to the collector's socket still arrive; count
    // from when the sink has gone quiet.
    let mut before = sink.count();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sink.count();
        if now == before {
            break;
        }
        before = now;
    }
    // The fault itself: a broker that keeps its sockets open and answers nothing for 20 s.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let forwarded_while_stopped = sink.count() - before;
    down.sigcont();
    let confirmed = publisher.await??;
    sink.wait_for(&confirmed, Duration::from_secs(90)).await;
    assert_no_loss("SIGSTOP downstream 20 s", &confirmed, &sink, before);
    assert_eq!(
        forwarded_while_stopped, 0,
        "a stopped broker delivered messages"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_acks_what_was_confirmed() -> anyhow::Result<()> {
    let _p = permit().await;
    let s = shared().await;
    let x = "t-term";
    topology(x, &[&s.dc1, &s.dc2], &[(&s.dc2, "t-term.sink")]).await?;
    let mut sg = Setgate::start(BIN, &one_link("term", &s.dc1, &s.dc2, x)).await?;
    wait_running(&sg, "term").await?;
    let sink = Collector::start(&s.dc2.amqp_uri(), "t-term.sink");
    let publisher = publish_in_background(&s.dc1, x, 8_000, 2_000.0);
    wait_received(&sink, 2_000).await?;

    sg.sigterm();
    let code = sg.wait_exit(Duration::from_secs(20)).await?;
    assert_eq!(code, Some(0), "setgate log:\n{}", sg.log());
    let before = sink.count();
    sg.restart().await?;
    let confirmed = publisher.await??;
    sink.wait_for(&confirmed, Duration::from_secs(90)).await;
    let tally = assert_no_loss("SIGTERM then start", &confirmed, &sink, before);
    assert_eq!(
        tally.duplicates, 0,
        "confirmed messages were not acked on SIGTERM"
    );
    assert!(
        sg.log().contains("flow drained"),
        "no drain logged:\n{}",
        sg.log()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_uri_dead_runs_on_the_second_within_one_attempt() -> anyhow::Result<()> {
    let _p = permit().await;
    let s = shared().await;
    let x = "t-failover";
    topology(x, &[&s.dc1, &s.dc2], &[(&s.dc2, "t-failover.sink")]).await?;
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    // A failed attempt would wait a minute: running within the test's wait proves one attempt.
    let cfg = config(
        &(upstream(
            "dc1",
            &[dead.clone(), s.dc1.amqp_uri()],
            "reconnect_delay = \"60s\"",
        )
        .replace("reconnect_delay = \"1s\"\n", "")
            + &link("fo", &["dc1"], "dc2", &[dead, s.dc2.amqp_uri()], &[x])),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    let st = wait_until("link fo running", Duration::from_secs(30), || async {
        let s = link_status(&sg, "fo").await.ok()?;
        (s["state"] == "running").then_some(s)
    })
    .await?;
    let flow = &st["flows"][0];
    assert_eq!(flow["reconnects"], 0, "{st}");
    assert_eq!(
        flow["upstream_uri"],
        format!("amqp://guest:***@{}/%2f", s.dc1.amqp_addr())
    );
    assert_eq!(
        flow["downstream_uri"],
        format!("amqp://guest:***@{}/%2f", s.dc2.amqp_addr())
    );
    let uri_up = format!("amqp://guest:***@{}/%2f", s.dc1.amqp_addr());
    let labels = [
        ("link", "fo"),
        ("side", "upstream"),
        ("uri", uri_up.as_str()),
    ];
    assert_eq!(
        metric(&sg, "setgate_federation_connected_uri", &labels).await?,
        1.0
    );

    let sink = Collector::start(&s.dc2.amqp_uri(), "t-failover.sink");
    let confirmed = publish(&s.dc1.amqp_uri(), 0..500, &PublishOptions::new(x)).await?;
    assert!(sink
        .wait_for(&confirmed, Duration::from_secs(30))
        .await
        .is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_way_federation_with_max_hops_1_delivers_once_per_side() -> anyhow::Result<()> {
    let _p = permit().await;
    let s = shared().await;
    let x = "t-2way";
    topology(
        x,
        &[&s.dc1, &s.dc2],
        &[(&s.dc1, "t-2way.sink"), (&s.dc2, "t-2way.sink")],
    )
    .await?;
    let cfg = config(
        &(upstream("dc1", &[s.dc1.amqp_uri()], "max_hops = 1")
            + &upstream("dc2", &[s.dc2.amqp_uri()], "max_hops = 1")
            + &link("1to2", &["dc1"], "dc2", &[s.dc2.amqp_uri()], &[x])
            + &link("2to1", &["dc2"], "dc1", &[s.dc1.amqp_uri()], &[x])),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_running(&sg, "1to2").await?;
    wait_running(&sg, "2to1").await?;
    let on1 = Collector::start(&s.dc1.amqp_uri(), "t-2way.sink");
    let on2 = Collector::start(&s.dc2.amqp_uri(), "t-2way.sink");
    let n = 1_000;
    let (opts, u1, u2) = (PublishOptions::new(x), s.dc1.amqp_uri(), s.dc2.amqp_uri());
    let (a, b) = tokio::join!(publish(&u1, 0..n, &opts), publish(&u2, n..2 * n, &opts));
    let all: BTreeSet<u64> = a?.union(&b?).copied().collect();
    assert_eq!(all.len(), 2 * n as usize);
    // Each link forwards the other side's originals and drops what came back.
    for name in ["1to2", "2to1"] {
        wait_until(
            &format!("{name} forwarded and dropped {n}"),
            Duration::from_secs(60),
            || async {
                let st = link_status(&sg, name).await.ok()?;
                (st["forwarded"] == n && st["dropped"] == n).then_some(())
            },
        )
        .await?;
    }
    for (side, sink) in [("dc1", &on1), ("dc2", &on2)] {
        assert!(sink
            .wait_for(&all, Duration::from_secs(30))
            .await
            .is_empty());
        let tally = Tally::of(&all, &sink.received());
        tally.print(&format!("two-way, received on {side}"));
        assert_eq!(
            (tally.received, tally.duplicates, tally.missing),
            (2 * n as usize, 0, 0),
            "{side}"
        );
    }
    let dropped = metric(
        &sg,
        "setgate_federation_dropped_total",
        &[("link", "2to1"), ("reason", "max_hops")],
    )
    .await?;
    assert_eq!(dropped, n as f64);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_of_three_with_max_hops_2_delivers_once_per_cluster() -> anyhow::Result<()> {
    let _p = permit().await;
    let s = shared().await;
    let dc3 = dc3().await;
    let x = "t-ring";
    let nodes = [&s.dc1, &s.dc2, dc3];
    topology(
        x,
        &nodes,
        &[
            (&s.dc1, "t-ring.sink"),
            (&s.dc2, "t-ring.sink"),
            (dc3, "t-ring.sink"),
        ],
    )
    .await?;
    let names = ["dc1", "dc2", "dc3"];
    let mut fed = String::new();
    for (i, n) in nodes.iter().enumerate() {
        fed += &upstream(names[i], &[n.amqp_uri()], "max_hops = 2");
    }
    for i in 0..3 {
        let j = (i + 1) % 3;
        fed += &link(
            &format!("ring{i}"),
            &[names[i]],
            names[j],
            &[nodes[j].amqp_uri()],
            &[x],
        );
    }
    let sg = Setgate::start(BIN, &config(&fed)).await?;
    for i in 0..3 {
        wait_running(&sg, &format!("ring{i}")).await?;
    }
    let sinks: Vec<Collector> = nodes
        .iter()
        .map(|n| Collector::start(&n.amqp_uri(), "t-ring.sink"))
        .collect();
    let n = 500u64;
    let (opts, u1, u2, u3) = (
        PublishOptions::new(x),
        s.dc1.amqp_uri(),
        s.dc2.amqp_uri(),
        dc3.amqp_uri(),
    );
    let (a, b, c) = tokio::join!(
        publish(&u1, 0..n, &opts),
        publish(&u2, n..2 * n, &opts),
        publish(&u3, 2 * n..3 * n, &opts)
    );
    let all: BTreeSet<u64> = a?
        .iter()
        .chain(b?.iter())
        .chain(c?.iter())
        .copied()
        .collect();
    // Every link forwards its own cluster's messages and those one hop old, drops the rest.
    for i in 0..3 {
        let name = format!("ring{i}");
        wait_until(
            &format!("{name} forwarded {} and dropped {n}", 2 * n),
            Duration::from_secs(60),
            || async {
                let st = link_status(&sg, &name).await.ok()?;
                (st["forwarded"] == 2 * n && st["dropped"] == n).then_some(())
            },
        )
        .await?;
    }
    for (i, sink) in sinks.iter().enumerate() {
        assert!(sink
            .wait_for(&all, Duration::from_secs(30))
            .await
            .is_empty());
        let tally = Tally::of(&all, &sink.received());
        tally.print(&format!("ring of three, received on {}", names[i]));
        assert_eq!(
            (tally.received, tally.duplicates, tally.missing),
            (3 * n as usize, 0, 0),
            "{}",
            names[i]
        );
    }
    // A message that made two hops lists both clusters it came from, newest first.
    let two_hops = sinks[2]
        .received()
        .into_iter()
        .find(|r| r.id < n)
        .expect("dc1's message on dc3");
    let hops = received_from(&two_hops);
    let cluster = |st: serde_json::Value| {
        st["flows"][0]["upstream_cluster"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(hops.len(), 2);
    assert_eq!(
        hops[0]["cluster-name"],
        cluster(link_status(&sg, "ring1").await?)
    );
    assert_eq!(
        hops[1]["cluster-name"],
        cluster(link_status(&sg, "ring0").await?)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_link_one_forwards_and_the_other_takes_over() -> anyhow::Result<()> {
    let _p = permit().await;
    let s = shared().await;
    let x = "t-sac";
    topology(x, &[&s.dc1, &s.dc2], &[(&s.dc2, "t-sac.sink")]).await?;
    let cfg = one_link("sac", &s.dc1, &s.dc2, x);
    let mut a = Setgate::start(BIN, &cfg).await?;
    wait_running(&a, "sac").await?;
    let b_cfg = config(&cfg[cfg.find("[[federation").unwrap()..]);
    let b = Setgate::start(BIN, &b_cfg).await?;
    wait_running(&b, "sac").await?;
    let sink = Collector::start(&s.dc2.amqp_uri(), "t-sac.sink");
    let publisher = publish_in_background(&s.dc1, x, 8_000, 2_000.0);
    wait_received(&sink, 2_000).await?;

    let (fa, fb) = (forwarded(&a).await?, forwarded(&b).await?);
    assert!(
        fa > 0 && fb == 0,
        "exactly one instance forwards: a {fa}, b {fb}"
    );
    a.kill9();
    let before = sink.count();
    let confirmed = publisher.await??;
    sink.wait_for(&confirmed, Duration::from_secs(90)).await;
    assert_no_loss(
        "two instances, active one killed",
        &confirmed,
        &sink,
        before,
    );
    let fb = forwarded(&b).await?;
    assert!(fb > 0, "the standby never took over");
    println!("two instances: a forwarded {fa} before it was killed, b forwarded {fb} after");
    Ok(())
}

async fn forwarded(sg: &Setgate) -> anyhow::Result<u64> {
    Ok(link_status(sg, "sac").await?["forwarded"]
        .as_u64()
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_reported_in_the_status_while_retrying() -> anyhow::Result<()> {
    let _p = permit().await;
    let s = shared().await;
    let (missing_x, typed_x, good_x) = ("t-bad-missing", "t-bad-type", "t-bad-good");
    declare_exchange(&s.dc1.amqp_uri(), missing_x, "topic").await?;
    declare_exchange(&s.dc1.amqp_uri(), typed_x, "topic").await?;
    declare_exchange(&s.dc2.amqp_uri(), typed_x, "fanout").await?;
    topology(good_x, &[&s.dc1, &s.dc2], &[]).await?;
    let closed = free_port();
    let unreachable = format!("amqp://guest:secret1@127.0.0.1:{closed}/%2f");
    let wrong_password = format!("amqp://guest:wrong-secret2@{}/%2f", s.dc1.amqp_addr());
    let cfg = config(
        &(upstream("dead", &[unreachable], "")
            + &upstream("badpw", &[wrong_password], "")
            + &upstream("dc1", &[s.dc1.amqp_uri()], "")
            + &link(
                "unreachable",
                &["dead"],
                "dc2",
                &[s.dc2.amqp_uri()],
                &[good_x],
            )
            + &link(
                "credentials",
                &["badpw"],
                "dc2",
                &[s.dc2.amqp_uri()],
                &[good_x],
            )
            + &link(
                "missing",
                &["dc1"],
                "dc2",
                &[s.dc2.amqp_uri()],
                &[missing_x],
            )
            + &link("type", &["dc1"], "dc2", &[s.dc2.amqp_uri()], &[typed_x])
            + &link("good", &["dc1"], "dc2", &[s.dc2.amqp_uri()], &[good_x])),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_running(&sg, "good").await?;
    let expect = [
        ("unreachable", format!("cannot connect to upstream dead: amqp://guest:***@127.0.0.1:{closed}/%2f: ")),
        ("credentials", "ACCESS_REFUSED".to_string()),
        ("credentials", "check the user name and password".to_string()),
        ("missing", format!("downstream exchange \"{missing_x}\" does not exist on dc2 (vhost /); declare it there")),
        (
            "type",
            format!("exchange \"{typed_x}\" is of type fanout on downstream dc2 but topic on upstream dc1"),
        ),
    ];
    for (name, text) in &expect {
        let st = wait_until(
            &format!("{name} reports {text:?}"),
            Duration::from_secs(30),
            || async {
                let st = link_status(&sg, name).await.ok()?;
                let err = st["last_error"].as_str()?.to_string();
                (st["state"] == "reconnecting" && err.contains(text.as_str())).then_some(st)
            },
        )
        .await
        .map_err(|e| e.context(format!("setgate log:\n{}", sg.log())))?;
        assert!(st["next_attempt"].is_string(), "{st}");
        println!("{name}: {}", st["last_error"]);
    }
    let everything =
        sg.get_json("/api/links").await?.to_string() + &sg.get("/metrics").await?.body + &sg.log();
    for secret in ["secret1", "wrong-secret2"] {
        assert!(!everything.contains(secret), "password {secret} leaked");
    }
    assert!(
        sg.log().contains("does not exist on dc2"),
        "the error is not logged"
    );

    // Still retrying: once the exchange exists, the link runs; nothing crashed meanwhile.
    declare_exchange(&s.dc2.amqp_uri(), missing_x, "topic").await?;
    wait_running(&sg, "missing").await?;
    let reconnects = link_status(&sg, "type").await?["flows"][0]["reconnects"]
        .as_u64()
        .unwrap_or(0);
    assert!(reconnects >= 1, "the wrong-type link does not retry");
    assert_eq!(sg.get("/healthz").await?.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_restarts_only_changed_links() -> anyhow::Result<()> {
    let _p = permit().await;
    let s = shared().await;
    let (x, y) = ("t-reload-x", "t-reload-y");
    topology(x, &[&s.dc1, &s.dc2], &[(&s.dc2, "t-reload.sink")]).await?;
    topology(y, &[&s.dc1, &s.dc2], &[]).await?;
    let base = upstream("dc1", &[s.dc1.amqp_uri()], "")
        + &link("keep", &["dc1"], "dc2", &[s.dc2.amqp_uri()], &[x]);
    let cfg = config(&base);
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_running(&sg, "keep").await?;
    let since = link_status(&sg, "keep").await?["flows"][0]["since"].clone();

    let header = &cfg[..cfg.find("[[federation").unwrap()];
    sg.reload(&format!(
        "{header}{base}{}",
        link("added", &["dc1"], "dc2", &[s.dc2.amqp_uri()], &[y])
    ))?;
    wait_running(&sg, "added").await?;
    assert_eq!(
        link_status(&sg, "keep").await?["flows"][0]["since"],
        since,
        "an unchanged link was restarted"
    );

    // An invalid file changes nothing.
    sg.reload(&format!(
        "{header}{base}[[federation.link]]\nupstreams = [\"nope\"]\n"
    ))?;
    wait_until(
        "the reload to be refused",
        Duration::from_secs(10),
        || async { sg.log().contains("reload refused").then_some(()) },
    )
    .await?;
    assert_eq!(link_status(&sg, "added").await?["state"], "running");

    sg.reload(&format!("{header}{base}"))?;
    wait_until("link added to go away", Duration::from_secs(30), || async {
        link_status(&sg, "added").await.is_err().then_some(())
    })
    .await?;
    let sink = Collector::start(&s.dc2.amqp_uri(), "t-reload.sink");
    let confirmed = publish(&s.dc1.amqp_uri(), 0..200, &PublishOptions::new(x)).await?;
    assert!(sink
        .wait_for(&confirmed, Duration::from_secs(30))
        .await
        .is_empty());
    Ok(())
}

#[test]
fn check_reports_every_federation_error() -> anyhow::Result<()> {
    let dir = setgate_testkit::unique_dir("fed-check");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[admin]\nlisten = \"127.0.0.1:1\"\n\
         [[federation.upstream]]\nname = \"dc1\"\nuris = [\"http://fed:topsecret@h/\"]\nprefetch_count = 0\n\
         [[federation.link]]\nupstreams = [\"dc9\"]\ndownstream = { name = \"dc2\", uris = [\"amqp://h:5672/%2f\"] }\nexchanges = []\n",
    )?;
    let out = std::process::Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for want in [
        "federation.upstream[0].uris[0]: http://fed:***@h/ scheme must be amqp or amqps",
        "federation.upstream[0].prefetch_count: must be between 1 and 65535, got 0",
        "federation.link[0].upstreams: upstream \"dc9\" is not defined; use one of dc1",
        "federation.link[0].exchanges: is empty",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("topsecret"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
