//! A socket's owner as iptables' owner match (xt_owner) sees it: the fsuid and fsgid of the
//! credentials its file was opened with, which at socket creation are the current task's. The
//! helper `bpf_get_current_uid_gid` gives the *real* ids instead, which differ after seteuid
//! or setfsuid. The ids are kernel ids (`kuid_t`): a user-namespaced pod's uid 1337 is the
//! host uid it maps to, as the agent writes the pod's `-u`/`-g` (see `host::userns`).
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use meshsteer_common::globals::OwnerOffsets;

/// Set by the agent at load (`OWNER_OFFSETS`), from the kernel's BTF.
#[unsafe(no_mangle)]
static OWNER_OFFSETS: OwnerOffsets = OwnerOffsets {
    task_cred: 0,
    cred_fsuid: 0,
    cred_fsgid: 0,
    valid: 0,
};

/// The current task's fsuid and fsgid. Where the credentials cannot be read (offsets unset:
/// an object loaded without the agent), its real ids.
#[inline(always)]
pub fn current_owner() -> (u32, u32) {
    // SAFETY: a read of our own global; volatile so the compiler keeps the load-time value.
    let off = unsafe { core::ptr::read_volatile(&raw const OWNER_OFFSETS) };
    if off.valid != 0
        && let Some(ids) = fs_ids(&off)
    {
        return ids;
    }
    let ug = aya_ebpf::helpers::bpf_get_current_uid_gid();
    (ug as u32, (ug >> 32) as u32)
}

#[inline(always)]
fn fs_ids(off: &OwnerOffsets) -> Option<(u32, u32)> {
    // SAFETY: bpf_probe_read_kernel checks every read; a bad address yields an error.
    unsafe {
        let task = bpf_get_current_task();
        let cred: u64 =
            bpf_probe_read_kernel((task + u64::from(off.task_cred)) as *const u64).ok()?;
        let uid: u32 =
            bpf_probe_read_kernel((cred + u64::from(off.cred_fsuid)) as *const u32).ok()?;
        let gid: u32 =
            bpf_probe_read_kernel((cred + u64::from(off.cred_fsgid)) as *const u32).ok()?;
        Some((uid, gid))
    }
}
