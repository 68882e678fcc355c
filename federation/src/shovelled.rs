//! The `x-shovelled` header a shovel with `add_forward_headers` writes, in the shape RabbitMQ's
//! shovel plugin writes it (so tools that read the plugin's header read setgate's): an entry
//! prepended to the `x-shovelled` array, and `x-shovelled-timestamp` (seconds since the epoch).

use crate::plan::{FlowSpec, Source, Target};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};

/// The header names.
pub const SHOVELLED: &str = "x-shovelled";
/// The time the message was shovelled, in seconds since the epoch.
pub const SHOVELLED_TIMESTAMP: &str = "x-shovelled-timestamp";

/// The fixed part of one flow attempt's entry (everything but the destination URI, which a
/// routed destination knows per message).
#[derive(Debug, Clone)]
pub(crate) struct Shovelled {
    entry: FieldTable,
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
        Shovelled { entry: e }
    }

    /// `headers` with this hop's entry prepended to `x-shovelled` and the timestamp set.
    pub fn prepend(
        &self,
        headers: Option<&FieldTable>,
        dest_uri: &str,
        now_secs: u64,
    ) -> FieldTable {
        let mut entry = self.entry.clone();
        entry.insert("dest-uri".into(), long(dest_uri));
        let mut out = headers.cloned().unwrap_or_default();
        let mut entries = vec![AMQPValue::FieldTable(entry)];
        if let Some(AMQPValue::FieldArray(old)) = out.inner().get(SHOVELLED) {
            entries.extend_from_slice(old.as_slice());
        }
        out.insert(
            SHOVELLED.into(),
            AMQPValue::FieldArray(FieldArray::from(entries)),
        );
        out.insert(
            SHOVELLED_TIMESTAMP.into(),
            AMQPValue::LongLongInt(i64::try_from(now_secs).unwrap_or(i64::MAX)),
        );
        out
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AckMode, QueueType, UpstreamConfig};
    use crate::plan::{Downstream, Headers};
    use crate::shovel::DeleteAfter;
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
        let s = Shovelled::new(
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
        let first = s.prepend(None, "amqp://dst:5672/%2f", 1_700_000_000);
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
        let x = Shovelled::new(
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
        let second = x.prepend(Some(&first), "amqp://c:5672/%2f", 1_700_000_001);
        let newest = entry(&second, 0);
        assert!(newest.contains(&("src-exchange".into(), "orders".into())));
        assert!(newest.contains(&("src-exchange-key".into(), "order.#".into())));
        assert!(newest.contains(&("dest-exchange-key".into(), "k".into())));
        assert!(entry(&second, 1).contains(&("src-queue".into(), "orders.dlq".into())));
    }
}
