//! Socket-level acceleration, sockops side: when a connection of an accelerated pod is
//! established within the pod's network namespace (app ↔ its sidecar over loopback, sidecar →
//! app from 127.0.0.6, anything to the pod's own addresses), both of its sockets go into
//! `MS_SOCKS` under their own view of the connection. `sk_msg.rs` then hands each send to the
//! peer found under the mirrored view.
//!
//! The connecting side is established first (its ACK makes the other side), so it is inserted
//! and leaves the accepting side's view in `MS_ACCEL_PENDING`; the accepting side joins when
//! it finds itself there. Nothing else is needed at close: the kernel drops a closing socket
//! from every sockmap, and its storage goes with it.
//!
//! `MS_ACCEL_PENDING_COUNT` says whether any such view may be waiting: on a node where no pod
//! accelerates (the default), an accepted connection then skips the lookup, which every
//! accept of every enrolled pod would otherwise pay.
use aya_ebpf::{bindings::BPF_ANY, programs::SockOpsContext};
use meshsteer_common::{
    maps::{
        PodConfig, TupleKey,
        accel::{AccelState, cfg_flags, state_flags},
        counter, pod_flags,
    },
    tables::PodTables,
};

use crate::{
    atomic,
    ctx::{Sock, SockOpsCtx},
    maps::{ACCEL_CFG, ACCEL_PENDING, ACCEL_PENDING_COUNT, ACCEL_STATE, SOCKS},
    pod::{MapTables, count, pod_config, sk_storage, sock_state},
    tuple::{mirrored, own_view},
};

const CREATE: u64 = aya_ebpf::bindings::BPF_SK_STORAGE_GET_F_CREATE as u64;

/// ACTIVE_ESTABLISHED_CB: the connecting side of a connection.
#[inline(never)]
pub fn connected(ctx: &SockOpsContext) {
    let Some(sk) = ctx.sock() else { return };
    // Sockets created in an enrolled pod carry their pod since sock_create.
    let Some(pod_cgroup) = sock_state(sk).map(|s| s.pod_cgroup).filter(|p| *p != 0) else {
        return;
    };
    let Some(cfg) = pod_config(pod_cgroup) else {
        return;
    };
    if cfg.flags & pod_flags::ACCELERATE == 0 {
        return;
    }
    let view = own_view(ctx);
    if !stays_in_pod(cfg, &view) {
        // To another pod, on this node or not: the peer socket, if here at all, lives in
        // another network namespace.
        count(pod_cgroup, counter::ACCEL_CROSS_POD);
        return;
    }
    if !capable() {
        count(pod_cgroup, counter::ACCEL_UNSUPPORTED);
        return;
    }
    if insert(ctx, sk, view, pod_cgroup) {
        let peer = mirrored(&view);
        // Counted before the insert: the accepting side looks only once this side's ACK
        // arrives, and must see the count by then.
        count_pending(1);
        if ACCEL_PENDING
            .insert(peer, pod_cgroup, BPF_ANY.into())
            .is_err()
        {
            count_pending(-1);
        }
    }
}

/// PASSIVE_ESTABLISHED_CB: the accepting side joins if its connecting side was inserted.
#[inline(never)]
pub fn accepted(ctx: &SockOpsContext) {
    if !pending_may_exist() {
        return;
    }
    let Some(sk) = ctx.sock() else { return };
    let view = own_view(ctx);
    // SAFETY: plain data, copied out at once.
    let Some(pod_cgroup) = ACCEL_PENDING.get_ptr(view).map(|p| unsafe { *p }) else {
        return;
    };
    if ACCEL_PENDING.remove(view).is_ok() {
        count_pending(-1);
    }
    insert(ctx, sk, view, pod_cgroup);
}

/// Whether `MS_ACCEL_PENDING` may hold an entry. The count is a hint that errs high: added
/// before each insert, taken after each remove, left as it is when the LRU map evicts.
#[inline(always)]
fn pending_may_exist() -> bool {
    // SAFETY: a map value, 8-aligned; one aligned 8-byte load.
    ACCEL_PENDING_COUNT
        .get_ptr(0)
        .is_some_and(|p| unsafe { core::ptr::read_volatile(p) } > 0)
}

/// Adds `delta` to the pending count, atomically.
#[inline(always)]
fn count_pending(delta: i64) {
    if let Some(p) = ACCEL_PENDING_COUNT.get_ptr_mut(0) {
        // SAFETY: a map value, valid for this run; other CPUs update it only through atomics.
        unsafe { atomic::add(p, delta) };
    }
}

/// Loopback, or one of the pod's own addresses: the peer socket is in the same namespace.
#[inline(always)]
fn stays_in_pod(cfg: &PodConfig, view: &TupleKey) -> bool {
    view.remote.is_loopback() || MapTables::new(cfg).is_pod_address(&view.remote)
}

#[inline(always)]
fn capable() -> bool {
    ACCEL_CFG
        .get(0)
        .is_some_and(|c| c.flags & cfg_flags::CAPABLE != 0)
}

/// State first (the sk_msg program needs it from the first send), then the sockhash.
#[inline(never)]
fn insert(ctx: &SockOpsContext, sk: Sock, mut view: TupleKey, pod_cgroup: u64) -> bool {
    let Some(state) = sk_storage(&ACCEL_STATE, sk, CREATE) else {
        return false;
    };
    *state = AccelState {
        pod_cgroup,
        flags: 0,
        _pad: 0,
    };
    if ctx.store_in(&SOCKS, &mut view).is_err() {
        state.flags = state_flags::NORMAL_PATH;
        count(pod_cgroup, counter::ACCEL_MAP_FULL);
        return false;
    }
    count(pod_cgroup, counter::ACCEL_SOCKETS);
    true
}
