//! Ordered multi-URI connection, and the broker's `cluster_name`.
//!
//! lapin does not expose the server properties of `Connection.Start`, yet loop prevention needs
//! each side's `cluster_name`. After connecting, a second, short-lived socket to the same URI
//! (same TCP/TLS path as lapin's) reads just the broker's `Connection.Start` and closes.

use crate::error::{describe, LinkError, Side};
use crate::uri::AmqpUri;
use amq_protocol::frame::{parse_frame, AMQPFrame};
use amq_protocol::protocol::{connection, AMQPClass};
use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use lapin::tcp::AMQPUriTcpExt;
use lapin::types::AMQPValue;
use lapin::{Connection, ConnectionProperties};
use std::time::Duration;

/// How long one URI may take to accept, authenticate and open.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An open connection with what the flow needs to know about it.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub conn: Connection,
    pub uri: AmqpUri,
    /// The broker's `cluster_name` (the configured name if the broker would not tell).
    pub cluster_name: String,
}

/// Tries `uris` in order and returns the first that opens; the error lists every URI with why.
pub(crate) async fn connect(
    side: Side,
    cluster: &str,
    uris: &[AmqpUri],
    conn_name: &str,
) -> Result<Endpoint, LinkError> {
    let mut tried = Vec::with_capacity(uris.len());
    for uri in uris {
        let props = ConnectionProperties::default().with_connection_name(conn_name.into());
        match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(uri.expose(), props)).await
        {
            Ok(Ok(conn)) => {
                let cluster_name = match cluster_name(uri).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(%side, cluster, uri = uri.masked(), error = %e,
                            "cannot read the broker's cluster_name; using the configured name for loop prevention");
                        cluster.to_string()
                    }
                };
                return Ok(Endpoint {
                    conn,
                    uri: uri.clone(),
                    cluster_name,
                });
            }
            Ok(Err(e)) => tried.push(format!("{}: {}", uri.masked(), connect_error(&e))),
            Err(_) => tried.push(format!(
                "{}: no answer within {}s",
                uri.masked(),
                CONNECT_TIMEOUT.as_secs()
            )),
        }
        tracing::debug!(%side, cluster, uri = uri.masked(), "URI failed; trying the next");
    }
    Err(LinkError::Connect {
        side,
        cluster: cluster.to_string(),
        tried: tried.join("; "),
    })
}

fn connect_error(e: &lapin::Error) -> String {
    if let lapin::ErrorKind::IOError(io) = e.kind() {
        return io.to_string();
    }
    let text = describe(e);
    if text.contains("ACCESS_REFUSED") {
        format!("{text} (check the user name and password in the URI)")
    } else if text.contains("NOT_ALLOWED") {
        format!("{text} (check the vhost and the user's permissions on it)")
    } else {
        text
    }
}

/// Reads `cluster_name` from the broker's `Connection.Start` on a separate socket.
pub(crate) async fn cluster_name(uri: &AmqpUri) -> Result<String, String> {
    tokio::time::timeout(CONNECT_TIMEOUT, read_cluster_name(uri))
        .await
        .map_err(|_| "no Connection.Start within the connect timeout".to_string())?
}

async fn read_cluster_name(uri: &AmqpUri) -> Result<String, String> {
    let parsed: lapin::uri::AMQPUri = uri.expose().parse()?;
    let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
    let mut stream = parsed
        .connect_async(&runtime)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"AMQP\x00\x00\x09\x01")
        .await
        .map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the broker closed the connection before Connection.Start".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1 << 20 {
            return Err("Connection.Start is larger than 1 MiB".into());
        }
        match parse_frame(buf.as_slice()) {
            Ok((
                _,
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(start))),
            )) => {
                return match start.server_properties.inner().get("cluster_name") {
                    Some(AMQPValue::LongString(s)) => {
                        Ok(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    Some(AMQPValue::ShortString(s)) => Ok(s.as_str().to_string()),
                    _ => Err("the broker's server properties have no cluster_name".into()),
                };
            }
            Ok(_) => return Err("the broker's first frame is not Connection.Start".into()),
            Err(e) if e.is_incomplete() => continue,
            Err(e) => return Err(format!("cannot parse the broker's Connection.Start: {e:?}")),
        }
    }
}
