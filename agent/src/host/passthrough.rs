//! Envoy's IPv6 inbound-passthrough source on a pod's loopback. istio-init runs
//! `ip -6 addr add ::6/128 dev lo` in every pod it writes ip6tables rules for: Envoy binds its
//! inbound passthrough to the app to `::6`, the source rule R8 (`-o lo -s ::6/128 -j RETURN`)
//! lets through. IPv4 needs nothing (`lo` holds all of 127.0.0.0/8), but IPv6 `lo` holds only
//! `::1`, so without the address that bind fails. istio-init ignores "File exists", and so does
//! this: a restarted agent enrols its pods again.
use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage, AddressScope},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::rtnl;

use crate::sys::in_netns::in_netns;

/// `::6`.
pub const PASSTHROUGH_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// The loopback device's index, the same in every network namespace (the kernel's
/// `LOOPBACK_IFINDEX`).
const LO_IFINDEX: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error("opening network namespace {}", .path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "entering network namespace {} (setns(2) needs CAP_SYS_ADMIN)",
        .path.display()
    )]
    Enter { path: PathBuf, source: io::Error },
    #[error("adding ::6/128 to lo in network namespace {}", .path.display())]
    Add { path: PathBuf, source: io::Error },
}

/// Adds `::6/128` to `lo` in the network namespace `netns` (there already: success).
pub fn add_passthrough_v6(netns: &Path) -> Result<(), PassthroughError> {
    let path = netns.to_path_buf();
    let ns = File::open(netns).map_err(|source| PassthroughError::Open {
        path: path.clone(),
        source,
    })?;
    // Only the socket is made inside: it belongs to the pod's namespace from then on.
    let socket =
        in_netns(&ns, || Socket::new(NETLINK_ROUTE)).map_err(|source| PassthroughError::Enter {
            path: path.clone(),
            source,
        })?;
    socket
        .and_then(|s| add(&s))
        .map_err(|source| PassthroughError::Add { path, source })
}

/// RTM_NEWADDR for `::6/128` on `lo`, as `ip -6 addr add ::6/128 dev lo` sends it, and the
/// kernel's answer.
fn add(socket: &Socket) -> io::Result<()> {
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&new_addr_request(), 0)?;
    let mut answer = Vec::with_capacity(4096);
    socket.recv(&mut answer, 0)?;
    acked(&answer)
}

fn new_addr_request() -> Vec<u8> {
    let mut addr = AddressMessage::default();
    addr.header.family = AddressFamily::Inet6;
    addr.header.prefix_len = 128;
    addr.header.scope = AddressScope::Universe;
    addr.header.index = LO_IFINDEX;
    let ip = IpAddr::V6(PASSTHROUGH_V6);
    addr.attributes = vec![AddressAttribute::Local(ip), AddressAttribute::Address(ip)];
    rtnl::request(
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        RouteNetlinkMessage::NewAddress(addr),
    )
}

/// The kernel's answer to the request: an ACK, or `EEXIST` (the address is there already).
fn acked(answer: &[u8]) -> io::Result<()> {
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(answer)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    match msg.payload {
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(()),
            Some(code) if code.get() == -libc::EEXIST => Ok(()),
            Some(_) => Err(e.to_io()),
        },
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the kernel answered RTM_NEWADDR with {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{ErrorMessage, NetlinkHeader};

    use super::*;

    #[test]
    fn the_request_is_ip_addr_add_of_6_on_lo() {
        let req = new_addr_request();
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&req).unwrap();
        assert_eq!(
            msg.header.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) = msg.payload else {
            panic!("not RTM_NEWADDR: {msg:?}");
        };
        assert_eq!(
            (a.header.family, a.header.prefix_len, a.header.index),
            (AddressFamily::Inet6, 128, 1)
        );
        assert!(
            a.attributes
                .contains(&AddressAttribute::Local("::6".parse().unwrap()))
        );
    }

    fn answer(code: i32) -> Vec<u8> {
        let mut e = ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(code);
        rtnl::encode(NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::Error(e),
        ))
    }

    #[test]
    fn an_address_already_there_is_success_other_errors_are_not() {
        assert!(acked(&answer(0)).is_ok());
        assert!(acked(&answer(-libc::EEXIST)).is_ok());
        let e = acked(&answer(-libc::EPERM)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn a_file_that_is_no_network_namespace_is_not_entered() {
        let e = add_passthrough_v6(Path::new("/proc/self/ns/mnt")).unwrap_err();
        assert!(matches!(e, PassthroughError::Enter { .. }), "{e:?}");
        let e = add_passthrough_v6(Path::new("/nonexistent/netns")).unwrap_err();
        assert!(matches!(e, PassthroughError::Open { .. }), "{e:?}");
    }
}
