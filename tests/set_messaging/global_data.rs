//! Global data: `route = "all-sets"` with `include_default` delivers every message to all three
//! clusters; one is killed mid-stream and restarted: it receives everything, and the others keep
//! receiving while it is down.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_data_reaches_every_cluster_and_a_dead_one_catches_up_without_stalling_the_others(
) -> anyhow::Result<()> {
    let mut c = faulty().await;
    let name = "t3";
    let (source_x, dest_x) = ("t3.catalog.in", "t3.catalog");
    declare_exchange(&c.center.amqp_uri(), source_x, "topic").await?;
    let sinks = sinks(&c, dest_x, "t3.sink").await?;
    let cfg = base_config(&c).shovel(Shovel::new(
        name,
        Source::exchange(&[c.center.amqp_uri()], source_x),
        Destination::all_sets(dest_x).include_default(true),
    ));
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_shovel_state(&sg, name, "running").await?;
    // One flow with its own source queue per SET.
    for set in ["set-a", "set-b"] {
        let q = format!("shovel: {name} -> {set}");
        assert!(
            queue_info(&c.center, &q).await?.is_some(),
            "all-sets should give each SET its own queue {q:?} on the source"
        );
    }

    let uri = c.center.amqp_uri();
    let opts = PublishOptions {
        rate: Some(100.0),
        window: 50,
        ..PublishOptions::new(source_x)
    };
    let publisher = tokio::spawn(async move { publish(&uri, 0..1_000, &opts).await });
    for cluster in CLUSTERS {
        let sink = &sinks[cluster];
        wait_until(
            &format!("the stream reaching {cluster} (100 messages)"),
            Duration::from_secs(60),
            || async { (sink.count() >= 100).then_some(()) },
        )
        .await
        .map_err(|e| e.context(format!("setgate log:\n{}", log_tail(&sg, 40))))?;
    }

    c.b.kill9();
    let killed = Instant::now();
    for live in ["center", "set-a"] {
        let sink = &sinks[live];
        let before = sink.count();
        wait_until(
            &format!("{live} to receive 100 more messages while set-b is dead"),
            Duration::from_secs(10),
            || async { (sink.count() >= before + 100).then_some(()) },
        )
        .await
        .map_err(|e| {
            e.context(format!(
                "{live} received {} messages after set-b died: a dead SET held back a live one",
                sink.count() - before
            ))
        })?;
    }
    // set-b's backlog waits in its own queue on the source.
    let backlog_queue = format!("shovel: {name} -> set-b");
    let backlog = wait_until(
        "set-b's queue on the source to hold its backlog",
        Duration::from_secs(15),
        || async {
            let n = queue_messages(&c.center, &backlog_queue).await.ok()??;
            (n > 0).then_some(n)
        },
    )
    .await?;
    let restart_at = Instant::now();
    for live in ["center", "set-a"] {
        let gap = longest_gap(&sinks[live], killed, restart_at);
        println!("global data: {live}'s longest wait for a message while set-b was dead: {gap:?}");
        assert!(
            gap < Duration::from_secs(5),
            "{live} went {gap:?} without a message while set-b was dead: it stalled"
        );
    }
    println!("global data: set-b's backlog on the source while it was dead: {backlog}");

    c.b.restart().await?;
    let confirmed = publisher.await??;
    let mut lost = Vec::new();
    for cluster in CLUSTERS {
        let sink = &sinks[cluster];
        sink.wait_for(&confirmed, Duration::from_secs(90)).await;
        let tally = Tally::of(&confirmed, &sink.received());
        tally.print(&format!("global data: {cluster}"));
        if tally.missing > 0 {
            lost.push(format!(
                "{cluster} misses {} of {}",
                tally.missing, tally.confirmed
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "every cluster should receive every message once at least: {}",
        lost.join(", ")
    );
    Ok(())
}
