//! DNS capture for UDP sockets (`--redirect-dns`), shared by the connect and sendmsg hooks:
//! a datagram to a captured nameserver goes to the proxy's DNS port on the family's
//! localhost instead, and the socket remembers the server (`MS_DNS_SOCK`), so that recvmsg and
//! getpeername show the app its answers coming from the server it asked, as conntrack's
//! reverse NAT does under iptables. TCP DNS takes the TCP path (`capture.rs`) unchanged.
use aya_ebpf::{bindings::BPF_SK_STORAGE_GET_F_CREATE, programs::SockAddrContext};
use meshsteer_common::{
    Addr,
    maps::{DNS_PORT, DnsSock, dns_flags},
    outbound::Proto,
};

use crate::{
    capture::{Redirect, Steer, bind, decide_for, source_for},
    ctx::{Sock, SockAddrCtx},
    maps::DNS_SOCK,
    pod::{MapTables, sk_storage},
};

/// IPPROTO_UDP: iptables' `-p udp` (not UDP-Lite, not ICMP ping sockets).
pub const IPPROTO_UDP: u32 = 17;

/// How the datagram's destination was given.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Send {
    /// connect(): every later send() goes there, and getpeername names it.
    Connect,
    /// sendto()/sendmsg() with an address, on a socket connected or not.
    Msg,
}

/// The socket's DNS state, if it ever had its DNS redirected.
#[inline(always)]
pub fn dns_sock(sk: Sock) -> Option<&'static mut DnsSock> {
    sk_storage(&DNS_SOCK, sk, 0)
}

/// Decides a UDP datagram (or a UDP connect()) from `src` (bound source, unspecified if none)
/// to `dst:dport`, and on a redirect remembers `dst` for the replies.
#[inline(always)]
pub fn steer_udp(
    ctx: &SockAddrContext,
    src: Addr,
    dst: Addr,
    dport: u16,
    how: Send,
) -> (Steer, Option<Addr>) {
    // Only port 53 is ever captured: any other datagram costs this one comparison.
    if dport != DNS_PORT {
        if !is_own_redirect(ctx.sock(), how, &dst, dport) {
            forget_peer(ctx.sock(), how);
        }
        return (Steer::Pass, None);
    }
    let d = match decide_for(ctx, Proto::Udp, src, dst, dport) {
        Ok(d) => d,
        Err(s) => {
            forget_peer(ctx.sock(), how);
            return (s, None);
        }
    };
    if !d.verdict.is_redirect() {
        forget_peer(ctx.sock(), how);
        return (Steer::Pass, None);
    }
    let Some(st) = sk_storage(&DNS_SOCK, ctx.sock(), BPF_SK_STORAGE_GET_F_CREATE.into()) else {
        // No memory for the reverse state: the app could not tell its answers, so the query
        // fails (EPERM) rather than going uncaptured.
        return (Steer::Deny, None);
    };
    st.last = dst;
    st.last_port_be = dport.to_be();
    st.flags |= dns_flags::SENT;
    if how == Send::Connect {
        st.peer = dst;
        st.peer_port_be = dport.to_be();
        st.flags |= dns_flags::CONNECTED;
    }
    // The source routing would have picked for the nameserver, as the proxy sees it under
    // iptables (where the query is rewritten only after routing chose its source).
    let source = if src.is_unspecified() {
        source_for(d.cfg, &MapTables::new(d.cfg), &dst)
    } else {
        None
    };
    (
        Steer::Redirect(Redirect {
            addr: dst.localhost_like(),
            port: d.verdict.redirect_port,
        }),
        source,
    )
}

/// A connect() to the very address this socket's peer was redirected to: the redirect itself,
/// seen by a second copy of the program in the chain (while an upgrade from layout 5 still has
/// the cgroup root's copy attached beside the pod's). It keeps the peer getpeername reports.
#[inline(always)]
fn is_own_redirect(sk: Sock, how: Send, dst: &Addr, dport: u16) -> bool {
    how == Send::Connect
        && dport == meshsteer_common::maps::DNS_PROXY_PORT
        && dns_sock(sk).is_some_and(|st| {
            st.flags & dns_flags::CONNECTED != 0 && dst.eq_const(&st.peer.localhost_like())
        })
}

/// A connect() that is not redirected ends what getpeername must translate.
#[inline(always)]
fn forget_peer(sk: Sock, how: Send) {
    if how == Send::Connect
        && let Some(st) = dns_sock(sk)
    {
        st.flags &= !dns_flags::CONNECTED;
    }
}

/// A connect()'s source: bound before the kernel connects the socket.
#[inline(always)]
pub fn bind_connect_source(ctx: &SockAddrContext, v6_socket: bool, source: Option<Addr>) {
    if let Some(src) = source {
        bind(ctx, v6_socket, &src);
    }
}

/// The server a reply from `from:port_be` stands for, if the socket redirected DNS and the
/// reply is the proxy's (from the family's localhost, at the DNS port it was sent to).
#[inline(always)]
pub fn reply_source(sk: Sock, from: Addr, port_be: u16) -> Option<(Addr, u16)> {
    if u16::from_be(port_be) != meshsteer_common::maps::DNS_PROXY_PORT {
        return None;
    }
    let st = dns_sock(sk)?;
    if st.flags & dns_flags::SENT == 0 || !from.eq_const(&st.last.localhost_like()) {
        return None;
    }
    Some((st.last, st.last_port_be))
}

/// The peer getpeername reports for a UDP socket connected to the proxy in place of a server.
#[inline(always)]
pub fn connected_peer(sk: Sock) -> Option<(Addr, u16)> {
    let st = dns_sock(sk)?;
    (st.flags & dns_flags::CONNECTED != 0).then_some((st.peer, st.peer_port_be))
}
