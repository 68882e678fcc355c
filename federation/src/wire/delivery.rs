//! A message delivered to a wire's consumer, read in place.

use super::error::WireError;
use amq_protocol::types::ShortString;
use bytes::{Bytes, BytesMut};

/// A message delivered to the wire's consumer: what the flow needs of it, its properties and
/// body as read (the flow republishes them without parsing them, see `crate::raw_props`).
///
/// Properties and body are slices of the buffer they were read into, not copies: a delivery
/// holds a reference to that read, and the read's memory goes when its last delivery does
/// (deliveries live until their batch is published). Only a body sent in several frames is
/// gathered into a buffer of its own.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub routing_key: ShortString,
    /// The content header's property flags and fields.
    properties: Bytes,
    body: Bytes,
}

impl Delivery {
    /// The property flags and fields, encoded.
    pub fn raw_properties(&self) -> &[u8] {
        &self.properties
    }

    /// The body, shared with the buffer it was read into (cloning it copies nothing).
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

/// A delivery being read: its content header, then `left` bytes of body.
pub(super) struct Incoming {
    delivery: Delivery,
    header: bool,
    left: u64,
    /// A body that came in several frames, gathered.
    parts: Option<BytesMut>,
}

impl Incoming {
    /// A delivery whose Basic.Deliver `args` were just read; its content follows.
    pub fn begin(args: &[u8]) -> Result<Incoming, WireError> {
        Ok(Incoming {
            delivery: parse_deliver(args)?,
            header: false,
            left: 0,
            parts: None,
        })
    }

    /// The content header's `payload`: its properties are kept as read.
    pub fn header(&mut self, payload: Bytes) -> Result<(), WireError> {
        if self.header || payload.len() < 14 {
            return Err(WireError::Protocol("a content header out of place".into()));
        }
        self.left = u64::from_be_bytes(payload[4..12].try_into().expect("8 bytes"));
        self.header = true;
        self.delivery.properties = payload.slice(12..);
        Ok(())
    }

    /// A content body frame's payload.
    pub fn body(&mut self, part: Bytes) -> Result<(), WireError> {
        if !self.header || part.len() as u64 > self.left {
            return Err(WireError::Protocol("a content body out of place".into()));
        }
        let parts = match &mut self.parts {
            Some(parts) => parts,
            // The whole body in one frame, as a broker sends any body under its frame_max.
            None if part.len() as u64 == self.left => {
                self.left = 0;
                self.delivery.body = part;
                return Ok(());
            }
            // The first of several frames: one allocation for the whole body (bounded: the
            // size is the broker's word).
            None => self
                .parts
                .insert(BytesMut::with_capacity(self.left.min(1 << 27) as usize)),
        };
        parts.extend_from_slice(&part);
        self.left -= part.len() as u64;
        Ok(())
    }

    /// All of the content is read.
    pub fn complete(&self) -> bool {
        self.header && self.left == 0
    }

    pub fn into_delivery(mut self) -> Delivery {
        if let Some(parts) = self.parts {
            self.delivery.body = parts.freeze();
        }
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
        properties: Bytes::new(),
        body: Bytes::new(),
    })
}
