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
            Source::Existing { queue } => {
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
