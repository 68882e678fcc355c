//! setgate's benchmarks. Each prints one JSON line per case; figures are ratios taken in one run.
//!
//! `setgate-bench proxy`      — setgate vs direct vs HAProxy (throughput, latency, setup rate, RSS)
//! `setgate-bench federation` — setgate's federation vs RabbitMQ's federation plugin
//! `setgate-bench shovel`     — setgate's shovel vs RabbitMQ's shovel plugin; SET-routed vs plain
//! `setgate-bench vrrp`       — VRRP takeover times, setgate vs Keepalived
//! `setgate-bench chaos`      — a random mix of real faults; lost must be 0
//! `setgate-bench limits`     — connection setup rate with connection limits on vs off
//! `setgate-bench scale`      — 1,000 to 10,000 connections: CPU per message rate and memory per
//!                              connection, setgate vs HAProxy

mod chaos;
mod cpu;
mod federation;
mod haproxy;
mod limits;
mod measure;
mod proxy;
mod scale;
mod shovel;
mod vrrp;

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "setgate-bench",
    about = "setgate's benchmarks: one JSON line per case"
)]
enum Bench {
    /// Proxy: setgate tcp/set mode vs direct vs HAProxy.
    Proxy(proxy::Args),
    /// Federation: setgate vs the RabbitMQ federation plugin.
    Federation(federation::Args),
    /// Shovel: setgate vs the RabbitMQ shovel plugin; SET-routed vs plain.
    Shovel(shovel::Args),
    /// VRRP takeover times: setgate vs Keepalived.
    Vrrp(vrrp::Args),
    /// Chaos: two datacenters under random real faults; lost must be 0.
    Chaos(chaos::Args),
    /// Connection limits: setup rate through a set listener with limits on vs off.
    Limits(limits::Args),
    /// The scale curve: thousands of connections, setgate vs HAProxy.
    Scale(scale::Args),
    /// The floor forwarder the federation bench runs as a child (no lapin; a measurement).
    #[command(hide = true)]
    ForwardFloor(federation::floor::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Bench::parse() {
        Bench::Proxy(a) => proxy::run(a).await,
        Bench::Federation(a) => federation::run(a).await,
        Bench::Shovel(a) => shovel::run(a).await,
        Bench::Vrrp(a) => vrrp::run(a).await,
        Bench::Chaos(a) => chaos::run(a).await,
        Bench::Limits(a) => limits::run(a).await,
        Bench::Scale(a) => scale::run(a).await,
        Bench::ForwardFloor(a) => federation::floor::run(a).await,
    }
}

/// Gives each node a cluster name, as operators of federated and shovelled clusters do. The
/// RabbitMQ plugins read the cluster name for messages they move (federation's loop detection
/// does for every one), and RabbitMQ 3.10 derives a name that was never set from a hostname
/// lookup through the Erlang resolver's port program each time: about 0.2 ms, which held the
/// federation plugin to about 3,000 msg/s in this bench.
pub(crate) async fn name_clusters(nodes: &[(&setgate_testkit::Node, &str)]) -> anyhow::Result<()> {
    for (node, name) in nodes {
        node.ctl(&["set_cluster_name", name]).await?;
    }
    Ok(())
}

/// The setgate binary to measure: `--setgate PATH`, or the one next to this program (scripts/bench
/// builds both into target/release).
pub(crate) fn setgate_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .join("setgate"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it with `cargo build --release -p setgate` (scripts/bench does), or pass --setgate PATH",
        bin.display()
    );
    Ok(bin)
}
