//! Atomic adds to map values that every CPU updates. The BPF target has no atomic
//! read-modify-write types (`AtomicI64` has no `fetch_add` there), so this is the intrinsic with
//! its result unused: a plain BPF XADD, on any kernel.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

/// Adds `delta` to `*p`, atomically.
///
/// # Safety
///
/// `p` points to an 8-aligned `i64` of a map value, valid for this run, that other CPUs update
/// only through atomics too.
#[inline(always)]
pub unsafe fn add(p: *mut i64, delta: i64) {
    // SAFETY: the caller's contract.
    unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(p, delta) };
}
