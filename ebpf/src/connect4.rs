//! cgroup/connect4: outbound capture for AF_INET sockets.
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use meshsteer_common::Addr;

use crate::capture::{ALLOW, SOCK_STREAM, socket, steer};

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the ctx pointer is valid for the whole run; fields are read/written as the
    // verifier allows for connect4 (4-byte user_ip4/user_port).
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        return ALLOW;
    }
    let dst = Addr::from_be_u32(sa.user_ip4);
    let dport = u16::from_be(sa.user_port as u16);
    // SAFETY: `sk` is a valid socket in connect hooks.
    let src = Addr::from_be_u32(unsafe { (*socket(&ctx)).src_ip4 });
    if let Some(r) = steer(&ctx, false, src, dst, dport)
        && let Some(ip) = r.addr.be_u32()
    {
        sa.user_ip4 = ip;
        sa.user_port = u32::from(r.port.to_be());
    }
    ALLOW
}
