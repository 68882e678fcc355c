//! Republishing a message's properties from the bytes they arrived as.
//!
//! A forwarded message keeps every property but the headers it gains or loses (federation's
//! `x-received-from`, a shovel's `x-shovelled`, the routing key of a message held for a SET)
//! and `user_id`, which goes unless the upstream is trusted. Parsing the content header into
//! amq-protocol's types and encoding it again was a fifth of setgate's CPU per forwarded
//! message (every string and header an allocation, both ways); and what amq-protocol refuses
//! and RabbitMQ takes had to be repaired (a short string that is not UTF-8) or stopped the
//! flow (headers nested deeper than it parses). Here the property fields are walked where they lie and copied, and the headers
//! table is edited as bytes ([`Edit`]): nested values are skipped by their size, never parsed.
//! Properties in a shape it does not walk (continued flag words, a field of an unknown type:
//! shapes RabbitMQ refuses from publishers) are not forwarded: [`splice`] returns `false` and
//! the flow stops at the message, naming it ([`unwalkable`]). The tests check every edit
//! against the same edit of the parsed properties.
//!
//! A routed destination reads each message's key the same way, where it lies
//! ([`short_string`], [`header`]), so that choosing a SET parses nothing either.

use crate::hops::INVALID_HEADERS;
use setgate_amqp::field::value_len;

/// Property flags, in the order their fields follow (AMQP 0-9-1, class basic).
const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
pub(crate) const CORRELATION_ID: u16 = 1 << 10;
pub(crate) const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
pub(crate) const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
pub(crate) const TYPE: u16 = 1 << 5;
pub(crate) const USER_ID: u16 = 1 << 4;
pub(crate) const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;
/// Bit 0 says another flag word follows, which class basic never needs. (Bit 1 is unused:
/// RabbitMQ takes and delivers it set, and so it is copied as it came.)
const CONTINUED: u16 = 1;

/// How a forwarded message's headers change, as bytes. Entries keep their place except those
/// an edit names, which are written after the others (a table's order means nothing; the
/// amq-protocol writes every table sorted by key).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Edit<'a> {
    /// An element (its type octet and value, as encoded) to put first in the array under this
    /// key: federation's `x-received-from`, a shovel's `x-shovelled`. The array is made when
    /// the headers have none; a value that is not an array is moved to [`INVALID_HEADERS`].
    pub prepend: Option<(&'a str, &'a [u8])>,
    /// Entries to set: key, then type octet and value as encoded; an entry with the same key
    /// is replaced.
    pub set: &'a [(&'a str, &'a [u8])],
    /// A key whose entries are removed.
    pub remove: Option<&'a str>,
    /// Keep `user_id` (a trusted upstream); otherwise it is dropped.
    pub keep_user_id: bool,
}

impl Edit<'_> {
    /// It adds entries (so the message gets a headers table if it has none).
    fn adds(&self) -> bool {
        self.prepend.is_some() || !self.set.is_empty()
    }

    /// It touches the entries with key `key`.
    fn names(&self, key: &[u8]) -> bool {
        self.prepend.is_some_and(|(k, _)| k.as_bytes() == key)
            || self.remove.is_some_and(|k| k.as_bytes() == key)
            || self.set.iter().any(|(k, _)| k.as_bytes() == key)
    }
}

/// Writes to `out` the republished form of `raw` (a content header's property flags and
/// fields, as read), changed by `edit`. `false`, with `out` unspecified, when `raw` cannot be
/// walked (continued flag words, a field of an unknown type, cut short; see [`unwalkable`]). Nested tables are skipped by their size, never descended into, so no depth of
/// nesting stops it.
pub(crate) fn splice(raw: &[u8], edit: &Edit, out: &mut Vec<u8>) -> bool {
    out.clear();
    let Some(flags) = raw.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return false;
    };
    if flags & CONTINUED != 0 {
        return false;
    }
    let mut out_flags = flags;
    if edit.adds() {
        out_flags |= HEADERS;
    }
    if !edit.keep_user_id {
        out_flags &= !USER_ID;
    }
    out.extend_from_slice(&out_flags.to_be_bytes());
    let mut at = 2;
    for bit in [
        CONTENT_TYPE,
        CONTENT_ENCODING,
        HEADERS,
        DELIVERY_MODE,
        PRIORITY,
        CORRELATION_ID,
        REPLY_TO,
        EXPIRATION,
        MESSAGE_ID,
        TIMESTAMP,
        TYPE,
        USER_ID,
        APP_ID,
        CLUSTER_ID,
    ] {
        if bit == HEADERS
            && flags & HEADERS == 0
            && edit.adds()
            && edit_table(&[], edit, true, out).is_none()
        {
            return false;
        }
        if flags & bit == 0 {
            continue;
        }
        let Some(field) = field_at(raw, at, bit) else {
            return false;
        };
        at += field.len();
        match bit {
            HEADERS if edit.adds() || edit.remove.is_some() => {
                if edit_table(&field[4..], edit, true, out).is_none() {
                    return false;
                }
            }
            USER_ID if !edit.keep_user_id => {}
            _ => out.extend_from_slice(field),
        }
    }
    at == raw.len()
}

/// Writes the field table `table` (its entries, without its size) changed by `edit`, with its
/// size prefix. `None` when the table cannot be walked or grows past a table's size. With
/// `keep_invalid`, a value that is not an array where `edit` prepends goes to
/// [`INVALID_HEADERS`]; without (the edit of that table itself), it is replaced.
fn edit_table(table: &[u8], edit: &Edit, keep_invalid: bool, out: &mut Vec<u8>) -> Option<()> {
    let size_at = out.len();
    out.extend_from_slice(&[0; 4]);
    // The array an element is prepended to: the last entry with the key, as a parsed table
    // keeps it (its elements, after the type octet and the size). A value of another type is
    // kept as an element of its own.
    let (mut old, mut invalid): (&[u8], Option<&[u8]>) = (&[], None);
    if let Some((key, _)) = edit.prepend {
        match table_element(table, key)? {
            Some(e) if e[0] == b'A' => old = e.get(5..)?,
            Some(e) if keep_invalid => invalid = Some(e),
            _ => {}
        }
    }
    let moves_invalid = |key: &[u8]| invalid.is_some() && key == INVALID_HEADERS.as_bytes();
    // Entries the edit does not name are copied in runs.
    let (mut at, mut run) = (0, 0);
    while at < table.len() {
        let n = usize::from(*table.get(at)?);
        let key = table.get(at + 1..at + 1 + n)?;
        let kind = *table.get(at + 1 + n)?;
        let len = value_len(kind, table.get(at + 2 + n..)?)?;
        let end = at + 2 + n + len;
        if end > table.len() {
            return None;
        }
        if edit.names(key) || moves_invalid(key) {
            out.extend_from_slice(&table[run..at]);
            run = end;
        }
        at = end;
    }
    out.extend_from_slice(&table[run..]);
    if let Some((key, element)) = edit.prepend {
        push_key(key, out);
        push_array(&[element, old], out)?;
        if let Some(value) = invalid {
            push_key(INVALID_HEADERS, out);
            out.push(b'F');
            keep_invalid_value(table_element(table, INVALID_HEADERS)?, key, value, out)?;
        }
    }
    for (key, value) in edit.set {
        push_key(key, out);
        out.extend_from_slice(value);
    }
    let size = u32::try_from(out.len() - size_at - 4).ok()?;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    Some(())
}

/// Writes the `x-invalid-headers` table (size and entries) that keeps `value` (an element: type
/// octet and value), the value `key` held that was not an array, given the message's own
/// `x-invalid-headers` (`existing`, an element): `value` is prepended to the array under `key`
/// there. An `x-invalid-headers` that is not a table is itself kept in the new one, under its
/// own name, as RabbitMQ does.
fn keep_invalid_value(
    existing: Option<&[u8]>,
    key: &str,
    value: &[u8],
    out: &mut Vec<u8>,
) -> Option<()> {
    // An `x-invalid-headers` that is not a table, as an array of one element.
    let mut kept = Vec::new();
    let entries: &[u8] = match existing {
        Some(e) if e[0] == b'F' => e.get(5..)?,
        Some(e) => {
            push_array(&[e], &mut kept)?;
            &[]
        }
        None => &[],
    };
    let set = [(INVALID_HEADERS, kept.as_slice())];
    let edit = Edit {
        prepend: Some((key, value)),
        set: if kept.is_empty() { &[] } else { &set },
        ..Edit::default()
    };
    edit_table(entries, &edit, false, out)
}

/// Writes an array (type octet `A`, size, then `parts`, each one or more elements as encoded).
fn push_array(parts: &[&[u8]], out: &mut Vec<u8>) -> Option<()> {
    out.push(b'A');
    let size = u32::try_from(parts.iter().map(|p| p.len()).sum::<usize>()).ok()?;
    out.extend_from_slice(&size.to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    Some(())
}

/// Writes a table key (at most 255 bytes: the keys setgate writes are its own constants).
fn push_key(key: &str, out: &mut Vec<u8>) {
    debug_assert!(key.len() <= 255);
    out.push(key.len() as u8);
    out.extend_from_slice(key.as_bytes());
}

/// A long string value (type octet `S`, size, bytes), as [`Edit::set`] takes it.
pub(crate) fn long_string_value(s: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + s.len());
    v.push(b'S');
    v.extend_from_slice(&(s.len() as u32).to_be_bytes());
    v.extend_from_slice(s);
    v
}

/// The property `bit`'s field as encoded (with its size prefix, if it has one), where it
/// starts at `at`.
fn field_at(raw: &[u8], at: usize, bit: u16) -> Option<&[u8]> {
    let rest = raw.get(at..)?;
    let len = match bit {
        DELIVERY_MODE | PRIORITY => 1,
        TIMESTAMP => 8,
        HEADERS => 4 + long_len(rest)?,
        _ => 1 + usize::from(*rest.first()?),
    };
    rest.get(..len)
}

/// The field of property `want` (one flag bit) in `raw` (a content header's property flags and
/// fields, as read): `Some(None)` when the message does not have it, `None` when the fields
/// before it cannot be walked.
fn field(raw: &[u8], want: u16) -> Option<Option<&[u8]>> {
    let flags = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
    if flags & CONTINUED != 0 {
        return None;
    }
    if flags & want == 0 {
        return Some(None);
    }
    let mut at = 2;
    let mut bit = CONTENT_TYPE;
    while bit != want {
        if flags & bit != 0 {
            at += field_at(raw, at, bit)?.len();
        }
        bit >>= 1;
    }
    field_at(raw, at, want).map(Some)
}

/// A short-string property (`want` one of [`CORRELATION_ID`], [`REPLY_TO`], [`MESSAGE_ID`],
/// [`TYPE`], [`USER_ID`], [`APP_ID`]), without its size; as [`field`] says.
pub(crate) fn short_string(raw: &[u8], want: u16) -> Option<Option<&[u8]>> {
    debug_assert!(want & (CORRELATION_ID | REPLY_TO | MESSAGE_ID | TYPE | USER_ID | APP_ID) != 0);
    Some(field(raw, want)?.map(|f| &f[1..]))
}

/// The value of header `name`: its type and its bytes (a long string with its size prefix);
/// `Some(None)` when the message has no such header, `None` when the properties or the
/// headers table cannot be walked. A name repeated in the table reads as its last value, as
/// a parsed table keeps it.
pub(crate) fn header<'a>(raw: &'a [u8], name: &str) -> Option<Option<(u8, &'a [u8])>> {
    match field(raw, HEADERS)? {
        Some(f) => table_entry(&f[4..], name),
        None => Some(None),
    }
}

/// The last entry of a field table's entries (`table`, without its size) with key `key`: its
/// type and value bytes; `None` when the table cannot be walked.
pub(crate) fn table_entry<'a>(table: &'a [u8], key: &str) -> Option<Option<(u8, &'a [u8])>> {
    Some(table_element(table, key)?.map(|e| (e[0], &e[1..])))
}

/// The last entry with key `key` of a field table's entries (`table`, without its size), as an
/// element (type octet and value); `None` when the table cannot be walked.
fn table_element<'a>(table: &'a [u8], key: &str) -> Option<Option<&'a [u8]>> {
    let mut at = 0;
    let mut found = None;
    while at < table.len() {
        let n = usize::from(*table.get(at)?);
        let k = table.get(at + 1..at + 1 + n)?;
        at += 1 + n;
        let kind = *table.get(at)?;
        let len = value_len(kind, table.get(at + 1..)?)?;
        let element = table.get(at..at + 1 + len)?;
        if k == key.as_bytes() {
            found = Some(element);
        }
        at += 1 + len;
    }
    Some(found)
}

/// Why [`splice`] cannot walk properties `raw`, in words for the operator who finds such a
/// message in a queue.
pub(crate) fn unwalkable(raw: &[u8]) -> &'static str {
    match raw.get(..2) {
        Some([_, low]) if u16::from(*low) & CONTINUED != 0 => {
            "property flags that continue into another word (class basic has 14 properties)"
        }
        _ => "a field of a type AMQP 0-9-1 does not define, or fields cut short",
    }
}

/// The length a long (u32) size prefix announces.
fn long_len(b: &[u8]) -> Option<usize> {
    let b = b.get(..4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hops::model::{outgoing_properties, prepend_table_header, with_received_from};
    use crate::hops::{encoded_value, received_from_elements, Origin};
    use amq_protocol::frame::WriteContext;
    use amq_protocol::protocol::basic::{gen_properties, parse_properties, AMQPProperties};
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};

    fn encode(p: &AMQPProperties) -> Vec<u8> {
        gen_properties(p)(WriteContext::from(Vec::new()))
            .unwrap()
            .into_inner()
            .0
    }

    fn origin() -> Origin {
        Origin {
            uri: "amqp://dc1:5672/%2f".into(),
            exchange: "orders".into(),
            cluster_name: "dc1".into(),
            vhost: "/".into(),
        }
    }

    /// Federation's edit: this hop's `x-received-from` entry prepended.
    fn federation(elements: &[Vec<u8>; 2], keep_user_id: bool, redelivered: bool) -> Edit<'_> {
        Edit {
            prepend: Some(("x-received-from", &elements[usize::from(redelivered)])),
            keep_user_id,
            ..Edit::default()
        }
    }

    /// The parsed model's answer, to compare with.
    fn parsed(p: &AMQPProperties, keep_user_id: bool, redelivered: bool) -> AMQPProperties {
        let headers = with_received_from(p.headers().as_ref(), &origin(), redelivered);
        outgoing_properties(p, headers, keep_user_id)
    }

    fn headers() -> FieldTable {
        let mut nested = FieldTable::default();
        nested.insert("n".into(), AMQPValue::ShortShortInt(-3));
        let mut h = FieldTable::default();
        h.insert("ts_ns".into(), AMQPValue::LongLongInt(1_700_000_000_000));
        h.insert("x-user-id".into(), AMQPValue::LongString("user-7".into()));
        h.insert("flag".into(), AMQPValue::Boolean(true));
        h.insert("small".into(), AMQPValue::ShortInt(-2));
        h.insert("ratio".into(), AMQPValue::Double(0.5));
        h.insert("at".into(), AMQPValue::Timestamp(1_700_000_000));
        h.insert("nested".into(), AMQPValue::FieldTable(nested));
        h.insert(
            "list".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongInt(1)])),
        );
        h.insert("bytes".into(), AMQPValue::ByteArray(vec![1, 2, 3].into()));
        h.insert("nothing".into(), AMQPValue::Void);
        h.insert("text".into(), AMQPValue::LongString(LongString::from("é")));
        h
    }

    fn cases() -> Vec<AMQPProperties> {
        let all = AMQPProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("gzip".into())
            .with_headers(headers())
            .with_delivery_mode(2)
            .with_priority(5)
            .with_correlation_id("c-1".into())
            .with_reply_to("replies".into())
            .with_expiration("60000".into())
            .with_message_id("m-1".into())
            .with_timestamp(1_700_000_000)
            .with_type("order.created".into())
            .with_user_id("guest".into())
            .with_app_id("shop".into())
            .with_cluster_id("c".into());
        vec![
            AMQPProperties::default(),
            AMQPProperties::default().with_delivery_mode(2),
            AMQPProperties::default()
                .with_delivery_mode(2)
                .with_message_id("42".into())
                .with_headers(headers()),
            AMQPProperties::default().with_headers(FieldTable::default()),
            AMQPProperties::default()
                .with_user_id("guest".into())
                .with_app_id("a".into()),
            all,
        ]
    }

    /// The first and second hops of [`cases`]: each case, and each with a hop already
    /// recorded (one entry); then with a header that is not an array (kept in
    /// `x-invalid-headers`), without and with an `x-invalid-headers` of its own: a table that
    /// holds the key already, one that does not, and a value that is not a table.
    fn hops() -> Vec<AMQPProperties> {
        let mut out = cases();
        let table = |key: &str| {
            let mut t = FieldTable::default();
            t.insert(
                key.into(),
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongInt(7)])),
            );
            AMQPValue::FieldTable(t)
        };
        for p in cases() {
            let mut h = with_received_from(p.headers().as_ref(), &origin(), true);
            out.push(p.clone().with_headers(h.clone()));
            h.insert(
                "x-received-from".into(),
                AMQPValue::LongString("dc0".into()),
            );
            out.push(p.clone().with_headers(h.clone()));
            for invalid in [
                table("x-received-from"),
                table("x-shovelled"),
                AMQPValue::Boolean(true),
            ] {
                h.insert(INVALID_HEADERS.into(), invalid);
                out.push(p.clone().with_headers(h.clone()));
            }
        }
        out
    }

    #[test]
    fn a_spliced_header_reads_as_the_parsing_path_writes_it() {
        let elements = received_from_elements(&origin());
        for (i, p) in hops().iter().enumerate() {
            for keep in [false, true] {
                for redelivered in [false, true] {
                    let mut out = Vec::new();
                    let edit = federation(&elements, keep, redelivered);
                    assert!(splice(&encode(p), &edit, &mut out), "{i}");
                    let (rest, got) = parse_properties(out.as_slice()).expect("parses");
                    assert!(rest.is_empty(), "case {i}: {} bytes left", rest.len());
                    assert_eq!(got, parsed(p, keep, redelivered), "case {i} keep {keep}");
                }
            }
        }
    }

    /// What an edit does to a parsed table: the model of [`edit_table`].
    fn edited(
        headers: Option<&FieldTable>,
        prepend: Option<(&str, &AMQPValue)>,
        set: &[(&str, AMQPValue)],
        remove: Option<&str>,
    ) -> FieldTable {
        let mut out = headers.cloned().unwrap_or_default();
        if let Some((key, element)) = prepend {
            prepend_table_header(&mut out, key, element.clone());
        }
        for (key, value) in set {
            out.insert((*key).into(), value.clone());
        }
        let kept: std::collections::BTreeMap<_, _> = out
            .inner()
            .iter()
            .filter(|(k, _)| Some(k.as_str()) != remove)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        FieldTable::from(kept)
    }

    #[test]
    fn every_edit_reads_as_the_same_edit_of_the_parsed_headers() {
        let element = AMQPValue::FieldTable(headers());
        let element_bytes = encoded_value(&element);
        let stamp = AMQPValue::LongLongInt(1_700_000_000);
        let key = AMQPValue::LongString("orders.eu".into());
        let (stamp_bytes, key_bytes) = (encoded_value(&stamp), encoded_value(&key));
        let mut checked = 0;
        for (i, p) in hops().iter().enumerate() {
            for prepend in [None, Some("x-shovelled"), Some("x-user-id")] {
                for (n_set, remove) in [(0, None), (1, None), (2, Some("ts_ns")), (0, Some("x"))] {
                    let set_bytes = [("ts", &stamp_bytes[..]), ("text", &key_bytes[..])];
                    let set = [("ts", stamp.clone()), ("text", key.clone())];
                    let edit = Edit {
                        prepend: prepend.map(|k| (k, element_bytes.as_slice())),
                        set: &set_bytes[..n_set],
                        remove,
                        keep_user_id: true,
                    };
                    let mut out = Vec::new();
                    assert!(splice(&encode(p), &edit, &mut out), "{i}");
                    let (rest, got) = parse_properties(out.as_slice()).expect("parses");
                    assert!(rest.is_empty(), "case {i}: {} bytes left", rest.len());
                    let want = edited(
                        p.headers().as_ref(),
                        prepend.map(|k| (k, &element)),
                        &set[..n_set],
                        remove,
                    );
                    let adds = prepend.is_some() || n_set > 0;
                    if p.headers().is_some() || adds {
                        assert_eq!(got.headers().as_ref(), Some(&want), "case {i} {edit:?}");
                    } else {
                        assert_eq!(got.headers(), &None, "case {i}: no headers made");
                    }
                    assert_eq!(
                        got.clone().with_headers(FieldTable::default()),
                        p.clone().with_headers(FieldTable::default()),
                        "case {i}: the rest kept"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, hops().len() * 12);
    }

    #[test]
    fn without_an_edit_only_user_id_changes() {
        for (i, p) in cases().iter().enumerate() {
            let mut out = Vec::new();
            assert!(splice(&encode(p), &Edit::default(), &mut out), "{i}");
            let (_, got) = parse_properties(out.as_slice()).unwrap();
            let want = match p.headers() {
                Some(h) => outgoing_properties(p, h.clone(), false),
                None => outgoing_properties(p, FieldTable::default(), false),
            };
            assert_eq!(got.user_id(), &None);
            assert_eq!(got.headers(), p.headers(), "{i}");
            assert_eq!(got.message_id(), want.message_id());
            assert_eq!(got.app_id(), want.app_id());
        }
    }

    /// Headers `{deep: {a: {a: ... }}}` nested `depth` tables deep, then `x-user-id`, as bytes.
    fn deep_properties(depth: usize) -> Vec<u8> {
        let mut value = vec![b'F', 0, 0, 0, 0];
        for _ in 1..depth {
            let mut outer = vec![b'F'];
            outer.extend_from_slice(&((2 + value.len()) as u32).to_be_bytes());
            outer.extend_from_slice(&[1, b'a']);
            outer.extend_from_slice(&value);
            value = outer;
        }
        let mut table = vec![4];
        table.extend_from_slice(b"deep");
        table.extend_from_slice(&value);
        table.push(9);
        table.extend_from_slice(b"x-user-id");
        table.extend_from_slice(&long_string_value(b"user-7"));
        let mut raw = HEADERS.to_be_bytes().to_vec();
        raw.extend_from_slice(&(table.len() as u32).to_be_bytes());
        raw.extend_from_slice(&table);
        raw
    }

    #[test]
    fn nesting_of_any_depth_is_copied_without_being_descended_into() {
        let raw = deep_properties(10_000);
        let elements = received_from_elements(&origin());
        let held = long_string_value(b"k");
        let edit = Edit {
            set: &[("x-setgate-routing-key", &held)],
            ..federation(&elements, false, false)
        };
        let mut out = Vec::new();
        assert!(splice(&raw, &edit, &mut out));
        let deep = &raw[6..raw.len() - 21];
        assert!(out.windows(deep.len()).any(|w| w == deep), "copied whole");
        assert_eq!(
            header(&out, "x-user-id"),
            Some(Some((b'S', &b"\0\0\0\x06user-7"[..])))
        );
        let (kind, _) = header(&out, "x-received-from").unwrap().unwrap();
        assert_eq!(kind, b'A');
        assert_eq!(
            header(&out, "x-setgate-routing-key"),
            Some(Some((b'S', &held[1..])))
        );
        // And taken back off, as a release does.
        let mut back = Vec::new();
        let release = Edit {
            remove: Some("x-setgate-routing-key"),
            ..Edit::default()
        };
        assert!(splice(&out, &release, &mut back));
        assert_eq!(header(&back, "x-setgate-routing-key"), Some(None));
        assert_eq!(back.len(), out.len() - (1 + 21 + held.len()));
    }

    #[test]
    fn a_key_repeated_in_the_table_is_edited_as_its_last_value() {
        // {x-shovelled: [1], x-shovelled: [2]}: the parsed table keeps [2].
        let entry = |n: u8| {
            let mut e = vec![11];
            e.extend_from_slice(b"x-shovelled");
            e.extend_from_slice(&[b'A', 0, 0, 0, 2, b'b', n]);
            e
        };
        let table = [entry(1), entry(2)].concat();
        let mut raw = HEADERS.to_be_bytes().to_vec();
        raw.extend_from_slice(&(table.len() as u32).to_be_bytes());
        raw.extend_from_slice(&table);
        let edit = Edit {
            prepend: Some(("x-shovelled", &[b'b', 0])),
            ..Edit::default()
        };
        let mut out = Vec::new();
        assert!(splice(&raw, &edit, &mut out));
        let (_, got) = parse_properties(out.as_slice()).unwrap();
        let array = |v: &[i8]| {
            AMQPValue::FieldArray(FieldArray::from(
                v.iter()
                    .map(|&n| AMQPValue::ShortShortInt(n))
                    .collect::<Vec<_>>(),
            ))
        };
        let mut want = FieldTable::default();
        want.insert("x-shovelled".into(), array(&[0, 2]));
        assert_eq!(got.headers().as_ref(), Some(&want));
        assert_eq!(out.len(), 2 + 4 + 1 + 11 + 1 + 4 + 4, "one entry left");
    }

    #[test]
    fn shapes_it_does_not_walk_are_left_to_the_parsing_path() {
        let elements = received_from_elements(&origin());
        let how = federation(&elements, false, false);
        let mut out = Vec::new();
        // A flag word that says another follows.
        assert!(!splice(&[0, 1, 0, 0], &how, &mut out));
        // Cut short, and an unknown field type in the headers.
        let full = encode(&cases()[5]);
        assert!(!splice(&full[..full.len() - 1], &how, &mut out));
        // Headers {k: ?}: a field type nobody defined.
        let mut odd = vec![0x20, 0, 0, 0, 0, 3, 1, b'k', b'?'];
        assert!(!splice(&odd, &how, &mut out));
        odd[8] = b'V';
        assert!(splice(&odd, &how, &mut out), "void is a type");
        // A nested size that runs past the table.
        let over = vec![0x20, 0, 0, 0, 0, 8, 1, b'k', b'F', 0, 0, 0, 9, 0];
        assert!(!splice(&over, &how, &mut out));
    }

    /// `encoded` with every occurrence of `from` (a placeholder amq-protocol wrote) replaced by
    /// `to`, of the same length: bytes amq-protocol would refuse to write.
    fn patched(encoded: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let mut out = encoded.to_vec();
        let mut found = 0;
        let mut i = 0;
        while i + from.len() <= out.len() {
            if &out[i..i + from.len()] == from {
                out[i..i + from.len()].copy_from_slice(to);
                found += 1;
                i += from.len();
            } else {
                i += 1;
            }
        }
        assert!(found > 0, "placeholder {from:?} not found");
        out
    }

    #[test]
    fn short_strings_that_are_not_utf8_are_forwarded_byte_for_byte() {
        // A property and a header key amq-protocol would refuse to parse; RabbitMQ, whose
        // strings are bytes, takes and delivers both.
        let mut h = headers();
        h.insert("KKKK".into(), AMQPValue::LongString("v".into()));
        let p = AMQPProperties::default()
            .with_headers(h)
            .with_message_id("ZZZZ".into());
        let raw = patched(&encode(&p), b"ZZZZ", &[0xFF, b'a', 0xC3, b'b']);
        let raw = patched(&raw, b"KKKK", &[b'k', 0x80, 0x80, b'!']);
        assert!(
            parse_properties(raw.as_slice()).is_err(),
            "amq-protocol refuses it"
        );
        let elements = received_from_elements(&origin());
        let mut out = Vec::new();
        assert!(splice(&raw, &federation(&elements, false, false), &mut out));
        assert_eq!(
            short_string(&out, MESSAGE_ID),
            Some(Some(&[0xFF, b'a', 0xC3, b'b'][..]))
        );
        let key = String::from_utf8_lossy(&[b'k', 0x80, 0x80, b'!']).into_owned();
        assert_eq!(
            header(&out, &key),
            Some(None),
            "the key is not read as UTF-8"
        );
        assert!(out
            .windows(7)
            .any(|w| w == [4, b'k', 0x80, 0x80, b'!', b'S', 0]));
        assert!(matches!(
            header(&out, "x-received-from"),
            Some(Some((b'A', _)))
        ));
    }

    #[test]
    fn the_unused_flag_bit_is_walked_and_kept_and_a_continued_word_is_named() {
        let mut raw = encode(&cases()[2]);
        raw[1] |= 0b10;
        let mut out = Vec::new();
        assert!(splice(&raw, &Edit::default(), &mut out));
        assert_eq!(out, raw, "RabbitMQ delivers bit 1 set: copied as it came");
        raw[1] |= 0b01;
        assert!(!splice(&raw, &Edit::default(), &mut out));
        assert!(
            unwalkable(&raw).contains("continue"),
            "{}",
            unwalkable(&raw)
        );
        assert!(unwalkable(&[0x20, 0, 0, 0, 0, 3, 1, b'k', b'?']).contains("type"));
    }
}
