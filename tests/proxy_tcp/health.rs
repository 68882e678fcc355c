//! Health checks and what follows from them: failover in a real cluster, to the backup, to
//! nothing; a stopped broker that only the amqp and http checks notice; closing sessions of a
//! server marked down.

use super::*;

#[tokio::test]
async fn failover_in_a_real_cluster_then_backup_then_nothing() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let mut backup = Node::start().await?;
    let members: Vec<&Node> = cluster.nodes.iter().collect();
    let check = Check::amqp()
        .inter("500ms")
        .fall(3)
        .rise(2)
        .timeout("400ms");
    let cfg = Config::new()
        .listener(Listener::tcp("amqp", "rabbit"))
        .pool(
            Pool::new("rabbit")
                .check(check)
                .nodes(&members)
                .server_with(Server::new("bk", backup.amqp_addr()).backup(true)),
        );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    let guest = guest(sg.port("amqp").await?);

    // A quorum queue with messages in it, replicated on all three members.
    let conn = amqp::connect(&guest).await?;
    let ch = amqp::confirm_channel(&conn).await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        "orders".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    for i in 0..100 {
        amqp::publish_confirmed(&ch, "", "orders", format!("o{i}").as_bytes()).await?;
    }
    drop(ch);
    drop(conn);

    cluster.nodes[1].kill9();
    let took = wait_health(&sg, "rabbit", "n1", false, Duration::from_secs(10)).await?;
    // fall (3) x inter (500 ms) + one interval, plus the 400 ms timeout of the check in flight.
    println!("kill -9 n1: marked down after {took:?}");
    assert!(
        took <= Duration::from_millis(3 * 500 + 500 + 400 + 300),
        "marked down after {took:?}"
    );
    assert_eq!(
        sg.metric("setgate_server_up{pool=\"rabbit\",server=\"n1\"}")
            .await?,
        Some(0.0)
    );

    // Every new connection succeeds on the survivors and finds the quorum queue there.
    for _ in 0..10 {
        let conn = amqp::connect(&guest).await?;
        let ch = conn.create_channel().await?;
        let q = ch
            .queue_declare(
                "orders".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        assert_eq!(q.message_count(), 100);
    }

    cluster.nodes[1].restart().await?;
    let took = wait_health(&sg, "rabbit", "n1", true, Duration::from_secs(30)).await?;
    println!("n1 restarted: marked up after {took:?} (rise = 2)");

    // All primaries down: the backup serves.
    for i in 0..3 {
        cluster.nodes[i].kill9();
    }
    for i in 0..3 {
        wait_health(
            &sg,
            "rabbit",
            &format!("n{i}"),
            false,
            Duration::from_secs(10),
        )
        .await?;
    }
    let conn = amqp::connect(&guest).await?;
    assert_eq!(backup.connection_count().await?, 1);
    drop(conn);

    // Nothing up: refused at once, not a hang.
    backup.kill9();
    wait_health(&sg, "rabbit", "bk", false, Duration::from_secs(10)).await?;
    let start = Instant::now();
    let r = amqp::connect(&guest).await;
    assert!(r.is_err(), "connect must fail with every server down");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "refusal took {:?}",
        start.elapsed()
    );
    println!(
        "everything down: client refused after {:?}",
        start.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn sigstop_is_caught_by_the_amqp_check_not_by_the_tcp_check() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let fast = |c: Check| c.inter("300ms").fall(2).timeout("250ms");
    let http = Check::http("/api/health/checks/virtual-hosts").auth("guest:guest");
    let cfg = Config::new()
        .listener(Listener::tcp("amqp", "amqp-checked"))
        .pool(
            Pool::new("amqp-checked")
                .check(fast(Check::amqp()))
                .server("n", node.amqp_addr()),
        )
        .pool(
            Pool::new("tcp-checked")
                .check(fast(Check::tcp()))
                .server("n", node.amqp_addr()),
        )
        .pool(
            Pool::new("http-checked")
                .check(fast(http))
                .server_with(Server::new("n", node.amqp_addr()).check_port(node.mgmt_port)),
        );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    // The http check (management API health endpoint) sees the broker up first.
    wait_until("http check to pass", Duration::from_secs(10), || async {
        let v = sg.get_json("/api/pools").await.ok()?;
        let p = v["pools"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == "http-checked")?
            .clone();
        (p["servers"][0]["last_check"]["ok"] == true).then_some(())
    })
    .await?;
    node.sigstop();
    let result = async {
        let took = wait_health(&sg, "amqp-checked", "n", false, Duration::from_secs(5)).await?;
        wait_health(&sg, "http-checked", "n", false, Duration::from_secs(5)).await?;
        println!("SIGSTOP: amqp check marked the broker down after {took:?}");
        // Give the tcp check as many rounds again: the kernel still accepts, so it stays up.
        tokio::time::sleep(took + Duration::from_millis(600)).await;
        let pools = sg.get_json("/api/pools").await?;
        let tcp_pool = pools["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "tcp-checked")
            .unwrap()
            .clone();
        assert_eq!(
            tcp_pool["servers"][0]["up"], true,
            "tcp check must not notice a stopped broker: {tcp_pool}"
        );
        anyhow::Ok(())
    }
    .await;
    node.sigcont();
    result?;
    wait_health(&sg, "amqp-checked", "n", true, Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::test]
async fn on_marked_down_shutdown_sessions_closes_established_connections() -> anyhow::Result<()> {
    let mut node = Node::start().await?;
    let other = Node::start().await?;
    let cfg = Config::new().listener(Listener::tcp("amqp", "p")).pool(
        Pool::new("p")
            .balance("first")
            .on_marked_down("shutdown-sessions")
            .check(Check::amqp().inter("300ms").fall(2).timeout("250ms"))
            .server("a", node.amqp_addr())
            .server("b", other.amqp_addr()),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    // A raw client holding a connection spliced to "a"; stopping "a" with SIGSTOP keeps its socket
    // open, so only setgate can end this connection.
    let mut raw = TcpStream::connect(sg.addr("amqp").await?).await?;
    raw.write_all(b"AMQP\x00\x00\x09\x01").await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await??;
    assert!(n > 0, "expected the broker's Connection.Start");
    node.sigstop();
    let closed = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await;
    node.sigcont();
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "setgate must close the session when its server goes down: {closed:?}"
    );
    node.kill9();
    Ok(())
}
