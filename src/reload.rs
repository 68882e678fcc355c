//! SIGHUP: load -> build (off the runtime) -> one pure diff -> apply, the same path for every
//! section.
//!
//! [`diff`] compares the running config with the new one and says everything the reload will do,
//! or why it must be refused, before anything changes; it reads no file and opens no socket, so
//! its unit tests are a table of config pairs. [`reload`] then applies the plan in an order that
//! never shows a half-new state: refusals first (nothing changed yet), then the proxy's new
//! sockets are bound (a bind that fails refuses the reload, nothing changed yet), then the new
//! proxy snapshot goes in use whole, then VRRP and the federation links follow.

use crate::config::Config;
use crate::load::{load_blocking, Loaded};
use setgate_federation::{Federation, LinkChange};
use setgate_proxy::{Change, Proxy};
use setgate_vrrp::Vrrp;
use std::path::Path;
use tracing::{error, info, warn};

/// What [`diff`] says VRRP must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VrrpChange {
    /// Settings that can change live changed: apply them.
    Apply,
    /// `[vrrp]` was added or removed: that takes a restart; keep running as is.
    AtRestart,
}

/// Everything a reload does, computed before it does any of it.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Listeners, pools, servers, routing, admin.
    pub proxy: Vec<Change>,
    /// Every link, including those kept as they are.
    pub links: Vec<LinkChange>,
    /// VRRP, when its section changed.
    pub vrrp: Option<VrrpChange>,
    /// `shutdown_grace` changed (read at shutdown; nothing to restart).
    pub shutdown_grace: bool,
    /// Why the reload cannot be applied; when not empty, nothing is.
    pub refusals: Vec<String>,
}

/// The reload from `old` to `new` (both already checked). Pure.
pub fn diff(old: &Config, new: &Config) -> Plan {
    let mut plan = Plan {
        proxy: setgate_proxy::diff(&old.proxy(), &new.proxy()),
        links: setgate_federation::diff(&old.messaging(), &new.messaging()),
        shutdown_grace: old.shutdown_grace != new.shutdown_grace,
        ..Plan::default()
    };
    match (&old.vrrp, &new.vrrp) {
        (Some(o), Some(n)) if o != n => {
            plan.refusals = setgate_vrrp::config::restart_needed(o, n);
            plan.vrrp = Some(VrrpChange::Apply);
        }
        (None, Some(_)) | (Some(_), None) => plan.vrrp = Some(VrrpChange::AtRestart),
        _ => {}
    }
    plan
}

impl Plan {
    /// One line per change, as the log shows it (kept links are not changes).
    pub fn describe(&self) -> Vec<String> {
        let mut out: Vec<String> = self.proxy.iter().map(describe_proxy).collect();
        for l in &self.links {
            match l {
                LinkChange::Start(n) => out.push(format!("link {n}: start")),
                LinkChange::Restart(n) => out.push(format!("link {n}: restart")),
                LinkChange::Stop(n) => out.push(format!("link {n}: stop")),
                LinkChange::Keep(_) => {}
            }
        }
        match self.vrrp {
            Some(VrrpChange::Apply) => out.push("vrrp: apply the new settings".into()),
            Some(VrrpChange::AtRestart) => {
                out.push("vrrp: adding or removing [vrrp] takes effect at the next restart".into())
            }
            None => {}
        }
        if self.shutdown_grace {
            out.push("shutdown_grace: changed".into());
        }
        out
    }
}

fn describe_proxy(c: &Change) -> String {
    match c {
        Change::Bind { listener, bind } => format!("listener {listener}: listen on {bind}"),
        Change::Rename { from, to, bind } => {
            format!("listener {from}: renamed {to}, keeps its socket on {bind}")
        }
        Change::UpdateListener(l) => format!("listener {l}: new settings"),
        Change::Close { listener, bind } => {
            format!("listener {listener}: stop listening on {bind}")
        }
        Change::AddPool(p) => format!("pool {p}: added"),
        Change::RemovePool(p) => format!("pool {p}: removed"),
        Change::UpdatePool(p) => format!("pool {p}: new settings"),
        Change::AddServer { pool, server } => format!("pool {pool}: server {server} added"),
        Change::RemoveServer { pool, server } => format!("pool {pool}: server {server} removed"),
        Change::ReplaceServer { pool, server } => {
            format!("pool {pool}: server {server} has a new address; its health starts over")
        }
        Change::UpdateServer { pool, server } => {
            format!("pool {pool}: server {server} has new settings")
        }
        Change::Routing => "routing: new table".into(),
        Change::AdminListenAtRestart => {
            "admin.listen: changed; the admin server keeps its address until setgate restarts"
                .into()
        }
    }
}

/// What a reload acts on.
#[derive(Debug)]
pub struct Running<'a> {
    /// The edge proxy.
    pub proxy: &'a Proxy,
    /// The federation links.
    pub federation: &'a Federation,
    /// VRRP, when `[vrrp]` was configured at start.
    pub vrrp: Option<&'a Vrrp>,
}

/// SIGHUP: re-read the file; apply it if valid, otherwise log every error and keep the old one.
/// Returns the config now running.
pub async fn reload(path: &Path, current: Config, parts: &Running<'_>) -> Config {
    info!(config = %path.display(), "SIGHUP: reloading");
    let Loaded {
        cfg: mut new,
        proxy: snapshot,
    } = match load_blocking(path.to_path_buf(), Some(parts.proxy.snapshot())).await {
        Ok(l) => l,
        Err(errs) => return refuse(errs, current),
    };
    let plan = diff(&current, &new);
    if !plan.refusals.is_empty() {
        return refuse(plan.refusals, current);
    }
    match parts.proxy.stage(snapshot, &plan.proxy) {
        Ok(staged) => staged.commit(),
        Err(errs) => return refuse(errs, current),
    }
    match (plan.vrrp, parts.vrrp, &new.vrrp) {
        (Some(VrrpChange::Apply), Some(v), Some(cfg)) => {
            // `diff` already refused what VRRP would refuse; this only reports a surprise.
            if let Err(errs) = v.reload(cfg.clone()) {
                for e in errs {
                    error!("vrrp: {e}");
                }
            }
        }
        (Some(VrrpChange::AtRestart), _, _) => new.vrrp = current.vrrp.clone(),
        _ => {}
    }
    if plan.links.iter().any(|c| !matches!(c, LinkChange::Keep(_))) {
        parts.federation.apply(&new.messaging(), &plan.links).await;
    }
    let changes = plan.describe();
    for change in &changes {
        info!(%change, "reload");
    }
    metrics::counter!("setgate_config_reloads_total", "result" => "ok").increment(1);
    info!(changes = changes.len(), "reloaded");
    new
}

fn refuse(errs: Vec<String>, current: Config) -> Config {
    for e in &errs {
        error!("{e}");
    }
    warn!(
        errors = errs.len(),
        "reload refused; still running on the previous config"
    );
    metrics::counter!("setgate_config_reloads_total", "result" => "refused").increment(1);
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [[listener]]
        name = "amqp"
        bind = "127.0.0.1:5672"
        pool = "center"

        [[pool]]
        name = "center"
        servers = [{ name = "c1", addr = "127.0.0.1:5001" }]

        [[federation.upstream]]
        name = "dc1"
        uris = ["amqp://127.0.0.1:5001/%2f"]

        [[federation.link]]
        name = "orders"
        upstreams = ["dc1"]
        downstream = { name = "dc2", uris = ["amqp://127.0.0.1:5002/%2f"] }
        exchanges = ["orders"]
    "#;

    const VRRP: &str = r#"
        [vrrp]
        interface = "eth0"
        vrid = 51
        priority = 100
        vip = ["192.0.2.10/24"]
    "#;

    fn cfg(text: &str) -> Config {
        let c: Config = toml::from_str(text).expect("test config parses");
        assert_eq!(c.validate(), Vec::<String>::new(), "test config is valid");
        c
    }

    #[test]
    fn the_reload_table() {
        let cases: Vec<(&str, String, String, Vec<&str>)> = vec![
            ("nothing changed", BASE.into(), BASE.into(), vec![]),
            (
                "listener renamed",
                BASE.into(),
                BASE.replace("name = \"amqp\"", "name = \"amqp-b\""),
                vec!["listener amqp: renamed amqp-b, keeps its socket on 127.0.0.1:5672"],
            ),
            (
                "listener moved",
                BASE.into(),
                BASE.replace("127.0.0.1:5672", "127.0.0.1:5673"),
                vec![
                    "listener amqp: listen on 127.0.0.1:5673",
                    "listener amqp: stop listening on 127.0.0.1:5672",
                ],
            ),
            (
                "server swapped for another broker",
                BASE.into(),
                BASE.replace("name = \"c1\", addr = \"127.0.0.1:5001\"", "name = \"c2\", addr = \"127.0.0.1:5003\""),
                vec!["pool center: server c2 added", "pool center: server c1 removed"],
            ),
            (
                "link added",
                BASE.into(),
                BASE.to_string() + "[[federation.link]]\nname = \"events\"\nupstreams = [\"dc1\"]\ndownstream = { name = \"dc2\", uris = [\"amqp://127.0.0.1:5002/%2f\"] }\nexchanges = [\"events\"]\n",
                vec!["link events: start"],
            ),
            (
                "the upstream a link uses changed",
                BASE.into(),
                BASE.replace("uris = [\"amqp://127.0.0.1:5001/%2f\"]", "uris = [\"amqp://127.0.0.1:5009/%2f\"]"),
                vec!["link orders: restart"],
            ),
            (
                "vrrp added: at the next restart",
                BASE.into(),
                BASE.to_string() + VRRP,
                vec!["vrrp: adding or removing [vrrp] takes effect at the next restart"],
            ),
            (
                "vrrp priority: live",
                BASE.to_string() + VRRP,
                (BASE.to_string() + VRRP).replace("priority = 100", "priority = 50"),
                vec!["vrrp: apply the new settings"],
            ),
            (
                "grace and admin",
                BASE.into(),
                "shutdown_grace = \"5s\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n".to_string() + BASE,
                vec![
                    "admin.listen: changed; the admin server keeps its address until setgate restarts",
                    "shutdown_grace: changed",
                ],
            ),
        ];
        for (case, old, new, want) in cases {
            let plan = diff(&cfg(&old), &cfg(&new));
            assert_eq!(plan.refusals, Vec::<String>::new(), "case: {case}");
            assert_eq!(plan.describe(), want, "case: {case}");
        }
    }

    #[test]
    fn a_vrrp_change_that_needs_a_restart_refuses_the_whole_reload() {
        let old = cfg(&(BASE.to_string() + VRRP));
        let new = cfg(&(BASE.to_string() + VRRP)
            .replace("vrid = 51", "vrid = 52")
            .replace("name = \"amqp\"", "name = \"amqp-b\""));
        let plan = diff(&old, &new);
        assert_eq!(
            plan.refusals,
            vec!["vrrp.vrid: changing it needs a restart of setgate; still running with the old [vrrp] settings"]
        );
    }

    #[test]
    fn kept_links_are_in_the_plan_but_not_described() {
        let plan = diff(&cfg(BASE), &cfg(BASE));
        assert_eq!(plan.links, vec![LinkChange::Keep("orders".into())]);
        assert!(plan.describe().is_empty());
    }
}
