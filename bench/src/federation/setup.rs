//! What the cases run against: the setgate binary with a link, the federation plugin with an
//! upstream and a policy, and CPU accounting of each process.

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::json;
use setgate_testkit::amqp::connect;
use setgate_testkit::config::{Config, Link, Upstream};
use setgate_testkit::setgate::SetgateOptions;
use setgate_testkit::{wait_until, Node, Setgate};
use std::path::Path;
use std::time::Duration;

/// Starts setgate with one on-confirm link `src -> dst` for `exchange`; waits until it runs.
pub async fn start_setgate(
    bin: &Path,
    src: &str,
    dst: &str,
    exchange: &str,
    prefetch: u32,
) -> anyhow::Result<Setgate> {
    let cfg = Config::new()
        .upstream(
            Upstream::new("src", &[src])
                .prefetch_count(prefetch)
                .ack_mode("on-confirm"),
        )
        .link(Link::new("bench", &["src"], "dst", &[dst], &[exchange]));
    let quiet = SetgateOptions {
        quiet: true,
        ..Default::default()
    };
    let sg = Setgate::start_with(bin, &cfg, quiet).await?;
    wait_until(
        "setgate's link running",
        Duration::from_secs(60),
        || async {
            let v = sg.get_json("/api/links").await.ok()?;
            (v["links"][0]["state"] == "running").then_some(())
        },
    )
    .await?;
    Ok(sg)
}

/// Federates `exchange` from `src` to `dst` with RabbitMQ's plugin (on `dst`): an upstream and
/// a policy, then waits until a probe message crosses.
pub async fn start_plugin(
    src: &Node,
    dst: &Node,
    exchange: &str,
    prefetch: u32,
) -> anyhow::Result<()> {
    let upstream = json!({
        "uri": src.amqp_uri().replace("/%2f", ""),
        "ack-mode": "on-confirm",
        "prefetch-count": prefetch,
        "trust-user-id": false,
    });
    dst.ctl(&[
        "set_parameter",
        "federation-upstream",
        "src",
        &upstream.to_string(),
    ])
    .await?;
    let pattern = format!("^{}$", exchange.replace('.', "\\."));
    let policy = r#"{"federation-upstream-set":"all"}"#;
    dst.ctl(&[
        "set_policy",
        "bench-fed",
        &pattern,
        policy,
        "--apply-to",
        "exchanges",
    ])
    .await?;

    let conn = connect(&dst.amqp_uri()).await?;
    let ch = conn.create_channel().await?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    ch.queue_declare("bench.probe".into(), exclusive, FieldTable::default())
        .await?;
    ch.queue_bind(
        "bench.probe".into(),
        exchange.into(),
        "probe".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await?;
    let pub_conn = connect(&src.amqp_uri()).await?;
    let pub_ch = pub_conn.create_channel().await?;
    wait_until(
        "the federation plugin's link",
        Duration::from_secs(60),
        || {
            let (ch, pub_ch) = (ch.clone(), pub_ch.clone());
            async move {
                let props = BasicProperties::default();
                let opts = BasicPublishOptions::default();
                let _ = pub_ch
                    .basic_publish(exchange.into(), "probe".into(), opts, b"probe", props)
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                ch.basic_get("bench.probe".into(), Default::default())
                    .await
                    .ok()
                    .flatten()
                    .map(|_| ())
            }
        },
    )
    .await?;
    let _ = conn.close(200, "OK".into()).await;
    let _ = pub_conn.close(200, "OK".into()).await;
    Ok(())
}

/// CPU seconds (user + system) used so far by setgate and by each node's process group.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    setgate: f64,
    src: f64,
    dst: f64,
}

impl Cpu {
    /// Now.
    pub fn sample(sg: Option<&Setgate>, src: &Node, dst: &Node) -> Cpu {
        Cpu {
            setgate: sg.and_then(Setgate::pid).map_or(0.0, cpu_of_pid),
            src: src.pid().map_or(0.0, cpu_of_group),
            dst: dst.pid().map_or(0.0, cpu_of_group),
        }
    }

    /// What was used since `self`, as JSON.
    pub fn since(&self, sg: Option<&Setgate>, src: &Node, dst: &Node) -> serde_json::Value {
        let now = Cpu::sample(sg, src, dst);
        let r = |x: f64| (x * 100.0).round() / 100.0;
        json!({"setgate": r(now.setgate - self.setgate), "source_node": r(now.src - self.src), "downstream_node": r(now.dst - self.dst)})
    }
}

/// (process group, CPU seconds) from `/proc/PID/stat`.
fn proc_stat(pid: &str) -> Option<(i64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may contain spaces.
    let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks = 100.0; // USER_HZ
    let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks;
    Some((f.get(2)?.parse().ok()?, cpu))
}

fn cpu_of_pid(pid: i32) -> f64 {
    proc_stat(&pid.to_string()).map_or(0.0, |s| s.1)
}

fn cpu_of_group(pgid: i32) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| proc_stat(e.file_name().to_str()?))
        .filter(|(g, _)| *g == i64::from(pgid))
        .map(|(_, t)| t)
        .sum()
}
