//! A slow, lossy WAN between two loopback endpoints, for tests that need one.
//!
//! This machine's kernel has no `netem` qdisc, so the link is built from two real pieces instead:
//! a TCP relay that holds every chunk it reads for the one-way delay before writing it on (a delay
//! line: bytes keep flowing at full rate, each arriving `delay` late, so a 25 ms delay each way is
//! a 50 ms round trip), and iptables rules that drop a random share of the packets on the relay's
//! client-side port in both directions (the `statistic` match), so TCP really loses segments and
//! retransmits them. The rules carry a comment naming this link and are removed on drop.

use anyhow::{bail, Context};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// A delayed, lossy path to `target`: connect to [`WanLink::addr`] instead.
#[derive(Debug)]
pub struct WanLink {
    /// Where clients connect.
    pub addr: SocketAddr,
    rules: Vec<Vec<String>>,
    relay: tokio::task::JoinHandle<()>,
}

impl WanLink {
    /// A link to `target` with `delay` each way and `loss` (0.0..1.0) of the packets dropped in
    /// each direction.
    pub async fn start(target: SocketAddr, delay: Duration, loss: f64) -> anyhow::Result<WanLink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let relay = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::join!(delay_line(cr, sw, delay), delay_line(sr, cw, delay));
                    }
                });
            }
        });
        let mut link = WanLink {
            addr,
            rules: Vec::new(),
            relay,
        };
        if loss > 0.0 {
            let tag = format!("setgate-test-wan-{}-{}", std::process::id(), addr.port());
            let port = addr.port().to_string();
            for dir in ["--dport", "--sport"] {
                let rule: Vec<String> = [
                    "OUTPUT",
                    "-p",
                    "tcp",
                    dir,
                    &port,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &format!("{loss}"),
                    "-m",
                    "comment",
                    "--comment",
                    &tag,
                    "-j",
                    "DROP",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                iptables("-A", &rule)?;
                link.rules.push(rule);
            }
        }
        Ok(link)
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = iptables("-D", rule);
        }
        self.relay.abort();
    }
}

fn iptables(op: &str, rule: &[String]) -> anyhow::Result<()> {
    let out = Command::new("iptables")
        .arg(op)
        .args(rule)
        .output()
        .context("run iptables (the test command installs it)")?;
    if !out.status.success() {
        bail!(
            "iptables {op} {} failed: {}",
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Copies `from` to `to`, each chunk written `delay` after it was read.
async fn delay_line(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut pending: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
        loop {
            let next = match pending.pop_front() {
                Some(p) => p,
                None => match rx.recv().await {
                    Some(p) => p,
                    None => break,
                },
            };
            tokio::time::sleep_until(next.0).await;
            if to.write_all(&next.1).await.is_err() {
                return;
            }
            // Whatever else has arrived meanwhile waits its own turn.
            while let Ok(p) = rx.try_recv() {
                pending.push_back(p);
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
