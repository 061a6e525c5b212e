//! sockops: once a redirected connect() has its source port (TCP_CONNECT_CB), publish its
//! original destination under the tuple the proxy will see (a direct connection to a capture
//! port too, see `direct_to_capture_port`); drop it when the connection ends.
//! And when a pod's proxy listens on its inbound port (TCP_LISTEN_CB), register that listener
//! for sk_lookup. Established connections of accelerated pods go to `accel.rs`.
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_TCP_CLOSE,
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use aya_log_ebpf::warn;
use meshsteer_common::{
    Addr,
    inbound::may_listen,
    maps::{ListenerKey, OrigDst, SockState, TupleKey, counter, sock_flags},
};

use crate::{
    accel,
    ctx::{Ends, SockOpsCtx},
    maps::LISTENERS,
    netns,
    orig_dst::{self, NotStored},
    pod::{count, pod_config, sock_state, sock_state_or_create},
    tuple::{mirrored, own_view},
};

#[sock_ops]
pub fn ms_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => publish(&ctx),
        BPF_SOCK_OPS_TCP_LISTEN_CB => register_listener(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => accel::connected(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            claim(&ctx);
            accel::accepted(&ctx);
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => unpublish(&ctx),
        _ => {}
    }
    0
}

/// The pod's proxy starts listening on its inbound port: from its first SYN on, sk_lookup
/// steers inbound connections to this socket (no agent round trip, no race with restarts).
#[inline(always)]
fn register_listener(ctx: &SockOpsContext) {
    let Some(sk) = ctx.sock() else { return };
    let Some(state) = sock_state(sk) else {
        return;
    };
    let Some(cfg) = pod_config(state.pod_cgroup) else {
        return;
    };
    if ctx.local_port() != u32::from(cfg.inbound_port) {
        return;
    }
    // Anyone in the pod may listen on the inbound port, even from a network namespace of its
    // own; only the proxy's socket, made in the pod's namespace, may take the pod's inbound
    // connections (under iptables, only a listener there gets the REDIRECTed ones).
    let owner_known = state.flags & sock_flags::OWNER_KNOWN != 0;
    if !owner_known
        || !may_listen(cfg, state.uid, state.gid)
        || !netns::in_pod_netns(sk, state.pod_cgroup)
    {
        count(state.pod_cgroup, counter::IN_LISTENER_REFUSED);
        return;
    }
    let mut key = ListenerKey {
        pod_cgroup: state.pod_cgroup,
        family: ctx.family(),
        _pad: 0,
    };
    let _ = ctx.store_in(&LISTENERS, &mut key);
}

/// The connecting socket's connection as the proxy's accepted socket sees it.
#[inline(always)]
fn connection_key(ctx: &SockOpsContext) -> TupleKey {
    mirrored(&own_view(ctx))
}

/// A connection of an enrolled pod straight to its proxy's capture port on loopback (not
/// redirected: `-d 127.0.0.1 -j RETURN`). Its entry says where it went, as conntrack would: so
/// that a connection at a capture port *without* an entry is always a redirected one whose
/// entry is missing, and its proxy gets ENOENT instead of its own address (`getsockopt.rs`).
#[inline(always)]
fn direct_to_capture_port(ctx: &SockOpsContext, state: &SockState) -> Option<(Addr, u16)> {
    // Cheapest test first: most connections are not to loopback and need no config.
    let (_, (addr, port_be)) = ctx.ends();
    if !addr.is_loopback() {
        return None;
    }
    let cfg = pod_config(state.pod_cgroup)?;
    let port = u16::from_be(port_be);
    (port == cfg.proxy_port || port == cfg.inbound_port).then_some((addr, port_be))
}

#[inline(always)]
fn publish(ctx: &SockOpsContext) {
    let Some(state) = ctx.sock().and_then(sock_state) else {
        return;
    };
    // Published already: this is a second copy of the program in the chain (an upgrade from
    // layout 5 keeps the cgroup root's copy beside the pod's for a moment).
    if state.flags & sock_flags::PUBLISHED != 0 {
        return;
    }
    let (addr, port_be) = if state.flags & sock_flags::REDIRECTED != 0 {
        (state.orig_addr, state.orig_port_be)
    } else if let Some(direct) = direct_to_capture_port(ctx, state) {
        direct
    } else {
        return;
    };
    let orig = OrigDst {
        addr,
        port_be,
        claimed: 0,
        _pad: 0,
        pod_cgroup: state.pod_cgroup,
    };
    match orig_dst::publish(&connection_key(ctx), &orig) {
        Ok(()) => {
            state.flags |= sock_flags::PUBLISHED;
            // Ask for state callbacks so the entry goes away with the connection.
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        }
        // The proxy's SO_ORIGINAL_DST then fails (ENOENT): it never gets a wrong answer.
        Err(NotStored::OverBudget) => count(state.pod_cgroup, counter::ORIG_DST_OVER_BUDGET),
        Err(NotStored::MapFull) => {
            count(state.pod_cgroup, counter::ORIG_DST_MAP_FULL);
            warn!(
                ctx,
                "MS_ORIG_DST insert failed: the proxy will not learn this original destination"
            );
        }
    }
}

/// A proxy accepted a redirected connection: from now on its side frees the original
/// destination. Conntrack keeps it while either side lives; a proxy that accepts after the app
/// has already closed must still learn it (else it would connect to itself).
#[inline(always)]
fn claim(ctx: &SockOpsContext) {
    let view = own_view(ctx);
    // Entries are published only for connections to loopback (a redirect goes to the
    // family's localhost, `direct_to_capture_port` is loopback only): an accepted connection
    // on any other address has none, and needs no lookup.
    if !view.local.is_loopback() {
        return;
    }
    let Some(entry) = orig_dst::find(&view) else {
        return;
    };
    let Some(sk) = ctx.sock() else { return };
    let Some(state) = sock_state_or_create(sk) else {
        return;
    };
    state.flags |= sock_flags::ORIG_OWNER;
    // SAFETY: a value of the map, valid for this run.
    unsafe {
        (*entry).claimed = 1;
        state.pod_cgroup = (*entry).pod_cgroup;
    }
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

/// At close: the proxy's side frees the entry it claimed; the app's side frees it only if the
/// proxy never took the connection.
#[inline(always)]
fn unpublish(ctx: &SockOpsContext) {
    let Some(sk) = ctx.sock() else { return };
    let Some(state) = sock_state(sk) else {
        return;
    };
    if state.flags & sock_flags::ORIG_OWNER != 0 {
        state.flags &= !sock_flags::ORIG_OWNER;
        if !orig_dst::free(&own_view(ctx)) {
            // A live connection's entry was gone (evicted from the adopted layout-2 LRU map).
            count(state.pod_cgroup, counter::ORIG_DST_EVICTED);
        }
        return;
    }
    // Only redirected sockets publish.
    if state.flags & sock_flags::PUBLISHED == 0 {
        return;
    }
    state.flags &= !sock_flags::PUBLISHED;
    let key = connection_key(ctx);
    // SAFETY: a value of the map, read at once.
    let claimed = orig_dst::find(&key).is_some_and(|e| unsafe { (*e).claimed } != 0);
    if !claimed {
        orig_dst::free(&key);
    }
}
