//! VRRPv3 for setgate: instances elect a master among themselves (RFC 5798 as updated by RFC
//! 9568, IPv4) and the master holds the virtual IPs clients point at — what Keepalived does, plus
//! what Keepalived needs a polled script for: stepping down while this instance's own proxy is not
//! ready (`track`). Like Keepalived, one process may run several virtual routers (active/active
//! on two VIPs) and puts one in FAULT while its interface is down.
//!
//! Modules, from the wire up:
//! - [`config`]: the `[vrrp]` section and its instances, defaults, inheritance and validation.
//! - [`packet`]: advert encode/decode with the pseudo-header checksum; pure, fuzzed.
//! - [`state`]: the Backup/Master/Fault state machine; pure, driven by explicit instants.
//! - [`socket`]: the raw IP protocol 112 socket (multicast 224.0.0.18 or unicast peers, TTL 255).
//! - [`netlink`]: interface facts and adding/removing the VIPs (rtnetlink).
//! - [`garp`]: gratuitous ARP announcements over AF_PACKET.
//! - [`notify`]: the state-change commands.
//! - [`status`]: the `/api/vrrp` document and the `setgate_vrrp_*` metrics.
//! - [`error`]: start-up errors that say what to do.
//! - `instance`: the task per virtual router that ties them together.
//!
//! Use: [`Vrrp::start`] after the proxy's listeners are bound (listeners on a VIP bind with
//! IP_FREEBIND), serve [`Vrrp::status_fn`] at `/api/vrrp`, pass a changed section to
//! [`Vrrp::reload`] on SIGHUP, and call [`Vrrp::shutdown`] first on SIGTERM so backups take over
//! after Skew_Time instead of Master_Down_Interval.

pub mod config;
pub mod error;
pub mod garp;
mod instance;
pub mod netlink;
pub mod notify;
pub mod packet;
pub mod socket;
pub mod state;
pub mod status;

pub use config::{InstanceConfig, Vip, VrrpConfig, DEFAULT_TRACK};
pub use error::{StartError, VrrpError};
pub use state::State;

use instance::Command;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The running VRRP instances of `[vrrp]`. [`Vrrp::shutdown`] steps them down and waits for
/// them; dropping the handle makes the tasks step down in the background, as long as the runtime
/// still runs.
pub struct Vrrp {
    instances: Vec<Running>,
    /// The section running now, to tell live changes from those that need a restart. Only
    /// `reload` touches it.
    running: Mutex<VrrpConfig>,
}

/// One instance's task and what talks to it.
struct Running {
    report: Arc<status::Report>,
    /// To the instance task: reloads and the stop.
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Vrrp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let states: Vec<State> = self.instances.iter().map(|i| i.report.state()).collect();
        f.debug_struct("Vrrp").field("states", &states).finish()
    }
}

impl Vrrp {
    /// Checks capabilities, each instance's interface and address, opens the sockets and starts
    /// every instance as Backup (or FAULT when its interface is down), removing any of its VIPs a
    /// crashed run left on the interface. `ready` is the proxy's readiness: while it is false the
    /// advertised priority drops by `track` (and, past `track_fault_after`, the instance goes to
    /// FAULT). Nothing starts unless every instance can.
    pub async fn start(
        cfg: VrrpConfig,
        ready: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Result<Vrrp, VrrpError> {
        let errs = cfg.validate();
        if !errs.is_empty() {
            return Err(StartError::Config(errs).into());
        }
        let missing = error::missing_capabilities();
        if !missing.is_empty() {
            return Err(StartError::Capability {
                missing: missing.join(", "),
            }
            .into());
        }
        let netlink = Arc::new(
            netlink::Netlink::connect()
                .map_err(|e| StartError::io("open a netlink socket", e, "CAP_NET_ADMIN"))?,
        );
        let configs = cfg.instances();
        let mut prepared = Vec::new();
        for inst in &configs {
            let siblings = configs
                .iter()
                .filter(|o| o.interface == inst.interface && o.vrid != inst.vrid)
                .map(|o| o.vrid)
                .collect();
            prepared.push(prepare(inst.clone(), &netlink, ready.clone(), siblings).await?);
        }
        let mut instances = Vec::new();
        for instance in prepared {
            let report = instance.report.clone();
            let (commands, received) = mpsc::unbounded_channel();
            let task = tokio::spawn(instance.run(received));
            instances.push(Running {
                report,
                commands,
                task,
            });
        }
        Ok(Vrrp {
            instances,
            running: Mutex::new(cfg),
        })
    }

    /// Applies a changed `[vrrp]` section without a restart (SIGHUP). Live, per instance:
    /// `priority`, `advert_int`, `preempt`, `preempt_delay`, `track`, `track_interface`,
    /// `track_fault_after`, `garp_master_refresh` and the notify commands — a master advertises
    /// a new priority at once, so lowering it below a backup's moves the VIP within
    /// Master_Down_Interval. `name`, `interface`, `vrid`, `vip`, `unicast_peers`, `unicast_src`
    /// and the set of instances need a restart: a change to any of them (or an invalid section)
    /// is refused whole, with every reason, and the running settings stay.
    pub fn reload(&self, cfg: VrrpConfig) -> Result<(), Vec<String>> {
        let mut errs = cfg.validate();
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        errs.extend(config::restart_needed(&running, &cfg));
        if !errs.is_empty() {
            return Err(errs);
        }
        let (old, new) = (running.instances(), cfg.instances());
        for ((o, n), inst) in old.iter().zip(new).zip(&self.instances) {
            if *o != n {
                let _ = inst.commands.send(Command::Reload(Box::new(n)));
            }
        }
        *running = cfg;
        Ok(())
    }

    /// The `/api/vrrp` document: per instance its state (and why, in FAULT), current master,
    /// priority (configured and effective), readiness, transitions, advert counters; see
    /// [`status::document`].
    pub fn status_fn(&self) -> Arc<dyn Fn() -> serde_json::Value + Send + Sync> {
        let reports: Vec<Arc<status::Report>> =
            self.instances.iter().map(|i| i.report.clone()).collect();
        Arc::new(move || status::document(&reports))
    }

    /// The current state of each instance, in the order of [`VrrpConfig::instances`].
    pub fn states(&self) -> Vec<State> {
        self.instances.iter().map(|i| i.report.state()).collect()
    }

    /// Steps down: a master sends a priority-0 advert (a backup takes over after Skew_Time), the
    /// VIPs are removed, then the tasks end. Waits at most 5 s for all of them.
    pub async fn shutdown(self) {
        for i in &self.instances {
            let _ = i.commands.send(Command::Stop);
        }
        let tasks = futures_util::future::join_all(self.instances.into_iter().map(|i| i.task));
        if tokio::time::timeout(Duration::from_secs(5), tasks)
            .await
            .is_err()
        {
            tracing::warn!("vrrp did not stop within 5s");
        }
    }
}

/// Looks up the interface and the source address of one instance and opens its sockets.
async fn prepare(
    cfg: InstanceConfig,
    netlink: &Arc<netlink::Netlink>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    siblings: Vec<u8>,
) -> Result<instance::Instance, StartError> {
    let link = netlink
        .link(&cfg.interface)
        .await
        .map_err(|e| {
            StartError::io(
                format!("look up interface {}", cfg.interface),
                e,
                "CAP_NET_ADMIN",
            )
        })?
        .ok_or_else(|| StartError::NoInterface(cfg.interface.clone()))?;
    let vips = cfg.vips();
    let src = source_address(&cfg, netlink, link.index, &vips).await?;
    let peers = cfg.peers_v4();
    let sock = socket::VrrpSocket::open(&cfg.interface, link.index, src, &peers).map_err(|e| {
        StartError::io(
            format!("open the VRRP socket on {}", cfg.interface),
            e,
            "CAP_NET_RAW",
        )
    })?;
    let garp = garp::GarpSocket::open(link.index)
        .map_err(|e| StartError::io("open the gratuitous ARP socket", e, "CAP_NET_RAW"))?;
    let report = Arc::new(status::Report::new(status::Facts::new(&cfg, src)));
    let machine = state::Machine::new(state::Params::from_config(&cfg, src));
    tracing::info!(instance = %cfg.name, summary = %cfg.summary(), source = %src, "vrrp starting as backup");
    Ok(instance::Instance {
        cfg,
        vips,
        link,
        netlink: netlink.clone(),
        sock,
        garp,
        machine,
        report,
        ready,
        siblings,
        garp_due: Vec::new(),
        garp_refresh_at: None,
        is_ready: false,
        unready_since: None,
        fault: Vec::new(),
    })
}

/// `unicast_src`, or the interface's first primary IPv4 address that is not one of our VIPs.
async fn source_address(
    cfg: &InstanceConfig,
    netlink: &netlink::Netlink,
    index: u32,
    vips: &[Vip],
) -> Result<Ipv4Addr, StartError> {
    if let Some(std::net::IpAddr::V4(src)) = cfg.unicast_src {
        return Ok(src);
    }
    let addrs = netlink.ipv4_addrs(index).await.map_err(|e| {
        StartError::io(
            format!("list the addresses of {}", cfg.interface),
            e,
            "CAP_NET_ADMIN",
        )
    })?;
    let own = |a: &netlink::IfAddr| !vips.iter().any(|v| v.addr == a.addr);
    addrs
        .iter()
        .find(|a| !a.secondary && own(a))
        .or_else(|| addrs.iter().find(|a| own(a)))
        .map(|a| a.addr)
        .ok_or_else(|| StartError::NoAddress(cfg.interface.clone()))
}
