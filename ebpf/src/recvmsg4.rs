//! cgroup/recvmsg4: a reply from the proxy's DNS port is reported as coming from the server
//! the app asked (conntrack's reverse NAT under iptables).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use meshsteer_common::Addr;

use crate::{ctx::SockAddrCtx, dns::reply_source};

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    let from = Addr::from_be_u32(ctx.user_ip4());
    if let Some((server, port_be)) = reply_source(ctx.sock(), from, ctx.user_port_be())
        && let Some(ip) = server.be_u32()
    {
        ctx.set_user_ip4(ip);
        ctx.set_user_port_be(port_be);
    }
    // recvmsg hooks must return 1.
    1
}
