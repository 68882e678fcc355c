//! Opening a wire: the connection handshake, the channel, confirm mode.

use super::encode::{frame_len, CHANNEL, FRAME_OVERHEAD};
use super::error::WireError;
use super::{lazy, LazyReads, Wire, FRAME_MAX};
use crate::connect::{
    transport, with_advice, with_default_heartbeat, CONNECT_TIMEOUT, DEFAULT_HEARTBEAT,
};
use crate::uri::AmqpUri;
use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{channel, confirm, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::Buf;
use lapin::uri::{AMQPUri, SASLMechanism};
use setgate_amqp::frame::parse;
use setgate_amqp::names::method_name;
use std::time::Duration;

impl Wire {
    /// Connects to `uri` (TCP or TLS as it says), authenticates, opens the vhost and one channel,
    /// in confirm mode if `confirm`. Bounded by twice the connect timeout.
    pub async fn open(uri: &AmqpUri, conn_name: &str, confirm: bool) -> Result<Wire, String> {
        let mut parsed: AMQPUri = uri.expose().parse()?;
        with_default_heartbeat(&mut parsed);
        match tokio::time::timeout(
            2 * CONNECT_TIMEOUT,
            Wire::handshake(uri, &parsed, conn_name, confirm),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer within {}s",
                (2 * CONNECT_TIMEOUT).as_secs()
            )),
        }
    }

    async fn handshake(
        uri: &AmqpUri,
        parsed: &AMQPUri,
        conn_name: &str,
        confirm: bool,
    ) -> Result<Wire, String> {
        let t = transport(uri, parsed).await.map_err(|e| e.to_string())?;
        let mut w = Wire::new(t.io, confirm);
        let mark = if confirm {
            lazy::CONFIRM_MARK
        } else {
            lazy::DELIVERY_MARK
        };
        w.lazy = t.tcp_fd.map(|fd| LazyReads::new(fd, mark));
        w.wr.buf
            .extend_from_slice(setgate_amqp::frame::PROTOCOL_HEADER);
        w.flush().await.map_err(|e| e.to_string())?;
        let start = match w.next_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(s)) => s,
            other => {
                return Err(format!(
                    "expected Connection.Start, got {}",
                    method_name(&other)
                ))
            }
        };
        let mechanism = match parsed.query.auth_mechanism {
            Some(SASLMechanism::External) => "EXTERNAL",
            _ => "PLAIN",
        };
        let offered = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
        if !offered.split_whitespace().any(|m| m == mechanism) {
            return Err(format!(
                "the broker does not offer {mechanism} authentication (it offers {offered})"
            ));
        }
        let response = match mechanism {
            "PLAIN" => format!(
                "\0{}\0{}",
                parsed.authority.userinfo.username, parsed.authority.userinfo.password
            ),
            _ => String::new(),
        };
        w.send(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: client_properties(conn_name),
            mechanism: mechanism.into(),
            response: response.into(),
            locale: "en_US".into(),
        }))
        .await?;
        let tune = match w.next_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => return Err(refusal(&other, "Connection.Tune")),
        };
        // The broker's frame_max unless the URI asks for less, as lapin's connections have it: a
        // forwarded message's headers travel in one frame, so this is the largest they can be.
        let frame_max = match negotiate(parsed.query.frame_max.unwrap_or(0), tune.frame_max) {
            0 => FRAME_MAX,
            n => n.max(4096),
        };
        let heartbeat = negotiate(
            u32::from(parsed.query.heartbeat.unwrap_or(DEFAULT_HEARTBEAT)),
            u32::from(tune.heartbeat),
        ) as u16;
        w.frame_max = frame_max as usize;
        w.chunk = frame_max as usize - FRAME_OVERHEAD;
        w.send(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 1,
            frame_max,
            heartbeat,
        }))
        .await?;
        w.send(connection::AMQPMethod::Open(connection::Open {
            virtual_host: parsed.vhost.as_str().into(),
        }))
        .await?;
        match w.next_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
            other => return Err(refusal(&other, "Connection.OpenOk")),
        }
        w.call(
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            |m| matches!(m, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))),
        )
        .await?;
        if confirm {
            w.call(
                AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                    nowait: false,
                })),
                |m| matches!(m, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))),
            )
            .await?;
        }
        if heartbeat > 0 {
            let every = Duration::from_secs(u64::from(heartbeat));
            w.heartbeat = Some(every);
            w.tick = Some(Box::pin(tokio::time::sleep(every / 2)));
        }
        Ok(w)
    }

    async fn send(&mut self, method: connection::AMQPMethod) -> Result<(), String> {
        self.push(&AMQPFrame::Method(0, AMQPClass::Connection(method)));
        self.flush().await.map_err(|e| e.to_string())
    }

    /// Sends a method on the channel and waits for its answer, the next method, which
    /// `is_answer` knows (a refusal is the broker's Close).
    pub(super) async fn call(
        &mut self,
        method: AMQPClass,
        is_answer: fn(&AMQPClass) -> bool,
    ) -> Result<(), String> {
        let name = method_name(&method);
        self.push(&AMQPFrame::Method(CHANNEL, method));
        self.flush().await.map_err(|e| e.to_string())?;
        match self.next_method().await? {
            answer if is_answer(&answer) => Ok(()),
            other => Err(refusal(&other, &format!("the answer to {name}"))),
        }
    }

    /// The next method frame (heartbeats skipped), during the handshake.
    async fn next_method(&mut self) -> Result<AMQPClass, String> {
        loop {
            if let Some(len) = frame_len(&self.rd.buf) {
                if len > self.frame_max + FRAME_OVERHEAD {
                    return Err(format!("the broker sent a frame of {len} bytes"));
                }
                if self.rd.buf.len() >= len {
                    let frame = parse(&self.rd.buf[..len]).map_err(|e| e.to_string())?;
                    self.rd.buf.advance(len);
                    match frame {
                        AMQPFrame::Method(_, m) => return Ok(m),
                        AMQPFrame::Heartbeat => continue,
                        other => {
                            return Err(format!(
                                "unexpected {}",
                                setgate_amqp::frame::describe(&other)
                            ))
                        }
                    }
                }
            }
            std::future::poll_fn(|cx| self.poll_read(cx))
                .await
                .map_err(|e| match e {
                    WireError::Lost(_) if self.tick.is_none() => {
                        "the broker closed the connection during the handshake".to_string()
                    }
                    e => e.to_string(),
                })?;
        }
    }
}

/// The lower of two limits where 0 means none.
fn negotiate(ours: u32, theirs: u32) -> u32 {
    match (ours, theirs) {
        (0, t) => t,
        (o, 0) => o,
        (o, t) => o.min(t),
    }
}

/// What the broker sent instead of `expected`: its Close reply text if it closed.
fn refusal(got: &AMQPClass, expected: &str) -> String {
    match got {
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
            with_advice(c.reply_text.to_string())
        }
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => c.reply_text.to_string(),
        other => format!("expected {expected}, got {}", method_name(other)),
    }
}

fn client_properties(conn_name: &str) -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "connection.blocked",
        "authentication_failure_close",
        "basic.nack",
        "consumer_cancel_notify",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert("product".into(), AMQPValue::LongString("setgate".into()));
    props.insert(
        "version".into(),
        AMQPValue::LongString(env!("CARGO_PKG_VERSION").into()),
    );
    props.insert(
        "connection_name".into(),
        AMQPValue::LongString(LongString::from(conn_name)),
    );
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_negotiated_with_zero_as_none() {
        assert_eq!(negotiate(0, 5), 5);
        assert_eq!(negotiate(5, 0), 5);
        assert_eq!(negotiate(60, 5), 5);
        assert_eq!(negotiate(0, 0), 0);
    }

    #[test]
    fn a_refused_login_says_what_to_check() {
        let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 403,
            reply_text: "ACCESS_REFUSED - Login was refused".into(),
            class_id: 0,
            method_id: 0,
        }));
        assert!(refusal(&close, "Connection.Tune").contains("check the user name"));
        let other = AMQPClass::Connection(connection::AMQPMethod::Secure(Default::default()));
        assert!(refusal(&other, "Connection.Tune").contains("expected Connection.Tune"));
    }
}
