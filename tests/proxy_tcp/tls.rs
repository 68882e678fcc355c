//! TLS on both sides: clients to setgate (plain, TLS, mutual TLS) and setgate to the brokers.

use super::*;

#[tokio::test]
async fn lapin_works_over_tcp_tls_and_mutual_tls() -> anyhow::Result<()> {
    let nodes = shared_nodes().await;
    let pki = Pki::generate(&setgate_testkit::unique_dir("pki"))?;
    let (cert, key) = (&pki.server_cert, &pki.server_key);
    let cfg = Config::new()
        .listener(Listener::tcp("plain", "p"))
        .listener(Listener::tcp("tls", "p").tls(cert, key))
        .listener(Listener::tcp("mtls", "p").mutual_tls(cert, key, &pki.ca))
        .pool(
            Pool::new("p")
                .check(Check::amqp().inter("500ms"))
                .nodes(&[&nodes[0]]),
        );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    let (tcp, tls, mtls) = (
        sg.port("plain").await?,
        sg.port("tls").await?,
        sg.port("mtls").await?,
    );

    let conn = amqp::connect(&guest(tcp)).await?;
    round_trip(&conn, "tcp-rt", 50).await?;

    let ca = std::fs::read_to_string(&pki.ca)?;
    let amqps = |port: u16| format!("amqps://guest:guest@127.0.0.1:{port}/%2f");
    let conn = amqp::connect_tls(&amqps(tls), &ca, None).await?;
    round_trip(&conn, "tls-rt", 50).await?;

    let refused = amqp::connect_tls(&amqps(mtls), &ca, None).await;
    assert!(
        refused.is_err(),
        "a client without a certificate must be refused by a mutual-TLS listener"
    );
    let cert = std::fs::read_to_string(&pki.client_cert)?;
    let key = std::fs::read_to_string(&pki.client_key)?;
    let conn = amqp::connect_tls(&amqps(mtls), &ca, Some((&cert, &key))).await?;
    round_trip(&conn, "mtls-rt", 50).await?;
    Ok(())
}

#[tokio::test]
async fn tls_to_the_brokers_and_server_maxconn() -> anyhow::Result<()> {
    // A broker that speaks amqps on a second port, with a certificate from the test PKI.
    let dir = setgate_testkit::unique_dir("broker-pki");
    let pki = Pki::generate(&dir)?;
    let tls_port = free_port();
    let node = Node::start_with(NodeOptions {
        extra_config: format!(
            "listeners.ssl.default = {tls_port}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
            pki.ca.display(),
            pki.server_cert.display(),
            pki.server_key.display()
        ),
        ..Default::default()
    })
    .await?;
    // The same broker reached at 127.0.0.2, which its certificate (localhost, 127.0.0.1) does
    // not name: refused by default, taken with `verify_name = false`.
    let other_address = format!("127.0.0.2:{tls_port}");
    let cfg = Config::new()
        .listener(Listener::tcp("amqp", "amqps"))
        .listener(Listener::tcp("small", "two-slots"))
        .listener(Listener::tcp("any-name", "any-name"))
        .pool(
            Pool::new("amqps")
                .check(Check::amqp().inter("500ms"))
                .tls(&pki.ca, "localhost")
                .server("n", format!("127.0.0.1:{tls_port}")),
        )
        .pool(Pool::new("two-slots").server_with(Server::new("n", node.amqp_addr()).maxconn(2)))
        .pool(
            Pool::new("by-address")
                .check(Check::amqp().inter("500ms"))
                .tls(&pki.ca, "127.0.0.2")
                .server("n", other_address.clone()),
        )
        .pool(
            Pool::new("any-name")
                .check(Check::amqp().inter("500ms"))
                .tls_any_name(&pki.ca)
                .server("n", other_address.clone()),
        );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    let (port, small) = (sg.port("amqp").await?, sg.port("small").await?);
    // The amqp health check itself runs over TLS: the pool is up only if TLS works.
    wait_health(&sg, "amqps", "n", true, Duration::from_secs(10)).await?;
    let conn = amqp::connect(&guest(port)).await?;
    round_trip(&conn, "over-amqps", 20).await?;
    wait_health(&sg, "any-name", "n", true, Duration::from_secs(10)).await?;
    let conn = amqp::connect(&guest(sg.port("any-name").await?)).await?;
    round_trip(&conn, "over-amqps-any-name", 20).await?;
    wait_health(&sg, "by-address", "n", false, Duration::from_secs(10)).await?;
    let pools = sg.get_json("/api/pools").await?;
    assert!(
        pools.to_string().contains("not valid for name"),
        "the check must say why: {pools}"
    );
    let ssl = node
        .ctl(&["list_connections", "ssl", "--silent", "--no-table-headers"])
        .await?;
    assert!(
        ssl.lines().any(|l| l.trim() == "true"),
        "the broker must see a TLS connection: {ssl:?}"
    );

    // Server maxconn: two connections fit, the third is closed at once.
    let _a = amqp::connect(&guest(small)).await?;
    let _b = amqp::connect(&guest(small)).await?;
    let start = Instant::now();
    let third = amqp::connect(&guest(small)).await;
    assert!(
        third.is_err(),
        "a server at its maxconn must not take a third connection"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "refusal took {:?}",
        start.elapsed()
    );
    Ok(())
}
