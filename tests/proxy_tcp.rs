//! setgate as HAProxy's replacement in front of RabbitMQ: `tcp` listeners, TLS, balance, health
//! checks, failover, drain, reload and hostile clients — against real brokers and real clients.

mod common;

use common::{add_user, admin_addr, servers, shared_nodes, uri, wait_connections, BIN};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use setgate_testkit::{amqp, free_port, pki::Pki, wait_until, Cluster, Node, Setgate};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Declares a queue, publishes `n` messages with confirms, consumes and acks them all.
async fn round_trip(conn: &lapin::Connection, queue: &str, n: usize) -> anyhow::Result<()> {
    let ch = amqp::confirm_channel(conn).await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    for i in 0..n {
        amqp::publish_confirmed(&ch, "", queue, format!("m{i}").as_bytes()).await?;
    }
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "t".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for i in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
        assert_eq!(d.data, format!("m{i}").as_bytes());
        d.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

#[tokio::test]
async fn lapin_works_over_tcp_tls_and_mutual_tls() -> anyhow::Result<()> {
    let nodes = shared_nodes().await;
    let dir = setgate_testkit::unique_dir("pki");
    let pki = Pki::generate(&dir)?;
    let (tcp, tls, mtls) = (free_port(), free_port(), free_port());
    let cfg = format!(
        r#"
[admin]
listen = "{admin}"

[[listener]]
name = "plain"
bind = "127.0.0.1:{tcp}"
pool = "p"

[[listener]]
name = "tls"
bind = "127.0.0.1:{tls}"
pool = "p"
tls = {{ cert = "{cert}", key = "{key}" }}

[[listener]]
name = "mtls"
bind = "127.0.0.1:{mtls}"
pool = "p"
tls = {{ cert = "{cert}", key = "{key}", client_ca = "{ca}" }}

[[pool]]
name = "p"
check = {{ kind = "amqp", inter = "500ms" }}
servers = {servers}
"#,
        admin = admin_addr(),
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
        ca = pki.ca.display(),
        servers = servers(&[&nodes[0]]),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;

    let conn = amqp::connect(&format!("amqp://guest:guest@127.0.0.1:{tcp}/%2f")).await?;
    round_trip(&conn, "tcp-rt", 50).await?;

    let ca = std::fs::read_to_string(&pki.ca)?;
    let conn = amqp::connect_tls(
        &format!("amqps://guest:guest@127.0.0.1:{tls}/%2f"),
        &ca,
        None,
    )
    .await?;
    round_trip(&conn, "tls-rt", 50).await?;

    let refused = amqp::connect_tls(
        &format!("amqps://guest:guest@127.0.0.1:{mtls}/%2f"),
        &ca,
        None,
    )
    .await;
    assert!(
        refused.is_err(),
        "a client without a certificate must be refused by a mutual-TLS listener"
    );
    let cert = std::fs::read_to_string(&pki.client_cert)?;
    let key = std::fs::read_to_string(&pki.client_key)?;
    let conn = amqp::connect_tls(
        &format!("amqps://guest:guest@127.0.0.1:{mtls}/%2f"),
        &ca,
        Some((&cert, &key)),
    )
    .await?;
    round_trip(&conn, "mtls-rt", 50).await?;
    Ok(())
}

#[tokio::test]
async fn roundrobin_spreads_evenly_and_leastconn_fills_the_emptiest() -> anyhow::Result<()> {
    let nodes = shared_nodes().await;
    let all: Vec<&Node> = nodes.iter().collect();
    add_user(&all, "rr").await;
    add_user(&all, "lc").await;
    let (rr, lc) = (free_port(), free_port());
    let cfg = format!(
        r#"
[admin]
listen = "{admin}"

[[listener]]
name = "rr"
bind = "127.0.0.1:{rr}"
pool = "rr"

[[listener]]
name = "lc"
bind = "127.0.0.1:{lc}"
pool = "lc"

[[pool]]
name = "rr"
balance = "roundrobin"
servers = {servers}

[[pool]]
name = "lc"
balance = "leastconn"
servers = {servers}
"#,
        admin = admin_addr(),
        servers = servers(&all),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;

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

/// Polls /api/pools until server `server` of `pool` has `up == want`; returns how long it took.
async fn wait_health(
    sg: &Setgate,
    pool: &str,
    server: &str,
    want: bool,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    wait_until(&format!("{pool}/{server} up={want}"), timeout, || async {
        let v = sg.get_json("/api/pools").await.ok()?;
        let up = v["pools"].as_array()?.iter().find(|p| p["name"] == pool)?["servers"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == server)?["up"]
            .as_bool()?;
        (up == want).then_some(())
    })
    .await?;
    Ok(start.elapsed())
}

#[tokio::test]
async fn failover_in_a_real_cluster_then_backup_then_nothing() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let mut backup = Node::start().await?;
    let port = free_port();
    let members: Vec<&Node> = cluster.nodes.iter().collect();
    let cfg = format!(
        r#"
[admin]
listen = "{admin}"

[[listener]]
name = "amqp"
bind = "127.0.0.1:{port}"
pool = "rabbit"

[[pool]]
name = "rabbit"
check = {{ kind = "amqp", inter = "500ms", fall = 3, rise = 2, timeout = "400ms" }}
servers = [{members}, {{ name = "bk", addr = "{backup}", backup = true }}]
"#,
        admin = admin_addr(),
        members = servers(&members).trim_matches(|c| c == '[' || c == ']'),
        backup = backup.amqp_addr(),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    let guest = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");

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
    let cfg = format!(
        r#"
[admin]
listen = "{admin}"

[[listener]]
name = "amqp"
bind = "127.0.0.1:{port}"
pool = "amqp-checked"

[[pool]]
name = "amqp-checked"
check = {{ kind = "amqp", inter = "300ms", fall = 2, timeout = "250ms" }}
servers = [{{ name = "n", addr = "{addr}" }}]

[[pool]]
name = "tcp-checked"
check = {{ kind = "tcp", inter = "300ms", fall = 2, timeout = "250ms" }}
servers = [{{ name = "n", addr = "{addr}" }}]

[[pool]]
name = "http-checked"
check = {{ kind = "http", path = "/api/health/checks/virtual-hosts", auth = "guest:guest", inter = "300ms", fall = 2, timeout = "250ms" }}
servers = [{{ name = "n", addr = "{addr}", check_port = {mgmt} }}]
"#,
        admin = admin_addr(),
        port = free_port(),
        addr = node.amqp_addr(),
        mgmt = node.mgmt_port,
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
async fn drain_through_the_api_keeps_established_connections() -> anyhow::Result<()> {
    let nodes = shared_nodes().await;
    let pair: Vec<&Node> = nodes[..2].iter().collect();
    add_user(&pair, "drain").await;
    let dir = setgate_testkit::unique_dir("token");
    std::fs::write(dir.join("token"), "s3cret-token\n")?;
    let port = free_port();
    let cfg = format!(
        r#"
[admin]
listen = "{admin}"
token_file = "{token}"

[[listener]]
name = "amqp"
bind = "127.0.0.1:{port}"
pool = "p"

[[pool]]
name = "p"
servers = {servers}
"#,
        admin = admin_addr(),
        token = dir.join("token").display(),
        servers = servers(&pair),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
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

#[tokio::test]
async fn reload_moves_new_connections_and_keeps_open_ones() -> anyhow::Result<()> {
    let nodes = shared_nodes().await;
    let all: Vec<&Node> = nodes.iter().collect();
    add_user(&all, "reload").await;
    let port = free_port();
    let admin = admin_addr();
    let cfg = |pool_node: &Node| {
        format!(
            r#"
[admin]
listen = "{admin}"

[[listener]]
name = "amqp"
bind = "127.0.0.1:{port}"
pool = "p"

[[pool]]
name = "p"
servers = [{{ name = "only", addr = "{addr}" }}]
"#,
            addr = pool_node.amqp_addr()
        )
    };
    let sg = Setgate::start(BIN, &cfg(&nodes[0])).await?;
    sg.wait_ready().await?;
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
async fn idle_and_garbage_clients_never_block_a_good_one() -> anyhow::Result<()> {
    let nodes = shared_nodes().await;
    let port = free_port();
    let small = free_port();
    let cfg = format!(
        r#"
[admin]
listen = "{admin}"

[[listener]]
name = "amqp"
bind = "127.0.0.1:{port}"
pool = "p"

[[listener]]
name = "small"
bind = "127.0.0.1:{small}"
pool = "p"
maxconn = 5

[[pool]]
name = "p"
servers = {servers}
"#,
        admin = admin_addr(),
        servers = servers(&[&nodes[2]]),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(("127.0.0.1", port)).await?);
    }
    for i in 0..50 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GARBAGE {i} \x00\x01\x02 not amqp\r\n").as_bytes())
            .await?;
        idle.push(s);
    }
    let start = Instant::now();
    let conn = amqp::connect(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).await?;
    round_trip(&conn, "after-garbage", 10).await?;
    println!("a good client connected and round-tripped 10 messages in {:?} next to 250 idle/garbage ones", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(3));

    // maxconn: the sixth connection is closed at once, not left hanging.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(("127.0.0.1", small)).await?);
    }
    wait_until(
        "5 connections on the small listener",
        Duration::from_secs(5),
        || async {
            let v = sg.get_json("/api/listeners").await.ok()?;
            let l = v["listeners"]
                .as_array()?
                .iter()
                .find(|l| l["name"] == "small")?
                .clone();
            (l["active"] == 5).then_some(())
        },
    )
    .await?;
    let mut sixth = TcpStream::connect(("127.0.0.1", small)).await?;
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), sixth.read(&mut buf)).await??;
    assert_eq!(n, 0, "the connection over maxconn must be closed");
    assert!(start.elapsed() < Duration::from_millis(500));
    let refused = sg
        .metric("setgate_listener_refused_total{listener=\"small\",reason=\"maxconn\"}")
        .await?;
    assert_eq!(refused, Some(1.0));
    Ok(())
}

#[tokio::test]
async fn proxy_protocol_carries_the_client_address_to_the_broker() -> anyhow::Result<()> {
    // This broker only accepts connections that start with a PROXY header.
    let node = Node::start_with(setgate_testkit::NodeOptions {
        extra_config: "proxy_protocol = true\n".into(),
        ..Default::default()
    })
    .await?;
    let edge = free_port();
    let cfg = format!(
        r#"
[admin]
listen = "{admin}"

[[listener]]
name = "edge"
bind = "127.0.0.1:{edge}"
pool = "rabbit"
accept_proxy = true

[[pool]]
name = "rabbit"
send_proxy = true
servers = [{{ name = "n", addr = "{addr}" }}]
"#,
        admin = admin_addr(),
        addr = node.amqp_addr(),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;

    // A balancer in front says the client is 192.0.2.55:40000 (PROXY v1); setgate passes that on
    // to the broker (PROXY v2), which must show it as the connection's peer.
    let mut raw = TcpStream::connect(("127.0.0.1", edge)).await?;
    raw.write_all(b"PROXY TCP4 192.0.2.55 127.0.0.1 40000 5672\r\nAMQP\x00\x00\x09\x01")
        .await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await??;
    assert!(
        n > 0 && buf[0] == 1,
        "expected the broker's Connection.Start through two PROXY hops"
    );
    let peers = node
        .ctl(&[
            "list_connections",
            "peer_host",
            "peer_port",
            "--silent",
            "--no-table-headers",
        ])
        .await?;
    assert!(
        peers
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["192.0.2.55", "40000"]),
        "the broker must see the client's address from the PROXY header, not setgate's: {peers:?}"
    );
    drop(raw);

    // HAProxy in front (send-proxy, i.e. PROXY v1), when installed: a real client gets through.
    if which("haproxy") {
        let hp_port = free_port();
        let dir = setgate_testkit::unique_dir("haproxy");
        let hp_cfg = format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
             frontend f\n  bind 127.0.0.1:{hp_port}\n  default_backend b\nbackend b\n  server edge 127.0.0.1:{edge} send-proxy\n"
        );
        std::fs::write(dir.join("haproxy.cfg"), hp_cfg)?;
        let mut hp = std::process::Command::new("haproxy")
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .arg("-db")
            .spawn()?;
        let r = async {
            wait_until("haproxy to listen", Duration::from_secs(10), || async {
                TcpStream::connect(("127.0.0.1", hp_port))
                    .await
                    .ok()
                    .map(drop)
            })
            .await?;
            let conn =
                amqp::connect(&format!("amqp://guest:guest@127.0.0.1:{hp_port}/%2f")).await?;
            round_trip(&conn, "via-haproxy", 10).await?;
            anyhow::Ok(())
        }
        .await;
        let _ = hp.kill();
        let _ = hp.wait();
        r?;
    } else {
        println!("haproxy not installed: skipped the HAProxy-in-front part");
    }
    Ok(())
}

fn which(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn on_marked_down_shutdown_sessions_closes_established_connections() -> anyhow::Result<()> {
    let mut node = Node::start().await?;
    let other = Node::start().await?;
    let port = free_port();
    let cfg = format!(
        r#"
[admin]
listen = "{admin}"

[[listener]]
name = "amqp"
bind = "127.0.0.1:{port}"
pool = "p"

[[pool]]
name = "p"
balance = "first"
on_marked_down = "shutdown-sessions"
check = {{ kind = "amqp", inter = "300ms", fall = 2, timeout = "250ms" }}
servers = [{{ name = "a", addr = "{a}" }}, {{ name = "b", addr = "{b}" }}]
"#,
        admin = admin_addr(),
        a = node.amqp_addr(),
        b = other.amqp_addr(),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    // A raw client holding a connection spliced to "a"; stopping "a" with SIGSTOP keeps its socket
    // open, so only setgate can end this connection.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).await?;
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

#[tokio::test]
async fn tls_to_the_brokers_and_server_maxconn() -> anyhow::Result<()> {
    // A broker that speaks amqps on a second port, with a certificate from the test PKI.
    let dir = setgate_testkit::unique_dir("broker-pki");
    let pki = Pki::generate(&dir)?;
    let tls_port = free_port();
    let node = Node::start_with(setgate_testkit::NodeOptions {
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
    let (port, small) = (free_port(), free_port());
    let cfg = format!(
        r#"
[admin]
listen = "{admin}"

[[listener]]
name = "amqp"
bind = "127.0.0.1:{port}"
pool = "amqps"

[[listener]]
name = "small"
bind = "127.0.0.1:{small}"
pool = "two-slots"

[[pool]]
name = "amqps"
check = {{ kind = "amqp", inter = "500ms" }}
tls = {{ ca = "{ca}", server_name = "localhost" }}
servers = [{{ name = "n", addr = "127.0.0.1:{tls_port}" }}]

[[pool]]
name = "two-slots"
servers = [{{ name = "n", addr = "{plain}", maxconn = 2 }}]
"#,
        admin = admin_addr(),
        ca = pki.ca.display(),
        plain = node.amqp_addr(),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    // The amqp health check itself runs over TLS: the pool is up only if TLS works.
    wait_health(&sg, "amqps", "n", true, Duration::from_secs(10)).await?;
    let conn = amqp::connect(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).await?;
    round_trip(&conn, "over-amqps", 20).await?;
    let ssl = node
        .ctl(&["list_connections", "ssl", "--silent", "--no-table-headers"])
        .await?;
    assert!(
        ssl.lines().any(|l| l.trim() == "true"),
        "the broker must see a TLS connection: {ssl:?}"
    );

    // Server maxconn: two connections fit, the third is closed at once.
    let _a = amqp::connect(&format!("amqp://guest:guest@127.0.0.1:{small}/%2f")).await?;
    let _b = amqp::connect(&format!("amqp://guest:guest@127.0.0.1:{small}/%2f")).await?;
    let start = Instant::now();
    let third = amqp::connect(&format!("amqp://guest:guest@127.0.0.1:{small}/%2f")).await;
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

#[tokio::test]
async fn sigterm_stops_accepting_drains_then_closes_and_logs_json() -> anyhow::Result<()> {
    let nodes = shared_nodes().await;
    let port = free_port();
    let cfg = format!(
        r#"
shutdown_grace = "3s"

[admin]
listen = "{admin}"

[[listener]]
name = "amqp"
bind = "127.0.0.1:{port}"
pool = "p"

[[pool]]
name = "p"
servers = {servers}
"#,
        admin = admin_addr(),
        servers = servers(&[&nodes[0]]),
    );
    let opts = setgate_testkit::setgate::SetgateOptions {
        args: vec!["--log-format".into(), "json".into()],
        ..Default::default()
    };
    let mut sg = Setgate::start_with(BIN, &cfg, opts).await?;
    sg.wait_ready().await?;
    let open = amqp::connect(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).await?;
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
        TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
            .then_some(())
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
