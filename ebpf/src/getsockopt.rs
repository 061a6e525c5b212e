//! cgroup/getsockopt: answer `SOL_IP/SO_ORIGINAL_DST` and `SOL_IPV6/IP6T_SO_ORIGINAL_DST` in
//! enrolled pods as netfilter's conntrack does under istio-iptables: a redirected
//! connection's proxy side gets its original destination from `MS_ORIG_DST`, any other
//! connection its own original destination. A connection to the proxy's capture port on
//! loopback whose entry is missing (it could not be stored) gets ENOENT, as a conntrack miss
//! does: never the proxy's own address, which would make it connect to itself. Every other
//! call passes through untouched.
use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use meshsteer_common::{
    Addr,
    maps::{counter, sock_flags},
};

use crate::{
    ctx::{Ends, NetnsCookie, SockoptCtx},
    orig_dst,
    pod::{count, pod_config, pod_of_current_task, sock_state},
    sockaddr::{SockaddrIn, SockaddrIn6},
    tuple,
};

const ENOENT: i32 = 2;

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST` share the number.
const SO_ORIGINAL_DST: i32 = 80;
/// The program sees at most a page of optval; beyond that, optlen 0 tells the kernel to
/// return the original buffer untouched (Documentation/bpf/prog_cgroup_sockopt.rst).
const PAGE_SIZE: i32 = 4096;

#[cgroup_sockopt(getsockopt)]
pub fn getsockopt(ctx: SockoptContext) -> i32 {
    let (level, optname, optlen) = (ctx.level(), ctx.optname(), ctx.optlen());
    if optname == SO_ORIGINAL_DST && (level == SOL_IP || level == SOL_IPV6) {
        answer(&ctx, level == SOL_IPV6);
    } else if optlen > PAGE_SIZE {
        ctx.set_optlen(0);
    }
    // 1: return to user space (with whatever the kernel or we put in optval).
    1
}

#[inline(always)]
fn answer(ctx: &SockoptContext, ipv6_level: bool) {
    let sk = ctx.sock();
    let (local, remote) = sk.ends();
    let key = tuple::key(ctx.netns_cookie(), local, remote);
    let pod = pod_of_current_task();
    let (addr, port_be, hit) = match orig_dst::find(&key) {
        // SAFETY: value pointer valid for this run; copied out at once.
        Some(p) => unsafe { ((*p).addr, (*p).port_be, true) },
        None => {
            let Some(pod_cgroup) = pod else { return };
            // Before the kernel's answer: a conntrack of the host's would answer the
            // loopback connection with the proxy's own address.
            if to_capture_port(pod_cgroup, &local) {
                count(pod_cgroup, counter::ORIG_DST_NOT_FOUND);
                ctx.fail(ENOENT);
                return;
            }
            if ctx.retval() == 0 {
                return;
            }
            // Un-redirected connection of an enrolled pod. Under istio-iptables conntrack
            // tracks it and answers with the connection's original destination: the peer for
            // the side that connected, our own address for the side that accepted.
            let (a, p) = match sock_state(sk) {
                Some(s) if s.flags & sock_flags::REDIRECTED != 0 => (s.orig_addr, s.orig_port_be),
                Some(s) if s.flags & sock_flags::OWNER_KNOWN != 0 => remote,
                _ => local,
            };
            (a, p, false)
        }
    };
    let written = write_sockaddr(ctx, ipv6_level, &addr, port_be);
    if let Some(pod_cgroup) = pod {
        let c = if written && hit {
            counter::ORIG_DST_HIT
        } else {
            counter::ORIG_DST_MISS
        };
        count(pod_cgroup, c);
    }
}

/// Whether `local` (the asking socket's own end) is where meshsteer redirects connections to:
/// the pod's outbound or inbound capture port on loopback. A connection there without an
/// entry is a redirected one whose original destination could not be stored.
#[inline(always)]
fn to_capture_port(pod_cgroup: u64, local: &(Addr, u16)) -> bool {
    let Some(cfg) = pod_config(pod_cgroup) else {
        return false;
    };
    let port = u16::from_be(local.1);
    local.0.is_loopback() && (port == cfg.proxy_port || port == cfg.inbound_port)
}

/// Writes the answer into optval and reports success, if optval can hold it.
#[inline(always)]
fn write_sockaddr(ctx: &SockoptContext, ipv6_level: bool, addr: &Addr, port_be: u16) -> bool {
    if ipv6_level {
        ctx.reply(SockaddrIn6::new(addr, port_be))
    } else if let Some(v4) = addr.be_u32() {
        ctx.reply(SockaddrIn::new(v4, port_be))
    } else {
        // An IPv6 connection asked about at the IPv4 level: conntrack has nothing either.
        false
    }
}
