//! cgroup/connect6: outbound capture for AF_INET6 sockets. IPv4-mapped destinations are
//! decided as the IPv4 traffic they are (iptables, not ip6tables, sees them).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use meshsteer_common::Addr;

use crate::{
    capture::{ALLOW, SOCK_STREAM, Steer, steer},
    ctx::SockAddrCtx,
};

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    if ctx.sock_type() != SOCK_STREAM {
        return ALLOW;
    }
    let dst = Addr::from_be_words(ctx.user_ip6());
    let src = Addr::from_be_words(ctx.sock().src_ip6());
    let dport = u16::from_be(ctx.user_port_be());
    let steer = steer(&ctx, true, src, dst, dport);
    if let Steer::Redirect(r) = &steer {
        ctx.set_user_ip6(r.addr.be_words());
        ctx.set_user_port_be(r.port.to_be());
    }
    steer.verdict()
}
