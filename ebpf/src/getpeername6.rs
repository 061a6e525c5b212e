//! cgroup/getpeername6: the same for AF_INET6 sockets (IPv4 peers come out IPv4-mapped).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use meshsteer_common::maps::sock_flags;

use crate::{capture::SOCK_DGRAM, ctx::SockAddrCtx, dns::connected_peer, pod::sock_state};

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    if ctx.sock_type() == SOCK_DGRAM {
        // A UDP socket connected to the proxy in place of a nameserver (DNS capture).
        if let Some((peer, port_be)) = connected_peer(ctx.sock()) {
            ctx.set_user_ip6(peer.be_words());
            ctx.set_user_port_be(port_be);
        }
        return 1;
    }
    if let Some(s) = sock_state(ctx.sock())
        && s.flags & sock_flags::REDIRECTED != 0
    {
        ctx.set_user_ip6(s.orig_addr.be_words());
        ctx.set_user_port_be(s.orig_port_be);
    }
    1
}
