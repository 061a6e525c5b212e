//! The datapath's counter maps: per-pod and node counters, and the live original
//! destinations. What each counter means and is called lives in `telemetry::catalog`.
use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use meshsteer_common::maps::{OrigDst, PodCounters, TupleKey, names};

use super::pins::Pins;

/// The counter maps: per-pod counters (`MS_POD_STATS`), node counters (`MS_NODE_STATS`) and
/// the live original destinations (`MS_ORIG_DST`). Reads never block the datapath.
pub struct Counters {
    pods: PerCpuHashMap<MapData, u64, PodCounters>,
    node: PerCpuArray<MapData, u64>,
    orig_dst: HashMap<MapData, TupleKey, OrigDst>,
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
            orig_dst: get(names::ORIG_DST)?.try_into()?,
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

    /// Live published original destinations (the map's idle size is 0).
    pub fn orig_dst_entries(&self) -> usize {
        self.orig_dst.keys().count()
    }

    /// Gives an enrolled pod its zeroed counters, unless it has some (kept across updates).
    pub(crate) fn ensure_pod(&mut self, cgroup_id: u64) -> Result<()> {
        if self.pods.get(&cgroup_id, 0).is_ok() {
            return Ok(());
        }
        let zero = PerCpuValues::try_from(vec![PodCounters::default(); nr_cpus()?])?;
        self.pods
            .insert(cgroup_id, zero, 0)
            .context("creating the pod's counters")
    }

    pub(crate) fn remove_pod(&mut self, cgroup_id: u64) {
        let _ = self.pods.remove(&cgroup_id);
    }
}

fn nr_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(_, e)| anyhow::anyhow!("possible CPUs: {e}"))
}
