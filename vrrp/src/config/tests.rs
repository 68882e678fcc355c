//! The section's defaults, inheritance, validation messages and summaries.

use super::*;

/// A minimal valid section with `extra` keys set over it.
fn parse(extra: &str) -> VrrpConfig {
    let mut t: toml::Table =
        toml::from_str("interface = \"eth0\"\nvrid = 51\nvip = [\"192.0.2.100/24\"]").unwrap();
    t.extend(toml::from_str::<toml::Table>(extra).unwrap());
    t.try_into().unwrap()
}

fn one(c: &VrrpConfig) -> InstanceConfig {
    let mut all = c.instances();
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

/// Two instances sharing `[vrrp]`'s settings, as an active/active pair writes them.
const PAIR: &str = r#"
interface = "eth0"
advert_int = "100ms"
track = 0
notify = "/usr/local/bin/vrrp-changed"

[[instance]]
vrid = 51
priority = 150
vip = ["192.0.2.100/24"]

[[instance]]
name = "second"
vrid = 52
vip = ["192.0.2.101/24"]
preempt = false
"#;

#[test]
fn defaults_are_keepalived_like() {
    let c = parse("");
    let i = one(&c);
    assert_eq!(i.name, "VI_51");
    assert_eq!(i.path, "vrrp");
    assert_eq!(i.priority, 100);
    assert_eq!(i.advert_int, Duration::from_secs(1));
    assert!(i.preempt);
    assert_eq!(i.preempt_delay, Duration::ZERO);
    assert_eq!(i.track, DEFAULT_TRACK);
    assert_eq!(i.track_fault_after, None);
    assert_eq!(i.garp_master_refresh, Duration::ZERO);
    assert_eq!(i.notify, Notify::default());
    assert_eq!(i.fault_interfaces(), vec!["eth0".to_string()]);
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    assert_eq!(i.advert_centis(), 100);
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
fn instances_inherit_what_they_do_not_set() {
    let c: VrrpConfig = toml::from_str(PAIR).unwrap();
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    assert!(
        !c.is_instance(),
        "[vrrp] without vrid and vip only shares settings"
    );
    let all = c.instances();
    assert_eq!(all.len(), 2);
    let (a, b) = (&all[0], &all[1]);
    assert_eq!(
        (a.name.as_str(), a.path.as_str()),
        ("VI_51", "vrrp.instance[0]")
    );
    assert_eq!(
        (b.name.as_str(), b.path.as_str()),
        ("second", "vrrp.instance[1]")
    );
    assert_eq!(
        (a.interface.as_str(), b.interface.as_str()),
        ("eth0", "eth0")
    );
    assert_eq!((a.priority, b.priority), (150, 100));
    assert_eq!((a.preempt, b.preempt), (true, false));
    assert_eq!((a.track, b.track), (0, 0));
    assert_eq!(a.advert_int, Duration::from_millis(100));
    assert_eq!(b.notify.any.as_deref(), Some("/usr/local/bin/vrrp-changed"));
    assert_eq!(c.vip_addrs().len(), 2);
    assert_eq!(
        c.summary(),
        "2 instances; VI_51: VRID 51 on eth0, priority 150, advert every 100ms, preempt, \
         VIP 192.0.2.100/24, multicast 224.0.0.18, readiness not tracked, notify; \
         second: VRID 52 on eth0, priority 100, advert every 100ms, no preempt, \
         VIP 192.0.2.101/24, multicast 224.0.0.18, readiness not tracked, notify"
    );
}

#[test]
fn vrrp_itself_stays_an_instance_beside_more() {
    let c = parse("[[instance]]\nvrid = 52\nvip = [\"192.0.2.101\"]\npriority = 90");
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    let all = c.instances();
    assert_eq!(
        all.iter()
            .map(|i| (i.name.as_str(), i.priority))
            .collect::<Vec<_>>(),
        vec![("VI_51", 100), ("VI_52", 90)]
    );
    assert_eq!(all[1].interface, "eth0");
}

#[test]
fn what_instances_must_not_share_is_refused() {
    let c = parse(
        "[[instance]]\nvrid = 51\nvip = [\"192.0.2.100\"]\n\
         [[instance]]\nname = \"VI_51\"\nvrid = 53\nvip = [\"192.0.2.103\"]\n\
         [[instance]]\nvrid = 54\n\
         [[instance]]\nvip = [\"192.0.2.105\"]\npriority = 0",
    );
    let errs = c.validate();
    for want in [
        "vrrp.instance[0].name: \"VI_51\" is also vrrp's name",
        "vrrp.instance[0].vrid: 51 on eth0 is also vrrp's",
        "vrrp.instance[0].vip: 192.0.2.100 is also a virtual address of vrrp",
        "vrrp.instance[1].name: \"VI_51\" is also vrrp's name",
        "vrrp.instance[2].vip: missing",
        "vrrp.instance[3].vrid: missing",
        "vrrp.instance[3].priority: 0 is reserved",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "{want}: {errs:#?}"
        );
    }
    assert_eq!(errs.len(), 7, "{errs:#?}");
}

#[test]
fn a_shared_only_section_needs_an_interface_somewhere() {
    let c: VrrpConfig = toml::from_str("[[instance]]\nvrid = 1\nvip = [\"192.0.2.1\"]").unwrap();
    assert_eq!(
        c.validate(),
        vec!["vrrp.instance[0].interface: must name the interface for adverts and VIPs, e.g. \"eth0\" (here or in [vrrp])"]
    );
    let c: VrrpConfig = toml::from_str("interface = \"eth0\"").unwrap();
    let errs = c.validate();
    assert!(
        errs.iter().any(|e| e.starts_with("vrrp.vrid: missing")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("vrrp.vip: missing")),
        "{errs:?}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let c = parse(
        "priority = 255\nadvert_int = \"105ms\"\nunicast_src = \"192.0.2.1\"\nnotify = \" \"",
    );
    let errs = c.validate();
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(errs
        .contains(&"vrrp.priority: 255 is reserved for the address owner; use 1-254".to_string()));
    assert!(errs
        .iter()
        .any(|e| e.starts_with("vrrp.advert_int: 105ms is not a multiple of 10ms")));
    assert!(errs.iter().any(|e| e.starts_with("vrrp.unicast_src:")));
    assert!(errs.iter().any(|e| e.starts_with("vrrp.notify:")));
}

#[test]
fn an_inherited_mistake_is_reported_once_where_it_is_written() {
    let c: VrrpConfig = toml::from_str(&PAIR.replace("track = 0", "priority = 255")).unwrap();
    let errs = c.validate();
    assert_eq!(
        errs,
        vec!["vrrp.priority: 255 is reserved for the address owner; use 1-254"],
        "instance[0] sets its own; instance[1] inherits it"
    );
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
    assert_eq!(
        one(&parse("advert_int = \"40s 950ms\"")).advert_centis(),
        4095
    );
    assert_eq!(one(&parse("advert_int = \"10ms\"")).advert_centis(), 1);
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
        ("name = \"two words\"", "vrrp.name:"),
        ("track_interface = [\"eth1/x\"]", "vrrp.track_interface:"),
        ("track_fault_after = \"10ms\"", "vrrp.track_fault_after:"),
        (
            "garp_master_refresh = \"500ms\"",
            "vrrp.garp_master_refresh:",
        ),
        ("notify_fault = \"\"", "vrrp.notify_fault: empty command"),
        (
            "[[instance]]\nvrid = 9\nvip = [\"192.0.2.9\"]\n[[instance.instance]]",
            "do not nest",
        ),
    ];
    for (extra, want) in cases {
        let errs = parse(extra).validate();
        assert!(errs.iter().any(|e| e.contains(want)), "{extra}: {errs:?}");
    }
    assert_eq!(parse("interface = \"\"").validate().len(), 1);
}

#[test]
fn notify_args_and_per_state_commands() {
    let i = one(&parse(
        "notify = \"n\"\nnotify_args = \"keepalived\"\nnotify_master = \"m\"\nnotify_fault = \"f\"",
    ));
    assert_eq!(i.notify.args, NotifyArgs::Keepalived);
    assert_eq!(
        (
            i.notify.master.as_deref(),
            i.notify.fault.as_deref(),
            i.notify.backup.as_deref()
        ),
        (Some("m"), Some("f"), None)
    );
    let r: Result<VrrpConfig, _> = toml::from_str(
        "interface = \"eth0\"\nvrid = 1\nvip = [\"192.0.2.1\"]\nnotify_args = \"all\"\n",
    );
    assert!(r.unwrap_err().to_string().contains("keepalived"));
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
    let c = parse(
        "track_interface = [\"eth1\"]\ntrack_fault_after = \"10s\"\ngarp_master_refresh = \"1m\"",
    );
    assert!(
        c.summary().ends_with(
            ", FAULT after 10s not ready, FAULT while eth0 or eth1 is down, \
             gratuitous ARP every 1m as master"
        ),
        "{}",
        c.summary()
    );
}

#[test]
fn restart_needed_names_the_fixed_fields_per_instance() {
    let old: VrrpConfig = toml::from_str(PAIR).unwrap();
    let live: VrrpConfig =
        toml::from_str(&PAIR.replace("priority = 150", "priority = 50")).unwrap();
    assert!(restart_needed(&old, &live).is_empty());
    let moved: VrrpConfig = toml::from_str(&PAIR.replace("vrid = 52", "vrid = 53")).unwrap();
    assert_eq!(
        restart_needed(&old, &moved),
        vec!["vrrp.instance[1].vrid: changing it needs a restart of setgate; still running with the old [vrrp] settings"]
    );
    let single = parse("");
    assert!(restart_needed(&old, &single)[0].starts_with("vrrp.instance: adding or removing"));
    // A default name follows the vrid: only the vrid is named.
    assert_eq!(
        restart_needed(&single, &parse("vrid = 52")),
        vec!["vrrp.vrid: changing it needs a restart of setgate; still running with the old [vrrp] settings"]
    );
}
