//! `FederationConfig::validate` and `summary`: every problem of the section at once, each naming
//! its field, and a one-line summary without credentials.

use crate::config::{AckMode, FederationConfig};
use crate::uri::AmqpUri;
use std::collections::{BTreeMap, BTreeSet};

impl FederationConfig {
    /// Every problem of the section, each as `field: what is wrong; what to do`.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        let mut names = BTreeSet::new();
        for (i, up) in self.upstream.iter().enumerate() {
            let at = format!("federation.upstream[{i}]");
            if up.name.trim().is_empty() {
                errs.push(format!(
                    "{at}.name: is empty; give the upstream a name links can refer to"
                ));
            } else if !names.insert(up.name.as_str()) {
                errs.push(format!(
                    "{at}.name: upstream \"{}\" is defined twice; names must be unique",
                    up.name
                ));
            }
            check_uris(&mut errs, &format!("{at}.uris"), &up.uris);
            if up.prefetch_count == 0 || up.prefetch_count > u32::from(u16::MAX) {
                errs.push(format!(
                    "{at}.prefetch_count: must be between 1 and 65535, got {}",
                    up.prefetch_count
                ));
            }
            if up.reconnect_delay.is_zero() {
                errs.push(format!(
                    "{at}.reconnect_delay: must be more than 0, e.g. \"5s\""
                ));
            }
            if up.max_hops == 0 {
                errs.push(format!(
                    "{at}.max_hops: must be at least 1 (0 would forward nothing)"
                ));
            }
            if up.expires.is_some_and(|d| d.as_millis() == 0) {
                errs.push(format!("{at}.expires: must be at least 1ms; leave it out for a queue that never expires"));
            }
            if let Some(d) = up.expires.filter(|d| d.as_millis() > u128::from(u32::MAX)) {
                errs.push(format!(
                    "{at}.expires: {d:?} is too long; the maximum is 49 days"
                ));
            }
            if let Some(d) = up
                .message_ttl
                .filter(|d| d.as_millis() > u128::from(u32::MAX))
            {
                errs.push(format!(
                    "{at}.message_ttl: {d:?} is too long; the maximum is 49 days"
                ));
            }
        }
        let defined = || {
            let v: Vec<&str> = names.iter().copied().collect();
            if v.is_empty() {
                "no [[federation.upstream]] is defined; add one".to_string()
            } else {
                format!("use one of {}", v.join(", "))
            }
        };
        let mut link_names = BTreeMap::new();
        let mut flows: BTreeMap<(String, String, String), String> = BTreeMap::new();
        for (i, link) in self.link.iter().enumerate() {
            let at = format!("federation.link[{i}]");
            let name = link.name();
            if name.trim().is_empty() {
                errs.push(format!(
                    "{at}.name: is empty; leave it out for the default UPSTREAMS->DOWNSTREAM"
                ));
            } else if let Some(first) = link_names.insert(name.clone(), i) {
                errs.push(format!(
                    "{at}.name: link \"{name}\" is also federation.link[{first}]; give one of them another name"
                ));
            }
            if link.upstreams.is_empty() {
                errs.push(format!(
                    "{at}.upstreams: is empty; list at least one upstream ({})",
                    defined()
                ));
            }
            let mut seen = BTreeSet::new();
            for up in &link.upstreams {
                if !names.contains(up.as_str()) {
                    errs.push(format!(
                        "{at}.upstreams: upstream \"{up}\" is not defined; {}",
                        defined()
                    ));
                } else if !seen.insert(up.as_str()) {
                    errs.push(format!("{at}.upstreams: upstream \"{up}\" is listed twice"));
                }
            }
            if link.downstream.route.is_some() {
                // The SETs' URIs come from [routing]; the rest is checked with it (MessagingConfig).
            } else {
                if link.downstream.name.trim().is_empty() {
                    errs.push(format!(
                        "{at}.downstream.name: is empty; name the downstream cluster (it is part of the upstream queue name)"
                    ));
                }
                check_uris(
                    &mut errs,
                    &format!("{at}.downstream.uris"),
                    &link.downstream.uris,
                );
            }
            if link.exchanges.is_empty() {
                errs.push(format!(
                    "{at}.exchanges: is empty; list the exchanges to federate"
                ));
            }
            let mut xs = BTreeSet::new();
            for x in &link.exchanges {
                if x.is_empty() {
                    errs.push(format!(
                        "{at}.exchanges: \"\" is the default exchange, which cannot be federated"
                    ));
                } else if x.len() > 200 {
                    errs.push(format!("{at}.exchanges: \"{x}\" is longer than 200 bytes"));
                } else if !xs.insert(x.as_str()) {
                    errs.push(format!("{at}.exchanges: \"{x}\" is listed twice"));
                }
                for up in &link.upstreams {
                    let key = (up.clone(), x.clone(), link.downstream.name.clone());
                    if let Some(other) = flows.insert(key, name.clone()) {
                        if other != name {
                            errs.push(format!(
                                "{at}.exchanges: \"{x}\" from upstream \"{up}\" to \"{}\" is already federated by link \"{other}\"; \
                                 both would share the upstream queue",
                                link.downstream.name
                            ));
                        }
                    }
                }
            }
            if link.mandatory {
                for up in self
                    .upstream
                    .iter()
                    .filter(|u| link.upstreams.contains(&u.name))
                {
                    if up.ack_mode != AckMode::OnConfirm {
                        errs.push(format!(
                            "{at}.mandatory: returned messages can only be requeued with ack_mode = \"on-confirm\", \
                             but upstream \"{}\" uses \"{}\"",
                            up.name,
                            up.ack_mode.as_str()
                        ));
                    }
                }
            }
            if link.binding_keys.is_empty() {
                errs.push(format!(
                    "{at}.binding_keys: is empty; leave it out to bind with \"#\""
                ));
            }
            if link.binding_keys.iter().any(|k| k.len() > 255) {
                errs.push(format!("{at}.binding_keys: a key is longer than 255 bytes"));
            }
        }
        errs
    }

    /// True when no link is configured (nothing to run).
    pub fn is_empty(&self) -> bool {
        self.link.is_empty()
    }

    /// One line for `setgate check`: counts and link directions, never credentials.
    pub fn summary(&self) -> String {
        let links: Vec<String> = self
            .link
            .iter()
            .map(|l| {
                format!(
                    "{} ({} -> {}: {})",
                    l.name(),
                    l.upstreams.join("+"),
                    l.downstream.name,
                    l.exchanges.join(", ")
                )
            })
            .collect();
        format!(
            "{} upstream{}, {} link{}{}{}",
            self.upstream.len(),
            plural(self.upstream.len()),
            self.link.len(),
            plural(self.link.len()),
            if links.is_empty() { "" } else { ": " },
            links.join("; ")
        )
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

pub(crate) fn check_uris(errs: &mut Vec<String>, at: &str, uris: &[AmqpUri]) {
    if uris.is_empty() {
        errs.push(format!(
            "{at}: is empty; list at least one amqp:// or amqps:// URI"
        ));
    }
    for (j, u) in uris.iter().enumerate() {
        if let Some(p) = u.problem() {
            errs.push(format!(
                "{at}[{j}]: {} {p}; write amqp://user:pass@host:port/vhost",
                u.masked()
            ));
        }
        if u.problem().is_none() && u.is_tls() {
            if let Err(e) = crate::tls::client_config(u) {
                errs.push(format!(
                    "{at}[{j}]: {e}; give readable PEM files (setgate reads them at each connect)"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{parse, GOOD};
    use crate::config::FederationConfig;

    #[test]
    fn reports_every_problem_with_its_field() {
        let c = parse(
            r#"
            [[upstream]]
            name = "dc1"
            uris = []
            prefetch_count = 0
            max_hops = 0
            reconnect_delay = "0s"
            expires = "0s"

            [[upstream]]
            name = "dc1"
            uris = ["http://u:hunter2@h/", "amqp://ok@h:5672/%2f"]

            [[link]]
            upstreams = ["dc9", "dc1", "dc1"]
            downstream = { name = "", uris = ["amqp://u:hunter2@h:notaport/"] }
            exchanges = []
            binding_keys = []

            [[link]]
            name = "dc9+dc1+dc1->"
            upstreams = []
            downstream = { name = "dc2", uris = ["amqp://h:5672/%2f"] }
            exchanges = ["", "x", "x"]
            "#,
        );
        let errs = c.validate();
        let expected = [
            "federation.upstream[0].uris: is empty; list at least one amqp:// or amqps:// URI",
            "federation.upstream[0].prefetch_count: must be between 1 and 65535, got 0",
            "federation.upstream[0].reconnect_delay: must be more than 0, e.g. \"5s\"",
            "federation.upstream[0].max_hops: must be at least 1 (0 would forward nothing)",
            "federation.upstream[0].expires: must be at least 1ms; leave it out for a queue that never expires",
            "federation.upstream[1].name: upstream \"dc1\" is defined twice; names must be unique",
            "federation.upstream[1].uris[0]: http://u:***@h/ scheme must be amqp or amqps, not \"http\"; write amqp://user:pass@host:port/vhost",
            "federation.link[0].upstreams: upstream \"dc9\" is not defined; use one of dc1",
            "federation.link[0].upstreams: upstream \"dc1\" is listed twice",
            "federation.link[0].downstream.name: is empty; name the downstream cluster (it is part of the upstream queue name)",
            "federation.link[0].exchanges: is empty; list the exchanges to federate",
            "federation.link[0].binding_keys: is empty; leave it out to bind with \"#\"",
            "federation.link[1].name: link \"dc9+dc1+dc1->\" is also federation.link[0]; give one of them another name",
            "federation.link[1].upstreams: is empty; list at least one upstream (use one of dc1)",
            "federation.link[1].exchanges: \"\" is the default exchange, which cannot be federated",
            "federation.link[1].exchanges: \"x\" is listed twice",
        ];
        let mut rest: Vec<&String> = errs.iter().collect();
        for e in expected {
            let pos = rest.iter().position(|x| x.as_str() == e);
            assert!(pos.is_some(), "missing error {e:?} in {errs:#?}");
            rest.remove(pos.unwrap());
        }
        // The bad downstream URI is reported too, masked.
        assert_eq!(rest.len(), 1, "{rest:#?}");
        assert!(
            rest[0].starts_with("federation.link[0].downstream.uris[0]: amqp://u:***@h:notaport/ "),
            "{}",
            rest[0]
        );
        assert!(!errs.iter().any(|e| e.contains("hunter2")));
    }

    #[test]
    fn a_tls_file_that_cannot_be_read_is_named() {
        let c = parse(
            r#"
            [[upstream]]
            name = "dc1"
            uris = ["amqps://u:hunter2@h/?cacertfile=/nonexistent/ca.pem"]

            [[link]]
            upstreams = ["dc1"]
            downstream = { name = "dc2", uris = ["amqp://h/"] }
            exchanges = ["x"]
            "#,
        );
        assert_eq!(
            c.validate(),
            [
                "federation.upstream[0].uris[0]: cacertfile /nonexistent/ca.pem: cannot read PEM \
                 certificates: I/O error: No such file or directory (os error 2); give readable PEM files \
                 (setgate reads them at each connect)"
            ]
        );
    }

    #[test]
    fn unknown_upstream_names_the_defined_ones() {
        let c = parse(
            r#"
            [[upstream]]
            name = "dc1"
            uris = ["amqp://h:5672/%2f"]
            [[upstream]]
            name = "dc2"
            uris = ["amqp://h:5672/%2f"]
            [[link]]
            upstreams = ["dc9"]
            downstream = { name = "dc3", uris = ["amqp://h:5672/%2f"] }
            exchanges = ["x"]
            "#,
        );
        assert_eq!(
            c.validate(),
            vec!["federation.link[0].upstreams: upstream \"dc9\" is not defined; use one of dc1, dc2".to_string()]
        );
    }

    #[test]
    fn two_links_sharing_an_upstream_queue_are_rejected() {
        let c = parse(
            r#"
            [[upstream]]
            name = "dc1"
            uris = ["amqp://h:5672/%2f"]
            [[link]]
            name = "a"
            upstreams = ["dc1"]
            downstream = { name = "dc2", uris = ["amqp://h:5672/%2f"] }
            exchanges = ["x", "y"]
            [[link]]
            name = "b"
            upstreams = ["dc1"]
            downstream = { name = "dc2", uris = ["amqp://h:5673/%2f"] }
            exchanges = ["y"]
            "#,
        );
        assert_eq!(
            c.validate(),
            vec![
                "federation.link[1].exchanges: \"y\" from upstream \"dc1\" to \"dc2\" is already federated by link \"a\"; \
                 both would share the upstream queue"
                    .to_string()
            ]
        );
    }

    #[test]
    fn mandatory_needs_on_confirm() {
        let c = parse(
            r#"
            [[upstream]]
            name = "dc1"
            uris = ["amqp://h:5672/%2f"]
            ack_mode = "no-ack"
            [[link]]
            upstreams = ["dc1"]
            downstream = { name = "dc2", uris = ["amqp://h:5672/%2f"] }
            exchanges = ["x"]
            mandatory = true
            "#,
        );
        assert_eq!(
            c.validate(),
            vec![
                "federation.link[0].mandatory: returned messages can only be requeued with ack_mode = \"on-confirm\", \
                 but upstream \"dc1\" uses \"no-ack\""
                    .to_string()
            ]
        );
    }

    #[test]
    fn summary_has_no_secrets() {
        let c = parse(GOOD);
        let s = c.summary();
        assert_eq!(
            s,
            "2 upstreams, 1 link: dc1+dc3->dc2 (dc1+dc3 -> dc2: orders, events)"
        );
        assert!(!format!("{c:?}").contains("secret"));
        assert!(FederationConfig::default().is_empty());
        assert_eq!(
            FederationConfig::default().summary(),
            "0 upstreams, 0 links"
        );
    }
}
