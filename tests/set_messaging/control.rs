//! Runtime control: `POST /api/shovels/NAME/{pause,resume,restart}` (and the same under
//! `/api/links/`) with the admin token: a paused shovel consumes nothing and its messages wait
//! at the source; resumed, they all arrive; a completed shovel runs again when restarted.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_restart_a_shovel_through_the_api() -> anyhow::Result<()> {
    let s = steady().await;
    let c = &s.clusters;
    let (entry, src, out) = ("t7.in", "t7.src", "t7.out");
    declare_exchange(&c.center.amqp_uri(), entry, "topic").await?;
    declare_bound_queue(&c.center.amqp_uri(), src, entry).await?;
    declare_exchange(&c.b.amqp_uri(), out, "topic").await?;
    declare_bound_queue(&c.b.amqp_uri(), "t7.sink", out).await?;
    let sink = Collector::start(&c.b.amqp_uri(), "t7.sink");
    let token_file = setgate_testkit::unique_dir("t7").join("admin.token");
    std::fs::write(&token_file, "t7-secret\n")?;
    let cfg = Config::new()
        .shutdown_grace("2s")
        .token_file(&token_file)
        .shovel(Shovel::new(
            "t7",
            Source::queue(&[c.center.amqp_uri()], src),
            Destination::exchange(&[c.b.amqp_uri()], out),
        ))
        .shovel(
            Shovel::new(
                "t7-once",
                Source::queue(&[c.center.amqp_uri()], "t7.once"),
                Destination::exchange(&[c.b.amqp_uri()], out),
            )
            .delete_after("queue-length"),
        );
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_shovel_state(&sg, "t7", "running").await?;
    let opts = PublishOptions::new(entry);
    let first = publish(&c.center.amqp_uri(), 0..50, &opts).await?;
    assert_eq!(
        sink.wait_for(&first, Duration::from_secs(30)).await,
        BTreeSet::new()
    );

    // Without the token: refused, nothing changes.
    let r = sg
        .post("/api/shovels/t7/pause", serde_json::json!({}), None)
        .await?;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(shovel_status(&sg, "t7").await?["state"], "running");
    let r = sg
        .post(
            "/api/shovels/nope/pause",
            serde_json::json!({}),
            Some("t7-secret"),
        )
        .await?;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(
        r.body.contains("no shovel named \\\"nope\\\""),
        "{}",
        r.body
    );
    let r = sg
        .post(
            "/api/shovels/t7/jump",
            serde_json::json!({}),
            Some("t7-secret"),
        )
        .await?;
    assert_eq!(r.status, 400, "{}", r.body);

    // Paused: what is published waits in the source queue.
    let r = sg
        .post(
            "/api/shovels/t7/pause",
            serde_json::json!({}),
            Some("t7-secret"),
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(shovel_status(&sg, "t7").await?["state"], "paused");
    let during = publish(&c.center.amqp_uri(), 50..150, &opts).await?;
    wait_until(
        "the paused shovel's messages to wait at the source",
        Duration::from_secs(20),
        || async { (queue_messages(&c.center, src).await.ok()?? == 100).then_some(()) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sink.ids().len(), 50, "nothing moves while paused");

    // Resumed: they all arrive.
    let r = sg
        .post(
            "/api/shovels/t7/resume",
            serde_json::json!({}),
            Some("t7-secret"),
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        sink.wait_for(&during, Duration::from_secs(30)).await,
        BTreeSet::new()
    );
    wait_shovel_state(&sg, "t7", "running").await?;

    // A completed one-off shovel runs again when restarted: it moves what is there now. (Its
    // queue did not exist: the shovel declared it, found it empty and completed at once.)
    let st = wait_shovel_state(&sg, "t7-once", "completed").await?;
    assert_eq!(st["moved"], 0, "{st}");
    let conn = setgate_testkit::amqp::connect(&c.center.amqp_uri()).await?;
    let ch = setgate_testkit::amqp::confirm_channel(&conn).await?;
    for id in 1000..1010u64 {
        let confirm = ch
            .basic_publish(
                "".into(),
                "t7.once".into(),
                Default::default(),
                id.to_string().as_bytes(),
                setgate_testkit::fed::message_properties(id),
            )
            .await?
            .await?;
        assert!(confirm.is_ack());
    }
    let r = sg
        .post(
            "/api/shovels/t7-once/restart",
            serde_json::json!({}),
            Some("t7-secret"),
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let st = wait_shovel_state(&sg, "t7-once", "completed").await?;
    assert_eq!(
        st["moved"], 10,
        "the restarted one-off moved what was there: {st}"
    );
    let again: BTreeSet<u64> = (1000..1010).collect();
    assert_eq!(
        sink.wait_for(&again, Duration::from_secs(30)).await,
        BTreeSet::new()
    );
    Ok(())
}
