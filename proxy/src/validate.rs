//! The proxy's sections checked on their own: every problem at once, each naming the field and what
//! to do about it. Pure: what needs a file or a built router (TLS files, the token file, the
//! routing table) is checked where it is loaded, in [`crate::build`], so nothing is read twice.

use crate::addr::{split_host_port, ServerAddr};
use crate::config::{Balance, CheckKind, ListenerMode, ProxyConfig, MAX_WEIGHT};
use std::collections::HashSet;
use std::net::SocketAddr;

/// Every problem in `cfg`, as `field: what is wrong; what to do` lines. Empty when valid.
pub fn validate(cfg: &ProxyConfig) -> Vec<String> {
    let mut errs = Vec::new();
    if let Some(admin) = &cfg.admin {
        if let Err(e) = admin.listen.parse::<SocketAddr>() {
            errs.push(format!(
                "admin.listen: {:?} is not IP:PORT ({e}); e.g. \"127.0.0.1:9090\"",
                admin.listen
            ));
        }
        if admin
            .state_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty() || p.file_name().is_none())
        {
            errs.push(
                "admin.state_file: not a file name; e.g. \"/var/lib/setgate/state.json\", or remove it".into(),
            );
        }
    }
    let pool_names = validate_pools(cfg, &mut errs);
    validate_listeners(cfg, &pool_names, &mut errs);
    if let Some(routing) = &cfg.routing {
        for pool in routing.referenced_pools() {
            if !pool_names.contains(pool) {
                errs.push(format!(
                    "routing: pool {pool:?} is not defined; add a [[pool]] with name = {pool:?} or use one of {}",
                    list(&pool_names)
                ));
            }
        }
    }
    errs
}

fn list(names: &HashSet<&str>) -> String {
    let mut v: Vec<&str> = names.iter().copied().collect();
    v.sort_unstable();
    if v.is_empty() {
        "(no pools defined)".into()
    } else {
        v.join(", ")
    }
}

fn validate_pools<'a>(cfg: &'a ProxyConfig, errs: &mut Vec<String>) -> HashSet<&'a str> {
    let mut names = HashSet::new();
    for (i, pool) in cfg.pools.iter().enumerate() {
        let f = format!("pool[{i}]");
        if pool.name.trim().is_empty() {
            errs.push(format!("{f}.name: empty; give every pool a unique name"));
        } else if !names.insert(pool.name.as_str()) {
            errs.push(format!(
                "{f}.name: pool {:?} is defined twice; pool names must be unique",
                pool.name
            ));
        }
        let f = format!("pool[{i}] ({})", pool.name);
        if pool.servers.is_empty() {
            errs.push(format!(
                "{f}.servers: empty; list at least one server {{ name, addr }}"
            ));
        }
        if !pool.servers.iter().any(|s| !s.backup) && !pool.servers.is_empty() {
            errs.push(format!(
                "{f}.servers: every server is a backup; mark at least one as primary"
            ));
        }
        let mut server_names = HashSet::new();
        for (j, s) in pool.servers.iter().enumerate() {
            let sf = format!("{f}.servers[{j}]");
            if s.name.trim().is_empty() {
                errs.push(format!(
                    "{sf}.name: empty; give every server a name unique in its pool"
                ));
            } else if !server_names.insert(s.name.as_str()) {
                errs.push(format!(
                    "{sf}.name: server {:?} appears twice in pool {:?}",
                    s.name, pool.name
                ));
            }
            if let Err(e) = ServerAddr::parse(&s.addr) {
                errs.push(format!("{sf}.addr: {e}"));
            }
            if s.maxconn == Some(0) {
                errs.push(format!(
                    "{sf}.maxconn: 0 would refuse every connection; remove it or set >= 1"
                ));
            }
            if s.weight > MAX_WEIGHT {
                errs.push(format!(
                    "{sf}.weight: {} is above {MAX_WEIGHT}; use 0 (no new connections) to {MAX_WEIGHT}",
                    s.weight
                ));
            }
            if s.check_port == Some(0) {
                errs.push(format!("{sf}.check_port: 0 is not a port"));
            }
        }
        let c = &pool.check;
        if c.rise == 0 {
            errs.push(format!(
                "{f}.check.rise: 0; a server needs at least 1 good check to come up"
            ));
        }
        if c.fall == 0 {
            errs.push(format!(
                "{f}.check.fall: 0; a server needs at least 1 failed check to go down"
            ));
        }
        for (name, d) in [
            ("inter", Some(c.inter)),
            ("fastinter", c.fastinter),
            ("downinter", c.downinter),
            ("timeout", Some(c.timeout)),
        ] {
            if d == Some(std::time::Duration::ZERO) {
                errs.push(format!(
                    "{f}.check.{name}: 0s; use a positive duration such as \"2s\""
                ));
            }
        }
        if c.kind == CheckKind::Http && !c.path.starts_with('/') {
            errs.push(format!("{f}.check.path: {:?} must start with '/'", c.path));
        }
        if let Some(auth) = &c.auth {
            if !auth.expose().contains(':') {
                errs.push(format!("{f}.check.auth: must be USER:PASSWORD"));
            }
        }
        match pool.slowstart {
            Some(d) if d.is_zero() => errs.push(format!(
                "{f}.slowstart: 0s; use a window such as \"30s\", or remove it for no ramp"
            )),
            Some(_) if pool.balance == Balance::First => errs.push(format!(
                "{f}.slowstart: balance = \"first\" ignores weights, so there is nothing to ramp; use roundrobin or leastconn, or remove slowstart"
            )),
            _ => {}
        }
        if pool.connect_timeout.is_zero() {
            errs.push(format!(
                "{f}.connect_timeout: 0s; use a positive duration such as \"2s\""
            ));
        }
        if pool.preopen > crate::warm::MAX_PREOPEN {
            errs.push(format!(
                "{f}.preopen: {} is more than {}; a few per server are enough (0 turns it off)",
                pool.preopen,
                crate::warm::MAX_PREOPEN
            ));
        }
        if pool.preopen_max_age.is_zero()
            || pool.preopen_max_age >= crate::warm::BROKER_HANDSHAKE_TIMEOUT
        {
            errs.push(format!(
                "{f}.preopen_max_age: {:?}; use a positive duration under RabbitMQ's handshake_timeout of {:?}, such as \"3s\"",
                pool.preopen_max_age,
                crate::warm::BROKER_HANDSHAKE_TIMEOUT
            ));
        }
    }
    names
}

fn validate_listeners(cfg: &ProxyConfig, pools: &HashSet<&str>, errs: &mut Vec<String>) {
    let mut names = HashSet::new();
    let mut binds = HashSet::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let f = format!("listener[{i}]");
        if l.name.trim().is_empty() {
            errs.push(format!(
                "{f}.name: empty; give every listener a unique name"
            ));
        } else if !names.insert(l.name.as_str()) {
            errs.push(format!("{f}.name: listener {:?} is defined twice", l.name));
        }
        let f = format!("listener[{i}] ({})", l.name);
        match l.bind.parse::<SocketAddr>() {
            Ok(a) => {
                if !binds.insert(a) {
                    errs.push(format!("{f}.bind: {a} is bound by another listener too"));
                }
            }
            Err(_) => {
                let hint = match split_host_port(&l.bind) {
                    Ok(_) => "bind takes an IP address, not a host name".to_string(),
                    Err(e) => e,
                };
                errs.push(format!("{f}.bind: {:?} is not IP:PORT: {hint}", l.bind));
            }
        }
        match (l.mode, &l.pool) {
            (ListenerMode::Tcp, None) => errs.push(format!(
                "{f}.pool: mode = \"tcp\" needs a pool; add pool = \"NAME\""
            )),
            (ListenerMode::Tcp, Some(p)) if !pools.contains(p.as_str()) => errs.push(format!(
                "{f}.pool: pool {p:?} is not defined; use one of {}",
                list(pools)
            )),
            (ListenerMode::Set, Some(_)) => errs.push(format!(
                "{f}.pool: mode = \"set\" routes by [routing]; remove pool, or use mode = \"tcp\""
            )),
            (ListenerMode::Set, None) if cfg.routing.is_none() => {
                errs.push(format!("{f}.mode: \"set\" needs a [routing] section"))
            }
            _ => {}
        }
        if l.maxconn == 0 {
            errs.push(format!(
                "{f}.maxconn: 0 would refuse every connection; set >= 1"
            ));
        }
        crate::validate_limits::validate(&f, l, errs);
        if l.handshake_timeout.is_zero() {
            errs.push(format!(
                "{f}.handshake_timeout: 0s; use a positive duration such as \"10s\""
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{PoolConfig, ProxyConfig};

    #[test]
    fn preopen_out_of_bounds_is_named_with_the_fix() {
        let pool: PoolConfig = toml::from_str(
            "name = \"p\"\npreopen = 17\npreopen_max_age = \"10s\"\n\
             servers = [{ name = \"a\", addr = \"127.0.0.1:5672\" }]\n",
        )
        .unwrap();
        let cfg = ProxyConfig {
            pools: vec![pool],
            ..Default::default()
        };
        let errs = super::validate(&cfg);
        let has = |s: &str| errs.iter().any(|e| e.contains(s));
        assert!(has("pool[0] (p).preopen: 17 is more than 16"), "{errs:?}");
        assert!(has("pool[0] (p).preopen_max_age: 10s"), "{errs:?}");
        let ok: PoolConfig = toml::from_str(
            "name = \"p\"\nservers = [{ name = \"a\", addr = \"127.0.0.1:5672\" }]\n",
        )
        .unwrap();
        assert_eq!((ok.preopen, ok.preopen_max_age.as_secs()), (2, 3));
    }
}
