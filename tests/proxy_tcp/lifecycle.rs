//! A running setgate changing state: reload on SIGHUP, drain and exit on SIGTERM.

use super::*;

#[tokio::test]
async fn reload_moves_new_connections_and_keeps_open_ones() -> anyhow::Result<()> {
    let nodes = shared_nodes().await;
    let all: Vec<&Node> = nodes.iter().collect();
    add_user(&all, "reload").await;
    let base = Config::new().listener(Listener::tcp("amqp", "p"));
    let cfg = |n: &Node| {
        base.clone()
            .pool(Pool::new("p").server("only", n.amqp_addr()))
    };
    let sg = Setgate::start(BIN, &cfg(&nodes[0])).await?;
    sg.wait_ready().await?;
    let port = sg.port("amqp").await?;
    let open = amqp::connect(&uri(port, "reload")).await?;
    let ch = amqp::confirm_channel(&open).await?;
    wait_connections(&all, "reload", &[1, 0, 0]).await?;

    sg.reload(&cfg(&nodes[1]))?;
    wait_until("reload to take effect", Duration::from_secs(10), || async {
        let v = sg.get_json("/api/pools").await.ok()?;
        (v["pools"][0]["servers"][0]["addr"] == nodes[1].amqp_addr().to_string()).then_some(())
    })
    .await?;
    let _new = amqp::connect(&uri(port, "reload")).await?;
    wait_connections(&all, "reload", &[1, 1, 0]).await?;
    amqp::publish_confirmed(&ch, "", "nowhere", b"open connection survived the reload").await?;

    // An invalid file changes nothing.
    sg.reload("[[pool]]\nname = \"p\"\nservers = []\nbogus = 1\n")?;
    wait_until(
        "the refusal to be logged",
        Duration::from_secs(10),
        || async { sg.log().contains("reload refused").then_some(()) },
    )
    .await?;
    let _another = amqp::connect(&uri(port, "reload")).await?;
    wait_connections(&all, "reload", &[1, 2, 0]).await?;
    amqp::publish_confirmed(&ch, "", "nowhere", b"still fine").await?;
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_accepting_drains_then_closes_and_logs_json() -> anyhow::Result<()> {
    let nodes = shared_nodes().await;
    let cfg = Config::new()
        .shutdown_grace("3s")
        .listener(Listener::tcp("amqp", "p"))
        .pool(Pool::new("p").nodes(&[&nodes[0]]));
    let opts = SetgateOptions {
        args: vec!["--log-format".into(), "json".into()],
        ..Default::default()
    };
    let mut sg = Setgate::start_with(BIN, &cfg, opts).await?;
    sg.wait_ready().await?;
    let addr = sg.addr("amqp").await?;
    let open = amqp::connect(&guest(addr.port())).await?;
    let ch = amqp::confirm_channel(&open).await?;

    sg.sigterm();
    // Not ready any more, and no new connections...
    wait_until(
        "readyz to say shutting down",
        Duration::from_secs(5),
        || async {
            let r = sg.get("/readyz").await.ok()?;
            (r.status == 503).then_some(())
        },
    )
    .await?;
    wait_until("the listener to close", Duration::from_secs(5), || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await?;
    // ...while the open connection keeps working during the grace period...
    amqp::publish_confirmed(&ch, "", "nowhere", b"during the drain").await?;
    // ...and is closed when the grace is over; then the process exits on its own.
    let start = Instant::now();
    let code = sg.wait_exit(Duration::from_secs(15)).await?;
    println!(
        "setgate exited {:?} after SIGTERM (+{:?} after the checks above)",
        code,
        start.elapsed()
    );
    assert_eq!(code, Some(0));
    assert!(
        !open.status().connected()
            || amqp::publish_confirmed(&ch, "", "nowhere", b"x")
                .await
                .is_err()
    );

    // Every log line is one JSON object with a level and a message.
    let log = sg.log();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("not JSON: {line}: {e}"))?;
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        lines += 1;
    }
    assert!(log.contains("shutdown grace is over"), "{log}");
    assert!(lines >= 4, "{log}");
    Ok(())
}
