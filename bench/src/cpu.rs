//! CPU accounting from `/proc`: the setgate process, and each RabbitMQ node's process group (the
//! Erlang VM and its helpers; a broker plugin's work is counted there).

use serde_json::{json, Map, Value};
use setgate_testkit::{Node, Setgate};
use std::fmt;

/// CPU seconds (user + system) used by setgate (`"setgate"`, when it runs) and by each named
/// node.
#[derive(Debug, Clone, Default)]
pub struct Cpu(Vec<(String, f64)>);

impl Cpu {
    /// What has been used so far.
    pub fn sample(sg: Option<&Setgate>, nodes: &[(&str, &Node)]) -> Cpu {
        let mut v: Vec<(String, f64)> = sg
            .and_then(Setgate::pid)
            .map(|pid| ("setgate".to_string(), cpu_of_pid(pid)))
            .into_iter()
            .collect();
        v.extend(
            nodes
                .iter()
                .map(|(name, n)| (name.to_string(), n.pid().map_or(0.0, cpu_of_group))),
        );
        Cpu(v)
    }

    /// What was used since `self` was sampled (all of it by a process started since).
    pub fn since(&self, sg: Option<&Setgate>, nodes: &[(&str, &Node)]) -> Cpu {
        let before = |name: &str| self.0.iter().find(|(n, _)| n == name).map_or(0.0, |e| e.1);
        let now = Cpu::sample(sg, nodes);
        Cpu(now
            .0
            .into_iter()
            .map(|(name, t)| {
                let t0 = before(&name);
                (name, t - t0)
            })
            .collect())
    }

    /// The same with `secs` more for process `name` (one this module cannot sample).
    pub fn with(mut self, name: &str, secs: f64) -> Cpu {
        self.0.push((name.to_string(), secs));
        self
    }

    /// Microseconds of CPU per message of each process, as JSON.
    pub fn per_message_us(&self, messages: u64) -> Value {
        self.json(|t| (t * 1e6 / messages as f64 * 10.0).round() / 10.0)
    }

    /// Per process, the median over runs of its microseconds of CPU per message, and under
    /// `"all"` the median of all processes together (what moving a message costs the machine,
    /// less noisy than rates on a shared one).
    pub fn median_per_message_us<'a>(
        runs: impl IntoIterator<Item = &'a Cpu>,
        messages: u64,
    ) -> Value {
        let per_msg: Vec<Value> = runs
            .into_iter()
            .map(|c| c.per_message_us(messages))
            .collect();
        let mut out = Map::new();
        if let Some(Value::Object(first)) = per_msg.first() {
            for process in first.keys() {
                let v = per_msg.iter().filter_map(|p| p[process].as_f64()).collect();
                out.insert(process.clone(), json!(crate::measure::median(v)));
            }
        }
        let total = |p: &Value| {
            p.as_object()
                .map_or(0.0, |m| m.values().filter_map(Value::as_f64).sum())
        };
        out.insert(
            "all".into(),
            json!(crate::measure::median(per_msg.iter().map(total).collect())),
        );
        Value::Object(out)
    }

    fn json(&self, f: impl Fn(f64) -> f64) -> Value {
        let m: Map<String, Value> = self
            .0
            .iter()
            .map(|(name, t)| (name.clone(), json!(f(*t))))
            .collect();
        Value::Object(m)
    }
}

/// Seconds, as JSON.
impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.json(|t| (t * 100.0).round() / 100.0))
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

/// CPU seconds (user + system, all threads) used by process `pid` so far.
pub fn process_cpu_seconds(pid: i32) -> f64 {
    cpu_of_pid(pid)
}

/// CPU seconds (user + system, all threads) used so far by process `pid`.
pub fn cpu_of_pid(pid: i32) -> f64 {
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
