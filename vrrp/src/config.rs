//! The `[vrrp]` section: fields, defaults, validation and the one-line summary.
//!
//! Names follow Keepalived's `vrrp_instance` words (`interface`, `virtual_router_id` → `vrid`,
//! `priority`, `advert_int`, `virtual_ipaddress` → `vip`, `preempt_delay`, `unicast_peer`,
//! `unicast_src_ip`, `notify`) so an operator can carry a Keepalived config over field by field.

use serde::Deserialize;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Priority drop applied while the proxy is not ready, unless `track` says otherwise: 254 takes any
/// configured priority down to 1, so an instance that cannot serve never keeps or takes the virtual
/// IP from a peer that can.
pub const DEFAULT_TRACK: u8 = 254;

/// `[vrrp]`: one VRRPv3 virtual router (IPv4) whose master holds the virtual IPs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VrrpConfig {
    /// The interface adverts are sent and received on and the VIPs are added to, e.g. `eth0`.
    pub interface: String,
    /// Virtual router id, 1-255; every member of one virtual router uses the same.
    pub vrid: u8,
    /// This instance's priority, 1-254 (higher wins; 255 is the address owner's, 0 means "stepping
    /// down"). Default 100, as Keepalived.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Interval between the master's adverts: a multiple of 10 ms from 10 ms to 40.95 s (the packet
    /// carries centiseconds in 12 bits). Default 1 s.
    #[serde(default = "default_advert_int", with = "humantime_serde")]
    pub advert_int: Duration,
    /// Virtual IPv4 addresses in CIDR form (`192.0.2.100/24`; a bare address means `/32`).
    pub vip: Vec<String>,
    /// Take the VIP from a lower-priority master (default true).
    #[serde(default = "default_true")]
    pub preempt: bool,
    /// With `preempt`: how long a backup lets a lower-priority master keep the VIP after it first
    /// sees it, before taking over. Default 0.
    #[serde(default, with = "humantime_serde")]
    pub preempt_delay: Duration,
    /// Send adverts to these peers (unicast) instead of the multicast group 224.0.0.18; adverts from
    /// other sources are then dropped.
    #[serde(default)]
    pub unicast_peers: Vec<IpAddr>,
    /// Source address of unicast adverts (default: the interface's primary IPv4 address).
    #[serde(default)]
    pub unicast_src: Option<IpAddr>,
    /// Priority drop while the proxy is not ready (no listener bound, or no pool with a healthy
    /// server); the effective priority never goes below 1. Default [`DEFAULT_TRACK`]; 0 disables.
    #[serde(default = "default_track")]
    pub track: u8,
    /// Command run (through `/bin/sh -c`) on every state change with the new state (`MASTER`,
    /// `BACKUP` or `STOP`) appended as its last argument.
    #[serde(default)]
    pub notify: Option<String>,
}

fn default_priority() -> u8 {
    100
}
fn default_advert_int() -> Duration {
    Duration::from_secs(1)
}
fn default_true() -> bool {
    true
}
fn default_track() -> u8 {
    DEFAULT_TRACK
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
    /// Every problem with this section at once, each naming the field and what to do.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.interface.trim().is_empty() {
            errs.push(
                "vrrp.interface: must name the interface for adverts and VIPs, e.g. \"eth0\""
                    .into(),
            );
        } else if self.interface.len() > 15 || self.interface.contains(['/', ' ']) {
            errs.push(format!(
                "vrrp.interface: {:?} is not a valid interface name",
                self.interface
            ));
        }
        if self.vrid == 0 {
            errs.push(
                "vrrp.vrid: 0 is not a virtual router id; use 1-255 (the same on every member)"
                    .into(),
            );
        }
        match self.priority {
            0 => errs.push(
                "vrrp.priority: 0 is reserved for a master that is stepping down; use 1-254".into(),
            ),
            255 => {
                errs.push("vrrp.priority: 255 is reserved for the address owner; use 1-254".into())
            }
            _ => {}
        }
        errs.extend(advert_int_problem(self.advert_int));
        if self.vip.is_empty() {
            errs.push(
                "vrrp.vip: list at least one virtual address, e.g. [\"192.0.2.100/24\"]".into(),
            );
        }
        if self.vip.len() > 255 {
            errs.push(format!(
                "vrrp.vip: {} addresses; an advert carries at most 255",
                self.vip.len()
            ));
        }
        let mut seen = Vec::new();
        for v in &self.vip {
            match parse_vip(v) {
                Ok(vip) if seen.contains(&vip.addr) => {
                    errs.push(format!("vrrp.vip: {} is listed twice", vip.addr))
                }
                Ok(vip) => seen.push(vip.addr),
                Err(e) => errs.push(format!("vrrp.vip: {e}")),
            }
        }
        if !self.preempt && !self.preempt_delay.is_zero() {
            errs.push("vrrp.preempt_delay: only applies with preempt = true; remove it or set preempt = true".into());
        }
        if self.preempt_delay > Duration::from_secs(1000) {
            errs.push("vrrp.preempt_delay: at most 1000s".into());
        }
        let mut peers = Vec::new();
        for p in &self.unicast_peers {
            match p {
                IpAddr::V6(_) => errs.push(format!("vrrp.unicast_peers: {p} is IPv6; VRRP here is IPv4 only")),
                IpAddr::V4(a) if a.is_multicast() || a.is_unspecified() || a.is_broadcast() => {
                    errs.push(format!("vrrp.unicast_peers: {p} is not a unicast address"))
                }
                IpAddr::V4(a) if seen.contains(a) => {
                    errs.push(format!("vrrp.unicast_peers: {p} is one of the virtual addresses; list the peers' own addresses"))
                }
                _ if peers.contains(p) => errs.push(format!("vrrp.unicast_peers: {p} is listed twice")),
                _ => peers.push(*p),
            }
        }
        match self.unicast_src {
            Some(IpAddr::V6(a)) => errs.push(format!("vrrp.unicast_src: {a} is IPv6; use this host's IPv4 address")),
            Some(src) if self.unicast_peers.is_empty() => {
                errs.push(format!("vrrp.unicast_src: {src} is set but unicast_peers is empty; list the peers or remove it"))
            }
            Some(src) if self.unicast_peers.contains(&src) => {
                errs.push(format!("vrrp.unicast_src: {src} is also listed in unicast_peers"))
            }
            _ => {}
        }
        if let Some(cmd) = &self.notify {
            if cmd.trim().is_empty() {
                errs.push("vrrp.notify: empty command; remove it or name a program".into());
            }
        }
        errs
    }

    /// The virtual IP addresses (without prefix length); invalid entries are skipped.
    pub fn vip_addrs(&self) -> Vec<IpAddr> {
        self.vips()
            .into_iter()
            .map(|v| IpAddr::V4(v.addr))
            .collect()
    }

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
        if self.notify.is_some() {
            s.push_str(", notify");
        }
        s
    }
}

/// Why a reload from `old` to `new` cannot be applied live: one line per setting that needs a
/// restart (`interface`, `vrid`, `vip`, `unicast_peers`, `unicast_src`). Empty when it can. Pure,
/// so a reload can refuse before it changes anything.
pub fn restart_needed(old: &VrrpConfig, new: &VrrpConfig) -> Vec<String> {
    let fixed = [
        ("interface", old.interface == new.interface),
        ("vrid", old.vrid == new.vrid),
        ("vip", old.vips() == new.vips()),
        ("unicast_peers", old.unicast_peers == new.unicast_peers),
        ("unicast_src", old.unicast_src == new.unicast_src),
    ];
    fixed
        .iter()
        .filter(|(_, same)| !same)
        .map(|(field, _)| {
            format!(
                "vrrp.{field}: changing it needs a restart of setgate; still running with the old [vrrp] settings"
            )
        })
        .collect()
}

fn advert_int_problem(d: Duration) -> Option<String> {
    let ms = d.as_millis();
    let exact = d.subsec_nanos().is_multiple_of(10_000_000);
    if !exact {
        Some(format!(
            "vrrp.advert_int: {} is not a multiple of 10ms (adverts carry centiseconds)",
            humantime::format_duration(d)
        ))
    } else if !(10..=40_950).contains(&ms) {
        Some(format!(
            "vrrp.advert_int: {} is out of range; use 10ms to 40.95s",
            humantime::format_duration(d)
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid section with `extra` keys set over it.
    fn parse(extra: &str) -> VrrpConfig {
        let mut t: toml::Table =
            toml::from_str("interface = \"eth0\"\nvrid = 51\nvip = [\"192.0.2.100/24\"]").unwrap();
        t.extend(toml::from_str::<toml::Table>(extra).unwrap());
        t.try_into().unwrap()
    }

    #[test]
    fn defaults_are_keepalived_like() {
        let c = parse("");
        assert_eq!(c.priority, 100);
        assert_eq!(c.advert_int, Duration::from_secs(1));
        assert!(c.preempt);
        assert_eq!(c.preempt_delay, Duration::ZERO);
        assert_eq!(c.track, DEFAULT_TRACK);
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.advert_centis(), 100);
        assert_eq!(
            c.vip_addrs(),
            vec!["192.0.2.100".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let r: Result<VrrpConfig, _> = toml::from_str(
            "interface = \"eth0\"\nvrid = 1\nvip = [\"192.0.2.1\"]\nvirtual_router_id = 1\n",
        );
        assert!(r.unwrap_err().to_string().contains("virtual_router_id"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let c = parse(
            "priority = 255\nadvert_int = \"105ms\"\nunicast_src = \"192.0.2.1\"\nnotify = \" \"",
        );
        let errs = c.validate();
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(errs.contains(
            &"vrrp.priority: 255 is reserved for the address owner; use 1-254".to_string()
        ));
        assert!(errs
            .iter()
            .any(|e| e.starts_with("vrrp.advert_int: 105ms is not a multiple of 10ms")));
        assert!(errs.iter().any(|e| e.starts_with("vrrp.unicast_src:")));
        assert!(errs.iter().any(|e| e.starts_with("vrrp.notify:")));
    }

    #[test]
    fn advert_int_range() {
        for (v, ok) in [
            ("10ms", true),
            ("40s 950ms", true),
            ("0s", false),
            ("41s", false),
            ("5ms", false),
        ] {
            let c = parse(&format!("advert_int = \"{v}\""));
            assert_eq!(c.validate().is_empty(), ok, "{v}: {:?}", c.validate());
        }
        assert_eq!(parse("advert_int = \"40s 950ms\"").advert_centis(), 4095);
        assert_eq!(parse("advert_int = \"10ms\"").advert_centis(), 1);
    }

    #[test]
    fn bad_fields_each_name_themselves() {
        let cases = [
            ("vrid = 0", "vrrp.vrid:"),
            ("priority = 0", "vrrp.priority: 0"),
            ("vip = []", "vrrp.vip: list at least one"),
            ("vip = [\"2001:db8::1/64\"]", "IPv6 virtual addresses"),
            ("vip = [\"192.0.2.1/33\"]", "prefix length"),
            ("vip = [\"banana\"]", "not an address"),
            ("vip = [\"192.0.2.1\", \"192.0.2.1/24\"]", "listed twice"),
            ("vip = [\"224.0.0.18\"]", "cannot be a virtual address"),
            (
                "preempt = false\npreempt_delay = \"5s\"",
                "vrrp.preempt_delay:",
            ),
            (
                "unicast_peers = [\"192.0.2.5\", \"192.0.2.5\"]",
                "listed twice",
            ),
            (
                "unicast_peers = [\"192.0.2.100\"]",
                "one of the virtual addresses",
            ),
            ("unicast_peers = [\"2001:db8::2\"]", "IPv4 only"),
            ("interface = \"\"", "vrrp.interface:"),
        ];
        for (extra, want) in cases {
            let errs = parse(extra).validate();
            assert!(errs.iter().any(|e| e.contains(want)), "{extra}: {errs:?}");
        }
    }

    #[test]
    fn vip_forms() {
        assert_eq!(
            parse_vip("192.0.2.7").unwrap(),
            Vip {
                addr: Ipv4Addr::new(192, 0, 2, 7),
                prefix: 32
            }
        );
        assert_eq!(
            parse_vip("192.0.2.7/24").unwrap().to_string(),
            "192.0.2.7/24"
        );
    }

    #[test]
    fn summary_names_the_essentials() {
        let c = parse("priority = 150\nadvert_int = \"100ms\"\nunicast_peers = [\"192.0.2.2\"]");
        assert_eq!(
            c.summary(),
            "VRID 51 on eth0, priority 150, advert every 100ms, preempt, VIP 192.0.2.100/24, \
             unicast to 192.0.2.2, priority -254 while not ready"
        );
    }
}
