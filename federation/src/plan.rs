//! From config to running units: links resolved with their upstreams, flows, and the reload diff.
//!
//! A *flow* is one (upstream, exchange) pair of a link: its own upstream queue, consumer,
//! connections and retry loop, as in RabbitMQ's plugin. A link with two upstreams and three
//! exchanges runs six flows; one broken exchange or upstream does not stop the others.

use crate::config::{DownstreamConfig, FederationConfig, LinkConfig, UpstreamConfig};

/// A link together with the upstream sections it refers to: everything its flows depend on, so
/// that comparing two plans tells whether the link must restart on reload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LinkPlan {
    pub name: String,
    pub link: LinkConfig,
    pub upstreams: Vec<UpstreamConfig>,
}

impl LinkPlan {
    /// One flow per (upstream, exchange), upstream-major.
    pub fn flows(&self) -> Vec<FlowSpec> {
        self.upstreams
            .iter()
            .flat_map(|up| {
                self.link.exchanges.iter().map(move |x| FlowSpec {
                    link: self.name.clone(),
                    upstream: up.clone(),
                    downstream: self.link.downstream.clone(),
                    exchange: x.clone(),
                    binding_keys: self.link.binding_keys.clone(),
                    mandatory: self.link.mandatory,
                })
            })
            .collect()
    }
}

/// Resolves every link; links naming an undefined upstream keep only the defined ones
/// (`validate` rejects such a config before it gets here).
pub(crate) fn plans(cfg: &FederationConfig) -> Vec<LinkPlan> {
    cfg.link
        .iter()
        .map(|link| LinkPlan {
            name: link.name(),
            link: link.clone(),
            upstreams: link
                .upstreams
                .iter()
                .filter_map(|n| cfg.upstream.iter().find(|u| &u.name == n).cloned())
                .collect(),
        })
        .collect()
}

/// What a reload does to one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// New link: start it.
    Start(String),
    /// The link or one of its upstreams changed: stop it cleanly, start it again.
    Restart(String),
    /// Gone from the config: stop it cleanly.
    Stop(String),
    /// Unchanged: leave it running, its connections untouched.
    Keep(String),
}

/// What a reload from `old` to `new` does to each link, from the configs alone (pure).
pub fn diff_config(old: &FederationConfig, new: &FederationConfig) -> Vec<Change> {
    diff(&plans(old), &plans(new))
}

/// Compares link plans by name. Order: stops first, then the new config's order.
pub(crate) fn diff(old: &[LinkPlan], new: &[LinkPlan]) -> Vec<Change> {
    let mut out: Vec<Change> = old
        .iter()
        .filter(|o| !new.iter().any(|n| n.name == o.name))
        .map(|o| Change::Stop(o.name.clone()))
        .collect();
    for n in new {
        out.push(match old.iter().find(|o| o.name == n.name) {
            None => Change::Start(n.name.clone()),
            Some(o) if o == n => Change::Keep(n.name.clone()),
            Some(_) => Change::Restart(n.name.clone()),
        });
    }
    out
}

/// One (upstream, exchange) of a link.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FlowSpec {
    pub link: String,
    pub upstream: UpstreamConfig,
    pub downstream: DownstreamConfig,
    pub exchange: String,
    pub binding_keys: Vec<String>,
    pub mandatory: bool,
}

impl FlowSpec {
    /// The durable upstream queue: `federation: X -> DOWNSTREAM`.
    pub fn queue_name(&self) -> String {
        format!("federation: {} -> {}", self.exchange, self.downstream.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> FederationConfig {
        toml::from_str(s).unwrap()
    }

    const BASE: &str = r#"
        [[upstream]]
        name = "dc1"
        uris = ["amqp://h1:5672/%2f"]
        [[upstream]]
        name = "dc3"
        uris = ["amqp://h3:5672/%2f"]
        [[link]]
        name = "a"
        upstreams = ["dc1", "dc3"]
        downstream = { name = "dc2", uris = ["amqp://h2:5672/%2f"] }
        exchanges = ["x", "y"]
        [[link]]
        name = "b"
        upstreams = ["dc3"]
        downstream = { name = "dc4", uris = ["amqp://h4:5672/%2f"] }
        exchanges = ["z"]
    "#;

    #[test]
    fn flows_cover_every_upstream_and_exchange() {
        let p = plans(&cfg(BASE));
        let f: Vec<(String, String, String)> = p[0]
            .flows()
            .iter()
            .map(|f| (f.upstream.name.clone(), f.exchange.clone(), f.queue_name()))
            .collect();
        assert_eq!(
            f,
            vec![
                ("dc1".into(), "x".into(), "federation: x -> dc2".into()),
                ("dc1".into(), "y".into(), "federation: y -> dc2".into()),
                ("dc3".into(), "x".into(), "federation: x -> dc2".into()),
                ("dc3".into(), "y".into(), "federation: y -> dc2".into()),
            ]
        );
    }

    #[test]
    fn unchanged_config_keeps_everything() {
        let p = plans(&cfg(BASE));
        assert_eq!(
            diff(&p, &p),
            vec![Change::Keep("a".into()), Change::Keep("b".into())]
        );
    }

    #[test]
    fn changing_an_upstream_restarts_only_links_that_use_it() {
        let old = plans(&cfg(BASE));
        let new = plans(&cfg(
            &BASE.replace("amqp://h1:5672/%2f", "amqp://h1b:5672/%2f")
        ));
        assert_eq!(
            diff(&old, &new),
            vec![Change::Restart("a".into()), Change::Keep("b".into())]
        );
        let new = plans(&cfg(&BASE.replace(
            "name = \"dc3\"\n        uris",
            "name = \"dc3\"\n        prefetch_count = 10\n        uris",
        )));
        assert_eq!(
            diff(&old, &new),
            vec![Change::Restart("a".into()), Change::Restart("b".into())]
        );
    }

    #[test]
    fn added_and_removed_links() {
        let old = plans(&cfg(BASE));
        let new = plans(&cfg(&BASE.replace("name = \"b\"", "name = \"c\"")));
        assert_eq!(
            diff(&old, &new),
            vec![
                Change::Stop("b".into()),
                Change::Keep("a".into()),
                Change::Start("c".into())
            ]
        );
    }
}
