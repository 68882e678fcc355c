//! Reading and writing the few AMQP 0-9-1 frames setgate itself handles: the protocol header,
//! Connection.Start / StartOk and Connection.Close. `amq-protocol` parses and builds them; this
//! module only frames the bytes, with a size cap so a hostile peer cannot make us buffer much.
//!
//! The readers take a tokio [`AsyncRead`]; a futures-io stream (lapin's) goes through
//! `tokio_util::compat`.

use crate::names::method_name;
use crate::nesting;
use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::ShortString;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What an AMQP 0-9-1 client sends first, and what RabbitMQ answers to any other protocol header.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Largest frame accepted before the connection is spliced. A StartOk with a generous client
/// properties table is a few KiB; 64 KiB leaves room for unusual clients and caps what a hostile
/// one can make us buffer.
pub const HANDSHAKE_FRAME_MAX: usize = 64 * 1024;

/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The socket failed.
    #[error("{0}")]
    Io(io::Error),
    /// The peer did not open with `AMQP 0 0 9 1`.
    #[error("not AMQP 0-9-1: protocol header {0:?}")]
    BadProtocolHeader(String),
    /// A frame's declared size is over the limit.
    #[error("frame of {size} bytes is over the handshake limit of {max} bytes")]
    TooLarge {
        /// Declared payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The frame did not end with 0xCE.
    #[error("frame does not end with the frame-end octet 0xCE")]
    BadFrameEnd,
    /// amq-protocol could not parse the frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A well-formed frame, but not the one the handshake needs now.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What the handshake expected.
        expected: &'static str,
        /// What came instead.
        got: String,
    },
}

impl FrameError {
    /// A short label for metrics (`cause`).
    pub fn cause(&self) -> &'static str {
        match self {
            FrameError::Closed => "closed",
            FrameError::Io(_) => "io",
            FrameError::BadProtocolHeader(_) => "protocol_header",
            FrameError::TooLarge { .. } => "frame_too_large",
            FrameError::BadFrameEnd | FrameError::Malformed(_) => "malformed_frame",
            FrameError::Unexpected { .. } => "unexpected_frame",
        }
    }

    /// The AMQP reply code that fits when we answer with Connection.Close.
    pub fn reply_code(&self) -> u16 {
        match self {
            FrameError::TooLarge { .. } | FrameError::BadFrameEnd | FrameError::Malformed(_) => 501, // FRAME_ERROR
            FrameError::Unexpected { .. } => 503, // COMMAND_INVALID
            _ => 541,
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Closed
        } else {
            FrameError::Io(e)
        }
    }
}

/// Reads the 8-byte protocol header and checks it is AMQP 0-9-1.
pub async fn read_protocol_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<(), FrameError> {
    let mut header = [0u8; 8];
    r.read_exact(&mut header).await?;
    if &header == PROTOCOL_HEADER {
        Ok(())
    } else {
        Err(FrameError::BadProtocolHeader(
            String::from_utf8_lossy(&header).into_owned(),
        ))
    }
}

/// Reads one whole frame into `buf` (replacing its contents) and parses it. `buf` keeps the raw
/// bytes so a frame can be forwarded exactly as it came.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<AMQPFrame, FrameError> {
    buf.clear();
    buf.resize(7, 0);
    r.read_exact(&mut buf[..7]).await?;
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if size > max {
        return Err(FrameError::TooLarge { size, max });
    }
    buf.resize(7 + size + 1, 0);
    r.read_exact(&mut buf[7..]).await?;
    parse(buf)
}

/// Parses one complete frame.
pub fn parse(bytes: &[u8]) -> Result<AMQPFrame, FrameError> {
    if bytes.last() != Some(&FRAME_END) {
        return Err(FrameError::BadFrameEnd);
    }
    // Before amq-protocol recurses into it: see `nesting`.
    if !nesting::frame_nests_within(bytes) {
        return Err(FrameError::Malformed(format!(
            "field tables nested more than {} levels deep",
            nesting::MAX_DEPTH
        )));
    }
    match parse_frame(bytes) {
        Ok(([], frame)) => Ok(frame),
        Ok((rest, _)) => Err(FrameError::Malformed(format!(
            "{} bytes left over after the frame",
            rest.len()
        ))),
        Err(e) => Err(FrameError::Malformed(
            format!("{e:?}").chars().take(200).collect(),
        )),
    }
}

/// A one-line description of a frame for errors and logs (never its payload: it may hold a
/// password).
pub fn describe(frame: &AMQPFrame) -> String {
    match frame {
        AMQPFrame::Method(ch, class) => format!("method {} on channel {ch}", method_name(class)),
        AMQPFrame::ProtocolHeader(_) => "a protocol header".into(),
        AMQPFrame::Header(ch, _) => format!("a content header on channel {ch}"),
        AMQPFrame::Body(ch, _) => format!("a content body on channel {ch}"),
        AMQPFrame::Heartbeat | AMQPFrame::InvalidHeartbeat(_) => "a heartbeat".into(),
    }
}

/// The Connection.Start a broker sent, or an error naming what came instead.
pub fn expect_start(frame: &AMQPFrame) -> Result<&connection::Start, FrameError> {
    match frame {
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(start))) => {
            Ok(start)
        }
        other => Err(FrameError::Unexpected {
            expected: "Connection.Start",
            got: describe(other),
        }),
    }
}

/// Serialises a frame.
pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
    let ctx = gen_frame(frame)(WriteContext::from(Vec::with_capacity(256)))
        .expect("serialising into a Vec cannot fail");
    ctx.into_inner().0
}

/// A Connection.Close with `code` and a reply text that says why.
pub fn close_frame(code: u16, text: &str) -> Vec<u8> {
    // A short string holds at most 255 bytes; cut on a character boundary.
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    encode(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: code,
            reply_text: ShortString::from(&text[..end]),
            class_id: 0,
            method_id: 0,
        })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{FieldTable, LongString};

    fn start_ok(mechanism: &str, response: &[u8]) -> Vec<u8> {
        encode(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: ShortString::from(mechanism),
                response: LongString::from(response.to_vec()),
                locale: ShortString::from("en_US"),
            })),
        ))
    }

    #[test]
    fn a_start_ok_where_start_was_expected_never_shows_the_sasl_response() {
        for (mechanism, response) in [
            ("PLAIN", &b"\0alice\0s3cret-pw"[..]),
            (
                "AMQPLAIN",
                &b"\x05LOGINS\x00\x00\x00\x05alice\x08PASSWORDS\x00\x00\x00\x09s3cret-pw"[..],
            ),
        ] {
            let frame = parse(&start_ok(mechanism, response)).unwrap();
            let err = expect_start(&frame).unwrap_err();
            for text in [err.to_string(), format!("{err:?}"), describe(&frame)] {
                assert!(!text.contains("s3cret"), "{text}");
                assert!(!text.contains("alice"), "{text}");
            }
            assert_eq!(
                err.to_string(),
                "expected Connection.Start, got method Connection.StartOk on channel 0"
            );
        }
    }

    #[test]
    fn a_broker_start_is_accepted() {
        let bytes = encode(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: FieldTable::default(),
                mechanisms: LongString::from("PLAIN"),
                locales: LongString::from("en_US"),
            })),
        ));
        let frame = parse(&bytes).unwrap();
        assert_eq!(
            expect_start(&frame).unwrap().mechanisms.to_string(),
            "PLAIN"
        );
    }

    #[tokio::test]
    async fn protocol_header_is_checked() {
        read_protocol_header(&mut &PROTOCOL_HEADER[..])
            .await
            .unwrap();
        let err = read_protocol_header(&mut &b"GET / HTTP/1.1"[..])
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::BadProtocolHeader(_)), "{err}");
        let err = read_protocol_header(&mut &b"AMQP"[..]).await.unwrap_err();
        assert!(matches!(err, FrameError::Closed), "{err}");
    }

    #[test]
    fn close_text_is_cut_to_a_short_string() {
        let long = "é".repeat(200);
        let frame = parse(&close_frame(320, &long)).unwrap();
        match frame {
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                assert_eq!(c.reply_code, 320);
                assert!(c.reply_text.as_str().len() <= 255);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn oversized_and_broken_frames_are_errors() {
        let mut buf = Vec::new();
        let huge = [1u8, 0, 0, 0xff, 0xff, 0xff, 0xff];
        let err = read_frame(&mut &huge[..], &mut buf, HANDSHAKE_FRAME_MAX)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
        let truncated = [1u8, 0, 0, 0, 0, 0, 10, 1, 2];
        let err = read_frame(&mut &truncated[..], &mut buf, HANDSHAKE_FRAME_MAX)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Closed), "{err}");
        let no_end = [1u8, 0, 0, 0, 0, 0, 1, 9, 0];
        let err = read_frame(&mut &no_end[..], &mut buf, HANDSHAKE_FRAME_MAX)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::BadFrameEnd), "{err}");
        let garbage = [1u8, 0, 0, 0, 0, 0, 2, 9, 9, 0xCE];
        let err = read_frame(&mut &garbage[..], &mut buf, HANDSHAKE_FRAME_MAX)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }
}
