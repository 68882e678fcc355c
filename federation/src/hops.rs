//! Loop prevention and the republished message's properties.
//!
//! Every forwarded message gets an entry prepended to its `x-received-from` header, in the same
//! shape RabbitMQ's federation plugin writes (so mixed plugin/setgate topologies agree):
//! `{uri, exchange, redelivered, cluster-name, vhost}` where `cluster-name` and `vhost` name the
//! cluster the message was taken *from*. A message is not forwarded when its entries already
//! number `max_hops`, or when one of them names the downstream cluster: it came from there.

use lapin::types::{AMQPValue, FieldTable, LongString};

/// The header that records the clusters a message crossed, newest first.
pub const RECEIVED_FROM: &str = "x-received-from";

/// Where a header a flow prepends to (`x-received-from`, a shovel's `x-shovelled`) holds
/// something other than an array, RabbitMQ's plugins keep that value under this header
/// (`rabbit_basic:prepend_table_header`): a table of the header's name to an array of the
/// values it held, newest first. setgate keeps it the same way, so nothing a publisher sent is
/// dropped and tools that read the plugins' header read setgate's.
pub const INVALID_HEADERS: &str = "x-invalid-headers";

/// Where a flow takes its messages from: the content of the entry it prepends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The upstream URI without credentials.
    pub uri: String,
    /// The upstream exchange.
    pub exchange: String,
    /// `cluster_name` from the upstream broker's server properties.
    pub cluster_name: String,
    /// The upstream virtual host.
    pub vhost: String,
}

/// The flow's downstream, against which messages are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HopPolicy {
    pub max_hops: u32,
    /// `cluster_name` from the downstream broker's server properties.
    pub downstream_cluster: String,
    pub downstream_vhost: String,
}

/// Whether a message may cross this link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Forward,
    /// Its `x-received-from` already has `max_hops` entries.
    MaxHops,
    /// It already came from the downstream cluster (two-way or ring federation).
    Cycle,
}

impl Verdict {
    /// The `reason` label of the drop counter.
    pub fn reason(self) -> &'static str {
        match self {
            Verdict::Forward => "none",
            Verdict::MaxHops => "max_hops",
            Verdict::Cycle => "cycle",
        }
    }
}

/// This hop's `x-received-from` entry.
fn received_from_entry(origin: &Origin, redelivered: bool) -> AMQPValue {
    let mut entry = FieldTable::default();
    entry.insert("uri".into(), long(&origin.uri));
    entry.insert("exchange".into(), long(&origin.exchange));
    entry.insert("redelivered".into(), AMQPValue::Boolean(redelivered));
    entry.insert("cluster-name".into(), long(&origin.cluster_name));
    entry.insert("vhost".into(), long(&origin.vhost));
    AMQPValue::FieldTable(entry)
}

/// This hop's `x-received-from` entry as an array element (type octet and value), for a
/// first delivery and a redelivery: what [`crate::raw_props::Edit::prepend`] takes.
pub(crate) fn received_from_elements(origin: &Origin) -> [Vec<u8>; 2] {
    [false, true].map(|redelivered| encoded_value(&received_from_entry(origin, redelivered)))
}

/// A field value as encoded: its type octet, then its value.
pub(crate) fn encoded_value(v: &AMQPValue) -> Vec<u8> {
    use amq_protocol::frame::WriteContext;
    amq_protocol::types::generation::gen_value(v)(WriteContext::from(Vec::new()))
        .map(|ctx| ctx.into_inner().0)
        .expect("encoding into a Vec does not fail")
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// The parsed model of loop prevention and of a republished message's properties: what the
/// flow does on the bytes ([`crate::raw_hops`], [`crate::raw_props`]) is checked against it,
/// on every shape of header the tests make.
#[cfg(test)]
pub(crate) mod model {
    use super::*;
    use lapin::types::{FieldArray, ShortString};
    use lapin::BasicProperties;

    impl HopPolicy {
        /// Decides from the message's headers.
        pub fn verdict(&self, headers: Option<&FieldTable>) -> Verdict {
            self.verdict_at(headers, &self.downstream_cluster)
        }

        /// Decides from the message's headers, for a message going to `downstream_cluster` (one
        /// of the clusters of a routed destination, or the downstream's).
        pub fn verdict_at(
            &self,
            headers: Option<&FieldTable>,
            downstream_cluster: &str,
        ) -> Verdict {
            let entries = received_from(headers);
            if entries.len() >= self.max_hops as usize {
                return Verdict::MaxHops;
            }
            let seen = entries.iter().any(|e| {
                let Some(t) = e.as_field_table() else {
                    return false;
                };
                let name_matches =
                    str_field(t, "cluster-name").is_some_and(|n| n == downstream_cluster);
                // Entries written before the plugin recorded a vhost match on the cluster alone.
                let vhost_matches =
                    str_field(t, "vhost").is_none_or(|v| v == self.downstream_vhost);
                name_matches && vhost_matches
            });
            if seen {
                Verdict::Cycle
            } else {
                Verdict::Forward
            }
        }
    }

    /// The entries of `x-received-from`, or none when it is absent or not an array.
    pub(crate) fn received_from(headers: Option<&FieldTable>) -> &[AMQPValue] {
        match headers.and_then(|h| h.inner().get(RECEIVED_FROM)) {
            Some(AMQPValue::FieldArray(a)) => a.as_slice(),
            _ => &[],
        }
    }

    pub(crate) fn str_field<'a>(t: &'a FieldTable, key: &str) -> Option<&'a str> {
        match t.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// The headers with this hop's entry prepended to `x-received-from` (a value that is not
    /// an array moved to `x-invalid-headers`).
    pub(crate) fn with_received_from(
        headers: Option<&FieldTable>,
        origin: &Origin,
        redelivered: bool,
    ) -> FieldTable {
        let mut out = headers.cloned().unwrap_or_default();
        prepend_table_header(
            &mut out,
            RECEIVED_FROM,
            received_from_entry(origin, redelivered),
        );
        out
    }

    /// RabbitMQ's `rabbit_basic:prepend_table_header` on a parsed table: `element` first in
    /// the array under `key`; a value there that is not an array is prepended to the array
    /// under `key` in the table `x-invalid-headers` (made if absent; one that is not a table is
    /// kept in the new one under its own name).
    pub(crate) fn prepend_table_header(headers: &mut FieldTable, key: &str, element: AMQPValue) {
        let (old, invalid) = match headers.inner().get(key) {
            Some(AMQPValue::FieldArray(a)) => (a.as_slice().to_vec(), None),
            Some(other) => (Vec::new(), Some(other.clone())),
            None => (Vec::new(), None),
        };
        let array = |first: AMQPValue, rest: &[AMQPValue]| {
            let mut v = vec![first];
            v.extend_from_slice(rest);
            AMQPValue::FieldArray(FieldArray::from(v))
        };
        headers.insert(key.into(), array(element, &old));
        let Some(value) = invalid else {
            return;
        };
        let mut table = match headers.inner().get(INVALID_HEADERS) {
            Some(AMQPValue::FieldTable(t)) => t.clone(),
            Some(other) => {
                let mut t = FieldTable::default();
                t.insert(INVALID_HEADERS.into(), array(other.clone(), &[]));
                t
            }
            None => FieldTable::default(),
        };
        let prev = match table.inner().get(key) {
            Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
            _ => Vec::new(),
        };
        table.insert(key.into(), array(value, &prev));
        headers.insert(INVALID_HEADERS.into(), AMQPValue::FieldTable(table));
    }

    /// The properties to republish with: all of the original's, `headers` replaced, and `user_id`
    /// kept only when the upstream is trusted (the downstream would reject a foreign `user_id`).
    pub(crate) fn outgoing_properties(
        p: &BasicProperties,
        headers: FieldTable,
        keep_user_id: bool,
    ) -> BasicProperties {
        let mut out = BasicProperties::default().with_headers(headers);
        let s = |v: &Option<ShortString>| v.clone();
        if let Some(v) = s(p.content_type()) {
            out = out.with_content_type(v);
        }
        if let Some(v) = s(p.content_encoding()) {
            out = out.with_content_encoding(v);
        }
        if let Some(v) = *p.delivery_mode() {
            out = out.with_delivery_mode(v);
        }
        if let Some(v) = *p.priority() {
            out = out.with_priority(v);
        }
        if let Some(v) = s(p.correlation_id()) {
            out = out.with_correlation_id(v);
        }
        if let Some(v) = s(p.reply_to()) {
            out = out.with_reply_to(v);
        }
        if let Some(v) = s(p.expiration()) {
            out = out.with_expiration(v);
        }
        if let Some(v) = s(p.message_id()) {
            out = out.with_message_id(v);
        }
        if let Some(v) = *p.timestamp() {
            out = out.with_timestamp(v);
        }
        if let Some(v) = s(p.kind()) {
            out = out.with_type(v);
        }
        if keep_user_id {
            if let Some(v) = s(p.user_id()) {
                out = out.with_user_id(v);
            }
        }
        if let Some(v) = s(p.app_id()) {
            out = out.with_app_id(v);
        }
        if let Some(v) = s(p.cluster_id()) {
            out = out.with_cluster_id(v);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::model::*;
    use super::*;
    use lapin::BasicProperties;

    fn origin(cluster: &str) -> Origin {
        Origin {
            uri: format!("amqp://{cluster}:5672/%2f"),
            exchange: "orders".into(),
            cluster_name: cluster.into(),
            vhost: "/".into(),
        }
    }

    fn policy(max_hops: u32, downstream: &str) -> HopPolicy {
        HopPolicy {
            max_hops,
            downstream_cluster: downstream.into(),
            downstream_vhost: "/".into(),
        }
    }

    fn cluster_names(h: &FieldTable) -> Vec<String> {
        received_from(Some(h))
            .iter()
            .map(|e| {
                str_field(e.as_field_table().unwrap(), "cluster-name")
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn prepends_an_entry_and_keeps_other_headers() {
        let mut h = FieldTable::default();
        h.insert("k".into(), long("v"));
        let h1 = with_received_from(Some(&h), &origin("dc1"), false);
        let h2 = with_received_from(Some(&h1), &origin("dc2"), true);
        assert_eq!(cluster_names(&h2), vec!["dc2", "dc1"]);
        assert_eq!(h2.inner().get("k"), Some(&long("v")));
        let newest = received_from(Some(&h2))[0].as_field_table().unwrap();
        assert_eq!(str_field(newest, "uri"), Some("amqp://dc2:5672/%2f"));
        assert_eq!(str_field(newest, "exchange"), Some("orders"));
        assert_eq!(str_field(newest, "vhost"), Some("/"));
        assert_eq!(
            newest.inner().get("redelivered"),
            Some(&AMQPValue::Boolean(true))
        );
    }

    #[test]
    fn malformed_header_is_replaced() {
        let mut h = FieldTable::default();
        h.insert(RECEIVED_FROM.into(), long("garbage"));
        let out = with_received_from(Some(&h), &origin("dc1"), false);
        assert_eq!(cluster_names(&out), vec!["dc1"]);
        assert_eq!(policy(1, "dc2").verdict(Some(&h)), Verdict::Forward);
    }

    #[test]
    fn two_way_with_max_hops_one_stops_after_one_hop() {
        // Published on dc1, crossed dc1 -> dc2; the dc2 -> dc1 link must not send it back.
        let on_dc2 = with_received_from(None, &origin("dc1"), false);
        assert_eq!(policy(1, "dc2").verdict(None), Verdict::Forward);
        assert_eq!(policy(1, "dc1").verdict(Some(&on_dc2)), Verdict::MaxHops);
        // Even with more hops allowed, the message came from dc1.
        assert_eq!(policy(5, "dc1").verdict(Some(&on_dc2)), Verdict::Cycle);
    }

    #[test]
    fn ring_of_three_with_max_hops_two_visits_each_cluster_once() {
        let p = |d| policy(2, d);
        let on_dc2 = with_received_from(None, &origin("dc1"), false);
        assert_eq!(p("dc3").verdict(Some(&on_dc2)), Verdict::Forward);
        let on_dc3 = with_received_from(Some(&on_dc2), &origin("dc2"), false);
        assert_eq!(p("dc1").verdict(Some(&on_dc3)), Verdict::MaxHops);
        // With a larger budget, the origin is still recognised.
        assert_eq!(policy(9, "dc1").verdict(Some(&on_dc3)), Verdict::Cycle);
        let on_dc1 = with_received_from(Some(&on_dc3), &origin("dc3"), false);
        assert_eq!(policy(9, "dc2").verdict(Some(&on_dc1)), Verdict::Cycle);
    }

    #[test]
    fn same_cluster_name_in_another_vhost_is_not_a_cycle() {
        let mut o = origin("dc1");
        o.vhost = "other".into();
        let h = with_received_from(None, &o, false);
        assert_eq!(policy(5, "dc1").verdict(Some(&h)), Verdict::Forward);
    }

    fn all_properties(user_id: bool) -> BasicProperties {
        let p = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_content_encoding("gzip".into())
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("c".into())
            .with_reply_to("r".into())
            .with_expiration("60000".into())
            .with_message_id("m".into())
            .with_timestamp(42)
            .with_type("t".into())
            .with_app_id("a".into())
            .with_cluster_id("cl".into());
        if user_id {
            p.with_user_id("alice".into())
        } else {
            p
        }
    }

    #[test]
    fn properties_are_copied_and_user_id_dropped_unless_trusted() {
        let h = with_received_from(None, &origin("dc1"), false);
        let out = outgoing_properties(&all_properties(true), h.clone(), false);
        assert_eq!(out, all_properties(false).with_headers(h.clone()));
        let trusted = outgoing_properties(&all_properties(true), h.clone(), true);
        assert_eq!(trusted, all_properties(true).with_headers(h));
    }
}
