//! `MS_DNS_SERVERS` and `MS_DNS_SOCK`: the nameservers whose DNS a pod's `--redirect-dns`
//! captures, and what a UDP socket whose DNS went to the proxy must be told of its replies.
use crate::Addr;

/// `MS_DNS_SERVERS` key: one nameserver of one pod (value: `u8`, always 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DnsServerKey {
    pub pod_id: u32,
    pub addr: Addr,
}
plain_data!(DnsServerKey);

/// `MS_DNS_SOCK`: socket-local storage of a UDP socket whose DNS was redirected to the proxy.
///
/// Under iptables REDIRECT only packets are rewritten, and conntrack turns the source of each
/// reply back into the server the query went to. Here the socket itself talks to the proxy, so
/// the app is told, on each reply from the proxy's DNS port, the server it last sent to, and on
/// getpeername the server it connected to. Socket-local, so two pods or two sockets never see
/// each other's servers; replies from anything but the proxy's DNS port are left alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DnsSock {
    /// [`dns_flags`].
    pub flags: u32,
    /// Ports of `last` and `peer` (network byte order).
    pub last_port_be: u16,
    pub peer_port_be: u16,
    /// The server of the socket's most recent redirected datagram (sendto or connect).
    pub last: Addr,
    /// The server a redirected connect() named.
    pub peer: Addr,
}
plain_data!(DnsSock);

pub mod dns_flags {
    /// `last` holds a server: replies from the proxy's DNS port come from it.
    pub const SENT: u32 = 1 << 0;
    /// Connected to the proxy in place of `peer`: getpeername reports `peer`.
    pub const CONNECTED: u32 = 1 << 1;
}
