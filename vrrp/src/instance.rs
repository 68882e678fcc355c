//! The running instance: one task that owns the socket, the state machine and the VIPs, and turns
//! the machine's [`Action`]s into packets, netlink calls, gratuitous ARPs and notify commands.
//!
//! The task waits on three things at once: a datagram, the earliest deadline (the machine's timer,
//! the next readiness poll, the next gratuitous ARP) and the stop signal. Everything that changes
//! state happens in this one task, so nothing here needs a lock except the report it publishes.

use crate::config::{Vip, VrrpConfig};
use crate::garp::{self, GarpSocket};
use crate::netlink::{Link, Netlink};
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

/// Readiness is polled at least this often (and every advert interval when that is shorter), so
/// `track` reacts within 100 ms even with a 1 s advert interval.
const MAX_READY_POLL: Duration = Duration::from_millis(100);

/// What the [`crate::Vrrp`] handle asks of the task.
#[derive(Debug)]
pub enum Command {
    /// Apply new live settings (already checked against what needs a restart).
    Reload(Box<VrrpConfig>),
    /// Step down and end.
    Stop,
}

/// Everything the task owns.
pub struct Instance {
    pub(crate) cfg: VrrpConfig,
    pub(crate) vips: Vec<Vip>,
    pub(crate) link: Link,
    pub(crate) netlink: Netlink,
    pub(crate) sock: VrrpSocket,
    pub(crate) garp: GarpSocket,
    pub(crate) machine: Machine,
    pub(crate) report: Arc<Report>,
    pub(crate) ready: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Gratuitous ARPs still to send since becoming master, earliest first.
    pub(crate) garp_due: Vec<Instant>,
    pub(crate) is_ready: bool,
}

impl Instance {
    /// Runs until [`Command::Stop`] (or the handle is gone), then steps down and removes the
    /// VIPs.
    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut buf = vec![0u8; 4096];
        let now = Instant::now();
        self.poll_ready(now).await;
        let actions = self.machine.start(now.into_std());
        self.apply(actions).await;
        let mut next_poll = now + self.poll_every();
        loop {
            self.publish();
            let mut deadline = next_poll;
            if let Some(t) = self.machine.next_deadline() {
                deadline = deadline.min(Instant::from_std(t));
            }
            if let Some(&t) = self.garp_due.first() {
                deadline = deadline.min(t);
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
                        warn!(error = %e, interface = %self.cfg.interface, "vrrp: receive failed");
                        // An error that repeats (interface gone) must not spin the task.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
            let now = Instant::now();
            if now >= next_poll {
                self.poll_ready(now).await;
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
        self.cfg.advert_int.min(MAX_READY_POLL)
    }

    async fn reconfigure(&mut self, cfg: VrrpConfig) {
        self.cfg = cfg;
        let primary = self.sock.src();
        let drop = if self.is_ready { 0 } else { self.cfg.track };
        let params = crate::state::Params::from_config(&self.cfg, primary);
        let actions = self
            .machine
            .reconfigure(Instant::now().into_std(), params, drop);
        self.report
            .set_facts(crate::status::Facts::new(&self.cfg, primary));
        info!(summary = %self.cfg.summary(), "vrrp settings reloaded");
        self.apply(actions).await;
    }

    async fn poll_ready(&mut self, now: Instant) {
        let ready = (self.ready)();
        if ready != self.is_ready {
            info!(
                ready,
                priority = self.cfg.priority,
                track = self.cfg.track,
                "vrrp: proxy readiness changed"
            );
            self.is_ready = ready;
        }
        let drop = if ready { 0 } else { self.cfg.track };
        let actions = self.machine.set_priority_drop(now.into_std(), drop);
        self.apply(actions).await;
    }

    async fn on_datagram(&mut self, datagram: &[u8]) {
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
        // The first of each cause is worth a warning (misconfiguration); the rest are counted.
        if count == 1 {
            warn!(
                cause,
                why, src, "vrrp: dropped an advert (further ones are only counted)"
            );
        } else {
            debug!(cause, why, src, "vrrp: dropped an advert");
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
        let advert = Advert {
            vrid: self.cfg.vrid,
            priority,
            max_advert_int: self.cfg.advert_centis(),
            addrs: self.vips.iter().map(|v| v.addr).collect(),
        };
        match self.sock.send(&advert).await {
            Ok(()) => self.report.sent(),
            Err(e) => warn!(error = %e, priority, "vrrp: sending an advert failed"),
        }
    }

    async fn transition(&mut self, state: State) {
        let master = self
            .machine
            .master()
            .map(|m| m.addr.to_string())
            .unwrap_or_default();
        info!(
            state = state.name(),
            vrid = self.cfg.vrid,
            priority = self.machine.effective_priority(),
            master,
            "vrrp state change"
        );
        self.report.transition(state);
        match state {
            State::Master => {
                for vip in &self.vips {
                    if let Err(e) = self.netlink.add(self.link.index, *vip).await {
                        warn!(error = %e, vip = %vip, interface = %self.cfg.interface, "vrrp: adding a VIP failed");
                    }
                }
                let now = Instant::now();
                self.garp_due = garp::SCHEDULE.iter().map(|d| now + *d).collect();
                self.send_due_garps(now);
            }
            State::Backup | State::Initialize => {
                self.garp_due.clear();
                // Also at start-up: VIPs left behind by a crashed run must go before anyone else
                // takes them, or two hosts would answer ARP for them.
                for vip in &self.vips {
                    if let Err(e) = self.netlink.del(self.link.index, vip.addr).await {
                        warn!(error = %e, vip = %vip, interface = %self.cfg.interface, "vrrp: removing a VIP failed");
                    }
                }
            }
        }
        if let Some(cmd) = &self.cfg.notify {
            crate::notify::spawn(cmd, state, self.cfg.vrid, self.machine.effective_priority());
        }
        self.publish();
    }

    fn send_due_garps(&mut self, now: Instant) {
        while self.garp_due.first().is_some_and(|t| *t <= now) {
            self.garp_due.remove(0);
            for vip in &self.vips {
                if let Err(e) = self.garp.announce(self.link.mac, vip.addr) {
                    debug!(error = %e, vip = %vip, "vrrp: gratuitous ARP not sent");
                }
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
        );
    }
}
