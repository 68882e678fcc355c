//! Ordered multi-URI connection, and the broker's `cluster_name`.
//!
//! lapin does not expose the server properties of `Connection.Start`, yet loop prevention needs
//! each side's `cluster_name`. After connecting, a second, short-lived socket to the same URI
//! (same TCP/TLS path as lapin's) reads just the broker's `Connection.Start`, framed by
//! `setgate-amqp` as the proxy frames it, and closes.

use crate::error::{describe, LinkError, Side};
use crate::uri::AmqpUri;
use amq_protocol::protocol::connection;
use lapin::tcp::AMQPUriTcpExt;
use lapin::types::AMQPValue;
use lapin::{Connection, ConnectionProperties};
use setgate_amqp::frame::{self, FrameError, HANDSHAKE_FRAME_MAX, PROTOCOL_HEADER};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_util::compat::FuturesAsyncReadCompatExt;

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
    // lapin's stream is futures-io; setgate-amqp reads tokio's.
    let mut stream = parsed
        .connect_async(&runtime)
        .await
        .map_err(|e| e.to_string())?
        .compat();
    stream
        .write_all(PROTOCOL_HEADER)
        .await
        .map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let start = frame::read_frame(&mut stream, &mut buf, HANDSHAKE_FRAME_MAX)
        .await
        .map_err(|e| match e {
            FrameError::Closed => {
                "the broker closed the connection before Connection.Start".to_string()
            }
            e => format!("reading the broker's Connection.Start: {e}"),
        })?;
    let start =
        frame::expect_start(&start).map_err(|e| format!("the broker's first frame: {e}"))?;
    cluster_name_of(start)
}

/// The `cluster_name` server property of a broker's Connection.Start.
fn cluster_name_of(start: &connection::Start) -> Result<String, String> {
    match start.server_properties.inner().get("cluster_name") {
        Some(AMQPValue::LongString(s)) => Ok(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Ok(s.as_str().to_string()),
        _ => Err("the broker's server properties have no cluster_name".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

    #[test]
    fn cluster_name_is_read_from_the_server_properties() {
        let mut props = FieldTable::default();
        props.insert(
            "cluster_name".into(),
            AMQPValue::LongString("rabbit@dc1".into()),
        );
        let start = connection::Start {
            server_properties: props,
            ..Default::default()
        };
        assert_eq!(cluster_name_of(&start).unwrap(), "rabbit@dc1");
        assert!(cluster_name_of(&connection::Start::default())
            .unwrap_err()
            .contains("no cluster_name"));
    }
}
