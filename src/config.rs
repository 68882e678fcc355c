//! setgate's config file: the sections of every crate in one TOML document, loaded and checked as
//! a whole. Each crate validates its own sections; this module adds what crosses them.

use serde::Deserialize;
use setgate_federation::{FederationConfig, MessagingConfig, ShovelConfig};
use setgate_proxy::config::{AdminConfig, ListenerConfig, PoolConfig};
use setgate_proxy::ProxyConfig;
use setgate_router::RoutingConfig;
use setgate_vrrp::VrrpConfig;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How long SIGTERM waits for open connections (and unconfirmed federated messages).
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// `[admin]`.
    pub admin: Option<AdminConfig>,
    /// `[[listener]]`.
    #[serde(default)]
    pub listener: Vec<ListenerConfig>,
    /// `[[pool]]`.
    #[serde(default)]
    pub pool: Vec<PoolConfig>,
    /// `[routing]`.
    pub routing: Option<RoutingConfig>,
    /// `[federation]` (`[[federation.upstream]]`, `[[federation.link]]`).
    #[serde(default)]
    pub federation: FederationConfig,
    /// `[[shovel]]`.
    #[serde(default)]
    pub shovel: Vec<ShovelConfig>,
    /// `[vrrp]`.
    pub vrrp: Option<VrrpConfig>,
}

fn default_grace() -> Duration {
    Duration::from_secs(30)
}

impl Config {
    /// Reads and parses `path`. Checking and building is [`crate::load::load`]'s job.
    pub fn read(path: &Path) -> Result<Config, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
        toml::from_str(&text).map_err(|e| vec![format!("{}: {e}", path.display())])
    }

    /// Every problem in the sections other than the proxy's (those are checked as they are built,
    /// by `setgate_proxy::build`), and in what crosses sections.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = self.messaging().validate();
        if let Some(v) = &self.vrrp {
            errs.extend(v.validate());
        }
        if self.listener.is_empty()
            && self.federation.is_empty()
            && self.shovel.is_empty()
            && self.vrrp.is_none()
        {
            errs.push("the file configures nothing to run: add a [[listener]], a [[federation.link]], a [[shovel]] or [vrrp]".into());
        }
        errs
    }

    /// What the flow engine runs: federation links, shovels, and the routing table routed
    /// destinations use.
    pub fn messaging(&self) -> MessagingConfig {
        MessagingConfig {
            federation: self.federation.clone(),
            shovels: self.shovel.clone(),
            routing: self.routing.clone(),
        }
    }

    /// The proxy's part, with listeners on a virtual IP marked for IP_FREEBIND.
    pub fn proxy(&self) -> ProxyConfig {
        let vips = self
            .vrrp
            .as_ref()
            .map(|v| v.vip_addrs())
            .unwrap_or_default();
        let listeners = self
            .listener
            .iter()
            .cloned()
            .map(|mut l| {
                if let Ok(addr) = l.bind.parse::<SocketAddr>() {
                    l.freebind |= vips.contains(&addr.ip());
                }
                l
            })
            .collect();
        ProxyConfig {
            admin: self.admin.clone(),
            listeners,
            pools: self.pool.clone(),
            routing: self.routing.clone(),
        }
    }

    /// The short summary `setgate check` prints for a valid file, with its built routing table.
    /// Never prints a secret.
    pub fn summary(&self, router: Option<&setgate_router::Router>) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str("  ");
            out.push_str(&s);
            out.push('\n');
        };
        if let Some(a) = &self.admin {
            line(format!(
                "admin: {}{}{}",
                a.listen,
                if a.token_file.is_some() {
                    " (token required for changes)"
                } else {
                    ""
                },
                a.state_file
                    .as_ref()
                    .map(|p| format!(", runtime states kept in {}", p.display()))
                    .unwrap_or_default()
            ));
        }
        for l in &self.listener {
            let target = match (&l.mode, &l.pool) {
                (setgate_proxy::config::ListenerMode::Set, _) => {
                    "set mode, routed by [routing]".to_string()
                }
                (_, Some(p)) => format!("tcp mode -> pool {p}"),
                _ => "tcp mode".to_string(),
            };
            let tls = match &l.tls {
                Some(t) if t.client_ca.is_some() => ", mutual TLS",
                Some(_) => ", TLS",
                None => "",
            };
            line(format!(
                "listener {}: {} ({target}{tls}, maxconn {}{})",
                l.name,
                l.bind,
                l.maxconn,
                setgate_proxy::limits::describe(l)
            ));
        }
        for p in &self.pool {
            let backups = p.servers.iter().filter(|s| s.backup).count();
            let weights = if p.servers.iter().any(|s| s.weight != 1) {
                let w: Vec<String> = p
                    .servers
                    .iter()
                    .map(|s| format!("{}={}", s.name, s.weight))
                    .collect();
                format!(", weights {}", w.join(" "))
            } else {
                String::new()
            };
            let slowstart = p
                .slowstart
                .map(|d| format!(", slowstart {d:?}"))
                .unwrap_or_default();
            line(format!(
                "pool {}: {} server{} ({} backup), balance {}{weights}{slowstart}, {} check every {:?}, rise {} fall {}",
                p.name,
                p.servers.len(),
                if p.servers.len() == 1 { "" } else { "s" },
                backups,
                format!("{:?}", p.balance).to_lowercase(),
                format!("{:?}", p.check.kind).to_lowercase(),
                p.check.inter,
                p.check.rise,
                p.check.fall
            ));
        }
        if let (Some(r), Some(router)) = (&self.routing, router) {
            {
                let reroute = r
                    .reroute
                    .map(|x| format!(", reroute over {:?}", x.window))
                    .unwrap_or_default();
                line(format!(
                    "routing: {} by {}, {} SETs, default pool {}, {} overrides{reroute}, fingerprint {}",
                    router.strategy(),
                    router.key_source(),
                    router.sets().len(),
                    router.default_pool(),
                    r.overrides.len(),
                    router.fingerprint()
                ));
            }
        }
        if !self.federation.is_empty() {
            line(format!("federation: {}", self.federation.summary()));
        }
        for s in &self.shovel {
            line(format!(
                "shovel {}: {} -> {}{}",
                s.name,
                match (&s.source.queue, &s.source.exchange) {
                    (Some(q), _) => format!("queue {q}"),
                    (_, Some(x)) => format!("exchange {x}"),
                    _ => "?".into(),
                },
                match (
                    s.destination.route,
                    &s.destination.queue,
                    &s.destination.exchange
                ) {
                    (Some(r), _, x) => format!(
                        "{} (exchange {})",
                        match r {
                            setgate_federation::route::RouteKind::Sets => "each message's SET",
                            setgate_federation::route::RouteKind::AllSets => "every SET",
                        },
                        x.as_deref().or(s.source.exchange.as_deref()).unwrap_or("?")
                    ),
                    (None, Some(q), _) => format!("queue {q}"),
                    (None, _, Some(x)) => format!("exchange {x}"),
                    _ => "?".into(),
                },
                match s.delete_after {
                    setgate_federation::DeleteAfter::Never => String::new(),
                    d => format!(", delete_after {}", d.describe()),
                }
            ));
        }
        match &self.vrrp {
            Some(v) if v.instance.is_empty() => line(format!("vrrp: {}", v.summary())),
            Some(v) => {
                for i in v.instances() {
                    line(format!("vrrp {}: {}", i.name, i.summary()));
                }
            }
            None => {}
        }
        line(format!("shutdown_grace: {:?}", self.shutdown_grace));
        out
    }
}
