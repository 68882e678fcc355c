//! The cost of connection limits: AMQP connection setup rate through a `set` listener with every
//! limit on (per user, per vhost, per source, `rate_limit`; none of them reached, so this measures
//! the checks and the frame-by-frame read up to Connection.Open, not refusals) against the same
//! listener without limits, in one run, interleaved. Target: on / off >= 0.97.
//!
//! Cases: `connection_setup_per_s` (lapin connections opened and closed one after the other, as
//! in `setgate-bench proxy`), `parallel_setup_per_s` (`--parallel` lapin clients doing the same at
//! once), `handshake_only_setup_per_s` (the same one after the other with testkit's `amqp_lite`,
//! a client without lapin's thread per connection, so setgate's share of the time is larger),
//! and, for both sequential cases, `..setgate_cpu_us_per_connection`: CPU time setgate's threads
//! spent per connection (from /proc/PID/task/*/schedstat), which other load on the machine does
//! not change the way it changes a rate. Each line has `vs_off` (ratio of the medians) and
//! `paired_vs_off` (median of the ratios of each run, where both paths ran back to back).
//!
//! The run fails if the `on` listener refused (or would have refused) anything or waited for
//! `rate_limit`: the limits must be high enough that only their cost is measured.

use anyhow::Context;
use serde_json::json;
use setgate_testkit::config::{Check, Config, Limits, Listener, Pool, Routing};
use setgate_testkit::{amqp, amqp_lite, Node, Setgate};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options of `setgate-bench limits`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Runs per case and path; the median is reported.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Connections per run.
    #[arg(long, default_value_t = 400)]
    connections: usize,
    /// Clients at once in the parallel case.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Leave out the vhost limits (no frame-by-frame read up to Connection.Open), to see what
    /// they cost apart from the rest.
    #[arg(long)]
    without_vhost: bool,
    /// The setgate binary (default: next to this one, i.e. target/release/setgate).
    #[arg(long)]
    setgate: Option<PathBuf>,
}

/// Runs both cases and prints one JSON line per case and path, with the ratio to `off`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    setgate_testkit::raise_fd_limit();
    let bin = crate::setgate_binary(args.setgate.clone())?;
    eprintln!("starting a RabbitMQ node...");
    let node = Node::start().await?;
    // High enough never to refuse: the cost of checking, not of refusing.
    let mut limits = Limits::new()
        .user_maxconn(100_000)
        .user_rate(1_000_000)
        .source_rate(1_000_000);
    if !args.without_vhost {
        limits = limits.vhost_maxconn(100_000).vhost_rate(1_000_000);
    }
    let cfg = Config::new()
        .listener(Listener::set("off"))
        .listener(Listener::set("on").rate_limit(1_000_000).limits(limits))
        .pool(
            Pool::new("rabbit")
                .check(Check::amqp().inter("2s"))
                .server("n", node.amqp_addr()),
        )
        .routing(Routing::new("rabbit"));
    let opts = setgate_testkit::setgate::SetgateOptions {
        quiet: true,
        ..Default::default()
    };
    let sg = Setgate::start_with(&bin, &cfg, opts).await?;
    sg.wait_ready().await?;
    let mut paths = vec![("off", sg.port("off").await?), ("on", sg.port("on").await?)];
    let uri = |port: u16| format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    for (_, port) in &paths {
        setup(&uri(*port), 100, 1).await?;
    }
    let pid = sg.pid().context("setgate has no pid")?;
    let mut results: Vec<(&str, &str, Vec<f64>)> = Vec::new();
    for run in 0..args.runs {
        eprintln!("run {}/{}", run + 1, args.runs);
        paths.rotate_left(1);
        for (case, client, parallel, cpu_case) in [
            (
                "connection_setup_per_s",
                Client::Lapin,
                1,
                Some("setgate_cpu_us_per_connection"),
            ),
            ("parallel_setup_per_s", Client::Lapin, args.parallel, None),
            (
                "handshake_only_setup_per_s",
                Client::Lite,
                1,
                Some("handshake_only_setgate_cpu_us_per_connection"),
            ),
        ] {
            for (name, port) in &paths {
                let cpu_before = cpu_ns(pid)?;
                let rate = match client {
                    Client::Lapin => setup(&uri(*port), args.connections, parallel).await?,
                    Client::Lite => setup_lite(*port, args.connections).await?,
                };
                let cpu_us = (cpu_ns(pid)? - cpu_before) as f64 / 1e3 / args.connections as f64;
                let mut record =
                    |case, v| match results.iter_mut().find(|r| r.0 == case && r.1 == *name) {
                        Some(r) => r.2.push(v),
                        None => results.push((case, name, vec![v])),
                    };
                record(case, rate);
                if let Some(cpu_case) = cpu_case {
                    record(cpu_case, cpu_us);
                }
            }
        }
    }
    ensure_nothing_limited(&sg).await?;
    for (case, path, runs) in &results {
        let off = results
            .iter()
            .find(|r| r.0 == *case && r.1 == "off")
            .map(|r| r.2.clone())
            .unwrap_or_default();
        let m = median(runs);
        // Both paths ran back to back in each run (order alternating): the median of the
        // per-run ratios cancels the load that drifts from run to run on a shared machine.
        let paired: Vec<f64> = runs.iter().zip(&off).map(|(v, o)| v / o).collect();
        println!(
            "{}",
            json!({"bench": "limits", "case": case, "path": path, "median": (m * 10.0).round() / 10.0,
                   "runs": runs.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>(),
                   "vs_off": (m / median(&off) * 1000.0).round() / 1000.0,
                   "paired_vs_off": (median(&paired) * 1000.0).round() / 1000.0})
        );
    }
    Ok(())
}

/// The client of a case.
#[derive(Clone, Copy)]
enum Client {
    /// lapin: a full client, with an I/O thread per connection.
    Lapin,
    /// `setgate_testkit::amqp_lite`: the handshake and Close only, one task per connection, so
    /// setgate and the broker are most of the time per connection and setgate's share shows.
    Lite,
}

/// The `on` listener measured the checks, not their effect: no refusal (nor would-be refusal) of
/// any limit, and the accept loop never waited for `rate_limit`. Otherwise the figures mean
/// nothing and the run says so.
async fn ensure_nothing_limited(sg: &Setgate) -> anyhow::Result<()> {
    let doc = sg.get_json("/api/listeners").await?;
    let on = doc["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == "on"))
        .context("no listener \"on\" in /api/listeners")?;
    let state = &on["limit_state"];
    let refusals = state["refusals"]
        .as_object()
        .context("no limit_state.refusals on listener \"on\"")?;
    for (limit, r) in refusals {
        anyhow::ensure!(
            r["refused"] == 0 && r["counted_only"] == 0,
            "listener \"on\" hit its {limit} limit ({r}): raise it so the benchmark measures the checks only"
        );
    }
    anyhow::ensure!(
        state["rate_limit_waits"] == 0,
        "listener \"on\" waited for its rate_limit {} times: raise it so the benchmark measures the checks only",
        state["rate_limit_waits"]
    );
    Ok(())
}

/// Opens and closes `n` connections, `parallel` at a time; returns connections a second.
async fn setup(uri: &str, n: usize, parallel: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let per = n / parallel.max(1);
    let workers = (0..parallel.max(1)).map(|_| async move {
        for _ in 0..per {
            let c = amqp::connect(uri).await?;
            c.close(200, "done".into()).await?;
        }
        anyhow::Ok(())
    });
    for r in futures_util::future::join_all(workers).await {
        r?;
    }
    Ok((per * parallel.max(1)) as f64 / start.elapsed().as_secs_f64())
}

/// Opens and closes `n` connections one after the other with [`Client::Lite`]; returns
/// connections a second.
async fn setup_lite(port: u16, n: usize) -> anyhow::Result<f64> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    for _ in 0..n {
        let c = tokio::time::timeout(
            Duration::from_secs(10),
            amqp_lite::connect(addr, "guest", "guest", "/"),
        )
        .await
        .context("handshake-only client: no connection within 10 s")??;
        tokio::time::timeout(Duration::from_secs(10), c.close())
            .await
            .context("handshake-only client: no Close-Ok within 10 s")??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// CPU time of every thread of `pid` so far, in nanoseconds.
fn cpu_ns(pid: i32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
