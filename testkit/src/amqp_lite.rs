//! A lightweight real AMQP 0-9-1 client for storms of thousands of connections: it does the whole
//! connection handshake against a real broker (protocol header, Connection.Start / StartOk with
//! PLAIN, Tune / TuneOk, Open / OpenOk), then holds the connection and reports when it ends.
//!
//! Why not lapin here: every lapin connection runs its own I/O thread, and thousands of them (and
//! thousands more when they all reconnect) cost the test process more CPU than the broker and
//! setgate together on a 2-core machine, so the client, not setgate, would set the pace. This
//! client is one tokio task and one socket per connection. Frames are built and parsed by
//! `amq-protocol` (through `setgate-amqp`); the one exception is
//! `LiteConnection::publish_raw_properties`, which writes a content header by hand to publish
//! properties amq-protocol would refuse to encode, and `LiteConnection::get_raw`, which reads
//! one back without parsing it.

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, channel, confirm, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use anyhow::{bail, Context};
use setgate_amqp::frame::{close_frame, encode, expect_start, read_frame, PROTOCOL_HEADER};
use setgate_amqp::names::method_name;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The one channel this client opens (and closes) for an operation.
const CH: u16 = 1;

fn channel_open() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))
}

fn channel_close() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
        reply_code: 200,
        reply_text: "done".into(),
        class_id: 0,
        method_id: 0,
    }))
}

/// Largest frame this client reads: the handshake's frames and a Connection.Close are small.
const FRAME_MAX: usize = 128 * 1024;

/// A message as [`LiteConnection::get_raw`] takes it.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub routing_key: String,
    /// The content header's property flags and fields, as they came.
    pub properties: Vec<u8>,
    pub body: Vec<u8>,
}

/// An open AMQP connection (after Connection.OpenOk) with no channel.
#[derive(Debug)]
pub struct LiteConnection {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Connects to `addr` as `user` / `pass` on `vhost` and completes the handshake. A Connection.Close
/// instead of the next handshake frame is an error with the peer's reply code and text.
/// No deadline: the caller sets its own (a storm waits in accept queues on purpose).
pub async fn connect(
    addr: SocketAddr,
    user: &str,
    pass: &str,
    vhost: &str,
) -> anyhow::Result<LiteConnection> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    let _ = stream.set_nodelay(true);
    let mut c = LiteConnection {
        stream,
        buf: Vec::with_capacity(512),
    };
    c.stream.write_all(PROTOCOL_HEADER).await?;
    let frame = c.read().await.context("waiting for Connection.Start")?;
    let start = expect_start(&frame)?;
    anyhow::ensure!(
        start
            .mechanisms
            .to_string()
            .split(' ')
            .any(|m| m == "PLAIN"),
        "the server does not offer PLAIN: {}",
        start.mechanisms
    );
    let mut props = FieldTable::default();
    props.insert(
        "product".into(),
        AMQPValue::LongString(LongString::from("setgate-testkit amqp_lite")),
    );
    c.send(connection::AMQPMethod::StartOk(connection::StartOk {
        client_properties: props,
        mechanism: ShortString::from("PLAIN"),
        response: LongString::from(format!("\0{user}\0{pass}")),
        locale: ShortString::from("en_US"),
    }))
    .await?;
    let tune = match c.method().await.context("waiting for Connection.Tune")? {
        connection::AMQPMethod::Tune(t) => t,
        other => bail!("expected Connection.Tune, got {}", describe(other)),
    };
    // Heartbeats off: the connection carries no traffic and must not be closed for it.
    c.send(connection::AMQPMethod::TuneOk(connection::TuneOk {
        channel_max: tune.channel_max,
        frame_max: tune.frame_max,
        heartbeat: 0,
    }))
    .await?;
    c.send(connection::AMQPMethod::Open(connection::Open {
        virtual_host: ShortString::from(vhost),
    }))
    .await?;
    match c.method().await.context("waiting for Connection.OpenOk")? {
        connection::AMQPMethod::OpenOk(_) => Ok(c),
        other => bail!("expected Connection.OpenOk, got {}", describe(other)),
    }
}

impl LiteConnection {
    /// The socket, right after the handshake (nothing of the next frame read yet), for a client
    /// that goes on with channels of its own.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Waits until the connection ends: the peer closes or resets the socket, or sends
    /// Connection.Close (answered with Close-Ok). Returns how it ended.
    pub async fn closed(mut self) -> String {
        loop {
            match self.method().await {
                Ok(connection::AMQPMethod::Close(_)) => {
                    let _ = self
                        .send(connection::AMQPMethod::CloseOk(connection::CloseOk {}))
                        .await;
                    return "Connection.Close".into();
                }
                Ok(_) => continue,
                Err(e) => return format!("{e:#}"),
            }
        }
    }

    /// Closes the connection the way a client should: Connection.Close, then waits for the
    /// peer's Close-Ok (or the end of the socket). No deadline: the caller sets its own.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.stream.write_all(&close_frame(200, "bye")).await?;
        loop {
            match self.method().await {
                Ok(connection::AMQPMethod::CloseOk(_)) => return Ok(()),
                Ok(_) => continue,
                Err(e) => match e.downcast_ref::<setgate_amqp::FrameError>() {
                    Some(setgate_amqp::FrameError::Closed) => return Ok(()),
                    _ => return Err(e.context("waiting for Connection.CloseOk")),
                },
            }
        }
    }

    /// Publishes one message whose properties are given as encoded (property flags, then the
    /// fields), on a channel of its own in confirm mode, and returns once the broker confirms
    /// it. The properties may be bytes amq-protocol would refuse to write (short strings that
    /// are not UTF-8, headers nested thousands deep), as clients in other languages send them;
    /// only the content header frame around them is written here byte by byte for that reason.
    pub async fn publish_raw_properties(
        &mut self,
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
        body: &[u8],
    ) -> anyhow::Result<()> {
        let send = |class: AMQPClass| encode(&AMQPFrame::Method(CH, class));
        self.call(channel_open(), "Channel.OpenOk").await?;
        let select = confirm::AMQPMethod::Select(confirm::Select { nowait: false });
        self.call(AMQPClass::Confirm(select), "Confirm.SelectOk")
            .await?;
        self.stream
            .write_all(&send(AMQPClass::Basic(basic::AMQPMethod::Publish(
                basic::Publish {
                    exchange: exchange.into(),
                    routing_key: routing_key.into(),
                    mandatory: false,
                    immediate: false,
                },
            ))))
            .await?;
        // Content header: type 2, channel, size; class 60, weight 0, body size; properties.
        let mut header = vec![2u8];
        header.extend_from_slice(&CH.to_be_bytes());
        header.extend_from_slice(&(12 + properties.len() as u32).to_be_bytes());
        header.extend_from_slice(&[0, 60, 0, 0]);
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend_from_slice(properties);
        header.push(setgate_amqp::frame::FRAME_END);
        self.stream.write_all(&header).await?;
        self.stream
            .write_all(&encode(&AMQPFrame::Body(CH, body.to_vec())))
            .await?;
        match self.expect_on_channel(CH, "Basic.Ack").await? {
            AMQPClass::Basic(basic::AMQPMethod::Ack(_)) => {}
            other => bail!(
                "the broker did not confirm the publish: {}",
                method_name(&other)
            ),
        }
        self.call(channel_close(), "Channel.CloseOk").await?;
        Ok(())
    }

    /// Takes the next message of `queue` (Basic.Get, acknowledged as it is taken), with its
    /// properties as they came: bytes amq-protocol (and so lapin) may refuse to parse.
    /// `None` when the queue is empty.
    pub async fn get_raw(&mut self, queue: &str) -> anyhow::Result<Option<RawMessage>> {
        self.call(channel_open(), "Channel.OpenOk").await?;
        let get = basic::Get {
            queue: queue.into(),
            no_ack: true,
        };
        self.stream
            .write_all(&encode(&AMQPFrame::Method(
                CH,
                AMQPClass::Basic(basic::AMQPMethod::Get(get)),
            )))
            .await?;
        let got = self.raw_get_answer().await?;
        self.call(channel_close(), "Channel.CloseOk").await?;
        Ok(got)
    }

    /// Basic.GetEmpty, or Basic.GetOk and the message's content frames, kept as bytes.
    async fn raw_get_answer(&mut self) -> anyhow::Result<Option<RawMessage>> {
        let routing_key = match self
            .expect_on_channel(CH, "Basic.GetOk or Basic.GetEmpty")
            .await?
        {
            AMQPClass::Basic(basic::AMQPMethod::GetOk(ok)) => ok.routing_key.to_string(),
            AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_)) => return Ok(None),
            other => bail!("Basic.Get: got {}", method_name(&other)),
        };
        // The content header: class, weight, body size, then the properties.
        let header = self.raw_frame(2).await?;
        anyhow::ensure!(
            header.len() >= 14,
            "content header of {} bytes",
            header.len()
        );
        let size = u64::from_be_bytes(header[4..12].try_into().expect("8 bytes")) as usize;
        let mut message = RawMessage {
            routing_key,
            properties: header[12..].to_vec(),
            body: Vec::with_capacity(size),
        };
        while message.body.len() < size {
            message.body.extend_from_slice(&self.raw_frame(3).await?);
        }
        Ok(Some(message))
    }

    /// The payload of the next frame, which must be of type `kind` (heartbeats skipped), read
    /// without parsing it.
    async fn raw_frame(&mut self, kind: u8) -> anyhow::Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        loop {
            let mut head = [0u8; 7];
            self.stream.read_exact(&mut head).await?;
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            anyhow::ensure!(size <= FRAME_MAX, "a frame of {size} bytes");
            let mut payload = vec![0u8; size + 1];
            self.stream.read_exact(&mut payload).await?;
            anyhow::ensure!(
                payload.pop() == Some(setgate_amqp::frame::FRAME_END),
                "frame end"
            );
            match head[0] {
                8 => continue,
                k if k == kind => return Ok(payload),
                k => bail!("expected a frame of type {kind}, got type {k}"),
            }
        }
    }

    /// Sends `method` on the channel and waits for its answer `what` (see
    /// [`LiteConnection::expect_on_channel`]).
    async fn call(&mut self, method: AMQPClass, what: &str) -> anyhow::Result<AMQPClass> {
        self.stream
            .write_all(&encode(&AMQPFrame::Method(CH, method)))
            .await?;
        self.expect_on_channel(CH, what).await
    }

    /// The next method on channel `ch` (heartbeats skipped): `what` (names joined by " or "),
    /// or a Basic.Nack in its
    /// place; a Close of the channel or the connection is an error with the broker's reply.
    async fn expect_on_channel(&mut self, ch: u16, what: &str) -> anyhow::Result<AMQPClass> {
        loop {
            match self
                .read()
                .await
                .with_context(|| format!("waiting for {what}"))?
            {
                AMQPFrame::Heartbeat | AMQPFrame::InvalidHeartbeat(_) => continue,
                AMQPFrame::Method(0, AMQPClass::Connection(m)) => {
                    bail!("waiting for {what}: {}", describe(m))
                }
                AMQPFrame::Method(c, AMQPClass::Channel(channel::AMQPMethod::Close(close)))
                    if c == ch =>
                {
                    bail!(
                        "waiting for {what}: Channel.Close {} {}",
                        close.reply_code,
                        close.reply_text.as_str()
                    )
                }
                AMQPFrame::Method(c, class) if c == ch => {
                    let name = method_name(&class);
                    if what.split(" or ").any(|w| w == name) || name == "Basic.Nack" {
                        return Ok(class);
                    }
                    bail!("waiting for {what}: got {name}")
                }
                other => bail!(
                    "waiting for {what}: got {}",
                    setgate_amqp::frame::describe(&other)
                ),
            }
        }
    }

    async fn read(&mut self) -> anyhow::Result<AMQPFrame> {
        Ok(read_frame(&mut self.stream, &mut self.buf, FRAME_MAX).await?)
    }

    /// The next Connection method on channel 0 (heartbeats skipped).
    async fn method(&mut self) -> anyhow::Result<connection::AMQPMethod> {
        loop {
            match self.read().await? {
                AMQPFrame::Heartbeat | AMQPFrame::InvalidHeartbeat(_) => continue,
                AMQPFrame::Method(0, AMQPClass::Connection(m)) => return Ok(m),
                AMQPFrame::Method(_, class) => bail!("unexpected method {}", method_name(&class)),
                _ => bail!("unexpected content frame before any channel was opened"),
            }
        }
    }

    async fn send(&mut self, m: connection::AMQPMethod) -> anyhow::Result<()> {
        let bytes = encode(&AMQPFrame::Method(0, AMQPClass::Connection(m)));
        self.stream.write_all(&bytes).await?;
        Ok(())
    }
}

/// A field table's entries (without its size prefix) holding `depth` tables, each inside the
/// last under the key `a`: what a hostile peer sends to overflow a recursive parser. Written
/// byte by byte: amq-protocol's encoder recurses as deep as its parser.
pub fn nested_table_entries(depth: usize) -> Vec<u8> {
    let mut table: Vec<u8> = Vec::new();
    for _ in 0..depth {
        let mut outer = vec![1u8, b'a', b'F'];
        outer.extend_from_slice(&(table.len() as u32).to_be_bytes());
        outer.extend_from_slice(&table);
        table = outer;
    }
    table
}

/// A Connection method for an error: a Close with its reply, anything else by name.
fn describe(m: connection::AMQPMethod) -> String {
    match m {
        connection::AMQPMethod::Close(c) => format!(
            "Connection.Close {} {}",
            c.reply_code,
            c.reply_text.as_str()
        ),
        other => method_name(&AMQPClass::Connection(other)),
    }
}
