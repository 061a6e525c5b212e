//! Original destinations of redirected connections (`MS_ORIG_DST`), with each pod's budget of
//! live entries (`MS_POD_LIVE`). An entry is stored when the connection's SYN is sent and freed
//! when its connection ends, never evicted; a pod at its budget gets no more (its redirected
//! connect()s fail instead). Connections redirected before an upgrade from layout 2 keep their
//! entries in the adopted LRU map, `MS_ORIG_DST_V2`, which is read and freed as a fallback.
use aya_ebpf::bindings::BPF_NOEXIST;
use meshsteer_common::maps::{OrigDst, PodLive, TupleKey};

use crate::{
    atomic,
    maps::{ORIG_DST, ORIG_DST_V2, POD_LIVE},
};

/// The pod's live-entry count, for atomic updates.
#[inline(always)]
fn live(pod_cgroup: u64) -> Option<*mut PodLive> {
    POD_LIVE.get_ptr_mut(pod_cgroup)
}

/// Adds `delta` to the pod's live count, atomically.
#[inline(always)]
fn add(p: *mut PodLive, delta: i64) {
    // SAFETY: a map value, 8-aligned and valid for this run; other CPUs update it only
    // through atomics too.
    unsafe { atomic::add(&raw mut (*p).orig_dst, delta) };
}

/// Whether the pod holds its whole budget of live entries (a pod without a count, enrolled by
/// an agent of an older layout, has no budget yet).
#[inline(always)]
pub fn over_budget(pod_cgroup: u64) -> bool {
    let Some(p) = live(pod_cgroup) else {
        return false;
    };
    // SAFETY: as in `add`; a plain read is one aligned 8-byte load.
    let (count, limit) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*p).orig_dst),
            (*p).orig_dst_limit,
        )
    };
    count >= limit
}

/// Why an entry was not stored.
pub enum NotStored {
    /// The pod holds its budget (a connect() of its that passed the check just before).
    OverBudget,
    /// The map said no (full: only past every pod's budget and slack).
    MapFull,
}

/// Stores a connection's original destination, counted against its pod.
#[inline(always)]
pub fn publish(key: &TupleKey, orig: &OrigDst) -> Result<(), NotStored> {
    let p = live(orig.pod_cgroup);
    if let Some(p) = p {
        if over_budget(orig.pod_cgroup) {
            return Err(NotStored::OverBudget);
        }
        add(p, 1);
    }
    if ORIG_DST.insert(key, orig, u64::from(BPF_NOEXIST)).is_err() {
        if let Some(p) = p {
            add(p, -1);
        }
        return Err(NotStored::MapFull);
    }
    Ok(())
}

/// The connection's entry, if it has one (in the adopted layout-2 map after an upgrade).
#[inline(always)]
pub fn find(key: &TupleKey) -> Option<*mut OrigDst> {
    ORIG_DST
        .get_ptr_mut(key)
        .or_else(|| ORIG_DST_V2.get_ptr_mut(key))
}

/// Frees the connection's entry and its pod's count; false if it had none.
#[inline(always)]
pub fn free(key: &TupleKey) -> bool {
    if let Some(e) = ORIG_DST.get_ptr(key) {
        // SAFETY: a value of the map, read at once.
        let pod_cgroup = unsafe { (*e).pod_cgroup };
        // Only the remover that wins uncounts: the entry is counted once.
        if ORIG_DST.remove(key).is_ok() {
            if let Some(p) = live(pod_cgroup) {
                add(p, -1);
            }
            return true;
        }
        return false;
    }
    ORIG_DST_V2.remove(key).is_ok()
}
