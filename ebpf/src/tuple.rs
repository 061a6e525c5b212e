//! Connection keys: a socket's view of its connection (local, remote) plus the network
//! namespace cookie, so equal tuples in two pods never meet. A redirected connection's
//! original destination is published under the view of the proxy's accepted socket; an
//! accelerated socket is stored under its own view and finds its peer under the mirror.
use core::{ffi::c_void, ptr};

use aya_ebpf::{EbpfContext, helpers::generated::bpf_get_netns_cookie, programs::SockOpsContext};
use meshsteer_common::{Addr, maps::TupleKey};

use crate::sockaddr::AF_INET6;

/// An address from a context's `(family, ip4, ip6)` fields. Both fields are always read and
/// the family picks a value afterwards: branching first lets LLVM merge the two branches'
/// loads into one load through a chosen pointer, which the verifier rejects ("dereference of
/// modified ctx ptr").
///
/// # Safety
/// Both pointers must point into the hook's ctx (or a socket the verifier knows).
#[inline(always)]
pub unsafe fn addr(family: u32, ip4: *const u32, ip6: *const [u32; 4]) -> Addr {
    // SAFETY: caller's contract.
    let (v4, v6) = unsafe { (ptr::read_volatile(ip4), words(ip6)) };
    if family == AF_INET6 as u32 {
        Addr::from_be_words(v6)
    } else {
        Addr::from_be_u32(v4)
    }
}

/// Reads an IPv6 address field one 4-byte word at a time (the only width the verifier
/// accepts for these ctx fields).
///
/// # Safety
/// `p` must point into the hook's ctx or a verified socket.
#[inline(always)]
pub unsafe fn words(p: *const [u32; 4]) -> [u32; 4] {
    // SAFETY: caller's contract; the four words are in bounds.
    unsafe {
        [
            ptr::read_volatile(&raw const (*p)[0]),
            ptr::read_volatile(&raw const (*p)[1]),
            ptr::read_volatile(&raw const (*p)[2]),
            ptr::read_volatile(&raw const (*p)[3]),
        ]
    }
}

/// `proxy` is where the connection was redirected to, `app` the side that connected.
#[inline(always)]
pub const fn key(netns_cookie: u64, proxy: (Addr, u16), app: (Addr, u16)) -> TupleKey {
    TupleKey {
        netns_cookie,
        local: proxy.0,
        remote: app.0,
        local_port_be: proxy.1,
        remote_port_be: app.1,
        _pad: 0,
    }
}

/// The socket's own view of its connection from a sockops or sk_msg ctx's fields, which
/// share their conventions: `remote_port` holds the network-order port in its upper half,
/// `local_port` is in host order.
///
/// # Safety
/// The address pointers must point into the hook's ctx.
#[inline(always)]
pub unsafe fn view_from_fields(
    netns_cookie: u64,
    family: u32,
    local: (*const u32, *const [u32; 4]),
    remote: (*const u32, *const [u32; 4]),
    local_port: u32,
    remote_port: u32,
) -> TupleKey {
    // SAFETY: caller's contract.
    let (l, r) = unsafe {
        (
            addr(family, local.0, local.1),
            addr(family, remote.0, remote.1),
        )
    };
    key(
        netns_cookie,
        (l, (local_port as u16).to_be()),
        (r, (remote_port >> 16) as u16),
    )
}

/// A sockops callback's socket (NULL for some callbacks).
#[inline(always)]
pub fn socket(ctx: &SockOpsContext) -> Option<*mut c_void> {
    // SAFETY: valid ctx; the field is a plain pointer, checked here.
    let sk: *mut c_void = unsafe { (*ctx.ops).__bindgen_anon_2.sk }.cast();
    (!sk.is_null()).then_some(sk)
}

/// A sockops socket's own view of its connection.
#[inline(always)]
pub fn own_view(ctx: &SockOpsContext) -> TupleKey {
    let ops = ctx.ops;
    // SAFETY: plain helper call on the ctx; the pointers are fields of the hook's ctx.
    unsafe {
        view_from_fields(
            bpf_get_netns_cookie(ctx.as_ptr()),
            ctx.family(),
            (&raw const (*ops).local_ip4, &raw const (*ops).local_ip6),
            (&raw const (*ops).remote_ip4, &raw const (*ops).remote_ip6),
            ctx.local_port(),
            ctx.remote_port(),
        )
    }
}

/// The same connection as the other end sees it (same network namespace).
#[inline(always)]
pub const fn mirrored(k: &TupleKey) -> TupleKey {
    key(
        k.netns_cookie,
        (k.remote, k.remote_port_be),
        (k.local, k.local_port_be),
    )
}
