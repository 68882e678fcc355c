//! What `GET /api/links` shows: per link and per flow, the state, the URIs in use (masked), the
//! last error with the next attempt time, and counters.
//!
//! A flow writes its state at transitions only (a `Mutex` taken rarely and never across an
//! await) and its counters on every message (atomics); the admin server reads both.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The life cycle of a flow, and of a link as the worst of its flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum State {
    Running,
    Starting,
    Reconnecting,
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Reconnecting => "reconnecting",
            State::Stopped => "stopped",
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
    pub fn new(upstream: &str, exchange: &str, queue: &str) -> FlowStatus {
        let counters = Counters::default();
        counters.queue_depth.store(u64::MAX, Relaxed);
        FlowStatus {
            upstream: upstream.into(),
            exchange: exchange.into(),
            queue: queue.into(),
            counters,
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

    pub fn set_stopped(&self) {
        self.update(|s| {
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
}

fn time(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(humantime::format_rfc3339_millis(t).to_string())
    })
}

/// The status of one link: its flows, and a summary state.
#[derive(Debug)]
pub(crate) struct LinkStatus {
    pub name: String,
    pub downstream: String,
    pub downstream_uris: Vec<String>,
    pub flows: Vec<Arc<FlowStatus>>,
}

impl LinkStatus {
    /// The link is as good as its worst flow: running only when every flow runs.
    pub fn state(&self) -> State {
        self.flows
            .iter()
            .map(|f| f.state())
            .max()
            .unwrap_or(State::Stopped)
    }

    pub fn json(&self) -> Value {
        let state = self.state();
        let problem = self.flows.iter().find_map(|f| {
            f.problem().map(|(e, next)| {
                (
                    format!("upstream {} exchange {}: {e}", f.upstream, f.exchange),
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
        json!({
            "name": self.name,
            "state": state.as_str(),
            "downstream": { "name": self.downstream, "uris": self.downstream_uris },
            "last_error": problem.as_ref().map(|p| p.0.clone()),
            "next_attempt": time(problem.and_then(|p| p.1)),
            "forwarded": sum(|c| &c.forwarded),
            "dropped": sum(|c| &c.dropped),
            "flows": self.flows.iter().map(|f| f.json()).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn link() -> LinkStatus {
        LinkStatus {
            name: "dc1->dc2".into(),
            downstream: "dc2".into(),
            downstream_uris: vec!["amqp://fed:***@h:5672/%2f".into()],
            flows: vec![
                Arc::new(FlowStatus::new("dc1", "x", "federation: x -> dc2")),
                Arc::new(FlowStatus::new("dc1", "y", "federation: y -> dc2")),
            ],
        }
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
