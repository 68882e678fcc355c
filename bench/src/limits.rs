//! The cost of connection limits: AMQP connection setup rate through a `set` listener with every
//! limit on (per user, per vhost, per source, `rate_limit`; none of them reached, so this measures
//! the checks and the frame-by-frame read up to Connection.Open, not refusals) against the same
//! listener without limits, in one run, interleaved. Target: on / off >= 0.97.
//!
//! Cases: `connection_setup_per_s` (connections opened and closed one after the other, as in
//! `setgate-bench proxy`), `parallel_setup_per_s` (`--parallel` clients doing the same at once),
//! and `setgate_cpu_us_per_connection`: CPU time setgate's threads spent per connection during
//! the sequential runs (from /proc/PID/task/*/schedstat), which other load on the machine does
//! not change the way it changes a rate.

use anyhow::Context;
use serde_json::json;
use setgate_testkit::config::{Check, Config, Limits, Listener, Pool, Routing};
use setgate_testkit::{amqp, Node, Setgate};
use std::path::PathBuf;
use std::time::Instant;

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
        for (case, parallel) in [
            ("connection_setup_per_s", 1),
            ("parallel_setup_per_s", args.parallel),
        ] {
            for (name, port) in &paths {
                let cpu_before = cpu_ns(pid)?;
                let rate = setup(&uri(*port), args.connections, parallel).await?;
                let cpu_us = (cpu_ns(pid)? - cpu_before) as f64 / 1e3 / args.connections as f64;
                let mut record =
                    |case, v| match results.iter_mut().find(|r| r.0 == case && r.1 == *name) {
                        Some(r) => r.2.push(v),
                        None => results.push((case, name, vec![v])),
                    };
                record(case, rate);
                if parallel == 1 {
                    record("setgate_cpu_us_per_connection", cpu_us);
                }
            }
        }
    }
    for (case, path, runs) in &results {
        let off = results
            .iter()
            .find(|r| r.0 == *case && r.1 == "off")
            .map(|r| median(&r.2))
            .unwrap_or(f64::NAN);
        let m = median(runs);
        println!(
            "{}",
            json!({"bench": "limits", "case": case, "path": path, "median": (m * 10.0).round() / 10.0,
                   "runs": runs.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>(),
                   "vs_off": (m / off * 1000.0).round() / 1000.0})
        );
    }
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
