//! The JSON documents of the admin API, built from the current snapshot.

use crate::pool::{clock_ms, WEIGHT_SCALE};
use crate::shared::Shared;
use serde_json::{json, Value};

/// `GET /api/pools`: every server with health, admin state, connections and its last check.
pub fn pools(shared: &Shared) -> Value {
    let snap = shared.snapshot();
    let mut pools: Vec<Value> = snap
        .cfg
        .pools
        .iter()
        .filter_map(|cfg| snap.pools.get(&cfg.name))
        .map(|p| {
            let servers: Vec<Value> = p
                .pool
                .servers
                .iter()
                .map(|s| {
                    let (health, last) = s.state.health();
                    let slowstart_left = s.state.slowstart_left(p.pool.cfg.slowstart);
                    let effective = s.state.effective_weight(p.pool.cfg.slowstart, clock_ms());
                    json!({
                        "name": s.cfg.name,
                        "addr": s.addr.to_string(),
                        "backup": s.cfg.backup,
                        "up": health.is_up(),
                        "health": health.describe(),
                        "admin": s.state.admin(),
                        "active": s.state.active(),
                        "total": s.state.total(),
                        "maxconn": s.cfg.maxconn,
                        "weight": s.state.weight(),
                        "config_weight": s.state.config_weight(),
                        "slowstart_left": slowstart_left.map(|d| d.as_secs_f64()),
                        "effective_weight": effective as f64 / WEIGHT_SCALE as f64,
                        "last_check": last,
                    })
                })
                .collect();
            json!({
                "name": p.pool.cfg.name,
                "balance": p.pool.cfg.balance,
                "check": p.pool.cfg.check.kind,
                "slowstart": p.pool.cfg.slowstart.map(|d| format!("{d:?}")),
                "healthy": p.pool.has_up(),
                "servers": servers,
            })
        })
        .collect();
    pools.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let state_file = snap.cfg.admin.as_ref().and_then(|a| a.state_file.as_ref());
    json!({ "pools": pools, "state_file": state_file })
}

/// `GET /api/listeners`.
pub fn listeners(shared: &Shared) -> Value {
    let snap = shared.snapshot();
    let listeners: Vec<Value> = snap
        .cfg
        .listeners
        .iter()
        .filter_map(|cfg| snap.listeners.get(&cfg.name))
        .map(|l| {
            json!({
                "name": l.cfg.name,
                "bind": l.cfg.bind,
                "addr": l.addr.get().map(|a| a.to_string()),
                "mode": l.cfg.mode,
                "pool": l.cfg.pool,
                "tls": l.cfg.tls.is_some(),
                "mutual_tls": l.cfg.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
                "accept_proxy": l.cfg.accept_proxy,
                "active": l.stats.active(),
                "maxconn": l.cfg.maxconn,
                "rate_limit": l.cfg.rate_limit,
                "backlog": l.cfg.backlog,
                "limits": l.cfg.limits,
                "limit_state": l.stats.limits.status(),
            })
        })
        .collect();
    json!({ "listeners": listeners })
}

/// `GET /api/sets`: the routing table with each SET's health and connections.
pub fn sets(shared: &Shared) -> Value {
    let snap = shared.snapshot();
    let Some(router) = &snap.router else {
        return json!({ "sets": [], "fingerprint": null });
    };
    let pool_state = |name: &str| {
        snap.pools
            .get(name)
            .map(|p| {
                let active: usize = p.pool.servers.iter().map(|s| s.state.active()).sum();
                (p.pool.has_up(), active)
            })
            .unwrap_or((false, 0))
    };
    let sets: Vec<Value> = router
        .sets()
        .iter()
        .map(|s| {
            let (healthy, active) = pool_state(s.pool());
            json!({
                "name": s.name(),
                "pool": s.pool(),
                "weight": s.weight(),
                "failover": s.failover(),
                "healthy": healthy,
                "active": active,
            })
        })
        .collect();
    let (default_healthy, default_active) = pool_state(router.default_pool());
    json!({
        "fingerprint": router.fingerprint(),
        "key": router.key_source().to_string(),
        "strategy": router.strategy().as_str(),
        "default": { "pool": router.default_pool(), "healthy": default_healthy, "active": default_active },
        "sets": sets,
    })
}

/// `GET /api/route?key=K`, or `None` without `[routing]`.
pub fn route(shared: &Shared, key: &str) -> Option<Value> {
    let snap = shared.snapshot();
    let router = snap.router.as_ref()?;
    let r = router.route(Some(key));
    Some(json!({
        "key": key,
        "set": r.set,
        "pool": r.pool,
        "reason": r.reason.as_str(),
        "fingerprint": router.fingerprint(),
    }))
}
