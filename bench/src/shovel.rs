//! Shovel throughput: setgate's `[[shovel]]` vs RabbitMQ's shovel plugin (a dynamic shovel), on
//! the same local brokers, measured the same way; and a SET-routed setgate shovel vs a plain one.
//!
//! Every shovel moves the durable queue `bench.shovel.src` of the source node, on-confirm, with a
//! prefetch of `--prefetch`; messages are persistent, published with confirms. Each case runs
//! `--runs` times per mover, interleaved (after one uncounted warm-up run each, the movers taking
//! turns at going first), and prints one JSON line with the medians:
//! - `drain`: `--messages` published while no shovel runs (setgate not started, the plugin's
//!   shovel not declared); then the shovel starts and a consumer on the destination queue times
//!   the arrivals, first to last.
//! - `live`: the shovel runs first; a saturating confirmed publisher fills the source queue while
//!   the consumer on the destination times the arrivals.
//! - `routed`: the drain of `drain`, every message with an `x-user-id` header (`--users` users),
//!   by a setgate shovel to the exchange `bench.orders` of one cluster (`plain`) and by one whose
//!   destination is `route = "sets"` on that header, over two SETs' clusters (`sets`).
//!
//! CPU per message is each process's CPU time (`/proc`) over the run divided by the messages
//! moved: setgate's own process, and each node's (the plugin works inside the destination node).

mod plugin;
mod setgate;

use crate::cpu::Cpu;
use crate::measure::{line, median, publish, purge, ratio, Acks, Arrivals, Load, Throughput};
use serde_json::{json, Value};
use setgate::Destination;
use setgate_testkit::fed::{declare_bound_queue, declare_exchange, shovel_status};
use setgate_testkit::{Node, NodeOptions, Setgate};
use std::path::PathBuf;
use std::time::Duration;

/// Options of `setgate-bench shovel`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Throughput,
    /// Distinct `x-user-id` values of the `routed` case.
    #[arg(long, default_value_t = 1000)]
    pub users: u64,
    /// Cases to run, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Case::Drain, Case::Live, Case::Routed])]
    pub cases: Vec<Case>,
    /// The setgate binary (default: next to this benchmark).
    #[arg(long)]
    pub setgate: Option<PathBuf>,
    /// Skip the RabbitMQ shovel plugin.
    #[arg(long)]
    pub skip_plugin: bool,
    /// Skip setgate (measure the plugin alone; `routed` is then skipped).
    #[arg(long)]
    pub skip_setgate: bool,
    /// Shovels add forward headers (`x-shovelled`; the plugin's `add-forward-headers`).
    #[arg(long)]
    pub forward_headers: bool,
}

/// A case of the benchmark.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// Backlog drain, setgate vs the plugin.
    Drain,
    /// Under a live publisher, setgate vs the plugin.
    Live,
    /// Backlog drain, setgate SET-routed to two SETs vs plain to one cluster.
    Routed,
}

/// The publisher's exchange on the source node; the source queue is bound to it.
const SRC_X: &str = "bench.in";
const SRC_Q: &str = "bench.shovel.src";
/// The destination queue of `drain` and `live`.
const DST_Q: &str = "bench.shovel.dst";
/// The destination exchange of `routed`, on both SETs' nodes, with a queue bound to it.
const ORDERS_X: &str = "bench.orders";
const ORDERS_Q: &str = "bench.orders.q";
/// The plugin's shovel.
const PLUGIN_SHOVEL: &str = "bench";

/// What moves the messages.
#[derive(Debug, Clone, Copy)]
enum Mover {
    Plugin,
    Setgate(Destination),
}

/// When the messages are published: before the shovel starts, or while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Drain,
    Live,
}

/// One run's figures.
struct Run {
    /// Messages per second at the destination, first arrival to last.
    rate: f64,
    /// Confirmed publishes per second (`live`).
    published: Option<f64>,
    cpu: Cpu,
    /// What setgate's `/api/shovels` said of the shovel's SETs at the end (`routed`).
    sets: Option<Value>,
}

/// The nodes: the source, the destination (set-a's cluster in `routed`; the plugin runs here)
/// and set-b's cluster.
struct Lab {
    src: Node,
    dst: Node,
    set_b: Node,
    bin: Option<PathBuf>,
    prefetch: u32,
    forward_headers: bool,
}

/// A shovel while it runs.
enum Started {
    Plugin,
    Setgate(Setgate),
}

impl Started {
    fn setgate(&self) -> Option<&Setgate> {
        match self {
            Started::Setgate(sg) => Some(sg),
            Started::Plugin => None,
        }
    }
}

/// Runs the benchmark.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let bin = match args.skip_setgate {
        true => None,
        false => Some(crate::setgate_binary(args.setgate.clone())?),
    };
    eprintln!("starting three RabbitMQ nodes (the destination with rabbitmq_shovel)...");
    let with_plugin = NodeOptions {
        plugins: vec!["rabbitmq_shovel".into()],
        ..Default::default()
    };
    let (src, dst, set_b) =
        tokio::join!(Node::start(), Node::start_with(with_plugin), Node::start());
    let lab = Lab {
        src: src?,
        dst: dst?,
        set_b: set_b?,
        bin,
        prefetch: args.common.prefetch,
        forward_headers: args.forward_headers,
    };
    crate::name_clusters(&[
        (&lab.src, "bench-source"),
        (&lab.dst, "bench-destination"),
        (&lab.set_b, "bench-set-b"),
    ])
    .await?;
    lab.declare().await?;

    let load = args.common.load();
    let common = json!({
        "messages": args.common.messages, "body_size": args.common.body_size, "persistent": !args.common.transient,
        "ack_mode": "on-confirm", "prefetch": args.common.prefetch,
        "forward_headers": args.forward_headers,
    });
    for case in &args.cases {
        let (mode, load, movers) = match case {
            Case::Drain | Case::Live => {
                let mut movers = Vec::new();
                if !args.skip_setgate {
                    movers.push(("setgate", Mover::Setgate(Destination::Queue)));
                }
                if !args.skip_plugin {
                    movers.push(("plugin", Mover::Plugin));
                }
                let mode = if *case == Case::Drain {
                    Mode::Drain
                } else {
                    Mode::Live
                };
                (mode, load, movers)
            }
            Case::Routed if args.skip_setgate => {
                eprintln!("routed: skipped (--skip-setgate)");
                continue;
            }
            Case::Routed => {
                let movers = vec![
                    ("plain", Mover::Setgate(Destination::Exchange)),
                    ("sets", Mover::Setgate(Destination::Sets)),
                ];
                let load = Load {
                    users: Some(args.users),
                    ..load
                };
                (Mode::Drain, load, movers)
            }
        };
        let mut runs: Vec<Vec<Run>> = movers.iter().map(|_| Vec::new()).collect();
        // Run 0 warms the brokers up (the first run on fresh nodes is slower) and is not
        // counted; the movers take turns at going first.
        for i in 0..=args.common.runs {
            let mut order: Vec<usize> = (0..movers.len()).collect();
            if i % 2 == 1 {
                order.reverse();
            }
            for m in order {
                let (name, mover) = movers[m];
                let r = lab.run_once(mover, mode, load).await?;
                eprintln!(
                    "{case:?} run {i}{}: {name} {:.0} msg/s{}; cpu s {}",
                    if i == 0 { " (warm-up)" } else { "" },
                    r.rate,
                    r.published
                        .map(|p| format!(" (published {p:.0} msg/s)"))
                        .unwrap_or_default(),
                    r.cpu
                );
                if i > 0 {
                    runs[m].push(r);
                }
            }
        }
        let mut result = common.clone();
        for ((name, _), runs) in movers.iter().zip(&runs) {
            result[*name] = summary(runs, args.common.messages);
        }
        let med = |name: &str| result[name]["median_msg_s"].as_f64();
        let (case_name, ratio_key, of, to, target) = match case {
            Case::Drain => (
                "drain",
                "ratio_setgate_to_plugin",
                "setgate",
                "plugin",
                Some(1.3),
            ),
            Case::Live => ("live", "ratio_setgate_to_plugin", "setgate", "plugin", None),
            Case::Routed => ("routed", "ratio_sets_to_plain", "sets", "plain", Some(0.9)),
        };
        result[ratio_key] = match (med(of), med(to)) {
            (Some(a), Some(b)) => json!(ratio(a, b)),
            _ => Value::Null,
        };
        if let Some(t) = target {
            result["target"] = json!(t);
        }
        if *case == Case::Routed {
            result["users"] = json!(args.users);
            // How the last run's messages spread over the SETs, as setgate counted them.
            let last = runs
                .last()
                .and_then(|r| r.last())
                .and_then(|r| r.sets.as_ref());
            let forwarded: serde_json::Map<String, Value> = last
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(set, s)| (set.clone(), s["forwarded"].clone()))
                .collect();
            result["forwarded_per_set_last_run"] = Value::Object(forwarded);
        }
        result["loadavg"] = json!(loadavg());
        line("shovel", case_name, result);
    }
    Ok(())
}

impl Lab {
    fn nodes(&self) -> [(&str, &Node); 3] {
        [
            ("source_node", &self.src),
            ("destination_node", &self.dst),
            ("set_b_node", &self.set_b),
        ]
    }

    async fn declare(&self) -> anyhow::Result<()> {
        let (su, du, bu) = (
            self.src.amqp_uri(),
            self.dst.amqp_uri(),
            self.set_b.amqp_uri(),
        );
        declare_exchange(&su, SRC_X, "topic").await?;
        declare_bound_queue(&su, SRC_Q, SRC_X).await?;
        for uri in [&du, &bu] {
            declare_exchange(uri, ORDERS_X, "topic").await?;
            declare_bound_queue(uri, ORDERS_Q, ORDERS_X).await?;
        }
        // The center (the source's cluster) receives messages without a user id: none here,
        // but its flow needs the exchange to be up.
        declare_exchange(&su, ORDERS_X, "topic").await?;
        // Shovels publish to it through the default exchange; nothing publishes to amq.direct
        // with the key `#`.
        declare_bound_queue(&du, DST_Q, "amq.direct").await
    }

    /// Where a mover's messages arrive.
    fn destinations(&self, mover: Mover) -> Vec<(String, &'static str)> {
        match mover {
            Mover::Plugin | Mover::Setgate(Destination::Queue) => {
                vec![(self.dst.amqp_uri(), DST_Q)]
            }
            Mover::Setgate(Destination::Exchange) => vec![(self.dst.amqp_uri(), ORDERS_Q)],
            Mover::Setgate(Destination::Sets) => vec![
                (self.dst.amqp_uri(), ORDERS_Q),
                (self.set_b.amqp_uri(), ORDERS_Q),
            ],
        }
    }

    /// One run: publish (before or while the shovel runs), time the arrivals, stop the shovel.
    async fn run_once(&self, mover: Mover, mode: Mode, load: Load) -> anyhow::Result<Run> {
        let su = self.src.amqp_uri();
        purge(&su, SRC_Q).await?;
        if mode == Mode::Drain {
            publish(&su, SRC_X, load).await?;
        }
        let running = match mode {
            Mode::Live => Some(self.start(mover, true).await?),
            Mode::Drain => None,
        };
        let dests = self.destinations(mover);
        let dests: Vec<(&str, &str)> = dests.iter().map(|(u, q)| (u.as_str(), *q)).collect();
        let arrivals = Arrivals::start(&dests, load.messages, Acks::Auto).await?;
        let nodes = self.nodes();
        let cpu = Cpu::sample(running.as_ref().and_then(Started::setgate), &nodes);
        let running = match running {
            Some(r) => r,
            None => self.start(mover, false).await?,
        };
        let published = match mode {
            Mode::Live => Some(publish(&su, SRC_X, load).await?),
            Mode::Drain => None,
        };
        let m = arrivals.finish().await?;
        let cpu = cpu.since(running.setgate(), &nodes);
        let sets = match (&running, mover) {
            (Started::Setgate(sg), Mover::Setgate(Destination::Sets)) => {
                Some(shovel_status(sg, "bench").await?["sets"].clone())
            }
            _ => None,
        };
        self.stop(running).await?;
        Ok(Run {
            rate: m.rate,
            published,
            cpu,
            sets,
        })
    }

    /// Starts a mover; with `wait`, returns once it runs (a drain is timed at the destination
    /// whatever the start costs).
    async fn start(&self, mover: Mover, wait: bool) -> anyhow::Result<Started> {
        match mover {
            Mover::Plugin => {
                let def = plugin::definition(
                    &self.src,
                    SRC_Q,
                    (&self.dst, DST_Q),
                    self.prefetch,
                    self.forward_headers,
                );
                plugin::start(&self.dst, PLUGIN_SHOVEL, &def, wait).await?;
                Ok(Started::Plugin)
            }
            Mover::Setgate(dest) => {
                let bin = self
                    .bin
                    .as_deref()
                    .expect("setgate runs unless --skip-setgate");
                let shovel = setgate::Shovel {
                    src: &self.src,
                    src_queue: SRC_Q,
                    set_a: &self.dst,
                    set_b: &self.set_b,
                    queue: DST_Q,
                    exchange: ORDERS_X,
                    prefetch: self.prefetch,
                    forward_headers: self.forward_headers,
                };
                Ok(Started::Setgate(shovel.start(bin, dest).await?))
            }
        }
    }

    /// Stops a mover: SIGTERM for setgate (it acks what was confirmed and closes), so nothing it
    /// held comes back to the source queue after the next run purged it.
    async fn stop(&self, running: Started) -> anyhow::Result<()> {
        match running {
            Started::Plugin => plugin::stop(&self.dst, PLUGIN_SHOVEL).await,
            Started::Setgate(mut sg) => {
                sg.sigterm();
                sg.wait_exit(Duration::from_secs(30)).await?;
                Ok(())
            }
        }
    }
}

/// The runs of one mover: rates, the median, and the median CPU per message of each process and
/// of all of them.
fn summary(runs: &[Run], messages: u64) -> Value {
    let rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
    let mut out = json!({
        "runs_msg_s": rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        "median_msg_s": median(rates).round(),
    });
    if runs.iter().all(|r| r.published.is_some()) {
        out["published_median_msg_s"] =
            json!(median(runs.iter().filter_map(|r| r.published).collect()).round());
    }
    let mut cpu = Cpu::median_per_message_us(runs.iter().map(|r| &r.cpu), messages);
    // Printed beside the per-process figures, as before.
    out["cpu_us_per_msg_all"] = cpu
        .as_object_mut()
        .and_then(|m| m.remove("all"))
        .unwrap_or_default();
    out["cpu_us_per_msg"] = cpu;
    out
}

/// The 1, 5 and 15 minute load averages (the machine is shared: figures are read against them).
fn loadavg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}
