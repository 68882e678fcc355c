//! What `GET /api/links` shows: per link and per flow, the state, the URIs in use (masked), the
//! last error with the next attempt time, and counters.
//!
//! A flow writes its state at transitions only (a `Mutex` taken rarely and never across an
//! await) and its counters on every message (atomics); the admin server reads both.

use crate::plan::UnitKind;
use crate::shovel::DeleteAfter;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The life cycle of a flow, and of a link as the worst of its flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum State {
    Running,
    /// A shovel with `delete_after` moved what it had to and stopped.
    Completed,
    Starting,
    Reconnecting,
    /// Stopped through the API; `resume` starts it again.
    Paused,
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Reconnecting => "reconnecting",
            State::Stopped => "stopped",
            State::Completed => "completed",
            State::Paused => "paused",
        }
    }
}

/// Counters shown in the status (the same events also go to `/metrics`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub redelivered: AtomicU64,
    pub rejected: AtomicU64,
    pub reconnects: AtomicU64,
    /// Pauses after the downstream refused publishes (nack or return).
    pub backoffs: AtomicU64,
    /// Ready messages in the upstream queue at the last look; `u64::MAX` before the first.
    pub queue_depth: AtomicU64,
    /// Routed destinations: messages with no key (sent to the default cluster).
    pub unkeyed: AtomicU64,
    /// `delete_after`: how many messages to move (`u64::MAX` until known).
    pub limit: AtomicU64,
}

/// One cluster of a routed destination, as the status shows it.
#[derive(Debug)]
pub(crate) struct SetStats {
    pub forwarded: AtomicU64,
    /// Parked in the hold queue because the cluster was down.
    pub held: AtomicU64,
    /// Sent to this cluster's failover SET instead.
    pub failed_over: AtomicU64,
    /// Messages in the cluster's hold queue at the last look (`u64::MAX` before the first).
    pub hold_depth: AtomicU64,
    down: Mutex<Option<String>>,
}

impl Default for SetStats {
    fn default() -> Self {
        SetStats {
            forwarded: AtomicU64::new(0),
            held: AtomicU64::new(0),
            failed_over: AtomicU64::new(0),
            hold_depth: AtomicU64::new(u64::MAX),
            down: Mutex::new(None),
        }
    }
}

impl SetStats {
    pub fn set_down(&self, why: String) {
        *self.down.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    pub fn set_up(&self) {
        *self.down.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Why the cluster is down, if it is.
    pub fn down(&self) -> Option<String> {
        self.down.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Debug)]
struct FlowState {
    state: State,
    since: SystemTime,
    upstream_uri: Option<String>,
    downstream_uri: Option<String>,
    upstream_cluster: Option<String>,
    downstream_cluster: Option<String>,
    last_error: Option<String>,
    last_error_at: Option<SystemTime>,
    next_attempt: Option<SystemTime>,
    /// While running: what the flow is doing (forwarding, idle and why, backing off, blocked).
    activity: Option<String>,
}

/// The status of one (upstream, exchange) flow.
#[derive(Debug)]
pub(crate) struct FlowStatus {
    pub upstream: String,
    pub exchange: String,
    pub queue: String,
    pub counters: Counters,
    /// Routed destinations: each cluster's counters, by name (the default first).
    pub sets: Vec<(String, Arc<SetStats>)>,
    state: Mutex<FlowState>,
}

/// Where a running flow is connected.
#[derive(Debug, Clone)]
pub(crate) struct Connected {
    pub upstream_uri: String,
    pub downstream_uri: String,
    pub upstream_cluster: String,
    pub downstream_cluster: String,
}

impl FlowStatus {
    #[cfg(test)]
    pub fn new(upstream: &str, exchange: &str, queue: &str) -> FlowStatus {
        FlowStatus::with_sets(upstream, exchange, queue, &[])
    }

    /// The status of a flow whose destination routes to these clusters.
    pub fn with_sets(upstream: &str, exchange: &str, queue: &str, sets: &[String]) -> FlowStatus {
        let counters = Counters::default();
        counters.queue_depth.store(u64::MAX, Relaxed);
        counters.limit.store(u64::MAX, Relaxed);
        FlowStatus {
            upstream: upstream.into(),
            exchange: exchange.into(),
            queue: queue.into(),
            counters,
            sets: sets
                .iter()
                .map(|n| (n.clone(), Arc::new(SetStats::default())))
                .collect(),
            state: Mutex::new(FlowState {
                state: State::Starting,
                since: SystemTime::now(),
                upstream_uri: None,
                downstream_uri: None,
                upstream_cluster: None,
                downstream_cluster: None,
                last_error: None,
                last_error_at: None,
                next_attempt: None,
                activity: None,
            }),
        }
    }

    fn update(&self, f: impl FnOnce(&mut FlowState)) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let before = s.state;
        f(&mut s);
        if s.state != before {
            s.since = SystemTime::now();
        }
    }

    pub fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).state
    }

    pub fn set_running(&self, c: Connected) {
        self.update(|s| {
            s.state = State::Running;
            s.upstream_uri = Some(c.upstream_uri);
            s.downstream_uri = Some(c.downstream_uri);
            s.upstream_cluster = Some(c.upstream_cluster);
            s.downstream_cluster = Some(c.downstream_cluster);
            s.next_attempt = None;
            s.activity = None;
        });
    }

    /// What the running flow is doing, in words.
    pub fn set_activity(&self, activity: String) {
        self.update(|s| s.activity = Some(activity));
    }

    /// After a failed attempt or a lost connection: the error and when the next attempt starts.
    pub fn set_reconnecting(&self, error: String, next_attempt: SystemTime) {
        self.update(|s| {
            s.state = State::Reconnecting;
            s.upstream_uri = None;
            s.downstream_uri = None;
            s.last_error = Some(error);
            s.last_error_at = Some(SystemTime::now());
            s.next_attempt = Some(next_attempt);
            s.activity = None;
        });
    }

    /// A flow that did what `delete_after` asked.
    pub fn set_completed(&self) {
        self.update(|s| {
            s.state = State::Completed;
            s.upstream_uri = None;
            s.downstream_uri = None;
            s.next_attempt = None;
            s.activity = None;
        });
    }

    /// Stopped through the API.
    pub fn set_paused(&self) {
        self.update(|s| {
            s.state = State::Paused;
            s.upstream_uri = None;
            s.downstream_uri = None;
            s.next_attempt = None;
            s.activity = None;
        });
    }

    pub fn set_stopped(&self) {
        self.update(|s| {
            if matches!(s.state, State::Completed | State::Paused) {
                return;
            }
            s.state = State::Stopped;
            s.upstream_uri = None;
            s.downstream_uri = None;
            s.next_attempt = None;
            s.activity = None;
        });
    }

    /// Error and next attempt when reconnecting.
    fn problem(&self) -> Option<(String, Option<SystemTime>)> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match (s.state, &s.last_error) {
            (State::Reconnecting, Some(e)) => Some((e.clone(), s.next_attempt)),
            _ => None,
        }
    }

    pub fn json(&self) -> Value {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let c = &self.counters;
        let depth = c.queue_depth.load(Relaxed);
        json!({
            "upstream": self.upstream,
            "exchange": self.exchange,
            "queue": self.queue,
            "state": s.state.as_str(),
            "since": time(Some(s.since)),
            "activity": s.activity,
            "upstream_uri": s.upstream_uri,
            "downstream_uri": s.downstream_uri,
            "upstream_cluster": s.upstream_cluster,
            "downstream_cluster": s.downstream_cluster,
            "last_error": s.last_error,
            "last_error_at": time(s.last_error_at),
            "next_attempt": time(s.next_attempt),
            "forwarded": c.forwarded.load(Relaxed),
            "dropped": c.dropped.load(Relaxed),
            "redelivered": c.redelivered.load(Relaxed),
            "rejected": c.rejected.load(Relaxed),
            "reconnects": c.reconnects.load(Relaxed),
            "backoffs": c.backoffs.load(Relaxed),
            "queue_depth": (depth != u64::MAX).then_some(depth),
        })
    }

    /// A flow that releases a hold queue (its label is `hold SET`).
    pub fn releases(&self) -> bool {
        self.exchange.starts_with("hold ")
    }

    fn activity(&self) -> Option<String> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .activity
            .clone()
    }
}

fn time(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(humantime::format_rfc3339_millis(t).to_string())
    })
}

/// The status of one link or shovel: its flows, and a summary state.
#[derive(Debug)]
pub(crate) struct LinkStatus {
    pub name: String,
    pub kind: UnitKind,
    pub downstream: String,
    pub downstream_uris: Vec<String>,
    pub flows: Vec<Arc<FlowStatus>>,
    /// `delete_after` of a shovel.
    pub delete_after: DeleteAfter,
    /// Set while paused through the API.
    pub paused: AtomicBool,
}

impl LinkStatus {
    pub fn new(
        name: &str,
        kind: UnitKind,
        downstream: &str,
        downstream_uris: Vec<String>,
        flows: Vec<Arc<FlowStatus>>,
        delete_after: DeleteAfter,
    ) -> LinkStatus {
        LinkStatus {
            name: name.into(),
            kind,
            downstream: downstream.into(),
            downstream_uris,
            flows,
            delete_after,
            paused: AtomicBool::new(false),
        }
    }

    /// The link is as good as its worst flow: running only when every flow runs. The flows
    /// that release hold queues are left out: a SET that is down shows in `sets`, and the
    /// unit keeps running for the others.
    pub fn state(&self) -> State {
        if self.paused.load(Relaxed) {
            return State::Paused;
        }
        self.flows
            .iter()
            .filter(|f| !f.releases())
            .map(|f| f.state())
            .max()
            .unwrap_or(State::Stopped)
    }

    pub fn json(&self) -> Value {
        let state = self.state();
        let problem = self.flows.iter().find_map(|f| {
            f.problem().map(|(e, next)| {
                (
                    match self.kind {
                        UnitKind::Link => {
                            format!("upstream {} exchange {}: {e}", f.upstream, f.exchange)
                        }
                        UnitKind::Shovel => format!("{}: {e}", f.exchange),
                    },
                    next,
                )
            })
        });
        let sum = |get: fn(&Counters) -> &AtomicU64| -> u64 {
            self.flows
                .iter()
                .map(|f| get(&f.counters).load(Relaxed))
                .sum()
        };
        // Messages are counted where they are first forwarded: by the flows that consume the
        // source, not again by those that release parked ones.
        let first_hop: Vec<&Arc<FlowStatus>> =
            self.flows.iter().filter(|f| !f.releases()).collect();
        let forwarded: u64 = first_hop
            .iter()
            .map(|f| f.counters.forwarded.load(Relaxed))
            .sum();
        let mut out = json!({
            "name": self.name,
            "state": state.as_str(),
            "downstream": { "name": self.downstream, "uris": self.downstream_uris },
            "last_error": problem.as_ref().map(|p| p.0.clone()),
            "next_attempt": time(problem.and_then(|p| p.1)),
            "forwarded": forwarded,
            "dropped": sum(|c| &c.dropped),
            "flows": self.flows.iter().map(|f| f.json()).collect::<Vec<_>>(),
        });
        if self.kind == UnitKind::Shovel {
            let limit = first_hop
                .iter()
                .map(|f| f.counters.limit.load(Relaxed))
                .find(|l| *l != u64::MAX);
            out["activity"] = json!(first_hop.iter().find_map(|f| f.activity()));
            out["delete_after"] = match self.delete_after {
                DeleteAfter::Messages(n) => json!(n),
                d => json!(d.describe()),
            };
            out["moved"] = json!(forwarded);
            out["remaining"] = json!(limit.map(|l| l.saturating_sub(forwarded)));
        }
        if self.flows.iter().any(|f| !f.sets.is_empty()) {
            out["unkeyed"] = json!(sum(|c| &c.unkeyed));
            out["sets"] = self.sets_json();
        }
        out
    }

    /// Per cluster of a routed destination: up or down (and why), forwarded, parked, failed
    /// over, and the depth of its hold queue (read by the flow that releases it).
    fn sets_json(&self) -> Value {
        let mut sets = serde_json::Map::new();
        for f in &self.flows {
            for (name, st) in &f.sets {
                let e = sets.entry(name.clone()).or_insert_with(|| {
                    json!({"state": "up", "forwarded": 0, "held": 0, "failed_over": 0,
                           "held_queue_depth": Value::Null, "error": Value::Null})
                });
                let add = |e: &mut Value, k: &str, v: &AtomicU64| {
                    e[k] = json!(e[k].as_u64().unwrap_or(0) + v.load(Relaxed));
                };
                add(e, "forwarded", &st.forwarded);
                add(e, "held", &st.held);
                add(e, "failed_over", &st.failed_over);
                let depth = st.hold_depth.load(Relaxed);
                if depth != u64::MAX {
                    e["held_queue_depth"] =
                        json!(e["held_queue_depth"].as_u64().unwrap_or(0) + depth);
                }
                if let Some(why) = st.down() {
                    e["state"] = json!("down");
                    e["error"] = json!(why);
                }
            }
        }
        for f in &self.flows {
            if let Some(name) = f.exchange.strip_prefix("hold ") {
                if let (Some(e), Some((why, _))) = (sets.get_mut(name), f.problem()) {
                    e["state"] = json!("down");
                    e["error"] = json!(why);
                }
            }
        }
        Value::Object(sets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn link() -> LinkStatus {
        LinkStatus::new(
            "dc1->dc2",
            UnitKind::Link,
            "dc2",
            vec!["amqp://fed:***@h:5672/%2f".into()],
            vec![
                Arc::new(FlowStatus::new("dc1", "x", "federation: x -> dc2")),
                Arc::new(FlowStatus::new("dc1", "y", "federation: y -> dc2")),
            ],
            DeleteAfter::Never,
        )
    }

    fn connected() -> Connected {
        Connected {
            upstream_uri: "amqp://fed:***@u:5672/%2f".into(),
            downstream_uri: "amqp://fed:***@h:5672/%2f".into(),
            upstream_cluster: "c1".into(),
            downstream_cluster: "c2".into(),
        }
    }

    #[test]
    fn link_state_is_the_worst_flow_state() {
        let l = link();
        assert_eq!(l.json()["state"], "starting");
        l.flows[0].set_running(connected());
        assert_eq!(l.json()["state"], "starting");
        l.flows[1].set_running(connected());
        assert_eq!(l.json()["state"], "running");
        assert_eq!(l.json()["last_error"], Value::Null);
        let next = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        l.flows[1].set_reconnecting("downstream exchange \"y\" does not exist".into(), next);
        let j = l.json();
        assert_eq!(j["state"], "reconnecting");
        assert_eq!(
            j["last_error"],
            "upstream dc1 exchange y: downstream exchange \"y\" does not exist"
        );
        assert_eq!(j["next_attempt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(j["flows"][1]["upstream_uri"], Value::Null);
        assert_eq!(j["flows"][0]["upstream_uri"], "amqp://fed:***@u:5672/%2f");
        l.flows[0].set_stopped();
        l.flows[1].set_stopped();
        assert_eq!(l.json()["state"], "stopped");
    }

    #[test]
    fn counters_are_summed_and_depth_unknown_until_seen() {
        let l = link();
        l.flows[0].counters.forwarded.store(3, Relaxed);
        l.flows[1].counters.forwarded.store(4, Relaxed);
        let j = l.json();
        assert_eq!(j["forwarded"], 7);
        assert_eq!(j["flows"][0]["queue_depth"], Value::Null);
        l.flows[0].counters.queue_depth.store(0, Relaxed);
        assert_eq!(l.json()["flows"][0]["queue_depth"], 0);
    }
}
