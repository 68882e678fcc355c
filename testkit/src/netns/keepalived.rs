//! Keepalived as the reference VRRP implementation: run it in a test namespace, kill it, stop it.

use super::NetNs;
use anyhow::{bail, Context};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Keepalived (Debian's `keepalived`) running in a namespace in the foreground, in its own process
/// group so [`Keepalived::kill9`] takes down its VRRP child too (which would otherwise catch its
/// parent's death and step down cleanly — not what kill -9 means).
#[derive(Debug)]
pub struct Keepalived {
    netns: String,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl Keepalived {
    /// A `keepalived.conf` with one VRRPv3 instance (`state BACKUP`, preempting like setgate) on
    /// `eth0`; `unicast` = (source, peers) for unicast mode.
    pub fn config(
        vrid: u8,
        priority: u8,
        advert_int: Duration,
        vips: &[&str],
        unicast: Option<(Ipv4Addr, &[Ipv4Addr])>,
    ) -> String {
        let mut unicast_lines = String::new();
        if let Some((src, peers)) = unicast {
            unicast_lines = format!("  unicast_src_ip {src}\n  unicast_peer {{\n");
            for p in peers {
                unicast_lines += &format!("    {p}\n");
            }
            unicast_lines += "  }\n";
        }
        format!(
            "global_defs {{\n  vrrp_version 3\n  script_user root\n  enable_script_security\n}}\n\
             vrrp_instance VI_{vrid} {{\n  state BACKUP\n  interface eth0\n  virtual_router_id {vrid}\n  \
             priority {priority}\n  advert_int {adv}\n{unicast_lines}  virtual_ipaddress {{\n    {vips}\n  }}\n}}\n",
            adv = advert_int.as_secs_f64(),
            vips = vips.join("\n    "),
        )
    }

    /// Writes `config` and starts `keepalived --vrrp` in `netns` (no daemon, logging to a file).
    pub fn start(netns: &NetNs, config: &str) -> anyhow::Result<Keepalived> {
        let dir = crate::unique_dir("keepalived");
        std::fs::write(dir.join("keepalived.conf"), config)?;
        let mut k = Keepalived {
            netns: netns.name().to_string(),
            dir,
            child: None,
        };
        k.launch()?;
        Ok(k)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let d = self.dir.display().to_string();
        // A killed run's VRRP child may linger as a zombie until PID 1 reaps it; Keepalived would
        // take its pid file for a running daemon and refuse to start.
        for f in ["keepalived.pid", "vrrp.pid", "checkers.pid"] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("keepalived.log"))?;
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.netns,
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--vrrp",
        ])
        .args(["-f", &format!("{d}/keepalived.conf")])
        .args([
            "-p",
            &format!("{d}/keepalived.pid"),
            "-r",
            &format!("{d}/vrrp.pid"),
        ])
        .args(["-c", &format!("{d}/checkers.pid")])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        self.child = Some(
            cmd.spawn()
                .context("spawn keepalived (apt-get install keepalived)")?,
        );
        Ok(())
    }

    /// What Keepalived logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("keepalived.log")).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on the process group of our own child.
            unsafe { libc::kill(-(c.id() as i32), sig) };
        }
    }

    /// kill -9 of every Keepalived process: no priority-0 advert, VIPs left behind.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM: Keepalived sends priority 0 and removes its VIPs.
    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child; its VRRP process stops in turn.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }

    /// Waits up to `timeout` for the parent to exit after [`Keepalived::sigterm`].
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while let Some(c) = self.child.as_mut() {
            if c.try_wait()?.is_some() {
                self.child = None;
                break;
            }
            if Instant::now() > deadline {
                bail!("keepalived did not exit within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Starts it again with the same config (after kill9 or a stop).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.launch()
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- keepalived log ({}) ----\n{}",
                self.dir.display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
