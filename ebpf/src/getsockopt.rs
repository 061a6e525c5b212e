//! cgroup/getsockopt: answer `SOL_IP/SO_ORIGINAL_DST` and `SOL_IPV6/IP6T_SO_ORIGINAL_DST` in
//! enrolled pods as netfilter's conntrack does under istio-iptables: a redirected
//! connection's proxy side gets its original destination from `MS_ORIG_DST`, any other
//! connection its own original destination. Every other call passes through untouched.
use core::{mem::size_of, ptr};

use aya_ebpf::{
    EbpfContext, helpers::generated::bpf_get_netns_cookie, macros::cgroup_sockopt,
    programs::SockoptContext,
};
use meshsteer_common::{
    Addr,
    maps::{counter, sock_flags},
};

use crate::{
    maps::ORIG_DST,
    pod::{count, pod_of_current_task, sock_state},
    sockaddr::{SockaddrIn, SockaddrIn6},
    tuple,
};

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST` share the number.
const SO_ORIGINAL_DST: i32 = 80;
/// The program sees at most a page of optval; beyond that, optlen 0 tells the kernel to
/// return the original buffer untouched (Documentation/bpf/prog_cgroup_sockopt.rst).
const PAGE_SIZE: i32 = 4096;

#[cgroup_sockopt(getsockopt)]
pub fn getsockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: valid ctx for the whole run.
    let (level, optname, optlen) = unsafe { ((*so).level, (*so).optname, (*so).optlen) };
    if optname == SO_ORIGINAL_DST && (level == SOL_IP || level == SOL_IPV6) {
        answer(&ctx, level == SOL_IPV6);
    } else if optlen > PAGE_SIZE {
        // SAFETY: optlen is writable in getsockopt programs.
        unsafe { ptr::write_volatile(&raw mut (*so).optlen, 0) };
    }
    // 1: return to user space (with whatever the kernel or we put in optval).
    1
}

#[inline(always)]
fn answer(ctx: &SockoptContext, ipv6_level: bool) {
    let so = ctx.sockopt;
    // SAFETY: getsockopt programs always run on a full socket; fields are read in place.
    let (local, remote, sk) = unsafe {
        let sk = (*so).__bindgen_anon_1.sk;
        let family = (*sk).family;
        (
            tuple::addr(family, &raw const (*sk).src_ip4, &raw const (*sk).src_ip6),
            tuple::addr(family, &raw const (*sk).dst_ip4, &raw const (*sk).dst_ip6),
            sk,
        )
    };
    // SAFETY: as above.
    let (local_port_be, remote_port_be) =
        unsafe { (((*sk).src_port as u16).to_be(), (*sk).dst_port) };
    // SAFETY: plain helper call on the ctx.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let key = tuple::key(netns, (local, local_port_be), (remote, remote_port_be));
    let pod = pod_of_current_task();
    let (addr, port_be, hit) = match ORIG_DST.get_ptr(key) {
        // SAFETY: value pointer valid for this run; copied out at once.
        Some(p) => unsafe { ((*p).addr, (*p).port_be, true) },
        None => {
            // SAFETY: valid ctx.
            let kernel_answered = unsafe { (*so).retval } == 0;
            if pod.is_none() || kernel_answered {
                return;
            }
            // Un-redirected connection of an enrolled pod. Under istio-iptables conntrack
            // tracks it and answers with the connection's original destination: the peer for
            // the side that connected, our own address for the side that accepted.
            let (a, p) = match sock_state(sk.cast()) {
                Some(s) if s.flags & sock_flags::REDIRECTED != 0 => (s.orig_addr, s.orig_port_be),
                Some(s) if s.flags & sock_flags::OWNER_KNOWN != 0 => (remote, remote_port_be),
                _ => (local, local_port_be),
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

/// Writes the answer into optval and reports success, if optval can hold it.
#[inline(always)]
fn write_sockaddr(ctx: &SockoptContext, ipv6_level: bool, addr: &Addr, port_be: u16) -> bool {
    let so = ctx.sockopt;
    // SAFETY: valid ctx.
    let (start, end) = unsafe {
        (
            (*so).__bindgen_anon_2.optval,
            (*so).__bindgen_anon_3.optval_end,
        )
    };
    let len = if ipv6_level {
        size_of::<SockaddrIn6>()
    } else if addr.is_ipv4() {
        size_of::<SockaddrIn>()
    } else {
        // An IPv6 connection asked about at the IPv4 level: conntrack has nothing either.
        return false;
    };
    if (start as usize) + len > end as usize {
        return false;
    }
    // SAFETY: [start, start + len) was just checked against optval_end.
    unsafe {
        if ipv6_level {
            ptr::write_unaligned(start.cast::<SockaddrIn6>(), SockaddrIn6::new(addr, port_be));
        } else if let Some(v4) = addr.be_u32() {
            ptr::write_unaligned(start.cast::<SockaddrIn>(), SockaddrIn::new(v4, port_be));
        }
        // Two separate stores: merged into one 8-byte store, the verifier rejects them.
        ptr::write_volatile(&raw mut (*so).optlen, len as i32);
        ptr::write_volatile(&raw mut (*so).retval, 0);
    }
    true
}
