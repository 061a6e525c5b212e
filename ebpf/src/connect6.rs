//! cgroup/connect6: outbound capture for AF_INET6 sockets, TCP and (DNS capture) UDP.
//! IPv4-mapped destinations are decided as the IPv4 traffic they are (iptables, not
//! ip6tables, sees them).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use meshsteer_common::Addr;

use crate::{
    capture::{ALLOW, SOCK_DGRAM, SOCK_STREAM, Steer, steer},
    ctx::SockAddrCtx,
    dns::{IPPROTO_UDP, Send, bind_connect_source, steer_udp},
};

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let dst = Addr::from_be_words(ctx.user_ip6());
    let src = Addr::from_be_words(ctx.sock().src_ip6());
    let dport = u16::from_be(ctx.user_port_be());
    let steer = match ctx.sock_type() {
        SOCK_STREAM => steer(&ctx, true, src, dst, dport),
        SOCK_DGRAM if ctx.protocol() == IPPROTO_UDP => {
            let (steer, source) = steer_udp(&ctx, src, dst, dport, Send::Connect);
            if matches!(steer, Steer::Redirect(_)) {
                bind_connect_source(&ctx, true, source);
            }
            steer
        }
        _ => return ALLOW,
    };
    if let Steer::Redirect(r) = &steer {
        ctx.set_user_ip6(r.addr.be_words());
        ctx.set_user_port_be(r.port.to_be());
    }
    steer.verdict()
}
