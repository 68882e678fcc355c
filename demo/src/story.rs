//! The narrated story: routing, federation, failover and return, each checked against the real
//! brokers, not just printed.

use crate::world::{wait_set, World, USERS};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use setgate_testkit::amqp;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn edge(user: &str) -> String {
    format!("amqp://{user}:pw@127.0.0.1:16100/%2f")
}

/// Connects `user` through dc1's edge and says where setgate sent it (and checks the broker
/// agrees).
async fn connect(world: &World, user: &str) -> anyhow::Result<(Connection, &'static str)> {
    let route = world
        .dc1
        .get_json(&format!("/api/route?key={user}"))
        .await?;
    let conn = amqp::connect(&edge(user)).await?;
    let landed = world
        .where_is(user)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{user} is connected but no broker lists the connection"))?;
    println!(
        "  {user:<6} → SET {:<6} ({:<8}) → connected to {landed}",
        route["set"].as_str().unwrap_or("-"),
        route["reason"].as_str().unwrap_or("?"),
    );
    Ok((conn, landed))
}

/// Each connection publishes `per_user` orders (confirmed) to `orders` in its own SET.
async fn place_orders(
    conns: &[(String, Connection)],
    per_user: usize,
    tag: &str,
) -> anyhow::Result<usize> {
    let mut n = 0;
    for (user, conn) in conns {
        let ch = amqp::confirm_channel(conn).await?;
        for i in 0..per_user {
            let body = format!("{{\"user\":\"{user}\",\"order\":\"{tag}-{i}\"}}");
            let confirm = ch
                .basic_publish(
                    "orders".into(),
                    format!("order.created.{user}").as_str().into(),
                    Default::default(),
                    body.as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?
                .await?;
            anyhow::ensure!(confirm.is_ack(), "order not confirmed");
            n += 1;
        }
    }
    Ok(n)
}

/// Reads `n` orders from dc2's queue; returns how many came from each dc1 cluster.
async fn receive_in_dc2(
    consumer: &mut lapin::Consumer,
    n: usize,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut from = BTreeMap::new();
    for _ in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .map_err(|_| anyhow::anyhow!("an order did not arrive in dc2 within 30 s"))?
            .ok_or_else(|| anyhow::anyhow!("dc2 consumer ended"))??;
        *from.entry(origin(&d.properties)).or_default() += 1;
        d.ack(BasicAckOptions::default()).await?;
    }
    Ok(from)
}

/// The cluster an order was federated from, per its `x-received-from` header.
fn origin(props: &BasicProperties) -> String {
    let entries = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-received-from").cloned());
    if let Some(AMQPValue::FieldArray(a)) = entries {
        if let Some(AMQPValue::FieldTable(t)) = a.as_slice().first() {
            if let Some(AMQPValue::LongString(s)) = t.inner().get("cluster-name") {
                return String::from_utf8_lossy(s.as_bytes()).into_owned();
            }
        }
    }
    "?".into()
}

/// Publishes one notification per user to the center's `notify` exchange (header `x-user-id`)
/// and checks that each arrives in the `inbox` queue of the broker the user's connection
/// landed on.
async fn notify_users(world: &World, home: &BTreeMap<&str, &str>) -> anyhow::Result<()> {
    let center = amqp::connect("amqp://ops:pw@127.0.0.1:16030/%2f").await?;
    let ch = amqp::confirm_channel(&center).await?;
    let t = Instant::now();
    for user in USERS {
        let mut headers = FieldTable::default();
        headers.insert("x-user-id".into(), AMQPValue::LongString(user.into()));
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        let body = format!("{{\"to\":\"{user}\",\"text\":\"your order shipped\"}}");
        let confirm = ch
            .basic_publish(
                "notify".into(),
                "notification".into(),
                Default::default(),
                body.as_bytes(),
                props,
            )
            .await?
            .await?;
        anyhow::ensure!(confirm.is_ack(), "notification not confirmed");
    }
    let _ = center.close(200, "ok".into()).await;
    let mut arrived: BTreeMap<&str, &str> = BTreeMap::new();
    for b in &world.brokers {
        let conn = amqp::connect(&b.node.amqp_uri()).await?;
        let ch = conn.create_channel().await?;
        let want = USERS.iter().filter(|u| home[*u] == b.name).count();
        let mut inbox = ch
            .basic_consume(
                "inbox".into(),
                "demo".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for _ in 0..want {
            let d = tokio::time::timeout(Duration::from_secs(30), inbox.next())
                .await
                .map_err(|_| {
                    anyhow::anyhow!("a notification did not reach {} within 30 s", b.name)
                })?
                .ok_or_else(|| anyhow::anyhow!("inbox consumer ended"))??;
            let user = d
                .properties
                .headers()
                .as_ref()
                .and_then(|h| match h.inner().get("x-user-id") {
                    Some(AMQPValue::LongString(s)) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    _ => None,
                })
                .unwrap_or_default();
            let user = USERS
                .iter()
                .copied()
                .find(|u| *u == user)
                .ok_or_else(|| anyhow::anyhow!("unexpected notification for {user:?}"))?;
            anyhow::ensure!(
                home[user] == b.name,
                "{user}'s notification reached {} but {user} is connected to {}",
                b.name,
                home[user]
            );
            arrived.insert(user, b.name);
            d.ack(BasicAckOptions::default()).await?;
        }
        let _ = conn.close(200, "ok".into()).await;
    }
    anyhow::ensure!(
        arrived.len() == USERS.len(),
        "some notifications did not arrive: {arrived:?}"
    );
    for user in USERS {
        println!(
            "  notification for {user:<6} → {} (where {user} is connected)",
            arrived[user]
        );
    }
    let shovels = world.dc1.get_json("/api/shovels").await?;
    let s = &shovels["shovels"][0];
    println!(
        "  {} notifications routed in {:.0} ms; per SET: {}",
        USERS.len(),
        t.elapsed().as_secs_f64() * 1e3,
        s["sets"]
            .as_object()
            .map(|m| m
                .iter()
                .map(|(k, v)| format!("{k} {}", v["forwarded"]))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    Ok(())
}

pub async fn tell(world: &mut World) -> anyhow::Result<()> {
    // dc2's view: a queue bound to the federated exchange.
    let dc2 = amqp::connect("amqp://ops:pw@127.0.0.1:16200/%2f").await?;
    let dc2_ch = dc2.create_channel().await?;
    dc2_ch
        .queue_declare(
            "dc2-orders".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    dc2_ch
        .queue_bind(
            "dc2-orders".into(),
            "orders".into(),
            "order.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut dc2_orders = dc2_ch
        .basic_consume(
            "dc2-orders".into(),
            "demo".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    println!("\n== 1. Users connect through dc1's edge and land in their SET");
    println!(
        "  (setgate reads each AMQP handshake, hashes the user name, and picks the SET's broker)"
    );
    let mut conns = Vec::new();
    let mut home = BTreeMap::new();
    for user in USERS {
        let (conn, landed) = connect(world, user).await?;
        home.insert(user, landed);
        conns.push((user.to_string(), conn));
    }
    let (ops, landed) = connect(world, "ops").await?;
    anyhow::ensure!(
        landed == "dc2-center",
        "ops (override) must go to the center"
    );
    drop(ops);

    println!("\n== 2. Orders placed in dc1 appear in dc2 (federation of exchange \"orders\")");
    let t = Instant::now();
    let sent = place_orders(&conns, 3, "first").await?;
    let from = receive_in_dc2(&mut dc2_orders, sent).await?;
    println!("  {sent} orders published with confirms in dc1; dc2 received all {sent} in {:.0} ms: {from:?}", t.elapsed().as_secs_f64() * 1e3);
    let links = world.dc2.get_json("/api/links").await?;
    for l in links["links"].as_array().into_iter().flatten() {
        println!(
            "  link {}: {} (forwarded {})",
            l["name"].as_str().unwrap_or("?"),
            l["state"].as_str().unwrap_or("?"),
            l["forwarded"]
        );
    }
    drop(conns);

    println!("\n== 3. A notification for each user published in the center reaches the user's SET");
    println!("  (dc1's edge runs a shovel whose destination routes each message by its x-user-id header,");
    println!("   through the same routing table its listener uses)");
    notify_users(world, &home).await?;

    println!("\n== 4. dc1-set-a's broker dies (kill -9)");
    let victim = USERS
        .iter()
        .copied()
        .find(|u| home[u] == "dc1-set-a")
        .unwrap_or("bob");
    world.broker_mut("dc1-set-a").node.kill9();
    let took = wait_set(world, "set-a", false).await?;
    println!(
        "  dc1's edge marked SET set-a down {:.1}s later (amqp check every 500 ms, fall 2)",
        took.as_secs_f64()
    );
    let (conn, landed) = connect(world, victim).await?;
    anyhow::ensure!(
        landed == "dc1-set-b",
        "{victim} should be served by set-b while set-a is down"
    );
    println!("  {victim} (a set-a user) is served by set-a's failover SET, set-b");
    let sent = place_orders(&[(victim.to_string(), conn)], 2, "during-outage").await?;
    let from = receive_in_dc2(&mut dc2_orders, sent).await?;
    println!("  {victim}'s orders still reach dc2, now through set-b: {from:?}");
    let failovers = world
        .dc1
        .metric("setgate_set_failovers_total{set=\"set-a\",to=\"set-b\"}")
        .await?;
    println!(
        "  setgate_set_failovers_total{{set=\"set-a\",to=\"set-b\"}} = {}",
        failovers.unwrap_or(0.0)
    );

    println!("\n== 5. dc1-set-a comes back");
    let t = Instant::now();
    world.broker_mut("dc1-set-a").node.restart().await?;
    println!("  broker restarted in {:.1}s", t.elapsed().as_secs_f64());
    let took = wait_set(world, "set-a", true).await?;
    println!(
        "  dc1's edge marked SET set-a up {:.1}s later (rise 2)",
        took.as_secs_f64()
    );
    let (conn, landed) = connect(world, victim).await?;
    anyhow::ensure!(
        landed == "dc1-set-a",
        "{victim} should be home in set-a again"
    );
    println!("  new connections of {victim} go home to set-a");
    let sent = place_orders(&[(victim.to_string(), conn)], 2, "after-return").await?;
    let from = receive_in_dc2(&mut dc2_orders, sent).await?;
    println!("  and the federation link from set-a is back too: {from:?}");
    Ok(())
}
