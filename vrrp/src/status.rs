//! What the instance reports: the `/api/vrrp` document and the `setgate_vrrp_*` metrics, updated
//! together so the two never disagree.

use crate::state::{MasterInfo, State};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Facts of the instance: set at start, and again by a reload.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Interface name.
    pub interface: String,
    /// Virtual router id.
    pub vrid: u8,
    /// Configured priority.
    pub priority: u8,
    /// Our advert interval.
    pub advert_int: Duration,
    /// VIPs in CIDR form.
    pub vips: Vec<String>,
    /// Source address of our adverts.
    pub src: Ipv4Addr,
    /// Unicast peers (empty: multicast).
    pub peers: Vec<Ipv4Addr>,
    /// Priority drop while not ready.
    pub track: u8,
}

impl Facts {
    /// The facts `cfg` gives, with `src` as our advert source.
    pub fn new(cfg: &crate::VrrpConfig, src: Ipv4Addr) -> Facts {
        Facts {
            interface: cfg.interface.clone(),
            vrid: cfg.vrid,
            priority: cfg.priority,
            advert_int: cfg.advert_int,
            vips: cfg.vips().iter().map(|v| v.to_string()).collect(),
            src,
            peers: cfg.peers_v4(),
            track: cfg.track,
        }
    }
}

#[derive(Debug)]
struct Live {
    state: State,
    master: Option<MasterInfo>,
    effective_priority: u8,
    master_adver_int: Duration,
    ready: bool,
    transitions: u64,
    last_transition: Option<SystemTime>,
    sent: u64,
    received: u64,
    bad: BTreeMap<&'static str, u64>,
}

/// The shared report. The instance task writes it; `/api/vrrp` reads it. A plain mutex: every
/// critical section is a few field updates, never held across an await.
#[derive(Debug)]
pub struct Report {
    facts: Mutex<Facts>,
    live: Mutex<Live>,
}

impl Report {
    /// A report for an instance that has not started yet, and registers the metric descriptions.
    pub fn new(facts: Facts) -> Report {
        metrics::describe_gauge!(
            "setgate_vrrp_state",
            "VRRP state: 0 stopped, 1 backup, 2 master"
        );
        metrics::describe_counter!("setgate_vrrp_transitions_total", "VRRP state changes");
        metrics::describe_counter!("setgate_vrrp_adverts_sent_total", "VRRP adverts sent");
        metrics::describe_counter!(
            "setgate_vrrp_adverts_received_total",
            "valid VRRP adverts received"
        );
        metrics::describe_counter!(
            "setgate_vrrp_bad_adverts_total",
            "VRRP adverts dropped, by cause (ttl, version, type, length, checksum, vrid, addr_count, ...)"
        );
        metrics::gauge!("setgate_vrrp_state").set(State::Initialize.gauge());
        let live = Live {
            state: State::Initialize,
            master: None,
            effective_priority: facts.priority,
            master_adver_int: facts.advert_int,
            ready: false,
            transitions: 0,
            last_transition: None,
            sent: 0,
            received: 0,
            bad: BTreeMap::new(),
        };
        Report {
            facts: Mutex::new(facts),
            live: Mutex::new(live),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New facts after a reload (priority, advert interval, track).
    pub fn set_facts(&self, facts: Facts) {
        *self.facts.lock().unwrap_or_else(|p| p.into_inner()) = facts;
    }

    /// A state change.
    pub fn transition(&self, state: State) {
        let mut l = self.live();
        l.state = state;
        l.transitions += 1;
        l.last_transition = Some(SystemTime::now());
        metrics::gauge!("setgate_vrrp_state").set(state.gauge());
        metrics::counter!("setgate_vrrp_transitions_total").increment(1);
    }

    /// The machine's view after any event.
    pub fn observe(
        &self,
        master: Option<MasterInfo>,
        effective_priority: u8,
        master_adver_int: Duration,
        ready: bool,
    ) {
        let mut l = self.live();
        l.master = master;
        l.effective_priority = effective_priority;
        l.master_adver_int = master_adver_int;
        l.ready = ready;
    }

    /// One advert sent.
    pub fn sent(&self) {
        self.live().sent += 1;
        metrics::counter!("setgate_vrrp_adverts_sent_total").increment(1);
    }

    /// One valid advert received.
    pub fn received(&self) {
        self.live().received += 1;
        metrics::counter!("setgate_vrrp_adverts_received_total").increment(1);
    }

    /// One advert dropped for `cause`; returns how many have been dropped for it so far.
    pub fn bad(&self, cause: &'static str) -> u64 {
        metrics::counter!("setgate_vrrp_bad_adverts_total", "cause" => cause).increment(1);
        let mut l = self.live();
        let n = l.bad.entry(cause).or_default();
        *n += 1;
        *n
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.live().state
    }

    /// The `/api/vrrp` document.
    pub fn to_json(&self) -> Value {
        let f = self.facts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let l = self.live();
        let master = l.master.map(|m| {
            json!({
                "address": m.addr.to_string(),
                "priority": m.priority,
                "self": m.addr == f.src,
            })
        });
        let bad: BTreeMap<&str, u64> = l.bad.clone();
        json!({
            "state": l.state.name(),
            "interface": f.interface,
            "vrid": f.vrid,
            "vips": f.vips,
            "source": f.src.to_string(),
            "mode": if f.peers.is_empty() { "multicast" } else { "unicast" },
            "unicast_peers": f.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "priority": { "configured": f.priority, "effective": l.effective_priority, "track": f.track },
            "ready": l.ready,
            "master": master,
            "advert_int_ms": f.advert_int.as_millis() as u64,
            "master_advert_int_ms": l.master_adver_int.as_millis() as u64,
            "transitions": l.transitions,
            "last_transition": l.last_transition.map(|t| humantime::format_rfc3339_millis(t).to_string()),
            "adverts": { "sent": l.sent, "received": l.received, "bad": bad },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_reflects_events() {
        let r = Report::new(Facts {
            interface: "eth0".into(),
            vrid: 51,
            priority: 150,
            advert_int: Duration::from_millis(100),
            vips: vec!["192.0.2.100/24".into()],
            src: Ipv4Addr::new(192, 0, 2, 11),
            peers: vec![],
            track: 254,
        });
        r.transition(State::Backup);
        r.transition(State::Master);
        r.observe(
            Some(MasterInfo {
                addr: Ipv4Addr::new(192, 0, 2, 11),
                priority: 1,
            }),
            1,
            Duration::from_millis(100),
            false,
        );
        r.sent();
        r.received();
        r.bad("ttl");
        r.bad("ttl");
        let j = r.to_json();
        assert_eq!(j["state"], "MASTER");
        assert_eq!(j["transitions"], 2);
        assert_eq!(j["priority"]["effective"], 1);
        assert_eq!(j["master"]["self"], true);
        assert_eq!(j["adverts"]["bad"]["ttl"], 2);
        assert_eq!(j["mode"], "multicast");
        assert!(j["last_transition"].as_str().unwrap().ends_with('Z'));
    }
}
