//! A message delivered to a wire's consumer, read in place.

use super::error::WireError;
use amq_protocol::protocol::basic::{parse_properties, AMQPProperties};
use amq_protocol::types::ShortString;

/// A message delivered to the wire's consumer: what the flow needs of it, its properties and
/// body as read (parsed only when asked for: republishing them mostly needs no parsing).
#[derive(Debug)]
pub(crate) struct Delivery {
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub routing_key: ShortString,
    /// The content header's property flags and fields, then the body.
    content: Vec<u8>,
    body_at: usize,
}

impl Delivery {
    /// The property flags and fields, encoded.
    pub fn raw_properties(&self) -> &[u8] {
        &self.content[..self.body_at]
    }

    pub fn body(&self) -> &[u8] {
        &self.content[self.body_at..]
    }

    /// The properties, parsed.
    pub fn properties(&self) -> Result<AMQPProperties, WireError> {
        match parse_properties(self.raw_properties()) {
            Ok(([], p)) => Ok(p),
            _ => Err(WireError::Protocol(
                "a content header whose properties do not parse".into(),
            )),
        }
    }
}

/// A delivery being read: its content header, then `left` bytes of body.
pub(super) struct Incoming {
    delivery: Delivery,
    header: bool,
    left: u64,
}

impl Incoming {
    /// A delivery whose Basic.Deliver `args` were just read; its content follows.
    pub fn begin(args: &[u8]) -> Result<Incoming, WireError> {
        Ok(Incoming {
            delivery: parse_deliver(args)?,
            header: false,
            left: 0,
        })
    }

    /// The content header's `payload`: its properties kept as read, behind them its body.
    pub fn header(&mut self, payload: &[u8]) -> Result<(), WireError> {
        if self.header || payload.len() < 14 {
            return Err(WireError::Protocol("a content header out of place".into()));
        }
        let size = u64::from_be_bytes(payload[4..12].try_into().expect("8 bytes"));
        let props = &payload[12..];
        self.header = true;
        self.left = size;
        let d = &mut self.delivery;
        // One allocation for the whole content (bounded: the size is the broker's word).
        d.content
            .reserve_exact(props.len() + size.min(1 << 27) as usize);
        d.content.extend_from_slice(props);
        d.body_at = props.len();
        Ok(())
    }

    /// A content body frame's payload.
    pub fn body(&mut self, part: &[u8]) -> Result<(), WireError> {
        if !self.header || part.len() as u64 > self.left {
            return Err(WireError::Protocol("a content body out of place".into()));
        }
        self.delivery.content.extend_from_slice(part);
        self.left -= part.len() as u64;
        Ok(())
    }

    /// All of the content is read.
    pub fn complete(&self) -> bool {
        self.header && self.left == 0
    }

    pub fn into_delivery(self) -> Delivery {
        self.delivery
    }
}

/// Basic.Deliver's arguments read in place: consumer tag, delivery tag, redelivered, exchange,
/// routing key. The content follows.
fn parse_deliver(args: &[u8]) -> Result<Delivery, WireError> {
    let bad = || WireError::Protocol("a malformed Basic.Deliver".into());
    let mut at = 1 + usize::from(*args.first().ok_or_else(bad)?);
    let tag = args.get(at..at + 8).ok_or_else(bad)?;
    let delivery_tag = u64::from_be_bytes(tag.try_into().expect("8 bytes"));
    at += 8;
    let redelivered = args.get(at).ok_or_else(bad)? & 1 != 0;
    at += 1;
    at += 1 + usize::from(*args.get(at).ok_or_else(bad)?);
    let len = usize::from(*args.get(at).ok_or_else(bad)?);
    let key = args.get(at + 1..at + 1 + len).ok_or_else(bad)?;
    let routing_key = match std::str::from_utf8(key) {
        Ok(k) => ShortString::from(k),
        Err(_) => ShortString::from(String::from_utf8_lossy(key).into_owned()),
    };
    Ok(Delivery {
        delivery_tag,
        redelivered,
        routing_key,
        content: Vec::new(),
        body_at: 0,
    })
}
