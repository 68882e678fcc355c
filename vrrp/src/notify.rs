//! The `notify` command: run on every state change with the new state as its last argument, the
//! way Keepalived's `notify` script gets `MASTER`, `BACKUP` or `STOP`.
//!
//! The command goes through `/bin/sh -c` so it may carry its own arguments
//! (`notify = "/usr/local/bin/vip-changed --dc east"`). It runs in the background: a slow or hung
//! script never delays an advert. Its exit status and stderr are logged.

use crate::state::State;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

/// How long a notify command may run before it is killed.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Starts `command STATE` in the background. `vrid` and `priority` are passed in the environment
/// as `SETGATE_VRRP_VRID` and `SETGATE_VRRP_PRIORITY`.
pub fn spawn(command: &str, state: State, vrid: u8, priority: u8) {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    // "$@" after the command appends the state as a separate, unsplit argument.
    cmd.arg("-c")
        .arg(format!("{command} \"$@\""))
        .arg("setgate-notify")
        .arg(state.name())
        .env("SETGATE_VRRP_VRID", vrid.to_string())
        .env("SETGATE_VRRP_PRIORITY", priority.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let command = command.to_string();
    let state = state.name();
    tokio::spawn(async move {
        // Not kill_on_drop: a STOP notification must outlive setgate's own exit.
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return warn!(%command, state, error = %e, "vrrp notify command could not start")
            }
        };
        let mut stderr = child.stderr.take();
        let mut err = Vec::new();
        let finished = tokio::time::timeout(TIMEOUT, async {
            // Read stderr while waiting, so a chatty command never blocks on a full pipe.
            let read = async {
                if let Some(s) = stderr.as_mut() {
                    let _ = s.take(64 * 1024).read_to_end(&mut err).await;
                }
            };
            tokio::join!(child.wait(), read).0
        })
        .await;
        match finished {
            Ok(Ok(status)) if status.success() => {
                info!(%command, state, "vrrp notify command done")
            }
            Ok(Ok(status)) => warn!(
                %command, state, %status,
                stderr = %String::from_utf8_lossy(&err).trim(),
                "vrrp notify command failed"
            ),
            Ok(Err(e)) => warn!(%command, state, error = %e, "vrrp notify command failed"),
            Err(_) => {
                let _ = child.start_kill();
                warn!(%command, state, timeout = ?TIMEOUT, "vrrp notify command killed after its timeout");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn command_gets_the_state_and_environment() {
        let dir = std::env::temp_dir().join(format!("setgate-vrrp-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let script = format!(
            "f() {{ echo \"$1 $SETGATE_VRRP_VRID $SETGATE_VRRP_PRIORITY\" > {}; }}; f",
            out.display()
        );
        spawn(&script, State::Master, 51, 150);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            match std::fs::read_to_string(&out) {
                Ok(t) if t.ends_with('\n') => break t,
                _ if std::time::Instant::now() > deadline => panic!("notify command did not run"),
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        assert_eq!(text, "MASTER 51 150\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
