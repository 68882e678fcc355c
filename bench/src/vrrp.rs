//! VRRP takeover times: setgate vs Keepalived, measured in the same run on the same machine.
//!
//! One private segment (a bridge in its own network namespace) with two hosts, `a` (192.0.2.11)
//! and `b` (192.0.2.12), each with a RabbitMQ broker. On it run two virtual routers side by side:
//! setgate A (priority 150) and B (100) holding 192.0.2.100 on VRID 51, and Keepalived K1 (150,
//! in `a`) and K2 (100, in `b`) holding 192.0.2.101 on VRID 52. For each advert interval and case
//! the master is made to fail and the time until the backup holds the VIP is measured; then the
//! master is restored and preempts back before the next run.
//!
//! Cases: `kill9` (kill -9 of the master), `graceful` (SIGTERM: priority-0 advert), `track` (kill
//! -9 of the master's broker: setgate's built-in readiness tracking, with the pool checked every
//! 200 ms, vs Keepalived's `vrrp_script` probing the broker port at its minimum interval of 1 s,
//! `weight -100`; one broker kill is measured for both at once).
//!
//! Method: the clock starts just before the kill or signal; `ip -n b -4 addr` is polled every 5 ms
//! until the VIP is there (each poll ~2 ms, so a figure is at most ~7 ms late). One JSON line per
//! (implementation, case, interval), with the median, and for setgate the ratio to Keepalived's
//! median in the same run.

use anyhow::Context;
use serde_json::json;
use setgate_testkit::netns::{Keepalived, NetNs};
use setgate_testkit::vrrp_lab::{
    broker, lan, master_down, setgate_config, skew, start_setgate, A, B, VIP,
};
use setgate_testkit::Node;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Measured runs per case; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Advert intervals to measure, in milliseconds (multiples of 10; Keepalived's must also be
    /// expressible in its config, e.g. 100 or 1000).
    #[arg(long, value_delimiter = ',', default_values_t = [100u64, 1000])]
    pub advert_ms: Vec<u64>,
    /// The setgate binary (default: next to this benchmark, built with `cargo build` first).
    #[arg(long)]
    pub setgate: Option<PathBuf>,
    /// Measure setgate only.
    #[arg(long)]
    pub skip_keepalived: bool,
}

/// Keepalived's VIP (VRID 52); setgate's is the lab's `VIP` (VRID 51).
const KA_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
const SETTLE: Duration = Duration::from_secs(30);

/// Runs the benchmark.
pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let bin = crate::setgate_binary(args.setgate.clone())?;
    let lan = lan("sgv-bench", &[("a", A), ("b", B)])?;
    let (na, nb) = (lan.host("a"), lan.host("b"));
    eprintln!("starting a RabbitMQ broker in each namespace...");
    let (mut broker_a, broker_b) = tokio::try_join!(broker(na, A), broker(nb, B))?;

    for &adv in &args.advert_ms {
        let advert = Duration::from_millis(adv);
        eprintln!("advert interval {adv} ms: starting setgate and Keepalived pairs...");
        let config = |priority, broker: &Node| {
            setgate_config(priority, advert, Some(broker.amqp_addr()), "")
        };
        let mut sa = start_setgate(&bin, na, &config(150, &broker_a)).await?;
        let _sb = start_setgate(&bin, nb, &config(100, &broker_b)).await?;
        let mut keepalived = if args.skip_keepalived {
            None
        } else {
            let k1 = Keepalived::start(na, &keepalived_config(150, advert, broker_a.amqp_addr()))?;
            let k2 = Keepalived::start(nb, &keepalived_config(100, advert, broker_b.amqp_addr()))?;
            Some((k1, k2))
        };
        settle(na, nb, &keepalived).await?;

        // kill -9 of the master.
        let mut sg = Vec::new();
        let mut ka = Vec::new();
        for _ in 0..args.runs {
            let t0 = Instant::now();
            sa.kill9();
            sg.push(took(nb, VIP, t0).await?);
            sa.restart().await?;
            settle(na, nb, &keepalived).await?;
            if let Some((k1, _)) = keepalived.as_mut() {
                let t0 = Instant::now();
                k1.kill9();
                ka.push(took(nb, KA_VIP, t0).await?);
                k1.restart()?;
            }
            settle(na, nb, &keepalived).await?;
        }
        print_case("kill9", advert, master_down(100, advert), &sg, &ka);

        // Graceful stop: priority 0, takeover after Skew_Time.
        let (mut sg, mut ka) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            let t0 = Instant::now();
            sa.sigterm();
            sg.push(took(nb, VIP, t0).await?);
            sa.wait_exit(Duration::from_secs(10)).await?;
            sa.restart().await?;
            settle(na, nb, &keepalived).await?;
            if let Some((k1, _)) = keepalived.as_mut() {
                let t0 = Instant::now();
                k1.sigterm();
                ka.push(took(nb, KA_VIP, t0).await?);
                k1.wait_exit(Duration::from_secs(10)).await?;
                k1.restart()?;
            }
            settle(na, nb, &keepalived).await?;
        }
        print_case("graceful", advert, skew(100, advert), &sg, &ka);

        // Track: the master's broker dies; both pairs see the same event.
        let (mut sg, mut ka) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            let t0 = Instant::now();
            broker_a.kill9();
            if keepalived.is_some() {
                let (s, k) = tokio::try_join!(took(nb, VIP, t0), took(nb, KA_VIP, t0))?;
                sg.push(s);
                ka.push(k);
            } else {
                sg.push(took(nb, VIP, t0).await?);
            }
            broker_a.restart().await?;
            settle(na, nb, &keepalived).await?;
        }
        print_case("track", advert, master_down(100, advert), &sg, &ka);
    }
    Ok(())
}

/// Time from `t0` until `vip` is in `ns`.
async fn took(ns: &NetNs, vip: Ipv4Addr, t0: Instant) -> anyhow::Result<f64> {
    ns.wait_addr(vip, true, SETTLE).await?;
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

/// Waits until the 150s hold both VIPs and the 100s hold none: the masters are back.
async fn settle(
    na: &NetNs,
    nb: &NetNs,
    keepalived: &Option<(Keepalived, Keepalived)>,
) -> anyhow::Result<()> {
    let mut vips = vec![VIP];
    if keepalived.is_some() {
        vips.push(KA_VIP);
    }
    for vip in vips {
        na.wait_addr(vip, true, SETTLE)
            .await
            .context("waiting for the 150 master")?;
        nb.wait_addr(vip, false, SETTLE)
            .await
            .context("waiting for the 100 backup")?;
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// One JSON line per implementation; setgate's carries its ratio to Keepalived's median.
fn print_case(case: &str, advert: Duration, expected: Duration, sg: &[f64], ka: &[f64]) {
    let line = |imp: &str, v: &[f64]| {
        json!({
            "bench": "vrrp",
            "impl": imp,
            "case": case,
            "advert_ms": advert.as_millis() as u64,
            "runs": v.len(),
            "median_ms": round1(median(v)),
            "min_ms": round1(v.iter().copied().fold(f64::INFINITY, f64::min)),
            "max_ms": round1(v.iter().copied().fold(0.0, f64::max)),
            "samples_ms": v.iter().map(|x| round1(*x)).collect::<Vec<_>>(),
            "rfc_ms": round1(expected.as_secs_f64() * 1000.0),
        })
    };
    let mut s = line("setgate", sg);
    if !ka.is_empty() {
        println!("{}", line("keepalived", ka));
        s["vs_keepalived"] = json!((median(sg) / median(ka) * 100.0).round() / 100.0);
    }
    println!("{s}");
}

/// Keepalived's pair for VRID 52, with a `vrrp_script` that probes the local broker's port (its
/// shortest interval, 1 s) and drops the priority by 100 when it fails.
fn keepalived_config(priority: u8, advert: Duration, broker: SocketAddr) -> String {
    let base = Keepalived::config(52, priority, advert, &[&format!("{KA_VIP}/24")], None);
    let script = format!(
        "vrrp_script chk_broker {{\n  script \"/usr/bin/timeout 1 /bin/bash -c '</dev/tcp/{}/{}'\"\n  \
         interval 1\n  timeout 2\n  fall 1\n  rise 1\n  weight -100\n}}\n",
        broker.ip(),
        broker.port()
    );
    let base = base.replacen("vrrp_instance", &format!("{script}vrrp_instance"), 1);
    base.replacen(
        "  virtual_ipaddress {",
        "  track_script {\n    chk_broker\n  }\n  virtual_ipaddress {",
        1,
    )
}
