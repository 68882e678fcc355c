//! From a config to a [`Snapshot`] ready to serve: the checks of [`crate::validate`], then the
//! parts that need a file or real work (TLS files, the admin token, the SET routing table). This is
//! the one place those are loaded, for `setgate check`, start-up and every reload alike, so what
//! `check` accepts, `run` and SIGHUP accept.
//!
//! It reads files and builds the router (up to ~0.1 s for a large ring): call it off the async
//! runtime (`spawn_blocking`). It binds nothing and starts nothing.

use crate::config::{ListenerMode, ProxyConfig, Secret};
use crate::listener_stats::ListenerStats;
use crate::pool::Pool;
use crate::shared::{ListenerRuntime, Snapshot};
use crate::upstream::{PoolRuntime, PoolTls};
use crate::warm::Warm;
use setgate_router::Router;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Checks and builds `cfg`; every problem found is returned at once.
///
/// With `prev` (the snapshot in use), servers that stay (same pool, name and address) keep their
/// health and connection counts, and listeners that stay keep their counters.
pub fn build(cfg: ProxyConfig, prev: Option<&Snapshot>) -> Result<Snapshot, Vec<String>> {
    let mut errs = crate::validate::validate(&cfg);
    // Pools are built only from a valid section: their errors would repeat the checks'.
    let checked = errs.is_empty();
    let mut pools = HashMap::new();
    // Pools a `set` listener can send clients to: only these pre-open broker connections.
    let set_pools: Vec<&str> = match &cfg.routing {
        Some(r) if cfg.listeners.iter().any(|l| l.mode == ListenerMode::Set) => {
            std::iter::once(r.default.as_str())
                .chain(r.sets.iter().map(|s| s.pool.as_str()))
                .collect()
        }
        _ => Vec::new(),
    };
    for (i, p) in cfg.pools.iter().enumerate() {
        let field = format!("pool[{i}] ({})", p.name);
        let tls = match &p.tls {
            Some(t) => match PoolTls::new(t, &format!("{field}.tls")) {
                Ok(t) => Some(t),
                Err(e) => {
                    errs.push(e.to_string());
                    continue;
                }
            },
            None => None,
        };
        if !checked {
            continue;
        }
        let previous = prev.and_then(|s| s.pools.get(&p.name)).map(|r| &r.pool);
        match Pool::build(p, previous) {
            Ok(pool) => {
                // A PROXY header names the client, who is not there yet: no pre-opening.
                let preopen = if set_pools.contains(&p.name.as_str()) && !p.send_proxy {
                    p.preopen
                } else {
                    0
                };
                let names: Vec<&str> = p.servers.iter().map(|s| s.name.as_str()).collect();
                let warm = Warm::new(&p.name, &names, preopen, p.preopen_max_age);
                pools.insert(p.name.clone(), Arc::new(PoolRuntime { pool, tls, warm }));
            }
            Err(e) => errs.push(format!("{field}: {e}")),
        }
    }
    let mut listeners = HashMap::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let tls = match &l.tls {
            Some(t) => {
                match crate::tls::server_config(t, &format!("listener[{i}] ({}).tls", l.name)) {
                    Ok(c) => Some(TlsAcceptor::from(c)),
                    Err(e) => {
                        errs.push(e.to_string());
                        continue;
                    }
                }
            }
            None => None,
        };
        let stats = prev
            .and_then(|s| s.listeners.get(&l.name))
            .map(|r| r.stats.clone())
            .unwrap_or_else(|| Arc::new(ListenerStats::new(&l.name)));
        listeners.insert(
            l.name.clone(),
            Arc::new(ListenerRuntime {
                cfg: l.clone(),
                tls,
                stats,
                addr: std::sync::OnceLock::new(),
            }),
        );
    }
    let router = match &cfg.routing {
        Some(r) => match Router::new(r) {
            Ok(router) => Some(Arc::new(router)),
            Err(problems) => {
                errs.extend(problems.into_iter().map(|p| p.to_string()));
                None
            }
        },
        None => None,
    };
    let token = match cfg.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) if t.trim().is_empty() => {
                errs.push(format!(
                    "admin.token_file: {} is empty; put the bearer token in it",
                    path.display()
                ));
                None
            }
            Ok(t) => Some(Secret::new(t.trim())),
            Err(e) => {
                errs.push(format!(
                    "admin.token_file: cannot read {}: {e}",
                    path.display()
                ));
                None
            }
        },
        None => None,
    };
    if let Some(path) = cfg.admin.as_ref().and_then(|a| a.state_file.as_ref()) {
        errs.extend(check_state_file(path));
    }
    if errs.is_empty() {
        Ok(Snapshot {
            cfg,
            listeners,
            pools,
            router,
            token,
            client_start: Default::default(),
        })
    } else {
        Err(errs)
    }
}

/// The state file need not exist yet (it is written at the first change), but its directory must,
/// and it must not be a directory itself.
fn check_state_file(path: &std::path::Path) -> Option<String> {
    if path.is_dir() {
        return Some(format!(
            "admin.state_file: {} is a directory; name a file in it, e.g. {}",
            path.display(),
            path.join("setgate-state.json").display()
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    (!dir.is_dir()).then(|| {
        format!(
            "admin.state_file: directory {} does not exist; create it or choose another path",
            dir.display()
        )
    })
}
