//! Interface facts and virtual addresses over rtnetlink: `ip link show`, `ip -4 addr show`,
//! `ip addr add` and `ip addr del` without running `ip`.

use crate::config::Vip;
use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

/// What the instance needs to know about its interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Hardware address, the source of gratuitous ARPs.
    pub mac: [u8; 6],
    /// Administratively up.
    pub up: bool,
    /// Operationally up (IFF_RUNNING: it has a carrier, e.g. the other end of a veth is up too).
    pub running: bool,
}

impl Link {
    /// Up and running: what an instance on it, or tracking it, needs.
    pub fn usable(&self) -> bool {
        self.up && self.running
    }
}

/// One IPv4 address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfAddr {
    /// The address.
    pub addr: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// A secondary address (another address of the same subnet came first).
    pub secondary: bool,
}

/// A netlink route socket with its connection task. The task ends when this is dropped.
#[derive(Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
    /// Held for the whole of a dump: the kernel runs one dump per socket at a time and refuses
    /// a second with EBUSY, and all instances of the process share this socket.
    dumping: tokio::sync::Mutex<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

impl Netlink {
    /// Opens the socket in the current network namespace; must run inside a tokio runtime.
    pub fn connect() -> io::Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        Ok(Netlink {
            handle,
            task: tokio::spawn(conn),
            dumping: tokio::sync::Mutex::new(()),
        })
    }

    /// The interface called `name`, or `None` when there is none.
    pub async fn link(&self, name: &str) -> io::Result<Option<Link>> {
        let mut links = self.handle.link().get().match_name(name).execute();
        let msg = match links.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(rtnetlink::Error::NetlinkError(m))
                if m.to_io().raw_os_error() == Some(libc::ENODEV) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(to_io(e)),
        };
        let mut mac = [0u8; 6];
        for attr in &msg.attributes {
            if let LinkAttribute::Address(a) = attr {
                if a.len() == 6 {
                    mac.copy_from_slice(a);
                }
            }
        }
        Ok(Some(Link {
            index: msg.header.index,
            mac,
            up: msg.header.flags.contains(LinkFlags::Up),
            running: msg.header.flags.contains(LinkFlags::Running),
        }))
    }

    async fn messages(&self, index: u32) -> io::Result<Vec<AddressMessage>> {
        let _one_dump = self.dumping.lock().await;
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(to_io)
    }

    /// The IPv4 addresses of the interface, in the kernel's order (primary addresses first per
    /// subnet).
    pub async fn ipv4_addrs(&self, index: u32) -> io::Result<Vec<IfAddr>> {
        Ok(self
            .messages(index)
            .await?
            .iter()
            .filter_map(if_addr)
            .collect())
    }

    /// Adds a virtual address; already present is fine.
    pub async fn add(&self, index: u32, vip: Vip) -> io::Result<()> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(vip.addr), vip.prefix)
            .execute()
            .await
        {
            Err(rtnetlink::Error::NetlinkError(m))
                if m.to_io().raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            r => r.map_err(to_io),
        }
    }

    /// Removes a virtual address (whatever its prefix length); absent is fine.
    pub async fn del(&self, index: u32, addr: Ipv4Addr) -> io::Result<()> {
        for msg in self.messages(index).await? {
            if if_addr(&msg).is_some_and(|a| a.addr == addr) {
                match self.handle.address().del(msg).execute().await {
                    Err(rtnetlink::Error::NetlinkError(m))
                        if m.to_io().raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
                    r => r.map_err(to_io)?,
                }
            }
        }
        Ok(())
    }
}

fn if_addr(msg: &AddressMessage) -> Option<IfAddr> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links.
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(v4)) => Some(*v4),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
        _ => None,
    });
    Some(IfAddr {
        addr: local.or(address)?,
        prefix: msg.header.prefix_len,
        secondary: msg.header.flags.contains(AddressHeaderFlags::Secondary),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Every instance of a process shares one socket, and the kernel runs one dump per socket at a
    /// time (a second one is refused with EBUSY): instances starting together, each listing the
    /// interface's addresses, must not see that refusal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dumps_from_many_tasks_on_one_socket_all_succeed() {
        let nl = Arc::new(Netlink::connect().expect("netlink socket"));
        let lo = nl.link("lo").await.expect("link lo").expect("lo exists");
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let nl = nl.clone();
                tokio::spawn(async move { nl.ipv4_addrs(lo.index).await })
            })
            .collect();
        for t in tasks {
            let addrs = t.await.expect("task").expect("dump refused");
            assert!(addrs.iter().any(|a| a.addr == Ipv4Addr::LOCALHOST));
        }
    }
}
