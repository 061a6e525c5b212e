//! Which network namespace a socket belongs to, named as the agent names a pod's namespace: by
//! its nsfs inode number, `sk->__sk_common.skc_net.net->ns.inum` (offsets from the kernel's
//! BTF, set by the agent as for `owner.rs`). A socket keeps the namespace it was made in, so
//! sockops reads it at listen() and nothing is stored per socket. No helper gives that number,
//! and `bpf_get_netns_cookie` gives a cookie the agent cannot learn for a namespace it has not
//! entered.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use meshsteer_common::globals::NetnsOffsets;

use crate::{ctx::Sock, maps::POD_NETNS};

/// Set by the agent at load (`NETNS_OFFSETS`), from the kernel's BTF.
#[unsafe(no_mangle)]
static NETNS_OFFSETS: NetnsOffsets = NetnsOffsets {
    sock_net: 0,
    net_inum: 0,
    valid: 0,
};

/// The network namespace `sk` was made in, or `None` where it cannot be read (offsets unset).
#[inline(always)]
fn sock_netns(sk: Sock) -> Option<u64> {
    // SAFETY: a read of our own global; volatile so the compiler keeps the load-time value.
    let off = unsafe { core::ptr::read_volatile(&raw const NETNS_OFFSETS) };
    if off.valid == 0 {
        return None;
    }
    let sk = sk.kernel_addr()?;
    // SAFETY: bpf_probe_read_kernel checks every read; a bad address yields an error.
    unsafe {
        let net: u64 = bpf_probe_read_kernel((sk + u64::from(off.sock_net)) as *const u64).ok()?;
        let inum: u32 =
            bpf_probe_read_kernel((net + u64::from(off.net_inum)) as *const u32).ok()?;
        Some(u64::from(inum))
    }
}

/// Whether `sk` was made in the network namespace the agent attached `pod_cgroup`'s inbound
/// capture to. False when either is unknown.
#[inline(always)]
pub fn in_pod_netns(sk: Sock, pod_cgroup: u64) -> bool {
    // SAFETY: plain value copied out of the map.
    let Some(pod) = POD_NETNS.get_ptr(pod_cgroup).map(|p| unsafe { *p }) else {
        return false;
    };
    pod != 0 && sock_netns(sk) == Some(pod)
}
