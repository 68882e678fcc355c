//! A pool server that vanishes from the network (every packet dropped, no reset): its health
//! check marks it down within `fall * inter + timeout`, and from then on a new client through
//! setgate is served by the other server without waiting on the dead one.

mod netfaults_common;

use netfaults_common::{config, require_iptables, BIN};
use setgate_testkit::netfault::Blackhole;
use setgate_testkit::{amqp, free_port, wait_until, Node, Setgate};
use std::time::{Duration, Instant};

/// `inter = 1s`, `fall = 3`, `timeout = 1s`: down within 3 * 1 s + 1 s.
const BOUND: Duration = Duration::from_secs(4);
/// Margin for a loaded machine (status polled every 50 ms, probes scheduled on a busy runtime).
const MARGIN: Duration = Duration::from_secs(2);
/// The pool's default `connect_timeout` is 2 s: a client that tried the dead server first
/// would take at least that long.
const CLIENT_LIMIT: Duration = Duration::from_millis(1500);

/// The health of `server` in pool `p` from `/api/pools`: "up", "down", "going down", ...
async fn health(sg: &Setgate, server: &str) -> Option<String> {
    let v = sg.get_json("/api/pools").await.ok()?;
    let pool = v["pools"].as_array()?.iter().find(|p| p["name"] == "p")?;
    let s = pool["servers"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == server)?;
    Some(s["health"].as_str()?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_server_is_marked_down_in_time_and_new_clients_skip_it() -> anyhow::Result<()>
{
    require_iptables();
    let (n0, n1) = tokio::join!(Node::start(), Node::start());
    let (n0, n1) = (n0?, n1?);
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = config(&format!(
        r#"[[listener]]
name = "amqp"
bind = "{listen}"
mode = "tcp"
pool = "p"

[[pool]]
name = "p"
balance = "roundrobin"
check = {{ kind = "amqp", inter = "1s", rise = 2, fall = 3, timeout = "1s" }}
servers = [{{ name = "n0", addr = "{}" }}, {{ name = "n1", addr = "{}" }}]
"#,
        n0.amqp_addr(),
        n1.amqp_addr()
    ));
    let sg = Setgate::start(BIN, &cfg).await?;
    for s in ["n0", "n1"] {
        wait_until(&format!("{s} up"), Duration::from_secs(30), || async {
            (health(&sg, s).await.as_deref() == Some("up")).then_some(())
        })
        .await
        .map_err(|e| e.context(sg.log()))?;
    }

    let hole = Blackhole::port(n0.amqp_port)?;
    wait_until("n0 marked down", Duration::from_secs(30), || async {
        (health(&sg, "n0").await.as_deref() == Some("down")).then_some(())
    })
    .await
    .map_err(|e| e.context(sg.log()))?;
    let down_after = hole.since().elapsed();

    // Round robin would give every other client to n0; none may wait on it.
    let uri = format!("amqp://guest:guest@{listen}/%2f");
    let before = n1.connection_count().await?;
    let mut slowest = Duration::ZERO;
    let mut conns = Vec::new();
    for _ in 0..6 {
        let start = Instant::now();
        let conn = tokio::time::timeout(Duration::from_secs(10), amqp::connect(&uri)).await??;
        slowest = slowest.max(start.elapsed());
        conns.push(conn);
    }
    wait_until(
        "6 more connections on n1",
        Duration::from_secs(30),
        || async { (n1.connection_count().await.ok()? >= before + 6).then_some(()) },
    )
    .await?;
    println!(
        "blackholed server: marked down after {:.1}s (bound fall*inter+timeout = {}s); 6 new clients served by the other server, slowest connect {} ms",
        down_after.as_secs_f64(),
        BOUND.as_secs(),
        slowest.as_millis()
    );
    assert!(
        down_after <= BOUND + MARGIN,
        "marked down after {down_after:?}, bound {BOUND:?}"
    );
    assert!(
        slowest <= CLIENT_LIMIT,
        "a client waited {slowest:?}: it was sent to the dead server first"
    );
    for c in conns {
        let _ = c.close(200, "OK".into()).await;
    }

    drop(hole);
    wait_until("n0 up again", Duration::from_secs(30), || async {
        (health(&sg, "n0").await.as_deref() == Some("up")).then_some(())
    })
    .await?;
    Ok(())
}
