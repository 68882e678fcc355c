//! Helpers of the `netfaults_*` tests: brokers with a second AMQP listener (the "WAN" port that
//! setgate uses and a test blackholes, while the test's own clients keep the local one), and
//! the setgate config pieces these tests vary.
#![allow(dead_code)] // each test binary uses a different subset

use setgate_testkit::netfault::Blackhole;
use setgate_testkit::{free_port, net::accepts, wait_until, Node, NodeOptions};
use std::net::SocketAddr;
use std::time::Duration;

/// The setgate binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_setgate");

/// A broker reachable on two AMQP ports: its usual one for the test's publishers and consumers
/// (the clients in its own datacenter), and `wan` for setgate (the link between datacenters).
pub struct WanNode {
    pub node: Node,
    pub wan: u16,
}

impl WanNode {
    pub async fn start() -> anyhow::Result<WanNode> {
        let wan = free_port();
        let node = Node::start_with(NodeOptions {
            extra_config: format!("listeners.tcp.wan = 127.0.0.1:{wan}\n"),
            ..Default::default()
        })
        .await?;
        let addr: SocketAddr = format!("127.0.0.1:{wan}").parse()?;
        wait_until("the WAN listener", Duration::from_secs(30), || async {
            accepts(addr).await.then_some(())
        })
        .await?;
        Ok(WanNode { node, wan })
    }

    /// The URI setgate uses: the WAN port, no query (so no heartbeat is asked for).
    pub fn wan_uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.wan)
    }

    /// The URI of the test's own clients.
    pub fn local_uri(&self) -> String {
        self.node.amqp_uri()
    }

    /// Drops every packet to and from the WAN port.
    pub fn blackhole(&self) -> anyhow::Result<Blackhole> {
        Blackhole::port(self.wan)
    }
}

/// Fails the test, saying why, when this machine cannot make network faults.
pub fn require_iptables() {
    if let Err(e) = Blackhole::available() {
        panic!(
            "network-fault tests need iptables and root (scripts/setup installs iptables): {e:#}"
        );
    }
}

/// CPU time (user + system) a process used so far, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: i32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow::anyhow!("bad stat"))? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// A setgate config with an admin port and `body`.
pub fn config(body: &str) -> String {
    format!(
        "shutdown_grace = \"10s\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n\n{body}",
        free_port()
    )
}

/// One federation link `name` from `up` to `down` for exchange `x`, every setting at its
/// default (reconnect_delay, prefetch, ack mode; URIs without a heartbeat), plus `extra`
/// lines in the upstream.
pub fn default_link(name: &str, up: &str, down: &str, x: &str, extra: &str) -> String {
    format!(
        "[[federation.upstream]]\nname = \"dc1\"\nuris = [{up:?}]\n{extra}\n\n\
         [[federation.link]]\nname = \"{name}\"\nupstreams = [\"dc1\"]\n\
         downstream = {{ name = \"dc2\", uris = [{down:?}] }}\nexchanges = [{x:?}]\n"
    )
}
