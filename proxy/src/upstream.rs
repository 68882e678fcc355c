//! Connecting a client to a server of a pool: pick, connect under a deadline, TLS and PROXY header
//! if the pool wants them, and (for `set` listeners) the broker's Connection.Start. A failure at
//! any step is retried on the next server, so one dead node never fails a client while a healthy
//! one exists.

use crate::addr::ServerAddr;
use crate::amqp::frame::{self, FrameError, HANDSHAKE_FRAME_MAX, PROTOCOL_HEADER};
use crate::config::ClientTls;
use crate::pool::{PickError, Pool, Slot};
use crate::stream::{connect_tcp, Stream};
use crate::warm::Warm;
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
    /// Broker connections opened ahead of `set` clients (`preopen`), by server.
    pub warm: Warm,
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
}

/// Who the client is, for the PROXY header.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The client's address (from a PROXY header in front, if any).
    pub source: SocketAddr,
    /// The address the client connected to.
    pub destination: SocketAddr,
}

/// Connects to a server of `pool`, trying up to `retries` more servers on failure.
///
/// With `greeting` (a `set` listener's client StartOk), also sends the AMQP protocol header and
/// the greeting, and reads the broker's Connection.Start: a broker that accepts TCP but does not
/// answer (stopped, overloaded) counts as a failed connect and the next server is tried. The
/// StartOk goes out right behind the header instead of after the broker's Start: RabbitMQ reads
/// it from its socket once it has sent Start, and the client saves a round trip to the broker.
/// Better still, a connection the pool pre-opened (`preopen`, [`Warm`]) takes the StartOk alone:
/// the broker's accept and Start are then off the client's path.
pub async fn connect(
    pool: &PoolRuntime,
    client: ClientInfo,
    greeting: Option<&[u8]>,
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
        if let Some(greeting) = greeting {
            // Opened on the main runtime: moved to this connection's own (see `setgate_shards`); one
            // that cannot be moved is dropped and a fresh connection made below.
            if let Some(stream) = pool.warm.take(i).and_then(|s| s.rehome().ok()) {
                // The header went out and the broker's Start was read when it was opened.
                if let Some(stream) = send_greeting(stream, greeting, pool).await {
                    return Ok(Upstream {
                        stream,
                        slot,
                        server: server.cfg.name.clone(),
                    });
                }
            }
        }
        let attempt = tokio::time::timeout(
            pool.pool.cfg.connect_timeout,
            connect_one(pool, &server.addr, client, greeting),
        );
        match attempt.await {
            Ok(Ok(stream)) => {
                return Ok(Upstream {
                    stream,
                    slot,
                    server: server.cfg.name.clone(),
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

/// Sends a client's StartOk on a pre-opened connection; `None` if the broker is gone after all
/// (the caller then connects afresh, to the same server).
async fn send_greeting(mut stream: Stream, greeting: &[u8], pool: &PoolRuntime) -> Option<Stream> {
    let sent = tokio::time::timeout(pool.pool.cfg.connect_timeout, stream.write_all(greeting));
    matches!(sent.await, Ok(Ok(()))).then_some(stream)
}

async fn connect_one(
    pool: &PoolRuntime,
    addr: &ServerAddr,
    client: ClientInfo,
    greeting: Option<&[u8]>,
) -> Result<Stream, FrameError> {
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
    let Some(greeting) = greeting else {
        return Ok(stream);
    };
    // One write, one segment: header and StartOk together.
    stream
        .write_all(&[&PROTOCOL_HEADER[..], greeting].concat())
        .await?;
    read_start(&mut stream).await?;
    Ok(stream)
}

/// Opens a connection to server `i` of `pool` up to the broker's Connection.Start, for
/// [`Warm`]: TCP, TLS if the pool wants it, the protocol header, the broker's Start.
pub(crate) async fn preopen(pool: &PoolRuntime, i: usize) -> Result<Stream, FrameError> {
    let addr = &pool.pool.servers[i].addr;
    let tcp = connect_tcp(addr).await?;
    let mut stream = match &pool.tls {
        Some(tls) => tls.connect(tcp, addr).await?,
        None => Stream::Tcp(tcp),
    };
    stream.write_all(PROTOCOL_HEADER).await?;
    read_start(&mut stream).await?;
    Ok(stream)
}

async fn read_start(stream: &mut Stream) -> Result<(), FrameError> {
    let mut buf = Vec::new();
    let f = frame::read_frame(stream, &mut buf, HANDSHAKE_FRAME_MAX).await?;
    frame::expect_start(&f)?;
    Ok(())
}

/// Shared handle to a pool runtime.
pub type PoolHandle = Arc<PoolRuntime>;
