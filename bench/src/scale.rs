//! The scale curve: 1,000, 5,000 and 10,000 connections held through setgate (`tcp` and `set`
//! listeners) and through HAProxy, each with a steady low rate of confirmed publishes, in one
//! run on one machine.
//!
//! Per number of connections and path it prints the proxy's CPU per 1,000 messages/s and its
//! memory per connection: the growth of its RSS; the growth of the kernel's unreclaimable slab
//! (where sockets, their files and epoll entries live) over that of the same connections made
//! directly to the broker, i.e. the kernel memory of the proxy's two sockets; and the drop of the
//! machine's `MemAvailable` (which counts everything, kernel socket memory too) over the direct
//! one's. `MemAvailable` moves with everything else the machine runs (a compiler next door swings
//! it by gigabytes); the slab figure is far steadier, so the RSS + slab sum is what the target is
//! checked on, and both are printed.
//!
//! The load is the same total message rate at every level, spread over all connections, so the
//! CPU figure shows what holding more connections costs; a flat curve means idle connections
//! cost nothing. Each proxy is started afresh for each measurement, so its RSS starts from the
//! same place. The generator is a few tasks driving raw AMQP connections (frames from
//! amq-protocol), not a client library per connection.

use crate::cpu::process_cpu_seconds;
use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, channel, confirm, connection, AMQPClass};
use amq_protocol::types::{FieldTable, LongString};
use anyhow::{bail, Context};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::json;
use setgate_amqp::frame::{encode, read_frame, PROTOCOL_HEADER};
use setgate_testkit::config::{Check, Config, Listener, Pool, Routing};
use setgate_testkit::{free_port, Node, NodeOptions, Setgate};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Options of `setgate-bench scale`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Connections held at each step.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 5_000, 10_000])]
    levels: Vec<usize>,
    /// Confirmed publishes per second over all connections (the same at every step).
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 15)]
    window: u64,
    /// Runs; each figure is the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 100)]
    open_concurrency: usize,
    /// The setgate binary (default: next to this one).
    #[arg(long)]
    setgate: Option<PathBuf>,
    /// Environment for the setgate process, e.g. `RUST_LOG=warn` (repeatable).
    #[arg(long = "setgate-env", value_parser = crate::proxy::parse_env)]
    setgate_env: Vec<(String, String)>,
}

/// File descriptors the bench, the broker and the proxies need: 10,000 client connections are
/// 20,000 sockets in a proxy and 10,000 in the broker and in the generator.
const NOFILE: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Direct,
    SetgateTcp,
    SetgateSet,
    Haproxy,
}

impl PathKind {
    fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::SetgateTcp => "setgate-tcp",
            PathKind::SetgateSet => "setgate-set",
            PathKind::Haproxy => "haproxy",
        }
    }
}

/// One measurement of one path at one level.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_per_conn: f64,
    mem_drop_per_conn: f64,
    /// Growth of the kernel's unreclaimable slab (sockets, their files and epoll entries).
    slab_per_conn: f64,
    cpu_pct_per_1000: f64,
    rate: f64,
}

/// Runs the scale curve and prints one JSON line per level and path.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let nofile = raise_nofile(NOFILE);
    // A proxied connection is two descriptors in the proxy; keep a few hundred for the rest.
    let most = (nofile as usize).saturating_sub(300) / 2;
    let levels: Vec<(usize, usize)> = args.levels.iter().map(|&l| (l, l.min(most))).collect();
    for (wanted, held) in &levels {
        if held < wanted {
            eprintln!(
                "RLIMIT_NOFILE is {nofile} (raising it needs CAP_SYS_RESOURCE): {wanted} connections \
                 through a proxy need {} descriptors, measuring {held} instead",
                2 * wanted + 300
            );
        }
    }
    let bin = crate::setgate_binary(args.setgate.clone())?;
    eprintln!("starting a RabbitMQ node (statistics off: 10,000 connections' stats would load the broker)...");
    let node = Node::start_with(NodeOptions {
        management: false,
        extra_config: "collect_statistics = none\n".into(),
        ..Default::default()
    })
    .await?;
    let haproxy_here = crate::haproxy::installed();
    let mut paths = vec![PathKind::Direct, PathKind::SetgateTcp, PathKind::SetgateSet];
    if haproxy_here {
        paths.push(PathKind::Haproxy);
    } else {
        eprintln!("haproxy is not installed: measuring without it (apt-get install haproxy)");
    }
    let publish = Arc::new(publish_frames());
    let mut samples: Vec<(usize, PathKind, Sample)> = Vec::new();
    for run in 0..args.runs {
        for &(_, level) in &levels {
            // Each run starts with another path, so no path is always first.
            paths.rotate_left(1);
            for &path in &paths {
                eprintln!(
                    "run {}/{}: {level} connections through {}",
                    run + 1,
                    args.runs,
                    path.name()
                );
                let s = measure(&args, &bin, &node, path, level, most, &publish).await?;
                eprintln!("  {s:?}");
                samples.push((level, path, s));
            }
        }
    }
    for &(wanted, level) in &levels {
        let of = |path: PathKind, f: fn(&Sample) -> f64| {
            let v: Vec<f64> = samples
                .iter()
                .filter(|(l, p, _)| *l == level && *p == path)
                .map(|(_, _, s)| f(s))
                .collect();
            (!v.is_empty()).then(|| median(v))
        };
        let direct_mem = of(PathKind::Direct, |s| s.mem_drop_per_conn).unwrap_or(0.0);
        let direct_slab = of(PathKind::Direct, |s| s.slab_per_conn).unwrap_or(0.0);
        // The proxy's own memory per connection: its RSS growth plus the kernel slab its two
        // sockets add over a direct connection's.
        let own = |path: PathKind| {
            Some(of(path, |s| s.rss_per_conn)? + of(path, |s| s.slab_per_conn)? - direct_slab)
        };
        let haproxy_cpu = of(PathKind::Haproxy, |s| s.cpu_pct_per_1000);
        let haproxy_own = own(PathKind::Haproxy);
        let haproxy_total = of(PathKind::Haproxy, |s| s.mem_drop_per_conn).map(|m| m - direct_mem);
        for &path in &paths {
            let Some(cpu) = of(path, |s| s.cpu_pct_per_1000) else {
                continue;
            };
            let mem = of(path, |s| s.mem_drop_per_conn).unwrap_or(0.0);
            let mut line = json!({
                "bench": "scale", "path": path.name(), "connections": level, "runs": args.runs,
                "rlimit_nofile": nofile,
                "msgs_per_s": round(of(path, |s| s.rate).unwrap_or(0.0)),
                "memavailable_drop_bytes_per_connection": round(mem),
                "kernel_slab_bytes_per_connection": round(of(path, |s| s.slab_per_conn).unwrap_or(0.0)),
            });
            if wanted != level {
                line["connections_wanted"] = json!(wanted);
            }
            if path != PathKind::Direct {
                let total = mem - direct_mem;
                line["cpu_pct_of_a_core_per_1000_msgs_s"] = json!(round(cpu * 100.0) / 100.0);
                line["rss_bytes_per_connection"] =
                    json!(round(of(path, |s| s.rss_per_conn).unwrap_or(0.0)));
                line["proxy_bytes_per_connection_rss_plus_slab"] =
                    json!(round(own(path).unwrap_or(0.0)));
                line["proxy_bytes_per_connection_memavailable"] = json!(round(total));
                if path != PathKind::Haproxy {
                    if let Some(h) = haproxy_cpu {
                        line["cpu_ratio_to_haproxy"] = json!(round3(cpu / h));
                        line["cpu_target"] = json!("<= 1.2");
                    }
                    if let (Some(h), Some(o)) = (haproxy_own, own(path)) {
                        line["bytes_over_haproxy_rss_plus_slab"] = json!(round(o - h));
                        line["bytes_over_haproxy_target"] = json!("<= 1024");
                    }
                    if let Some(h) = haproxy_total {
                        line["bytes_over_haproxy_memavailable"] = json!(round(total - h));
                    }
                }
            }
            println!("{line}");
        }
    }
    Ok(())
}

/// One path at one level: a fresh proxy, `level` connections opened, memory read, the load run
/// for the window with the proxy's CPU read, all closed.
async fn measure(
    args: &Args,
    bin: &std::path::Path,
    node: &Node,
    path: PathKind,
    level: usize,
    most: usize,
    publish: &Arc<Vec<u8>>,
) -> anyhow::Result<Sample> {
    let proxy = Proxy::start(path, bin, node, most, &args.setgate_env).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss0, mem0, slab0) = (proxy.rss()?, mem_available()?, meminfo("SUnreclaim:")?);
    let conns = open_all(proxy.port, level, args.open_concurrency).await?;
    // Let the broker and the kernel settle (late allocations, deferred frees).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, mem1, slab1) = (proxy.rss()?, mem_available()?, meminfo("SUnreclaim:")?);
    let cpu0 = proxy.cpu();
    let started = Instant::now();
    let acked = drive(conns, args.rate, Duration::from_secs(args.window), publish).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = proxy.cpu() - cpu0;
    drop(proxy);
    wait_broker_idle(node.amqp_port).await;
    let rate = acked as f64 / elapsed;
    Ok(Sample {
        rss_per_conn: (rss1 - rss0) / level as f64,
        mem_drop_per_conn: (mem0 - mem1) / level as f64,
        slab_per_conn: (slab1 - slab0) / level as f64,
        // Share of one core, in percent, per 1,000 messages/s.
        cpu_pct_per_1000: cpu / elapsed * 100.0 / (rate / 1000.0),
        rate,
    })
}

/// What a measurement goes through: nothing (direct), a setgate listener, or HAProxy.
struct Proxy {
    port: u16,
    pid: Option<i32>,
    _setgate: Option<Setgate>,
    _haproxy: Option<crate::haproxy::Haproxy>,
}

impl Proxy {
    async fn start(
        path: PathKind,
        bin: &std::path::Path,
        node: &Node,
        most: usize,
        env: &[(String, String)],
    ) -> anyhow::Result<Proxy> {
        match path {
            PathKind::Direct => Ok(Proxy {
                port: node.amqp_port,
                pid: None,
                _setgate: None,
                _haproxy: None,
            }),
            PathKind::SetgateTcp | PathKind::SetgateSet => {
                let cfg = Config::new()
                    .listener(Listener::tcp("tcp", "rabbit").maxconn(30_000))
                    // A broker flooded with new connections takes seconds to send its Start:
                    // with the defaults (connect_timeout 2s) a set listener would refuse some of
                    // the flood, where tcp mode and HAProxy (whose connect is the TCP one) wait.
                    .listener(
                        Listener::set("set")
                            .maxconn(30_000)
                            .handshake_timeout("60s"),
                    )
                    .pool(
                        Pool::new("rabbit")
                            .with("connect_timeout", "30s")
                            .check(Check::amqp().inter("2s"))
                            .server("n", node.amqp_addr()),
                    )
                    .routing(Routing::new("rabbit"));
                let opts = setgate_testkit::setgate::SetgateOptions {
                    env: env.to_vec(),
                    quiet: true,
                    ..Default::default()
                };
                let sg = Setgate::start_with(bin, &cfg, opts).await?;
                sg.wait_ready().await?;
                let port = sg
                    .port(if path == PathKind::SetgateTcp {
                        "tcp"
                    } else {
                        "set"
                    })
                    .await?;
                Ok(Proxy {
                    port,
                    pid: sg.pid(),
                    _setgate: Some(sg),
                    _haproxy: None,
                })
            }
            PathKind::Haproxy => {
                let port = free_port();
                // HAProxy needs 2 * maxconn descriptors (and more) and will not start without them.
                let maxconn = most + 50;
                let cfg = format!(
                    "global\n  maxconn {maxconn}\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n\
                     frontend amqp\n  bind 127.0.0.1:{port}\n  maxconn {maxconn}\n  default_backend rabbit\n\
                     backend rabbit\n  server n 127.0.0.1:{} check\n",
                    node.amqp_port
                );
                let haproxy =
                    crate::haproxy::Haproxy::start("bench-scale-haproxy", &cfg, port).await?;
                Ok(Proxy {
                    port,
                    pid: Some(haproxy.pid()),
                    _setgate: None,
                    _haproxy: Some(haproxy),
                })
            }
        }
    }

    fn rss(&self) -> anyhow::Result<f64> {
        self.pid.map_or(Ok(0.0), rss)
    }

    fn cpu(&self) -> f64 {
        self.pid.map_or(0.0, process_cpu_seconds)
    }
}

/// An AMQP connection with channel 1 open in confirm mode, split for the writer and the reader.
struct Conn {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
}

fn method(channel: u16, class: AMQPClass) -> Vec<u8> {
    encode(&AMQPFrame::Method(channel, class))
}

/// Opens one connection as guest, without heartbeats (so the only traffic is the messages).
async fn open_one(port: u16) -> anyhow::Result<Conn> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(512);
    s.write_all(PROTOCOL_HEADER).await?;
    expect(&mut s, &mut buf, "Connection.Start", |c| {
        matches!(c, AMQPClass::Connection(connection::AMQPMethod::Start(_)))
    })
    .await?;
    s.write_all(&method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: LongString::from(b"\0guest\0guest".to_vec()),
            locale: "en_US".into(),
        })),
    ))
    .await?;
    let tune = expect(&mut s, &mut buf, "Connection.Tune", |c| {
        matches!(c, AMQPClass::Connection(connection::AMQPMethod::Tune(_)))
    })
    .await?;
    let AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) = tune else {
        unreachable!()
    };
    let mut out = method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: tune.channel_max,
            frame_max: tune.frame_max,
            heartbeat: 0,
        })),
    );
    out.extend(method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    ));
    out.extend(method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    ));
    out.extend(method(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    ));
    s.write_all(&out).await?;
    for (what, ok) in [
        (
            "Connection.OpenOk",
            (|c: &AMQPClass| matches!(c, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))))
                as fn(&AMQPClass) -> bool,
        ),
        ("Channel.OpenOk", |c| {
            matches!(c, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))
        }),
        ("Confirm.SelectOk", |c| {
            matches!(c, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)))
        }),
    ] {
        expect(&mut s, &mut buf, what, ok).await?;
    }
    let (reader, writer) = s.into_split();
    Ok(Conn { reader, writer })
}

async fn expect(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    what: &str,
    ok: impl Fn(&AMQPClass) -> bool,
) -> anyhow::Result<AMQPClass> {
    match read_frame(s, buf, 1 << 20).await? {
        AMQPFrame::Method(_, c) if ok(&c) => Ok(c),
        AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => bail!(
            "expected {what}, got Connection.Close {} {}",
            c.reply_code,
            c.reply_text
        ),
        other => bail!(
            "expected {what}, got {}",
            setgate_amqp::frame::describe(&other)
        ),
    }
}

/// Opens `n` connections, `concurrency` at a time.
async fn open_all(port: u16, n: usize, concurrency: usize) -> anyhow::Result<Vec<Conn>> {
    let started = Instant::now();
    let conns: Vec<anyhow::Result<Conn>> = futures_util::stream::iter(0..n)
        .map(|_| async move {
            tokio::time::timeout(Duration::from_secs(60), open_one(port))
                .await
                .context("a connection took over 60 s to open")?
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let conns = conns.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!("  opened {n} in {:.1} s", started.elapsed().as_secs_f64());
    Ok(conns)
}

/// Basic.Publish of 64 bytes to the default exchange with a routing key no queue has: the broker
/// confirms it at once and keeps nothing, so the run measures the path, not the queue.
fn publish_frames() -> Vec<u8> {
    let body = vec![b'x'; 64];
    let mut out = method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "scale-nowhere".into(),
            mandatory: false,
            immediate: false,
        })),
    );
    out.extend(encode(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: basic::AMQPProperties::default(),
        },
    )));
    out.extend(encode(&AMQPFrame::Body(1, body)));
    out
}

/// Tasks that share the connections out: each writer sends, each reader counts confirms.
const WORKERS: usize = 4;

/// Publishes `rate` messages/s in all for `window`, each connection in turn (every connection
/// once per `n / rate` seconds, evenly phased); returns the confirms received, counting those
/// that arrive up to 5 s after the window. Closes the connections.
async fn drive(
    conns: Vec<Conn>,
    rate: f64,
    window: Duration,
    publish: &Arc<Vec<u8>>,
) -> anyhow::Result<u64> {
    let n = conns.len();
    let period = Duration::from_secs_f64(n as f64 / rate);
    let acked = Arc::new(AtomicU64::new(0));
    // Per worker: its connections' write halves (with their index, for the phase) and read halves.
    let mut writers: Vec<Vec<(usize, OwnedWriteHalf)>> = (0..WORKERS).map(|_| Vec::new()).collect();
    let mut readers: Vec<Vec<OwnedReadHalf>> = (0..WORKERS).map(|_| Vec::new()).collect();
    for (i, c) in conns.into_iter().enumerate() {
        writers[i % WORKERS].push((i, c.writer));
        readers[i % WORKERS].push(c.reader);
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let end = start + window;
    let mut reader_tasks = Vec::new();
    for rs in readers {
        let acked = acked.clone();
        reader_tasks.push(tokio::spawn(async move {
            let mut all: FuturesUnordered<_> = rs
                .into_iter()
                .map(|r| count_acks(r, acked.clone()))
                .collect();
            while all.next().await.is_some() {}
        }));
    }
    let mut writer_tasks = Vec::new();
    for ws in writers {
        let publish = publish.clone();
        writer_tasks.push(tokio::spawn(async move {
            let mut ws = ws;
            let mut sent = 0u64;
            let mut round = 0u32;
            'outer: loop {
                for (i, w) in ws.iter_mut() {
                    let at = start + period * round + period.mul_f64(*i as f64 / n as f64);
                    if at >= end {
                        break 'outer;
                    }
                    tokio::time::sleep_until(at).await;
                    w.write_all(&publish).await?;
                    sent += 1;
                }
                round += 1;
            }
            anyhow::Ok((sent, ws))
        }));
    }
    let mut sent = 0;
    let mut kept = Vec::new();
    for t in writer_tasks {
        let (s, ws) = t.await??;
        sent += s;
        kept.push(ws);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while acked.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = acked.load(Ordering::Relaxed);
    for t in &reader_tasks {
        t.abort();
    }
    // Close each connection with Connection.Close, so the broker logs an orderly close.
    let close = setgate_amqp::frame::close_frame(200, "bench done");
    for ws in kept.iter_mut() {
        for (_, w) in ws.iter_mut() {
            let _ = w.write_all(&close).await;
        }
    }
    drop(kept);
    anyhow::ensure!(
        got >= sent * 99 / 100,
        "only {got} of {sent} publishes were confirmed within 5 s of the window"
    );
    Ok(got)
}

/// Counts Basic.Ack confirms (a `multiple` one counts each tag it covers) until the connection
/// ends.
async fn count_acks(mut r: OwnedReadHalf, acked: Arc<AtomicU64>) {
    let mut buf = Vec::with_capacity(64);
    let mut last = 0u64;
    while let Ok(f) = read_frame(&mut r, &mut buf, 1 << 20).await {
        if let AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) = f {
            let n = if a.multiple { a.delivery_tag - last } else { 1 };
            last = last.max(a.delivery_tag);
            acked.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Waits (up to 60 s) until the broker's AMQP port has no established connection left, so the
/// next measurement starts from the same memory.
async fn wait_broker_idle(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while established_to(port) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Established TCP connections whose local port is `port` (the broker's side), from /proc.
fn established_to(port: u16) -> usize {
    let want = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|t| {
            t.lines()
                .skip(1)
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 3 && format!("{} ", f[1]).ends_with(&want) && f[3] == "01"
                })
                .count()
        })
        .sum()
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn mem_available() -> anyhow::Result<f64> {
    meminfo("MemAvailable:")
}

/// A field of /proc/meminfo, in bytes.
fn meminfo(field: &str) -> anyhow::Result<f64> {
    kb_field(&std::fs::read_to_string("/proc/meminfo")?, field)
}

/// Resident set size of a process, in bytes.
fn rss(pid: i32) -> anyhow::Result<f64> {
    kb_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status"))?,
        "VmRSS:",
    )
}

fn kb_field(text: &str, field: &str) -> anyhow::Result<f64> {
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .with_context(|| format!("no {field}"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024.0)
}

/// Raises RLIMIT_NOFILE (soft and, as root, hard) to `want`; children inherit it. Returns the
/// soft limit now in force.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct we pass.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let raised = libc::rlimit {
            rlim_cur: want.max(lim.rlim_cur),
            rlim_max: want.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            // Not root: as far as the hard limit allows.
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
