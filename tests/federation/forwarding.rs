//! Forwarding without faults: 20,000 messages in order with their properties, two-way and ring
//! federation delivering once per cluster.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_20000_persistent_messages_in_order_with_properties() -> anyhow::Result<()> {
    let _p = permit().await;
    let s = shared().await;
    let x = "t-bulk";
    topology(x, &[&s.dc1, &s.dc2], &[(&s.dc2, "t-bulk.sink")]).await?;
    let cfg = config()
        .upstream(Upstream::new("dc1", &[s.dc1.amqp_uri()]))
        .link(link("bulk", "dc1", "dc2", &s.dc2, x));
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
    let cfg = config()
        .upstream(Upstream::new("dc1", &[s.dc1.amqp_uri()]).max_hops(1))
        .upstream(Upstream::new("dc2", &[s.dc2.amqp_uri()]).max_hops(1))
        .link(link("1to2", "dc1", "dc2", &s.dc2, x))
        .link(link("2to1", "dc2", "dc1", &s.dc1, x));
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
        let missing = sink.wait_for(&all, Duration::from_secs(30)).await;
        assert!(missing.is_empty(), "missing {missing:?}");
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
    let mut cfg = config();
    for (i, n) in nodes.iter().enumerate() {
        cfg = cfg.upstream(Upstream::new(names[i], &[n.amqp_uri()]).max_hops(2));
    }
    for i in 0..3 {
        let j = (i + 1) % 3;
        cfg = cfg.link(link(&format!("ring{i}"), names[i], names[j], nodes[j], x));
    }
    let sg = Setgate::start(BIN, &cfg).await?;
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
        let missing = sink.wait_for(&all, Duration::from_secs(30)).await;
        assert!(missing.is_empty(), "missing {missing:?}");
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

/// With `mandatory`, a message the downstream cannot route is returned, stays upstream, and
/// moves once a queue is bound for it, while the routable ones go on. setgate's publishing
/// connection matches each return to its publish's confirm; a return taken for an ack would lose
/// the message, so every unroutable message must arrive in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_returns_keep_unroutable_messages_upstream_until_they_route() -> anyhow::Result<()>
{
    let _p = permit().await;
    let s = shared().await;
    let x = "t-mandatory";
    let sink = "t-mandatory.sink";
    topology(x, &[&s.dc1, &s.dc2], &[]).await?;
    // k0 routes downstream; k1 does not until it is bound below.
    declare_queue_bound_by(&s.dc2.amqp_uri(), sink, x, &["k0"]).await?;
    let cfg = config()
        .upstream(Upstream::new("dc1", &[s.dc1.amqp_uri()]))
        .link(link("mand", "dc1", "dc2", &s.dc2, x).with("mandatory", true));
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_running(&sg, "mand").await?;
    let collector = Collector::start(&s.dc2.amqp_uri(), sink);

    let mut opts = PublishOptions::new(x);
    opts.keys = 2;
    let confirmed = publish(&s.dc1.amqp_uri(), 0..2_000, &opts).await?;
    let routable: BTreeSet<u64> = confirmed.iter().copied().filter(|id| id % 2 == 0).collect();
    let missing = collector.wait_for(&routable, Duration::from_secs(90)).await;
    assert!(
        missing.is_empty(),
        "routable messages missing: {}",
        missing.len()
    );
    assert!(
        collector.ids().iter().all(|id| id % 2 == 0),
        "an unroutable message arrived before its key was bound"
    );
    let flow = &link_status(&sg, "mand").await?["flows"][0];
    assert!(
        flow["rejected"].as_u64().unwrap_or(0) > 0,
        "no publish was returned: {flow}"
    );

    declare_queue_bound_by(&s.dc2.amqp_uri(), sink, x, &["k1"]).await?;
    let missing = collector
        .wait_for(&confirmed, Duration::from_secs(90))
        .await;
    let tally = Tally::of(&confirmed, &collector.received());
    tally.print("mandatory, k1 bound late");
    assert!(missing.is_empty() && tally.missing == 0, "{tally:?}");
    Ok(())
}
