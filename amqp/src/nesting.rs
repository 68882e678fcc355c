//! How deep a frame's field tables nest, checked before amq-protocol parses the frame.
//!
//! amq-protocol parses a table (or array) inside a table by recursion, several stack frames a
//! level. A level costs the sender five or six bytes, so a 35 KiB frame nests 5,000 levels and
//! overflows a 2 MiB thread stack, which aborts the whole process: one hostile client's StartOk
//! on a `set` listener, or one message published upstream with such headers, would take down
//! every listener, link and VRRP instance of the edge. RabbitMQ itself (Erlang) reads such a
//! frame without harm and stores such a message.
//!
//! So a frame is walked here first, without recursion deeper than [`MAX_DEPTH`], wherever a
//! field table can be in it: the table arguments of the methods that have one and the headers
//! property of a content header. A frame nested deeper is refused before it is parsed.
//! [`properties_nest_within`] does the same for a content header's properties read apart from
//! their frame (federation's deliveries).

use crate::field::value_len;

/// How deep field tables and arrays may nest: the top-level table is 1. Real frames nest 2 or 3
/// deep (client capabilities; `x-death` and `x-received-from`, arrays of tables in headers).
pub const MAX_DEPTH: usize = 32;

/// Frame types.
const METHOD: u8 = 1;
const HEADER: u8 = 2;

/// The fields before a method's table argument, in order.
#[derive(Clone, Copy)]
enum Field {
    Octet,
    Short,
    ShortString,
}

/// The methods with a field-table argument: class and method ids, and the fields before the
/// table (AMQP 0-9-1 and RabbitMQ's extensions). Bits before a table take one octet.
fn table_at(class: u16, method: u16) -> Option<&'static [Field]> {
    use Field::*;
    Some(match (class, method) {
        // connection.start: version-major, version-minor, server-properties.
        (10, 10) => &[Octet, Octet],
        // connection.start-ok: client-properties first.
        (10, 11) => &[],
        // exchange.declare: reserved, exchange, type, bits, arguments.
        (40, 10) => &[Short, ShortString, ShortString, Octet],
        // exchange.bind / exchange.unbind: reserved, destination, source, routing-key, no-wait.
        (40, 30) | (40, 40) => &[Short, ShortString, ShortString, ShortString, Octet],
        // queue.declare: reserved, queue, bits, arguments.
        (50, 10) => &[Short, ShortString, Octet],
        // queue.bind: reserved, queue, exchange, routing-key, no-wait, arguments.
        (50, 20) => &[Short, ShortString, ShortString, ShortString, Octet],
        // queue.unbind: reserved, queue, exchange, routing-key, arguments (no bits).
        (50, 50) => &[Short, ShortString, ShortString, ShortString],
        // basic.consume: reserved, queue, consumer-tag, bits, arguments.
        (60, 20) => &[Short, ShortString, ShortString, Octet],
        _ => return None,
    })
}

/// Whether a whole frame (7-byte header, payload, frame-end octet) nests its field tables at
/// most [`MAX_DEPTH`] deep. A frame too short or cut to hold what it announces is left to the
/// parser, which refuses it for that.
pub fn frame_nests_within(bytes: &[u8]) -> bool {
    let Some(payload) = bytes.get(7..bytes.len().saturating_sub(1)) else {
        return true;
    };
    match bytes[0] {
        METHOD => {
            let (Some(class), Some(method)) = (be16(payload, 0), be16(payload, 2)) else {
                return true;
            };
            let Some(before) = table_at(class, method) else {
                return true;
            };
            let mut at = 4;
            for f in before {
                at += match f {
                    Field::Octet => 1,
                    Field::Short => 2,
                    Field::ShortString => match payload.get(at) {
                        Some(n) => 1 + usize::from(*n),
                        None => return true,
                    },
                };
            }
            payload
                .get(at..)
                .is_none_or(|rest| walk_table(rest, 1) != Walk::TooDeep)
        }
        // class id, weight, body size, then the properties.
        HEADER => payload.get(12..).is_none_or(properties_nest_within),
        _ => true,
    }
}

/// Whether a content header's properties (flags, then fields) nest their headers table at most
/// [`MAX_DEPTH`] deep. Properties too short for what their flags announce are left to the
/// parser.
pub fn properties_nest_within(props: &[u8]) -> bool {
    const CONTENT_TYPE: u16 = 1 << 15;
    const CONTENT_ENCODING: u16 = 1 << 14;
    const HEADERS: u16 = 1 << 13;
    let Some(flags) = be16(props, 0) else {
        return true;
    };
    if flags & HEADERS == 0 {
        return true;
    }
    let mut at = 2;
    for bit in [CONTENT_TYPE, CONTENT_ENCODING] {
        if flags & bit != 0 {
            match props.get(at) {
                Some(n) => at += 1 + usize::from(*n),
                None => return true,
            }
        }
    }
    props
        .get(at..)
        .is_none_or(|rest| walk_table(rest, 1) != Walk::TooDeep)
}

/// What walking a table or array found.
#[derive(Debug, PartialEq, Eq)]
enum Walk {
    /// Read to its end: the bytes it took, size prefix included.
    Read(usize),
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Cut short or of an unknown type: the parser refuses it on its own.
    Unreadable,
}

/// Walks a field table (size prefix, then key and value pairs) at nesting level `depth`.
fn walk_table(b: &[u8], depth: usize) -> Walk {
    walk_entries(b, depth, true)
}

/// Walks a field table (`keyed`) or a field array: a u32 size, then the entries.
fn walk_entries(b: &[u8], depth: usize, keyed: bool) -> Walk {
    if depth > MAX_DEPTH {
        return Walk::TooDeep;
    }
    let Some(size) = b
        .get(..4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
    else {
        return Walk::Unreadable;
    };
    let Some(entries) = b.get(4..4 + size) else {
        return Walk::Unreadable;
    };
    let mut at = 0;
    while at < entries.len() {
        if keyed {
            match entries.get(at) {
                Some(n) => at += 1 + usize::from(*n),
                None => return Walk::Unreadable,
            }
        }
        let Some(&kind) = entries.get(at) else {
            return Walk::Unreadable;
        };
        let Some(value) = entries.get(at + 1..) else {
            return Walk::Unreadable;
        };
        let len = match kind {
            b'F' => walk_entries(value, depth + 1, true),
            b'A' => walk_entries(value, depth + 1, false),
            other => match value_len(other, value) {
                Some(n) => Walk::Read(n),
                None => Walk::Unreadable,
            },
        };
        match len {
            Walk::Read(n) => at += 1 + n,
            other => return other,
        }
    }
    Walk::Read(4 + size)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame, WriteContext};
    use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
    use amq_protocol::protocol::{basic, connection, exchange, queue, AMQPClass};
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

    /// A table nesting `depth` levels: tables inside tables, with an array every third level
    /// and a scalar beside each.
    fn nested(depth: usize) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("leaf".into(), AMQPValue::LongString("x".into()));
        for level in 1..depth {
            let mut outer = FieldTable::default();
            outer.insert("n".into(), AMQPValue::LongInt(level as i32));
            if level % 3 == 0 {
                let arr =
                    FieldArray::from(vec![AMQPValue::Boolean(true), AMQPValue::FieldTable(t)]);
                // The array is a level of its own: count it, then wrap once more.
                let mut wrap = FieldTable::default();
                wrap.insert("a".into(), AMQPValue::FieldArray(arr));
                outer = wrap;
            } else {
                outer.insert("t".into(), AMQPValue::FieldTable(t));
            }
            t = outer;
        }
        t
    }

    /// How deep `t` nests, counted on the parsed value.
    fn depth_of(v: &AMQPValue) -> usize {
        match v {
            AMQPValue::FieldTable(t) => 1 + t.inner().values().map(depth_of).max().unwrap_or(0),
            AMQPValue::FieldArray(a) => 1 + a.as_slice().iter().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }

    fn encode(f: &AMQPFrame) -> Vec<u8> {
        gen_frame(f)(WriteContext::from(Vec::new()))
            .unwrap()
            .into_inner()
            .0
    }

    fn every_kind_of_frame(table: FieldTable) -> Vec<(&'static str, Vec<u8>)> {
        let m = |c: AMQPClass| encode(&AMQPFrame::Method(1, c));
        vec![
            (
                "connection.start",
                m(AMQPClass::Connection(connection::AMQPMethod::Start(
                    connection::Start {
                        version_major: 0,
                        version_minor: 9,
                        server_properties: table.clone(),
                        mechanisms: "PLAIN".into(),
                        locales: "en_US".into(),
                    },
                ))),
            ),
            (
                "connection.start-ok",
                m(AMQPClass::Connection(connection::AMQPMethod::StartOk(
                    connection::StartOk {
                        client_properties: table.clone(),
                        mechanism: ShortString::from("PLAIN"),
                        response: LongString::from("\0u\0p"),
                        locale: ShortString::from("en_US"),
                    },
                ))),
            ),
            (
                "exchange.declare",
                m(AMQPClass::Exchange(exchange::AMQPMethod::Declare(
                    exchange::Declare {
                        exchange: "ex".into(),
                        kind: "topic".into(),
                        arguments: table.clone(),
                        ..Default::default()
                    },
                ))),
            ),
            (
                "exchange.bind",
                m(AMQPClass::Exchange(exchange::AMQPMethod::Bind(
                    exchange::Bind {
                        destination: "d".into(),
                        source: "s".into(),
                        routing_key: "k".into(),
                        nowait: true,
                        arguments: table.clone(),
                    },
                ))),
            ),
            (
                "exchange.unbind",
                m(AMQPClass::Exchange(exchange::AMQPMethod::Unbind(
                    exchange::Unbind {
                        destination: "d".into(),
                        source: "s".into(),
                        routing_key: "k".into(),
                        nowait: false,
                        arguments: table.clone(),
                    },
                ))),
            ),
            (
                "queue.declare",
                m(AMQPClass::Queue(queue::AMQPMethod::Declare(
                    queue::Declare {
                        queue: "q".into(),
                        durable: true,
                        arguments: table.clone(),
                        ..Default::default()
                    },
                ))),
            ),
            (
                "queue.bind",
                m(AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                    queue: "q".into(),
                    exchange: "e".into(),
                    routing_key: "rk".into(),
                    nowait: false,
                    arguments: table.clone(),
                }))),
            ),
            (
                "queue.unbind",
                m(AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                    queue: "q".into(),
                    exchange: "e".into(),
                    routing_key: "rk".into(),
                    arguments: table.clone(),
                }))),
            ),
            (
                "basic.consume",
                m(AMQPClass::Basic(basic::AMQPMethod::Consume(
                    basic::Consume {
                        queue: "q".into(),
                        consumer_tag: "c".into(),
                        no_ack: true,
                        arguments: table.clone(),
                        ..Default::default()
                    },
                ))),
            ),
            (
                "content header",
                encode(&AMQPFrame::Header(
                    1,
                    AMQPContentHeader {
                        class_id: 60,
                        body_size: 3,
                        properties: AMQPProperties::default()
                            .with_content_type("text/plain".into())
                            .with_content_encoding("gzip".into())
                            .with_headers(table)
                            .with_message_id("m".into()),
                    },
                )),
            ),
        ]
    }

    #[test]
    fn every_frame_with_a_table_is_refused_one_level_past_the_limit_and_read_at_it() {
        for depth in [1, 2, 3, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 200] {
            let table = nested(depth);
            let counted = depth_of(&AMQPValue::FieldTable(table.clone()));
            for (what, frame) in every_kind_of_frame(table) {
                assert_eq!(
                    frame_nests_within(&frame),
                    counted <= MAX_DEPTH,
                    "{what} nesting {counted} deep"
                );
            }
        }
    }

    #[test]
    fn properties_alone_are_checked_like_their_frame() {
        for depth in [1, MAX_DEPTH, MAX_DEPTH + 1] {
            let table = nested(depth);
            let counted = depth_of(&AMQPValue::FieldTable(table.clone()));
            let props = AMQPProperties::default()
                .with_content_type("a".into())
                .with_headers(table);
            let raw = gen_properties(&props)(WriteContext::from(Vec::new()))
                .unwrap()
                .into_inner()
                .0;
            assert_eq!(properties_nest_within(&raw), counted <= MAX_DEPTH);
        }
        // No headers, or nothing at all: nothing to walk.
        assert!(properties_nest_within(&[0, 0]));
        assert!(properties_nest_within(&[]));
    }

    #[test]
    fn frames_without_tables_and_cut_frames_are_left_to_the_parser() {
        let heartbeat = encode(&AMQPFrame::Heartbeat);
        assert!(frame_nests_within(&heartbeat));
        let body = encode(&AMQPFrame::Body(1, vec![b'F'; 64]));
        assert!(frame_nests_within(&body));
        let deep = &every_kind_of_frame(nested(MAX_DEPTH + 5))[1].1;
        // Cut anywhere before the deep part: the parser refuses it as cut.
        for cut in [0, 3, 7, 12, 20] {
            assert!(frame_nests_within(&deep[..cut]), "cut at {cut}");
        }
    }
}
