//! The `[vrrp]` section: fields, defaults, inheritance, validation and the one-line summary.
//!
//! Names follow Keepalived's `vrrp_instance` words (`interface`, `virtual_router_id` → `vrid`,
//! `priority`, `advert_int`, `virtual_ipaddress` → `vip`, `preempt_delay`, `unicast_peer`,
//! `unicast_src_ip`, `track_interface`, `garp_master_refresh`, `notify`, `notify_master`,
//! `notify_backup`, `notify_fault`, `notify_stop`) so an operator can carry a Keepalived config
//! over field by field.
//!
//! Shape: `[vrrp]` with a `vrid` and a `vip` is one virtual router, as it always was. Each
//! `[[vrrp.instance]]` adds another, with its own `vrid` and `vip`; every other setting it does
//! not set is inherited from `[vrrp]`. A `[vrrp]` without `vrid` and `vip` but with instances only
//! holds the shared settings. [`VrrpConfig::instances`] resolves the section into one
//! [`InstanceConfig`] per virtual router.

mod check;

use serde::Deserialize;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Priority drop applied while the proxy is not ready, unless `track` says otherwise: 254 takes any
/// configured priority down to 1, so an instance that cannot serve never keeps or takes the virtual
/// IP from a peer that can.
pub const DEFAULT_TRACK: u8 = 254;

/// `[vrrp]` as written (and, with the same fields, each `[[vrrp.instance]]`). Every field is
/// optional here so an instance can tell "inherit" from "set"; [`VrrpConfig::instances`] applies
/// the defaults and the inheritance.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VrrpConfig {
    /// The instance's name: in `/api/vrrp`, the metrics' `instance` label and the notify
    /// arguments. Default `VI_<vrid>`.
    #[serde(default)]
    pub name: Option<String>,
    /// The interface adverts are sent and received on and the VIPs are added to, e.g. `eth0`.
    #[serde(default)]
    pub interface: Option<String>,
    /// Virtual router id, 1-255; every member of one virtual router uses the same.
    #[serde(default)]
    pub vrid: Option<u8>,
    /// This instance's priority, 1-254 (higher wins; 255 is the address owner's, 0 means "stepping
    /// down"). Default 100, as Keepalived.
    #[serde(default)]
    pub priority: Option<u8>,
    /// Interval between the master's adverts: a multiple of 10 ms from 10 ms to 40.95 s (the packet
    /// carries centiseconds in 12 bits). Default 1 s.
    #[serde(default, with = "humantime_serde")]
    pub advert_int: Option<Duration>,
    /// Virtual IPv4 addresses in CIDR form (`192.0.2.100/24`; a bare address means `/32`).
    #[serde(default)]
    pub vip: Option<Vec<String>>,
    /// Take the VIP from a lower-priority master (default true).
    #[serde(default)]
    pub preempt: Option<bool>,
    /// With `preempt`: how long a backup lets a lower-priority master keep the VIP after it first
    /// sees it, before taking over. Default 0.
    #[serde(default, with = "humantime_serde")]
    pub preempt_delay: Option<Duration>,
    /// Send adverts to these peers (unicast) instead of the multicast group 224.0.0.18; adverts from
    /// other sources are then dropped.
    #[serde(default)]
    pub unicast_peers: Option<Vec<IpAddr>>,
    /// Source address of unicast adverts (default: the interface's primary IPv4 address).
    #[serde(default)]
    pub unicast_src: Option<IpAddr>,
    /// Priority drop while the proxy is not ready (no listener bound, or no pool with a healthy
    /// server); the effective priority never goes below 1. Default [`DEFAULT_TRACK`]; 0 disables.
    #[serde(default)]
    pub track: Option<u8>,
    /// More interfaces whose loss puts the instance in FAULT (its own `interface` always does).
    #[serde(default)]
    pub track_interface: Option<Vec<String>>,
    /// When the proxy has been not ready this long, the instance goes to FAULT (no adverts, no
    /// VIPs) until it is ready again. Default: never (only `track` lowers the priority).
    #[serde(default, with = "humantime_serde")]
    pub track_fault_after: Option<Duration>,
    /// While master, announce the VIPs with gratuitous ARPs again at this interval. Default 0: only
    /// at takeover.
    #[serde(default, with = "humantime_serde")]
    pub garp_master_refresh: Option<Duration>,
    /// Command run (through `/bin/sh -c`) on every state change; what it is given is
    /// `notify_args`'s choice.
    #[serde(default)]
    pub notify: Option<String>,
    /// What `notify` gets appended: `"state"` (default): the new state; `"keepalived"`:
    /// `INSTANCE <name> <state> <priority>`, as Keepalived's `notify`.
    #[serde(default)]
    pub notify_args: Option<NotifyArgs>,
    /// Command run on becoming MASTER, as written (Keepalived's `notify_master`).
    #[serde(default)]
    pub notify_master: Option<String>,
    /// Command run on becoming BACKUP, as written.
    #[serde(default)]
    pub notify_backup: Option<String>,
    /// Command run on entering FAULT, as written.
    #[serde(default)]
    pub notify_fault: Option<String>,
    /// Command run on stopping, as written.
    #[serde(default)]
    pub notify_stop: Option<String>,
    /// `[[vrrp.instance]]`: more virtual routers (only in `[vrrp]` itself).
    #[serde(default)]
    pub instance: Vec<VrrpConfig>,
}

/// What the `notify` command is given after its own arguments.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NotifyArgs {
    /// The new state only (`MASTER`, `BACKUP`, `FAULT`, `STOP`).
    #[default]
    State,
    /// Keepalived's four: `INSTANCE`, the instance name, the new state, the priority.
    Keepalived,
}

/// The commands run on state changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notify {
    /// On every change, with [`Notify::args`] appended.
    pub any: Option<String>,
    /// What `any` is given.
    pub args: NotifyArgs,
    /// On MASTER, as written.
    pub master: Option<String>,
    /// On BACKUP, as written.
    pub backup: Option<String>,
    /// On FAULT, as written.
    pub fault: Option<String>,
    /// On STOP, as written.
    pub stop: Option<String>,
}

impl Notify {
    /// Whether any command is configured.
    pub fn is_set(&self) -> bool {
        self.any.is_some()
            || self.master.is_some()
            || self.backup.is_some()
            || self.fault.is_some()
            || self.stop.is_some()
    }
}

/// One virtual router with every default and inherited setting applied.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceConfig {
    /// Where it is written: `vrrp` or `vrrp.instance[N]`; error messages start with it.
    pub path: String,
    /// Its name (`VI_<vrid>` unless set).
    pub name: String,
    /// See [`VrrpConfig::interface`].
    pub interface: String,
    /// See [`VrrpConfig::vrid`].
    pub vrid: u8,
    /// See [`VrrpConfig::priority`].
    pub priority: u8,
    /// See [`VrrpConfig::advert_int`].
    pub advert_int: Duration,
    /// See [`VrrpConfig::vip`].
    pub vip: Vec<String>,
    /// See [`VrrpConfig::preempt`].
    pub preempt: bool,
    /// See [`VrrpConfig::preempt_delay`].
    pub preempt_delay: Duration,
    /// See [`VrrpConfig::unicast_peers`].
    pub unicast_peers: Vec<IpAddr>,
    /// See [`VrrpConfig::unicast_src`].
    pub unicast_src: Option<IpAddr>,
    /// See [`VrrpConfig::track`].
    pub track: u8,
    /// See [`VrrpConfig::track_interface`].
    pub track_interface: Vec<String>,
    /// See [`VrrpConfig::track_fault_after`].
    pub track_fault_after: Option<Duration>,
    /// See [`VrrpConfig::garp_master_refresh`]; zero: off.
    pub garp_master_refresh: Duration,
    /// The notify commands.
    pub notify: Notify,
}

/// One virtual address with its prefix length, as added to the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vip {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length (0-32).
    pub prefix: u8,
}

impl std::fmt::Display for Vip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parses `A.B.C.D/N` or `A.B.C.D` (= /32); the error says what is wrong.
pub fn parse_vip(s: &str) -> Result<Vip, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an address in CIDR form such as 192.0.2.100/24"))?;
    let IpAddr::V4(addr) = ip else {
        return Err(format!(
            "{s:?}: IPv6 virtual addresses are not supported; use IPv4"
        ));
    };
    let prefix = match prefix {
        None => 32,
        Some(p) => match p.trim().parse::<u8>() {
            Ok(n) if n <= 32 => n,
            _ => return Err(format!("{s:?}: the prefix length must be 0-32")),
        },
    };
    if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() || addr.is_loopback() {
        return Err(format!(
            "{s:?} cannot be a virtual address (unspecified, multicast, broadcast or loopback)"
        ));
    }
    Ok(Vip { addr, prefix })
}

impl VrrpConfig {
    /// Whether `[vrrp]` itself is a virtual router (it has a `vrid` or a `vip`, or there is no
    /// `[[vrrp.instance]]`), rather than only the settings its instances share.
    pub fn is_instance(&self) -> bool {
        self.vrid.is_some() || self.vip.is_some() || self.instance.is_empty()
    }

    /// Every virtual router of the section, `[vrrp]`'s own first, with defaults and inherited
    /// settings applied. Run [`VrrpConfig::validate`] first: missing required fields come out as
    /// zero or empty here.
    pub fn instances(&self) -> Vec<InstanceConfig> {
        let mut out = Vec::new();
        if self.is_instance() {
            out.push(self.resolve("vrrp".into(), &VrrpConfig::default()));
        }
        for (i, inst) in self.instance.iter().enumerate() {
            out.push(inst.resolve(format!("vrrp.instance[{i}]"), self));
        }
        out
    }

    /// This section's settings over `shared`'s, over the defaults.
    fn resolve(&self, path: String, shared: &VrrpConfig) -> InstanceConfig {
        macro_rules! pick {
            ($f:ident, $default:expr) => {
                self.$f
                    .clone()
                    .or_else(|| shared.$f.clone())
                    .unwrap_or($default)
            };
        }
        let vrid = self.vrid.unwrap_or(0);
        InstanceConfig {
            name: self.name.clone().unwrap_or_else(|| format!("VI_{vrid}")),
            path,
            interface: pick!(interface, String::new()),
            vrid,
            priority: pick!(priority, 100),
            advert_int: pick!(advert_int, Duration::from_secs(1)),
            vip: self.vip.clone().unwrap_or_default(),
            preempt: pick!(preempt, true),
            preempt_delay: pick!(preempt_delay, Duration::ZERO),
            unicast_peers: pick!(unicast_peers, Vec::new()),
            unicast_src: self.unicast_src.or(shared.unicast_src),
            track: pick!(track, DEFAULT_TRACK),
            track_interface: pick!(track_interface, Vec::new()),
            track_fault_after: self.track_fault_after.or(shared.track_fault_after),
            garp_master_refresh: pick!(garp_master_refresh, Duration::ZERO),
            notify: Notify {
                any: self.notify.clone().or_else(|| shared.notify.clone()),
                args: pick!(notify_args, NotifyArgs::State),
                master: self
                    .notify_master
                    .clone()
                    .or_else(|| shared.notify_master.clone()),
                backup: self
                    .notify_backup
                    .clone()
                    .or_else(|| shared.notify_backup.clone()),
                fault: self
                    .notify_fault
                    .clone()
                    .or_else(|| shared.notify_fault.clone()),
                stop: self
                    .notify_stop
                    .clone()
                    .or_else(|| shared.notify_stop.clone()),
            },
        }
    }

    /// Every problem with this section at once, each naming the field and what to do.
    pub fn validate(&self) -> Vec<String> {
        check::validate(self)
    }

    /// The virtual IP addresses of every instance (without prefix length); invalid entries are
    /// skipped.
    pub fn vip_addrs(&self) -> Vec<IpAddr> {
        self.instances()
            .iter()
            .flat_map(|i| i.vips())
            .map(|v| IpAddr::V4(v.addr))
            .collect()
    }

    /// One line for `setgate check`: the instance's summary, or each instance's after its name.
    pub fn summary(&self) -> String {
        let instances = self.instances();
        match instances.as_slice() {
            [one] if self.instance.is_empty() => one.summary(),
            many => {
                let each: Vec<String> = many
                    .iter()
                    .map(|i| format!("{}: {}", i.name, i.summary()))
                    .collect();
                format!("{} instances; {}", many.len(), each.join("; "))
            }
        }
    }
}

impl InstanceConfig {
    /// The virtual addresses with their prefix lengths; invalid entries are skipped.
    pub fn vips(&self) -> Vec<Vip> {
        self.vip.iter().filter_map(|v| parse_vip(v).ok()).collect()
    }

    /// The advert interval in centiseconds, as carried by the packet.
    pub fn advert_centis(&self) -> u16 {
        (self.advert_int.as_millis() / 10).clamp(1, 0x0fff) as u16
    }

    /// The unicast peers as IPv4 addresses (empty: multicast).
    pub fn peers_v4(&self) -> Vec<Ipv4Addr> {
        self.unicast_peers
            .iter()
            .filter_map(|p| match p {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .collect()
    }

    /// The interfaces whose loss means FAULT: our own, then `track_interface`.
    pub fn fault_interfaces(&self) -> Vec<String> {
        let mut all = vec![self.interface.clone()];
        for i in &self.track_interface {
            if !all.contains(i) {
                all.push(i.clone());
            }
        }
        all
    }

    /// One line for `setgate check`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "VRID {} on {}, priority {}, advert every {}, {}",
            self.vrid,
            self.interface,
            self.priority,
            humantime::format_duration(self.advert_int),
            if self.preempt {
                "preempt"
            } else {
                "no preempt"
            }
        );
        if !self.preempt_delay.is_zero() {
            let _ = write!(
                s,
                " after {}",
                humantime::format_duration(self.preempt_delay)
            );
        }
        let _ = write!(s, ", VIP {}", self.vip.join(" "));
        if self.unicast_peers.is_empty() {
            s.push_str(", multicast 224.0.0.18");
        } else {
            let peers: Vec<String> = self.unicast_peers.iter().map(|p| p.to_string()).collect();
            let _ = write!(s, ", unicast to {}", peers.join(" "));
        }
        match self.track {
            0 => s.push_str(", readiness not tracked"),
            t => {
                let _ = write!(s, ", priority -{t} while not ready");
            }
        }
        if let Some(d) = self.track_fault_after {
            let _ = write!(
                s,
                ", FAULT after {} not ready",
                humantime::format_duration(d)
            );
        }
        if !self.track_interface.is_empty() {
            let _ = write!(
                s,
                ", FAULT while {} is down",
                self.fault_interfaces().join(" or ")
            );
        }
        if !self.garp_master_refresh.is_zero() {
            let _ = write!(
                s,
                ", gratuitous ARP every {} as master",
                humantime::format_duration(self.garp_master_refresh)
            );
        }
        if self.notify.is_set() {
            s.push_str(", notify");
        }
        s
    }
}

/// Why a reload from `old` to `new` cannot be applied live: one line per setting that needs a
/// restart (`name`, `interface`, `vrid`, `vip`, `unicast_peers`, `unicast_src` of any instance,
/// or instances added or removed). Empty when it can. Pure, so a reload can refuse before it
/// changes anything.
pub fn restart_needed(old: &VrrpConfig, new: &VrrpConfig) -> Vec<String> {
    let (olds, news) = (old.instances(), new.instances());
    let paths = |v: &[InstanceConfig]| v.iter().map(|i| i.path.clone()).collect::<Vec<_>>();
    if paths(&olds) != paths(&news) {
        return vec![format!(
            "vrrp.instance: adding or removing instances needs a restart of setgate ({} running, {} in the file); still running with the old [vrrp] settings",
            olds.len(),
            news.len()
        )];
    }
    let raw = |c: &VrrpConfig, path: &str| -> Option<String> {
        match path.strip_prefix("vrrp.instance[") {
            None => c.name.clone(),
            Some(rest) => {
                let i: usize = rest.trim_end_matches(']').parse().ok()?;
                c.instance.get(i)?.name.clone()
            }
        }
    };
    let mut out = Vec::new();
    for (o, n) in olds.iter().zip(&news) {
        let fixed = [
            ("name", raw(old, &o.path) == raw(new, &n.path)),
            ("interface", o.interface == n.interface),
            ("vrid", o.vrid == n.vrid),
            ("vip", o.vips() == n.vips()),
            ("unicast_peers", o.unicast_peers == n.unicast_peers),
            ("unicast_src", o.unicast_src == n.unicast_src),
        ];
        out.extend(fixed.iter().filter(|(_, same)| !same).map(|(field, _)| {
            format!(
                "{}.{field}: changing it needs a restart of setgate; still running with the old [vrrp] settings",
                o.path
            )
        }));
    }
    out
}

#[cfg(test)]
mod tests;
