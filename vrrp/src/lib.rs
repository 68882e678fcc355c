//! VRRPv3 for setgate: instances elect a master among themselves (RFC 5798 as updated by RFC
//! 9568, IPv4) and the master holds the virtual IPs clients point at — what Keepalived does, plus
//! what Keepalived needs a polled script for: stepping down while this instance's own proxy is not
//! ready (`track`).
//!
//! Modules, from the wire up:
//! - [`config`]: the `[vrrp]` section, its defaults and its validation.
//! - [`packet`]: advert encode/decode with the pseudo-header checksum; pure, fuzzed.
//! - [`state`]: the Backup/Master state machine; pure, driven by explicit instants.
//! - [`socket`]: the raw IP protocol 112 socket (multicast 224.0.0.18 or unicast peers, TTL 255).
//! - [`netlink`]: interface facts and adding/removing the VIPs (rtnetlink).
//! - [`garp`]: gratuitous ARP announcements over AF_PACKET.
//! - [`notify`]: the state-change command.
//! - [`status`]: the `/api/vrrp` document and the `setgate_vrrp_*` metrics.
//! - [`error`]: start-up errors that say what to do.
//! - `instance`: the task that ties them together.
//!
//! Use: [`Vrrp::start`] after the proxy's listeners are bound (listeners on a VIP bind with
//! IP_FREEBIND), serve [`Vrrp::status_fn`] at `/api/vrrp`, pass a changed section to
//! [`Vrrp::reload`] on SIGHUP, and call [`Vrrp::shutdown`] first on SIGTERM so a backup takes over
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

pub use config::{Vip, VrrpConfig, DEFAULT_TRACK};
pub use error::{StartError, VrrpError};
pub use state::State;

use instance::Command;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// A running VRRP instance. [`Vrrp::shutdown`] steps down and waits for it; dropping the handle
/// makes the task step down in the background, as long as the runtime still runs.
pub struct Vrrp {
    report: Arc<status::Report>,
    /// To the instance task: reloads and the stop.
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
    /// The settings running now, to tell live changes from those that need a restart. Only
    /// `reload` touches it.
    running: Mutex<VrrpConfig>,
}

impl std::fmt::Debug for Vrrp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vrrp")
            .field("state", &self.report.state())
            .finish()
    }
}

impl Vrrp {
    /// Checks capabilities, the interface and its address, opens the sockets and starts as Backup
    /// (removing any of our VIPs a crashed run left on the interface). `ready` is the proxy's
    /// readiness: while it is false the advertised priority drops by `track`.
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
        let netlink = netlink::Netlink::connect()
            .map_err(|e| StartError::io("open a netlink socket", e, "CAP_NET_ADMIN"))?;
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
        let src = source_address(&cfg, &netlink, link.index, &vips).await?;
        let peers = cfg.peers_v4();
        let sock =
            socket::VrrpSocket::open(&cfg.interface, link.index, src, &peers).map_err(|e| {
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
        tracing::info!(summary = %cfg.summary(), source = %src, "vrrp starting as backup");
        let running = Mutex::new(cfg.clone());
        let instance = instance::Instance {
            cfg,
            vips,
            link,
            netlink,
            sock,
            garp,
            machine,
            report: report.clone(),
            ready,
            garp_due: Vec::new(),
            is_ready: false,
        };
        let (commands, received) = mpsc::unbounded_channel();
        let task = tokio::spawn(instance.run(received));
        Ok(Vrrp {
            report,
            commands,
            task,
            running,
        })
    }

    /// Applies a changed `[vrrp]` section without a restart (SIGHUP). Live: `priority`,
    /// `advert_int`, `preempt`, `preempt_delay`, `track`, `notify` — a master advertises a new
    /// priority at once, so lowering it below a backup's moves the VIP within
    /// Master_Down_Interval. `interface`, `vrid`, `vip`, `unicast_peers` and `unicast_src` need a
    /// restart: a change to any of them (or an invalid section) is refused whole, with every
    /// reason, and the running settings stay.
    pub fn reload(&self, cfg: VrrpConfig) -> Result<(), Vec<String>> {
        let mut errs = cfg.validate();
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        errs.extend(config::restart_needed(&running, &cfg));
        if !errs.is_empty() {
            return Err(errs);
        }
        if *running != cfg {
            let _ = self.commands.send(Command::Reload(Box::new(cfg.clone())));
            *running = cfg;
        }
        Ok(())
    }

    /// The `/api/vrrp` document: state, current master, priority (configured and effective),
    /// readiness, transitions, advert counters.
    pub fn status_fn(&self) -> Arc<dyn Fn() -> serde_json::Value + Send + Sync> {
        let report = self.report.clone();
        Arc::new(move || report.to_json())
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.report.state()
    }

    /// Steps down: a master sends a priority-0 advert (a backup takes over after Skew_Time), the
    /// VIPs are removed, then the task ends. Waits at most 5 s.
    pub async fn shutdown(self) {
        let _ = self.commands.send(Command::Stop);
        if tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            tracing::warn!("vrrp did not stop within 5s");
        }
    }
}

/// `unicast_src`, or the interface's first primary IPv4 address that is not one of our VIPs.
async fn source_address(
    cfg: &VrrpConfig,
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
