//! `[admin] state_file`: the admin states and weights set through the API, kept on disk so they
//! survive a restart (HAProxy's `server-state-file`).
//!
//! Only servers whose state differs from what the config says are written (drained, in
//! maintenance, or with a weight set through the API). The file is rewritten whole on every
//! change through the API and after every reload, to a temporary file that is then renamed over
//! it, so a crash leaves the old file or the new one, never half of one. At start, a missing file
//! means nothing was changed yet; a corrupt one is reported and ignored.

use crate::config::MAX_WEIGHT;
use crate::pool::AdminState;
use crate::shared::{Shared, Snapshot};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    /// Format version, 1.
    pub version: u32,
    /// The servers whose state differs from the config's.
    pub servers: Vec<SavedServer>,
}

/// One server's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedServer {
    /// Pool name.
    pub pool: String,
    /// Server name.
    pub server: String,
    /// Its address when saved: a server with the same name at another address is another broker,
    /// and does not inherit the state.
    pub addr: String,
    /// Admin state.
    pub admin: AdminState,
    /// The weight in force.
    pub weight: u32,
    /// The config's weight when saved: if the file now says otherwise, the file wins.
    pub config_weight: u32,
}

/// Parses the file's text.
pub fn parse(text: &str) -> Result<SavedState, String> {
    let state: SavedState = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if state.version != 1 {
        return Err(format!("version {} is not 1", state.version));
    }
    if let Some(s) = state.servers.iter().find(|s| s.weight > MAX_WEIGHT) {
        return Err(format!(
            "server {}/{} has weight {}, above {MAX_WEIGHT}",
            s.pool, s.server, s.weight
        ));
    }
    Ok(state)
}

/// The state of `snap`'s servers that differs from their config, in file order.
pub fn collect(snap: &Snapshot) -> SavedState {
    let mut servers = Vec::new();
    for cfg in &snap.cfg.pools {
        let Some(pool) = snap.pools.get(&cfg.name) else {
            continue;
        };
        for s in &pool.pool.servers {
            let (admin, weight) = (s.state.admin(), s.state.weight());
            let config_weight = s.state.config_weight();
            if admin != AdminState::Ready || weight != config_weight {
                servers.push(SavedServer {
                    pool: cfg.name.clone(),
                    server: s.cfg.name.clone(),
                    addr: s.addr.to_string(),
                    admin,
                    weight,
                    config_weight,
                });
            }
        }
    }
    SavedState {
        version: 1,
        servers,
    }
}

/// What [`apply`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Servers whose admin state (and weight) were restored.
    pub restored: Vec<String>,
    /// Servers whose saved weight was dropped because the config's weight changed since.
    pub config_weight_changed: Vec<String>,
    /// Entries for servers the config no longer has (or has at another address).
    pub unknown: Vec<String>,
}

/// Puts the saved states on the servers of `snap` that are still there at the same address.
pub fn apply(snap: &Snapshot, saved: &SavedState) -> Applied {
    let mut out = Applied::default();
    for s in &saved.servers {
        let id = format!("{}/{}", s.pool, s.server);
        let server = snap
            .pools
            .get(&s.pool)
            .and_then(|p| p.pool.server(&s.server))
            .filter(|server| server.addr.to_string() == s.addr);
        match server {
            Some(server) => {
                if !server.state.restore(s.admin, s.weight, s.config_weight) {
                    out.config_weight_changed.push(id.clone());
                }
                out.restored.push(id);
            }
            None => out.unknown.push(id),
        }
    }
    out
}

/// At start: reads `path` and applies it to `snap`, reporting a missing or corrupt file and
/// going on without it.
pub fn load(path: &Path, snap: &Snapshot) {
    let file = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            info!(state_file = %file, "state file {file} does not exist yet; starting with the states and weights of the config (it is written at the first change)");
            return;
        }
        Err(e) => {
            warn!(state_file = %file, error = %e, "cannot read state file {file}: {e}; ignoring it, starting with the states and weights of the config");
            return;
        }
    };
    let saved = match parse(&text) {
        Ok(s) => s,
        Err(e) => {
            warn!(state_file = %file, error = %e, "state file {file} is corrupt ({e}); ignoring it, starting with the states and weights of the config (it is rewritten at the next change)");
            return;
        }
    };
    let applied = apply(snap, &saved);
    info!(state_file = %file, restored = ?applied.restored, "restored the admin state and weight of {} server(s) from {file}", applied.restored.len());
    if !applied.config_weight_changed.is_empty() {
        info!(state_file = %file, servers = ?applied.config_weight_changed, "the config's weight changed since these weights were saved; the config's weight is used");
    }
    if !applied.unknown.is_empty() {
        warn!(state_file = %file, servers = ?applied.unknown, "state file {file} names servers the config no longer has (or has at another address); ignored");
    }
}

/// Writes `state` to `path` through a temporary file in the same directory and a rename.
pub fn save(path: &Path, state: &SavedState) -> std::io::Result<()> {
    let mut tmp = PathBuf::from(path);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    tmp.set_file_name(name);
    let mut text = serde_json::to_string_pretty(state).map_err(std::io::Error::other)?;
    text.push('\n');
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Writes the current state to the configured state file, if there is one. Writes are serialized
/// and each one takes the state as it is when it runs, so the last write is the latest state.
/// Returns the error, already logged.
pub async fn persist(shared: &Arc<Shared>) -> Result<(), String> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let _one_at_a_time = shared
            .state_file_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let snap = shared.snapshot();
        let Some(path) = snap.cfg.admin.as_ref().and_then(|a| a.state_file.clone()) else {
            return Ok(());
        };
        save(&path, &collect(&snap)).map_err(|e| {
            let msg = format!("cannot write state file {}: {e}", path.display());
            warn!("{msg}");
            msg
        })
    })
    .await
    .unwrap_or_else(|e| Err(format!("writing the state file failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AdminConfig, PoolConfig, ProxyConfig};

    fn snapshot(weights: &[u32]) -> Snapshot {
        let servers: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                format!(
                    "{{ name = \"s{i}\", addr = \"127.0.0.1:{}\", weight = {w} }}",
                    5000 + i
                )
            })
            .collect();
        let pool: PoolConfig =
            toml::from_str(&format!("name = \"p\"\nservers = [{}]", servers.join(", "))).unwrap();
        let cfg = ProxyConfig {
            admin: Some(AdminConfig {
                listen: "127.0.0.1:0".into(),
                token_file: None,
                state_file: None,
            }),
            listeners: vec![],
            pools: vec![pool],
            routing: None,
        };
        crate::build(cfg, None).unwrap()
    }

    fn state(snap: &Snapshot, i: usize) -> &crate::pool::ServerState {
        &snap.pools["p"].pool.servers[i].state
    }

    #[test]
    fn only_what_differs_from_the_config_is_saved_and_it_round_trips() {
        let snap = snapshot(&[1, 2, 1]);
        assert_eq!(collect(&snap).servers, vec![]);
        state(&snap, 0).set_admin(AdminState::Drain);
        state(&snap, 1).set_weight(5);
        let saved = collect(&snap);
        assert_eq!(saved.servers.len(), 2);
        assert_eq!(
            (saved.servers[1].weight, saved.servers[1].config_weight),
            (5, 2)
        );
        let text = serde_json::to_string(&saved).unwrap();
        assert_eq!(parse(&text).unwrap(), saved);

        let fresh = snapshot(&[1, 2, 1]);
        let applied = apply(&fresh, &saved);
        assert_eq!(applied.restored, ["p/s0", "p/s1"]);
        assert_eq!(state(&fresh, 0).admin(), AdminState::Drain);
        assert_eq!(state(&fresh, 1).weight(), 5);
        assert_eq!(state(&fresh, 2).weight(), 1);
    }

    #[test]
    fn a_changed_config_weight_wins_over_the_saved_one() {
        let snap = snapshot(&[1, 2]);
        state(&snap, 1).set_weight(5);
        state(&snap, 1).set_admin(AdminState::Maint);
        let saved = collect(&snap);
        let edited = snapshot(&[1, 3]);
        let applied = apply(&edited, &saved);
        assert_eq!(applied.config_weight_changed, ["p/s1"]);
        assert_eq!(state(&edited, 1).weight(), 3);
        assert_eq!(state(&edited, 1).admin(), AdminState::Maint);
    }

    #[test]
    fn entries_for_servers_gone_or_moved_are_ignored() {
        let snap = snapshot(&[1]);
        let mut saved = SavedState {
            version: 1,
            servers: vec![SavedServer {
                pool: "p".into(),
                server: "s0".into(),
                addr: "127.0.0.1:9999".into(),
                admin: AdminState::Drain,
                weight: 1,
                config_weight: 1,
            }],
        };
        saved.servers.push(SavedServer {
            server: "gone".into(),
            ..saved.servers[0].clone()
        });
        let applied = apply(&snap, &saved);
        assert_eq!(applied.unknown, ["p/s0", "p/gone"]);
        assert_eq!(state(&snap, 0).admin(), AdminState::Ready);
    }

    #[test]
    fn corrupt_files_are_refused_with_a_reason() {
        assert!(parse("").is_err());
        assert!(parse("{\"version\": 1, \"servers\": [").is_err());
        assert_eq!(
            parse("{\"version\": 2, \"servers\": []}").unwrap_err(),
            "version 2 is not 1"
        );
        let heavy = r#"{"version":1,"servers":[{"pool":"p","server":"s","addr":"a:1","admin":"ready","weight":999,"config_weight":1}]}"#;
        assert!(parse(heavy).unwrap_err().contains("above 256"));
    }

    #[test]
    fn save_replaces_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("setgate-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        std::fs::write(&path, "garbage").unwrap();
        let state = SavedState {
            version: 1,
            servers: vec![],
        };
        save(&path, &state).unwrap();
        assert_eq!(
            parse(&std::fs::read_to_string(&path).unwrap()).unwrap(),
            state
        );
        assert!(!dir.join("state.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
