//! The chaos run: two "datacenters" under a random mix of real faults, and the books kept.
//!
//! Datacenter 1 is a `set` listener over two SETs (`set-a`, `set-b`, each other's failover) and a
//! center, each one RabbitMQ node; a federation link carries the center's `chaos.fed` exchange to
//! datacenter 2 (a fourth node). Two publishers publish persistent messages with confirms all the
//! time: users of both SETs through the set listener, and a producer on the center's exchange.
//! Every few seconds one fault from [`Fault`] strikes at random. At the end every fault is healed,
//! the link drains, every queue is read out, and the report compares what the brokers confirmed
//! with what arrived: lost must be 0 (duplicates are allowed: at-least-once).
//!
//! The link is watched all along (every 0.5 s): a flow that says `running` with messages waiting
//! upstream and nothing forwarded, while it names no reason (its `activity` starts with
//! `waiting` or `backing off`), is in a *silent stall*; the longest one is reported. A flow names
//! why within 1.5 s of moving nothing, so with the poll a stall up to 2 s is that bound, and
//! anything longer is a link that says `running` and moves nothing.

use crate::config::{Check, Config, Link, Listener, Pool, Routing, Upstream};
use crate::fed::{declare_bound_queue, declare_exchange, Collector};
use crate::netfault::Blackhole;
use crate::{free_port, wait_until, Node, Setgate};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How to run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The setgate binary.
    pub bin: PathBuf,
    /// How long faults keep coming.
    pub duration: Duration,
    /// Time between the start of one fault and the next.
    pub every: Duration,
    /// Seed of the fault sequence (the run prints it; the same seed gives the same sequence).
    pub seed: u64,
    /// Messages per second of each publisher.
    pub rate: f64,
}

/// What the run saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChaosReport {
    /// Faults injected, in order.
    pub faults: Vec<String>,
    /// Messages the brokers confirmed (through the set listener, and on the federated exchange).
    pub confirmed_set: usize,
    /// Of those, federated to datacenter 2.
    pub confirmed_fed: usize,
    /// Confirmed but never read out anywhere.
    pub lost: usize,
    /// Read out more than once.
    pub duplicates: usize,
    /// The longest silent stall of the link (see the module doc), in seconds.
    pub longest_silent_stall_s: f64,
    /// setgate's RSS (KiB) and open descriptors after start-up and at the end.
    pub rss_kib: (u64, u64),
    /// Open file descriptors, after start-up and at the end.
    pub fds: (usize, usize),
    /// What the descriptors open at the end and not at the start point to (sockets by inode
    /// are shown as `socket`), to say what a growth is.
    pub fds_new_kinds: Vec<String>,
}

/// One kind of fault.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// kill -9 a broker, restart it 3 s later.
    KillBroker(usize),
    /// SIGSTOP a broker for 5 s.
    StopBroker(usize),
    /// Stop a broker cleanly and start it again.
    RestartBroker(usize),
    /// kill -9 setgate and start it again.
    KillSetgate,
    /// Drop every packet to and from a broker for 10 s (brokers 2 and 3 are the link's ends).
    Blackhole(usize),
    /// SIGHUP with a changed pool.
    Reload,
}

const NAMES: [&str; 4] = ["set-a", "set-b", "center", "dc2"];

/// A small, seedable random sequence (xorshift64*): the run needs repeatable choices, not quality.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

/// The run's config; `generation` alternates the pools' check interval, so a reload changes
/// every pool and keeps its servers. The listener's port is fixed: clients reconnect to it after
/// setgate is killed and started again.
fn config(admin: &str, port: u16, nodes: &[Node], generation: u32) -> Config {
    let pool = |name: &str, node: &Node| {
        let inter = format!("{}ms", 500 + 100 * (generation % 2));
        Pool::new(name)
            .check(Check::amqp().inter(&inter).fall(2).rise(2).timeout("2s"))
            .server(&format!("{name}-1"), node.amqp_addr())
    };
    Config::new()
        .admin(admin)
        .shutdown_grace("5s")
        .listener(Listener::set("amqp").bind(format!("127.0.0.1:{port}")))
        .pool(pool("set-a", &nodes[0]))
        .pool(pool("set-b", &nodes[1]))
        .pool(pool("center", &nodes[2]))
        .routing(
            Routing::new("center")
                .set("set-a", "set-a", "set-b")
                .set("set-b", "set-b", "set-a")
                .override_key("user-a", "set-a")
                .override_key("user-b", "set-b"),
        )
        .upstream(Upstream::new("center", &[nodes[2].amqp_uri()]))
        .link(Link::new(
            "chaos",
            &["center"],
            "dc2",
            &[nodes[3].amqp_uri()],
            &["chaos.fed"],
        ))
}

/// Publishes ids from `first` on at `rate` until `stop`, one confirm at a time, reconnecting
/// after any failure and publishing the unconfirmed id again (at-least-once).
async fn publisher(
    uri: String,
    exchange: &'static str,
    first: u64,
    rate: f64,
    stop: Arc<AtomicBool>,
    confirmed: Arc<Mutex<BTreeSet<u64>>>,
) {
    let mut next = first;
    let gap = Duration::from_secs_f64(1.0 / rate);
    while !stop.load(Ordering::Relaxed) {
        let session = async {
            let conn = crate::amqp::connect(&uri).await?;
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            while !stop.load(Ordering::Relaxed) {
                let pace = tokio::time::sleep(gap);
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(next.to_string().into());
                let confirm = tokio::time::timeout(Duration::from_secs(10), async {
                    ch.basic_publish(
                        exchange.into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        next.to_string().as_bytes(),
                        props,
                    )
                    .await?
                    .await
                })
                .await??;
                if confirm.is_ack() {
                    confirmed.lock().unwrap().insert(next);
                    next += 1;
                }
                pace.await;
            }
            let _ = conn.close(200, "OK".into()).await;
            anyhow::Ok(())
        };
        if let Err(e) = session.await {
            tracing::debug!(error = %e, exchange, "chaos publisher reconnecting");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// What each open descriptor of a process points to, with `socket:[inode]` shortened to
/// `socket` so two processes (setgate restarted) compare.
fn fd_kinds(pid: i32) -> Vec<String> {
    let mut kinds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|t| {
                    let t = t.display().to_string();
                    t.split(":[").next().unwrap_or(&t).to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    kinds.sort();
    kinds
}

/// RSS in KiB and open descriptors of a process.
fn usage(pid: i32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

/// Watches `/api/links` until `stop`; returns the longest silent stall.
async fn watch_link(admin: std::net::SocketAddr, stop: Arc<AtomicBool>) -> Duration {
    let mut longest = Duration::ZERO;
    let mut stalled_since: Option<(Instant, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(r) = crate::http::get(admin, "/api/links").await else {
            stalled_since = None; // setgate itself is down: that is not a link saying "running"
            continue;
        };
        let Ok(v) = r.json() else { continue };
        let Some(flow) = v["links"][0]["flows"].get(0).cloned() else {
            continue;
        };
        let running = flow["state"] == "running";
        let waiting = flow["queue_depth"].as_u64().unwrap_or(0) > 0;
        let forwarded = flow["forwarded"].as_u64().unwrap_or(0);
        let activity = flow["activity"].as_str().unwrap_or("");
        let names_a_reason = activity.starts_with("waiting") || activity.starts_with("backing off");
        if running && waiting && !names_a_reason {
            match stalled_since {
                Some((since, at)) if at == forwarded => longest = longest.max(since.elapsed()),
                _ => stalled_since = Some((Instant::now(), forwarded)),
            }
        } else {
            stalled_since = None;
        }
    }
    longest
}

/// Runs the whole thing; see the module doc.
pub async fn run(opts: ChaosOptions) -> anyhow::Result<ChaosReport> {
    crate::raise_fd_limit();
    let mut nodes = Vec::new();
    for _ in 0..4 {
        nodes.push(Node::start().await?);
    }
    for n in &nodes[..3] {
        n.add_users(&[
            ("user-a".into(), "pw".into()),
            ("user-b".into(), "pw".into()),
        ])
        .await?;
        declare_exchange(&n.amqp_uri(), "chaos.set", "fanout").await?;
        declare_bound_queue(&n.amqp_uri(), "chaos-set-q", "chaos.set").await?;
    }
    // The center's exchange has no queue of its own: only the link's upstream queue takes its
    // messages, so every one counted arrived through the link.
    declare_exchange(&nodes[2].amqp_uri(), "chaos.fed", "fanout").await?;
    declare_exchange(&nodes[3].amqp_uri(), "chaos.fed", "fanout").await?;
    declare_bound_queue(&nodes[3].amqp_uri(), "chaos-fed-q", "chaos.fed").await?;
    let admin = format!("127.0.0.1:{}", free_port());
    let port = free_port();
    let mut generation = 0;
    let mut sg = Setgate::start(&opts.bin, &config(&admin, port, &nodes, generation)).await?;
    sg.wait_ready().await?;
    crate::fed::wait_running(&sg, "chaos").await?;

    let stop = Arc::new(AtomicBool::new(false));
    let confirmed_set = Arc::new(Mutex::new(BTreeSet::new()));
    let confirmed_fed = Arc::new(Mutex::new(BTreeSet::new()));
    let mut tasks = Vec::new();
    for (i, user) in ["user-a", "user-b"].iter().enumerate() {
        tasks.push(tokio::spawn(publisher(
            format!("amqp://{user}:pw@127.0.0.1:{port}/%2f"),
            "chaos.set",
            (i as u64 + 1) * 100_000_000,
            opts.rate,
            stop.clone(),
            confirmed_set.clone(),
        )));
    }
    tasks.push(tokio::spawn(publisher(
        nodes[2].amqp_uri(),
        "chaos.fed",
        900_000_000,
        opts.rate,
        stop.clone(),
        confirmed_fed.clone(),
    )));
    let watch_stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_link(sg.admin, watch_stop.clone()));
    // setgate's footprint with every publisher connected and the link running, before any
    // fault; the same state is measured again at the end.
    let steady = |sg: &Setgate| {
        let sets = confirmed_set.clone();
        let feds = confirmed_fed.clone();
        let pid = sg.pid().unwrap_or(0);
        async move {
            let (a, b) = (sets.lock().unwrap().len(), feds.lock().unwrap().len());
            wait_until("traffic through setgate", Duration::from_secs(120), || {
                let (sets, feds) = (sets.clone(), feds.clone());
                async move {
                    (sets.lock().unwrap().len() > a + 100 && feds.lock().unwrap().len() > b + 50)
                        .then_some(())
                }
            })
            .await?;
            // Health checks and API calls open sockets for a moment: the steady footprint is the
            // fewest descriptors seen over a few samples (and the RSS of the last).
            let mut seen = usage(pid);
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = usage(pid);
                seen = (now.0, seen.1.min(now.1));
            }
            anyhow::Ok((seen.0, seen.1, fd_kinds(pid)))
        }
    };
    let start_usage = steady(&sg).await?;

    let mut rng = Rng(opts.seed | 1);
    let mut faults = Vec::new();
    let began = Instant::now();
    while began.elapsed() < opts.duration {
        let fault = match rng.below(6) {
            0 => Fault::KillBroker(rng.below(4)),
            1 => Fault::StopBroker(rng.below(4)),
            2 => Fault::RestartBroker(rng.below(4)),
            3 => Fault::KillSetgate,
            4 => Fault::Blackhole(rng.below(4)),
            _ => Fault::Reload,
        };
        let at = began.elapsed();
        let what = match fault {
            Fault::KillBroker(i)
            | Fault::StopBroker(i)
            | Fault::RestartBroker(i)
            | Fault::Blackhole(i) => {
                format!("{fault:?} ({})", NAMES[i])
            }
            _ => format!("{fault:?}"),
        };
        println!("chaos: {:>6.1}s {what}", at.as_secs_f64());
        faults.push(format!("{:.1}s {what}", at.as_secs_f64()));
        let next = Instant::now() + opts.every;
        match fault {
            Fault::KillBroker(i) => {
                nodes[i].kill9();
                tokio::time::sleep(Duration::from_secs(3)).await;
                nodes[i].restart().await?;
            }
            Fault::StopBroker(i) => {
                nodes[i].sigstop();
                tokio::time::sleep(Duration::from_secs(5)).await;
                nodes[i].sigcont();
            }
            Fault::RestartBroker(i) => {
                nodes[i].stop().await?;
                nodes[i].restart().await?;
            }
            Fault::KillSetgate => {
                sg.kill9();
                sg.restart().await?;
            }
            Fault::Blackhole(i) => {
                let hole = Blackhole::port(nodes[i].amqp_addr().port())?;
                tokio::time::sleep(Duration::from_secs(10)).await;
                hole.heal()?;
            }
            Fault::Reload => {
                generation += 1;
                sg.reload(&config(&admin, port, &nodes, generation))?;
            }
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
    }

    // Every fault has healed: traffic flows again; measure, stop publishing, let the link drain,
    // read everything out.
    sg.wait_ready().await?;
    let end_usage = steady(&sg).await?;
    // The watch ends while traffic still flows: once the publishers stop, the link is idle for
    // real, and its queue depth (read every 5 s) may lag behind.
    watch_stop.store(true, Ordering::Relaxed);
    let stall = watcher.await?;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    sg.wait_ready().await?;
    wait_until("the link to drain", Duration::from_secs(120), || async {
        let v = sg.get_json("/api/links").await.ok()?;
        let f = &v["links"][0]["flows"][0];
        (f["state"] == "running" && f["queue_depth"] == 0).then_some(())
    })
    .await?;

    let sets: Vec<Collector> = nodes[..3]
        .iter()
        .map(|n| Collector::start(&n.amqp_uri(), "chaos-set-q"))
        .collect();
    let fed = Collector::start(&nodes[3].amqp_uri(), "chaos-fed-q");
    let confirmed_set = confirmed_set.lock().unwrap().clone();
    let confirmed_fed = confirmed_fed.lock().unwrap().clone();
    let all_confirmed: BTreeSet<u64> = confirmed_set.union(&confirmed_fed).copied().collect();
    // Read until everything confirmed is in, or nothing new arrives for 5 s.
    let mut last = (0, Instant::now());
    loop {
        let got: usize = sets.iter().map(Collector::count).sum::<usize>() + fed.count();
        let ids: BTreeSet<u64> = sets.iter().flat_map(|c| c.ids()).chain(fed.ids()).collect();
        if all_confirmed.is_subset(&ids) && last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let received: Vec<u64> = sets
        .iter()
        .flat_map(|c| c.received())
        .chain(fed.received())
        .map(|r| r.id)
        .collect();
    let distinct: BTreeSet<u64> = received.iter().copied().collect();
    let report = ChaosReport {
        faults,
        confirmed_set: confirmed_set.len(),
        confirmed_fed: confirmed_fed.len(),
        lost: all_confirmed.difference(&distinct).count(),
        duplicates: received.len() - distinct.len(),
        longest_silent_stall_s: stall.as_secs_f64(),
        rss_kib: (start_usage.0, end_usage.0),
        fds: (start_usage.1, end_usage.1),
        fds_new_kinds: {
            let mut start = start_usage.2.clone();
            end_usage
                .2
                .iter()
                .filter(|k| match start.iter().position(|s| s == *k) {
                    Some(i) => {
                        start.remove(i);
                        false
                    }
                    None => true,
                })
                .cloned()
                .collect()
        },
    };
    for c in sets.iter().chain(std::iter::once(&fed)) {
        c.stop();
    }
    Ok(report)
}
