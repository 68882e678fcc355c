//! The `x-shovelled` header a shovel with `add_forward_headers` writes, in the shape RabbitMQ's
//! shovel plugin writes it (so tools that read the plugin's header read setgate's): an entry
//! prepended to the `x-shovelled` array, and `x-shovelled-timestamp` (seconds since the epoch).

use crate::plan::{FlowSpec, Source, Target};
use lapin::types::{AMQPValue, FieldTable, LongString};

/// The header names.
pub const SHOVELLED: &str = "x-shovelled";
/// The time the message was shovelled, in seconds since the epoch.
pub const SHOVELLED_TIMESTAMP: &str = "x-shovelled-timestamp";

/// The fixed part of one flow attempt's entry (everything but the destination URI, which a
/// routed destination knows per message), and the entry encoded for each destination.
#[derive(Debug, Clone)]
pub(crate) struct Shovelled {
    entry: FieldTable,
    /// By destination outlet: the encoded entry and the URI it names. Kept, not made per message
    /// (a clone of the table, an insert and an encoding); made again when the outlet's URI
    /// changes (it fails over to another of its URIs).
    encoded: Vec<Option<(String, Vec<u8>)>>,
}

impl Shovelled {
    /// The entry of a shovel connected to its source at `src_uri` (without credentials).
    pub fn new(spec: &FlowSpec, src_uri: &str, src_vhost: &str) -> Shovelled {
        let mut e = FieldTable::default();
        e.insert("shovelled-by".into(), long("setgate"));
        // Defined in a file, like the plugin's static shovels.
        e.insert("shovel-type".into(), long("static"));
        e.insert("shovel-name".into(), long(&spec.link));
        e.insert("shovel-vhost".into(), long(src_vhost));
        e.insert("src-uri".into(), long(src_uri));
        match &spec.source {
            Source::Existing { queue, .. } => {
                e.insert("src-queue".into(), long(queue));
            }
            Source::Own {
                exchange: Some(x),
                binding_keys,
                ..
            } => {
                e.insert("src-exchange".into(), long(x));
                if let Some(k) = binding_keys.first() {
                    e.insert("src-exchange-key".into(), long(k));
                }
            }
            Source::Own { queue, .. } => {
                e.insert("src-queue".into(), long(queue));
            }
        }
        match &spec.target {
            Target::Exchange { name, routing_key } => {
                e.insert("dest-exchange".into(), long(name));
                if let Some(k) = routing_key {
                    e.insert("dest-exchange-key".into(), long(k));
                }
            }
            Target::Queue(q) => {
                e.insert("dest-queue".into(), long(q));
            }
        }
        Shovelled {
            entry: e,
            encoded: Vec::new(),
        }
    }

    /// The entry for destination outlet `dest`, now at `dest_uri`, as an array element (type
    /// octet and value), for [`crate::raw_props::Edit::prepend`].
    pub fn element(&mut self, dest: usize, dest_uri: &str) -> &[u8] {
        if self.encoded.len() <= dest {
            self.encoded.resize(dest + 1, None);
        }
        let slot = &mut self.encoded[dest];
        if !matches!(slot, Some((uri, _)) if uri == dest_uri) {
            let mut entry = self.entry.clone();
            entry.insert("dest-uri".into(), long(dest_uri));
            let element = crate::hops::encoded_value(&AMQPValue::FieldTable(entry));
            *slot = Some((dest_uri.to_string(), element));
        }
        &slot.as_ref().expect("just made").1
    }
}

/// `x-shovelled-timestamp`'s value (type octet and value) at `now_secs`.
pub(crate) fn timestamp_value(now_secs: u64) -> [u8; 9] {
    let mut v = [b'l'; 9];
    v[1..].copy_from_slice(&i64::try_from(now_secs).unwrap_or(i64::MAX).to_be_bytes());
    v
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AckMode, QueueType, UpstreamConfig};
    use crate::plan::{Downstream, Headers};
    use crate::raw_props::{splice, Edit};
    use crate::shovel::DeleteAfter;
    use amq_protocol::protocol::basic::parse_properties;
    use std::time::Duration;

    fn spec(source: Source, target: Target) -> FlowSpec {
        FlowSpec {
            link: "replay".into(),
            upstream: UpstreamConfig {
                name: "replay source".into(),
                uris: vec![],
                reconnect_delay: Duration::from_secs(1),
                prefetch_count: 10,
                ack_mode: AckMode::OnConfirm,
                max_hops: 1,
                expires: None,
                message_ttl: None,
                queue_type: QueueType::Classic,
                trust_user_id: false,
            },
            exchange: "q".into(),
            source,
            downstream: Downstream::Cluster {
                name: "d".into(),
                uris: vec![],
            },
            target,
            headers: Headers::Shovel { forward: true },
            mandatory: false,
            delete_after: DeleteAfter::Never,
        }
    }

    /// Properties `raw` as a shovel with forward headers republishes them (the flow's edit),
    /// and their headers, parsed.
    fn shovelled(s: &mut Shovelled, raw: &[u8], dest_uri: &str, now: u64) -> (Vec<u8>, FieldTable) {
        let stamp = timestamp_value(now);
        let edit = Edit {
            prepend: Some((SHOVELLED, s.element(0, dest_uri))),
            set: &[(SHOVELLED_TIMESTAMP, &stamp)],
            ..Edit::default()
        };
        let mut out = Vec::new();
        assert!(splice(raw, &edit, &mut out));
        let (rest, p) = parse_properties(out.as_slice()).expect("parses");
        assert!(rest.is_empty());
        (out, p.headers().clone().expect("headers"))
    }

    fn entry(h: &FieldTable, i: usize) -> Vec<(String, String)> {
        let Some(AMQPValue::FieldArray(a)) = h.inner().get(SHOVELLED) else {
            panic!("no x-shovelled array");
        };
        let Some(AMQPValue::FieldTable(t)) = a.as_slice().get(i) else {
            panic!("no entry {i}");
        };
        t.inner()
            .iter()
            .map(|(k, v)| match v {
                AMQPValue::LongString(s) => {
                    (k.to_string(), String::from_utf8_lossy(s.as_bytes()).into())
                }
                other => (k.to_string(), format!("{other:?}")),
            })
            .collect()
    }

    #[test]
    fn the_entry_has_the_plugins_keys_and_is_prepended() {
        let mut s = Shovelled::new(
            &spec(
                Source::Existing {
                    queue: "orders.dlq".into(),
                    declare: true,
                },
                Target::Queue("orders".into()),
            ),
            "amqp://src:5672/%2f",
            "/",
        );
        let (raw, first) = shovelled(&mut s, &[0, 0], "amqp://dst:5672/%2f", 1_700_000_000);
        let keys: Vec<String> = entry(&first, 0).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "dest-queue",
                "dest-uri",
                "shovel-name",
                "shovel-type",
                "shovel-vhost",
                "shovelled-by",
                "src-queue",
                "src-uri"
            ]
        );
        assert!(entry(&first, 0).contains(&("dest-uri".into(), "amqp://dst:5672/%2f".into())));
        assert_eq!(
            first.inner().get(SHOVELLED_TIMESTAMP),
            Some(&AMQPValue::LongLongInt(1_700_000_000))
        );
        let mut x = Shovelled::new(
            &spec(
                Source::Own {
                    queue: "shovel: replay".into(),
                    exchange: Some("orders".into()),
                    binding_keys: vec!["order.#".into()],
                    hold: false,
                },
                Target::Exchange {
                    name: "orders".into(),
                    routing_key: Some("k".into()),
                },
            ),
            "amqp://b:5672/%2f",
            "/",
        );
        let (_, second) = shovelled(&mut x, &raw, "amqp://c:5672/%2f", 1_700_000_001);
        let newest = entry(&second, 0);
        assert!(newest.contains(&("src-exchange".into(), "orders".into())));
        assert!(newest.contains(&("src-exchange-key".into(), "order.#".into())));
        assert!(newest.contains(&("dest-exchange-key".into(), "k".into())));
        assert!(entry(&second, 1).contains(&("src-queue".into(), "orders.dlq".into())));
        assert_eq!(
            second.inner().get(SHOVELLED_TIMESTAMP),
            Some(&AMQPValue::LongLongInt(1_700_000_001)),
            "the timestamp replaced"
        );
    }

    #[test]
    fn each_destination_keeps_its_entry_and_a_failover_changes_it() {
        let mut s = Shovelled::new(
            &spec(
                Source::Existing {
                    queue: "orders".into(),
                    declare: true,
                },
                Target::Queue("orders".into()),
            ),
            "amqp://src:5672/%2f",
            "/",
        );
        let dest_uri = |s: &mut Shovelled, dest: usize, uri: &str| {
            let (_, h) = shovelled_at(s, dest, uri);
            entry(&h, 0)
                .into_iter()
                .find(|(k, _)| k == "dest-uri")
                .expect("dest-uri")
                .1
        };
        // set-b, set-a, set-b again; then set-a's outlet fails over to its second URI.
        for (dest, uri) in [
            (1, "amqp://set-b:5672/%2f"),
            (0, "amqp://set-a:5672/%2f"),
            (1, "amqp://set-b:5672/%2f"),
            (0, "amqp://set-a-2:5672/%2f"),
            (1, "amqp://set-b:5672/%2f"),
        ] {
            assert_eq!(dest_uri(&mut s, dest, uri), uri, "destination {dest}");
        }
    }

    fn shovelled_at(s: &mut Shovelled, dest: usize, dest_uri: &str) -> (Vec<u8>, FieldTable) {
        let edit = Edit {
            prepend: Some((SHOVELLED, s.element(dest, dest_uri))),
            ..Edit::default()
        };
        let mut out = Vec::new();
        assert!(splice(&[0, 0], &edit, &mut out));
        let (_, p) = parse_properties(out.as_slice()).expect("parses");
        (out, p.headers().clone().expect("headers"))
    }
}
