//! The lab the VRRP tests run in: addresses, configs, namespaces with setgate, brokers and a
//! client, and the probes the tests measure with.
#![allow(dead_code, unused_imports)] // tests/vrrp.rs and tests/vrrp_parity.rs each use a subset

use serde_json::Value;
use setgate_testkit::netns::NetNs;
use setgate_testkit::vrrp_lab;
pub use setgate_testkit::vrrp_lab::{
    broker, lan, master_down, setgate_config, skew, vrrp_status, wait_vrrp_running, A, AMQP_PORT,
    B, VIP,
};
use setgate_testkit::{amqp, wait_until, Node, Setgate};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The setgate binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_setgate");
/// The Keepalived host's and the client's addresses (the VIP and hosts `a`, `b` are the lab's).
pub const KA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 13);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
/// The advert interval of every test.
pub const ADVERT: Duration = Duration::from_millis(100);

/// Held by every test: they run one at a time (see the test file's header).
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A setgate config for the tests: advert 100 ms, `extra` lines in `[vrrp]`.
pub fn config(priority: u8, broker: Option<SocketAddr>, extra: &str) -> String {
    setgate_config(priority, ADVERT, broker, extra)
}

/// Starts the setgate under test in `ns` and waits until its VRRP instance reports a state.
pub async fn start_setgate(ns: &NetNs, cfg: &str) -> anyhow::Result<Setgate> {
    vrrp_lab::start_setgate(BIN, ns, cfg).await
}

/// Waits until `state` is reported by the setgate in `ns`.
pub async fn wait_state(ns: &NetNs, state: &str, timeout: Duration) -> anyhow::Result<Value> {
    wait_until(&format!("{} to be {state}", ns.name()), timeout, || async {
        let s = vrrp_status(ns).await.ok()?;
        (s["state"] == state).then_some(s)
    })
    .await
}

/// Waits until the VIP is on `holder` and on none of `others` (a master that steps down removes
/// it; a killed one leaves it behind, so pass only live instances as `others`).
pub async fn wait_holder(
    holder: &NetNs,
    others: &[&NetNs],
    timeout: Duration,
) -> anyhow::Result<()> {
    holder.wait_addr(VIP, true, timeout).await?;
    for o in others {
        o.wait_addr(VIP, false, timeout).await?;
    }
    Ok(())
}

/// A real client in `client`: connects to the VIP, declares a queue, publishes with confirms.
pub async fn client_round_trip(client: &NetNs, queue: &str) -> anyhow::Result<()> {
    let queue = queue.to_string();
    client
        .run(move || async move {
            let conn = amqp::connect(&format!("amqp://guest:guest@{VIP}:{AMQP_PORT}/%2f")).await?;
            let ch = amqp::confirm_channel(&conn).await?;
            ch.queue_declare(
                queue.as_str().into(),
                Default::default(),
                Default::default(),
            )
            .await?;
            amqp::publish_confirmed(&ch, "", &queue, b"through the VIP").await?;
            conn.close(200, "bye".into()).await?;
            anyhow::Ok(())
        })
        .await?
}

/// The node named by `cluster_name` in the Connection.Start of whichever broker answers on the
/// VIP: tells which setgate (each has its own broker) the VIP leads to.
pub async fn broker_behind_vip(client: &NetNs, nodes: &[&Node]) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = client
        .tcp_connect(SocketAddr::from((VIP, AMQP_PORT)))
        .await?;
    s.write_all(b"AMQP\x00\x00\x09\x01").await?;
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && n < buf.len() {
        let got = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf[n..]))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no broker name in the Connection.Start on the VIP within 5 s: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                )
            })??;
        if got == 0 {
            break;
        }
        n += got;
        // cluster_name is "LOCAL@HOSTNAME", the node's own name with the real host name.
        let seen = |node: &&&Node| {
            let needle = format!("{}@", node.name.split('@').next().unwrap_or_default());
            buf[..n]
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        };
        if let Some(node) = nodes.iter().find(seen) {
            return Ok(node.name.clone());
        }
    }
    anyhow::bail!(
        "no known broker's name in what the VIP answered: {:?}",
        String::from_utf8_lossy(&buf[..n])
    )
}

/// The MAC address of `eth0` in `ns`.
pub fn mac_of(ns: &NetNs) -> anyhow::Result<String> {
    let link = ns.ip(&["-o", "link", "show", "eth0"])?;
    link.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no MAC in {link}"))
}

/// Prints one measured takeover.
pub fn report(case: &str, took: Duration, bound: Duration) {
    println!(
        "vrrp {case}: {} ms (bound {} ms)",
        took.as_millis(),
        bound.as_millis()
    );
}

/// Sends whole IPv4 datagrams (header included) out of `eth0` of the current namespace.
pub fn send_raw(datagrams: &[Vec<u8>]) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 112) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let dev = b"eth0\0";
    // SAFETY: setsockopt(2) with pointers to live values and their exact lengths.
    let ok = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_HDRINCL,
            (&one as *const libc::c_int).cast(),
            4,
        ) == 0
            && libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                dev.as_ptr().cast(),
                5,
            ) == 0
    };
    if !ok {
        return Err(std::io::Error::last_os_error());
    }
    for d in datagrams {
        // SAFETY: sockaddr_in is plain old data; all-zero is valid before we fill it in.
        let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from_ne_bytes([d[16], d[17], d[18], d[19]]);
        // SAFETY: buffer and address are valid for the lengths given during the call.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                d.as_ptr().cast(),
                d.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The second virtual IP, of VRID 52, in the active/active tests.
pub const VIP2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);

/// An active/active config: listeners on both VIPs, `[vrrp]` with the shared settings (advert
/// 100 ms, readiness not tracked) and two `[[vrrp.instance]]`: VI_51 on [`VIP`] at priority `p51`
/// and VI_52 on [`VIP2`] at `p52` with `extra52` lines. No broker: the pool points at a closed
/// port, which VRRP does not look at with `track = 0`.
pub fn pair_config(p51: u8, p52: u8, extra52: &str) -> String {
    format!(
        r#"
shutdown_grace = "1s"

[admin]
listen = "127.0.0.1:9090"

[[listener]]
name = "amqp-51"
bind = "{VIP}:{AMQP_PORT}"
mode = "tcp"
pool = "local"

[[listener]]
name = "amqp-52"
bind = "{VIP2}:{AMQP_PORT}"
mode = "tcp"
pool = "local"

[[pool]]
name = "local"
servers = [{{ name = "broker", addr = "127.0.0.1:1" }}]

[vrrp]
interface = "eth0"
advert_int = "{advert}ms"
track = 0

[[vrrp.instance]]
name = "VI_51"
vrid = 51
priority = {p51}
vip = ["{VIP}/24"]

[[vrrp.instance]]
name = "VI_52"
vrid = 52
priority = {p52}
vip = ["{VIP2}/24"]
{extra52}
"#,
        advert = ADVERT.as_millis()
    )
}

/// The `/api/vrrp` part of instance `name` of the setgate in `ns`.
pub async fn instance_status(ns: &NetNs, name: &str) -> anyhow::Result<Value> {
    let doc = vrrp_status(ns).await?;
    doc["instances"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["name"] == name))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no instance {name} in /api/vrrp: {doc}"))
}

/// Waits until instance `name` of the setgate in `ns` reports `state`.
pub async fn wait_instance_state(
    ns: &NetNs,
    name: &str,
    state: &str,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let what = format!("{} {name} to be {state}", ns.name());
    wait_until(&what, timeout, || async {
        let s = instance_status(ns, name).await.ok()?;
        (s["state"] == state).then_some(s)
    })
    .await
}

/// Waits until `addr` is on `holder` and on none of `others`.
pub async fn wait_addr_holder(
    addr: Ipv4Addr,
    holder: &NetNs,
    others: &[&NetNs],
    timeout: Duration,
) -> anyhow::Result<()> {
    holder.wait_addr(addr, true, timeout).await?;
    for o in others {
        o.wait_addr(addr, false, timeout).await?;
    }
    Ok(())
}
