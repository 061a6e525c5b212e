//! sockops: once a redirected connect() has its source port (TCP_CONNECT_CB), publish its
//! original destination under the tuple the proxy will see; drop it when the socket closes.
//! And when a pod's proxy listens on its inbound port (TCP_LISTEN_CB), register that listener
//! for sk_lookup.
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_TCP_CLOSE,
    },
    helpers::generated::bpf_get_netns_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use aya_log_ebpf::warn;
use meshsteer_common::maps::{ListenerKey, OrigDst, SockState, TupleKey, counter, sock_flags};

use crate::{
    maps::{LISTENERS, ORIG_DST},
    pod::{count, pod_config, sock_state},
    tuple,
};

#[sock_ops]
pub fn ms_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => publish(&ctx),
        BPF_SOCK_OPS_TCP_LISTEN_CB => register_listener(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => unpublish(&ctx),
        _ => {}
    }
    0
}

/// The pod's proxy starts listening on its inbound port: from its first SYN on, sk_lookup
/// steers inbound connections to this socket (no agent round trip, no race with restarts).
#[inline(always)]
fn register_listener(ctx: &SockOpsContext) {
    // SAFETY: valid ctx; `sk` may be NULL.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    let Some(state) = sock_state(sk.cast()) else {
        return;
    };
    let Some(cfg) = pod_config(state.pod_cgroup) else {
        return;
    };
    if ctx.local_port() != u32::from(cfg.inbound_port) {
        return;
    }
    let mut key = ListenerKey {
        pod_cgroup: state.pod_cgroup,
        family: ctx.family(),
        _pad: 0,
    };
    // SAFETY: the ctx is the bpf_sock_ops the helper expects.
    let _ = LISTENERS.update(&mut key, unsafe { &mut *ctx.ops }, BPF_ANY.into());
}

/// The redirected socket's state, if this socket is one.
#[inline(always)]
fn redirected(ctx: &SockOpsContext) -> Option<&'static mut SockState> {
    // SAFETY: valid ctx; `sk` may be NULL (checked by `sock_state`'s helper contract below).
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    sock_state(sk.cast()).filter(|s| s.flags & sock_flags::REDIRECTED != 0)
}

#[inline(always)]
fn connection_key(ctx: &SockOpsContext) -> TupleKey {
    let family = ctx.family();
    let ops = ctx.ops;
    // SAFETY: fields of the hook's ctx.
    let (proxy, app) = unsafe {
        (
            tuple::addr(
                family,
                &raw const (*ops).remote_ip4,
                &raw const (*ops).remote_ip6,
            ),
            tuple::addr(
                family,
                &raw const (*ops).local_ip4,
                &raw const (*ops).local_ip6,
            ),
        )
    };
    // remote_port holds the network-order port in its upper half; local_port is host order.
    let proxy_port_be = (ctx.remote_port() >> 16) as u16;
    let app_port_be = (ctx.local_port() as u16).to_be();
    // SAFETY: plain helper call on the ctx.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    tuple::key(netns, (proxy, proxy_port_be), (app, app_port_be))
}

#[inline(always)]
fn publish(ctx: &SockOpsContext) {
    let Some(state) = redirected(ctx) else { return };
    let orig = OrigDst {
        addr: state.orig_addr,
        port_be: state.orig_port_be,
        _pad: [0; 6],
    };
    if ORIG_DST.insert(connection_key(ctx), orig, 0).is_ok() {
        state.flags |= sock_flags::PUBLISHED;
        // Ask for state callbacks so the entry goes away with the connection.
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    } else {
        count(state.pod_cgroup, counter::ORIG_DST_MAP_FULL);
        warn!(
            ctx,
            "MS_ORIG_DST insert failed: the proxy will not learn this original destination"
        );
    }
}

#[inline(always)]
fn unpublish(ctx: &SockOpsContext) {
    let Some(state) = redirected(ctx) else { return };
    if state.flags & sock_flags::PUBLISHED == 0 {
        return;
    }
    state.flags &= !sock_flags::PUBLISHED;
    if ORIG_DST.remove(connection_key(ctx)).is_err() {
        // The LRU evicted a live connection's entry: its proxy may have asked in vain.
        count(state.pod_cgroup, counter::ORIG_DST_EVICTED);
    }
}
