//! The raw IP protocol 112 socket adverts travel on.
//!
//! One socket both ways, bound to the interface (`SO_BINDTODEVICE`) so adverts of the same VRID on
//! other interfaces are never seen. We write the IPv4 header ourselves (`IP_HDRINCL`), as
//! Keepalived does: the TTL must be 255 for unicast and multicast alike, and the checksum's
//! pseudo-header needs the exact source address, which must not be left to the kernel's choice.

use crate::packet::{Advert, GROUP};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Where adverts go: the multicast group, or a list of unicast peers.
#[derive(Debug)]
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
    src: Ipv4Addr,
    dests: Vec<Ipv4Addr>,
}

impl VrrpSocket {
    /// Opens the socket on `ifname`; with no `peers`, joins 224.0.0.18 there.
    ///
    /// Fails with `PermissionDenied` without CAP_NET_RAW.
    pub fn open(
        ifname: &str,
        ifindex: u32,
        src: Ipv4Addr,
        peers: &[Ipv4Addr],
    ) -> io::Result<VrrpSocket> {
        let sock = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(crate::packet::PROTO_VRRP))),
        )?;
        sock.set_header_included_v4(true)?;
        sock.bind_device(Some(ifname.as_bytes()))?;
        let dests = if peers.is_empty() {
            sock.join_multicast_v4_n(&GROUP, &InterfaceIndexOrAddress::Index(ifindex))?;
            // Our own adverts coming back would only be dropped again.
            sock.set_multicast_loop_v4(false)?;
            vec![GROUP]
        } else {
            peers.to_vec()
        };
        sock.set_nonblocking(true)?;
        // SAFETY: `Socket` owns its descriptor, keeps it open until it is dropped together with
        // the AsyncFd, and always returns the same one from as_raw_fd.
        let fd = unsafe { AsyncFd::register(sock) }.map_err(io::Error::from)?;
        Ok(VrrpSocket { fd, src, dests })
    }

    /// Our source address.
    pub fn src(&self) -> Ipv4Addr {
        self.src
    }

    /// Sends `advert` to the group or to every peer. A peer that cannot be reached now is not an
    /// error for the others: the first error is returned after trying all.
    pub async fn send(&self, advert: &Advert) -> io::Result<()> {
        let mut first_err = None;
        for &dst in &self.dests {
            let datagram = advert.encode_ip(self.src, dst);
            let to = SockAddr::from(SocketAddrV4::new(dst, 0));
            let r = self
                .fd
                .async_io(Interest::WRITABLE, |s| s.send_to(&datagram, &to))
                .await;
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Receives one datagram (IPv4 header included) into `buf`.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.fd
            .async_io(Interest::READABLE, |mut s| s.read(buf))
            .await
    }
}
