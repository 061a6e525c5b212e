//! The addresses of a pod's network namespace, kept current. iptables' `-o lo` (R8–R10)
//! matches every destination the namespace routes through loopback: each address assigned
//! there, on any device, not only the pod IPs its spec lists. A netlink socket made inside
//! the namespace (it stays tied to it) dumps them (RTM_GETADDR) and then hears each change
//! (the IPv4 and IPv6 address groups); a lost notification (ENOBUFS) means a fresh dump.
use std::{
    collections::BTreeSet,
    fs::File,
    io,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    path::{Path, PathBuf},
};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressHeaderFlags, AddressMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::rtnl;

use tokio::sync::mpsc::UnboundedSender;

use crate::sys::{async_fd::readable, in_netns::in_netns};

/// `RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR` (linux/rtnetlink.h).
const IFADDR_GROUPS: u32 = 0x10 | 0x100;

/// Room for one datagram of the kernel's (a dump part is at most a page or so).
const RECV_BUF: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("opening network namespace {}", .path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "entering network namespace {} (setns(2) needs CAP_SYS_ADMIN)",
        .path.display()
    )]
    Enter { path: PathBuf, source: io::Error },
    #[error("listing the addresses of network namespace {}", .path.display())]
    Dump { path: PathBuf, source: io::Error },
}

/// One pod's network namespace, watched: its current addresses (loopback ones left out, the
/// datapath knows 127/8 and `::1` by themselves).
pub struct AddrWatch {
    socket: Socket,
    addrs: BTreeSet<IpAddr>,
}

impl AddrWatch {
    /// Subscribes to the address changes of the namespace `netns`, then lists what is there.
    pub fn open(netns: &Path) -> Result<Self, WatchError> {
        let path = netns.to_path_buf();
        let ns = File::open(netns).map_err(|source| WatchError::Open {
            path: path.clone(),
            source,
        })?;
        // Only the socket is made inside: it belongs to the pod's namespace from then on.
        let socket = in_netns(&ns, || {
            let mut s = Socket::new(NETLINK_ROUTE)?;
            // Subscribed before the dump: a change during it is heard, never lost.
            s.bind(&SocketAddr::new(0, IFADDR_GROUPS))?;
            Ok::<_, io::Error>(s)
        })
        .map_err(|source| WatchError::Enter {
            path: path.clone(),
            source,
        })?
        .map_err(|source| WatchError::Dump {
            path: path.clone(),
            source,
        })?;
        let mut w = Self {
            socket,
            addrs: BTreeSet::new(),
        };
        w.resync()
            .map_err(|source| WatchError::Dump { path, source })?;
        Ok(w)
    }

    pub fn addrs(&self) -> &BTreeSet<IpAddr> {
        &self.addrs
    }

    /// Sends `cgroup_id` on `tx` each time notifications wait on the socket (its owner then
    /// calls [`AddrWatch::drain`]), until the returned task is aborted. Readiness is
    /// edge-triggered: whatever arrives after a drain read the queue empty wakes it again.
    pub fn notify(
        &self,
        cgroup_id: u64,
        tx: UnboundedSender<u64>,
    ) -> io::Result<tokio::task::AbortHandle> {
        let fd = readable(self.socket.as_fd().try_clone_to_owned()?)?;
        let task = tokio::spawn(async move {
            loop {
                let Ok(mut guard) = fd.readable().await else {
                    return;
                };
                guard.clear_ready();
                if tx.send(cgroup_id).is_err() {
                    return;
                }
            }
        });
        Ok(task.abort_handle())
    }

    /// Applies every notification waiting, without blocking; whether the set changed.
    pub fn drain(&mut self) -> io::Result<bool> {
        let before = self.addrs.clone();
        let mut buf = Vec::with_capacity(RECV_BUF);
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(_) => {
                    apply_all(&buf, &mut self.addrs)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // The socket's queue overflowed: changes were lost, list them all again.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => self.resync()?,
                Err(e) => return Err(e),
            }
        }
        Ok(self.addrs != before)
    }

    /// Lists the namespace's addresses afresh (RTM_GETADDR dump). Notifications queued
    /// before and during it are applied in order, so none is lost.
    fn resync(&mut self) -> io::Result<()> {
        self.socket.send(&dump_request(), 0)?;
        let mut fresh = BTreeSet::new();
        let mut buf = Vec::with_capacity(RECV_BUF);
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, 0) {
                Ok(_) => {}
                // Overflow while dumping: the dump itself goes on (it is a reply, not a
                // notification); notifications lost then are covered by it.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(e) => return Err(e),
            }
            if apply_all(&buf, &mut fresh)? {
                break;
            }
        }
        self.addrs = fresh;
        Ok(())
    }
}

impl AsRawFd for AddrWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl AsFd for AddrWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

fn dump_request() -> Vec<u8> {
    rtnl::request(
        NLM_F_REQUEST | NLM_F_DUMP,
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
    )
}

/// Applies each message of one datagram to `addrs`; whether it held the end of a dump.
fn apply_all(mut buf: &[u8], addrs: &mut BTreeSet<IpAddr>) -> io::Result<bool> {
    let mut done = false;
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) => {
                if let Some(ip) = address_of(&a) {
                    if usable(&a) {
                        addrs.insert(ip);
                    } else {
                        addrs.remove(&ip);
                    }
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(a)) => {
                if let Some(ip) = address_of(&a) {
                    addrs.remove(&ip);
                }
            }
            NetlinkPayload::Done(_) => done = true,
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
            _ => {}
        }
        // Messages are 4-byte aligned.
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(done)
}

/// The address assigned: `IFA_LOCAL` when there is one (on a point-to-point link
/// `IFA_ADDRESS` is the peer), else `IFA_ADDRESS`. Loopback ones are left out.
fn address_of(a: &AddressMessage) -> Option<IpAddr> {
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let ip = local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    (!ip.is_loopback()).then_some(ip)
}

/// An IPv6 address still in duplicate address detection (or failed it) has no local route
/// yet: the kernel routes to it as to any other; it counts once DAD is done (a new
/// RTM_NEWADDR says so).
fn usable(a: &AddressMessage) -> bool {
    let bad = AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed;
    !a.header.flags.intersects(bad)
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NetlinkHeader;
    use netlink_packet_route::AddressFamily;

    use super::*;

    fn message(new: bool, ip: &str, flags: AddressHeaderFlags) -> Vec<u8> {
        let mut a = AddressMessage::default();
        let ip: IpAddr = ip.parse().unwrap();
        a.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        a.header.flags = flags;
        a.attributes = vec![AddressAttribute::Address(ip)];
        let payload = if new {
            RouteNetlinkMessage::NewAddress(a)
        } else {
            RouteNetlinkMessage::DelAddress(a)
        };
        rtnl::encode(NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(payload),
        ))
    }

    #[test]
    fn notifications_add_and_remove_addresses_in_order() {
        let mut addrs = BTreeSet::new();
        let mut datagram = message(true, "10.1.2.3", AddressHeaderFlags::empty());
        datagram.extend(message(true, "fd00::7", AddressHeaderFlags::empty()));
        datagram.extend(message(true, "127.0.0.1", AddressHeaderFlags::empty()));
        assert!(!apply_all(&datagram, &mut addrs).unwrap());
        let want: BTreeSet<IpAddr> = ["10.1.2.3".parse().unwrap(), "fd00::7".parse().unwrap()]
            .into_iter()
            .collect();
        assert_eq!(addrs, want);
        apply_all(
            &message(false, "10.1.2.3", AddressHeaderFlags::empty()),
            &mut addrs,
        )
        .unwrap();
        assert_eq!(addrs.len(), 1);
    }

    #[test]
    fn a_tentative_address_counts_once_dad_is_done() {
        let mut addrs = BTreeSet::new();
        apply_all(
            &message(true, "fd00::8", AddressHeaderFlags::Tentative),
            &mut addrs,
        )
        .unwrap();
        assert!(addrs.is_empty());
        apply_all(
            &message(true, "fd00::8", AddressHeaderFlags::empty()),
            &mut addrs,
        )
        .unwrap();
        assert_eq!(addrs.len(), 1);
    }
}
