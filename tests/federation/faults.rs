//! No loss when something fails: the downstream, the upstream or setgate killed, a broker
//! stopped, setgate stopped by SIGTERM, a dead first URI, the active one of two instances killed.

use super::*;

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
    assert_no_loss(&sg, "kill -9 downstream", &confirmed, &sink, before).await;
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
    assert_no_loss(&sg, "kill -9 upstream", &confirmed, &sink, before).await;
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
    assert_no_loss(&sg, "kill -9 setgate", &confirmed, &sink, before).await;
    Ok(())
}

/// Upstream acks go out in batches, or a short while after the first of them was ready: a
/// trickle far below a batch must still be acked, or a restart would deliver it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_is_acked_upstream_without_waiting_for_a_batch() -> anyhow::Result<()> {
    let _p = permit().await;
    let s = shared().await;
    let x = "t-trickle";
    topology(x, &[&s.dc1, &s.dc2], &[(&s.dc2, "t-trickle.sink")]).await?;
    let mut sg = Setgate::start(BIN, &one_link("trickle", &s.dc1, &s.dc2, x)).await?;
    wait_running(&sg, "trickle").await?;
    let sink = Collector::start(&s.dc2.amqp_uri(), "t-trickle.sink");
    let confirmed = publish(&s.dc1.amqp_uri(), 0..5, &PublishOptions::new(x)).await?;
    wait_received(&sink, 5).await?;
    // Far longer than an ack waits; then no drain: what was not acked goes back to the queue.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sg.kill9();
    sg.restart().await?;
    wait_running(&sg, "trickle").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tally = Tally::of(&confirmed, &sink.received());
    tally.print("trickle, then kill -9");
    assert_eq!(tally.missing, 0, "lost messages");
    assert_eq!(
        tally.duplicates, 0,
        "the trickle was delivered again after a restart: its acks never went out"
    );
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
    let before = quiet_count(&sink).await;
    // The fault itself: a broker that keeps its sockets open and answers nothing for 20 s.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let forwarded_while_stopped = sink.count() - before;
    down.sigcont();
    let confirmed = publisher.await??;
    assert_no_loss(&sg, "SIGSTOP downstream 20 s", &confirmed, &sink, before).await;
    assert_eq!(
        forwarded_while_stopped, 0,
        "a stopped broker delivered messages"
    );
    Ok(())
}

/// A downstream under a resource alarm (here memory: a watermark below what the node uses)
/// blocks publishing connections (Connection.Blocked) and stops reading them, for as long as the
/// alarm lasts. The link waits it out and says so, on the same connections: unconfirmed
/// publishes of a blocked downstream are not a silent peer (no reconnect after the 15 s confirm
/// deadline), and nothing is lost once the alarm clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_and_no_reconnect_while_the_downstream_is_blocked_by_a_resource_alarm(
) -> anyhow::Result<()> {
    let _p = permit().await;
    let (up, down) = fresh_pair().await?;
    let x = "t-alarm-down";
    topology(x, &[&up, &down], &[(&down, "sink")]).await?;
    let sg = Setgate::start(BIN, &one_link("al", &up, &down, x)).await?;
    wait_running(&sg, "al").await?;
    let sink = Collector::start(&down.amqp_uri(), "sink");
    let publisher = publish_in_background(&up, x, 12_000, 500.0);
    wait_received(&sink, 1_000).await?;

    down.ctl(&["set_vm_memory_high_watermark", "absolute", "1"])
        .await?;
    let st = wait_until(
        "the link to say the downstream blocked it",
        Duration::from_secs(30),
        || async {
            let st = link_status(&sg, "al").await.ok()?;
            let a = st["flows"][0]["activity"].as_str()?;
            a.contains("blocked publishing").then_some(st)
        },
    )
    .await?;
    println!("blocked: {}", st["flows"][0]["activity"]);
    let before = quiet_count(&sink).await;
    // Past the confirm deadline (15 s): a blocked downstream is waited for, not given up on.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let st = link_status(&sg, "al").await?;
    let flow = &st["flows"][0];
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(flow["reconnects"], 0, "{st}");
    assert!(
        flow["activity"]
            .as_str()
            .is_some_and(|a| a.contains("blocked publishing")),
        "{st}"
    );
    let forwarded_while_blocked = sink.count() - before;

    down.ctl(&["set_vm_memory_high_watermark", "0.4"]).await?;
    let confirmed = publisher.await??;
    assert_no_loss(
        &sg,
        "downstream resource alarm 20 s",
        &confirmed,
        &sink,
        before,
    )
    .await;
    assert_eq!(
        forwarded_while_blocked, 0,
        "messages arrived while the downstream was blocked"
    );
    let st = link_status(&sg, "al").await?;
    assert_eq!(st["flows"][0]["reconnects"], 0, "{st}");
    Ok(())
}

/// An operator deletes the link's queue upstream (the broker cancels its consumer): the link
/// says so, declares and binds its queue again on the next attempt, and forwards what is
/// published after. (What the deleted queue held went with it: that is the operator's act.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_links_queue_deleted_upstream_is_declared_again() -> anyhow::Result<()> {
    let _p = permit().await;
    let s = shared().await;
    let x = "t-qdel";
    topology(x, &[&s.dc1, &s.dc2], &[(&s.dc2, "t-qdel.sink")]).await?;
    let sg = Setgate::start(BIN, &one_link("qd", &s.dc1, &s.dc2, x)).await?;
    wait_running(&sg, "qd").await?;
    let sink = Collector::start(&s.dc2.amqp_uri(), "t-qdel.sink");
    let first = publish(&s.dc1.amqp_uri(), 0..200, &PublishOptions::new(x)).await?;
    assert!(sink
        .wait_for(&first, Duration::from_secs(60))
        .await
        .is_empty());

    let st = link_status(&sg, "qd").await?;
    let queue = st["flows"][0]["queue"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    s.dc1.ctl(&["delete_queue", &queue]).await?;
    let st = wait_until(
        "the link to run again on a new queue",
        Duration::from_secs(60),
        || async {
            let st = link_status(&sg, "qd").await.ok()?;
            let flow = &st["flows"][0];
            (flow["reconnects"].as_u64()? >= 1 && st["state"] == "running").then_some(st)
        },
    )
    .await?;
    println!("after the delete: {}", st["flows"][0]["last_error"]);
    assert!(
        st["flows"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&queue) && e.contains("cancel")),
        "{st}"
    );
    let queues = s.dc1.ctl(&["list_queues", "name", "--silent"]).await?;
    assert!(queues.lines().any(|l| l.trim() == queue), "{queues}");
    let second = publish(&s.dc1.amqp_uri(), 200..400, &PublishOptions::new(x)).await?;
    let mut all = first.clone();
    all.extend(&second);
    let missing = sink.wait_for(&all, Duration::from_secs(60)).await;
    let tally = Tally::of(&all, &sink.received());
    tally.print("queue deleted upstream");
    assert!(missing.is_empty() && tally.missing == 0, "{tally:?}");
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
    let tally = assert_no_loss(&sg, "SIGTERM then start", &confirmed, &sink, before).await;
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
    let cfg = config()
        .upstream(Upstream::new("dc1", &[dead.clone(), s.dc1.amqp_uri()]).reconnect_delay("60s"))
        .link(Link::new(
            "fo",
            &["dc1"],
            "dc2",
            &[dead, s.dc2.amqp_uri()],
            &[x],
        ));
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
    let missing = sink.wait_for(&confirmed, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "missing {missing:?}");
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
    let b_cfg = cfg.clone().admin(format!("127.0.0.1:{}", free_port()));
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
    assert_no_loss(
        &b,
        "two instances, active one killed",
        &confirmed,
        &sink,
        before,
    )
    .await;
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
