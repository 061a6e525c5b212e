//! The datapath's counter maps: per-pod and node counters, and the live original
//! destinations. What each counter means and is called lives in `telemetry::catalog`.
use std::{thread, time::Duration};

use anyhow::{Context, Result};
use aya::{
    maps::{HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
    sys::SyscallError,
};
use meshsteer_common::maps::{OrigDst, PodCounters, PodLive, TupleKey, names};

use tracing::debug;

use super::pins::Pins;

/// The counter maps: per-pod counters (`MS_POD_STATS`), node counters (`MS_NODE_STATS`) and
/// the live original destinations, counted per pod by the datapath (`MS_POD_LIVE`), plus those
/// left in the drained layout-2 map (`MS_ORIG_DST_V2`). Reads never block the datapath.
pub struct Counters {
    pods: PerCpuHashMap<MapData, u64, PodCounters>,
    node: PerCpuArray<MapData, u64>,
    live: HashMap<MapData, u64, PodLive>,
    orig_dst_v2: HashMap<MapData, TupleKey, OrigDst>,
}

impl Counters {
    /// From the agent's pins: a reader of its own, independent of the agent's handles.
    pub fn from_pins(pins: &Pins) -> Result<Self> {
        Self::open(|name| pins.open_map(name))
    }

    pub(crate) fn open(mut get: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        Ok(Self {
            pods: get(names::POD_STATS)?.try_into()?,
            node: get(names::NODE_STATS)?.try_into()?,
            live: get(names::POD_LIVE)?.try_into()?,
            orig_dst_v2: get(names::ORIG_DST_V2)?.try_into()?,
        })
    }

    /// A pod's counters summed over CPUs (None: the pod has none, i.e. is not enrolled).
    pub fn pod(&self, cgroup_id: u64) -> Option<PodCounters> {
        let per_cpu = self.pods.get(&cgroup_id, 0).ok()?;
        let mut sum = PodCounters::default();
        for c in per_cpu.iter() {
            for (s, v) in sum.0.iter_mut().zip(c.0.iter()) {
                *s += v;
            }
        }
        Some(sum)
    }

    /// A node counter (`common::maps::node_counter`) summed over CPUs.
    pub fn node(&self, index: u32) -> u64 {
        self.node
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Pods with counters (one entry per enrolled pod).
    pub fn pod_entries(&self) -> usize {
        self.pods.keys().count()
    }

    /// Live published original destinations (the map's idle size is 0): one read per pod,
    /// not per entry, plus what an upgrade left in the drained layout-2 map (none once drained).
    pub fn orig_dst_entries(&self) -> usize {
        let counted: i64 = self
            .live
            .iter()
            .filter_map(Result::ok)
            .map(|(_, l)| l.orig_dst.max(0))
            .sum();
        usize::try_from(counted).unwrap_or(0) + self.orig_dst_v2.keys().count()
    }

    /// A pod's live original destinations and their budget.
    pub fn live(&self, cgroup_id: u64) -> Option<PodLive> {
        self.live.get(&cgroup_id, 0).ok()
    }

    /// Gives an enrolled pod its zeroed counters, unless it has some (kept across updates).
    pub(crate) fn ensure_pod(&mut self, cgroup_id: u64) -> Result<()> {
        if self.pods.get(&cgroup_id, 0).is_ok() {
            return Ok(());
        }
        let cpus = nr_cpus()?;
        retry_transient_enomem(|| {
            let zero = PerCpuValues::try_from(vec![PodCounters::default(); cpus])?;
            Ok(self.pods.insert(cgroup_id, zero, 0)?)
        })
        .context("creating the pod's counters")
    }

    pub(crate) fn remove_pod(&mut self, cgroup_id: u64) {
        let _ = self.pods.remove(&cgroup_id);
        let _ = self.live.remove(&cgroup_id);
    }

    /// Gives the pod its live-entry count and budget. An existing count is kept (its
    /// connections' entries are in the map): only the budget is set.
    pub(crate) fn ensure_live(&mut self, cgroup_id: u64, limit: i64) -> Result<()> {
        match self.live.get(&cgroup_id, 0) {
            Ok(l) if l.orig_dst_limit == limit => Ok(()),
            // Written whole while the datapath adds to `orig_dst` atomically: a race can lose
            // one add (a count one off until the pod goes), never the budget.
            Ok(l) => self.live.insert(
                cgroup_id,
                PodLive {
                    orig_dst_limit: limit,
                    ..l
                },
                0,
            ),
            Err(_) => self.live.insert(
                cgroup_id,
                PodLive {
                    orig_dst: 0,
                    orig_dst_limit: limit,
                },
                0,
            ),
        }
        .context("writing the pod's budget of live connections (MS_POD_LIVE)")
    }

    /// Drops the live counts of pods whose cgroup is not in `keep`.
    pub(crate) fn retain_live(&mut self, keep: &std::collections::BTreeSet<u64>) {
        let dead: Vec<u64> = self
            .live
            .keys()
            .filter_map(Result::ok)
            .filter(|c| !keep.contains(c))
            .collect();
        for c in dead {
            let _ = self.live.remove(&c);
        }
    }
}

fn nr_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(_, e)| anyhow::anyhow!("possible CPUs: {e}"))
}

/// How many times a new entry's ENOMEM is tried again, 1 ms apart and doubling (about 1 s in
/// all), before it counts.
const ENOMEM_RETRIES: u32 = 10;

/// Runs `insert` again while it fails with ENOMEM, sleeping between. `MS_POD_STATS` is not
/// preallocated: the kernel takes each new entry's per-CPU value from a cache it refills
/// without sleeping, and the per-CPU allocator can give such memory only once its workqueue
/// has populated it. A burst of enrolments (1,000 pods' specs at once) empties it for a moment,
/// and the pods enrolled meanwhile failed with ENOMEM, left uncaptured. Sleeping lets the
/// workqueue run; an ENOMEM that outlasts the retries is a node out of memory.
fn retry_transient_enomem(mut insert: impl FnMut() -> Result<()>) -> Result<()> {
    let mut pause = Duration::from_millis(1);
    for attempt in 1..=ENOMEM_RETRIES {
        match insert() {
            Err(e) if is_enomem(&e) => {
                debug!(attempt, "no memory for a new entry yet; trying again");
                thread::sleep(pause);
                pause *= 2;
            }
            r => return r,
        }
    }
    insert()
}

fn is_enomem(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<MapError>(),
        Some(MapError::SyscallError(SyscallError { io_error, .. }))
            if io_error.raw_os_error() == Some(libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn map_error(errno: i32) -> anyhow::Error {
        MapError::SyscallError(SyscallError {
            call: "bpf_map_update_elem",
            io_error: io::Error::from_raw_os_error(errno),
        })
        .into()
    }

    #[test]
    fn a_transient_enomem_is_tried_again_until_the_insert_succeeds() {
        let mut calls = 0;
        let r = retry_transient_enomem(|| {
            calls += 1;
            if calls < 4 {
                Err(map_error(libc::ENOMEM))
            } else {
                Ok(())
            }
        });
        assert!(r.is_ok());
        assert_eq!(calls, 4);
    }

    #[test]
    fn other_errors_and_a_lasting_enomem_are_returned() {
        let mut calls = 0;
        let r = retry_transient_enomem(|| {
            calls += 1;
            Err(map_error(libc::E2BIG))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);

        let mut calls = 0;
        let e = retry_transient_enomem(|| {
            calls += 1;
            Err(map_error(libc::ENOMEM))
        })
        .unwrap_err();
        assert!(is_enomem(&e));
        assert_eq!(calls, ENOMEM_RETRIES + 1);
    }
}
