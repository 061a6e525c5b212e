//! cgroup/connect6: outbound capture for AF_INET6 sockets. IPv4-mapped destinations are
//! decided as the IPv4 traffic they are (iptables, not ip6tables, sees them).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use meshsteer_common::Addr;

use crate::{
    capture::{ALLOW, SOCK_STREAM, set_user_ip6, socket, steer},
    tuple::words,
};

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: valid ctx for the whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        return ALLOW;
    }
    // SAFETY: ctx and socket fields, read in place.
    let (dst, src) = unsafe {
        (
            Addr::from_be_words(words(&raw const sa.user_ip6)),
            Addr::from_be_words(words(&raw const (*socket(&ctx)).src_ip6)),
        )
    };
    let dport = u16::from_be(sa.user_port as u16);
    if let Some(r) = steer(&ctx, true, src, dst, dport) {
        set_user_ip6(ctx.sock_addr, &r.addr);
        sa.user_port = u32::from(r.port.to_be());
    }
    ALLOW
}
