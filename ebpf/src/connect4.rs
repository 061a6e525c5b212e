//! cgroup/connect4: outbound capture for AF_INET sockets.
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use meshsteer_common::Addr;

use crate::{
    capture::{ALLOW, SOCK_STREAM, Steer, steer},
    ctx::SockAddrCtx,
};

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    if ctx.sock_type() != SOCK_STREAM {
        return ALLOW;
    }
    let dst = Addr::from_be_u32(ctx.user_ip4());
    let dport = u16::from_be(ctx.user_port_be());
    let src = Addr::from_be_u32(ctx.sock().src_ip4());
    let steer = steer(&ctx, false, src, dst, dport);
    if let Steer::Redirect(r) = &steer
        && let Some(ip) = r.addr.be_u32()
    {
        ctx.set_user_ip4(ip);
        ctx.set_user_port_be(r.port.to_be());
    }
    steer.verdict()
}
