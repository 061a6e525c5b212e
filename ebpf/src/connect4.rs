//! cgroup/connect4: outbound capture for AF_INET sockets, TCP and (DNS capture) UDP.
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use meshsteer_common::Addr;

use crate::{
    capture::{ALLOW, SOCK_DGRAM, SOCK_STREAM, Steer, steer},
    ctx::SockAddrCtx,
    dns::{IPPROTO_UDP, Send, bind_connect_source, steer_udp},
};

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let dst = Addr::from_be_u32(ctx.user_ip4());
    let dport = u16::from_be(ctx.user_port_be());
    let src = Addr::from_be_u32(ctx.sock().src_ip4());
    let steer = match ctx.sock_type() {
        SOCK_STREAM => steer(&ctx, false, src, dst, dport),
        SOCK_DGRAM if ctx.protocol() == IPPROTO_UDP => {
            let (steer, source) = steer_udp(&ctx, src, dst, dport, Send::Connect);
            if matches!(steer, Steer::Redirect(_)) {
                bind_connect_source(&ctx, false, source);
            }
            steer
        }
        _ => return ALLOW,
    };
    if let Steer::Redirect(r) = &steer
        && let Some(ip) = r.addr.be_u32()
    {
        ctx.set_user_ip4(ip);
        ctx.set_user_port_be(r.port.to_be());
    }
    steer.verdict()
}
