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
//! The link is watched all along (every 0.5 s). It is in a *silent stall* while its flow says
//! `running`, names no reason (its `activity` does not start with `waiting` or `backing off`),
//! forwards nothing, and messages wait: the flow's last look at the upstream queue found some
//! ready, or the center confirmed new messages since the link last moved (those may be held
//! unconfirmed by the flow itself, where the upstream depth does not count them). A flow needs
//! a moment to tell a stall from a gap between messages: it names why it moves nothing within
//! 1.5 s, and the watcher sees it up to one poll later, so [`NAMING_BOUND`] (2 s) of every stall
//! is that bound. What goes beyond it is a link that said `running` and moved nothing for no
//! reason it could name: `longest_silent_stall_s` is the longest such excess (must be 0), and
//! every stall over 1 s is listed with what the flow said at its first and last look.

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
    /// The longest time the link said `running`, named no reason and moved nothing while
    /// messages waited, beyond [`NAMING_BOUND`] (see the module doc), in seconds: must be 0.
    pub longest_silent_stall_s: f64,
    /// Every silent stall of 1 s or more (bound included), longest first, with what the flow
    /// said.
    pub silent_stalls: Vec<Stall>,
    /// setgate's RSS (KiB) after start-up and at the end, each the least over 2 s of samples.
    pub rss_kib: (u64, u64),
    /// Open file descriptors, after start-up and at the end.
    pub fds: (usize, usize),
    /// Threads, after start-up and at the end.
    pub threads: (usize, usize),
    /// What the descriptors open at the end and not at the start point to (a TCP socket by
    /// its peer), to say what a growth is.
    pub fds_new_kinds: Vec<String>,
    /// What the descriptors open at the start and not at the end point to.
    pub fds_gone_kinds: Vec<String>,
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

/// What each open descriptor of a process points to, so two processes (setgate restarted)
/// compare: a TCP socket is named by its peer (`tcp -> set-a:5672 ESTABLISHED`, the broker's
/// name from `names`) or `tcp listen`, other sockets and pipes by their kind, without inodes.
fn fd_kinds(pid: i32, names: &[(u16, String)]) -> Vec<String> {
    let tcp = tcp_sockets(pid);
    let mut kinds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|t| {
                    let t = t.display().to_string();
                    if let Some(inode) =
                        t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']'))
                    {
                        return match tcp.iter().find(|s| s.inode == inode) {
                            Some(s) if s.state == "0A" => "tcp listen".to_string(),
                            Some(s) if names.iter().any(|(port, _)| *port == s.local_port) => {
                                let (port, n) = names
                                    .iter()
                                    .find(|(port, _)| *port == s.local_port)
                                    .unwrap();
                                format!("tcp <- a client of {n}:{port} {}", tcp_state(&s.state))
                            }
                            Some(s) => {
                                let peer = names
                                    .iter()
                                    .find(|(port, _)| *port == s.remote_port)
                                    .map_or_else(
                                        || format!(":{}", s.remote_port),
                                        |(port, n)| format!("{n}:{port}"),
                                    );
                                format!("tcp -> {peer} {}", tcp_state(&s.state))
                            }
                            None => "socket (not tcp)".to_string(),
                        };
                    }
                    match t.split_once(":[") {
                        Some((kind, _)) if kind == "pipe" => kind.to_string(),
                        _ => t,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    kinds.sort();
    kinds
}

/// One line of `/proc/PID/net/tcp{,6}`.
struct TcpSocket {
    inode: String,
    local_port: u16,
    remote_port: u16,
    state: String,
}

/// The TCP sockets of a process's network namespace, IPv4 and IPv6.
fn tcp_sockets(pid: i32) -> Vec<TcpSocket> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    let port = |col: usize| {
                        let hex = cols.get(col)?.rsplit(':').next()?;
                        u16::from_str_radix(hex, 16).ok()
                    };
                    Some(TcpSocket {
                        inode: cols.get(9)?.to_string(),
                        local_port: port(1)?,
                        remote_port: port(2)?,
                        state: cols.get(3)?.to_string(),
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The kernel's TCP state codes (include/net/tcp_states.h) that a client socket shows.
fn tcp_state(code: &str) -> &'static str {
    match code {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0B" => "CLOSING",
        _ => "other",
    }
}

/// The entries of `a` that `b` does not have (as multisets: one match per entry).
fn missing_from(a: &[String], b: &[String]) -> Vec<String> {
    let mut b = b.to_vec();
    a.iter()
        .filter(|k| match b.iter().position(|s| s == *k) {
            Some(i) => {
                b.remove(i);
                false
            }
            None => true,
        })
        .cloned()
        .collect()
}

/// RSS in KiB, open descriptors and threads of a process.
fn usage(pid: i32) -> (u64, usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (field("VmRSS:"), fds, field("Threads:") as usize)
}

/// How long a flow may move nothing before it names why (1.5 s), plus one poll of the watcher.
pub const NAMING_BOUND: Duration = Duration::from_secs(2);

/// A silent stall of the link (see the module doc), with what the flow said through it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stall {
    /// How long the link moved nothing without naming why, in seconds, from the look that last
    /// saw it move.
    pub secs: f64,
    /// What of that went beyond [`NAMING_BOUND`].
    pub beyond_bound_s: f64,
    /// When the link last moved, in seconds on the faults' clock.
    pub at_s: f64,
    /// The flow as `/api/links` showed it at the first and at the last look of the stall.
    pub first: serde_json::Value,
    pub last: serde_json::Value,
}

/// Watches `/api/links` until `stop`; returns every silent stall of 1 s or more, longest
/// first. `confirmed_upstream` is what the center confirmed of the link's exchange.
async fn watch_link(
    admin: std::net::SocketAddr,
    clock: Instant,
    stop: Arc<AtomicBool>,
    confirmed_upstream: Arc<Mutex<BTreeSet<u64>>>,
) -> Vec<Stall> {
    let mut stalls: Vec<Stall> = Vec::new();
    // The last look at which the link was not silently stalled: when it was sent, the flow's
    // forwarded count and the center's confirmed count then.
    let mut moved: Option<(Instant, u64, usize)> = None;
    let mut current: Option<Stall> = None;
    let mut close = |current: &mut Option<Stall>| {
        if let Some(stall) = current.take().filter(|s| s.secs >= 1.0) {
            stalls.push(stall);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent = Instant::now();
        let confirmed = confirmed_upstream.lock().unwrap().len();
        let flow = match crate::http::get(admin, "/api/links")
            .await
            .map(|r| r.json())
        {
            Ok(Ok(v)) => v["links"][0]["flows"].get(0).cloned(),
            _ => None,
        };
        // setgate itself down (or no flow yet) is not a link saying "running".
        let Some(flow) = flow else {
            moved = None;
            close(&mut current);
            continue;
        };
        let forwarded = flow["forwarded"].as_u64().unwrap_or(0);
        let activity = flow["activity"].as_str().unwrap_or("");
        let named = activity.starts_with("waiting") || activity.starts_with("backing off");
        let silent = match moved {
            Some((_, before, confirmed_then)) if flow["state"] == "running" && !named => {
                let ready = flow["queue_depth"].as_u64().unwrap_or(0) > 0;
                forwarded == before && (ready || confirmed > confirmed_then)
            }
            _ => false,
        };
        match (silent, moved) {
            (true, Some((since, _, _))) => {
                // From the sending of the look that saw it move to this answer: never shorter
                // than the stall the flow showed.
                let secs = since.elapsed().as_secs_f64();
                let stall = current.get_or_insert_with(|| Stall {
                    at_s: (since - clock).as_secs_f64(),
                    first: flow.clone(),
                    ..Stall::default()
                });
                stall.secs = secs;
                stall.beyond_bound_s = (secs - NAMING_BOUND.as_secs_f64()).max(0.0);
                stall.last = flow;
            }
            _ => {
                moved = Some((sent, forwarded, confirmed));
                close(&mut current);
            }
        }
    }
    close(&mut current);
    stalls.sort_by(|a, b| b.secs.total_cmp(&a.secs));
    stalls
}

/// setgate's RSS (KiB), open descriptors and what they point to, in the state the run keeps it
/// in: every publisher connected, traffic flowing, the link running, and the link reconnected
/// once by this process.
///
/// That reconnect is there because the first lapin connection a process closes starts a second,
/// process-wide tokio runtime: lapin's I/O thread drops the connection's socket outside any
/// tokio context, so async-compat's `Compat` wrapper (which must enter one to drop a tokio
/// socket) starts its fallback runtime, once, with its thread, epoll, waker and a copy of the
/// signal socket (4 descriptors, and they never grow: reconnects after the first reuse it).
/// Any fault that touches the link does it in the run, so without this a start measured before
/// the first reconnect and an end measured after it differ by those 4, and a setgate restarted
/// late in the run may end without them; both measurements are taken after one.
async fn footprint(
    sg: &Setgate,
    downstream: &Node,
    confirmed: [&Arc<Mutex<BTreeSet<u64>>>; 2],
    names: &[(u16, String)],
) -> anyhow::Result<Footprint> {
    let reconnects = |v: &serde_json::Value| v["links"][0]["flows"][0]["reconnects"].as_u64();
    let before = reconnects(&sg.get_json("/api/links").await?).unwrap_or(0);
    // The downstream broker has no other client than the link.
    downstream
        .ctl(&[
            "close_all_connections",
            "setgate chaos run: one link reconnect",
        ])
        .await?;
    wait_until("the link to reconnect", Duration::from_secs(60), || async {
        let v = sg.get_json("/api/links").await.ok()?;
        (reconnects(&v)? > before && v["links"][0]["flows"][0]["state"] == "running").then_some(())
    })
    .await?;
    let counts = || confirmed.map(|c| c.lock().unwrap().len());
    let [a, b] = counts();
    wait_until(
        "traffic through setgate",
        Duration::from_secs(120),
        || async {
            let [sets, feds] = counts();
            (sets > a + 100 && feds > b + 50).then_some(())
        },
    )
    .await?;
    // Health checks, API calls and connection attempts open sockets and start threads for a
    // moment (lapin runs one thread per connection, and a thread's stack and malloc arena are
    // megabytes of RSS in a debug build): the steady footprint is the fewest descriptors,
    // threads and the least RSS seen over 2 s of samples. A leak stays in every sample.
    let pid = sg.pid().unwrap_or(0);
    let mut seen = usage(pid);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = usage(pid);
        seen = (seen.0.min(now.0), seen.1.min(now.1), seen.2.min(now.2));
    }
    Ok(Footprint {
        rss_kib: seen.0,
        fds: seen.1,
        threads: seen.2,
        fd_kinds: fd_kinds(pid, names),
    })
}

/// What [`footprint`] measures.
struct Footprint {
    rss_kib: u64,
    fds: usize,
    threads: usize,
    fd_kinds: Vec<String>,
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
    // The faults' clock: stalls say when they began on it.
    let clock = Instant::now();
    let watcher = tokio::spawn(watch_link(
        sg.admin,
        clock,
        watch_stop.clone(),
        confirmed_fed.clone(),
    ));
    // setgate's footprint with every publisher connected and the link running, before any
    // fault; the same state is measured again at the end.
    // Who is at each port, so a descriptor says what it is connected to.
    let mut names: Vec<(u16, String)> = nodes
        .iter()
        .zip(NAMES)
        .map(|(n, name)| (n.amqp_addr().port(), name.to_string()))
        .collect();
    names.push((port, "the set listener".into()));
    names.push((sg.admin.port(), "the admin server".into()));
    let start_usage = footprint(&sg, &nodes[3], [&confirmed_set, &confirmed_fed], &names).await?;

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
        let at = clock.elapsed();
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
    let end_usage = footprint(&sg, &nodes[3], [&confirmed_set, &confirmed_fed], &names).await?;
    // The watch ends while traffic still flows: once the publishers stop, the link is idle for
    // real, and its queue depth (read every 5 s) may lag behind.
    watch_stop.store(true, Ordering::Relaxed);
    let stalls = watcher.await?;
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
        longest_silent_stall_s: stalls.first().map_or(0.0, |s| s.beyond_bound_s),
        silent_stalls: stalls,
        rss_kib: (start_usage.rss_kib, end_usage.rss_kib),
        fds: (start_usage.fds, end_usage.fds),
        threads: (start_usage.threads, end_usage.threads),
        fds_new_kinds: missing_from(&end_usage.fd_kinds, &start_usage.fd_kinds),
        fds_gone_kinds: missing_from(&start_usage.fd_kinds, &end_usage.fd_kinds),
    };
    for c in sets.iter().chain(std::iter::once(&fed)) {
        c.stop();
    }
    Ok(report)
}
