//! PROXY protocol: reading v1/v2 headers from a balancer in front (`accept_proxy`) and writing v2
//! headers to brokers (`send_proxy`). Parsing and building are the `ppp` crate's; this module only
//! reads exactly the header's bytes off the socket, so nothing after it is consumed.

use ppp::v2;
use ppp::HeaderResult;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest v1 header the spec allows, CRLF included.
const V1_MAX: usize = 107;
/// Cap on a v2 header's address+TLV part; real balancers send far less.
const V2_MAX_PAYLOAD: usize = 4096;

/// A PROXY header that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The socket failed or closed.
    #[error("reading PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a PROXY header.
    #[error("expected a PROXY protocol v1 or v2 header (accept_proxy is on): {0}")]
    Invalid(String),
}

/// The addresses a PROXY header carried: `None` for `LOCAL` / `UNKNOWN` (health checks of the
/// balancer itself), where the connection's own addresses apply.
pub type Addresses = Option<(SocketAddr, SocketAddr)>;

/// Reads one PROXY v1 or v2 header, and not a byte more.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Addresses, ProxyHeaderError> {
    let mut buf = vec![0u8; 8];
    r.read_exact(&mut buf).await?;
    if buf.as_slice() == &v2::PROTOCOL_PREFIX[..8] {
        buf.resize(16, 0);
        r.read_exact(&mut buf[8..]).await?;
        let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if len > V2_MAX_PAYLOAD {
            return Err(ProxyHeaderError::Invalid(format!(
                "v2 header of {len} bytes is over {V2_MAX_PAYLOAD}"
            )));
        }
        buf.resize(16 + len, 0);
        r.read_exact(&mut buf[16..]).await?;
    } else if buf.starts_with(b"PROXY ") {
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyHeaderError::Invalid(
                    "v1 header has no CRLF within 107 bytes".into(),
                ));
            }
            buf.push(r.read_u8().await?);
        }
    } else {
        return Err(ProxyHeaderError::Invalid(format!(
            "got {:?}",
            String::from_utf8_lossy(&buf)
        )));
    }
    parse(&buf)
}

fn parse(buf: &[u8]) -> Result<Addresses, ProxyHeaderError> {
    match HeaderResult::parse(buf) {
        HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (v2::Command::Local, _) => None,
            (_, v2::Addresses::IPv4(a)) => Some((
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            )),
            (_, v2::Addresses::IPv6(a)) => Some((
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            )),
            _ => None,
        }),
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some((
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            )),
            ppp::v1::Addresses::Tcp6(a) => Some((
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            )),
            ppp::v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Err(e)) => Err(ProxyHeaderError::Invalid(e.to_string())),
        HeaderResult::V1(Err(e)) => Err(ProxyHeaderError::Invalid(e.to_string())),
    }
}

/// A PROXY v2 header that tells the broker who the client really is.
pub fn v2_header(client: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    // Mixed families (an IPv6 client on an IPv4 listener) cannot be expressed; LOCAL says so.
    let (command, addrs) = if client.is_ipv4() == destination.is_ipv4() {
        (
            v2::Command::Proxy,
            v2::Addresses::from((client, destination)),
        )
    } else {
        (v2::Command::Local, v2::Addresses::Unspecified)
    };
    v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, addrs)
        .build()
        .expect("building a PROXY v2 header into a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn v2_round_trip_reads_exactly_the_header() {
        let client: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let dst: SocketAddr = "127.0.0.1:5672".parse().unwrap();
        let mut bytes = v2_header(client, dst);
        bytes.extend_from_slice(b"AMQP");
        let mut r = &bytes[..];
        assert_eq!(read_header(&mut r).await.unwrap(), Some((client, dst)));
        assert_eq!(r, b"AMQP");
    }

    #[tokio::test]
    async fn v1_reads_exactly_the_header() {
        let bytes = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 5672\r\nAMQP";
        let mut r = &bytes[..];
        let (src, dst) = read_header(&mut r).await.unwrap().unwrap();
        assert_eq!(src, "192.0.2.7:40000".parse().unwrap());
        assert_eq!(dst, "127.0.0.1:5672".parse().unwrap());
        assert_eq!(r, b"AMQP");
        let mut unknown = &b"PROXY UNKNOWN\r\n"[..];
        assert_eq!(read_header(&mut unknown).await.unwrap(), None);
    }

    #[tokio::test]
    async fn garbage_is_refused() {
        let mut r = &b"AMQP\x00\x00\x09\x01"[..];
        assert!(matches!(
            read_header(&mut r).await,
            Err(ProxyHeaderError::Invalid(_))
        ));
        let long = [b"PROXY ".as_slice(), &[b'x'; 200]].concat();
        let mut r = &long[..];
        assert!(matches!(
            read_header(&mut r).await,
            Err(ProxyHeaderError::Invalid(_))
        ));
    }
}
