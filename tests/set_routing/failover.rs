//! A dead SET: its users fail over to its standby SET, are refused by name when both are down,
//! and go home when it is back.

use super::*;

#[tokio::test]
async fn a_dead_set_fails_over_to_its_standby_and_comes_home_when_back() -> anyhow::Result<()> {
    let center = &sets().await.nodes[2];
    let (mut a, mut b) = (Node::start().await?, Node::start().await?);
    let users: Vec<(String, String)> = (0..40).map(|i| (user(i), "pw".to_string())).collect();
    a.add_users(&users).await?;
    b.add_users(&users).await?;
    let sg = Setgate::start(BIN, &set_config(&a, &b, center)).await?;
    sg.wait_ready().await?;
    let port = sg.port("amqp").await?;
    let keys: Vec<String> = (0..40).map(user).collect();
    let routes = route_cli(&sg.config_path(), &keys);
    let a_user = keys
        .iter()
        .find(|k| routes[*k].1 == "set-a")
        .unwrap()
        .clone();
    let uri = uri(&a_user, port);

    let home = amqp::connect(&uri).await?;
    assert!(a.connection_users().await?.contains(&a_user));
    drop(home);
    // A client came: set-a's server keeps connections pre-opened (`preopen`)...
    let idle = "setgate_server_preopen_idle{pool=\"set-a\",server=\"a1\"}";
    wait_until(
        "pre-opened connections to a1",
        Duration::from_secs(15),
        || async { (sg.metric(idle).await.ok()?? == 2.0).then_some(()) },
    )
    .await?;

    a.kill9();
    wait_set_health(&sg, "set-a", false).await?;
    // ...and none once it is down.
    wait_until(
        "no pre-opened connection to a dead a1",
        Duration::from_secs(5),
        || async { (sg.metric(idle).await.ok()?? == 0.0).then_some(()) },
    )
    .await?;
    let conn = amqp::connect(&uri).await?;
    publish_and_consume(&conn, "failover-q").await?;
    assert!(
        b.connection_users().await?.contains(&a_user),
        "set-a's user must be served by set-b"
    );
    let failovers = sg
        .metric("setgate_set_failovers_total{set=\"set-a\",to=\"set-b\"}")
        .await?;
    assert_eq!(failovers, Some(1.0));
    drop(conn);

    // Both down: a Connection.Close that names the SET, at once.
    b.kill9();
    wait_set_health(&sg, "set-b", false).await?;
    let start = Instant::now();
    let err = amqp::connect(&uri)
        .await
        .expect_err("nothing can serve set-a now");
    let text = format!("{err:#}");
    assert!(text.contains("no healthy server in SET set-a"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(2));

    // set-a back: new connections go home.
    a.restart().await?;
    wait_set_health(&sg, "set-a", true).await?;
    let conn = amqp::connect(&uri).await?;
    assert!(a.connection_users().await?.contains(&a_user));
    drop(conn);
    Ok(())
}

async fn wait_set_health(sg: &Setgate, set: &str, healthy: bool) -> anyhow::Result<()> {
    wait_until(
        &format!("{set} healthy={healthy}"),
        Duration::from_secs(30),
        || async {
            let v = sg.get_json("/api/sets").await.ok()?;
            let s = v["sets"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == set)?
                .clone();
            (s["healthy"] == healthy).then_some(())
        },
    )
    .await
}
