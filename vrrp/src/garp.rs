//! Gratuitous ARP: tells the hosts and switches of the segment that a virtual IP now lives behind
//! this interface's MAC address, so clients stop sending to the old master at once instead of
//! when their ARP entry ages out.
//!
//! Each announcement is an ARP request for the VIP from the VIP (sender = target = VIP, target
//! MAC broadcast, as `arping -U` sends), in an Ethernet broadcast frame written to an AF_PACKET
//! socket. Like Keepalived (`garp_master_repeat`, `garp_master_refresh`), we send a few, spaced:
//! see [`SCHEDULE`].

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// When, after becoming master, each VIP is announced: at once, twice more shortly after (a
/// switch or host may miss one while the link is busy), and once more after 5 s, as Keepalived's
/// default `garp_master_delay` does for caches that were being refreshed at the moment of takeover.
pub const SCHEDULE: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(5),
];

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const BROADCAST: [u8; 6] = [0xff; 6];

/// The 42-byte Ethernet frame announcing `ip` at `mac`.
pub fn frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&BROADCAST);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An AF_PACKET socket that only sends, on one interface.
#[derive(Debug)]
pub struct GarpSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl GarpSocket {
    /// Opens the socket; needs CAP_NET_RAW.
    pub fn open(ifindex: u32) -> io::Result<GarpSocket> {
        // Protocol 0: the socket receives nothing, so it never queues traffic we would not read.
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(GarpSocket {
            fd,
            ifindex: ifindex as i32,
        })
    }

    /// Sends one announcement. Non-blocking: a full send queue drops it (the schedule repeats).
    pub fn announce(&self, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
        let frame = frame(mac, ip);
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ARP.to_be();
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&BROADCAST);
        // SAFETY: the buffer and the address are valid for the lengths given, for the whole call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_an_arp_announcement() {
        let mac = [0x02, 0, 0, 0, 0, 0x11];
        let f = frame(mac, Ipv4Addr::new(192, 0, 2, 100));
        let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ffffffffffff020000000011080600010800060400010200000000\
             11c0000264ffffffffffffc0000264"
        );
    }

    #[test]
    fn schedule_starts_at_once_and_is_sorted() {
        assert_eq!(SCHEDULE[0], Duration::ZERO);
        assert!(SCHEDULE.windows(2).all(|w| w[0] < w[1]));
    }
}
