//! One type for every byte stream the proxy handles: plain TCP, or TLS on either side.

use crate::addr::ServerAddr;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client or server connection. TLS variants are boxed: a rustls session is large and most
/// connections are plain TCP.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS terminated here (a client of a TLS listener).
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS originated here (to a broker of a TLS pool).
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::TlsServer(s) => s.get_ref().0,
            Stream::TlsClient(s) => s.get_ref().0,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $e,
            Stream::TlsServer($s) => $e,
            Stream::TlsClient($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Moves a socket registered with another runtime's epoll (the main runtime, where connections
/// are accepted and pre-opened) onto the current one, so that its events wake the task reading it
/// directly. Run inside the runtime it moves to; see [`setgate_shards`].
pub fn rehome(s: TcpStream) -> io::Result<TcpStream> {
    TcpStream::from_std(s.into_std()?)
}

impl Stream {
    /// [`rehome`] for a plain TCP stream. A TLS stream stays where it is (tokio-rustls cannot be
    /// taken apart and put back together); it works from any runtime, at the cost of a
    /// cross-thread wake-up per event.
    pub fn rehome(self) -> io::Result<Stream> {
        match self {
            Stream::Tcp(s) => rehome(s).map(Stream::Tcp),
            other => Ok(other),
        }
    }
}

/// TCP options every proxied socket gets: no Nagle delay (AMQP is many small frames and latency
/// matters) and keepalive (so a peer that vanished without a FIN is noticed).
pub fn tune_socket(s: &TcpStream) {
    let _ = s.set_nodelay(true);
    let sock = socket2::SockRef::from(s);
    let ka = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(60))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(6);
    let _ = sock.set_tcp_keepalive(&ka);
}

/// Connects to the first address of `addr` that answers.
pub async fn connect_tcp(addr: &ServerAddr) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address"));
    for a in addr.resolve().await? {
        match TcpStream::connect(a).await {
            Ok(s) => {
                tune_socket(&s);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}
