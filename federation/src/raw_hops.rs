//! Loop prevention read from the bytes: whether a message already crossed `max_hops` links,
//! or came from the cluster it is going to, without parsing its properties.
//!
//! Where clusters federate both ways (or in a ring or a mesh), much of what a link consumes
//! came in over another link: with `max_hops = 1` and two-way federation, half of it, all to
//! be dropped, and with more hops the rest is forwarded again. Such a message carries
//! `x-received-from`: here its entries are counted and their cluster names read where they
//! lie. The answer is the parsed model's (`HopPolicy::verdict_at` in `hops::model`): a unit
//! test holds the two together.

use crate::hops::{HopPolicy, Verdict, RECEIVED_FROM};
use crate::raw_props::{header, table_entry};
use setgate_amqp::field::value_len;

/// Whether a message with properties `raw` (as read) may cross the link to
/// `downstream_cluster`, or `None` when `raw` cannot be walked.
pub(crate) fn verdict(policy: &HopPolicy, raw: &[u8], downstream_cluster: &str) -> Option<Verdict> {
    let Some((kind, value)) = header(raw, RECEIVED_FROM)? else {
        return Some(Verdict::Forward);
    };
    // Not an array: no entries (the new array replaces it).
    if kind != b'A' {
        return Some(Verdict::Forward);
    }
    let entries = value.get(4..)?;
    let (mut count, mut seen) = (0usize, false);
    let mut at = 0;
    while at < entries.len() {
        let kind = *entries.get(at)?;
        let len = value_len(kind, entries.get(at + 1..)?)?;
        let entry = entries.get(at + 1..at + 1 + len)?;
        if kind == b'F' {
            seen |= names(&entry[4..], downstream_cluster, &policy.downstream_vhost)?;
        }
        count += 1;
        at += 1 + len;
    }
    Some(if count >= policy.max_hops as usize {
        Verdict::MaxHops
    } else if seen {
        Verdict::Cycle
    } else {
        Verdict::Forward
    })
}

/// Whether an entry (a table's entries, without its size) names `cluster` and `vhost`: its
/// `cluster-name` is that string, and its `vhost` is that string, or absent, or not a string
/// (entries written before the plugin recorded a vhost match on the cluster alone).
fn names(table: &[u8], cluster: &str, vhost: &str) -> Option<bool> {
    let name_matches = matches!(
        table_entry(table, "cluster-name")?,
        Some((b'S', v)) if v.get(4..) == Some(cluster.as_bytes())
    );
    let vhost_matches = match table_entry(table, "vhost")? {
        Some((b'S', v)) => std::str::from_utf8(v.get(4..)?).map_or(true, |s| s == vhost),
        _ => true,
    };
    Some(name_matches && vhost_matches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::WriteContext;
    use amq_protocol::protocol::basic::{gen_properties, parse_properties, AMQPProperties};
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};

    fn policy(max_hops: u32) -> HopPolicy {
        HopPolicy {
            max_hops,
            downstream_cluster: "dc2".into(),
            downstream_vhost: "/".into(),
        }
    }

    /// The kinds of `x-received-from` entry a message may carry.
    fn entry_kinds() -> Vec<AMQPValue> {
        let table = |name: Option<AMQPValue>, vhost: Option<AMQPValue>| {
            let mut t = FieldTable::default();
            t.insert("uri".into(), AMQPValue::LongString("amqp://x".into()));
            if let Some(n) = name {
                t.insert("cluster-name".into(), n);
            }
            if let Some(v) = vhost {
                t.insert("vhost".into(), v);
            }
            AMQPValue::FieldTable(t)
        };
        let s = |v: &str| Some(AMQPValue::LongString(v.into()));
        vec![
            table(s("dc2"), s("/")),
            table(s("dc2"), None),
            table(s("dc2"), s("other")),
            table(
                s("dc2"),
                Some(AMQPValue::LongString(LongString::from(vec![0xFF]))),
            ),
            table(s("dc2"), Some(AMQPValue::LongInt(1))),
            table(s("dc1"), s("/")),
            table(Some(AMQPValue::LongInt(2)), s("/")),
            table(None, None),
            AMQPValue::LongString("not a table".into()),
        ]
    }

    /// Every header shape: none, not an array, and arrays of up to three entries of every kind.
    fn shapes() -> Vec<Option<FieldTable>> {
        let kinds = entry_kinds();
        let mut arrays: Vec<Vec<AMQPValue>> = vec![vec![]];
        for len in 1..=3 {
            let mut next = Vec::new();
            for a in arrays.iter().filter(|a| a.len() == len - 1) {
                for k in &kinds {
                    let mut b = a.clone();
                    b.push(k.clone());
                    next.push(b);
                }
            }
            arrays.extend(next);
        }
        let mut out = vec![None];
        let mut other = FieldTable::default();
        other.insert("x-user-id".into(), AMQPValue::LongString("u".into()));
        out.push(Some(other.clone()));
        let mut not_array = other.clone();
        not_array.insert(RECEIVED_FROM.into(), AMQPValue::LongString("dc2".into()));
        out.push(Some(not_array));
        for a in arrays {
            let mut h = other.clone();
            h.insert(
                RECEIVED_FROM.into(),
                AMQPValue::FieldArray(FieldArray::from(a)),
            );
            out.push(Some(h));
        }
        out
    }

    #[test]
    fn every_drop_is_read_from_the_bytes_and_matches_the_parsed_verdict() {
        let mut drops = 0;
        for headers in shapes() {
            let mut p = AMQPProperties::default().with_message_id("m".into());
            if let Some(h) = headers {
                p = p.with_headers(h);
            }
            let raw = gen_properties(&p)(WriteContext::from(Vec::new()))
                .unwrap()
                .into_inner()
                .0;
            let (_, parsed) = parse_properties(raw.as_slice()).unwrap();
            for max_hops in 1..=3 {
                let policy = policy(max_hops);
                for cluster in ["dc2", "dc1", "no such cluster"] {
                    let want = policy.verdict_at(parsed.headers().as_ref(), cluster);
                    let got = verdict(&policy, &raw, cluster);
                    assert_eq!(got, Some(want), "{parsed:?} max_hops {max_hops} {cluster}");
                    drops += usize::from(want != Verdict::Forward);
                }
            }
        }
        assert!(drops > 3000, "{drops}");
    }

    #[test]
    fn what_cannot_be_walked_is_left_to_the_parsing_path() {
        // Headers {x-received-from: [?]}: an array entry of a type nobody defined.
        let key = RECEIVED_FROM.as_bytes();
        let mut table = vec![key.len() as u8];
        table.extend_from_slice(key);
        table.extend_from_slice(&[b'A', 0, 0, 0, 1, b'?']);
        let mut raw = vec![0x20, 0];
        raw.extend_from_slice(&(table.len() as u32).to_be_bytes());
        raw.extend_from_slice(&table);
        assert_eq!(verdict(&policy(1), &raw, "dc2"), None);
        // Cut short.
        assert_eq!(verdict(&policy(1), &raw[..raw.len() - 2], "dc2"), None);
    }
}
