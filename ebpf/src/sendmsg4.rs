//! cgroup/sendmsg4: DNS capture for sendto()/sendmsg() with an IPv4 address (also from
//! AF_INET6 sockets to IPv4-mapped addresses: the kernel runs this hook for those).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use meshsteer_common::Addr;

use crate::{
    capture::{ALLOW, Steer},
    ctx::SockAddrCtx,
    dns::{IPPROTO_UDP, Send, steer_udp},
};

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    if ctx.protocol() != IPPROTO_UDP {
        return ALLOW;
    }
    let dst = Addr::from_be_u32(ctx.user_ip4());
    let dport = u16::from_be(ctx.user_port_be());
    let src = Addr::from_be_u32(ctx.msg_src_ip4());
    let (steer, source) = steer_udp(&ctx, src, dst, dport, Send::Msg);
    if let Steer::Redirect(r) = &steer
        && let Some(ip) = r.addr.be_u32()
    {
        ctx.set_user_ip4(ip);
        ctx.set_user_port_be(r.port.to_be());
        if let Some(v4) = source.and_then(|s| s.be_u32()) {
            ctx.set_msg_src_ip4(v4);
        }
    }
    steer.verdict()
}
