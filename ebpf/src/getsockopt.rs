//! cgroup/getsockopt: answer `SOL_IP/SO_ORIGINAL_DST` and `SOL_IPV6/IP6T_SO_ORIGINAL_DST` on
//! a redirected connection's proxy side from `MS_ORIG_DST`, as netfilter's conntrack would.
//! Every other call passes through untouched.
use core::{mem::size_of, ptr};

use aya_ebpf::{
    EbpfContext, helpers::generated::bpf_get_netns_cookie, macros::cgroup_sockopt,
    programs::SockoptContext,
};
use meshsteer_common::{Addr, maps::counter};

use crate::{
    maps::ORIG_DST,
    pod::{count, pod_of_current_task},
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
    let (proxy, app, sk) = unsafe {
        let sk = (*so).__bindgen_anon_1.sk;
        let family = (*sk).family;
        (
            tuple::addr(family, &raw const (*sk).src_ip4, &raw const (*sk).src_ip6),
            tuple::addr(family, &raw const (*sk).dst_ip4, &raw const (*sk).dst_ip6),
            &*sk,
        )
    };
    // SAFETY: plain helper call on the ctx.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let key = tuple::key(
        netns,
        (proxy, (sk.src_port as u16).to_be()),
        (app, sk.dst_port),
    );
    let hit = ORIG_DST.get_ptr(key).map(|p| {
        // SAFETY: value pointer valid for this run; copied out at once.
        let o = unsafe { *p };
        (o.addr, o.port_be)
    });
    let written = match hit {
        Some((addr, port_be)) => write_sockaddr(ctx, ipv6_level, &addr, port_be),
        None => false,
    };
    if let Some(pod_cgroup) = pod_of_current_task() {
        let c = if written {
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
