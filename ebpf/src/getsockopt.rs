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
    maps::{PodConfig, counter, sock_flags},
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
    // Every other getsockopt() of the node's sockets comes through here: one field read
    // decides for nearly all of them.
    if ctx.optname() == SO_ORIGINAL_DST {
        let level = ctx.level();
        if level == SOL_IP || level == SOL_IPV6 {
            answer(&ctx, level == SOL_IPV6);
            return 1;
        }
    }
    if ctx.optlen() > PAGE_SIZE {
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
    if let Some(p) = orig_dst::find(&key) {
        // A redirected connection's proxy side: the entry says where it went, and whose it
        // is (the pod that published it), so no cgroup walk.
        // SAFETY: value pointer valid for this run; copied out at once.
        let (addr, port_be, pod_cgroup) = unsafe { ((*p).addr, (*p).port_be, (*p).pod_cgroup) };
        let c = if write_sockaddr(ctx, ipv6_level, &addr, port_be) {
            counter::ORIG_DST_HIT
        } else {
            counter::ORIG_DST_MISS
        };
        count(pod_cgroup, c);
        return;
    }
    // Only a connection at a capture port on loopback is refused (`to_capture_port`); any
    // other the kernel answered keeps its answer: neither needs the pod.
    if !local.0.is_loopback() && ctx.retval() == 0 {
        return;
    }
    let state = sock_state(sk);
    let Some((pod_cgroup, cfg)) = pod_of_socket(state.as_ref().map_or(0, |s| s.pod_cgroup)) else {
        return;
    };
    // Before the kernel's answer: a conntrack of the host's would answer the loopback
    // connection with the proxy's own address.
    if to_capture_port(cfg, &local) {
        count(pod_cgroup, counter::ORIG_DST_NOT_FOUND);
        ctx.fail(ENOENT);
        return;
    }
    if ctx.retval() == 0 {
        return;
    }
    // Un-redirected connection of an enrolled pod. Under istio-iptables conntrack tracks it
    // and answers with the connection's original destination: the peer for the side that
    // connected, our own address for the side that accepted.
    let (addr, port_be) = match state {
        Some(s) if s.flags & sock_flags::REDIRECTED != 0 => (s.orig_addr, s.orig_port_be),
        Some(s) if s.flags & sock_flags::OWNER_KNOWN != 0 => remote,
        _ => local,
    };
    write_sockaddr(ctx, ipv6_level, &addr, port_be);
    count(pod_cgroup, counter::ORIG_DST_MISS);
}

/// The enrolled pod of the asking socket and its config: the pod its storage recorded (at
/// creation, or when its proxy claimed it), else, for a socket without one (accepted and not
/// claimed) or whose pod has gone, the asking task's.
#[inline(always)]
fn pod_of_socket(recorded: u64) -> Option<(u64, &'static PodConfig)> {
    if recorded != 0
        && let Some(cfg) = pod_config(recorded)
    {
        return Some((recorded, cfg));
    }
    pod_of_current_task()
}

/// Whether `local` (the asking socket's own end) is where meshsteer redirects connections to:
/// the pod's outbound or inbound capture port on loopback. A connection there without an
/// entry is a redirected one whose original destination could not be stored.
#[inline(always)]
fn to_capture_port(cfg: &PodConfig, local: &(Addr, u16)) -> bool {
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
