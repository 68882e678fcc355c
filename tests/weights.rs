//! Server weights, slowstart and runtime state that lasts (`[admin] state_file`), against real
//! brokers and real AMQP clients. Connections are counted by the brokers themselves
//! (`rabbitmqctl list_connections`), never by setgate's own counters.

mod common;

use common::{add_user, connections_of, shared_nodes, uri, wait_connections, BIN};
use setgate_testkit::config::{Check, Config, Listener, Pool, Server};
use setgate_testkit::{amqp, amqp_lite, unique_dir, wait_until, Node, Setgate};
use std::time::{Duration, Instant};

/// The `server` entry of `pool` in `/api/pools`.
async fn server_json(sg: &Setgate, pool: &str, server: &str) -> anyhow::Result<serde_json::Value> {
    let v = sg.get_json("/api/pools").await?;
    v["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == pool))
        .and_then(|p| p["servers"].as_array())
        .and_then(|s| s.iter().find(|s| s["name"] == server))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no server {pool}/{server} in /api/pools: {v}"))
}

/// Opens `n` connections one after the other as `user`, and keeps them.
async fn connect_n(port: u16, user: &str, n: usize) -> anyhow::Result<Vec<lapin::Connection>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(amqp::connect(&uri(port, user)).await?);
    }
    Ok(held)
}

async fn post_state(
    sg: &Setgate,
    server: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let r = sg
        .post(&format!("/api/pools/p/servers/{server}/state"), body, None)
        .await?;
    anyhow::ensure!(
        r.status == 200,
        "POST state of {server}: {} {}",
        r.status,
        r.body
    );
    r.json()
}

#[tokio::test]
async fn weights_3_to_1_split_400_connections_300_100() -> anyhow::Result<()> {
    setgate_testkit::raise_fd_limit();
    let nodes = shared_nodes().await;
    let pair: Vec<&Node> = nodes[..2].iter().collect();
    add_user(&pair, "w-rr").await;
    add_user(&pair, "w-lc").await;
    let cfg = Config::new()
        .listener(Listener::tcp("rr", "rr"))
        .listener(Listener::tcp("lc", "lc"))
        .pool(
            Pool::new("rr")
                .balance("roundrobin")
                .server_with(Server::new("heavy", pair[0].amqp_addr()).weight(3))
                .server_with(Server::new("light", pair[1].amqp_addr()).weight(1)),
        )
        .pool(
            Pool::new("lc")
                .balance("leastconn")
                .server_with(Server::new("heavy", pair[0].amqp_addr()).weight(3))
                .server_with(Server::new("light", pair[1].amqp_addr()).weight(1)),
        );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    let (rr, lc) = (sg.port("rr").await?, sg.port("lc").await?);

    let started = Instant::now();
    let _rr = connect_n(rr, "w-rr", 400).await?;
    let waited = wait_connections(&pair, "w-rr", &[300, 100]).await;
    let counted = connections_of(&pair, "w-rr").await;
    eprintln!(
        "roundrobin 3:1, 400 connections in {:?}: the brokers count {counted:?}",
        started.elapsed()
    );
    waited?;

    let _lc = connect_n(lc, "w-lc", 40).await?;
    let waited = wait_connections(&pair, "w-lc", &[30, 10]).await;
    eprintln!(
        "leastconn 3:1, 40 connections held: the brokers count {:?}",
        connections_of(&pair, "w-lc").await
    );
    waited?;
    let heavy = server_json(&sg, "rr", "heavy").await?;
    assert_eq!(
        (heavy["weight"].as_u64(), heavy["effective_weight"].as_f64()),
        (Some(3), Some(3.0))
    );
    Ok(())
}

#[tokio::test]
async fn a_server_back_up_ramps_in_over_slowstart() -> anyhow::Result<()> {
    const WINDOW: u64 = 20; // seconds of slowstart
    const SLICE: u64 = 4; // seconds per measured slice
    let nodes = shared_nodes().await;
    let mut back = Node::start().await?;
    let steady = &nodes[2];
    let users: Vec<String> = (0..=WINDOW / SLICE).map(|k| format!("ss{k}")).collect();
    for u in &users {
        add_user(&[steady, &back], u).await;
    }
    let cfg = Config::new().listener(Listener::tcp("amqp", "p")).pool(
        Pool::new("p")
            .balance("roundrobin")
            .slowstart(&format!("{WINDOW}s"))
            .check(Check::amqp().inter("300ms").rise(1).fall(3).timeout("2s"))
            .server("steady", steady.amqp_addr())
            .server("back", back.amqp_addr()),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;
    let port = sg.port("amqp").await?;

    back.stop().await?;
    let is_up = |want: bool| {
        let sg = &sg;
        async move {
            wait_until(
                &format!("back up={want}"),
                Duration::from_secs(60),
                || async {
                    let s = server_json(sg, "p", "back").await.ok()?;
                    (s["up"].as_bool()? == want).then_some(s)
                },
            )
            .await
        }
    };
    is_up(false).await?;
    back.restart().await?;
    let s = is_up(true).await?;
    let t0 = Instant::now();
    eprintln!("back is up again: {s}");
    assert!(
        s["slowstart_left"].as_f64().is_some_and(|l| l > 0.0),
        "a server back up is ramping: {s}"
    );

    // One user per slice; the brokers count which broker each slice's connections reached. The
    // clients are handshake-only (`amqp_lite`): a lapin connection costs a thread, and on a loaded
    // 2-core machine a slice once got fewer than 10 of them, too few to read a share from.
    let mut held = Vec::new();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for (k, user) in users.iter().enumerate() {
        let end = Duration::from_secs(SLICE * (k as u64 + 1));
        while t0.elapsed() < end {
            tick.tick().await;
            held.push(amqp_lite::connect(addr, user, user, "/").await?);
        }
    }
    let mut shares = Vec::new();
    for (k, user) in users.iter().enumerate() {
        let c = connections_of(&[steady, &back], user).await;
        let share = c[1] as f64 / (c[0] + c[1]).max(1) as f64;
        eprintln!(
            "slice {k} ({}-{} s after up): steady {} back {} -> back's share {share:.2}",
            SLICE * k as u64,
            SLICE * (k as u64 + 1),
            c[0],
            c[1]
        );
        assert!(
            c[0] + c[1] >= 10,
            "slice {k}: too few connections to measure: {c:?}"
        );
        shares.push(share);
    }
    // A linear ramp against a full-weight peer gives back t/(WINDOW+t): ~0.09 in the first slice,
    // ~0.46 in the last slice of the window, 0.5 after it.
    let last_in_window = shares[shares.len() - 2];
    assert!(
        shares[0] < 0.25,
        "first slice: back took {:.2}, not a ramp",
        shares[0]
    );
    assert!(
        last_in_window > shares[0] + 0.15,
        "the share must grow over the window: {shares:.2?}"
    );
    for w in shares.windows(2) {
        assert!(
            w[1] >= w[0] - 0.08,
            "the share fell between slices: {shares:.2?}"
        );
    }
    let after = shares[shares.len() - 1];
    assert!(
        (0.38..=0.62).contains(&after),
        "after the window both take half: {after:.2} ({shares:.2?})"
    );
    Ok(())
}

#[tokio::test]
async fn a_drained_server_stays_drained_across_kill_and_restart_and_a_reload_keeps_runtime_state(
) -> anyhow::Result<()> {
    let nodes = shared_nodes().await;
    let pair: Vec<&Node> = nodes[..2].iter().collect();
    add_user(&pair, "persist").await;
    let dir = unique_dir("state");
    let state_file = dir.join("setgate-state.json");
    let pool = |n1_weight: u32, slowstart: Option<&str>| {
        let p = Pool::new("p")
            .server("n0", pair[0].amqp_addr())
            .server_with(Server::new("n1", pair[1].amqp_addr()).weight(n1_weight));
        match slowstart {
            Some(s) => p.slowstart(s),
            None => p,
        }
    };
    let base = Config::new()
        .state_file(&state_file)
        .listener(Listener::tcp("amqp", "p"));
    let cfg = base.clone().pool(pool(1, None));
    let mut sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;

    post_state(&sg, "n0", serde_json::json!({ "state": "drain" })).await?;
    let answer = post_state(&sg, "n1", serde_json::json!({ "weight": 3 })).await?;
    assert_eq!(answer["weight"], 3, "{answer}");
    assert_eq!(answer["config_weight"], 1, "{answer}");
    let saved = std::fs::read_to_string(&state_file)?;
    eprintln!("state file after the API calls:\n{saved}");

    sg.kill9();
    sg.restart().await?;
    sg.wait_ready().await?;
    let log = sg.log();
    let restored = format!(
        "restored the admin state and weight of 2 server(s) from {}",
        state_file.display()
    );
    assert!(
        log.contains(&restored),
        "log must say what it restored: {log}"
    );
    assert_eq!(server_json(&sg, "p", "n0").await?["admin"], "drain");
    assert_eq!(server_json(&sg, "p", "n1").await?["weight"], 3);
    let port = sg.port("amqp").await?;
    let mut held = connect_n(port, "persist", 4).await?;
    wait_connections(&pair, "persist", &[0, 4]).await?;
    eprintln!("after kill -9 and restart: n0 still drained, the brokers count [0, 4]");

    // SIGHUP with another setting changed: runtime state and weights stay.
    post_state(&sg, "n0", serde_json::json!({ "state": "maint" })).await?;
    post_state(&sg, "n1", serde_json::json!({ "weight": 5 })).await?;
    sg.reload(&base.clone().pool(pool(1, Some("10s"))))?;
    let reloaded = |want: &'static str| {
        let sg = &sg;
        async move {
            wait_until(
                "the reload to be in use",
                Duration::from_secs(20),
                || async {
                    let v = sg.get_json("/api/pools").await.ok()?;
                    (v["pools"][0]["slowstart"] == want).then_some(())
                },
            )
            .await
        }
    };
    reloaded("10s").await?;
    let (n0, n1) = (
        server_json(&sg, "p", "n0").await?,
        server_json(&sg, "p", "n1").await?,
    );
    assert_eq!(n0["admin"], "maint", "{n0}");
    assert_eq!(
        (n1["weight"].as_u64(), n1["config_weight"].as_u64()),
        (Some(5), Some(1)),
        "{n1}"
    );
    held.extend(connect_n(port, "persist", 3).await?);
    wait_connections(&pair, "persist", &[0, 7]).await?;

    // A reload that changes n1's weight in the file: the file's weight replaces the runtime one.
    sg.reload(&base.clone().pool(pool(2, Some("11s"))))?;
    reloaded("11s").await?;
    let n1 = server_json(&sg, "p", "n1").await?;
    assert_eq!(
        (n1["weight"].as_u64(), n1["config_weight"].as_u64()),
        (Some(2), Some(2)),
        "{n1}"
    );
    let saved: serde_json::Value = wait_until(
        "the state file to follow the reload",
        Duration::from_secs(10),
        || async {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&state_file).ok()?).ok()?;
            (v["servers"].as_array()?.len() == 1).then_some(v)
        },
    )
    .await?;
    assert_eq!(saved["servers"][0]["server"], "n0");
    assert_eq!(saved["servers"][0]["admin"], "maint");
    drop(held);
    Ok(())
}

#[tokio::test]
async fn a_missing_or_corrupt_state_file_is_reported_and_ignored() -> anyhow::Result<()> {
    let nodes = shared_nodes().await;
    let pair: Vec<&Node> = nodes[..2].iter().collect();
    add_user(&pair, "statefile").await;
    let dir = unique_dir("state-bad");
    for (case, content) in [
        ("missing", None),
        ("corrupt", Some("{\"version\": 1, \"servers\": [{\"pool\"")),
    ] {
        let path = dir.join(format!("{case}.json"));
        if let Some(text) = content {
            std::fs::write(&path, text)?;
        }
        let cfg = Config::new()
            .state_file(&path)
            .listener(Listener::tcp("amqp", "p"))
            .pool(Pool::new("p").nodes(&pair));
        let sg = Setgate::start(BIN, &cfg).await?;
        sg.wait_ready().await?;
        let log = sg.log();
        let want = match case {
            "missing" => format!("state file {} does not exist yet", path.display()),
            _ => format!("state file {} is corrupt", path.display()),
        };
        assert!(
            log.contains(&want),
            "{case}: the log must say {want:?}:\n{log}"
        );
        eprintln!(
            "{case}: {}",
            log.lines().find(|l| l.contains(&want)).unwrap_or_default()
        );
        // Every server ready with the config's weight; connections flow to both.
        for s in ["n0", "n1"] {
            let j = server_json(&sg, "p", s).await?;
            assert_eq!(
                (j["admin"].as_str(), j["weight"].as_u64()),
                (Some("ready"), Some(1)),
                "{j}"
            );
        }
        let port = sg.port("amqp").await?;
        let held = connect_n(port, "statefile", 2).await?;
        wait_connections(&pair, "statefile", &[1, 1]).await?;
        drop(held);
        wait_connections(&pair, "statefile", &[0, 0]).await?;
        // The next change writes a good file.
        post_state(&sg, "n0", serde_json::json!({ "state": "drain" })).await?;
        let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        assert_eq!(saved["servers"][0]["admin"], "drain", "{saved}");
    }
    Ok(())
}

#[test]
fn check_refuses_bad_weights_slowstart_and_state_file() {
    let dir = unique_dir("state-check");
    let cfg = Config::new()
        .state_file(dir.join("no-such-dir/state.json"))
        .listener(Listener::tcp("amqp", "p"))
        .pool(
            Pool::new("p")
                .slowstart("0s")
                .server_with(Server::new("a", "127.0.0.1:5672").weight(300))
                .server("b", "127.0.0.1:5673"),
        )
        .listener(Listener::tcp("first", "f"))
        .pool(
            Pool::new("f")
                .balance("first")
                .slowstart("30s")
                .server("c", "127.0.0.1:5674"),
        );
    std::fs::write(dir.join("setgate.toml"), cfg.to_toml()).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.join("setgate.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(1));
    for want in [
        "pool[0] (p).servers[0].weight: 300 is above 256",
        "pool[0] (p).slowstart: 0s",
        "pool[1] (f).slowstart: balance = \"first\" ignores weights",
        "admin.state_file: directory",
    ] {
        assert!(
            stderr.contains(want) || stdout.contains(want),
            "check must say {want:?}"
        );
    }

    // A good one: the summary shows weights, slowstart and the state file.
    let good = Config::new()
        .state_file(dir.join("state.json"))
        .listener(Listener::tcp("amqp", "p"))
        .pool(
            Pool::new("p")
                .slowstart("30s")
                .server_with(Server::new("a", "127.0.0.1:5672").weight(3))
                .server("b", "127.0.0.1:5673"),
        );
    std::fs::write(dir.join("good.toml"), good.to_toml()).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.join("good.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("weights a=3 b=1, slowstart 30s"),
        "{stdout}"
    );
    assert!(stdout.contains("runtime states kept in"), "{stdout}");
}
