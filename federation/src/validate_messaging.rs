//! `MessagingConfig::validate`: the checks that cross sections — shovels, and destinations that
//! route to the SETs of `[routing]` — on top of `[federation]`'s own. Every problem at once,
//! each naming its field and what to do.

use crate::config::AckMode;
use crate::plan::MessagingConfig;
use crate::route::{MessageKey, RouteKind};
use crate::shovel::{DeleteAfter, ShovelConfig};
use crate::uri::AmqpUri;
use crate::validate::check_uris;
use setgate_router::RoutingConfig;
use std::collections::BTreeSet;

/// The routing fields of a destination, as written (a shovel's `destination` or a link's
/// `downstream`).
struct Routed<'a> {
    at: String,
    route: RouteKind,
    key: Option<&'a str>,
    uris: &'a [AmqpUri],
    has_exchange: bool,
    source_has_exchange: bool,
    include_default: bool,
}

impl MessagingConfig {
    /// Every problem of `[federation]`, `[[shovel]]` and the routed destinations.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = self.federation.validate();
        let mut names = BTreeSet::new();
        for (i, s) in self.shovels.iter().enumerate() {
            let at = format!("shovel[{i}]");
            if s.name.trim().is_empty() {
                errs.push(format!("{at}.name: is empty; give the shovel a name"));
            } else if !names.insert(s.name.as_str()) {
                errs.push(format!(
                    "{at}.name: shovel \"{}\" is defined twice; names must be unique",
                    s.name
                ));
            }
            shovel(&mut errs, &at, s);
            if let Some(route) = s.destination.route {
                self.routed(
                    &mut errs,
                    Routed {
                        at: format!("{at}.destination"),
                        route,
                        key: s.destination.key.as_deref(),
                        uris: &s.destination.uris,
                        has_exchange: s.destination.exchange.is_some(),
                        source_has_exchange: s.source.exchange.is_some(),
                        include_default: s.destination.include_default.unwrap_or(false),
                    },
                );
                if route == RouteKind::AllSets && s.source.queue.is_some() {
                    errs.push(format!(
                        "{at}.destination.route: \"all-sets\" needs an exchange source (each SET gets its own queue bound to it); \
                         a queue's messages can be consumed only once"
                    ));
                }
            }
        }
        for (i, link) in self.federation.link.iter().enumerate() {
            let d = &link.downstream;
            let at = format!("federation.link[{i}].downstream");
            match d.route {
                Some(route) => self.routed(
                    &mut errs,
                    Routed {
                        at,
                        route,
                        key: d.key.as_deref(),
                        uris: &d.uris,
                        has_exchange: true,
                        source_has_exchange: true,
                        include_default: d.include_default.unwrap_or(false),
                    },
                ),
                None => {
                    for (field, set) in [
                        ("key", d.key.is_some()),
                        ("exchange", d.exchange.is_some()),
                        ("on_set_down", d.on_set_down.is_some()),
                        ("include_default", d.include_default.is_some()),
                    ] {
                        if set {
                            errs.push(format!(
                                "{at}.{field}: only with route = \"sets\" or \"all-sets\"; remove it or add a route"
                            ));
                        }
                    }
                }
            }
        }
        errs
    }

    fn routed(&self, errs: &mut Vec<String>, r: Routed<'_>) {
        let at = &r.at;
        if !r.uris.is_empty() {
            errs.push(format!(
                "{at}.uris: not used with route = \"{}\"; the clusters' URIs are each SET's `uris` and `default_uris` in [routing]",
                route_name(r.route)
            ));
        }
        if !r.has_exchange && !r.source_has_exchange {
            errs.push(format!(
                "{at}.exchange: is missing; a routed destination publishes to an exchange (the source's by default, but the source is a queue)"
            ));
        }
        match (r.route, r.key) {
            (RouteKind::Sets, None) => errs.push(format!(
                "{at}.key: is missing; say where each message's key is: \"header:NAME\", \"property:user_id\" or \"routing_key\""
            )),
            (RouteKind::Sets, Some(k)) => {
                if let Err(e) = MessageKey::parse(k) {
                    errs.push(format!("{at}.key: {e}"));
                }
            }
            (RouteKind::AllSets, Some(_)) => errs.push(format!(
                "{at}.key: not used with route = \"all-sets\" (every message goes to every SET); remove it"
            )),
            (RouteKind::AllSets, None) => {}
        }
        let Some(routing) = &self.routing else {
            errs.push(format!(
                "{at}.route: \"{}\" needs a [routing] section with the SETs and their `uris`",
                route_name(r.route)
            ));
            return;
        };
        routing_uris(
            errs,
            at,
            routing,
            r.route == RouteKind::Sets || r.include_default,
        );
    }
}

fn route_name(r: RouteKind) -> &'static str {
    match r {
        RouteKind::Sets => "sets",
        RouteKind::AllSets => "all-sets",
    }
}

/// Each SET needs messaging `uris` (and the center `default_uris` when messages can go there).
fn routing_uris(errs: &mut Vec<String>, at: &str, routing: &RoutingConfig, needs_default: bool) {
    if routing.sets.is_empty() {
        errs.push(format!(
            "{at}.route: [routing] has no SETs to route to; add `sets`"
        ));
    }
    for (j, s) in routing.sets.iter().enumerate() {
        let uris: Vec<AmqpUri> = s.uris.iter().map(AmqpUri::new).collect();
        if uris.is_empty() {
            errs.push(format!(
                "routing.sets[{j}].uris: SET \"{}\" has no messaging URIs, which {at} needs; add uris = [\"amqp://user:pass@host:5672/vhost\"]",
                s.name
            ));
        } else {
            check_uris(errs, &format!("routing.sets[{j}].uris"), &uris);
        }
    }
    if needs_default {
        let uris: Vec<AmqpUri> = routing.default_uris.iter().map(AmqpUri::new).collect();
        if uris.is_empty() {
            errs.push(format!(
                "routing.default_uris: is missing, which {at} needs for messages of no SET; add default_uris = [\"amqp://...\"] (the center's cluster)"
            ));
        } else {
            check_uris(errs, "routing.default_uris", &uris);
        }
    }
}

fn shovel(errs: &mut Vec<String>, at: &str, s: &ShovelConfig) {
    let src = &s.source;
    check_uris(errs, &format!("{at}.source.uris"), &src.uris);
    match (&src.queue, &src.exchange) {
        (Some(_), Some(_)) => errs.push(format!(
            "{at}.source: has both `queue` and `exchange`; a shovel consumes one queue, or its own queue bound to one exchange"
        )),
        (None, None) => errs.push(format!(
            "{at}.source: names neither `queue` nor `exchange`; add one"
        )),
        (Some(q), None) if q.is_empty() => {
            errs.push(format!("{at}.source.queue: is empty; name the queue"))
        }
        (Some(_), None) => {
            if src.binding_keys.is_some() {
                errs.push(format!(
                    "{at}.source.binding_keys: only with an exchange source; the queue's own bindings apply"
                ));
            }
        }
        (None, Some(x)) if x.is_empty() => errs.push(format!(
            "{at}.source.exchange: \"\" is the default exchange, which cannot be bound to; name an exchange or use `queue`"
        )),
        (None, Some(_)) => {
            if src.binding_keys.as_ref().is_some_and(Vec::is_empty) {
                errs.push(format!(
                    "{at}.source.binding_keys: is empty; leave it out to bind with \"#\""
                ));
            }
        }
    }
    let d = &s.destination;
    if d.route.is_none() {
        check_uris(errs, &format!("{at}.destination.uris"), &d.uris);
        match (&d.queue, &d.exchange) {
            (Some(_), Some(_)) => errs.push(format!(
                "{at}.destination: has both `queue` and `exchange`; publish to one"
            )),
            (None, None) => errs.push(format!(
                "{at}.destination: names neither `exchange` nor `queue` (nor a `route`); add one"
            )),
            (Some(_), None) if d.routing_key.is_some() => errs.push(format!(
                "{at}.destination.routing_key: only with an exchange destination (a queue is published to by its name)"
            )),
            _ => {}
        }
        for (field, set) in [
            ("key", d.key.is_some()),
            ("on_set_down", d.on_set_down.is_some()),
            ("include_default", d.include_default.is_some()),
        ] {
            if set {
                errs.push(format!(
                    "{at}.destination.{field}: only with route = \"sets\" or \"all-sets\"; remove it or add a route"
                ));
            }
        }
    } else if d.queue.is_some() {
        errs.push(format!(
            "{at}.destination.queue: a routed destination publishes to an exchange on each SET; use `exchange`"
        ));
    }
    if s.prefetch_count == 0 || s.prefetch_count > u32::from(u16::MAX) {
        errs.push(format!(
            "{at}.prefetch_count: must be between 1 and 65535, got {}",
            s.prefetch_count
        ));
    }
    if s.reconnect_delay.is_zero() {
        errs.push(format!(
            "{at}.reconnect_delay: must be more than 0, e.g. \"5s\""
        ));
    }
    if s.delete_after != DeleteAfter::Never && s.ack_mode == AckMode::NoAck {
        errs.push(format!(
            "{at}.delete_after: needs ack_mode \"on-confirm\" or \"on-publish\"; with \"no-ack\" the messages taken past the limit could not be given back"
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::parse_messaging as cfg;

    #[test]
    fn a_good_config_passes() {
        let c = cfg(r#"
            [routing]
            default = "center"
            default_uris = ["amqp://c:5672/%2f"]
            sets = [{ name = "a", pool = "a", uris = ["amqp://a:5672/%2f"] }]
            [[shovel]]
            name = "orders"
            source = { uris = ["amqp://c:5672/%2f"], exchange = "orders" }
            destination = { route = "sets", key = "header:x-user-id" }
            [[shovel]]
            name = "catalog"
            source = { uris = ["amqp://c:5672/%2f"], exchange = "catalog" }
            destination = { route = "all-sets" }
            [[shovel]]
            name = "dlq"
            source = { uris = ["amqp://c:5672/%2f"], queue = "dlq" }
            destination = { uris = ["amqp://c:5672/%2f"], exchange = "orders", routing_key = "k" }
            delete_after = "queue-length"
            "#);
        assert_eq!(c.validate(), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_named() {
        let c = cfg(r#"
            [routing]
            default = "center"
            sets = [{ name = "a", pool = "a" }]
            [[shovel]]
            name = "x"
            source = { queue = "q", exchange = "e" }
            destination = { route = "sets", key = "username", uris = ["amqp://d/%2f"] }
            ack_mode = "no-ack"
            delete_after = 5
            [[shovel]]
            name = "x"
            source = { uris = ["amqp://c/%2f"], queue = "q" }
            destination = { route = "all-sets" }
            [[shovel]]
            name = "y"
            source = { uris = ["amqp://c/%2f"] }
            destination = { uris = ["amqp://d/%2f"], queue = "q", routing_key = "k", key = "routing_key" }
            prefetch_count = 0
            "#);
        let errs = c.validate();
        let want = [
            "shovel[0].source.uris: is empty",
            "shovel[0].source: has both `queue` and `exchange`",
            "shovel[0].delete_after: needs ack_mode",
            "shovel[0].destination.uris: not used with route = \"sets\"",
            "shovel[0].destination.key: \"username\" is not a message key",
            "routing.sets[0].uris: SET \"a\" has no messaging URIs",
            "routing.default_uris: is missing",
            "shovel[1].name: shovel \"x\" is defined twice",
            "shovel[1].destination.exchange: is missing",
            "shovel[1].destination.route: \"all-sets\" needs an exchange source",
            "shovel[2].source: names neither `queue` nor `exchange`",
            "shovel[2].destination.routing_key: only with an exchange destination",
            "shovel[2].destination.key: only with route",
            "shovel[2].prefetch_count: must be between 1 and 65535",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
    }

    #[test]
    fn a_routed_link_needs_routing() {
        let c = cfg(r#"
            [[federation.upstream]]
            name = "center"
            uris = ["amqp://c/%2f"]
            [[federation.link]]
            upstreams = ["center"]
            exchanges = ["orders"]
            downstream = { route = "sets", key = "header:x-user-id" }
            [[federation.link]]
            name = "plain"
            upstreams = ["center"]
            exchanges = ["events"]
            downstream = { name = "dc2", uris = ["amqp://d/%2f"], key = "routing_key" }
            "#);
        assert_eq!(
            c.validate(),
            vec![
                "federation.link[0].downstream.route: \"sets\" needs a [routing] section with the SETs and their `uris`".to_string(),
                "federation.link[1].downstream.key: only with route = \"sets\" or \"all-sets\"; remove it or add a route".to_string(),
            ]
        );
    }
}
