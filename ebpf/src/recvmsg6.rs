//! cgroup/recvmsg6: the same for AF_INET6 sockets (an IPv4 server comes out IPv4-mapped).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use meshsteer_common::Addr;

use crate::{ctx::SockAddrCtx, dns::reply_source};

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    let from = Addr::from_be_words(ctx.user_ip6());
    if let Some((server, port_be)) = reply_source(ctx.sock(), from, ctx.user_port_be()) {
        ctx.set_user_ip6(server.be_words());
        ctx.set_user_port_be(port_be);
    }
    // recvmsg hooks must return 1.
    1
}
