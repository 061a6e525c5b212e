//! cgroup/getpeername6: the same for AF_INET6 sockets (IPv4 peers come out IPv4-mapped).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use meshsteer_common::maps::sock_flags;

use crate::{
    capture::{set_user_ip6, socket},
    pod::sock_state,
};

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    if let Some(s) = sock_state(socket(&ctx).cast())
        && s.flags & sock_flags::REDIRECTED != 0
    {
        set_user_ip6(ctx.sock_addr, &s.orig_addr);
        // SAFETY: valid ctx; 4-byte store to a writable field.
        unsafe { (*ctx.sock_addr).user_port = u32::from(s.orig_port_be) };
    }
    1
}
