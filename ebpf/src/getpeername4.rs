//! cgroup/getpeername4: a redirected app socket reports the peer it asked for, as under
//! iptables REDIRECT (where only packets are rewritten, never the socket).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use meshsteer_common::maps::sock_flags;

use crate::{capture::SOCK_DGRAM, ctx::SockAddrCtx, dns::connected_peer, pod::sock_state};

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    if ctx.sock_type() == SOCK_DGRAM {
        // A UDP socket connected to the proxy in place of a nameserver (DNS capture).
        if let Some((peer, port_be)) = connected_peer(ctx.sock())
            && let Some(ip) = peer.be_u32()
        {
            ctx.set_user_ip4(ip);
            ctx.set_user_port_be(port_be);
        }
        return 1;
    }
    if let Some(s) = sock_state(ctx.sock())
        && s.flags & sock_flags::REDIRECTED != 0
        && let Some(ip) = s.orig_addr.be_u32()
    {
        ctx.set_user_ip4(ip);
        ctx.set_user_port_be(s.orig_port_be);
    }
    1
}
