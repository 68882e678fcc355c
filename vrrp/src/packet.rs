//! VRRPv3 advertisements for IPv4 (RFC 5798 §5, as updated by RFC 9568): encode and decode, pure.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                      IPv4 Address(es) ...                     |
//! ```
//!
//! The checksum covers the IPv4 pseudo-header (source, destination, zero, protocol 112, VRRP
//! length) followed by the VRRP message, as RFC 5798 §5.2.8 says and as Keepalived computes it by
//! default — for unicast adverts too, with the peer's address as destination (Keepalived's
//! `old_unicast_checksum` option, which used 224.0.0.18 there, is not supported).
//!
//! [`decode`] takes the whole IPv4 datagram as a raw socket returns it, because the TTL in the IP
//! header is part of what must be checked (RFC 5798 §7.1: a router forwarded anything with TTL <
//! 255).

use std::net::Ipv4Addr;

/// IP protocol number of VRRP.
pub const PROTO_VRRP: u8 = 112;
/// The VRRP multicast group for IPv4.
pub const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// TTL every advert is sent with and must arrive with.
pub const TTL: u8 = 255;
/// Length of the fixed part of a VRRP message.
pub const HEADER_LEN: usize = 8;
/// Length of the IPv4 header this module writes (no options).
pub const IP_HEADER_LEN: usize = 20;
/// IP type of service Keepalived sends adverts with (precedence "internetwork control").
pub const TOS: u8 = 0xc0;

/// One VRRPv3 advertisement (type 1): what the master tells the other routers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// Virtual router id, 1-255.
    pub vrid: u8,
    /// Sender's priority; 0 means the master is stepping down.
    pub priority: u8,
    /// The sender's advert interval in centiseconds (12 bits).
    pub max_advert_int: u16,
    /// The virtual addresses of the router.
    pub addrs: Vec<Ipv4Addr>,
}

/// A decoded advert with the addresses of the IP header it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// IP source: the sender's primary address (compared on equal priority).
    pub src: Ipv4Addr,
    /// IP destination: 224.0.0.18, or this host for unicast.
    pub dst: Ipv4Addr,
    /// The advert.
    pub advert: Advert,
}

/// Why a received datagram is not a valid advert. [`BadAdvert::cause`] is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadAdvert {
    /// Shorter than its headers or its own length fields say, or longer than they say.
    #[error("bad length")]
    Length,
    /// Not an IPv4 datagram carrying protocol 112.
    #[error("not IPv4 protocol 112")]
    Ip,
    /// Arrived with a TTL other than 255: it crossed a router, or was forged.
    #[error("TTL {0}, not 255")]
    Ttl(u8),
    /// VRRP version other than 3.
    #[error("VRRP version {0}, not 3")]
    Version(u8),
    /// Type other than 1 (ADVERTISEMENT).
    #[error("VRRP type {0}, not 1")]
    Type(u8),
    /// Checksum mismatch.
    #[error("bad checksum")]
    Checksum,
    /// A max advert interval of 0, which would make the backup's timers fire at once.
    #[error("advert interval 0")]
    Interval,
}

impl BadAdvert {
    /// Short label for `setgate_vrrp_bad_adverts_total{cause}`.
    pub fn cause(&self) -> &'static str {
        match self {
            BadAdvert::Length => "length",
            BadAdvert::Ip => "ip",
            BadAdvert::Ttl(_) => "ttl",
            BadAdvert::Version(_) => "version",
            BadAdvert::Type(_) => "type",
            BadAdvert::Checksum => "checksum",
            BadAdvert::Interval => "interval",
        }
    }
}

impl Advert {
    /// Length of the VRRP message.
    pub fn len(&self) -> usize {
        HEADER_LEN + 4 * self.addrs.len()
    }

    /// Always false: an advert has at least its fixed header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The VRRP message with its checksum for the given IP source and destination.
    ///
    /// At most 255 addresses are encoded (the count is one byte); config validation keeps it so.
    pub fn encode(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let addrs = &self.addrs[..self.addrs.len().min(255)];
        let mut b = Vec::with_capacity(HEADER_LEN + 4 * addrs.len());
        b.push(0x31); // version 3, type 1
        b.push(self.vrid);
        b.push(self.priority);
        b.push(addrs.len() as u8);
        b.extend_from_slice(&(self.max_advert_int & 0x0fff).to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        for a in addrs {
            b.extend_from_slice(&a.octets());
        }
        let sum = checksum(src, dst, &b);
        b[6..8].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// A whole IPv4 datagram (for an `IP_HDRINCL` socket): TTL 255, TOS 0xc0, protocol 112.
    /// The kernel fills in the identification and the header checksum.
    pub fn encode_ip(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let vrrp = self.encode(src, dst);
        let total = (IP_HEADER_LEN + vrrp.len()) as u16;
        let mut b = Vec::with_capacity(total as usize);
        b.extend_from_slice(&[0x45, TOS]);
        b.extend_from_slice(&total.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 0]); // id, flags + fragment offset
        b.extend_from_slice(&[TTL, PROTO_VRRP, 0, 0]);
        b.extend_from_slice(&src.octets());
        b.extend_from_slice(&dst.octets());
        b.extend_from_slice(&vrrp);
        b
    }
}

/// Decodes a whole IPv4 datagram as received on a raw socket and checks everything RFC 5798 §7.1
/// says a receiver MUST check that does not depend on configuration (TTL, version, length,
/// checksum). The virtual router id and the address list are checked by the caller.
pub fn decode(ip: &[u8]) -> Result<Received, BadAdvert> {
    if ip.len() < IP_HEADER_LEN {
        return Err(BadAdvert::Length);
    }
    if ip[0] >> 4 != 4 || ip[9] != PROTO_VRRP {
        return Err(BadAdvert::Ip);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < IP_HEADER_LEN || total < ihl || total > ip.len() {
        return Err(BadAdvert::Length);
    }
    let ttl = ip[8];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let vrrp = &ip[ihl..total];
    if ttl != TTL {
        return Err(BadAdvert::Ttl(ttl));
    }
    if vrrp.len() < HEADER_LEN {
        return Err(BadAdvert::Length);
    }
    let version = vrrp[0] >> 4;
    if version != 3 {
        return Err(BadAdvert::Version(version));
    }
    let kind = vrrp[0] & 0x0f;
    if kind != 1 {
        return Err(BadAdvert::Type(kind));
    }
    let count = usize::from(vrrp[3]);
    if vrrp.len() != HEADER_LEN + 4 * count {
        return Err(BadAdvert::Length);
    }
    if checksum(src, dst, vrrp) != 0 {
        return Err(BadAdvert::Checksum);
    }
    let max_advert_int = u16::from_be_bytes([vrrp[4], vrrp[5]]) & 0x0fff;
    if max_advert_int == 0 {
        return Err(BadAdvert::Interval);
    }
    let addrs = vrrp[HEADER_LEN..]
        .chunks_exact(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect();
    Ok(Received {
        src,
        dst,
        advert: Advert {
            vrid: vrrp[1],
            priority: vrrp[2],
            max_advert_int,
            addrs,
        },
    })
}

/// The Internet checksum (RFC 1071) of the IPv4 pseudo-header and `vrrp`. Over a message whose
/// checksum field is filled in correctly it is 0.
pub fn checksum(src: Ipv4Addr, dst: Ipv4Addr, vrrp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&[0, PROTO_VRRP]);
    add(&(vrrp.len() as u16).to_be_bytes());
    add(vrrp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);

    /// Adverts Keepalived 2.2.7 sent (`vrrp_version 3`, VRID 51, priority 100, `advert_int 1`, one
    /// VIP 192.0.2.100/24, source 192.0.2.11), captured byte for byte with an AF_PACKET socket on
    /// the far end of a veth pair in a test namespace: to the group, and to unicast peer
    /// 192.0.2.12. They pin the checksum to what Keepalived computes.
    const KEEPALIVED_MULTICAST: &str =
        "45c0002000010000ff70188fc000020be00000123133640100640568c0000264";
    const KEEPALIVED_UNICAST: &str =
        "45c0002000010000ff703695c000020bc000020c313364010064236ec0000264";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn advert() -> Advert {
        Advert {
            vrid: 51,
            priority: 100,
            max_advert_int: 100,
            addrs: vec![Ipv4Addr::new(192, 0, 2, 100)],
        }
    }

    #[test]
    fn keepalived_golden_vectors() {
        for (hex, dst) in [
            (KEEPALIVED_MULTICAST, GROUP),
            (KEEPALIVED_UNICAST, Ipv4Addr::new(192, 0, 2, 12)),
        ] {
            let bytes = unhex(hex);
            let r = decode(&bytes).unwrap();
            assert_eq!((r.src, r.dst), (SRC, dst));
            assert_eq!(r.advert, advert());
            assert_eq!(advert().encode(SRC, dst), bytes[20..]);
            // Same header fields as Keepalived (TOS, TTL, protocol); id and IP checksum are the kernel's.
            let ours = advert().encode_ip(SRC, dst);
            assert_eq!((ours[1], ours[8], ours[9]), (bytes[1], bytes[8], bytes[9]));
        }
    }

    #[test]
    fn round_trip_multicast_and_unicast() {
        let mut a = advert();
        a.addrs.push(Ipv4Addr::new(192, 0, 2, 101));
        a.max_advert_int = 4095;
        for dst in [GROUP, Ipv4Addr::new(192, 0, 2, 12)] {
            let ip = a.encode_ip(SRC, dst);
            assert_eq!(ip.len(), IP_HEADER_LEN + a.len());
            let r = decode(&ip).unwrap();
            assert_eq!((r.src, r.dst, r.advert), (SRC, dst, a.clone()));
        }
    }

    #[test]
    fn checksum_depends_on_the_pseudo_header() {
        let a = advert();
        let ip = a.encode_ip(SRC, Ipv4Addr::new(192, 0, 2, 12));
        let mut wrong_dst = ip.clone();
        wrong_dst[16..20].copy_from_slice(&GROUP.octets());
        assert_eq!(decode(&wrong_dst), Err(BadAdvert::Checksum));
    }

    #[test]
    fn each_bad_field_has_its_cause() {
        let good = advert().encode_ip(SRC, GROUP);
        let patch = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            b
        };
        assert_eq!(decode(&patch(8, 254)), Err(BadAdvert::Ttl(254)));
        assert_eq!(decode(&patch(9, 17)), Err(BadAdvert::Ip));
        assert_eq!(decode(&patch(0, 0x65)), Err(BadAdvert::Ip));
        assert_eq!(decode(&patch(20, 0x21)), Err(BadAdvert::Version(2)));
        assert_eq!(decode(&patch(20, 0x32)), Err(BadAdvert::Type(2)));
        assert_eq!(decode(&patch(22, 101)), Err(BadAdvert::Checksum));
        assert_eq!(decode(&patch(23, 2)), Err(BadAdvert::Length));
        assert_eq!(decode(&good[..good.len() - 1]), Err(BadAdvert::Length));
        assert_eq!(decode(&good[..10]), Err(BadAdvert::Length));
        let mut zero = advert();
        zero.max_advert_int = 0;
        assert_eq!(
            decode(&zero.encode_ip(SRC, GROUP)),
            Err(BadAdvert::Interval)
        );
        assert_eq!(BadAdvert::Ttl(1).cause(), "ttl");
    }

    #[test]
    fn reserved_bits_are_ignored_and_never_sent() {
        let mut a = advert();
        a.max_advert_int = 0xf064;
        let b = a.encode(SRC, GROUP);
        assert_eq!(&b[4..6], &[0x00, 0x64]);
    }

    #[test]
    fn ip_options_are_skipped() {
        let plain = advert().encode_ip(SRC, GROUP);
        let mut b = plain[..20].to_vec();
        b[0] = 0x46;
        b[3] += 4;
        b.extend_from_slice(&[0x94, 0x04, 0, 0]); // router alert
        b.extend_from_slice(&plain[20..]);
        assert_eq!(decode(&b).unwrap().advert, advert());
    }
}

/// The fuzz target's property (`fuzz/fuzz_targets/vrrp_packet.rs`) on every `cargo test`, over
/// mangled copies of a valid advert, which reach far deeper than random bytes would.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decode_never_panics_and_what_decodes_round_trips(
            count in 0usize..6,
            edits in proptest::collection::vec((0usize..64, any::<u8>()), 0..4),
            cut in 0usize..64,
        ) {
            let addrs = (0..count).map(|i| Ipv4Addr::new(192, 0, 2, 100 + i as u8)).collect();
            let advert = Advert { vrid: 51, priority: 100, max_advert_int: 100, addrs };
            let mut bytes = advert.encode_ip(Ipv4Addr::new(192, 0, 2, 11), GROUP);
            for (i, v) in edits {
                if let Some(b) = bytes.get_mut(i) {
                    *b = v;
                }
            }
            bytes.truncate(bytes.len().saturating_sub(cut % 8));
            if let Ok(rx) = decode(&bytes) {
                let again = decode(&rx.advert.encode_ip(rx.src, rx.dst)).expect("re-encoded advert decodes");
                prop_assert_eq!(again, rx);
            }
        }
    }
}
