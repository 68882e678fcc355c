//! Pre-opened broker connections (`preopen`): once clients come, each server of a SET keeps a few
//! connections opened up to the broker's Connection.Start; the next client's StartOk goes out on
//! one of them, and it gets exactly what a freshly connected client gets (the broker's refusal
//! too). A drained server keeps none.

use super::*;

/// `setgate_server_preopen_*` of set-a's server, 0 when not exported yet.
async fn preopen(sg: &Setgate, what: &str) -> anyhow::Result<f64> {
    let series = format!("setgate_server_preopen_{what}{{pool=\"set-a\",server=\"a1\"}}");
    Ok(sg.metric(&series).await?.unwrap_or(0.0))
}

async fn wait_idle(sg: &Setgate, want: f64) -> anyhow::Result<()> {
    wait_until(
        &format!("{want} pre-opened connections to set-a's a1"),
        Duration::from_secs(15),
        || async { (preopen(sg, "idle").await.ok()? == want).then_some(()) },
    )
    .await
}

#[tokio::test]
async fn clients_get_preopened_connections_and_a_drained_server_keeps_none() -> anyhow::Result<()> {
    let s = sets().await;
    let (sg, port) = shared_edge(s, routing()).await?;
    let keys: Vec<String> = (0..USERS).map(user).collect();
    let routes = route_cli(&sg.config_path(), &keys);
    let a_user = keys
        .iter()
        .find(|k| routes[*k].1 == "set-a")
        .expect("some user of set-a")
        .clone();

    // Nothing is opened before a client wants set-a.
    assert_eq!(preopen(&sg, "idle").await?, 0.0);
    let first = amqp::connect(&uri(&a_user, port)).await?;
    publish_and_consume(&first, "preopen-q1").await?;
    // The default `preopen` is 2.
    wait_idle(&sg, 2.0).await?;

    // The next client goes out on a pre-opened connection and works as any other.
    let used = preopen(&sg, "used_total").await?;
    let second = amqp::connect(&uri(&a_user, port)).await?;
    publish_and_consume(&second, "preopen-q2").await?;
    assert_eq!(preopen(&sg, "used_total").await?, used + 1.0);
    let users = s.nodes[0].connection_users().await?;
    assert_eq!(
        users.iter().filter(|u| **u == a_user).count(),
        2,
        "{users:?}"
    );

    // A wrong password on a pre-opened connection: the broker's own refusal, as without one.
    wait_idle(&sg, 2.0).await?;
    assert_wrong_password_refused(&a_user, port).await;
    assert_eq!(preopen(&sg, "used_total").await?, used + 2.0);

    // Drained: its pre-opened connections are closed, none are opened, established ones stay.
    wait_idle(&sg, 2.0).await?;
    let closed = preopen(&sg, "closed_total").await?;
    let r = sg
        .post(
            "/api/pools/set-a/servers/a1/state",
            serde_json::json!({"state": "drain"}),
            None,
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_idle(&sg, 0.0).await?;
    assert!(preopen(&sg, "closed_total").await? >= closed + 2.0);
    publish_and_consume(&second, "preopen-q3").await?;
    drop((first, second));
    Ok(())
}
