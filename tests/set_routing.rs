//! SET routing end to end: setgate reads each client's AMQP handshake, learns the user and sends
//! the connection to the broker of the SET that owns that user — real brokers, real clients
//! (lapin, pika, amqplib), real kill -9.

mod common;

use common::{admin_addr, BIN};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, LongString};
use lapin::ConnectionProperties;
use setgate_testkit::{amqp, free_port, wait_until, Node, Setgate};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;

/// Three brokers: set-a, set-b and the center, shared by the tests that do not kill them, with
/// the 300 test users on each.
struct Sets {
    nodes: Vec<Node>,
}

static SETS: OnceCell<Sets> = OnceCell::const_new();

/// Held by the tests that load the machine (hundreds of connections) or measure time, so they do
/// not run at the same time as each other.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const USERS: usize = 300;

fn user(i: usize) -> String {
    format!("user-{i:03}")
}

async fn sets() -> &'static Sets {
    SETS.get_or_init(|| async {
        let nodes: Vec<Node> = futures_util::future::join_all((0..3).map(|_| Node::start()))
            .await
            .into_iter()
            .map(|n| n.expect("start broker"))
            .collect();
        let users: Vec<(String, String)> =
            (0..USERS).map(|i| (user(i), "pw".to_string())).collect();
        for n in &nodes {
            n.add_users(&users).await.expect("create users");
        }
        Sets { nodes }
    })
    .await
}

/// A `set` listener with set-a, set-b and center pools on the given brokers.
fn set_config(
    admin: &str,
    port: u16,
    a: &Node,
    b: &Node,
    center: &Node,
    routing_extra: &str,
) -> String {
    format!(
        r#"
[admin]
listen = "{admin}"

[[listener]]
name = "amqp"
bind = "127.0.0.1:{port}"
mode = "set"
handshake_timeout = "2s"

[[pool]]
name = "set-a"
check = {{ kind = "amqp", inter = "300ms", fall = 2, rise = 2, timeout = "1s" }}
servers = [{{ name = "a1", addr = "{a}" }}]

[[pool]]
name = "set-b"
check = {{ kind = "amqp", inter = "300ms", fall = 2, rise = 2, timeout = "1s" }}
servers = [{{ name = "b1", addr = "{b}" }}]

[[pool]]
name = "center"
check = {{ kind = "amqp", inter = "300ms", fall = 2, rise = 2, timeout = "1s" }}
servers = [{{ name = "c1", addr = "{c}" }}]

[routing]
default = "center"
sets = [
  {{ name = "set-a", pool = "set-a", failover = "set-b" }},
  {{ name = "set-b", pool = "set-b", failover = "set-a" }},
]
{routing_extra}
"#,
        a = a.amqp_addr(),
        b = b.amqp_addr(),
        c = center.amqp_addr(),
    )
}

/// `setgate route --json` for `keys`: key -> (set, pool, reason).
fn route_cli(
    config: &PathBuf,
    keys: &[String],
) -> BTreeMap<String, (Option<String>, String, String)> {
    let out = std::process::Command::new(BIN)
        .args(["route", "--json", "--config"])
        .arg(config)
        .args(keys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["key"].as_str().unwrap().to_string(),
                (
                    v["set"].as_str().map(str::to_owned),
                    v["pool"].as_str().unwrap().to_string(),
                    v["reason"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

fn node_of<'a>(s: &'a Sets, pool: &str) -> &'a Node {
    match pool {
        "set-a" => &s.nodes[0],
        "set-b" => &s.nodes[1],
        "center" => &s.nodes[2],
        other => panic!("unknown pool {other}"),
    }
}

async fn publish_and_consume(conn: &lapin::Connection, queue: &str) -> anyhow::Result<()> {
    let ch = amqp::confirm_channel(conn).await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    amqp::publish_confirmed(&ch, "", queue, b"hello").await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no delivery"))??;
    anyhow::ensure!(d.data == b"hello");
    d.ack(BasicAckOptions::default()).await?;
    Ok(())
}

#[tokio::test]
async fn three_hundred_users_land_on_the_broker_setgate_route_names() -> anyhow::Result<()> {
    let _heavy = HEAVY.lock().await;
    let s = sets().await;
    let (sg, port) = shared_edge(s, "overrides = { \"user-007\" = \"center\" }").await?;
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
            let conn = amqp::connect(&format!("amqp://{u}:pw@127.0.0.1:{port}/%2f")).await?;
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
    let s = sets().await;
    let port = free_port();
    let admin = admin_addr();
    let cfg = shared_config(s, &admin, port, "");
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    let keys: Vec<String> = (0..USERS).map(user).collect();
    let before = route_cli(&sg.config_path(), &keys);
    let moved = keys
        .iter()
        .find(|k| before[*k].1 == "set-a")
        .unwrap()
        .clone();

    let cfg2 = shared_config(
        s,
        &admin,
        port,
        &format!("overrides = {{ \"{moved}\" = \"set-b\" }}"),
    );
    sg.reload(&cfg2)?;
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
    let conn = amqp::connect(&format!("amqp://{moved}:pw@127.0.0.1:{port}/%2f")).await?;
    assert!(s.nodes[1].connection_users().await?.contains(&moved));
    assert!(!s.nodes[0].connection_users().await?.contains(&moved));
    drop(conn);

    // Routing by a client property: a client that sends none maps to no SET -> the center.
    let (sg2, port2) = shared_edge(s, "key = \"client_property:user_id\"").await?;
    let props = |id: &str| {
        ConnectionProperties::default().with_client_property("user_id".into(), LongString::from(id))
    };
    let routes = route_cli(&sg2.config_path(), &keys[..20]);
    let mut conns = Vec::new();
    for k in &keys[..20] {
        // Every one logs in as the same broker user: only the property can tell them apart.
        conns.push(
            amqp::connect_with(
                &format!("amqp://user-299:pw@127.0.0.1:{port2}/%2f"),
                props(k),
            )
            .await?,
        );
    }
    for (k, (_, pool, _)) in &routes {
        let node = node_of(s, pool);
        let ids = client_property_values(node, "user_id").await?;
        assert!(
            ids.contains(k),
            "{k} should be on {pool}; that broker has {ids:?}"
        );
    }
    let _anonymous = amqp::connect(&format!("amqp://user-298:pw@127.0.0.1:{port2}/%2f")).await?;
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

#[tokio::test]
async fn a_dead_set_fails_over_to_its_standby_and_comes_home_when_back() -> anyhow::Result<()> {
    let center = &sets().await.nodes[2];
    let (mut a, mut b) = (Node::start().await?, Node::start().await?);
    let users: Vec<(String, String)> = (0..40).map(|i| (user(i), "pw".to_string())).collect();
    a.add_users(&users).await?;
    b.add_users(&users).await?;
    let port = free_port();
    let sg = Setgate::start(BIN, &set_config(&admin_addr(), port, &a, &b, center, "")).await?;
    sg.wait_ready().await?;
    let keys: Vec<String> = (0..40).map(user).collect();
    let routes = route_cli(&sg.config_path(), &keys);
    let a_user = keys
        .iter()
        .find(|k| routes[*k].1 == "set-a")
        .unwrap()
        .clone();
    let uri = format!("amqp://{a_user}:pw@127.0.0.1:{port}/%2f");

    let home = amqp::connect(&uri).await?;
    assert!(a.connection_users().await?.contains(&a_user));
    drop(home);

    a.kill9();
    wait_set_health(&sg, "set-a", false).await?;
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

#[tokio::test]
async fn wrong_password_reaches_the_client_as_the_brokers_refusal() -> anyhow::Result<()> {
    let s = sets().await;
    let (_sg, port) = shared_edge(s, "").await?;
    let start = Instant::now();
    let err = amqp::connect(&format!("amqp://user-001:wrong@127.0.0.1:{port}/%2f"))
        .await
        .expect_err("wrong password");
    let text = format!("{err:#}");
    assert!(
        text.contains("ACCESS_REFUSED") || text.contains("403"),
        "{text}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "refusal took {:?}",
        start.elapsed()
    );
    Ok(())
}

/// The config of a `set` listener on `port` over the shared SETs.
fn shared_config(s: &Sets, admin: &str, port: u16, routing_extra: &str) -> String {
    let n = &s.nodes;
    set_config(admin, port, &n[0], &n[1], &n[2], routing_extra)
}

/// setgate with a `set` listener over the shared SETs; returns it with the listener's port.
async fn shared_edge(s: &Sets, routing_extra: &str) -> anyhow::Result<(Setgate, u16)> {
    let port = free_port();
    let sg = Setgate::start(BIN, &shared_config(s, &admin_addr(), port, routing_extra)).await?;
    sg.wait_ready().await?;
    Ok((sg, port))
}

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

#[tokio::test]
async fn pika_and_amqplib_work_through_the_set_listener() -> anyhow::Result<()> {
    let s = sets().await;
    let (_sg, port) = shared_edge(s, "").await?;
    let node_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/clients/node_modules");
    for (i, (program, script)) in [("python3", "pika_client.py"), ("node", "amqplib_client.js")]
        .iter()
        .enumerate()
    {
        let u = user(200 + i);
        let out = tokio::process::Command::new(program)
            .arg(clients_dir().join(script))
            .arg(format!("amqp://{u}:pw@127.0.0.1:{port}/%2f"))
            .arg(format!("{script}-q"))
            .arg("100")
            .env("NODE_PATH", &node_path)
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{script} failed (the test command installs pika and amqplib; run scripts/test):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{stdout}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim())?;
        assert_eq!(v["consumed"], 100);
        assert_eq!(v["in_order"], true);
    }
    Ok(())
}

/// Reads until the peer closes, with a deadline; returns what arrived.
async fn read_to_close(s: &mut TcpStream, within: Duration) -> anyhow::Result<Vec<u8>> {
    let mut all = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut all)).await??;
    Ok(all)
}

#[tokio::test]
async fn hostile_handshakes_get_a_clean_close_and_never_a_stuck_task() -> anyhow::Result<()> {
    let s = sets().await;
    let (sg, port) = shared_edge(s, "").await?;
    let header = b"AMQP\x00\x00\x09\x01";
    let start_len = {
        let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
        c.write_all(header).await?;
        let mut buf = vec![0u8; 7];
        c.read_exact(&mut buf).await?;
        7 + u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize + 1
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "HTTP instead of AMQP",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "protocol header back",
        ),
        (
            "AMQP 0-10 header",
            b"AMQP\x01\x01\x00\x0a".to_vec(),
            "protocol header back",
        ),
        (
            "huge frame size",
            [&header[..], &[1, 0, 0, 0xff, 0xff, 0xff, 0xf0]].concat(),
            "close 501",
        ),
        (
            "frame without frame-end",
            [&header[..], &[1, 0, 0, 0, 0, 0, 4, 0, 10, 0, 11, 0x00]].concat(),
            "close 501",
        ),
        (
            "body frame instead of StartOk",
            [&header[..], &[3, 0, 1, 0, 0, 0, 2, 1, 2, 0xCE]].concat(),
            "close 503",
        ),
        (
            "Connection.Close instead of StartOk",
            [
                &header[..],
                &[
                    1, 0, 0, 0, 0, 0, 11, 0, 10, 0, 50, 0, 200, 0, 0, 0, 0, 0, 0xCE,
                ][..],
            ]
            .concat(),
            "close 503",
        ),
        (
            "truncated frame, then silence",
            [&header[..], &[1, 0, 0, 0, 0, 0, 40, 0, 10]].concat(),
            "close on deadline",
        ),
        (
            "protocol header, then silence",
            header.to_vec(),
            "close on deadline",
        ),
    ];
    for (what, bytes, expect) in cases {
        let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
        c.write_all(&bytes).await?;
        let started = Instant::now();
        let got = read_to_close(&mut c, Duration::from_secs(5))
            .await
            .map_err(|e| anyhow::anyhow!("{what}: not closed: {e}"))?;
        let after_start = if got.starts_with(&[1, 0, 0]) && got.len() >= start_len {
            &got[start_len..]
        } else {
            &got[..]
        };
        match expect {
            "protocol header back" => assert_eq!(got, header, "{what}"),
            "close 501" | "close 503" => {
                // A Connection.Close method frame: class 10, method 50, then the reply code.
                assert!(
                    after_start.len() > 13 && after_start[7..11] == [0, 10, 0, 50],
                    "{what}: {after_start:?}"
                );
                let code = u16::from_be_bytes([after_start[11], after_start[12]]);
                assert_eq!(format!("close {code}"), expect, "{what}");
            }
            _ => {
                assert!(
                    started.elapsed() >= Duration::from_millis(1500),
                    "{what}: closed too early"
                );
                assert!(
                    after_start.len() > 13 && after_start[7..11] == [0, 10, 0, 50],
                    "{what}: expected a Close, got {after_start:?}"
                );
            }
        }
    }
    let failures = sg.get("/metrics").await?.body;
    assert!(
        failures.contains(
            "setgate_handshake_failures_total{listener=\"amqp\",cause=\"frame_too_large\"} 1"
        ),
        "{failures}"
    );
    // And setgate still serves.
    let conn = amqp::connect(&format!("amqp://user-010:pw@127.0.0.1:{port}/%2f")).await?;
    publish_and_consume(&conn, "after-hostile").await?;
    Ok(())
}

#[tokio::test]
async fn a_thousand_silent_clients_do_not_delay_a_good_one() -> anyhow::Result<()> {
    let _heavy = HEAVY.lock().await;
    setgate_testkit::raise_fd_limit();
    let s = sets().await;
    let (sg, port) = shared_edge(s, "").await?;
    let uri = format!("amqp://user-020:pw@127.0.0.1:{port}/%2f");
    async fn median_connect(uri: &str) -> anyhow::Result<Duration> {
        let mut times = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            let c = amqp::connect(uri).await?;
            times.push(t.elapsed());
            drop(c);
        }
        times.sort();
        Ok(times[3])
    }
    // Interleave rounds with and without the silent crowd, so background load on a shared machine
    // affects both sides alike.
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        without.push(median_connect(&uri).await?);
        let mut silent = Vec::new();
        for _ in 0..1000 {
            silent.push(TcpStream::connect(("127.0.0.1", port)).await?);
        }
        wait_until(
            "1000 silent connections accepted",
            Duration::from_secs(10),
            || async {
                let v = sg.get_json("/api/listeners").await.ok()?;
                (v["listeners"][0]["active"].as_u64()? >= 1000).then_some(())
            },
        )
        .await?;
        with.push(median_connect(&uri).await?);
        drop(silent);
        wait_until(
            "silent connections gone",
            Duration::from_secs(10),
            || async {
                let v = sg.get_json("/api/listeners").await.ok()?;
                (v["listeners"][0]["active"].as_u64()? < 10).then_some(())
            },
        )
        .await?;
    }
    without.sort();
    with.sort();
    let (before, during) = (without[1], with[1]);
    println!("connection setup (median of 3 rounds): {before:?} alone, {during:?} next to 1000 silent clients");
    assert!(
        during < before + Duration::from_millis(20),
        "1000 silent clients slowed a good one from {before:?} to {during:?}"
    );
    Ok(())
}
