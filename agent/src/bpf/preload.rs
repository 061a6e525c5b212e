//! sk_lookup trampolines loaded ahead of time, for the slots pods will take (the lowest free
//! ones, up to the node's pod limit): a burst of new pods then finds each pod's trampoline
//! pinned already, instead of loading it on the enrolment path. There the load was two fifths
//! of the agent's time in a 1,000-pod burst (profiled), half of that the JIT, which patches
//! kernel text and so interrupts every CPU.
//!
//! A thread of its own does the loads, so the agent enrols pods meanwhile: a pod that comes
//! before its slot's trampoline loads it itself, and whichever pins second uses the pin of the
//! first ([`ProgPins::get_or_load`]).
use std::{
    os::fd::{AsFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use anyhow::{Context, Result};
use tracing::{info, warn};

use super::{prog_pins::ProgPins, trampoline};

/// The most trampolines kept loaded for free slots: each is a page of the kernel's memory by
/// its own account (`memlock` 4096 in the program's fdinfo), charged to the agent's cgroup,
/// so 4 MiB and some bookkeeping at the cap. Pods past it load theirs at enrolment.
pub const MAX_POOL: u32 = 1024;

/// The slots whose trampolines stay loaded, taken or not: 1 to this.
pub fn pool_size(max_pods: u32) -> u32 {
    max_pods.min(MAX_POOL)
}

/// The loading thread, stopped and joined on drop (before an uninstall removes the pins).
pub struct Preloader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Preloader {
    /// Loads and pins the trampolines of slots 1 to `pool` that this build has not pinned,
    /// with `slots` and `prog_array` the maps every trampoline names.
    pub fn start(
        progs: ProgPins,
        slots: &OwnedFd,
        prog_array: &OwnedFd,
        pool: u32,
    ) -> Result<Self> {
        let (slots, array) = (slots.try_clone()?, prog_array.try_clone()?);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sk-lookup-preload".into())
            .spawn(move || {
                let started = Instant::now();
                let pinned = progs.pinned_trampolines();
                let mut loaded = 0;
                for slot in (1..=pool).filter(|s| !pinned.contains(s)) {
                    if stopped.load(Ordering::Relaxed) {
                        return;
                    }
                    let load = || trampoline::load(slot, slots.as_fd(), array.as_fd());
                    if let Err(e) = progs.trampoline(slot, load) {
                        // Pods load theirs at enrolment instead, as without the pool.
                        warn!(error = %format!("{e:#}"), slot, "preloading sk_lookup trampolines stopped");
                        return;
                    }
                    loaded += 1;
                }
                info!(
                    slots = pool,
                    loaded,
                    ms = started.elapsed().as_millis(),
                    "sk_lookup trampolines ready for the node's pods"
                );
            })
            .context("starting the sk_lookup preload thread")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Preloader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // At most one load (under a millisecond) still to finish.
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_the_pod_limit_up_to_its_cap() {
        assert_eq!(pool_size(1), 1);
        assert_eq!(pool_size(128), 128);
        assert_eq!(pool_size(4096), MAX_POOL);
    }
}
