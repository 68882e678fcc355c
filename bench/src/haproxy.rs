//! HAProxy in tcp mode, as people run it in front of RabbitMQ today: the yardstick of the proxy
//! and scale benches. Each bench writes its own configuration; this starts and stops it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True when `haproxy` can be run (a bench measures without it otherwise, and says so).
pub fn installed() -> bool {
    Command::new("haproxy").arg("-v").output().is_ok()
}

/// A running HAProxy; killed when dropped.
pub struct Haproxy {
    child: Child,
}

impl Haproxy {
    /// Starts HAProxy on `cfg` (written to a fresh directory named after `name`) and waits, up
    /// to 10 s, until it accepts on `port`.
    pub async fn start(name: &str, cfg: &str, port: u16) -> anyhow::Result<Haproxy> {
        let dir = setgate_testkit::unique_dir(name);
        std::fs::write(dir.join("haproxy.cfg"), cfg)?;
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // Owned from here, so an early return below stops it.
        let haproxy = Haproxy { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "haproxy did not accept on port {port} within 10 s (config in {})",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(haproxy)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
