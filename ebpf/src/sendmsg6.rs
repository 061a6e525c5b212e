//! cgroup/sendmsg6: DNS capture for sendto()/sendmsg() with an IPv6 address.
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use meshsteer_common::Addr;

use crate::{
    capture::{ALLOW, Steer},
    ctx::SockAddrCtx,
    dns::{IPPROTO_UDP, Send, steer_udp},
};

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    if ctx.protocol() != IPPROTO_UDP {
        return ALLOW;
    }
    let dst = Addr::from_be_words(ctx.user_ip6());
    let dport = u16::from_be(ctx.user_port_be());
    let src = Addr::from_be_words(ctx.msg_src_ip6());
    let (steer, source) = steer_udp(&ctx, src, dst, dport, Send::Msg);
    if let Steer::Redirect(r) = &steer {
        ctx.set_user_ip6(r.addr.be_words());
        ctx.set_user_port_be(r.port.to_be());
        if let Some(s) = source {
            ctx.set_msg_src_ip6(s.be_words());
        }
    }
    steer.verdict()
}
