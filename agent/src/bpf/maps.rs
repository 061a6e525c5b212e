//! Typed access to the pinned maps, and the map writes that enrol, update and remove a pod.
//!
//! Order matters for the datapath, which reads concurrently: a pod's sets are written under a
//! fresh pod id *before* its config points at them, and old sets are removed only after, so a
//! connect() sees either the whole old configuration or the whole new one.
use std::{collections::BTreeSet, path::Path};

use anyhow::{Context, Result};
use aya::maps::{HashMap, LpmTrie, Map, MapData, SockHash, lpm_trie::Key};
use meshsteer_common::maps::{
    CidrKey, DnsServerKey, ListenerKey, LocalKey, PodConfig, PodCounters, PodLive, PortKey, names,
};

use super::{counters::Counters, pins::Pins};
use crate::spec::plan::Plan;

pub struct PodMaps {
    pods: HashMap<MapData, u64, PodConfig>,
    ports: HashMap<MapData, PortKey, u8>,
    cidr_exclude: LpmTrie<MapData, CidrKey, u8>,
    cidr_include: LpmTrie<MapData, CidrKey, u8>,
    local: HashMap<MapData, LocalKey, u8>,
    /// `MS_DNS_SERVERS`: each pod's captured nameservers.
    dns: HashMap<MapData, DnsServerKey, u8>,
    counters: Counters,
    /// Pod → its network namespace's inode number (`MS_POD_NETNS`).
    pod_netns: HashMap<MapData, u64, u64>,
    listeners: SockHash<MapData, ListenerKey>,
    /// Each pod's budget of live original destinations (`MS_POD_LIVE`).
    orig_dst_limit: i64,
}

impl PodMaps {
    /// From the loaded object (the agent).
    pub fn take(bpf: &mut aya::Ebpf) -> Result<Self> {
        Self::open(|name| {
            bpf.take_map(name)
                .with_context(|| format!("map {name} missing from the object"))
        })
    }

    /// From the pins (`status`, tests): read-only use while an agent runs.
    pub fn from_pins(pins: &Pins) -> Result<Self> {
        Self::open(|name| pins.open_map(name))
    }

    fn open(mut get: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        let mut typed = |name: &str| get(name);
        Ok(Self {
            counters: Counters::open(&mut typed)?,
            pods: typed(names::PODS)?.try_into()?,
            ports: typed(names::PORTS)?.try_into()?,
            cidr_exclude: typed(names::CIDR_EXCLUDE)?.try_into()?,
            cidr_include: typed(names::CIDR_INCLUDE)?.try_into()?,
            local: typed(names::LOCAL_ADDRS)?.try_into()?,
            dns: typed(names::DNS_SERVERS)?.try_into()?,
            pod_netns: typed(names::POD_NETNS)?.try_into()?,
            listeners: typed(names::LISTENERS)?.try_into()?,
            orig_dst_limit: i64::MAX,
        })
    }

    /// Each pod's budget of live original destinations, written at enrolment.
    pub fn with_orig_dst_limit(mut self, limit: u32) -> Self {
        self.orig_dst_limit = i64::from(limit);
        self
    }

    /// Pods enrolled in the maps (after a restart: by the previous agent).
    pub fn enrolled(&self) -> Vec<(u64, PodConfig)> {
        self.pods.iter().filter_map(Result::ok).collect()
    }

    /// The config the datapath has for the pod, if any.
    pub fn config(&self, cgroup_id: u64) -> Option<PodConfig> {
        self.pods.get(&cgroup_id, 0).ok()
    }

    /// Entries of every map that holds per-pod state, by map name: deleting every pod brings
    /// each back to its count before they were enrolled.
    pub fn entry_counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            (names::PODS, self.pods.keys().count()),
            (names::PORTS, self.ports.keys().count()),
            (names::CIDR_EXCLUDE, self.cidr_exclude.keys().count()),
            (names::CIDR_INCLUDE, self.cidr_include.keys().count()),
            (names::LOCAL_ADDRS, self.local.keys().count()),
            (names::DNS_SERVERS, self.dns.keys().count()),
            (names::POD_NETNS, self.pod_netns.keys().count()),
            (names::LISTENERS, self.listeners.keys().count()),
            (names::POD_STATS, self.counters.pod_entries()),
            (names::ORIG_DST, self.counters.orig_dst_entries()),
        ]
    }

    /// Points `cgroup_id` at `plan`; `previous` (same cgroup, other pod id) is cleaned after.
    /// On error nothing of `plan` stays behind and `previous` is still in effect.
    pub fn apply(&mut self, cgroup_id: u64, plan: &Plan, previous: Option<&Plan>) -> Result<()> {
        if let Err(e) = self.write_sets(plan) {
            self.remove_sets(plan);
            return Err(e);
        }
        self.counters.ensure_pod(cgroup_id)?;
        if let Err(e) = self.counters.ensure_live(cgroup_id, self.orig_dst_limit) {
            self.remove_sets(plan);
            return Err(e);
        }
        if let Err(e) = self.pods.insert(cgroup_id, plan.config, 0) {
            self.remove_sets(plan);
            return Err(e).context("writing the pod's config");
        }
        if let Some(old) = previous {
            self.remove_sets(old);
        }
        Ok(())
    }

    /// `plan` differs from `previous` (in effect, same pod id) in its local addresses only:
    /// the added ones are written before the config (its `HAS_LOCAL_ADDRS` flag may turn
    /// on), the stale ones removed after it. On error `previous` is still whole.
    pub fn update_local(&mut self, cgroup_id: u64, plan: &Plan, previous: &Plan) -> Result<()> {
        let added: Vec<&LocalKey> = plan
            .local
            .iter()
            .filter(|k| !previous.local.contains(k))
            .collect();
        let mut written = vec![];
        for k in added {
            if let Err(e) = self.local.insert(k, 1, 0) {
                for w in written {
                    let _ = self.local.remove(w);
                }
                return Err(e).context("writing pod addresses");
            }
            written.push(k);
        }
        if plan.config != previous.config
            && let Err(e) = self.pods.insert(cgroup_id, plan.config, 0)
        {
            for w in written {
                let _ = self.local.remove(w);
            }
            return Err(e).context("writing the pod's config");
        }
        for k in previous.local.iter().filter(|k| !plan.local.contains(k)) {
            let _ = self.local.remove(k);
        }
        Ok(())
    }

    /// Stops capture for the pod first, then frees its sets and counters.
    pub fn remove(&mut self, cgroup_id: u64, plan: Option<&Plan>) {
        let _ = self.pods.remove(&cgroup_id);
        if let Some(p) = plan {
            self.remove_sets(p);
        }
        self.clear_netns(cgroup_id);
        for family in [libc::AF_INET as u32, libc::AF_INET6 as u32] {
            let _ = self.listeners.remove(&ListenerKey {
                pod_cgroup: cgroup_id,
                family,
                _pad: 0,
            });
        }
        self.counters.remove_pod(cgroup_id);
    }

    /// Names the pod's network namespace (by inode number): its proxy's listener must be made
    /// there to take its inbound connections.
    pub fn set_netns(&mut self, cgroup_id: u64, netns_ino: u64) -> Result<()> {
        self.pod_netns
            .insert(cgroup_id, netns_ino, 0)
            .context("writing the pod's network namespace (MS_POD_NETNS)")
    }

    /// The pod has no inbound capture any more: no listener of its can be registered.
    pub fn clear_netns(&mut self, cgroup_id: u64) {
        let _ = self.pod_netns.remove(&cgroup_id);
    }

    /// Registers a proxy listener found outside the datapath (one that predates the agent).
    pub fn add_listener(
        &mut self,
        cgroup_id: u64,
        family: u32,
        fd: &std::os::fd::OwnedFd,
    ) -> Result<()> {
        let key = ListenerKey {
            pod_cgroup: cgroup_id,
            family,
            _pad: 0,
        };
        self.listeners
            .insert(key, std::os::fd::AsRawFd::as_raw_fd(fd), 0)
            .context("MS_LISTENERS")?;
        Ok(())
    }

    fn write_sets(&mut self, plan: &Plan) -> Result<()> {
        for k in &plan.ports {
            self.ports
                .insert(k, 1, 0)
                .context("writing a port set (MS_PORTS full?)")?;
        }
        for (k, len) in &plan.cidr_exclude {
            self.cidr_exclude
                .insert(&Key::new(*len, *k), 1, 0)
                .context("writing -x CIDRs")?;
        }
        for (k, len) in &plan.cidr_include {
            self.cidr_include
                .insert(&Key::new(*len, *k), 1, 0)
                .context("writing -i CIDRs")?;
        }
        for k in &plan.local {
            self.local
                .insert(k, 1, 0)
                .context("writing pod addresses")?;
        }
        for k in &plan.dns {
            self.dns
                .insert(k, 1, 0)
                .context("writing the pod's nameservers")?;
        }
        Ok(())
    }

    fn remove_sets(&mut self, plan: &Plan) {
        for k in &plan.ports {
            let _ = self.ports.remove(k);
        }
        for (k, len) in &plan.cidr_exclude {
            let _ = self.cidr_exclude.remove(&Key::new(*len, *k));
        }
        for (k, len) in &plan.cidr_include {
            let _ = self.cidr_include.remove(&Key::new(*len, *k));
        }
        for k in &plan.local {
            let _ = self.local.remove(k);
        }
        for k in &plan.dns {
            let _ = self.dns.remove(k);
        }
    }

    /// Drops pods whose cgroup is not in `keep`, and set entries of pod ids no config uses:
    /// what a previous agent left for pods that went away while it was down.
    pub fn garbage_collect(&mut self, keep: &BTreeSet<u64>) {
        for (cgroup, _) in self.enrolled() {
            if !keep.contains(&cgroup) {
                self.remove(cgroup, None);
            }
        }
        let dead_netns: Vec<u64> = self
            .pod_netns
            .keys()
            .filter_map(Result::ok)
            .filter(|c| !keep.contains(c))
            .collect();
        for c in dead_netns {
            let _ = self.pod_netns.remove(&c);
        }
        let live: BTreeSet<u32> = self.enrolled().iter().map(|(_, c)| c.pod_id).collect();
        remove_dead(&mut self.ports, &live, |k| k.pod_id);
        remove_dead(&mut self.local, &live, |k| k.pod_id);
        remove_dead(&mut self.dns, &live, |k| k.pod_id);
        self.counters.retain_live(keep);
        for trie in [&mut self.cidr_exclude, &mut self.cidr_include] {
            let dead: Vec<Key<CidrKey>> = trie
                .keys()
                .filter_map(Result::ok)
                .filter(|k| !live.contains(&u32::from_be_bytes(k.data().pod_id_be)))
                .collect();
            for k in dead {
                let _ = trie.remove(&k);
            }
        }
    }

    /// A pod's counters summed over CPUs.
    pub fn counters(&self, cgroup_id: u64) -> Option<PodCounters> {
        self.counters.pod(cgroup_id)
    }

    /// Live published original destinations (the map's idle size is 0).
    pub fn orig_dst_entries(&self) -> usize {
        self.counters.orig_dst_entries()
    }

    /// A pod's live original destinations and their budget.
    pub fn live(&self, cgroup_id: u64) -> Option<PodLive> {
        self.counters.live(cgroup_id)
    }
}

/// Whether `path` looks like our pin dir (used by `status` to give a clear error).
pub fn pinned(pins: &Pins) -> bool {
    Path::new(&pins.map(names::PODS)).exists()
}

/// Removes the entries of `map` whose pod id (`pod_id` of the key) no config uses.
fn remove_dead<K: aya::Pod>(
    map: &mut HashMap<MapData, K, u8>,
    live: &BTreeSet<u32>,
    pod_id: impl Fn(&K) -> u32,
) {
    let dead: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !live.contains(&pod_id(k)))
        .collect();
    for k in dead {
        let _ = map.remove(&k);
    }
}
