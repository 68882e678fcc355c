//! Clients a proxy must survive or serve specially: idle and garbage connections next to a good
//! one, a listener's maxconn, and PROXY protocol headers in and out.

use super::*;

#[tokio::test]
async fn idle_and_garbage_clients_never_block_a_good_one() -> anyhow::Result<()> {
    let nodes = shared_nodes().await;
    let cfg = Config::new()
        .listener(Listener::tcp("amqp", "p"))
        .listener(Listener::tcp("small", "p").maxconn(5))
        .pool(Pool::new("p").nodes(&[&nodes[2]]));
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    let (port, small) = (sg.addr("amqp").await?, sg.addr("small").await?);
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(port).await?);
    }
    for i in 0..50 {
        let mut s = TcpStream::connect(port).await?;
        s.write_all(format!("GARBAGE {i} \x00\x01\x02 not amqp\r\n").as_bytes())
            .await?;
        idle.push(s);
    }
    let start = Instant::now();
    let conn = amqp::connect(&guest(port.port())).await?;
    round_trip(&conn, "after-garbage", 10).await?;
    println!("a good client connected and round-tripped 10 messages in {:?} next to 250 idle/garbage ones", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(3));

    // maxconn: the listener stops accepting (backpressure); the sixth waits in the kernel's
    // queue, neither served nor dropped, until one of the five ends.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(small).await?);
    }
    let active = || async {
        let v = sg.get_json("/api/listeners").await.ok()?;
        let l = v["listeners"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == "small")?
            .clone();
        l["active"].as_u64()
    };
    wait_until(
        "5 connections on the small listener",
        Duration::from_secs(5),
        || async { (active().await? == 5).then_some(()) },
    )
    .await?;
    let mut sixth = TcpStream::connect(small).await?;
    let mut buf = [0u8; 16];
    let waited = tokio::time::timeout(Duration::from_secs(1), sixth.read(&mut buf)).await;
    assert!(waited.is_err(), "over maxconn a client waits: {waited:?}");
    let paused = sg
        .metric("setgate_listener_maxconn_reached_total{listener=\"small\"}")
        .await?;
    assert!(paused >= Some(1.0), "{paused:?}");
    drop(held.pop());
    // The sixth takes the freed place.
    wait_until(
        "the sixth to be accepted",
        Duration::from_secs(10),
        || async {
            let total = sg
                .metric("setgate_listener_connections_total{listener=\"small\"}")
                .await
                .ok()??;
            (total >= 6.0).then_some(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn proxy_protocol_carries_the_client_address_to_the_broker() -> anyhow::Result<()> {
    // This broker only accepts connections that start with a PROXY header.
    let node = Node::start_with(NodeOptions {
        extra_config: "proxy_protocol = true\n".into(),
        ..Default::default()
    })
    .await?;
    let cfg = Config::new()
        .listener(Listener::tcp("edge", "rabbit").accept_proxy(true))
        .pool(
            Pool::new("rabbit")
                .send_proxy(true)
                .server("n", node.amqp_addr()),
        );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    let edge = sg.port("edge").await?;

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
            let conn = amqp::connect(&guest(hp_port)).await?;
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
