//! The notify commands, run on state changes the way Keepalived runs its own: the one for the new
//! state (`notify_master`, `notify_backup`, `notify_fault`, `notify_stop`) as written, then
//! `notify` with the new state appended (`notify_args = "state"`, setgate's form since the first
//! release) or with Keepalived's four arguments `INSTANCE <name> <state> <priority>`
//! (`notify_args = "keepalived"`).
//!
//! Each command goes through `/bin/sh -c` so it may carry its own arguments
//! (`notify = "/usr/local/bin/vip-changed --dc east"`). They run in the background, one after the
//! other for one change: a slow or hung script never delays an advert. Exit status and stderr are
//! logged.

use crate::config::{Notify, NotifyArgs};
use crate::state::State;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

/// How long a notify command may run before it is killed.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The instance a change belongs to, as the commands are told (arguments and environment:
/// `SETGATE_VRRP_INSTANCE`, `SETGATE_VRRP_VRID`, `SETGATE_VRRP_PRIORITY`, `SETGATE_VRRP_STATE`).
#[derive(Debug, Clone)]
pub struct Who {
    /// The instance's name.
    pub name: String,
    /// Its VRID.
    pub vrid: u8,
    /// Its effective priority at the change.
    pub priority: u8,
}

/// The shell command lines `notify` runs for a change to `state`, in order, each with the
/// arguments appended to it. Pure.
pub fn commands(notify: &Notify, state: State, who: &Who) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let per_state = match state {
        State::Master => &notify.master,
        State::Backup => &notify.backup,
        State::Fault => &notify.fault,
        State::Initialize => &notify.stop,
    };
    if let Some(cmd) = per_state {
        out.push((cmd.clone(), Vec::new()));
    }
    if let Some(cmd) = &notify.any {
        let args = match notify.args {
            NotifyArgs::State => vec![state.name().to_string()],
            NotifyArgs::Keepalived => vec![
                "INSTANCE".to_string(),
                who.name.clone(),
                state.name().to_string(),
                who.priority.to_string(),
            ],
        };
        out.push((cmd.clone(), args));
    }
    out
}

/// Starts the commands for a change to `state` in the background, one after the other.
pub fn spawn(notify: &Notify, state: State, who: &Who) {
    let commands = commands(notify, state, who);
    if commands.is_empty() {
        return;
    }
    let who = who.clone();
    tokio::spawn(async move {
        for (command, args) in commands {
            run(&command, &args, state, &who).await;
        }
    });
}

async fn run(command: &str, args: &[String], state: State, who: &Who) {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    // "$@" after the command appends the arguments, each separate and unsplit.
    cmd.arg("-c")
        .arg(format!("{command} \"$@\""))
        .arg("setgate-notify")
        .args(args)
        .env("SETGATE_VRRP_INSTANCE", &who.name)
        .env("SETGATE_VRRP_VRID", who.vrid.to_string())
        .env("SETGATE_VRRP_PRIORITY", who.priority.to_string())
        .env("SETGATE_VRRP_STATE", state.name())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let instance = who.name.as_str();
    let state = state.name();
    // Not kill_on_drop: a STOP notification must outlive setgate's own exit.
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return warn!(%command, instance, state, error = %e, "vrrp notify command could not start")
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
            info!(%command, instance, state, "vrrp notify command done")
        }
        Ok(Ok(status)) => warn!(
            %command, instance, state, %status,
            stderr = %String::from_utf8_lossy(&err).trim(),
            "vrrp notify command failed"
        ),
        Ok(Err(e)) => warn!(%command, instance, state, error = %e, "vrrp notify command failed"),
        Err(_) => {
            let _ = child.start_kill();
            warn!(%command, instance, state, timeout = ?TIMEOUT, "vrrp notify command killed after its timeout");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Who {
        Who {
            name: "VI_51".into(),
            vrid: 51,
            priority: 150,
        }
    }

    #[test]
    fn per_state_command_first_then_notify_with_its_arguments() {
        let n = Notify {
            any: Some("n".into()),
            args: NotifyArgs::Keepalived,
            fault: Some("f --now".into()),
            ..Notify::default()
        };
        let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            commands(&n, State::Fault, &who()),
            vec![
                ("f --now".to_string(), vec![]),
                (
                    "n".to_string(),
                    strs(&["INSTANCE", "VI_51", "FAULT", "150"])
                ),
            ]
        );
        assert_eq!(
            commands(&n, State::Master, &who()),
            vec![(
                "n".to_string(),
                strs(&["INSTANCE", "VI_51", "MASTER", "150"])
            )]
        );
        let short = Notify {
            any: Some("n".into()),
            ..Notify::default()
        };
        assert_eq!(
            commands(&short, State::Initialize, &who()),
            vec![("n".to_string(), strs(&["STOP"]))]
        );
        assert!(commands(&Notify::default(), State::Master, &who()).is_empty());
    }

    #[tokio::test]
    async fn command_gets_its_arguments_and_environment() {
        let dir = std::env::temp_dir().join(format!("setgate-vrrp-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let script = format!(
            "f() {{ echo \"$* $SETGATE_VRRP_INSTANCE $SETGATE_VRRP_VRID $SETGATE_VRRP_PRIORITY $SETGATE_VRRP_STATE\" > {}; }}; f",
            out.display()
        );
        let n = Notify {
            any: Some(script),
            args: NotifyArgs::Keepalived,
            ..Notify::default()
        };
        spawn(&n, State::Master, &who());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            match std::fs::read_to_string(&out) {
                Ok(t) if t.ends_with('\n') => break t,
                _ if std::time::Instant::now() > deadline => panic!("notify command did not run"),
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        assert_eq!(text, "INSTANCE VI_51 MASTER 150 VI_51 51 150 MASTER\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
