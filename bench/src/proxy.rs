//! The proxy benchmark: the same AMQP workloads directly to a broker, through setgate (`tcp` and
//! `set` listeners) and through HAProxy (when installed), in one run on one machine.
//!
//! Cases (each path is measured `--runs` times, interleaved, and the median is reported):
//! - `publish_confirms`: messages/s published with publisher confirms (a window of in-flight
//!   publishes, like a real batch producer), transient 128-byte messages to a classic queue, so
//!   the broker's disk does not drown out the proxy.
//! - `consume_acks`: messages/s consumed from a pre-filled queue with a prefetch window and
//!   manual acks (`multiple` every 100), as a busy worker does.
//! - `end_to_end_latency`: one message at a time from a publisher to a consumer, each on its own
//!   connection through the path; p50 and p99.
//! - `connection_setup`: full AMQP connections opened and closed one after the other: rate and
//!   p50 handshake time.
//! - `idle_rss`: resident memory of the proxy per idle proxied TCP connection, with `--idle`
//!   connections held open to a sink that accepts and stays silent (memory is the proxy's alone;
//!   the broker is not involved).
//!
//! For `publish_confirms` and `publish_and_consume` each proxy's CPU time (user + system, all its
//! threads, from `/proc`) is also printed per message (`..._proxy_cpu_us_per_msg`): what the edge
//! spends, which on a machine shared with the brokers is what they do not get.
//!
//! With `--tls` every client speaks TLS: setgate's listeners and HAProxy's frontend terminate it
//! (plain TCP on to the broker, as at an edge that offloads TLS), and `direct` is the broker's own
//! TLS listener. The idle case stays plain TCP.

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::json;
use setgate_testkit::config::{Check, Config, Listener, Pool, Routing};
use setgate_testkit::{amqp, free_port, Node, Setgate};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options of `setgate-bench proxy`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Runs per case and path; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Messages per throughput run.
    #[arg(long, default_value_t = 50_000)]
    messages: usize,
    /// Publishes in flight (unconfirmed) at once.
    #[arg(long, default_value_t = 500)]
    window: usize,
    /// Round trips per latency run.
    #[arg(long, default_value_t = 2_000)]
    round_trips: usize,
    /// Connections per setup-rate run.
    #[arg(long, default_value_t = 200)]
    connections: usize,
    /// Idle connections for the memory case.
    #[arg(long, default_value_t = 5_000)]
    idle: usize,
    /// The setgate binary (default: next to this one, i.e. target/release/setgate).
    #[arg(long)]
    setgate: Option<PathBuf>,
    /// Which cases to run: throughput, latency, setup, idle (default: all).
    #[arg(long, value_delimiter = ',', default_values_t = ["throughput".to_string(), "latency".to_string(), "setup".to_string(), "idle".to_string()])]
    cases: Vec<String>,
    /// Clients speak TLS to every path (see the module's documentation).
    #[arg(long)]
    tls: bool,
    /// Environment for the setgate process, e.g. `TOKIO_WORKER_THREADS=1` (repeatable).
    #[arg(long = "setgate-env", value_parser = parse_env)]
    setgate_env: Vec<(String, String)>,
}

pub(crate) fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

struct Path {
    name: &'static str,
    port: u16,
}

/// How a client reaches a path: plain AMQP, or TLS trusting the bench's CA.
struct Client {
    /// The CA's PEM with `--tls`.
    ca: Option<String>,
}

impl Client {
    fn uri(&self, port: u16) -> String {
        let scheme = if self.ca.is_some() { "amqps" } else { "amqp" };
        format!("{scheme}://guest:guest@127.0.0.1:{port}/%2f")
    }

    async fn connect(&self, port: u16) -> anyhow::Result<lapin::Connection> {
        match &self.ca {
            Some(ca) => amqp::connect_tls(&self.uri(port), ca, None).await,
            None => amqp::connect(&self.uri(port)).await,
        }
    }
}

/// Runs every case and prints one JSON line per case and path.
pub async fn run(args: Args) -> anyhow::Result<()> {
    setgate_testkit::raise_fd_limit();
    let bin = crate::setgate_binary(args.setgate.clone())?;
    let pki = if args.tls {
        let dir = setgate_testkit::unique_dir("bench-proxy-tls");
        Some(setgate_testkit::pki::Pki::generate(&dir)?)
    } else {
        None
    };
    let broker_tls_port = free_port();
    eprintln!("starting a RabbitMQ node...");
    let node = Node::start_with(setgate_testkit::node::NodeOptions {
        extra_config: pki
            .as_ref()
            .map(|p| p.rabbitmq_listener(broker_tls_port, false))
            .unwrap_or_default(),
        ..Default::default()
    })
    .await?;
    let sink = Sink::start().await?;
    let with_tls = |l: Listener| match &pki {
        Some(p) => l.tls(&p.server_cert, &p.server_key),
        None => l,
    };
    let cfg = Config::new()
        .listener(with_tls(Listener::tcp("tcp", "rabbit")))
        .listener(with_tls(Listener::set("set")))
        .listener(Listener::tcp("idle", "sink"))
        .pool(
            Pool::new("rabbit")
                .check(Check::amqp().inter("2s"))
                .server("n", node.amqp_addr()),
        )
        .pool(
            Pool::new("sink")
                .check(Check::tcp().inter("2s"))
                .server("sink", format!("127.0.0.1:{}", sink.port)),
        )
        .routing(Routing::new("rabbit"));
    let opts = setgate_testkit::setgate::SetgateOptions {
        env: args.setgate_env.clone(),
        quiet: true,
        ..Default::default()
    };
    let sg = Setgate::start_with(&bin, &cfg, opts).await?;
    sg.wait_ready().await?;
    let (tcp, set, idle_port) = (
        sg.port("tcp").await?,
        sg.port("set").await?,
        sg.port("idle").await?,
    );
    let haproxy = Haproxy::start(node.amqp_port, sink.port, pki.as_ref()).await?;
    let client = Client {
        ca: match &pki {
            Some(p) => Some(std::fs::read_to_string(&p.ca)?),
            None => None,
        },
    };
    let mut paths = vec![
        Path {
            name: "direct",
            port: if pki.is_some() {
                broker_tls_port
            } else {
                node.amqp_port
            },
        },
        Path {
            name: "setgate-tcp",
            port: tcp,
        },
        Path {
            name: "setgate-set",
            port: set,
        },
    ];
    if let Some(h) = &haproxy {
        paths.push(Path {
            name: "haproxy",
            port: h.amqp_port,
        });
    } else {
        eprintln!("haproxy is not installed: measuring without it (apt-get install haproxy)");
    }

    for c in &args.cases {
        anyhow::ensure!(
            ["throughput", "latency", "setup", "idle"].contains(&c.as_str()),
            "--cases: unknown case {c:?}; use throughput, latency, setup or idle"
        );
    }
    let case = |c: &str| args.cases.iter().any(|x| x == c);
    let setgate_pid = sg.pid().context("setgate pid")?;
    let haproxy_pid = haproxy.as_ref().map(Haproxy::pid);
    let proxy_pid = |path: &str| match path {
        "setgate-tcp" | "setgate-set" => Some(setgate_pid),
        "haproxy" => haproxy_pid,
        _ => None,
    };
    // Warm up every path (broker JIT, connection caches) before measuring.
    for p in &paths {
        publish_confirms(&client, p.port, 2_000, args.window).await?;
    }

    let mut results: Vec<(String, &'static str, Vec<f64>)> = Vec::new();
    let mut record = |case: &str, path: &'static str, v: f64| match results
        .iter_mut()
        .find(|r| r.0 == case && r.1 == path)
    {
        Some(r) => r.2.push(v),
        None => results.push((case.to_string(), path, vec![v])),
    };
    for run in 0..args.runs {
        eprintln!("run {}/{}", run + 1, args.runs);
        // Each run starts with another path, so no path is always measured first or last.
        paths.rotate_left(1);
        for p in paths.iter().filter(|_| case("throughput")) {
            let cpu = ProcessCpu::start(proxy_pid(p.name));
            let rate = publish_confirms(&client, p.port, args.messages, args.window).await?;
            record("publish_confirms_msgs_per_s", p.name, rate);
            if let Some(us) = cpu.us_per(args.messages) {
                record("publish_confirms_proxy_cpu_us_per_msg", p.name, us);
            }
        }
        for p in paths.iter().filter(|_| case("throughput")) {
            let rate = consume_acks(&client, p.port, args.messages).await?;
            record("consume_acks_msgs_per_s", p.name, rate);
        }
        for p in paths.iter().filter(|_| case("throughput")) {
            let cpu = ProcessCpu::start(proxy_pid(p.name));
            let rate = publish_and_consume(&client, p.port, args.messages, args.window).await?;
            record("publish_and_consume_msgs_per_s", p.name, rate);
            // Each message crosses the proxy twice: in from the publisher, out to the consumer.
            if let Some(us) = cpu.us_per(args.messages) {
                record("publish_and_consume_proxy_cpu_us_per_msg", p.name, us);
            }
        }
        for p in paths.iter().filter(|_| case("latency")) {
            let (p50, p99) = latency(&client, p.port, args.round_trips).await?;
            record("end_to_end_latency_p50_us", p.name, p50);
            record("end_to_end_latency_p99_us", p.name, p99);
        }
        for p in paths.iter().filter(|_| case("setup")) {
            let (rate, p50) = setup(&client, p.port, args.connections).await?;
            record("connection_setup_per_s", p.name, rate);
            record("handshake_p50_us", p.name, p50);
        }
    }
    for (case, path, runs) in &results {
        let direct = results
            .iter()
            .find(|r| r.0 == *case && r.1 == "direct")
            .map(|r| median(&r.2));
        let haproxy = results
            .iter()
            .find(|r| r.0 == *case && r.1 == "haproxy")
            .map(|r| median(&r.2));
        let m = median(runs);
        let mut line = json!({
            "bench": "proxy", "case": case, "path": path, "tls": args.tls, "median": round(m), "runs": runs.iter().map(|v| round(*v)).collect::<Vec<_>>(),
        });
        if let Some(d) = direct {
            line["ratio_to_direct"] = json!(round3(m / d));
            if case.contains("latency") || case.contains("handshake") {
                line["added_us_over_direct"] = json!(round(m - d));
            }
        }
        if let Some(h) = haproxy {
            line["ratio_to_haproxy"] = json!(round3(m / h));
        }
        println!("{line}");
    }

    // Memory: idle proxied connections through setgate and through HAProxy.
    let mut rss_paths = vec![("setgate-tcp", setgate_pid, idle_port)];
    if let Some(h) = &haproxy {
        rss_paths.push(("haproxy", h.pid(), h.sink_port));
    }
    if !case("idle") {
        rss_paths.clear();
    }
    for (name, pid, port) in rss_paths {
        let per_conn = idle_rss(pid, port, args.idle, &sink).await?;
        println!(
            "{}",
            json!({"bench": "proxy", "case": "idle_rss_bytes_per_connection", "path": name, "connections": args.idle,
                   "median": round(per_conn), "target_bytes": 4096})
        );
    }
    Ok(())
}

/// The CPU a proxy process uses over one measurement (its setup included: a queue declared and
/// purged, two connections opened and closed, which a 50,000-message run dwarfs).
struct ProcessCpu(Option<(i32, f64)>);

impl ProcessCpu {
    fn start(pid: Option<i32>) -> ProcessCpu {
        ProcessCpu(pid.map(|p| (p, crate::cpu::cpu_of_pid(p))))
    }

    /// Microseconds of the process's CPU per message since `start`; `None` for `direct`.
    fn us_per(&self, messages: usize) -> Option<f64> {
        let (pid, before) = self.0?;
        Some((crate::cpu::cpu_of_pid(pid) - before) * 1e6 / messages as f64)
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[s.len() / 2]
}
fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A fresh (purged) queue called `name` on a new connection, with a confirm channel.
async fn fresh_queue(
    client: &Client,
    port: u16,
    name: &str,
) -> anyhow::Result<(lapin::Connection, lapin::Channel)> {
    let conn = client.connect(port).await?;
    let ch = amqp::confirm_channel(&conn).await?;
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_purge(name.into(), QueuePurgeOptions::default())
        .await?;
    Ok((conn, ch))
}

/// Publishes `n` 128-byte messages to `queue`, keeping `window` unconfirmed at most; fails on a
/// nack.
async fn publish_window(
    ch: &lapin::Channel,
    queue: &str,
    n: usize,
    window: usize,
) -> anyhow::Result<()> {
    let body = [b'x'; 128];
    let mut inflight = VecDeque::with_capacity(window);
    for _ in 0..n {
        if inflight.len() >= window {
            let c: lapin::PublisherConfirm = inflight.pop_front().unwrap();
            anyhow::ensure!(c.await?.is_ack(), "nack");
        }
        let c = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await?;
        inflight.push_back(c);
    }
    for c in inflight {
        anyhow::ensure!(c.await?.is_ack(), "nack");
    }
    Ok(())
}

/// Publishes `n` messages keeping `window` unconfirmed; returns confirmed messages per second.
async fn publish_confirms(
    client: &Client,
    port: u16,
    n: usize,
    window: usize,
) -> anyhow::Result<f64> {
    let q = "bench-throughput";
    let (conn, ch) = fresh_queue(client, port, q).await?;
    let start = Instant::now();
    publish_window(&ch, q, n, window).await?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    ch.queue_purge(q.into(), QueuePurgeOptions::default())
        .await?;
    conn.close(200, "done".into()).await?;
    Ok(rate)
}

/// Fills a queue with `n` messages (not timed), then consumes them through `port` with a
/// prefetch of 1000 and an ack (`multiple`) every 100 messages; returns messages per second.
async fn consume_acks(client: &Client, port: u16, n: usize) -> anyhow::Result<f64> {
    let q = "bench-consume";
    let (conn, ch) = fresh_queue(client, port, q).await?;
    publish_window(&ch, q, n, 1000).await?;
    let cch = conn.create_channel().await?;
    cch.basic_qos(1000, lapin::options::BasicQosOptions::default())
        .await?;
    let start = Instant::now();
    let mut consumer = cch
        .basic_consume(
            q.into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    take_acking(&mut consumer, n).await?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    conn.close(200, "done".into()).await?;
    Ok(rate)
}

/// Takes `n` deliveries from `consumer`, acking (`multiple`) every 100th and the last.
async fn take_acking(consumer: &mut lapin::Consumer, n: usize) -> anyhow::Result<()> {
    for i in 1..=n {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await?
            .context("consumer ended")??;
        if i % 100 == 0 || i == n {
            d.ack(lapin::options::BasicAckOptions { multiple: true })
                .await?;
        }
    }
    Ok(())
}

/// A publisher (confirms, `window` in flight) and a consumer (prefetch 1000, an ack every 100) on
/// two connections at once, through `port`: the way most applications use a broker. Returns
/// messages per second from the first publish to the last delivery.
async fn publish_and_consume(
    client: &Client,
    port: u16,
    n: usize,
    window: usize,
) -> anyhow::Result<f64> {
    let q = "bench-pubsub";
    let (pconn, pch) = fresh_queue(client, port, q).await?;
    let cconn = client.connect(port).await?;
    let cch = cconn.create_channel().await?;
    cch.basic_qos(1000, lapin::options::BasicQosOptions::default())
        .await?;
    let mut consumer = cch
        .basic_consume(
            q.into(),
            "bench-pubsub".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let start = Instant::now();
    tokio::try_join!(
        publish_window(&pch, q, n, window),
        take_acking(&mut consumer, n)
    )?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    cconn.close(200, "done".into()).await?;
    pconn.close(200, "done".into()).await?;
    Ok(rate)
}

/// One message at a time, publisher and consumer on separate connections; returns (p50, p99) µs.
async fn latency(client: &Client, port: u16, n: usize) -> anyhow::Result<(f64, f64)> {
    let (pc, cc) = (client.connect(port).await?, client.connect(port).await?);
    let (pch, cch) = (pc.create_channel().await?, cc.create_channel().await?);
    let q = "bench-latency";
    cch.queue_declare(
        q.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    cch.queue_purge(q.into(), QueuePurgeOptions::default())
        .await?;
    let mut consumer = cch
        .basic_consume(
            q.into(),
            "lat".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        pch.basic_publish(
            "".into(),
            q.into(),
            BasicPublishOptions::default(),
            b"ping",
            BasicProperties::default(),
        )
        .await?;
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await?
            .context("consumer ended")??;
        drop(d);
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    pc.close(200, "done".into()).await?;
    cc.close(200, "done".into()).await?;
    Ok((samples[n / 2], samples[n * 99 / 100]))
}

/// Opens and closes `n` connections in turn; returns (connections/s, p50 handshake µs).
async fn setup(client: &Client, port: u16, n: usize) -> anyhow::Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let c = client.connect(port).await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        c.close(200, "done".into()).await?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok((rate, samples[n / 2]))
}

/// Resident set size of a process, in bytes.
fn rss(pid: i32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024.0)
}

/// Opens `n` idle connections through `port` to the sink; returns the proxy's RSS growth per
/// connection (median over three rounds of open, measure, close).
async fn idle_rss(pid: i32, port: u16, n: usize, sink: &Sink) -> anyhow::Result<f64> {
    let mut per = Vec::new();
    for _ in 0..3 {
        let before = rss(pid)?;
        let base = sink.accepted();
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while sink.accepted() < base + n {
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {n} reached the sink",
                sink.accepted() - base
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss(pid)?;
        per.push((after - before) / n as f64);
        drop(conns);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(median(&per))
}

/// A TCP server that accepts and holds connections without a word.
struct Sink {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Sink {
    async fn start() -> anyhow::Result<Sink> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = l.local_addr()?.port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Hold it silently until the proxy closes it.
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while matches!(tokio::io::AsyncReadExt::read(&mut s, &mut buf).await, Ok(n) if n > 0)
                    {
                    }
                });
            }
        });
        Ok(Sink { port, accepted })
    }
    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// HAProxy 2.x in tcp mode in front of the same broker (and the sink), as people run it today;
/// with a PKI its AMQP frontend terminates TLS (`bind ... ssl crt`).
struct Haproxy {
    process: crate::haproxy::Haproxy,
    amqp_port: u16,
    sink_port: u16,
}

impl Haproxy {
    async fn start(
        broker: u16,
        sink: u16,
        pki: Option<&setgate_testkit::pki::Pki>,
    ) -> anyhow::Result<Option<Haproxy>> {
        if !crate::haproxy::installed() {
            return Ok(None);
        }
        let (amqp_port, sink_port) = (free_port(), free_port());
        // HAProxy takes the certificate and its key in one file.
        let ssl = match pki {
            Some(p) => {
                let crt = p.server_cert.with_extension("haproxy.pem");
                let pem = std::fs::read_to_string(&p.server_cert)?
                    + &std::fs::read_to_string(&p.server_key)?;
                std::fs::write(&crt, pem)?;
                format!(" ssl crt {}", crt.display())
            }
            None => String::new(),
        };
        let cfg = format!(
            "global\n  maxconn 9000\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n\
             frontend amqp\n  bind 127.0.0.1:{amqp_port}{ssl}\n  default_backend rabbit\n\
             backend rabbit\n  server n 127.0.0.1:{broker} check\n\
             frontend idle\n  bind 127.0.0.1:{sink_port}\n  default_backend sink\n\
             backend sink\n  server s 127.0.0.1:{sink}\n"
        );
        let process = crate::haproxy::Haproxy::start("bench-haproxy", &cfg, amqp_port).await?;
        Ok(Some(Haproxy {
            process,
            amqp_port,
            sink_port,
        }))
    }
    fn pid(&self) -> i32 {
        self.process.pid()
    }
}
