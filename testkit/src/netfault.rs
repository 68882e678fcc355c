//! Network faults made with the kernel's own packet filter: a [`Blackhole`] drops every packet to
//! and from one loopback port (no reset, no ICMP), the way a peer behind a dead WAN link looks.
//!
//! Loopback traffic passes the `OUTPUT` chain once per direction, so two rules cut a port both
//! ways: `--dport PORT` (what is sent to it) and `--sport PORT` (what it sends back). `DROP` looks
//! at every packet, not only new connections, so established connections go silent too. Each rule
//! carries a comment `setgate-test-PID-N` unique to this process, and dropping the guard deletes
//! exactly the rules it inserted (`iptables -D` with the same spec), nothing else.
//!
//! Needs root and `iptables` (nft or legacy backend; `scripts/setup` installs it).
//! [`Blackhole::available`] says whether this machine can do it, and why not.

use anyhow::{bail, Context};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Every packet to and from a TCP port on this host is dropped while the guard lives.
#[derive(Debug)]
pub struct Blackhole {
    port: u16,
    /// The rule specs (after the chain name) that were inserted, to delete them one by one.
    rules: Vec<Vec<String>>,
    since: Instant,
}

impl Blackhole {
    /// Starts dropping everything to and from `port` (both directions, established connections
    /// included). Fails if a rule cannot be inserted (and removes any it did insert).
    pub fn port(port: u16) -> anyhow::Result<Blackhole> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let mut hole = Blackhole {
            port,
            rules: Vec::new(),
            since: Instant::now(),
        };
        for dir in ["--dport", "--sport"] {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let spec: Vec<String> = [
                "-p",
                "tcp",
                dir,
                &port.to_string(),
                "-m",
                "comment",
                "--comment",
                &format!("setgate-test-{}-{n}", std::process::id()),
                "-j",
                "DROP",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            iptables("-I", &spec).with_context(|| format!("blackholing port {port}"))?;
            hole.rules.push(spec);
        }
        hole.since = Instant::now();
        tracing::info!(port, "blackhole on");
        Ok(hole)
    }

    /// The port cut off.
    pub fn blocked_port(&self) -> u16 {
        self.port
    }

    /// When the rules went in.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Removes the rules now (also done on drop); returns when traffic flows again.
    pub fn heal(mut self) -> anyhow::Result<Instant> {
        self.remove()?;
        Ok(Instant::now())
    }

    fn remove(&mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while let Some(spec) = self.rules.pop() {
            if let Err(e) = iptables("-D", &spec) {
                first_error.get_or_insert(e);
            }
        }
        tracing::info!(port = self.port, "blackhole off");
        first_error.map_or(Ok(()), Err)
    }

    /// `Ok` when rules can be inserted and removed here; otherwise what is missing.
    pub fn available() -> anyhow::Result<()> {
        let out = Command::new("iptables")
            .args(["-w", "-S", "OUTPUT"])
            .output()
            .context("running iptables (scripts/setup installs it; it needs root)")?;
        if !out.status.success() {
            bail!(
                "iptables -S OUTPUT failed (root and a netfilter-capable kernel are needed): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!(
                "netfault: could not remove a rule for port {}: {e:#}",
                self.port
            );
        }
    }
}

/// `iptables -w ACTION OUTPUT SPEC...` (`-w`: wait for the xtables lock other tests may hold).
fn iptables(action: &str, spec: &[String]) -> anyhow::Result<()> {
    let out = Command::new("iptables")
        .args(["-w", action, "OUTPUT"])
        .args(spec)
        .output()
        .context("running iptables (scripts/setup installs it; it needs root)")?;
    if !out.status.success() {
        bail!(
            "iptables {action} OUTPUT {}: {}",
            spec.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
