//! The VRRP lab shared by the VRRP tests and the VRRP benchmark: the segment's addresses, the
//! setgate config each instance runs, brokers and setgate processes inside namespaces, and the
//! timers of RFC 5798 the measurements are checked against.
//!
//! Each host is a network namespace on one private segment ([`Lan`]); its setgate serves a `tcp`
//! listener on the VIP in front of the broker of the same host, and its admin server answers on
//! 127.0.0.1:9090 inside the namespace.

use crate::netns::{Lan, NetNs};
use crate::setgate::SetgateOptions;
use crate::{wait_until, Node, NodeOptions, Setgate};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// The virtual IP the setgate instances hold (VRID 51).
pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
/// Host `a`, where the higher-priority instance runs.
pub const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
/// Host `b`, where the lower-priority instance runs.
pub const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
/// Port of the setgate listener on the VIP.
pub const AMQP_PORT: u16 = 5672;
/// Where setgate's admin server answers, inside each namespace.
pub const ADMIN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

/// Master_Down_Interval of a backup with `priority` and the master's advert interval.
pub fn master_down(priority: u8, advert: Duration) -> Duration {
    advert * 3 + skew(priority, advert)
}

/// Skew_Time of a backup with `priority` and the master's advert interval.
pub fn skew(priority: u8, advert: Duration) -> Duration {
    advert * (256 - u32::from(priority)) / 256
}

/// A setgate config: a `tcp` listener on the VIP to `broker` (or to a closed port when there is
/// no broker), the pool checked every 200 ms, and `[vrrp]` on VRID 51 with `extra` lines.
pub fn setgate_config(
    priority: u8,
    advert: Duration,
    broker: Option<SocketAddr>,
    extra: &str,
) -> String {
    let server = broker.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 1)));
    format!(
        r#"
shutdown_grace = "1s"

[admin]
listen = "{ADMIN}"

[[listener]]
name = "amqp"
bind = "{VIP}:{AMQP_PORT}"
mode = "tcp"
pool = "local"

[[pool]]
name = "local"
check = {{ kind = "amqp", inter = "200ms", rise = 1, fall = 1, timeout = "500ms" }}
servers = [{{ name = "broker", addr = "{server}" }}]

[vrrp]
interface = "eth0"
vrid = 51
priority = {priority}
advert_int = "{advert}ms"
vip = ["{VIP}/24"]
{extra}
"#,
        advert = advert.as_millis()
    )
}

/// A private segment with one namespace per `(name, address)`.
pub fn lan(tag: &str, hosts: &[(&str, Ipv4Addr)]) -> anyhow::Result<Lan> {
    let mut lan = Lan::new(tag)?;
    for (h, ip) in hosts {
        lan.add_host(h, &format!("{ip}/24"))?;
    }
    Ok(lan)
}

/// A broker inside `ns`, listening on `ip`.
pub async fn broker(ns: &NetNs, ip: Ipv4Addr) -> anyhow::Result<Node> {
    Node::start_with(NodeOptions {
        management: false,
        netns: Some(ns.name().to_string()),
        ip: ip.to_string(),
        ..Default::default()
    })
    .await
}

/// `/api/vrrp` of the setgate running in `ns`.
pub async fn vrrp_status(ns: &NetNs) -> anyhow::Result<Value> {
    let r = ns.http_get(ADMIN, "/api/vrrp").await?;
    anyhow::ensure!(r.status == 200, "GET /api/vrrp: {} {}", r.status, r.body);
    r.json()
}

/// Starts setgate `bin` in `ns` and waits until its VRRP instance reports a state.
pub async fn start_setgate(
    bin: impl AsRef<Path>,
    ns: &NetNs,
    cfg: &str,
) -> anyhow::Result<Setgate> {
    let opts = SetgateOptions {
        netns: Some(ns.name().to_string()),
        ..Default::default()
    };
    let sg = Setgate::start_with(bin, cfg, opts).await?;
    wait_vrrp_running(ns, &sg).await?;
    Ok(sg)
}

/// Waits until the setgate in `ns` answers `/api/vrrp` with a running state.
pub async fn wait_vrrp_running(ns: &NetNs, sg: &Setgate) -> anyhow::Result<()> {
    wait_until("setgate's /api/vrrp", Duration::from_secs(20), || async {
        let s = vrrp_status(ns).await.ok()?;
        matches!(s["state"].as_str(), Some("BACKUP" | "MASTER")).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e} in {}\nsetgate log:\n{}", ns.name(), sg.log()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_follow_rfc_5798() {
        let advert = Duration::from_millis(100);
        // Skew = (256 - 100) * 100 ms / 256 = 60.9 ms; Master_Down = 3 * 100 ms + Skew.
        assert_eq!(skew(100, advert), Duration::from_nanos(60_937_500));
        assert_eq!(master_down(100, advert), Duration::from_nanos(360_937_500));
    }

    #[test]
    fn the_config_is_valid_toml_with_the_given_timers() {
        let cfg = setgate_config(150, Duration::from_secs(1), None, "preempt = false");
        let v: toml::Value = toml::from_str(&cfg).expect("valid TOML");
        assert_eq!(v["vrrp"]["advert_int"].as_str(), Some("1000ms"));
        assert_eq!(v["vrrp"]["priority"].as_integer(), Some(150));
        assert_eq!(v["vrrp"]["preempt"].as_bool(), Some(false));
        assert_eq!(v["admin"]["listen"].as_str(), Some("127.0.0.1:9090"));
    }
}
