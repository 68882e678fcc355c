//! Federation throughput and latency: setgate vs RabbitMQ's federation plugin, on the same two
//! local brokers, against the rate at which the source alone accepts confirmed publishes.
//!
//! Cases, each run `--runs` times, interleaved; the median is reported:
//! - `source`: confirmed persistent publishes into a durable queue on the source, alone.
//! - `source-drained`: the same while a local consumer drains that queue with batched acks:
//!   what the source sustains when its queue is also consumed, the ceiling of any queue-based
//!   federation (a diagnostic, not a target).
//! - `setgate`: the same publisher on the source while setgate federates the exchange
//!   (on-confirm, persistent); the rate is taken by a consumer on a downstream queue, first
//!   message to last.
//! - `plugin`: the same with `rabbitmq_federation` on the downstream node (upstream + policy).
//! - `ceiling`: the brokers' own ceiling under the live load: everything the two brokers do for a
//!   federated message, at once and with no forwarder between: the confirmed publisher and a
//!   consumer with batched acks on the source's queue, and a confirmed publisher and the sink's
//!   consumer on the downstream. Its rate is the slower side's.
//! - `ceiling-drain`: the same for a backlog drain: a consumer takes a backlog of `--messages`
//!   from the source's queue while a confirmed publisher feeds the downstream's sink.
//! - `floor-drain`: the drain of `setgate-drain` (from the source's queue to the ceiling's
//!   exchange) through [`floor`], a hot path of our own with no lapin: what setgate's CPU per
//!   message could come down to (a measurement, not a forwarder).
//! - `setgate-paced`, `plugin-paced`: forwarding latency at a fixed rate below saturation.
//! - `setgate-drain`, `plugin-drain`: a backlog drain, the forwarder's own capacity with no
//!   publisher competing: `--messages` are published while the link is down (setgate stopped;
//!   the plugin's link user without permissions on the source), then the link comes back and a
//!   consumer on the downstream queue times the arrivals, first to last.
//!
//! Every case prints the CPU each process spent per message (`/proc`): setgate's own process, and
//! each node's (the plugin works inside the downstream node).
//!
//! Both nodes are given a cluster name ([`crate::name_clusters`] says why).
//!
//! With `--tls`, the links go over TLS (see [`TlsSides`]); the floor and the clients that
//! measure stay on plain AMQP.
//!
//! With `--exchanges N`, each contender federates N exchanges (N flows, each with its queue on
//! the source, as a link with N exchanges runs in setgate and in the plugin), and the load is
//! spread over N publishers and N sink consumers: the shape of a deployment that federates
//! many exchanges, each at a fraction of the rate. With `--transient`, messages are published
//! with delivery mode 1; with `--mandatory`, setgate's link publishes with `mandatory`; with
//! `--two-way`, setgate also runs the link back, which drops what the first one forwarded.
//!
//! Latency is the downstream arrival time minus the publish time carried in a header.

pub mod floor;
mod setup;

use crate::cpu::Cpu;
use crate::measure::{
    median, publish, publish_spread, purge, ratio, through, through_spread, Acks, Arrivals, Load,
    Measured, Throughput,
};
use serde_json::json;
use setgate_testkit::fed::{declare_bound_queue, declare_exchange};
use setgate_testkit::net::free_port;
use setgate_testkit::pki::Pki;
use setgate_testkit::{Node, NodeOptions};
use setup::{plugin_link, start_plugin, start_setgate, PluginLink};
use std::path::PathBuf;

/// Options.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Throughput,
    /// Rate (msg/s) of the paced latency runs.
    #[arg(long, default_value_t = 1000.0)]
    pub paced_rate: f64,
    /// Messages per paced latency run.
    #[arg(long, default_value_t = 5000)]
    pub paced_messages: u64,
    /// The setgate binary (default: next to this benchmark; built if missing).
    #[arg(long)]
    pub setgate: Option<PathBuf>,
    /// Skip the RabbitMQ federation plugin cases.
    #[arg(long)]
    pub skip_plugin: bool,
    /// Links over TLS (`amqps`, verifying the broker against the bench's CA, presenting a
    /// client certificate): `source` for setgate's and the plugin's connections to the source
    /// (the hop between datacenters), `both` for setgate's to the downstream too. The
    /// publishers and consumers that measure stay on plain AMQP.
    #[arg(long, value_enum)]
    pub tls: Option<TlsSides>,
    /// Exchanges federated, each one flow (a queue on the source) with a publisher and a sink
    /// consumer of its own; the messages are shared among them. With more than one, the
    /// diagnostics of the one-exchange workload (`source-drained`, `ceiling`, `ceiling-drain`,
    /// `floor-drain`) are not run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub exchanges: u16,
    /// setgate's link publishes with `mandatory` (a link that must not drop what the downstream
    /// cannot route). The plugin has no such setting and runs as without.
    #[arg(long)]
    pub mandatory: bool,
    /// setgate federates the exchanges both ways (a second link from the downstream back to
    /// the source, `max_hops` 1): each forwarded message comes back to it over the second link
    /// and is dropped there, the work two-way federation adds. The plugin runs one way.
    #[arg(long)]
    pub two_way: bool,
}

/// Which of a link's connections `--tls` puts on TLS.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSides {
    /// The source's.
    Source,
    /// The source's and the downstream's.
    Both,
}

const SOURCE_X: &str = "bench.source";
const SG_X: &str = "bench.setgate";
const PLUGIN_X: &str = "bench.plugin";
const CEILING_X: &str = "bench.ceiling";
/// The source's queue of the one-exchange diagnostics, bound to [`SOURCE_X`].
const SOURCE_Q: &str = "bench.source.q";

/// The exchanges one party publishes to (the same names on both brokers) and the queues its
/// messages end in, one of each per `--exchanges`. With one, the names carry no number.
struct Lanes {
    exchanges: Vec<String>,
    queues: Vec<String>,
}

impl Lanes {
    /// `exchange[.i]` and `exchange.queue[.i]`.
    fn new(exchange: &str, queue: &str, n: u16) -> Lanes {
        let numbered = |base: String| match n {
            1 => vec![base],
            _ => (0..n).map(|i| format!("{base}.{i}")).collect(),
        };
        Lanes {
            exchanges: numbered(exchange.to_string()),
            queues: numbered(format!("{exchange}.{queue}")),
        }
    }

    /// The queues at `uri`, as [`Arrivals`] takes them.
    fn at<'a>(&'a self, uri: &'a str) -> Vec<(&'a str, &'a str)> {
        self.queues.iter().map(|q| (uri, q.as_str())).collect()
    }
}

/// A `ceiling` run: the rates of the source's side and of the downstream's side, at once.
struct Ceiling {
    source: f64,
    downstream: f64,
}

impl Ceiling {
    /// The rate a forwarder between the two could reach at most: the slower side's.
    fn rate(&self) -> f64 {
        self.source.min(self.downstream)
    }
}

/// Runs the benchmark.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let bin = crate::setgate_binary(args.setgate.clone())?;
    eprintln!("starting two RabbitMQ nodes (the downstream with rabbitmq_federation)...");
    let pki = match args.tls {
        Some(_) => Some(Pki::generate(&setgate_testkit::unique_dir("bench-pki"))?),
        None => None,
    };
    let tls_ports = (free_port(), free_port());
    let listener = |port| pki.as_ref().map(|pki| pki.rabbitmq_listener(port, false));
    let with_tls = NodeOptions {
        extra_config: listener(tls_ports.0).unwrap_or_default(),
        ..Default::default()
    };
    let with_plugin = NodeOptions {
        plugins: vec!["rabbitmq_federation".into()],
        extra_config: listener(tls_ports.1).unwrap_or_default(),
        ..Default::default()
    };
    let (src, dst) = tokio::join!(Node::start_with(with_tls), Node::start_with(with_plugin));
    let (src, dst) = (src?, dst?);
    crate::name_clusters(&[(&src, "bench-source"), (&dst, "bench-downstream")]).await?;
    // What the publishers and consumers that measure use, and what the links use.
    let (su, du) = (src.amqp_uri(), dst.amqp_uri());
    let (link_su, link_du) = match (args.tls, &pki) {
        (Some(sides), Some(pki)) => (
            pki.amqps_uri("guest", "guest", tls_ports.0),
            match sides {
                TlsSides::Source => du.clone(),
                TlsSides::Both => pki.amqps_uri("guest", "guest", tls_ports.1),
            },
        ),
        _ => (su.clone(), du.clone()),
    };
    let plugin_tls = pki.as_ref().map(|pki| (tls_ports.0, pki));
    let n = args.exchanges;
    // The diagnostics of the one-exchange workload run with one exchange only.
    let single = n == 1;
    let source_lanes = Lanes::new(SOURCE_X, "q", n);
    let (sg_lanes, plugin_lanes) = (Lanes::new(SG_X, "sink", n), Lanes::new(PLUGIN_X, "sink", n));
    for (uri, lanes) in [(&su, &source_lanes), (&du, &sg_lanes), (&du, &plugin_lanes)] {
        for (x, q) in lanes.exchanges.iter().zip(&lanes.queues) {
            declare_exchange(&su, x, "topic").await?;
            declare_exchange(&du, x, "topic").await?;
            declare_bound_queue(uri, q, x).await?;
        }
    }
    declare_exchange(&su, CEILING_X, "topic").await?;
    declare_exchange(&du, CEILING_X, "topic").await?;
    declare_bound_queue(&du, "bench.ceiling.sink", CEILING_X).await?;
    if !args.skip_plugin {
        let xs = &plugin_lanes.exchanges;
        start_plugin(&src, &dst, xs, args.common.prefetch, plugin_tls).await?;
    }

    let load = args.common.load();
    let prefetch = args.common.prefetch;
    let links = (link_su.as_str(), link_du.as_str());
    let start_sg = || {
        start_setgate(
            &bin,
            links,
            &sg_lanes.exchanges,
            prefetch,
            args.mandatory,
            args.two_way,
        )
    };
    let (mut source, mut drained, mut setgate, mut plugin) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut setgate_drain, mut plugin_drain) = (Vec::new(), Vec::new());
    let (mut ceiling, mut ceiling_drain) = (Vec::new(), Vec::new());
    let mut floor_drain = Vec::new();
    let nodes = [("source_node", &src), ("downstream_node", &dst)];
    for run in 1..=args.common.runs {
        let cpu = Cpu::sample(None, &nodes);
        let rate = publish_spread(&su, &source_lanes.exchanges, load).await?;
        eprintln!(
            "run {run}: source {rate:.0} msg/s; cpu s {}",
            cpu.since(None, &nodes)
        );
        source.push(rate);
        for q in &source_lanes.queues {
            purge(&su, q).await?;
        }

        if single {
            let cpu = Cpu::sample(None, &nodes);
            let m = through(&su, SOURCE_X, &su, SOURCE_Q, load, Acks::Batched).await?;
            eprintln!(
                "run {run}: source-drained {:.0} msg/s; cpu s {}",
                m.rate,
                cpu.since(None, &nodes)
            );
            drained.push(m.rate);

            let source_side = through(&su, SOURCE_X, &su, SOURCE_Q, load, Acks::Batched);
            ceiling.push(ceiling_run("ceiling", run, &du, load, &nodes, source_side).await?);
        }

        let sg = start_sg().await?;
        let cpu = Cpu::sample(Some(&sg), &nodes);
        let m = through_spread(&su, &sg_lanes.exchanges, &du, &sg_lanes.queues, load).await?;
        let cpu = cpu.since(Some(&sg), &nodes);
        eprintln!("run {run}: setgate {} ; cpu s {cpu}", show(&m));
        setgate.push((m, cpu));
        drop(sg);

        if !args.skip_plugin {
            let cpu = Cpu::sample(None, &nodes);
            let (xs, qs) = (&plugin_lanes.exchanges, &plugin_lanes.queues);
            let m = through_spread(&su, xs, &du, qs, load).await?;
            let cpu = cpu.since(None, &nodes);
            eprintln!("run {run}: plugin {} ; cpu s {cpu}", show(&m));
            plugin.push((m, cpu));
        }

        if single {
            // The brokers' ceiling on a drain: a backlog on the source's queue taken by a bare
            // consumer while a bare publisher feeds the downstream.
            purge(&su, SOURCE_Q).await?;
            publish(&su, SOURCE_X, load).await?;
            let backlog = async {
                let a = Arrivals::consume(&[(&su, SOURCE_Q)], load.messages, Acks::Batched).await?;
                a.finish().await
            };
            let c = ceiling_run("ceiling-drain", run, &du, load, &nodes, backlog).await?;
            ceiling_drain.push(c);
        }

        // The backlog drains: setgate's link queues on the source exist (the live run declared
        // them) and keep filling while setgate is stopped.
        publish_spread(&su, &sg_lanes.exchanges, load).await?;
        let arrivals = Arrivals::start(&sg_lanes.at(&du), load.messages, Acks::Auto).await?;
        let cpu = Cpu::sample(None, &nodes);
        let sg = start_sg().await?;
        let m = arrivals.finish().await?;
        let cpu = cpu.since(Some(&sg), &nodes);
        eprintln!("run {run}: setgate-drain {} ; cpu s {cpu}", show(&m));
        setgate_drain.push((m, cpu));
        drop(sg);

        if single {
            purge(&su, SOURCE_Q).await?;
            publish(&su, SOURCE_X, load).await?;
            let arrivals =
                Arrivals::start(&[(&du, "bench.ceiling.sink")], load.messages, Acks::Auto).await?;
            let cpu = Cpu::sample(None, &nodes);
            let (from, to) = (src.amqp_addr(), dst.amqp_addr());
            let forwarder =
                floor::spawn(from, SOURCE_Q, to, CEILING_X, load.messages, prefetch).await?;
            let m = arrivals.finish().await?;
            let cpu = cpu.since(None, &nodes).with("floor", forwarder);
            eprintln!("run {run}: floor-drain {} ; cpu s {cpu}", show(&m));
            floor_drain.push((m, cpu));
        }

        if !args.skip_plugin {
            plugin_link(&src, PluginLink::Down).await?;
            publish_spread(&su, &plugin_lanes.exchanges, load).await?;
            let arrivals =
                Arrivals::start(&plugin_lanes.at(&du), load.messages, Acks::Auto).await?;
            let cpu = Cpu::sample(None, &nodes);
            plugin_link(&src, PluginLink::Up).await?;
            let m = arrivals.finish().await?;
            let cpu = cpu.since(None, &nodes);
            eprintln!("run {run}: plugin-drain {} ; cpu s {cpu}", show(&m));
            plugin_drain.push((m, cpu));
        }
    }

    let paced = Load {
        messages: args.paced_messages,
        rate: Some(args.paced_rate),
        ..load
    };
    let sg = start_sg().await?;
    let sg_paced = through_spread(&su, &sg_lanes.exchanges, &du, &sg_lanes.queues, paced).await?;
    drop(sg);
    let plugin_paced = match args.skip_plugin {
        true => None,
        false => {
            let (xs, qs) = (&plugin_lanes.exchanges, &plugin_lanes.queues);
            Some(through_spread(&su, xs, &du, qs, paced).await?)
        }
    };

    let source_med = median(source.clone());
    let sg_med = median(setgate.iter().map(|m| m.0.rate).collect());
    let plugin_med =
        (!plugin.is_empty()).then(|| median(plugin.iter().map(|m| m.0.rate).collect()));
    let rounded = |v: &[f64]| v.iter().map(|r| r.round()).collect::<Vec<_>>();
    let rates = |v: &[(Measured, Cpu)]| v.iter().map(|m| m.0.rate.round()).collect::<Vec<_>>();
    let pct = |v: &[(Measured, Cpu)], f: fn(&Measured) -> f64| {
        median(v.iter().map(|m| f(&m.0)).collect())
    };
    let cpu_us = |v: &[(Measured, Cpu)]| {
        Cpu::median_per_message_us(v.iter().map(|m| &m.1), args.common.messages)
    };
    let links_tls = args.tls.map(|t| format!("{t:?}").to_lowercase());
    let common = json!({
        "messages": args.common.messages, "body_size": args.common.body_size,
        "persistent": !args.common.transient, "links_tls": links_tls, "exchanges": n,
        "mandatory": args.mandatory,
        "two_way": args.two_way,
    });
    // A ratio to a diagnostic's median, none when it was not run (`--exchanges` above 1).
    let to = |a: f64, b: Option<f64>| b.map(|b| ratio(a, b));
    let ceiling_json = |v: &[(Ceiling, Cpu)]| {
        let med = median(v.iter().map(|c| c.0.rate()).collect());
        let j = json!({
            "runs_msg_s": v.iter().map(|c| c.0.rate().round()).collect::<Vec<_>>(),
            "median_msg_s": med.round(),
            "source_side_msg_s": v.iter().map(|c| c.0.source.round()).collect::<Vec<_>>(),
            "downstream_side_msg_s": v.iter().map(|c| c.0.downstream.round()).collect::<Vec<_>>(),
            "cpu_us_per_msg": Cpu::median_per_message_us(v.iter().map(|c| &c.1), args.common.messages),
            "ratio_to_source": ratio(med, source_med),
            "load": common,
        });
        (med, j)
    };
    let (ceiling_med, ceiling_line) = ceiling_json(&ceiling);
    let (ceiling_drain_med, ceiling_drain_line) = ceiling_json(&ceiling_drain);
    let drained_med = median(drained.clone());
    let (ceiling_med, ceiling_drain_med, drained_med) = match single {
        true => (
            Some(ceiling_med),
            Some(ceiling_drain_med),
            Some(drained_med),
        ),
        false => (None, None, None),
    };
    line(
        "source",
        json!({"runs_msg_s": rounded(&source), "median_msg_s": source_med.round(), "load": common}),
    );
    if single {
        line(
            "source-drained",
            json!({
                "runs_msg_s": rounded(&drained), "median_msg_s": drained_med.map(f64::round),
                "ratio_to_source": drained_med.map(|d| ratio(d, source_med)),
                "load": common,
            }),
        );
        line("ceiling", ceiling_line);
        line("ceiling-drain", ceiling_drain_line);
    }
    line(
        "setgate",
        json!({
            "ack_mode": "on-confirm", "prefetch": args.common.prefetch,
            "runs_msg_s": rates(&setgate), "median_msg_s": sg_med.round(),
            "p50_ms": pct(&setgate, |m| m.p50_ms),
            "p99_ms": pct(&setgate, |m| m.p99_ms),
            "cpu_us_per_msg": cpu_us(&setgate),
            "ratio_to_source": ratio(sg_med, source_med),
            "ratio_to_source_drained": to(sg_med, drained_med),
            "ratio_to_ceiling": to(sg_med, ceiling_med),
            "ratio_to_plugin": plugin_med.map(|p| ratio(sg_med, p)),
            "load": common,
        }),
    );
    if let Some(p) = plugin_med {
        line(
            "plugin",
            json!({
                "ack_mode": "on-confirm", "prefetch": args.common.prefetch,
                "runs_msg_s": rates(&plugin), "median_msg_s": p.round(),
                "p50_ms": pct(&plugin, |m| m.p50_ms),
                "p99_ms": pct(&plugin, |m| m.p99_ms),
                "cpu_us_per_msg": cpu_us(&plugin),
                "ratio_to_source": ratio(p, source_med),
                "ratio_to_ceiling": to(p, ceiling_med),
                "load": common,
            }),
        );
    }
    let sg_drain = median(setgate_drain.iter().map(|m| m.0.rate).collect());
    let plugin_drain_med =
        (!plugin_drain.is_empty()).then(|| median(plugin_drain.iter().map(|m| m.0.rate).collect()));
    // A drain case's line: what every drain prints, then its ratios.
    let drain_line = |case: &str, v: &[(Measured, Cpu)], med: f64, ratios: serde_json::Value| {
        let mut j = json!({
            "ack_mode": "on-confirm", "prefetch": args.common.prefetch,
            "runs_msg_s": rates(v), "median_msg_s": med.round(),
            "cpu_us_per_msg": cpu_us(v), "load": common,
        });
        if let (Some(j), serde_json::Value::Object(r)) = (j.as_object_mut(), ratios) {
            j.extend(r);
        }
        line(case, j);
    };
    drain_line(
        "setgate-drain",
        &setgate_drain,
        sg_drain,
        json!({
            "ratio_to_source": ratio(sg_drain, source_med),
            "ratio_to_ceiling": to(sg_drain, ceiling_drain_med),
            "ratio_to_plugin": plugin_drain_med.map(|p| ratio(sg_drain, p)),
        }),
    );
    if let Some(p) = plugin_drain_med {
        drain_line(
            "plugin-drain",
            &plugin_drain,
            p,
            json!({
                "ratio_to_source": ratio(p, source_med),
                "ratio_to_ceiling": to(p, ceiling_drain_med),
            }),
        );
    }
    if single {
        let floor_med = median(floor_drain.iter().map(|m| m.0.rate).collect());
        drain_line(
            "floor-drain",
            &floor_drain,
            floor_med,
            json!({
                "ratio_to_setgate_drain": ratio(floor_med, sg_drain),
                "ratio_to_plugin": plugin_drain_med.map(|p| ratio(floor_med, p)),
            }),
        );
    }
    let paced_json = |m: &Measured| json!({"rate_msg_s": args.paced_rate, "messages": args.paced_messages, "p50_ms": m.p50_ms, "p99_ms": m.p99_ms});
    line("setgate-paced", paced_json(&sg_paced));
    if let Some(m) = plugin_paced {
        line("plugin-paced", paced_json(&m));
    }
    Ok(())
}

/// One run of a `ceiling` case: `source_side` and a bare confirmed publisher with the sink's
/// consumer on the downstream, at once.
async fn ceiling_run(
    case: &str,
    run: usize,
    du: &str,
    load: Load,
    nodes: &[(&str, &Node)],
    source_side: impl std::future::Future<Output = anyhow::Result<Measured>>,
) -> anyhow::Result<(Ceiling, Cpu)> {
    let cpu = Cpu::sample(None, nodes);
    let downstream_side = through(du, CEILING_X, du, "bench.ceiling.sink", load, Acks::Auto);
    let (up, down) = tokio::try_join!(source_side, downstream_side)?;
    let c = Ceiling {
        source: up.rate,
        downstream: down.rate,
    };
    let cpu = cpu.since(None, nodes);
    eprintln!(
        "run {run}: {case} {:.0} msg/s (source side {:.0}, downstream side {:.0}); cpu s {cpu}",
        c.rate(),
        c.source,
        c.downstream
    );
    Ok((c, cpu))
}

fn show(m: &Measured) -> String {
    format!(
        "{:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms",
        m.rate, m.p50_ms, m.p99_ms
    )
}

fn line(case: &str, result: serde_json::Value) {
    crate::measure::line("federation", case, result);
}
