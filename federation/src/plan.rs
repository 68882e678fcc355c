//! From config to running units: links and shovels resolved into flows, and the reload diff.
//!
//! A *flow* is one source queue consumed into one destination: for a link, one (upstream,
//! exchange) pair, as in RabbitMQ's plugin (a link with two upstreams and three exchanges runs
//! six flows; one broken exchange or upstream does not stop the others); for a shovel, its
//! source. A destination that routes each message to a SET (`route = "sets"`) adds one flow per
//! cluster that releases its hold queue; one that copies to every SET (`all-sets`) becomes one
//! flow, with its own source queue, per SET, so each SET goes at its own pace.

use crate::config::{FederationConfig, LinkConfig, QueueType, UpstreamConfig};
use crate::route::{Cluster, MessageKey, RouteKind, SetRoutes};
use crate::shovel::{DeleteAfter, ShovelConfig};
use crate::uri::AmqpUri;
use setgate_router::RoutingConfig;
use std::sync::Arc;

/// Everything the flow engine runs: federation links, shovels, and the routing table that
/// routed destinations use (the same `[routing]` as `set` listeners).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessagingConfig {
    /// `[federation]`.
    pub federation: FederationConfig,
    /// `[[shovel]]`.
    pub shovels: Vec<ShovelConfig>,
    /// `[routing]`, with each SET's messaging `uris` and the center's `default_uris`.
    pub routing: Option<RoutingConfig>,
}

/// Whether a unit is a federation link or a shovel (they are listed apart in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnitKind {
    /// `[[federation.link]]`.
    Link,
    /// `[[shovel]]`.
    Shovel,
}

impl UnitKind {
    /// `link` or `shovel`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Link => "link",
            UnitKind::Shovel => "shovel",
        }
    }
}

/// A link or a shovel with everything its flows depend on, so that comparing two plans tells
/// whether it must restart on reload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UnitPlan {
    pub kind: UnitKind,
    pub name: String,
    pub flows: Vec<FlowSpec>,
    pub delete_after: DeleteAfter,
    /// The destination, as the status names it.
    pub destination: String,
    pub destination_uris: Vec<String>,
    /// Set for a routed destination: its clusters' names, in status order.
    pub routed: Option<Vec<String>>,
}

/// Where a flow consumes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Source {
    /// A durable queue setgate declares, bound to `exchange` with the keys (federation, a
    /// shovel's exchange source, hold queues with no exchange).
    Own {
        queue: String,
        exchange: Option<String>,
        binding_keys: Vec<String>,
        hold: bool,
    },
    /// A queue of the user's (a shovel's queue source). With `declare`, a missing one is
    /// declared durable, as the shovel plugin does; without (the one-shot command), a missing
    /// queue is an error: a typo must not create a queue.
    Existing { queue: String, declare: bool },
}

/// Where a flow publishes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Downstream {
    /// One cluster.
    Cluster { name: String, uris: Vec<AmqpUri> },
    /// The cluster of each message's SET; messages of a SET that is down are parked in
    /// `"{hold_prefix}{SET}"` on the source.
    Sets {
        routes: Arc<SetRoutes>,
        hold_prefix: String,
    },
}

/// What a publish names on the destination.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Target {
    /// An exchange; the message's routing key unless `routing_key` replaces it.
    Exchange {
        name: String,
        routing_key: Option<String>,
    },
    /// A queue, through the default exchange.
    Queue(String),
}

/// What a flow does to the headers of what it forwards.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Headers {
    /// `x-received-from` and loop prevention (federation).
    Federation,
    /// A shovel: with `forward`, the plugin's `x-shovelled` and `x-shovelled-timestamp`.
    Shovel { forward: bool },
    /// Releasing a hold queue: the parked routing key is restored, nothing added.
    Release,
}

/// The header a parked message keeps its routing key in (a hold queue is published to through
/// the default exchange, whose routing key is the queue's name).
pub const HOLD_ROUTING_KEY: &str = "x-setgate-routing-key";

/// One flow.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FlowSpec {
    /// The link's or shovel's name (the `link` label of metrics).
    pub link: String,
    /// The source cluster and how it is consumed (a shovel's source becomes one).
    pub upstream: UpstreamConfig,
    /// What the flow is labelled with: the federated or source exchange, the source queue, or
    /// `hold SET`.
    pub exchange: String,
    pub source: Source,
    pub downstream: Downstream,
    pub target: Target,
    pub headers: Headers,
    pub mandatory: bool,
    pub delete_after: DeleteAfter,
}

impl FlowSpec {
    /// The queue the flow consumes.
    pub fn queue_name(&self) -> String {
        match &self.source {
            Source::Own { queue, .. } | Source::Existing { queue, .. } => queue.clone(),
        }
    }

    /// The downstream's label for errors, status and connection names.
    pub fn downstream_name(&self) -> &str {
        match &self.downstream {
            Downstream::Cluster { name, .. } => name,
            Downstream::Sets { .. } => "sets",
        }
    }

    /// Federation compares the exchange's type on both sides; shovels and releases only check
    /// that what they publish to exists.
    pub fn compares_exchanges(&self) -> bool {
        self.headers == Headers::Federation && matches!(self.downstream, Downstream::Cluster { .. })
    }
}

/// The queue name of a hold queue.
pub(crate) fn hold_queue(prefix: &str, cluster: &str) -> String {
    format!("{prefix}{cluster}")
}

/// Resolves every link and shovel. A config that `validate` rejected may resolve partially
/// (an undefined upstream is left out, a routed destination without `[routing]` has no flow);
/// it never gets here in practice.
pub(crate) fn plans(cfg: &MessagingConfig) -> Vec<UnitPlan> {
    let mut out: Vec<UnitPlan> = cfg
        .federation
        .link
        .iter()
        .map(|link| link_plan(cfg, link))
        .collect();
    out.extend(cfg.shovels.iter().map(|s| shovel_plan(cfg, s)));
    out
}

fn link_plan(cfg: &MessagingConfig, link: &LinkConfig) -> UnitPlan {
    let name = link.name();
    let down = &link.downstream;
    let upstreams: Vec<&UpstreamConfig> = link
        .upstreams
        .iter()
        .filter_map(|n| cfg.federation.upstream.iter().find(|u| &u.name == n))
        .collect();
    let mut flows = Vec::new();
    let mut routed = None;
    for up in &upstreams {
        for x in &link.exchanges {
            let target_exchange = down.exchange.clone().unwrap_or_else(|| x.clone());
            let base = FlowSpec {
                link: name.clone(),
                upstream: (*up).clone(),
                exchange: x.clone(),
                source: Source::Own {
                    queue: format!("federation: {x} -> {}", down.label()),
                    exchange: Some(x.clone()),
                    binding_keys: link.binding_keys.clone(),
                    hold: false,
                },
                downstream: Downstream::Cluster {
                    name: down.name.clone(),
                    uris: down.uris.clone(),
                },
                target: Target::Exchange {
                    name: target_exchange.clone(),
                    routing_key: None,
                },
                headers: Headers::Federation,
                mandatory: link.mandatory,
                delete_after: DeleteAfter::Never,
            };
            let (fs, r) = routed_flows(
                cfg,
                base,
                down.route,
                down.key.as_deref(),
                down.on_set_down.unwrap_or_default(),
                down.include_default.unwrap_or(false),
                |set| format!("federation: {x} -> {set}"),
                &format!("setgate hold: {name} {x} -> "),
            );
            flows.extend(fs);
            routed = routed.or(r);
        }
    }
    UnitPlan {
        kind: UnitKind::Link,
        destination: down.label().to_string(),
        destination_uris: down.uris.iter().map(|u| u.masked().to_string()).collect(),
        name,
        flows,
        delete_after: DeleteAfter::Never,
        routed,
    }
}

fn shovel_plan(cfg: &MessagingConfig, s: &ShovelConfig) -> UnitPlan {
    let src = &s.source;
    let dst = &s.destination;
    let upstream = UpstreamConfig {
        name: format!("{} source", s.name),
        uris: src.uris.clone(),
        reconnect_delay: s.reconnect_delay,
        prefetch_count: s.prefetch_count,
        ack_mode: s.ack_mode,
        max_hops: u32::MAX,
        expires: None,
        message_ttl: None,
        queue_type: QueueType::Classic,
        trust_user_id: false,
    };
    let (source, label) = match (&src.queue, &src.exchange) {
        (Some(q), _) => (
            Source::Existing {
                queue: q.clone(),
                declare: true,
            },
            q.clone(),
        ),
        (None, x) => (
            Source::Own {
                queue: s.own_queue(None),
                exchange: x.clone(),
                binding_keys: src.binding_keys.clone().unwrap_or_else(|| vec!["#".into()]),
                hold: false,
            },
            x.clone().unwrap_or_default(),
        ),
    };
    let target = match (&dst.queue, &dst.exchange) {
        (Some(q), _) if dst.route.is_none() => Target::Queue(q.clone()),
        (_, x) => Target::Exchange {
            // A routed destination publishes to the source's exchange unless told otherwise.
            name: x
                .clone()
                .or_else(|| src.exchange.clone())
                .unwrap_or_default(),
            routing_key: dst.routing_key.clone(),
        },
    };
    let dest_name = match dst.route {
        Some(RouteKind::Sets) => "sets".to_string(),
        Some(RouteKind::AllSets) => "all-sets".to_string(),
        None => format!("{} destination", s.name),
    };
    let base = FlowSpec {
        link: s.name.clone(),
        upstream,
        exchange: label,
        source,
        downstream: Downstream::Cluster {
            name: dest_name.clone(),
            uris: dst.uris.clone(),
        },
        target,
        headers: Headers::Shovel {
            forward: s.add_forward_headers,
        },
        mandatory: false,
        delete_after: s.delete_after,
    };
    let (flows, routed) = routed_flows(
        cfg,
        base,
        dst.route,
        dst.key.as_deref(),
        dst.on_set_down.unwrap_or_default(),
        dst.include_default.unwrap_or(false),
        |set| s.own_queue(Some(set)),
        &format!("setgate hold: {} -> ", s.name),
    );
    UnitPlan {
        kind: UnitKind::Shovel,
        name: s.name.clone(),
        flows,
        delete_after: s.delete_after,
        destination: dest_name,
        destination_uris: dst.uris.iter().map(|u| u.masked().to_string()).collect(),
        routed,
    }
}

/// The flows of one source for a destination that may be routed: the flow itself for one
/// cluster; for `sets`, the routing flow plus one release flow per cluster's hold queue; for
/// `all-sets`, one flow per cluster, each from its own queue (`own_queue(SET)`).
#[allow(clippy::too_many_arguments)]
fn routed_flows(
    cfg: &MessagingConfig,
    base: FlowSpec,
    route: Option<RouteKind>,
    key: Option<&str>,
    on_set_down: crate::route::OnSetDown,
    include_default: bool,
    own_queue: impl Fn(&str) -> String,
    hold_prefix: &str,
) -> (Vec<FlowSpec>, Option<Vec<String>>) {
    let Some(route) = route else {
        return (vec![base], None);
    };
    let Some(routing) = &cfg.routing else {
        return (Vec::new(), None);
    };
    match route {
        RouteKind::Sets => {
            let key = key
                .and_then(|k| MessageKey::parse(k).ok())
                .unwrap_or(MessageKey::RoutingKey);
            let Ok(routes) = SetRoutes::new(routing, key, on_set_down) else {
                return (Vec::new(), None);
            };
            let names = routes.clusters.iter().map(|c| c.name.clone()).collect();
            let releases: Vec<FlowSpec> = routes
                .clusters
                .iter()
                .map(|c| release_flow(&base, c, hold_prefix))
                .collect();
            let routing_flow = FlowSpec {
                downstream: Downstream::Sets {
                    routes: Arc::new(routes),
                    hold_prefix: hold_prefix.to_string(),
                },
                ..base
            };
            (
                std::iter::once(routing_flow).chain(releases).collect(),
                Some(names),
            )
        }
        RouteKind::AllSets => {
            let mut clusters: Vec<Cluster> = Vec::new();
            if include_default {
                clusters.push(Cluster {
                    name: crate::route::DEFAULT_TARGET.into(),
                    uris: routing.default_uris.iter().map(AmqpUri::new).collect(),
                });
            }
            clusters.extend(routing.sets.iter().map(|s| Cluster {
                name: s.name.clone(),
                uris: s.uris.iter().map(AmqpUri::new).collect(),
            }));
            let names = clusters.iter().map(|c| c.name.clone()).collect();
            let flows = clusters
                .into_iter()
                .map(|c| {
                    let mut f = base.clone();
                    if let Source::Own { queue, .. } = &mut f.source {
                        *queue = own_queue(&c.name);
                    }
                    f.downstream = Downstream::Cluster {
                        name: c.name,
                        uris: c.uris,
                    };
                    f
                })
                .collect();
            (flows, Some(names))
        }
    }
}

/// The flow that delivers a cluster's hold queue once the cluster is up, with each parked
/// message's routing key restored; it runs all the time (an empty hold queue costs a consumer).
fn release_flow(base: &FlowSpec, c: &Cluster, hold_prefix: &str) -> FlowSpec {
    let mut upstream = base.upstream.clone();
    // Never let parked messages expire or the hold queue go away.
    upstream.expires = None;
    upstream.message_ttl = None;
    FlowSpec {
        link: base.link.clone(),
        upstream,
        exchange: format!("hold {}", c.name),
        source: Source::Own {
            queue: hold_queue(hold_prefix, &c.name),
            exchange: None,
            binding_keys: Vec::new(),
            hold: true,
        },
        downstream: Downstream::Cluster {
            name: c.name.clone(),
            uris: c.uris.clone(),
        },
        target: base.target.clone(),
        headers: Headers::Release,
        mandatory: false,
        delete_after: DeleteAfter::Never,
    }
}

/// What a reload does to one link or shovel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// New: start it.
    Start(String),
    /// It or one of its upstreams (or, when routed, the routing table) changed: stop it
    /// cleanly, start it again.
    Restart(String),
    /// Gone from the config: stop it cleanly.
    Stop(String),
    /// Unchanged: leave it running, its connections untouched.
    Keep(String),
}

/// What a reload from `old` to `new` does to each link and shovel, from the configs alone
/// (pure). Shovels are named `shovel NAME` so that a link and a shovel may share a name.
pub fn diff_config(old: &MessagingConfig, new: &MessagingConfig) -> Vec<Change> {
    diff(&plans(old), &plans(new))
}

/// The key a unit is known by in [`Change`]s.
pub(crate) fn unit_key(kind: UnitKind, name: &str) -> String {
    match kind {
        UnitKind::Link => name.to_string(),
        UnitKind::Shovel => format!("shovel {name}"),
    }
}

/// Compares plans by kind and name. Order: stops first, then the new config's order.
pub(crate) fn diff(old: &[UnitPlan], new: &[UnitPlan]) -> Vec<Change> {
    let same = |a: &UnitPlan, b: &UnitPlan| a.kind == b.kind && a.name == b.name;
    let mut out: Vec<Change> = old
        .iter()
        .filter(|o| !new.iter().any(|n| same(o, n)))
        .map(|o| Change::Stop(unit_key(o.kind, &o.name)))
        .collect();
    for n in new {
        let key = unit_key(n.kind, &n.name);
        out.push(match old.iter().find(|o| same(o, n)) {
            None => Change::Start(key),
            Some(o) if o == n => Change::Keep(key),
            Some(_) => Change::Restart(key),
        });
    }
    out
}

/// The messaging sections of a whole config file's text, for unit tests.
#[cfg(test)]
pub(crate) fn parse_messaging(s: &str) -> MessagingConfig {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        federation: FederationConfig,
        #[serde(default)]
        shovel: Vec<ShovelConfig>,
        routing: Option<RoutingConfig>,
    }
    let f: File = toml::from_str(s).unwrap();
    MessagingConfig {
        federation: f.federation,
        shovels: f.shovel,
        routing: f.routing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> MessagingConfig {
        parse_messaging(s)
    }

    const BASE: &str = r#"
        [[federation.upstream]]
        name = "dc1"
        uris = ["amqp://h1:5672/%2f"]
        [[federation.upstream]]
        name = "dc3"
        uris = ["amqp://h3:5672/%2f"]
        [[federation.link]]
        name = "a"
        upstreams = ["dc1", "dc3"]
        downstream = { name = "dc2", uris = ["amqp://h2:5672/%2f"] }
        exchanges = ["x", "y"]
        [[federation.link]]
        name = "b"
        upstreams = ["dc3"]
        downstream = { name = "dc4", uris = ["amqp://h4:5672/%2f"] }
        exchanges = ["z"]
    "#;

    const ROUTING: &str = r#"
        [routing]
        default = "center"
        default_uris = ["amqp://c:5672/%2f"]
        sets = [
          { name = "set-a", pool = "pa", uris = ["amqp://a:5672/%2f"] },
          { name = "set-b", pool = "pb", uris = ["amqp://b:5672/%2f"] },
        ]
    "#;

    fn queues(p: &UnitPlan) -> Vec<(String, String, String)> {
        p.flows
            .iter()
            .map(|f| (f.upstream.name.clone(), f.exchange.clone(), f.queue_name()))
            .collect()
    }

    #[test]
    fn flows_cover_every_upstream_and_exchange() {
        let p = plans(&cfg(BASE));
        assert_eq!(
            queues(&p[0]),
            vec![
                ("dc1".into(), "x".into(), "federation: x -> dc2".into()),
                ("dc1".into(), "y".into(), "federation: y -> dc2".into()),
                ("dc3".into(), "x".into(), "federation: x -> dc2".into()),
                ("dc3".into(), "y".into(), "federation: y -> dc2".into()),
            ]
        );
    }

    #[test]
    fn a_routed_link_adds_a_release_flow_per_cluster() {
        let c = cfg(&format!(
            "{ROUTING}\n[[federation.upstream]]\nname = \"center\"\nuris = [\"amqp://c:5672/%2f\"]\n\
             [[federation.link]]\nupstreams = [\"center\"]\nexchanges = [\"orders\"]\n\
             downstream = {{ route = \"sets\", key = \"header:x-user-id\" }}\n"
        ));
        let p = plans(&c);
        assert_eq!(p[0].name, "center->sets");
        assert_eq!(
            queues(&p[0]),
            vec![
                (
                    "center".into(),
                    "orders".into(),
                    "federation: orders -> sets".into()
                ),
                (
                    "center".into(),
                    "hold default".into(),
                    "setgate hold: center->sets orders -> default".into()
                ),
                (
                    "center".into(),
                    "hold set-a".into(),
                    "setgate hold: center->sets orders -> set-a".into()
                ),
                (
                    "center".into(),
                    "hold set-b".into(),
                    "setgate hold: center->sets orders -> set-b".into()
                ),
            ]
        );
        assert!(matches!(p[0].flows[0].downstream, Downstream::Sets { .. }));
        assert_eq!(p[0].flows[2].downstream_name(), "set-a");
        assert_eq!(p[0].flows[2].headers, Headers::Release);
        assert_eq!(
            p[0].routed.as_deref(),
            Some(&["default".to_string(), "set-a".into(), "set-b".into()][..])
        );
    }

    #[test]
    fn all_sets_runs_one_flow_with_its_own_queue_per_set() {
        let c = cfg(&format!(
            "{ROUTING}\n[[shovel]]\nname = \"catalog\"\n\
             source = {{ uris = [\"amqp://c/%2f\"], exchange = \"catalog\" }}\n\
             destination = {{ route = \"all-sets\", include_default = true }}\n"
        ));
        let p = plans(&c);
        let q: Vec<String> = p[0].flows.iter().map(FlowSpec::queue_name).collect();
        assert_eq!(
            q,
            [
                "shovel: catalog -> default",
                "shovel: catalog -> set-a",
                "shovel: catalog -> set-b"
            ]
        );
        let names: Vec<&str> = p[0].flows.iter().map(FlowSpec::downstream_name).collect();
        assert_eq!(names, ["default", "set-a", "set-b"]);
        assert_eq!(
            p[0].flows[1].target,
            Target::Exchange {
                name: "catalog".into(),
                routing_key: None
            }
        );
    }

    #[test]
    fn a_queue_shovel_publishes_to_a_queue_or_an_exchange() {
        let c = cfg(r#"
            [[shovel]]
            name = "dlq"
            source = { uris = ["amqp://a/%2f"], queue = "orders.dlq" }
            destination = { uris = ["amqp://b/%2f"], queue = "orders" }
            [[shovel]]
            name = "x"
            source = { uris = ["amqp://a/%2f"], queue = "q" }
            destination = { uris = ["amqp://b/%2f"], exchange = "orders", routing_key = "k" }
            "#);
        let p = plans(&c);
        assert_eq!(
            p[0].flows[0].source,
            Source::Existing {
                queue: "orders.dlq".into(),
                declare: true
            }
        );
        assert_eq!(p[0].flows[0].target, Target::Queue("orders".into()));
        assert_eq!(
            p[1].flows[0].target,
            Target::Exchange {
                name: "orders".into(),
                routing_key: Some("k".into())
            }
        );
        assert!(!p[1].flows[0].compares_exchanges());
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
    fn a_routing_change_restarts_routed_units_only() {
        let shovels =
            "[[shovel]]\nname = \"s\"\nsource = { uris = [\"amqp://c/%2f\"], queue = \"q\" }\n\
             destination = { route = \"sets\", key = \"routing_key\", exchange = \"x\" }\n\
             [[shovel]]\nname = \"plain\"\nsource = { uris = [\"amqp://c/%2f\"], queue = \"q\" }\n\
             destination = { uris = [\"amqp://d/%2f\"], queue = \"q\" }\n";
        let old = plans(&cfg(&format!("{ROUTING}\n{shovels}")));
        let moved = ROUTING.replace(
            "sets = [",
            "overrides = { \"alice\" = \"set-b\" }\n        sets = [",
        );
        let new = plans(&cfg(&format!("{moved}\n{shovels}")));
        assert_eq!(
            diff(&old, &new),
            vec![
                Change::Restart("shovel s".into()),
                Change::Keep("shovel plain".into())
            ]
        );
    }

    #[test]
    fn turning_reroute_on_restarts_no_routed_unit() {
        let shovels =
            "[[shovel]]\nname = \"s\"\nsource = { uris = [\"amqp://c/%2f\"], queue = \"q\" }\n\
             destination = { route = \"sets\", key = \"routing_key\", exchange = \"x\" }\n";
        let old = plans(&cfg(&format!("{ROUTING}\n{shovels}")));
        let rerouting = ROUTING.replace(
            "sets = [",
            "reroute = { window = \"30s\" }\n        sets = [",
        );
        let new = plans(&cfg(&format!("{rerouting}\n{shovels}")));
        assert_eq!(diff(&old, &new), vec![Change::Keep("shovel s".into())]);
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
