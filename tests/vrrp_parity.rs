//! Keepalived parity of `[vrrp]`, end to end, as root, in network namespaces made by each test:
//! FAULT when a tracked interface or the instance's own goes down (no adverts, no VIPs, notify
//! run) and back, and two instances active/active on two VIPs.
//!
//! Measured as in tests/vrrp.rs: the time is taken just before the fault or the kill, then the
//! test polls `ip -n NS -4 addr` every 5 ms or `/api/vrrp` for the outcome, so each figure is an
//! upper bound. The tests take a lock and run one at a time.

mod vrrp_lab;

use serde_json::Value;
use setgate_testkit::netns::NetNs;
use setgate_testkit::{unique_dir, wait_until};
use std::path::Path;
use std::time::{Duration, Instant};
use vrrp_lab::*;

/// How often setgate polls readiness and interfaces with a 100 ms advert interval.
const POLL: Duration = Duration::from_millis(100);
/// Room for a loaded 2-core machine on top of each protocol bound.
const SLACK: Duration = Duration::from_millis(1000);

/// Watches for `window` that the setgate in `ns` stays in FAULT without sending an advert or
/// holding the VIP, and (when given) that `peer` receives no advert from it. Returns the sent
/// counter it held at.
async fn assert_silent_fault(
    ns: &NetNs,
    peer: Option<&NetNs>,
    window: Duration,
) -> anyhow::Result<u64> {
    let first = vrrp_status(ns).await?;
    let sent = first["adverts"]["sent"].as_u64().unwrap_or(u64::MAX);
    let heard = match peer {
        Some(p) => Some(vrrp_status(p).await?["adverts"]["received"].clone()),
        None => None,
    };
    let start = Instant::now();
    let mut polls = 0;
    while start.elapsed() < window || polls < 3 {
        let s = vrrp_status(ns).await?;
        assert_eq!(s["state"], "FAULT", "{s}");
        assert_eq!(
            s["adverts"]["sent"], sent,
            "an advert was sent in FAULT: {s}"
        );
        assert!(!ns.has_addr(VIP).await?, "the VIP is still there in FAULT");
        if let (Some(p), Some(h)) = (peer, &heard) {
            let ps = vrrp_status(p).await?;
            assert_eq!(
                &ps["adverts"]["received"], h,
                "the peer heard an advert: {ps}"
            );
        }
        polls += 1;
    }
    Ok(sent)
}

/// The lines the notify command wrote to `file`, once `last` is among them.
async fn notified(file: &Path, count: usize) -> anyhow::Result<Vec<String>> {
    wait_until(
        &format!("{count} notify lines in {}", file.display()),
        Duration::from_secs(5),
        || async {
            let text = std::fs::read_to_string(file).ok()?;
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            (lines.len() >= count).then_some(lines)
        },
    )
    .await
}

#[tokio::test]
async fn fault_when_an_interface_goes_down_and_back_to_master_when_it_returns() -> anyhow::Result<()>
{
    let _serial = SERIAL.lock().await;
    let lan = lan("sgv-flt", &[("a", A), ("b", B)])?;
    let (na, nb) = (lan.host("a"), lan.host("b"));
    // A second interface for A to track, beside its own eth0 (tracked always).
    // (a veth pair inside A: a dummy interface needs a kernel module containers may lack).
    na.ip(&[
        "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p",
    ])?;
    na.ip(&["link", "set", "uplink0p", "up"])?;
    na.ip(&["link", "set", "uplink0", "up"])?;
    let dir = unique_dir("vrrp-fault");
    let (states, faults) = (dir.join("states"), dir.join("faults"));
    let extra = format!(
        "track = 0\ntrack_interface = [\"uplink0\"]\n\
         notify = \"echo >> {}\"\nnotify_args = \"keepalived\"\n\
         notify_fault = \"echo \\\"$SETGATE_VRRP_INSTANCE fault\\\" >> {}\"",
        states.display(),
        faults.display()
    );
    let _sa = start_setgate(na, &config(150, None, &extra)).await?;
    let _sb = start_setgate(nb, &config(100, None, "track = 0")).await?;
    wait_holder(na, &[nb], Duration::from_secs(5)).await?;

    // 1. The tracked uplink goes down while eth0 stays up: A steps down with a priority-0
    //    advert (B takes over after Skew_Time), removes the VIP, and then is silent on the wire.
    let t0 = Instant::now();
    na.ip(&["link", "set", "uplink0", "down"])?;
    let a = wait_state(na, "FAULT", Duration::from_secs(5)).await?;
    let took = t0.elapsed();
    let bound = POLL + SLACK;
    report("FAULT after a tracked interface went down", took, bound);
    assert!(took <= bound, "FAULT took {took:?}");
    assert_eq!(
        a["fault"],
        serde_json::json!(["interface uplink0 is down"]),
        "{a}"
    );
    nb.wait_addr(VIP, true, Duration::from_secs(5)).await?;
    let took = t0.elapsed();
    let bound = POLL + skew(100, ADVERT) + SLACK;
    report("takeover after the master's FAULT step-down", took, bound);
    assert!(took <= bound, "takeover took {took:?}");
    wait_state(nb, "MASTER", Duration::from_secs(1)).await?;
    assert_silent_fault(na, Some(nb), ADVERT * 10).await?;

    // Back up: A leaves FAULT as Backup, ignores B's lower adverts (preempt) and is master again
    // after its Master_Down_Interval.
    let t0 = Instant::now();
    na.ip(&["link", "set", "uplink0", "up"])?;
    wait_holder(na, &[nb], Duration::from_secs(5)).await?;
    let took = t0.elapsed();
    let bound = POLL + master_down(150, ADVERT) + SLACK;
    report(
        "master again after the tracked interface came back",
        took,
        bound,
    );
    assert!(took <= bound, "rejoin took {took:?}");
    wait_state(nb, "BACKUP", Duration::from_secs(1)).await?;

    // 2. A's own eth0 goes down: FAULT, VIP removed; B hears nothing more and takes over after
    //    Master_Down_Interval.
    let t0 = Instant::now();
    na.ip(&["link", "set", "eth0", "down"])?;
    let a = wait_state(na, "FAULT", Duration::from_secs(5)).await?;
    let took = t0.elapsed();
    report("FAULT after eth0 went down", took, POLL + SLACK);
    assert!(took <= POLL + SLACK, "FAULT took {took:?}");
    assert_eq!(
        a["fault"],
        serde_json::json!(["interface eth0 is down"]),
        "{a}"
    );
    nb.wait_addr(VIP, true, Duration::from_secs(5)).await?;
    let took = t0.elapsed();
    let bound = master_down(100, ADVERT) + SLACK;
    report("takeover after the master's eth0 went down", took, bound);
    assert!(took <= bound, "takeover took {took:?}");
    assert_silent_fault(na, None, ADVERT * 10).await?;

    let t0 = Instant::now();
    na.ip(&["link", "set", "eth0", "up"])?;
    wait_holder(na, &[nb], Duration::from_secs(5)).await?;
    let took = t0.elapsed();
    let bound = POLL + master_down(150, ADVERT) + SLACK;
    report("master again after eth0 came back", took, bound);
    assert!(took <= bound, "rejoin took {took:?}");
    wait_state(nb, "BACKUP", Duration::from_secs(1)).await?;

    // Notify ran for every change as Keepalived passes it, and notify_fault for each FAULT.
    let want: Vec<String> = [
        "BACKUP", "MASTER", "FAULT", "BACKUP", "MASTER", "FAULT", "BACKUP", "MASTER",
    ]
    .iter()
    .map(|s| format!("INSTANCE VI_51 {s} 150"))
    .collect();
    assert_eq!(notified(&states, want.len()).await?, want);
    assert_eq!(
        notified(&faults, 2).await?,
        vec!["VI_51 fault", "VI_51 fault"]
    );
    let a = vrrp_status(na).await?;
    assert_eq!(
        (a["transitions"].as_u64(), a["fault"].clone()),
        (Some(8), serde_json::json!([])),
        "{a}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn fault_when_the_proxy_is_not_ready_past_the_bound() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let lan = lan("sgv-rdy", &[("a", A), ("b", B)])?;
    let (na, nb) = (lan.host("a"), lan.host("b"));
    let mut broker_a = broker(na, A).await?;
    let dir = unique_dir("vrrp-ready-fault");
    let faults = dir.join("faults");
    // track = 0: readiness does not lower A's priority, so only FAULT moves the VIP.
    let extra = format!(
        "track = 0\ntrack_fault_after = \"1s\"\nnotify_fault = \"echo \\\"$SETGATE_VRRP_STATE\\\" >> {}\"",
        faults.display()
    );
    let _sa = start_setgate(na, &config(150, Some(broker_a.amqp_addr()), &extra)).await?;
    let _sb = start_setgate(nb, &config(100, None, "track = 0")).await?;
    wait_holder(na, &[nb], Duration::from_secs(5)).await?;
    wait_until("A to be ready", Duration::from_secs(10), || async {
        (vrrp_status(na).await.ok()?["ready"] == true).then_some(())
    })
    .await?;

    // The broker dies: the check (inter 200 ms, timeout 500 ms, fall 1) makes A not ready; one
    // second later A goes to FAULT, steps down, and B takes the VIP.
    let t0 = Instant::now();
    broker_a.kill9();
    let a = wait_state(na, "FAULT", Duration::from_secs(10)).await?;
    let took = t0.elapsed();
    let bound = Duration::from_millis(700) + Duration::from_secs(1) + POLL + SLACK;
    report("FAULT after the proxy was not ready for 1s", took, bound);
    assert!(
        took >= Duration::from_secs(1),
        "FAULT before the bound: {took:?}"
    );
    assert!(took <= bound, "FAULT took {took:?}");
    assert_eq!(
        a["fault"],
        serde_json::json!(["proxy not ready for more than 1s"]),
        "{a}"
    );
    wait_holder(nb, &[na], Duration::from_secs(5)).await?;
    assert_silent_fault(na, Some(nb), ADVERT * 10).await?;
    assert_eq!(notified(&faults, 1).await?, vec!["FAULT"]);

    // The broker is back: A is ready, leaves FAULT and preempts B.
    broker_a.restart().await?;
    wait_holder(na, &[nb], Duration::from_secs(30)).await?;
    let a = wait_state(na, "MASTER", Duration::from_secs(1)).await?;
    assert_eq!(a["fault"], serde_json::json!([]), "{a}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// When (from the call) each gratuitous ARP announcement of `vip` (an ARP request whose sender
/// and target are both `vip`) arrived on the current namespace's interfaces, within `window`.
fn garp_times(vip: std::net::Ipv4Addr, window: Duration) -> std::io::Result<Vec<Duration>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const ETH_P_ARP: u16 = 0x0806;
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tick = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: setsockopt(2) with a pointer to a live timeval and its exact length.
    let ok = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tick as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if ok != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 128];
    while start.elapsed() < window {
        // SAFETY: the buffer is valid for its length during the call.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 42 {
            continue; // timeout (EAGAIN) or a runt
        }
        let ip = vip.octets();
        let request = buf[12..14] == ETH_P_ARP.to_be_bytes() && buf[20..22] == [0, 1];
        if request && buf[28..32] == ip && buf[38..42] == ip {
            seen.push(start.elapsed());
        }
    }
    Ok(seen)
}

#[tokio::test]
async fn garp_master_refresh_announces_the_vip_again_while_master() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let lan = lan("sgv-garp", &[("a", A), ("c", CLIENT)])?;
    let (na, nc) = (lan.host("a"), lan.host("c"));
    let _sa = start_setgate(
        na,
        &config(150, None, "track = 0\ngarp_master_refresh = \"1s\""),
    )
    .await?;
    wait_state(na, "MASTER", Duration::from_secs(5)).await?;
    // Takeover announces at +0, +100 ms, +500 ms and +5 s; between 0.7 s and 4.6 s only the
    // refresh (every second) announces.
    let seen = nc.enter(|| garp_times(VIP, Duration::from_millis(4600)))??;
    let refreshes: Vec<u128> = seen
        .iter()
        .filter(|t| **t >= Duration::from_millis(700))
        .map(|t| t.as_millis())
        .collect();
    println!(
        "vrrp gratuitous ARPs seen at (ms after MASTER was reported): {:?}",
        seen.iter().map(|t| t.as_millis()).collect::<Vec<_>>()
    );
    assert!(
        (3..=5).contains(&refreshes.len()),
        "expected a refresh every second between 0.7 s and 4.6 s, saw them at {refreshes:?} ms"
    );
    for w in refreshes.windows(2) {
        assert!(
            w[1] - w[0] >= 800,
            "refreshes closer than the interval: {refreshes:?} ms"
        );
    }
    Ok(())
}

/// Who holds each VIP: `holder` has `addr`, every one of `others` does not.
async fn holds(holder: &NetNs, others: &[&NetNs], addr: std::net::Ipv4Addr) -> anyhow::Result<()> {
    wait_addr_holder(addr, holder, others, Duration::from_secs(5)).await
}

fn states(doc: &Value) -> Vec<(String, String)> {
    doc["instances"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|i| {
                    (
                        i["name"].as_str().unwrap_or("?").to_string(),
                        i["state"].as_str().unwrap_or("?").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pair(a: &str, b: &str) -> Vec<(String, String)> {
    vec![("VI_51".into(), a.into()), ("VI_52".into(), b.into())]
}

#[tokio::test]
async fn two_instances_active_active_on_two_vips() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let lan = lan("sgv-aa", &[("a", A), ("b", B)])?;
    let (na, nb) = (lan.host("a"), lan.host("b"));
    // A is master of VI_51, B of VI_52. VI_51 preempts (the default); VI_52 does not.
    // B starts first and is master of both; A then preempts VI_51 only. (Started the other way
    // round, A would be master of VI_52 before B came, and B would leave it there: no preempt.)
    let no_preempt = "preempt = false";
    let mut sb = start_setgate(nb, &pair_config(100, 150, no_preempt)).await?;
    wait_until("B to be master of both", Duration::from_secs(5), || async {
        (states(&vrrp_status(nb).await.ok()?) == pair("MASTER", "MASTER")).then_some(())
    })
    .await?;
    let mut sa = start_setgate(na, &pair_config(150, 100, no_preempt)).await?;
    holds(na, &[nb], VIP).await?;
    holds(nb, &[na], VIP2).await?;
    wait_until(
        "both instances to settle",
        Duration::from_secs(5),
        || async {
            let (a, b) = (vrrp_status(na).await.ok()?, vrrp_status(nb).await.ok()?);
            (states(&a) == pair("MASTER", "BACKUP") && states(&b) == pair("BACKUP", "MASTER"))
                .then_some(())
        },
    )
    .await?;
    // Each instance hears only its own virtual router: no advert of the other is counted bad.
    let a = vrrp_status(na).await?;
    for i in a["instances"].as_array().into_iter().flatten() {
        assert_eq!(i["adverts"]["bad"], serde_json::json!({}), "{i}");
    }
    assert_eq!(
        instance_status(na, "VI_52").await?["master"]["address"],
        B.to_string()
    );

    // kill -9 A: B holds both VIPs, VI_51 within Master_Down_Interval.
    let bound = master_down(100, ADVERT) + SLACK;
    let t0 = Instant::now();
    sa.kill9();
    nb.wait_addr(VIP, true, Duration::from_secs(5)).await?;
    let took = t0.elapsed();
    report(
        "active/active: B takes VI_51 after kill -9 of A",
        took,
        bound,
    );
    assert!(took <= bound, "took {took:?}");
    assert!(nb.has_addr(VIP2).await?, "B lost its own VIP");
    wait_until("B to be master of both", Duration::from_secs(2), || async {
        (states(&vrrp_status(nb).await.ok()?) == pair("MASTER", "MASTER")).then_some(())
    })
    .await?;

    // A back: VI_51 preempts, so A takes VIP back; VI_52 stays with B (A is its backup).
    let t0 = Instant::now();
    sa.restart().await?;
    wait_vrrp_running(na, &sa).await?;
    holds(na, &[nb], VIP).await?;
    report(
        "active/active: A takes VI_51 back (preempt)",
        t0.elapsed(),
        Duration::from_secs(5),
    );
    holds(nb, &[na], VIP2).await?;
    wait_instance_state(na, "VI_52", "BACKUP", Duration::from_secs(2)).await?;

    // kill -9 B: A holds both.
    let t0 = Instant::now();
    sb.kill9();
    na.wait_addr(VIP2, true, Duration::from_secs(5)).await?;
    let took = t0.elapsed();
    report(
        "active/active: A takes VI_52 after kill -9 of B",
        took,
        bound,
    );
    assert!(took <= bound, "took {took:?}");
    assert!(na.has_addr(VIP).await?, "A lost its own VIP");

    // B back: VI_52 has preempt = false, so the higher-priority B stays backup of it while A,
    // the lower-priority master, keeps VIP2 (five Master_Down_Intervals of B's watched).
    sb.restart().await?;
    wait_vrrp_running(nb, &sb).await?;
    wait_until(
        "B to hear A as VI_52's master",
        Duration::from_secs(5),
        || async {
            let s = instance_status(nb, "VI_52").await.ok()?;
            (s["master"]["address"] == A.to_string()).then_some(())
        },
    )
    .await?;
    let watch = Instant::now();
    while watch.elapsed() < master_down(150, ADVERT) * 5 {
        let s = instance_status(nb, "VI_52").await?;
        assert_eq!(s["state"], "BACKUP", "{s}");
        assert!(
            !nb.has_addr(VIP2).await?,
            "B took VIP2 back without preempt"
        );
        assert!(na.has_addr(VIP2).await?, "A lost VIP2");
    }
    holds(na, &[nb], VIP).await?;
    assert_eq!(states(&vrrp_status(na).await?), pair("MASTER", "MASTER"));
    Ok(())
}
