//! VRRP end to end, as root, in network namespaces made by each test: setgate instances (and
//! Keepalived) on a private bridge elect a master that holds the virtual IP 192.0.2.100; a client
//! in its own namespace reaches a real RabbitMQ broker through it.
//!
//! How takeover is measured: the test takes the time just before it kills or stops the master,
//! then polls the backup's namespace for the VIP with `ip -n NS -4 addr` every 5 ms (one poll
//! takes about 2 ms), so a figure is an upper bound at most ~7 ms above the moment netlink added
//! the address. Holding the VIP is what clients depend on; gratuitous ARPs follow in the same
//! breath.
//!
//! The tests take a lock and run one at a time: a RabbitMQ boot next door would otherwise steal
//! the CPU a 100 ms timing bound needs on a 2-core machine.

mod vrrp_lab;

use setgate_testkit::netns::Keepalived;
use setgate_testkit::wait_until;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use vrrp_lab::*;

#[tokio::test]
async fn failover_kill9_preempt_and_graceful_stop() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let lan = lan("sgv-fo", &[("a", A), ("b", B), ("c", CLIENT)])?;
    let (na, nb, nc) = (lan.host("a"), lan.host("b"), lan.host("c"));
    let (broker_a, broker_b) = tokio::try_join!(broker(na, A), broker(nb, B))?;
    let notify_file = setgate_testkit::unique_dir("notify").join("states");
    let notify = format!("notify = \"echo >> {}\"", notify_file.display());
    let mut sa = start_setgate(na, &config(150, Some(broker_a.amqp_addr()), &notify)).await?;
    let sb = start_setgate(nb, &config(100, Some(broker_b.amqp_addr()), "")).await?;

    // The 150 instance holds the VIP; a client in a third namespace reaches A's broker through it.
    wait_holder(na, &[nb], Duration::from_secs(5)).await?;
    wait_state(nb, "BACKUP", Duration::from_secs(1)).await?;
    client_round_trip(nc, "vrrp-before").await?;
    assert_eq!(
        broker_behind_vip(nc, &[&broker_a, &broker_b]).await?,
        broker_a.name
    );
    let b = vrrp_status(nb).await?;
    assert_eq!(b["master"]["address"], A.to_string(), "{b}");
    assert!(b["adverts"]["received"].as_u64() > Some(0), "{b}");

    // kill -9 the master: the backup holds the VIP within Master_Down_Interval + 100 ms.
    let bound = master_down(100, ADVERT) + Duration::from_millis(100);
    let t0 = Instant::now();
    sa.kill9();
    nb.wait_addr(VIP, true, Duration::from_secs(5)).await?;
    let took = t0.elapsed();
    report("kill -9 takeover", took, bound);
    assert!(took <= bound, "takeover took {took:?}, more than {bound:?}");
    wait_state(nb, "MASTER", Duration::from_secs(1)).await?;
    // Gratuitous ARP: the client's cached entry for the VIP (A's MAC) now says B's MAC, at once
    // rather than when the entry would have gone stale.
    let b_mac = mac_of(nb)?;
    wait_until(
        "the client's ARP entry for the VIP to name B",
        Duration::from_millis(500),
        || async {
            let neigh = nc.ip(&["neigh", "show", &VIP.to_string()]).ok()?;
            neigh.contains(&b_mac).then_some(())
        },
    )
    .await?;
    client_round_trip(nc, "vrrp-after-kill").await?;
    assert_eq!(
        broker_behind_vip(nc, &[&broker_a, &broker_b]).await?,
        broker_b.name
    );

    // Restart the first: with preempt it takes the VIP back (and removes the one the kill left).
    sa.restart().await?;
    wait_vrrp_running(na, &sa).await?;
    wait_holder(na, &[nb], Duration::from_secs(5)).await?;
    wait_state(nb, "BACKUP", Duration::from_secs(1)).await?;
    client_round_trip(nc, "vrrp-after-preempt").await?;
    assert_eq!(
        broker_behind_vip(nc, &[&broker_a, &broker_b]).await?,
        broker_a.name
    );

    // Graceful stop: priority 0 makes the backup take over after Skew_Time, not Master_Down.
    let bound = skew(100, ADVERT) + Duration::from_millis(100);
    let t0 = Instant::now();
    sa.sigterm();
    nb.wait_addr(VIP, true, Duration::from_secs(5)).await?;
    let took = t0.elapsed();
    report("graceful stop takeover", took, bound);
    assert!(took <= bound, "takeover took {took:?}, more than {bound:?}");
    assert_eq!(sa.wait_exit(Duration::from_secs(10)).await?, Some(0));
    na.wait_addr(VIP, false, Duration::from_secs(1)).await?;
    client_round_trip(nc, "vrrp-after-stop").await?;

    // The notify command saw every state change of the first instance, in order: the first run
    // (killed, so no STOP), then the restart.
    let want = "BACKUP\nMASTER\nBACKUP\nMASTER\nSTOP\n";
    let got = wait_until(
        "the notify command to record STOP",
        Duration::from_secs(5),
        || async {
            std::fs::read_to_string(&notify_file)
                .ok()
                .filter(|s| s.ends_with("STOP\n"))
        },
    )
    .await;
    assert_eq!(got.ok().as_deref(), Some(want));
    if let Some(dir) = notify_file.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    drop(sb);
    Ok(())
}

#[tokio::test]
async fn without_preempt_the_restarted_master_stays_backup() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let lan = lan("sgv-np", &[("a", A), ("b", B)])?;
    let (na, nb) = (lan.host("a"), lan.host("b"));
    // No brokers here: readiness is not tracked (track = 0), so priorities stay as configured.
    let extra = "preempt = false\ntrack = 0";
    let mut sa = start_setgate(na, &config(150, None, extra)).await?;
    let _sb = start_setgate(nb, &config(100, None, extra)).await?;
    wait_holder(na, &[nb], Duration::from_secs(5)).await?;

    sa.kill9();
    nb.wait_addr(VIP, true, Duration::from_secs(5)).await?;
    sa.restart().await?;
    wait_vrrp_running(na, &sa).await?;
    wait_until(
        "the restarted instance to hear the new master",
        Duration::from_secs(5),
        || async {
            let s = vrrp_status(na).await.ok()?;
            (s["master"]["address"] == B.to_string()).then_some(())
        },
    )
    .await?;
    // With preemption it would take over within one Master_Down_Interval (~0.34 s); watch for
    // five of them that it does not.
    let watch = master_down(150, ADVERT) * 5;
    let start = Instant::now();
    while start.elapsed() < watch {
        let s = vrrp_status(na).await?;
        assert_eq!(s["state"], "BACKUP", "{s}");
        assert!(
            !na.has_addr(VIP).await?,
            "the restarted instance took the VIP"
        );
        assert!(nb.has_addr(VIP).await?, "the new master lost the VIP");
    }
    assert_eq!(vrrp_status(nb).await?["state"], "MASTER");
    Ok(())
}

#[tokio::test]
async fn track_moves_the_vip_when_the_masters_broker_dies() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let lan = lan("sgv-tr", &[("a", A), ("b", B)])?;
    let (na, nb) = (lan.host("a"), lan.host("b"));
    let (mut broker_a, broker_b) = tokio::try_join!(broker(na, A), broker(nb, B))?;
    // Default track: not ready => priority drops to 1. No notify or check script anywhere.
    let _sa = start_setgate(na, &config(150, Some(broker_a.amqp_addr()), "")).await?;
    let _sb = start_setgate(nb, &config(100, Some(broker_b.amqp_addr()), "")).await?;
    wait_holder(na, &[nb], Duration::from_secs(5)).await?;
    let a = vrrp_status(na).await?;
    assert_eq!(
        (a["ready"].as_bool(), a["priority"]["effective"].as_u64()),
        (Some(true), Some(150)),
        "{a}"
    );

    // The check (inter 200 ms, fall 1) sees the broker gone; readiness is polled every 100 ms;
    // then the backup ignores the priority-1 adverts and takes over after Master_Down_Interval.
    let bound = Duration::from_millis(200 + 500 + 100)
        + master_down(100, ADVERT)
        + Duration::from_millis(100);
    let t0 = Instant::now();
    broker_a.kill9();
    nb.wait_addr(VIP, true, Duration::from_secs(10)).await?;
    let took = t0.elapsed();
    report("track takeover after broker kill -9", took, bound);
    assert!(took <= bound, "takeover took {took:?}, more than {bound:?}");
    na.wait_addr(VIP, false, Duration::from_secs(2)).await?;
    let a = wait_state(na, "BACKUP", Duration::from_secs(2)).await?;
    assert_eq!(
        (a["ready"].as_bool(), a["priority"]["effective"].as_u64()),
        (Some(false), Some(1)),
        "{a}"
    );

    // The broker comes back: A is ready again, its priority is 150 again, and it preempts.
    broker_a.restart().await?;
    wait_holder(na, &[nb], Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::test]
async fn interop_with_keepalived_in_both_priority_orders() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let lan = lan("sgv-ka", &[("a", A), ("k", KA)])?;
    let (na, nk) = (lan.host("a"), lan.host("k"));
    let vip = format!("{VIP}/24");

    // setgate 150 vs Keepalived 100: setgate is master, and Keepalived, started second, agrees:
    // it never takes the VIP while we watch for five of its Master_Down_Intervals.
    let mut sa = start_setgate(na, &config(150, None, "track = 0")).await?;
    wait_holder(na, &[nk], Duration::from_secs(5)).await?;
    let mut k = Keepalived::start(nk, &Keepalived::config(51, 100, ADVERT, &[&vip], None))?;
    wait_until("keepalived to start", Duration::from_secs(5), || async {
        k.log().contains("Entering BACKUP STATE").then_some(())
    })
    .await?;
    let watch = Instant::now();
    while watch.elapsed() < master_down(100, ADVERT) * 5 {
        assert!(
            !nk.has_addr(VIP).await?,
            "keepalived took the VIP from a higher-priority setgate"
        );
        assert!(na.has_addr(VIP).await?, "setgate lost the VIP");
    }
    assert!(!k.log().contains("Entering MASTER STATE"), "{}", k.log());
    // Keepalived takes over when setgate is killed...
    let bound = master_down(100, ADVERT) + Duration::from_millis(100);
    let t0 = Instant::now();
    sa.kill9();
    nk.wait_addr(VIP, true, Duration::from_secs(5)).await?;
    let took = t0.elapsed();
    report("keepalived takes over from setgate (kill -9)", took, bound);
    assert!(took <= bound, "took {took:?}");
    // ...and gives the VIP back when setgate returns with the higher priority.
    sa.restart().await?;
    wait_vrrp_running(na, &sa).await?;
    wait_holder(na, &[nk], Duration::from_secs(5)).await?;
    sa.kill9();
    k.kill9();
    drop(sa);

    // Keepalived 150 vs setgate 100: Keepalived is master, setgate agrees.
    let _ = na.ip(&["addr", "del", &vip, "dev", "eth0"]);
    let _ = nk.ip(&["addr", "del", &vip, "dev", "eth0"]);
    let mut k = Keepalived::start(nk, &Keepalived::config(51, 150, ADVERT, &[&vip], None))?;
    nk.wait_addr(VIP, true, Duration::from_secs(5)).await?;
    let _sa = start_setgate(na, &config(100, None, "track = 0")).await?;
    wait_until(
        "setgate to follow keepalived",
        Duration::from_secs(5),
        || async {
            let s = vrrp_status(na).await.ok()?;
            (s["state"] == "BACKUP" && s["master"]["address"] == KA.to_string()).then_some(())
        },
    )
    .await?;
    assert!(!na.has_addr(VIP).await?);
    let s = vrrp_status(na).await?;
    assert_eq!(
        s["adverts"]["bad"],
        serde_json::json!({}),
        "setgate rejected Keepalived's adverts: {s}"
    );
    assert!(s["adverts"]["received"].as_u64() > Some(0), "{s}");
    // setgate takes over when Keepalived is killed.
    let t0 = Instant::now();
    k.kill9();
    na.wait_addr(VIP, true, Duration::from_secs(5)).await?;
    let took = t0.elapsed();
    report("setgate takes over from keepalived (kill -9)", took, bound);
    assert!(took <= bound, "took {took:?}");
    // Keepalived back (it removes the VIP its kill left, then preempts): setgate steps down.
    k.restart()?;
    wait_state(na, "BACKUP", Duration::from_secs(5))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nkeepalived log:\n{}", k.log()))?;
    wait_holder(nk, &[na], Duration::from_secs(5)).await?;
    Ok(())
}

#[tokio::test]
async fn unicast_peers_elect_a_master_with_multicast_blocked() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let lan = lan("sgv-uc", &[("a", A), ("b", B)])?;
    let (na, nb) = (lan.host("a"), lan.host("b"));
    lan.block_multicast()?;

    // Proof that multicast is really blocked: two multicast instances cannot hear each other,
    // so both become master (split brain).
    {
        let _sa = start_setgate(na, &config(150, None, "track = 0")).await?;
        let _sb = start_setgate(nb, &config(100, None, "track = 0")).await?;
        wait_state(na, "MASTER", Duration::from_secs(5)).await?;
        wait_state(nb, "MASTER", Duration::from_secs(5)).await?;
        assert_eq!(vrrp_status(nb).await?["adverts"]["received"], 0);
    }

    // Unicast adverts go through: one master, and the backup takes over when it is killed.
    let mut sa = start_setgate(
        na,
        &config(150, None, &format!("track = 0\nunicast_peers = [\"{B}\"]")),
    )
    .await?;
    let _sb = start_setgate(
        nb,
        &config(100, None, &format!("track = 0\nunicast_peers = [\"{A}\"]")),
    )
    .await?;
    wait_holder(na, &[nb], Duration::from_secs(5)).await?;
    let b = wait_state(nb, "BACKUP", Duration::from_secs(2)).await?;
    assert_eq!(
        (b["mode"].as_str(), b["master"]["address"].as_str()),
        (Some("unicast"), Some("192.0.2.11")),
        "{b}"
    );
    let bound = master_down(100, ADVERT) + Duration::from_millis(100);
    let t0 = Instant::now();
    sa.kill9();
    nb.wait_addr(VIP, true, Duration::from_secs(5)).await?;
    let took = t0.elapsed();
    report("unicast kill -9 takeover", took, bound);
    assert!(took <= bound, "took {took:?}");
    Ok(())
}

/// `Vrrp::reload` (what SIGHUP can call): live settings change at once, fixed ones are refused.
/// The instance under test runs in this process, on a thread inside namespace `a`.
#[tokio::test]
async fn reload_changes_priority_live_and_refuses_what_needs_a_restart() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let lan = lan("sgv-rl", &[("a", A), ("b", B)])?;
    let (na, nb) = (lan.host("a"), lan.host("b"));
    let sa = start_setgate(na, &config(150, None, "track = 0")).await?;
    let _sb = start_setgate(nb, &config(100, None, "track = 0")).await?;
    wait_state(na, "MASTER", Duration::from_secs(5)).await?;

    // SIGHUP with priority 150 -> 50, below the other instance's 100: it takes over.
    sa.reload(&config(50, None, "track = 0"))?;
    wait_state(nb, "MASTER", Duration::from_secs(5)).await?;
    wait_holder(nb, &[na], Duration::from_secs(2)).await?;
    assert_eq!(vrrp_status(na).await?["priority"]["configured"], 50);

    // A change that needs a restart is refused whole, with the reason; nothing changes.
    sa.reload(&config(200, None, "track = 0").replace("vrid = 51", "vrid = 52"))?;
    wait_until(
        "the refusal to be logged",
        Duration::from_secs(10),
        || async {
            sa.log()
                .contains("vrrp.vrid: changing it needs a restart")
                .then_some(())
        },
    )
    .await?;
    let status = vrrp_status(na).await?;
    assert_eq!(status["priority"]["configured"], 50, "{status}");
    assert_eq!(status["state"], "BACKUP", "{status}");

    // Back to 150: it preempts again.
    sa.reload(&config(150, None, "track = 0"))?;
    wait_state(na, "MASTER", Duration::from_secs(5)).await?;
    wait_holder(na, &[nb], Duration::from_secs(2)).await?;
    Ok(())
}

/// Crafted adverts from a third host: each bad one is dropped and counted by cause, and none of
/// them — though each claims priority 254 — makes the master step down.
#[tokio::test]
async fn bad_adverts_are_dropped_and_counted() -> anyhow::Result<()> {
    use setgate_vrrp::packet::{Advert, GROUP};
    let _serial = SERIAL.lock().await;
    let lan = lan("sgv-bad", &[("a", A), ("c", CLIENT)])?;
    let (na, nc) = (lan.host("a"), lan.host("c"));
    let _sa = start_setgate(na, &config(150, None, "track = 0")).await?;
    wait_state(na, "MASTER", Duration::from_secs(5)).await?;

    let good = Advert {
        vrid: 51,
        priority: 254,
        max_advert_int: 10,
        addrs: vec![VIP],
    };
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut ttl = good.encode_ip(CLIENT, GROUP);
    ttl[8] = 64;
    cases.push(("ttl", ttl));
    let mut version = good.encode_ip(CLIENT, GROUP);
    version[20] = 0x21;
    cases.push(("version", version));
    let mut sum = good.encode_ip(CLIENT, GROUP);
    sum[27] ^= 0xff;
    cases.push(("checksum", sum));
    cases.push((
        "vrid",
        Advert {
            vrid: 52,
            ..good.clone()
        }
        .encode_ip(CLIENT, GROUP),
    ));
    let two = Advert {
        addrs: vec![VIP, Ipv4Addr::new(192, 0, 2, 101)],
        ..good.clone()
    };
    cases.push(("addr_count", two.encode_ip(CLIENT, GROUP)));
    let other = Advert {
        addrs: vec![Ipv4Addr::new(192, 0, 2, 101)],
        ..good.clone()
    };
    cases.push(("addr_list", other.encode_ip(CLIENT, GROUP)));
    let mut short = good.encode_ip(CLIENT, GROUP);
    short.truncate(26);
    short[2..4].copy_from_slice(&26u16.to_be_bytes());
    cases.push(("length", short));

    let datagrams: Vec<Vec<u8>> = cases.iter().map(|(_, d)| d.clone()).collect();
    nc.enter(move || send_raw(&datagrams))??;
    let s = wait_until(
        "every bad advert to be counted",
        Duration::from_secs(5),
        || async {
            let s = vrrp_status(na).await.ok()?;
            cases
                .iter()
                .all(|(cause, _)| s["adverts"]["bad"][cause] == 1)
                .then_some(s)
        },
    )
    .await?;
    assert_eq!(s["state"], "MASTER", "{s}");
    assert_eq!(s["adverts"]["received"], 0, "{s}");
    assert_eq!(s["transitions"], 2, "{s}");
    let metrics = na
        .http_get(SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)), "/metrics")
        .await?
        .body;
    assert!(
        metrics.contains("setgate_vrrp_bad_adverts_total{cause=\"ttl\",vrrp_instance=\"VI_51\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("setgate_vrrp_state{vrrp_instance=\"VI_51\"} 2"),
        "{metrics}"
    );
    Ok(())
}

/// A missing interface or missing capabilities stop setgate at start with a message that says
/// what to do.
#[tokio::test]
async fn start_up_errors_name_what_to_do() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let lan = lan("sgv-err", &[("a", A)])?;
    let na = lan.host("a");
    let dir = setgate_testkit::unique_dir("vrrp-errors");
    let run = |file: &str, cfg: String, prefix: &[&str]| -> anyhow::Result<String> {
        let path = dir.join(file);
        std::fs::write(&path, cfg)?;
        let argv: Vec<&str> = prefix.iter().copied().chain([BIN]).collect();
        let mut cmd = na.command(argv[0]);
        cmd.args(&argv[1..]);
        let out = cmd.arg("run").arg("--config").arg(&path).output()?;
        anyhow::ensure!(!out.status.success(), "setgate started anyway");
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let no_iface =
        config(150, None, "track = 0").replace("interface = \"eth0\"", "interface = \"nope0\"");
    let err = run("no-iface.toml", no_iface, &[])?;
    assert!(
        err.contains("vrrp.interface: there is no interface \"nope0\" here"),
        "{err}"
    );
    let setpriv = [
        "setpriv",
        "--inh-caps=-all",
        "--bounding-set=-net_raw,-net_admin",
    ];
    let err = run("no-caps.toml", config(150, None, "track = 0"), &setpriv)?;
    assert!(
        err.contains("missing: CAP_NET_RAW, CAP_NET_ADMIN. Run setgate as root, or grant them"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
