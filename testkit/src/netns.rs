//! Network namespaces for tests: a private Ethernet segment (a bridge inside its own "switch"
//! namespace, one veth pair per host), code and commands run inside a namespace, and cleanup on
//! drop — even when the test fails.
//!
//! Nothing here touches the namespace the test runs in: the bridge lives in the switch namespace,
//! and every host namespace has only its loopback and its `eth0` on the segment. Addresses come
//! from 192.0.2.0/24 (TEST-NET-1). Needs root (`ip netns`, veth, bridge).
//!
//! A socket belongs to the namespace it was created in, whichever thread uses it later, so
//! [`NetNs::tcp_connect`] creates the socket inside the namespace and then connects it from the
//! test's own runtime; [`NetNs::run`] runs a whole future (e.g. a lapin client) on a thread that
//! entered the namespace.
//!
//! [`Keepalived`] runs Debian's keepalived in a namespace, the reference the VRRP tests and
//! benchmark compare setgate with.

use crate::http::Response;
use anyhow::{bail, Context};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod keepalived;
pub use keepalived::Keepalived;

/// A unique namespace name `{prefix}-{pid}-{n}`: parallel tests and test binaries never collide.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `ip ARGS` and returns its standard output; fails with its standard error.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One network namespace, deleted (with every process still in it killed) on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// `ip netns add NAME` and brings its loopback up.
    pub fn create(name: &str) -> anyhow::Result<NetNs> {
        ip(&["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, for `ip netns exec` and `SetgateOptions::netns`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// True when `addr` is configured on any interface of the namespace (one `ip -4 addr` call,
    /// about 2 ms: fast enough to poll every few milliseconds).
    pub async fn has_addr(&self, addr: Ipv4Addr) -> anyhow::Result<bool> {
        let out = tokio::process::Command::new("ip")
            .args(["-n", &self.name, "-4", "-o", "addr", "show"])
            .stdin(Stdio::null())
            .output()
            .await
            .context("run ip addr")?;
        if !out.status.success() {
            bail!(
                "ip -n {} addr show: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let needle = format!(" {addr}/");
        Ok(String::from_utf8_lossy(&out.stdout).contains(&needle))
    }

    /// Runs `f` on a fresh thread that has entered the namespace (blocking; keep it short, e.g.
    /// creating a socket).
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || -> anyhow::Result<T> {
            enter_netns(&path)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
    }

    /// Runs the future made by `f` to completion on a thread inside the namespace, with its own
    /// current-thread tokio runtime, and returns its output. Every socket it opens is in the
    /// namespace.
    pub async fn run<T, F, Fut>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let path = format!("/run/netns/{}", self.name);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let result = enter_netns(&path).and_then(|()| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Ok(rt.block_on(f()))
            });
            let _ = tx.send(result);
        });
        rx.await.context("thread in namespace panicked")?
    }

    /// A TCP connection from inside the namespace to `addr`, usable from any runtime.
    pub async fn tcp_connect(&self, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
        tcp_connect_in(&self.name, addr).await
    }

    /// `GET path` on an HTTP server reachable from inside the namespace (e.g. setgate's admin
    /// server on the namespace's own 127.0.0.1), with a 5 s deadline.
    pub async fn http_get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
        use http_body_util::{BodyExt, Empty};
        use hyper::body::Bytes;
        let stream = self.tcp_connect(addr).await?;
        let fut = async {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let req = hyper::Request::get(path)
                .header("host", addr.to_string())
                .body(Empty::<Bytes>::new())?;
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok(Response {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .with_context(|| format!("GET http://{addr}{path} in {} timed out", self.name))?
    }

    /// Polls (every 5 ms) until `addr` is present on (or, with `present = false`, gone from) the
    /// namespace's interfaces; returns how long that took from the call.
    pub async fn wait_addr(
        &self,
        addr: Ipv4Addr,
        present: bool,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if self.has_addr(addr).await? == present {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                let what = if present { "appear in" } else { "leave" };
                bail!(
                    "{addr} did not {what} namespace {} within {timeout:?}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Kills every process still running in the namespace.
    pub fn kill_all(&self) {
        if let Ok(pids) = ip(&["netns", "pids", &self.name]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a pid the kernel just listed as being in our test namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.kill_all();
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A TCP connection from inside the namespace called `netns` to `addr`, usable from any runtime:
/// the socket is created on a thread that entered the namespace, then connected from here.
pub async fn tcp_connect_in(
    netns: &str,
    addr: SocketAddr,
) -> anyhow::Result<tokio::net::TcpStream> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let path = format!("/run/netns/{netns}");
    let fd = std::thread::spawn(move || -> anyhow::Result<OwnedFd> {
        enter_netns(&path)?;
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))??;
    let std_stream = std::net::TcpStream::from(fd);
    std_stream.set_nonblocking(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(std_stream);
    let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .with_context(|| format!("connect to {addr} from namespace {netns} timed out"))?
        .with_context(|| format!("connect to {addr} from namespace {netns}"))?;
    Ok(stream)
}

fn enter_netns(path: &str) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
    // SAFETY: setns(2) on a descriptor we hold open for the call; it only changes this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns {path} (needs root)"));
    }
    Ok(())
}

/// A private Ethernet segment: a bridge `br0` in its own switch namespace and one namespace per
/// host, each attached by a veth pair (`eth0` in the host, port `p{i}` on the bridge).
/// Dropping it deletes every namespace (hosts first, then the switch).
#[derive(Debug)]
pub struct Lan {
    prefix: String,
    hosts: Vec<(String, NetNs)>,
    switch: NetNs,
}

impl Lan {
    /// A new empty segment; namespaces are named `{tag}-{pid}-{n}-{host}`.
    pub fn new(tag: &str) -> anyhow::Result<Lan> {
        let prefix = unique_name(tag);
        let switch = NetNs::create(&format!("{prefix}-sw"))?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        Ok(Lan {
            prefix,
            hosts: Vec::new(),
            switch,
        })
    }

    /// Adds a host namespace with `eth0` at `cidr` (e.g. `192.0.2.11/24`).
    pub fn add_host(&mut self, host: &str, cidr: &str) -> anyhow::Result<&NetNs> {
        let ns = NetNs::create(&format!("{}-{host}", self.prefix))?;
        let port = format!("p{}", self.hosts.len());
        self.switch.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        self.switch
            .ip(&["link", "set", &port, "master", "br0", "up"])?;
        ns.ip(&["addr", "add", cidr, "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        self.hosts.push((host.to_string(), ns));
        Ok(&self.hosts.last().unwrap().1)
    }

    /// The host namespace added as `host`.
    pub fn host(&self, host: &str) -> &NetNs {
        &self
            .hosts
            .iter()
            .find(|(h, _)| h == host)
            .unwrap_or_else(|| panic!("no host {host} on this LAN"))
            .1
    }

    /// The switch namespace (holds `br0`).
    pub fn switch(&self) -> &NetNs {
        &self.switch
    }

    /// Stops the bridge from forwarding any multicast to its ports (`mcast_flood off` on every
    /// port, as a switch with IGMP snooping and unknown-multicast flooding disabled does):
    /// 224.0.0.18 no longer reaches anyone, while unicast and ARP broadcasts still do.
    pub fn block_multicast(&self) -> anyhow::Result<()> {
        for i in 0..self.hosts.len() {
            let port = format!("p{i}");
            ip(&[
                "-n",
                self.switch.name(),
                "link",
                "set",
                "dev",
                &port,
                "type",
                "bridge_slave",
                "mcast_flood",
                "off",
            ])?;
        }
        Ok(())
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Hosts before the switch; each NetNs kills what still runs inside it.
        self.hosts.clear();
    }
}
