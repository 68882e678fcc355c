//! What an instance reports: its part of the `/api/vrrp` document and the `setgate_vrrp_*`
//! metrics (labelled with the instance's name), updated together so the two never disagree.

use crate::state::{MasterInfo, State};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Facts of the instance: set at start, and again by a reload.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The instance's name.
    pub name: String,
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
    /// Interfaces whose loss means FAULT (ours first).
    pub track_interface: Vec<String>,
    /// Not ready this long means FAULT.
    pub track_fault_after: Option<Duration>,
    /// Gratuitous ARP refresh interval while master (zero: off).
    pub garp_master_refresh: Duration,
}

impl Facts {
    /// The facts `cfg` gives, with `src` as our advert source.
    pub fn new(cfg: &crate::InstanceConfig, src: Ipv4Addr) -> Facts {
        Facts {
            name: cfg.name.clone(),
            interface: cfg.interface.clone(),
            vrid: cfg.vrid,
            priority: cfg.priority,
            advert_int: cfg.advert_int,
            vips: cfg.vips().iter().map(|v| v.to_string()).collect(),
            src,
            peers: cfg.peers_v4(),
            track: cfg.track,
            track_interface: cfg.fault_interfaces(),
            track_fault_after: cfg.track_fault_after,
            garp_master_refresh: cfg.garp_master_refresh,
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
    /// Why the instance is in FAULT (empty: no fault).
    fault: Vec<String>,
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
    /// The `instance` label of every metric (a name change needs a restart).
    name: String,
    facts: Mutex<Facts>,
    live: Mutex<Live>,
}

impl Report {
    /// A report for an instance that has not started yet, and registers the metric descriptions.
    pub fn new(facts: Facts) -> Report {
        metrics::describe_gauge!(
            "setgate_vrrp_state",
            "VRRP state per instance: 0 stopped, 1 backup, 2 master, 3 fault"
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
        let name = facts.name.clone();
        metrics::gauge!("setgate_vrrp_state", "vrrp_instance" => name.clone())
            .set(State::Initialize.gauge());
        let live = Live {
            state: State::Initialize,
            master: None,
            effective_priority: facts.priority,
            master_adver_int: facts.advert_int,
            ready: false,
            fault: Vec::new(),
            transitions: 0,
            last_transition: None,
            sent: 0,
            received: 0,
            bad: BTreeMap::new(),
        };
        Report {
            name,
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
        metrics::gauge!("setgate_vrrp_state", "vrrp_instance" => self.name.clone())
            .set(state.gauge());
        metrics::counter!("setgate_vrrp_transitions_total", "vrrp_instance" => self.name.clone())
            .increment(1);
    }

    /// The machine's view after any event.
    pub fn observe(
        &self,
        master: Option<MasterInfo>,
        effective_priority: u8,
        master_adver_int: Duration,
        ready: bool,
        fault: &[String],
    ) {
        let mut l = self.live();
        if l.fault != fault {
            l.fault = fault.to_vec();
        }
        l.master = master;
        l.effective_priority = effective_priority;
        l.master_adver_int = master_adver_int;
        l.ready = ready;
    }

    /// One advert sent.
    pub fn sent(&self) {
        self.live().sent += 1;
        metrics::counter!("setgate_vrrp_adverts_sent_total", "vrrp_instance" => self.name.clone())
            .increment(1);
    }

    /// One valid advert received.
    pub fn received(&self) {
        self.live().received += 1;
        metrics::counter!("setgate_vrrp_adverts_received_total", "vrrp_instance" => self.name.clone())
            .increment(1);
    }

    /// One advert dropped for `cause`; returns how many have been dropped for it so far.
    pub fn bad(&self, cause: &'static str) -> u64 {
        metrics::counter!("setgate_vrrp_bad_adverts_total", "cause" => cause, "vrrp_instance" => self.name.clone())
            .increment(1);
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
            "name": f.name,
            "state": l.state.name(),
            "fault": l.fault,
            "interface": f.interface,
            "vrid": f.vrid,
            "vips": f.vips,
            "source": f.src.to_string(),
            "mode": if f.peers.is_empty() { "multicast" } else { "unicast" },
            "unicast_peers": f.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "priority": { "configured": f.priority, "effective": l.effective_priority, "track": f.track },
            "ready": l.ready,
            "track_interface": f.track_interface,
            "track_fault_after_ms": f.track_fault_after.map(|d| d.as_millis() as u64),
            "garp_master_refresh_ms": f.garp_master_refresh.as_millis() as u64,
            "master": master,
            "advert_int_ms": f.advert_int.as_millis() as u64,
            "master_advert_int_ms": l.master_adver_int.as_millis() as u64,
            "transitions": l.transitions,
            "last_transition": l.last_transition.map(|t| humantime::format_rfc3339_millis(t).to_string()),
            "adverts": { "sent": l.sent, "received": l.received, "bad": bad },
        })
    }
}

/// The `/api/vrrp` document of several instances: the first one's fields at the top (what a
/// single `[vrrp]` always showed, so tools written for one instance keep working) and every
/// instance, the first included, under `instances`.
pub fn document(reports: &[std::sync::Arc<Report>]) -> Value {
    let all: Vec<Value> = reports.iter().map(|r| r.to_json()).collect();
    let mut doc = all.first().cloned().unwrap_or_else(|| json!({}));
    doc["instances"] = Value::Array(all);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_reflects_events() {
        let r = Report::new(Facts {
            name: "VI_51".into(),
            interface: "eth0".into(),
            vrid: 51,
            priority: 150,
            advert_int: Duration::from_millis(100),
            vips: vec!["192.0.2.100/24".into()],
            src: Ipv4Addr::new(192, 0, 2, 11),
            peers: vec![],
            track: 254,
            track_interface: vec!["eth0".into()],
            track_fault_after: None,
            garp_master_refresh: Duration::ZERO,
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
            &[],
        );
        r.sent();
        r.received();
        r.bad("ttl");
        r.bad("ttl");
        let j = r.to_json();
        assert_eq!(j["state"], "MASTER");
        assert_eq!(j["name"], "VI_51");
        assert_eq!(j["fault"], json!([]));
        assert_eq!(j["transitions"], 2);
        assert_eq!(j["priority"]["effective"], 1);
        assert_eq!(j["master"]["self"], true);
        assert_eq!(j["adverts"]["bad"]["ttl"], 2);
        assert_eq!(j["mode"], "multicast");
        assert!(j["last_transition"].as_str().unwrap().ends_with('Z'));
        r.transition(State::Fault);
        r.observe(
            None,
            1,
            Duration::from_millis(100),
            true,
            &["interface eth0 is down".into()],
        );
        let j = r.to_json();
        assert_eq!(
            (j["state"].as_str(), j["fault"][0].as_str()),
            (Some("FAULT"), Some("interface eth0 is down"))
        );
    }
}
