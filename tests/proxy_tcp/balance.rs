//! Spreading connections: roundrobin, leastconn, and draining a server through the admin API.

use super::*;

#[tokio::test]
async fn roundrobin_spreads_evenly_and_leastconn_fills_the_emptiest() -> anyhow::Result<()> {
    let nodes = shared_nodes().await;
    let all: Vec<&Node> = nodes.iter().collect();
    add_user(&all, "rr").await;
    add_user(&all, "lc").await;
    let cfg = Config::new()
        .listener(Listener::tcp("rr", "rr"))
        .listener(Listener::tcp("lc", "lc"))
        .pool(Pool::new("rr").balance("roundrobin").nodes(&all))
        .pool(Pool::new("lc").balance("leastconn").nodes(&all));
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    let (rr, lc) = (sg.port("rr").await?, sg.port("lc").await?);

    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(amqp::connect(&uri(rr, "rr")).await?);
    }
    wait_connections(&all, "rr", &[10, 10, 10]).await?;

    // leastconn: with n0 drained, 4 connections land on n1 and n2; back in service, n0 is the
    // emptiest and takes the next two.
    let state = |s: &str| serde_json::json!({ "state": s });
    assert_eq!(
        sg.post("/api/pools/lc/servers/n0/state", state("drain"), None)
            .await?
            .status,
        200
    );
    let mut lc_conns = Vec::new();
    for _ in 0..4 {
        lc_conns.push(amqp::connect(&uri(lc, "lc")).await?);
    }
    wait_connections(&all, "lc", &[0, 2, 2]).await?;
    assert_eq!(
        sg.post("/api/pools/lc/servers/n0/state", state("ready"), None)
            .await?
            .status,
        200
    );
    for _ in 0..2 {
        lc_conns.push(amqp::connect(&uri(lc, "lc")).await?);
    }
    wait_connections(&all, "lc", &[2, 2, 2]).await?;
    Ok(())
}

#[tokio::test]
async fn drain_through_the_api_keeps_established_connections() -> anyhow::Result<()> {
    let nodes = shared_nodes().await;
    let pair: Vec<&Node> = nodes[..2].iter().collect();
    add_user(&pair, "drain").await;
    let dir = setgate_testkit::unique_dir("token");
    std::fs::write(dir.join("token"), "s3cret-token\n")?;
    let cfg = Config::new()
        .token_file(dir.join("token"))
        .listener(Listener::tcp("amqp", "p"))
        .pool(Pool::new("p").nodes(&pair));
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    let port = sg.port("amqp").await?;
    let mut before = Vec::new();
    for _ in 0..4 {
        before.push(amqp::connect(&uri(port, "drain")).await?);
    }
    wait_connections(&pair, "drain", &[2, 2]).await?;

    let body = serde_json::json!({ "state": "drain" });
    let denied = sg
        .post("/api/pools/p/servers/n0/state", body.clone(), None)
        .await?;
    assert_eq!(denied.status, 401, "{}", denied.body);
    let denied = sg
        .post("/api/pools/p/servers/n0/state", body.clone(), Some("wrong"))
        .await?;
    assert_eq!(denied.status, 401);
    let ok = sg
        .post("/api/pools/p/servers/n0/state", body, Some("s3cret-token"))
        .await?;
    assert_eq!(ok.status, 200, "{}", ok.body);

    let mut after = Vec::new();
    for _ in 0..4 {
        after.push(amqp::connect(&uri(port, "drain")).await?);
    }
    wait_connections(&pair, "drain", &[2, 6]).await?;
    // The connections made before the drain still work.
    for conn in &before {
        let ch = amqp::confirm_channel(conn).await?;
        amqp::publish_confirmed(&ch, "", "nowhere", b"still here").await?;
    }
    let pools = sg.get_json("/api/pools").await?;
    assert_eq!(pools["pools"][0]["servers"][0]["admin"], "drain");
    Ok(())
}
