//! Connecting a client to a server of a pool: pick, connect under a deadline, TLS and PROXY header
//! if the pool wants them, and (for `set` listeners) the broker's Connection.Start. A failure at
//! any step is retried on the next server, so one dead node never fails a client while a healthy
//! one exists.

use crate::addr::ServerAddr;
use crate::amqp::frame::{self, FrameError, HANDSHAKE_FRAME_MAX, PROTOCOL_HEADER};
use crate::config::ClientTls;
use crate::pool::{PickError, Pool, Slot};
use crate::stream::{connect_tcp, Stream};
use amq_protocol::protocol::connection;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::warn;

/// A pool's TLS client settings, loaded once per config.
#[derive(Clone)]
pub struct PoolTls {
    connector: TlsConnector,
    cfg: ClientTls,
}

impl std::fmt::Debug for PoolTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolTls").field("cfg", &self.cfg).finish()
    }
}

impl PoolTls {
    /// Loads the CA (and client certificate) files.
    pub fn new(cfg: &ClientTls, field: &str) -> Result<Self, crate::tls::TlsError> {
        Ok(PoolTls {
            connector: TlsConnector::from(crate::tls::client_config(cfg, field)?),
            cfg: cfg.clone(),
        })
    }

    /// Runs the TLS handshake over `tcp` to the server at `addr`.
    pub async fn connect(&self, tcp: TcpStream, addr: &ServerAddr) -> io::Result<Stream> {
        let name = crate::tls::server_name(&self.cfg, &addr.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Stream::TlsClient(Box::new(
            self.connector.connect(name, tcp).await?,
        )))
    }
}

/// A pool of the current config with what it needs at connect time.
#[derive(Debug)]
pub struct PoolRuntime {
    /// Servers and their state.
    pub pool: Pool,
    /// TLS to the servers, when configured.
    pub tls: Option<PoolTls>,
}

/// A connection to a server, ready to splice.
#[derive(Debug)]
pub struct Upstream {
    /// The stream.
    pub stream: Stream,
    /// The slot held on the server while the connection lives.
    pub slot: Slot,
    /// The server's name.
    pub server: String,
    /// The broker's Connection.Start, when asked for.
    pub broker_start: Option<connection::Start>,
}

/// Who the client is, for the PROXY header.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The client's address (from a PROXY header in front, if any).
    pub source: SocketAddr,
    /// The address the client connected to.
    pub destination: SocketAddr,
}

/// Connects to a server of `pool`, trying up to `retries` more servers on failure. With `greet`,
/// also sends the AMQP protocol header and waits for the broker's Connection.Start, so a broker
/// that accepts TCP but does not answer (stopped, overloaded) counts as a failed connect.
pub async fn connect(
    pool: &PoolRuntime,
    client: ClientInfo,
    greet: bool,
) -> Result<Upstream, PickError> {
    let mut tried = Vec::new();
    let attempts = pool.pool.cfg.retries as usize + 1;
    for _ in 0..attempts {
        let (i, slot) = match pool.pool.pick(&tried) {
            Ok(picked) => picked,
            // After a failed connect, "nothing left to try" is the real story.
            Err(e) => {
                return Err(if tried.is_empty() {
                    e
                } else {
                    PickError::Exhausted
                })
            }
        };
        tried.push(i);
        let server = &pool.pool.servers[i];
        let attempt = tokio::time::timeout(
            pool.pool.cfg.connect_timeout,
            connect_one(pool, &server.addr, client, greet),
        );
        match attempt.await {
            Ok(Ok((stream, broker_start))) => {
                return Ok(Upstream {
                    stream,
                    slot,
                    server: server.cfg.name.clone(),
                    broker_start,
                })
            }
            Ok(Err(e)) => {
                warn!(pool = %pool.pool.cfg.name, server = %server.cfg.name, addr = %server.addr, error = %e, "connect failed; trying the next server");
                server.state.metrics().connect_errors.increment(1);
            }
            Err(_) => {
                warn!(pool = %pool.pool.cfg.name, server = %server.cfg.name, addr = %server.addr,
                      timeout = ?pool.pool.cfg.connect_timeout, "connect timed out; trying the next server");
                server.state.metrics().connect_errors.increment(1);
            }
        }
    }
    Err(PickError::Exhausted)
}

async fn connect_one(
    pool: &PoolRuntime,
    addr: &ServerAddr,
    client: ClientInfo,
    greet: bool,
) -> Result<(Stream, Option<connection::Start>), FrameError> {
    let mut tcp = connect_tcp(addr).await?;
    if pool.pool.cfg.send_proxy {
        // The PROXY header goes first on the wire, before any TLS.
        tcp.write_all(&crate::proxy_proto::v2_header(
            client.source,
            client.destination,
        ))
        .await?;
    }
    let mut stream = match &pool.tls {
        Some(tls) => tls.connect(tcp, addr).await?,
        None => Stream::Tcp(tcp),
    };
    if !greet {
        return Ok((stream, None));
    }
    stream.write_all(PROTOCOL_HEADER).await?;
    let mut buf = Vec::new();
    let f = frame::read_frame(&mut stream, &mut buf, HANDSHAKE_FRAME_MAX).await?;
    let start = frame::expect_start(&f)?.clone();
    Ok((stream, Some(start)))
}

/// Shared handle to a pool runtime.
pub type PoolHandle = Arc<PoolRuntime>;
