//! A running instance: one task that owns the socket, the state machine and the VIPs of one
//! virtual router, and turns the machine's [`Action`]s into packets, netlink calls, gratuitous
//! ARPs and notify commands.
//!
//! The task waits on three things at once: a datagram, the earliest deadline (the machine's timer,
//! the next poll of readiness and interfaces, the next gratuitous ARP) and a command. Everything
//! that changes state happens in this one task, so nothing here needs a lock except the report it
//! publishes.

use crate::config::{InstanceConfig, Vip};
use crate::garp::{self, GarpSocket};
use crate::netlink::{Link, Netlink};
use crate::notify::{self, Who};
use crate::packet::{self, Advert};
use crate::socket::VrrpSocket;
use crate::state::{Action, Machine, State};
use crate::status::Report;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Readiness and the tracked interfaces are polled at least this often (and every advert interval
/// when that is shorter), so `track` and FAULT react within 100 ms even with a 1 s advert
/// interval.
const MAX_POLL: Duration = Duration::from_millis(100);

/// What the [`crate::Vrrp`] handle asks of the task.
#[derive(Debug)]
pub enum Command {
    /// Apply new live settings (already checked against what needs a restart).
    Reload(Box<InstanceConfig>),
    /// Step down and end.
    Stop,
}

/// Everything the task owns.
pub struct Instance {
    pub(crate) cfg: InstanceConfig,
    pub(crate) vips: Vec<Vip>,
    pub(crate) link: Link,
    /// Shared by the instances of this process: netlink requests are independent of each other.
    pub(crate) netlink: Arc<Netlink>,
    pub(crate) sock: VrrpSocket,
    pub(crate) garp: GarpSocket,
    pub(crate) machine: Machine,
    pub(crate) report: Arc<Report>,
    pub(crate) ready: Arc<dyn Fn() -> bool + Send + Sync>,
    /// VRIDs of this process's other instances on the same interface: their adverts reach this
    /// socket too, and are neither ours nor bad.
    pub(crate) siblings: Vec<u8>,
    /// Gratuitous ARPs still to send since becoming master, earliest first.
    pub(crate) garp_due: Vec<Instant>,
    /// While master with `garp_master_refresh`: the next refresh.
    pub(crate) garp_refresh_at: Option<Instant>,
    pub(crate) is_ready: bool,
    /// Since when the proxy has been not ready (for `track_fault_after`).
    pub(crate) unready_since: Option<Instant>,
    /// Why the instance is in FAULT now; empty: no fault.
    pub(crate) fault: Vec<String>,
}

impl Instance {
    /// Runs until [`Command::Stop`] (or the handle is gone), then steps down and removes the
    /// VIPs.
    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut buf = vec![0u8; 4096];
        let now = Instant::now();
        // Before `start`: a fault present now starts the instance in FAULT.
        self.poll(now).await;
        let actions = self.machine.start(now.into_std());
        self.apply(actions).await;
        let mut next_poll = now + self.poll_every();
        loop {
            self.publish();
            let mut deadline = next_poll;
            if let Some(t) = self.machine.next_deadline() {
                deadline = deadline.min(Instant::from_std(t));
            }
            for t in self
                .garp_due
                .first()
                .into_iter()
                .chain(&self.garp_refresh_at)
            {
                deadline = deadline.min(*t);
            }
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(Command::Reload(cfg)) => self.reconfigure(*cfg).await,
                    Some(Command::Stop) | None => break,
                },
                r = self.sock.recv(&mut buf) => match r {
                    Ok(n) => self.on_datagram(&buf[..n]).await,
                    Err(e) => {
                        warn!(error = %e, instance = %self.cfg.name, interface = %self.cfg.interface, "vrrp: receive failed");
                        // An error that repeats (interface gone) must not spin the task.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
            let now = Instant::now();
            if now >= next_poll {
                self.poll(now).await;
                next_poll = now + self.poll_every();
            }
            let actions = self.machine.on_timer(now.into_std());
            self.apply(actions).await;
            self.send_due_garps(now);
        }
        let actions = self.machine.shutdown();
        self.apply(actions).await;
        self.publish();
    }

    fn poll_every(&self) -> Duration {
        self.cfg.advert_int.min(MAX_POLL)
    }

    async fn reconfigure(&mut self, cfg: InstanceConfig) {
        self.cfg = cfg;
        let primary = self.sock.src();
        let drop = if self.is_ready { 0 } else { self.cfg.track };
        let params = crate::state::Params::from_config(&self.cfg, primary);
        let now = Instant::now();
        let actions = self.machine.reconfigure(now.into_std(), params, drop);
        self.garp_refresh_at = self.refresh_from(now);
        self.report
            .set_facts(crate::status::Facts::new(&self.cfg, primary));
        info!(instance = %self.cfg.name, summary = %self.cfg.summary(), "vrrp settings reloaded");
        self.apply(actions).await;
    }

    /// Readiness (the priority drop) and the faults: tracked interfaces down, or not ready for
    /// longer than `track_fault_after`.
    async fn poll(&mut self, now: Instant) {
        let ready = (self.ready)();
        if ready != self.is_ready {
            info!(
                instance = %self.cfg.name,
                ready,
                priority = self.cfg.priority,
                track = self.cfg.track,
                "vrrp: proxy readiness changed"
            );
            self.is_ready = ready;
        }
        self.unready_since = match ready {
            true => None,
            false => Some(self.unready_since.unwrap_or(now)),
        };
        let drop = if ready { 0 } else { self.cfg.track };
        let actions = self.machine.set_priority_drop(now.into_std(), drop);
        self.apply(actions).await;

        let mut fault = Vec::new();
        for iface in self.cfg.fault_interfaces() {
            let why = match self.netlink.link(&iface).await {
                Ok(Some(l)) if l.usable() => None,
                Ok(Some(l)) if !l.up => Some(format!("interface {iface} is down")),
                Ok(Some(_)) => Some(format!("interface {iface} has no carrier")),
                Ok(None) => Some(format!("interface {iface} does not exist")),
                Err(e) => {
                    // Unknown: keep what we last knew about it.
                    debug!(error = %e, interface = %iface, "vrrp: interface state unknown");
                    let mine = format!("interface {iface} ");
                    self.fault.iter().find(|f| f.starts_with(&mine)).cloned()
                }
            };
            fault.extend(why);
        }
        if let (Some(bound), Some(since)) = (self.cfg.track_fault_after, self.unready_since) {
            if now.duration_since(since) >= bound {
                fault.push(format!(
                    "proxy not ready for more than {}",
                    humantime::format_duration(bound)
                ));
            }
        }
        if fault != self.fault {
            match fault.is_empty() {
                true => info!(instance = %self.cfg.name, "vrrp: fault cleared"),
                false => warn!(instance = %self.cfg.name, fault = ?fault, "vrrp: fault"),
            }
            self.fault = fault;
        }
        let actions = self
            .machine
            .set_fault(now.into_std(), !self.fault.is_empty());
        self.apply(actions).await;
    }

    async fn on_datagram(&mut self, datagram: &[u8]) {
        if self.machine.state() == State::Fault {
            return; // not listening: a fault is cleared by starting over as Backup
        }
        let rx = match packet::decode(datagram) {
            Ok(rx) => rx,
            Err(e) => return self.drop_advert(e.cause(), &e.to_string(), None),
        };
        if rx.src == self.sock.src() {
            return; // our own advert
        }
        let a = &rx.advert;
        let peers = self.cfg.peers_v4();
        if !peers.is_empty() && !peers.contains(&rx.src) {
            return self.drop_advert("peer", "sender is not in vrrp.unicast_peers", Some(rx.src));
        }
        if a.vrid != self.cfg.vrid {
            if self.siblings.contains(&a.vrid) {
                return; // another instance of ours handles it
            }
            return self.drop_advert(
                "vrid",
                &format!("VRID {} is not ours ({})", a.vrid, self.cfg.vrid),
                Some(rx.src),
            );
        }
        if a.addrs.len() != self.vips.len() {
            let why = format!("{} addresses, we have {}", a.addrs.len(), self.vips.len());
            return self.drop_advert("addr_count", &why, Some(rx.src));
        }
        let theirs: BTreeSet<Ipv4Addr> = a.addrs.iter().copied().collect();
        let ours: BTreeSet<Ipv4Addr> = self.vips.iter().map(|v| v.addr).collect();
        if theirs != ours {
            return self.drop_advert(
                "addr_list",
                &format!("addresses {theirs:?}, ours {ours:?}"),
                Some(rx.src),
            );
        }
        self.report.received();
        let interval = Duration::from_millis(u64::from(a.max_advert_int) * 10);
        let actions =
            self.machine
                .on_advert(Instant::now().into_std(), rx.src, a.priority, interval);
        self.apply(actions).await;
    }

    fn drop_advert(&self, cause: &'static str, why: &str, src: Option<Ipv4Addr>) {
        let count = self.report.bad(cause);
        let src = src.map(|s| s.to_string()).unwrap_or_default();
        let instance = self.cfg.name.as_str();
        // The first of each cause is worth a warning (misconfiguration); the rest are counted.
        if count == 1 {
            warn!(
                instance,
                cause, why, src, "vrrp: dropped an advert (further ones are only counted)"
            );
        } else {
            debug!(instance, cause, why, src, "vrrp: dropped an advert");
        }
    }

    async fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::SendAdvert(priority) => self.send_advert(priority).await,
                Action::Transition(state) => self.transition(state).await,
            }
        }
    }

    async fn send_advert(&self, priority: u8) {
        let own = format!("interface {} ", self.cfg.interface);
        if self.fault.iter().any(|f| f.starts_with(&own)) {
            // Down or gone: the send can only fail (a priority-0 step-down on entering FAULT).
            return debug!(instance = %self.cfg.name, priority, "vrrp: advert not sent, interface down");
        }
        let advert = Advert {
            vrid: self.cfg.vrid,
            priority,
            max_advert_int: self.cfg.advert_centis(),
            addrs: self.vips.iter().map(|v| v.addr).collect(),
        };
        match self.sock.send(&advert).await {
            Ok(()) => self.report.sent(),
            Err(e) => {
                warn!(instance = %self.cfg.name, error = %e, priority, "vrrp: sending an advert failed")
            }
        }
    }

    async fn transition(&mut self, state: State) {
        let master = self
            .machine
            .master()
            .map(|m| m.addr.to_string())
            .unwrap_or_default();
        info!(
            instance = %self.cfg.name,
            state = state.name(),
            vrid = self.cfg.vrid,
            priority = self.machine.effective_priority(),
            master,
            fault = ?self.fault,
            "vrrp state change"
        );
        match state {
            State::Master => {
                for vip in &self.vips {
                    if let Err(e) = self.netlink.add(self.link.index, *vip).await {
                        warn!(error = %e, instance = %self.cfg.name, vip = %vip, interface = %self.cfg.interface, "vrrp: adding a VIP failed");
                    }
                }
                let now = Instant::now();
                self.garp_due = garp::SCHEDULE.iter().map(|d| now + *d).collect();
                self.garp_refresh_at = self.refresh_from(now);
                self.send_due_garps(now);
            }
            State::Backup | State::Fault | State::Initialize => {
                self.garp_due.clear();
                self.garp_refresh_at = None;
                // Also at start-up: VIPs left behind by a crashed run must go before anyone else
                // takes them, or two hosts would answer ARP for them.
                for vip in &self.vips {
                    if let Err(e) = self.netlink.del(self.link.index, vip.addr).await {
                        warn!(error = %e, instance = %self.cfg.name, vip = %vip, interface = %self.cfg.interface, "vrrp: removing a VIP failed");
                    }
                }
            }
        }
        // Reported once the VIPs are in place: whoever reads MASTER or FAULT in /api/vrrp may
        // rely on the addresses being there or gone.
        self.report.transition(state);
        self.publish();
        let who = Who {
            name: self.cfg.name.clone(),
            vrid: self.cfg.vrid,
            priority: self.machine.effective_priority(),
        };
        notify::spawn(&self.cfg.notify, state, &who);
    }

    /// The first gratuitous ARP refresh after `now`, while master with a refresh interval.
    fn refresh_from(&self, now: Instant) -> Option<Instant> {
        let every = self.cfg.garp_master_refresh;
        (self.machine.state() == State::Master && !every.is_zero()).then(|| now + every)
    }

    fn send_due_garps(&mut self, now: Instant) {
        let mut announce = false;
        while self.garp_due.first().is_some_and(|t| *t <= now) {
            self.garp_due.remove(0);
            announce = true;
        }
        if self.garp_refresh_at.is_some_and(|t| t <= now) {
            self.garp_refresh_at = self.refresh_from(now);
            announce = true;
        }
        if !announce {
            return;
        }
        for vip in &self.vips {
            if let Err(e) = self.garp.announce(self.link.mac, vip.addr) {
                debug!(error = %e, vip = %vip, "vrrp: gratuitous ARP not sent");
            }
        }
    }

    fn publish(&self) {
        let m = &self.machine;
        self.report.observe(
            m.master(),
            m.effective_priority(),
            m.master_adver_int(),
            self.is_ready,
            &self.fault,
        );
    }
}
