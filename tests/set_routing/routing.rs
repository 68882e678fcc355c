//! Where connections go: by user name, by override, by client property, and to the default pool;
//! `setgate route`, the admin API and the brokers agree.

use super::*;

#[tokio::test]
async fn three_hundred_users_land_on_the_broker_setgate_route_names() -> anyhow::Result<()> {
    let _heavy = HEAVY.lock().await;
    let s = sets().await;
    let (sg, port) = shared_edge(s, routing().override_key("user-007", "center")).await?;
    let keys: Vec<String> = (0..USERS).map(user).collect();
    let routes = route_cli(&sg.config_path(), &keys);
    let per_set: BTreeMap<&str, usize> =
        routes
            .values()
            .fold(BTreeMap::new(), |mut m, (_, pool, _)| {
                *m.entry(pool.as_str()).or_default() += 1;
                m
            });
    println!("300 users by pool: {per_set:?}");
    assert!(
        per_set["set-a"] > 100 && per_set["set-b"] > 100,
        "{per_set:?}"
    );
    assert_eq!(
        routes["user-007"],
        (None, "center".to_string(), "override".to_string())
    );

    // Connect all 300 (50 at a time), each publishing and consuming one confirmed message.
    let mut conns = Vec::new();
    for chunk in keys.chunks(50) {
        let batch = futures_util::future::join_all(chunk.iter().map(|u| async move {
            let conn = amqp::connect(&uri(u, port)).await?;
            publish_and_consume(&conn, &format!("q-{u}")).await?;
            anyhow::Ok(conn)
        }))
        .await;
        for c in batch {
            conns.push(c?);
        }
    }
    // Every user is connected exactly where `setgate route` said, and nowhere else.
    for (i, node) in s.nodes.iter().enumerate() {
        let mut seen = node.connection_users().await?;
        seen.retain(|u| u.starts_with("user-"));
        seen.sort();
        let mut expected: Vec<String> = routes
            .iter()
            .filter(|(_, (_, pool, _))| std::ptr::eq(node_of(s, pool), &s.nodes[i]))
            .map(|(k, _)| k.clone())
            .collect();
        expected.sort();
        assert_eq!(seen, expected, "users on broker {i}");
    }

    // The admin API agrees with the CLI and shows the same fingerprint.
    let api = sg.get_json("/api/route?key=user-123").await?;
    let cli = &routes["user-123"];
    assert_eq!(api["pool"], cli.1.as_str());
    assert_eq!(api["reason"], cli.2.as_str());
    let sets_doc = sg.get_json("/api/sets").await?;
    assert_eq!(sets_doc["fingerprint"], api["fingerprint"]);
    let active: u64 = sets_doc["sets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["active"].as_u64().unwrap())
        .sum::<u64>()
        + sets_doc["default"]["active"].as_u64().unwrap();
    assert!(active >= USERS as u64, "{sets_doc}");
    let fp = api["fingerprint"].as_str().unwrap();
    assert_eq!(
        sg.metric(&format!("setgate_routing_info{{fingerprint=\"{fp}\"}}"))
            .await?,
        Some(1.0)
    );
    let hashed = sg
        .metric("setgate_set_connections_total{set=\"set-a\",reason=\"hash\"}")
        .await?
        .unwrap_or(0.0);
    assert_eq!(hashed as usize, per_set["set-a"]);
    Ok(())
}

#[tokio::test]
async fn an_override_moves_exactly_that_user_and_keys_of_no_set_go_to_the_default_pool(
) -> anyhow::Result<()> {
    // Its 20 clients as user-299 would show up in the 300-user test's census of each broker.
    let _heavy = HEAVY.lock().await;
    let s = sets().await;
    let cfg = shared_config(s);
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    let port = sg.port("amqp").await?;
    let keys: Vec<String> = (0..USERS).map(user).collect();
    let before = route_cli(&sg.config_path(), &keys);
    let moved = keys
        .iter()
        .find(|k| before[*k].1 == "set-a")
        .unwrap()
        .clone();

    sg.reload(&cfg.routing(routing().override_key(&moved, "set-b")))?;
    let after = route_cli(&sg.config_path(), &keys);
    let changed: Vec<&String> = keys.iter().filter(|k| before[*k] != after[*k]).collect();
    assert_eq!(changed, vec![&moved], "only the overridden user may move");
    wait_until(
        "the override to be live",
        Duration::from_secs(10),
        || async {
            let v = sg.get_json(&format!("/api/route?key={moved}")).await.ok()?;
            (v["reason"] == "override").then_some(())
        },
    )
    .await?;
    let conn = amqp::connect(&uri(&moved, port)).await?;
    assert!(s.nodes[1].connection_users().await?.contains(&moved));
    assert!(!s.nodes[0].connection_users().await?.contains(&moved));
    drop(conn);

    // Routing by a client property: a client that sends none maps to no SET -> the center.
    let (sg2, port2) = shared_edge(s, routing().key("client_property:user_id")).await?;
    let props = |id: &str| {
        ConnectionProperties::default().with_client_property("user_id".into(), LongString::from(id))
    };
    let routes = route_cli(&sg2.config_path(), &keys[..20]);
    let mut conns = Vec::new();
    for k in &keys[..20] {
        // Every one logs in as the same broker user: only the property can tell them apart.
        conns.push(amqp::connect_with(&uri("user-299", port2), props(k)).await?);
    }
    for (k, (_, pool, _)) in &routes {
        let node = node_of(s, pool);
        let ids = client_property_values(node, "user_id").await?;
        assert!(
            ids.contains(k),
            "{k} should be on {pool}; that broker has {ids:?}"
        );
    }
    let _anonymous = amqp::connect(&uri("user-298", port2)).await?;
    assert!(
        s.nodes[2]
            .connection_users()
            .await?
            .contains(&"user-298".to_string()),
        "a client without user_id goes to the default pool"
    );
    Ok(())
}

/// The values of one client property over a broker's connections.
async fn client_property_values(node: &Node, prop: &str) -> anyhow::Result<Vec<String>> {
    let out = node
        .ctl(&[
            "list_connections",
            "client_properties",
            "--formatter",
            "json",
            "--silent",
        ])
        .await?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    let mut values = Vec::new();
    for row in rows {
        // rabbitmqctl prints client properties as a list of [name, type, value] triples.
        if let Some(props) = row["client_properties"].as_array() {
            for p in props {
                if p[0] == prop {
                    values.push(p[2].as_str().unwrap_or_default().to_string());
                }
            }
        }
    }
    Ok(values)
}
