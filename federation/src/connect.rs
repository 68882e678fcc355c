//! Ordered multi-URI connection, and the broker's `cluster_name`.
//!
//! lapin does not expose the server properties of `Connection.Start`, yet loop prevention needs
//! each side's `cluster_name`. After connecting, a second, short-lived socket to the same URI
//! (same TCP/TLS path as lapin's) reads just the broker's `Connection.Start`, framed by
//! `setgate-amqp` as the proxy frames it, and closes.
//!
//! A peer that vanished from the network (packets dropped, no reset) must be noticed and, once
//! it is back, reconnected quickly, with no setting in the URI:
//! - every link connection negotiates a heartbeat of [`DEFAULT_HEARTBEAT`] unless its URI names
//!   one (`?heartbeat=N` is kept as written, `0` included); lapin closes a connection that read
//!   nothing for two heartbeats, so a silent peer is noticed within about `2.5 * heartbeat`;
//! - the TCP connect *knocks*: a fresh SYN every [`KNOCK`] for up to [`CONNECT_TIMEOUT`], instead
//!   of one socket whose SYN retransmissions back off (1 s, 3 s, 7 s, ...): when the path comes
//!   back, the next knock gets through within a second. The knocking is bounded inside lapin's
//!   connect, so an attempt given up never leaves lapin's I/O thread connecting in the background.

use crate::error::{describe, LinkError, Side};
use crate::tls::{client_config, server_name};
use crate::uri::AmqpUri;
use amq_protocol::protocol::connection;
use lapin::tcp::{AMQPUriTcpExt, RustlsConnector};
use lapin::types::AMQPValue;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};
use rustls::pki_types::ServerName;
use setgate_amqp::frame::{self, FrameError, HANDSHAKE_FRAME_MAX, PROTOCOL_HEADER};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// How long one URI may take to answer TCP (knocking every [`KNOCK`]), and again to
/// authenticate and open.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The heartbeat (seconds) a link connection asks for when its URI does not say.
pub(crate) const DEFAULT_HEARTBEAT: u16 = 5;

/// How long closing a connection may take (a stopped broker never answers).
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// One TCP connect try of the knocking connect (TLS handshake included for `amqps`, which
/// gets more: two more round trips over a long link).
const KNOCK: Duration = Duration::from_secs(1);
const KNOCK_TLS: Duration = Duration::from_secs(3);

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
    let mut silent = 0;
    for uri in uris {
        let props = ConnectionProperties::default().with_connection_name(conn_name.into());
        // The knocking gives up after CONNECT_TIMEOUT on its own; the rest is the handshake's.
        match tokio::time::timeout(2 * CONNECT_TIMEOUT, open(uri, props)).await {
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
            Ok(Err(e)) => {
                if is_no_answer(&e) {
                    silent += 1;
                }
                tried.push(format!("{}: {}", uri.masked(), connect_error(&e)))
            }
            Err(_) => {
                silent += 1;
                tried.push(format!(
                    "{}: no answer within {}s",
                    uri.masked(),
                    (2 * CONNECT_TIMEOUT).as_secs()
                ))
            }
        }
        tracing::debug!(%side, cluster, uri = uri.masked(), "URI failed; trying the next");
    }
    Err(LinkError::Connect {
        side,
        cluster: cluster.to_string(),
        tried: tried.join("; "),
        no_answer: silent == uris.len(),
    })
}

/// Opens a lapin connection to `uri` with the link defaults (heartbeat) and a knocking connect.
/// Its TLS is setgate's ([`client_config`], the wire's too) rather than lapin's own, which
/// would send and verify the URI's host whatever `server_name_indication` says.
async fn open(uri: &AmqpUri, props: ConnectionProperties) -> lapin::Result<Connection> {
    let mut parsed: AMQPUri = uri.expose().parse().map_err(|e: String| invalid(e))?;
    with_default_heartbeat(&mut parsed);
    let tls = match parsed.scheme {
        AMQPScheme::AMQPS => {
            let config = client_config(uri).map_err(|e| invalid(e.to_string()))?;
            let name = server_name(uri, &parsed.authority.host).to_string();
            Some((RustlsConnector::from(config), name))
        }
        AMQPScheme::AMQP => None,
    };
    let per_try = if tls.is_some() { KNOCK_TLS } else { KNOCK };
    let runtime = lapin::runtime::default_runtime()?;
    let transport = async move |mut uri: AMQPUri, runtime| {
        // TCP from lapin's runtime, the TLS handshake over it here.
        uri.scheme = AMQPScheme::AMQP;
        knock(per_try, || async {
            let tcp = uri.connect_async(&runtime).await?;
            match &tls {
                Some((connector, name)) => tcp.into_rustls(connector, name).await,
                None => Ok(tcp),
            }
        })
        .await
    };
    Connection::connector(parsed, runtime, transport, props).await
}

fn invalid(text: String) -> lapin::Error {
    io::Error::new(io::ErrorKind::InvalidInput, text).into()
}

/// A byte stream to a broker: TCP, or TLS over it.
pub(crate) trait Io:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin> Io for T {}

/// A connected stream to a broker and, when it is plain TCP, its socket (for socket options
/// set while it runs).
pub(crate) struct Transport {
    pub io: Box<dyn Io>,
    pub tcp_fd: Option<RawFd>,
}

/// The TCP (and, for `amqps`, TLS over it) stream to `uri` (`parsed`), with the knocking
/// connect lapin's connections get; for setgate's own connections (`wire`, and the
/// `cluster_name` probe). TLS is tokio-rustls over a socket setgate owns, so a wire sets its
/// socket's options (`wire::lazy`) over TLS too and reads straight into its buffer.
pub(crate) async fn transport(uri: &AmqpUri, parsed: &AMQPUri) -> lapin::Result<Transport> {
    let addr = (parsed.authority.host.as_str(), parsed.authority.port);
    let tcp = || async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        // Publishes are written in batches already; a confirm or heartbeat must not wait.
        stream.set_nodelay(true)?;
        Ok::<_, io::Error>(stream)
    };
    match parsed.scheme {
        AMQPScheme::AMQP => {
            let stream = knock(KNOCK, tcp).await?;
            Ok(Transport {
                tcp_fd: Some(stream.as_raw_fd()),
                io: Box::new(stream),
            })
        }
        AMQPScheme::AMQPS => {
            let config = client_config(uri).map_err(|e| invalid(e.to_string()))?;
            let name = server_name(uri, &parsed.authority.host);
            let name = ServerName::try_from(name.to_string())
                .map_err(|e| invalid(format!("TLS server name {name:?}: {e}")))?;
            let connector = TlsConnector::from(config);
            let stream = knock(KNOCK_TLS, || async {
                connector.connect(name.clone(), tcp().await?).await
            })
            .await?;
            Ok(Transport {
                tcp_fd: Some(stream.get_ref().0.as_raw_fd()),
                io: Box::new(stream),
            })
        }
    }
}

/// Gives `uri` the default heartbeat unless it names one.
pub(crate) fn with_default_heartbeat(uri: &mut AMQPUri) {
    uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT);
}

/// lapin's transport: TCP (and TLS) connect, a fresh try every [`KNOCK`] while the peer does
/// not answer at all, for at most [`CONNECT_TIMEOUT`]. A refusal (RST) is an answer and ends
/// it at once, so the next URI is tried without waiting; so is a TLS handshake that failed (a
/// certificate the CA does not vouch for will not be vouched for a second later).
async fn knock<S, F, Fut>(per_try: Duration, mut connect: F) -> lapin::Result<S>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<S>>,
{
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let started = Instant::now();
        let err = match tokio::time::timeout(per_try, connect()).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) if is_answer(&e) => return Err(e.into()),
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, NO_ANSWER),
        };
        let next = started + per_try;
        if next >= deadline {
            return Err(match err.kind() {
                io::ErrorKind::TimedOut => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{NO_ANSWER} for {}s", CONNECT_TIMEOUT.as_secs()),
                ),
                _ => err,
            }
            .into());
        }
        tokio::time::sleep_until(next).await;
    }
}

/// Whether a failed try is the peer's answer (rustls reports a failed handshake as
/// `InvalidData`, through lapin and tokio-rustls alike).
fn is_answer(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::InvalidData
    )
}

const NO_ANSWER: &str = "no answer (packets dropped?)";

/// The connect failed without any answer from the peer (as opposed to a refusal or an error).
fn is_no_answer(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::IOError(io) if io.kind() == io::ErrorKind::TimedOut)
}

fn connect_error(e: &lapin::Error) -> String {
    if let lapin::ErrorKind::IOError(io) = e.kind() {
        return tls_advice(io.to_string());
    }
    with_advice(describe(e))
}

/// A failed TLS handshake, with what to check.
fn tls_advice(text: String) -> String {
    if text.contains("not valid for name") {
        format!(
            "{text} (the broker's certificate does not name the host the URI connects to: name \
             one of its names with server_name_indication=<name>, or skip the name check with \
             server_name_indication=disable; the chain to cacertfile is verified either way)"
        )
    } else if text.contains("invalid peer certificate") {
        format!(
            "{text} (the broker's certificate must chain to the URI's cacertfile, or to the \
             system trust store without one, and name the URI's host)"
        )
    } else if text.contains("received fatal alert") {
        format!("{text} (the broker refused the handshake: check certfile and keyfile if it requires a client certificate)")
    } else {
        text
    }
}

/// A broker's refusal of a connection, with what to check when it says.
pub(crate) fn with_advice(text: String) -> String {
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
    let mut stream = transport(uri, &parsed).await.map_err(|e| e.to_string())?.io;
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
    fn a_uri_without_heartbeat_gets_the_default_and_an_explicit_one_is_kept() {
        let mut uri: AMQPUri = "amqp://u:p@h:5672/%2f".parse().unwrap();
        with_default_heartbeat(&mut uri);
        assert_eq!(uri.query.heartbeat, Some(DEFAULT_HEARTBEAT));
        for (raw, want) in [("?heartbeat=60", 60), ("?heartbeat=0", 0)] {
            let mut uri: AMQPUri = format!("amqp://u:p@h:5672/%2f{raw}").parse().unwrap();
            with_default_heartbeat(&mut uri);
            assert_eq!(uri.query.heartbeat, Some(want), "{raw}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_knocked_on_every_second_until_the_connect_timeout() {
        let start = Instant::now();
        let mut tries = Vec::new();
        let r: lapin::Result<()> = knock(KNOCK, || {
            tries.push(start.elapsed());
            std::future::pending()
        })
        .await;
        let e = r.expect_err("nothing answered");
        assert!(is_no_answer(&e), "{e}");
        assert!(e.to_string().contains("no answer"), "{e}");
        assert_eq!(start.elapsed(), CONNECT_TIMEOUT);
        let want: Vec<Duration> = (0..10).map(Duration::from_secs).collect();
        assert_eq!(tries, want, "one fresh try a second");
    }

    #[test]
    fn a_failed_tls_handshake_says_what_to_check() {
        let e = tls_advice("invalid peer certificate: UnknownIssuer".into());
        assert!(e.contains("must chain to the URI's cacertfile"), "{e}");
        let e = tls_advice(
            "invalid peer certificate: certificate not valid for name \"10.0.0.5\"".into(),
        );
        assert!(e.contains("server_name_indication=disable"), "{e}");
        let e = tls_advice("received fatal alert: CertificateRequired".into());
        assert!(e.contains("check certfile and keyfile"), "{e}");
        assert_eq!(
            tls_advice("Connection refused".into()),
            "Connection refused"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_or_a_failed_tls_handshake_is_an_answer_and_ends_the_knocking_at_once() {
        for kind in [io::ErrorKind::ConnectionRefused, io::ErrorKind::InvalidData] {
            let start = Instant::now();
            let r: lapin::Result<()> = knock(KNOCK, || async { Err(io::Error::from(kind)) }).await;
            assert!(!is_no_answer(&r.expect_err("refused")), "{kind:?}");
            assert_eq!(start.elapsed(), Duration::ZERO, "{kind:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_knock_that_gets_an_answer_connects() {
        let mut n = 0;
        let r = knock(KNOCK, || {
            n += 1;
            let answer = n == 4;
            async move {
                if answer {
                    Ok(n)
                } else {
                    std::future::pending().await
                }
            }
        })
        .await;
        assert_eq!(r.ok(), Some(4));
    }

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
