//! Which network namespace a socket belongs to, named as the agent names a pod's namespace: by
//! its nsfs inode number. A socket is made in its creator's namespace, so sock_create reads
//! `current->nsproxy->net_ns->ns.inum` (offsets from the kernel's BTF, set by the agent as for
//! `owner.rs`). No helper gives that number, and `bpf_get_netns_cookie` gives a cookie the
//! agent cannot learn for a namespace it has not entered.
use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
};
use meshsteer_common::globals::NetnsOffsets;

use crate::{
    ctx::Sock,
    maps::{POD_NETNS, SOCK_NETNS},
    pod::sk_storage,
};

/// Set by the agent at load (`NETNS_OFFSETS`), from the kernel's BTF.
#[unsafe(no_mangle)]
static NETNS_OFFSETS: NetnsOffsets = NetnsOffsets {
    task_nsproxy: 0,
    nsproxy_net_ns: 0,
    net_inum: 0,
    valid: 0,
};

/// The current task's network namespace, or `None` where it cannot be read (offsets unset).
#[inline(always)]
fn current_netns() -> Option<u64> {
    // SAFETY: a read of our own global; volatile so the compiler keeps the load-time value.
    let off = unsafe { core::ptr::read_volatile(&raw const NETNS_OFFSETS) };
    if off.valid == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks every read; a bad address yields an error.
    unsafe {
        let task = bpf_get_current_task();
        let nsproxy: u64 =
            bpf_probe_read_kernel((task + u64::from(off.task_nsproxy)) as *const u64).ok()?;
        // A task that is exiting has none.
        if nsproxy == 0 {
            return None;
        }
        let net: u64 =
            bpf_probe_read_kernel((nsproxy + u64::from(off.nsproxy_net_ns)) as *const u64).ok()?;
        let inum: u32 =
            bpf_probe_read_kernel((net + u64::from(off.net_inum)) as *const u32).ok()?;
        Some(u64::from(inum))
    }
}

/// Remembers the namespace `sk` is being made in (call at socket creation only).
#[inline(always)]
pub fn record(sk: Sock) {
    if let Some(inum) = current_netns()
        && let Some(slot) = sk_storage(&SOCK_NETNS, sk, BPF_SK_STORAGE_GET_F_CREATE.into())
    {
        *slot = inum;
    }
}

/// Whether `sk` was made in the network namespace the agent attached `pod_cgroup`'s inbound
/// capture to. False when either is unknown.
#[inline(always)]
pub fn in_pod_netns(sk: Sock, pod_cgroup: u64) -> bool {
    let Some(&mut mine) = sk_storage(&SOCK_NETNS, sk, 0) else {
        return false;
    };
    // SAFETY: plain value copied out of the map.
    POD_NETNS
        .get_ptr(pod_cgroup)
        .is_some_and(|pod| mine != 0 && unsafe { *pod } == mine)
}
