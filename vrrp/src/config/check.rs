//! Validation of `[vrrp]`: each field is checked where it is written (so an inherited mistake is
//! reported once, under `vrrp.`), then each resolved instance, then what instances must not share.

use super::{parse_vip, InstanceConfig, VrrpConfig};
use std::collections::btree_map::{BTreeMap, Entry};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Every problem with the section at once, each naming the field and what to do.
pub fn validate(cfg: &VrrpConfig) -> Vec<String> {
    let mut errs = Vec::new();
    written(cfg, "vrrp", &mut errs);
    if cfg.is_instance() {
        required(cfg, "vrrp", &mut errs);
    }
    for (i, inst) in cfg.instance.iter().enumerate() {
        let path = format!("vrrp.instance[{i}]");
        written(inst, &path, &mut errs);
        required(inst, &path, &mut errs);
        if !inst.instance.is_empty() {
            errs.push(format!(
                "{path}.instance: instances do not nest; list every [[vrrp.instance]] under [vrrp]"
            ));
        }
    }
    let instances = cfg.instances();
    for inst in &instances {
        resolved(inst, &mut errs);
    }
    shared(&instances, &mut errs);
    errs
}

/// `vrid` and `vip` belong to each virtual router and are never inherited.
fn required(c: &VrrpConfig, path: &str, errs: &mut Vec<String>) {
    if c.vrid.is_none() {
        errs.push(format!(
            "{path}.vrid: missing; give each virtual router its id, 1-255 (the same on every member)"
        ));
    }
    if c.vip.is_none() {
        errs.push(format!(
            "{path}.vip: missing; list the virtual addresses, e.g. [\"192.0.2.100/24\"]"
        ));
    }
}

/// The fields `c` sets, each on its own.
fn written(c: &VrrpConfig, p: &str, errs: &mut Vec<String>) {
    if let Some(name) = &c.name {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "_-.".contains(ch));
        if !ok {
            errs.push(format!(
                "{p}.name: {name:?} must be 1-64 letters, digits, '_', '-' or '.', e.g. \"VI_51\""
            ));
        }
    }
    // An empty one is reported by `resolved`, where a missing one is too.
    if let Some(iface) = c.interface.as_ref().filter(|i| !i.trim().is_empty()) {
        if let Some(e) = interface_problem(iface) {
            errs.push(format!("{p}.interface: {e}"));
        }
    }
    if c.vrid == Some(0) {
        errs.push(format!(
            "{p}.vrid: 0 is not a virtual router id; use 1-255 (the same on every member)"
        ));
    }
    match c.priority {
        Some(0) => errs.push(format!(
            "{p}.priority: 0 is reserved for a master that is stepping down; use 1-254"
        )),
        Some(255) => errs.push(format!(
            "{p}.priority: 255 is reserved for the address owner; use 1-254"
        )),
        _ => {}
    }
    if let Some(d) = c.advert_int {
        errs.extend(advert_int_problem(d).map(|e| format!("{p}.advert_int: {e}")));
    }
    if let Some(vip) = &c.vip {
        if vip.is_empty() {
            errs.push(format!(
                "{p}.vip: list at least one virtual address, e.g. [\"192.0.2.100/24\"]"
            ));
        }
        if vip.len() > 255 {
            errs.push(format!(
                "{p}.vip: {} addresses; an advert carries at most 255",
                vip.len()
            ));
        }
        let mut seen = Vec::new();
        for v in vip {
            match parse_vip(v) {
                Ok(vip) if seen.contains(&vip.addr) => {
                    errs.push(format!("{p}.vip: {} is listed twice", vip.addr))
                }
                Ok(vip) => seen.push(vip.addr),
                Err(e) => errs.push(format!("{p}.vip: {e}")),
            }
        }
    }
    if c.preempt_delay
        .is_some_and(|d| d > Duration::from_secs(1000))
    {
        errs.push(format!("{p}.preempt_delay: at most 1000s"));
    }
    let mut peers = Vec::new();
    for peer in c.unicast_peers.iter().flatten() {
        match peer {
            IpAddr::V6(_) => errs.push(format!(
                "{p}.unicast_peers: {peer} is IPv6; VRRP here is IPv4 only"
            )),
            IpAddr::V4(a) if a.is_multicast() || a.is_unspecified() || a.is_broadcast() => errs
                .push(format!(
                    "{p}.unicast_peers: {peer} is not a unicast address"
                )),
            _ if peers.contains(peer) => {
                errs.push(format!("{p}.unicast_peers: {peer} is listed twice"))
            }
            _ => peers.push(*peer),
        }
    }
    if let Some(IpAddr::V6(a)) = c.unicast_src {
        errs.push(format!(
            "{p}.unicast_src: {a} is IPv6; use this host's IPv4 address"
        ));
    }
    for iface in c.track_interface.iter().flatten() {
        if let Some(e) = interface_problem(iface) {
            errs.push(format!("{p}.track_interface: {e}"));
        }
    }
    if let Some(d) = c.track_fault_after {
        if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
            errs.push(format!(
                "{p}.track_fault_after: {} is out of range; use 100ms to 1h (remove it to never go to FAULT for readiness)",
                humantime::format_duration(d)
            ));
        }
    }
    if let Some(d) = c.garp_master_refresh {
        if !d.is_zero() && (d < Duration::from_secs(1) || d > Duration::from_secs(86_400)) {
            errs.push(format!(
                "{p}.garp_master_refresh: {} is out of range; use 1s to 1 day, or 0 for no refresh",
                humantime::format_duration(d)
            ));
        }
    }
    let commands = [
        ("notify", &c.notify),
        ("notify_master", &c.notify_master),
        ("notify_backup", &c.notify_backup),
        ("notify_fault", &c.notify_fault),
        ("notify_stop", &c.notify_stop),
    ];
    for (field, cmd) in commands {
        if cmd.as_ref().is_some_and(|c| c.trim().is_empty()) {
            errs.push(format!(
                "{p}.{field}: empty command; remove it or name a program"
            ));
        }
    }
}

/// What only the resolved instance can tell (settings that depend on each other).
fn resolved(i: &InstanceConfig, errs: &mut Vec<String>) {
    let p = &i.path;
    if i.interface.trim().is_empty() {
        errs.push(format!(
            "{p}.interface: must name the interface for adverts and VIPs, e.g. \"eth0\"{}",
            if p == "vrrp" {
                ""
            } else {
                " (here or in [vrrp])"
            }
        ));
    }
    if !i.preempt && !i.preempt_delay.is_zero() {
        errs.push(format!(
            "{p}.preempt_delay: only applies with preempt = true; remove it or set preempt = true"
        ));
    }
    let vips: Vec<Ipv4Addr> = i.vips().iter().map(|v| v.addr).collect();
    for peer in &i.unicast_peers {
        if let IpAddr::V4(a) = peer {
            if vips.contains(a) {
                errs.push(format!("{p}.unicast_peers: {peer} is one of the virtual addresses; list the peers' own addresses"));
            }
        }
    }
    match i.unicast_src {
        Some(src) if i.unicast_peers.is_empty() => errs.push(format!(
            "{p}.unicast_src: {src} is set but unicast_peers is empty; list the peers or remove it"
        )),
        Some(src) if i.unicast_peers.contains(&src) => errs.push(format!(
            "{p}.unicast_src: {src} is also listed in unicast_peers"
        )),
        _ => {}
    }
}

/// Names, VRIDs per interface and virtual addresses are each one instance's.
fn shared(instances: &[InstanceConfig], errs: &mut Vec<String>) {
    /// The path of the first instance that claimed `key`, if another did.
    fn claim<'a, K: Ord>(
        seen: &mut BTreeMap<K, &'a str>,
        key: K,
        path: &'a str,
    ) -> Option<&'a str> {
        match seen.entry(key) {
            Entry::Occupied(first) => Some(*first.get()),
            Entry::Vacant(v) => {
                v.insert(path);
                None
            }
        }
    }
    let mut names = BTreeMap::new();
    let mut vrids = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    for i in instances {
        if let Some(first) = claim(&mut names, i.name.as_str(), &i.path) {
            errs.push(format!(
                "{}.name: {:?} is also {first}'s name; give each instance its own `name`",
                i.path, i.name
            ));
        }
        if i.vrid != 0 {
            if let Some(first) = claim(&mut vrids, (i.interface.as_str(), i.vrid), &i.path) {
                errs.push(format!(
                    "{}.vrid: {} on {} is also {first}'s; each virtual router on an interface needs its own id",
                    i.path, i.vrid, i.interface
                ));
            }
        }
        for v in i.vips() {
            match claim(&mut addrs, v.addr, &i.path) {
                Some(first) if first != i.path => errs.push(format!(
                    "{}.vip: {} is also a virtual address of {first}; an address has one master",
                    i.path, v.addr
                )),
                _ => {}
            }
        }
    }
}

/// Why `name` cannot be an interface name, if it cannot.
fn interface_problem(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        Some("must name the interface for adverts and VIPs, e.g. \"eth0\"".into())
    } else if name.len() > 15 || name.contains(['/', ' ']) {
        Some(format!("{name:?} is not a valid interface name"))
    } else {
        None
    }
}

fn advert_int_problem(d: Duration) -> Option<String> {
    let ms = d.as_millis();
    let exact = d.subsec_nanos().is_multiple_of(10_000_000);
    if !exact {
        Some(format!(
            "{} is not a multiple of 10ms (adverts carry centiseconds)",
            humantime::format_duration(d)
        ))
    } else if !(10..=40_950).contains(&ms) {
        Some(format!(
            "{} is out of range; use 10ms to 40.95s",
            humantime::format_duration(d)
        ))
    } else {
        None
    }
}
