//! The real [`Dataplane`]: the pinned maps, the cgroup and sk_lookup links under the pin directory, and
//! the host's cgroups, namespaces and /proc.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::IpAddr,
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::Path,
    time::Instant,
};

use anyhow::{Context, Result};
use tokio::{sync::mpsc::UnboundedSender, task::AbortHandle};
use tracing::debug;

use super::dataplane::{Adopted, Dataplane, ExistingListener};
use crate::{
    bpf::{cgroup_links::CgroupLinks, maps::PodMaps, netns, pins::Pins, sk_lookup::SkLookups},
    host::{
        cgroup,
        local_addrs::AddrWatch,
        netns as host_netns, passthrough, proc, resolv,
        userns::{self, IdMaps},
    },
    spec::plan::Plan,
};

pub struct Kernel {
    maps: PodMaps,
    pins: Pins,
    /// Which pod each sk_lookup slot serves, and the trampolines of the capturing pods'
    /// network namespaces.
    sk_lookups: SkLookups,
    /// The cgroup programs and each enrolled pod's links to them.
    cgroup_links: CgroupLinks,
    /// Each pod's network namespace addresses, watched, and the task that wakes the agent
    /// when they change.
    watches: BTreeMap<u64, (AddrWatch, AbortHandle)>,
    /// Where those tasks send the pod's cgroup id.
    addr_changes: UnboundedSender<u64>,
}

impl Kernel {
    /// `addr_changes` hears the cgroup id of each pod whose addresses may have changed
    /// (then call [`crate::registry::Registry::refresh_local_addrs`]).
    pub fn new(
        maps: PodMaps,
        pins: Pins,
        sk_lookups: SkLookups,
        cgroup_links: CgroupLinks,
        addr_changes: UnboundedSender<u64>,
    ) -> Self {
        Self {
            maps,
            pins,
            sk_lookups,
            cgroup_links,
            watches: BTreeMap::new(),
            addr_changes,
        }
    }

    pub fn maps(&self) -> &PodMaps {
        &self.maps
    }
}

impl Dataplane for Kernel {
    type Socket = OwnedFd;

    fn adopted(&self) -> Vec<Adopted> {
        self.maps
            .enrolled()
            .into_iter()
            .map(|(cgroup_id, c)| Adopted {
                cgroup_id,
                pod_id: c.pod_id,
            })
            .collect()
    }

    fn garbage_collect(&mut self, keep: &BTreeSet<u64>) {
        self.maps.garbage_collect(keep);
        netns::detach_all_but(&self.pins.netns_links(), keep);
        self.sk_lookups.retain(keep);
        self.cgroup_links.detach_all_but(keep);
        // Every pod kept has its own links now: layout 5's root links, if carried, can go.
        self.cgroup_links.retire_root_links();
    }

    fn cgroup_id(&self, dir: &Path) -> Result<u64> {
        Ok(cgroup::pod_cgroup_id(dir)?)
    }

    fn check_netns(&self, ns: &Path) -> Result<()> {
        Ok(host_netns::check_pod_netns(ns)?)
    }

    fn id_maps(&self, ns: &Path, cgroup: &Path) -> Result<Option<IdMaps>> {
        Ok(userns::of_netns(ns, cgroup)?)
    }

    fn pod_resolv_conf(&self, cgroup: &Path) -> Option<(i32, String)> {
        resolv::of_cgroup(cgroup)
    }

    fn read_resolv_conf(&self, path: &Path) -> Result<String> {
        resolv::read(path)
    }

    fn netns_alive(&self, ns: &Path) -> bool {
        netns::alive(ns)
    }

    fn attach_cgroup(&mut self, cgroup_id: u64, cgroup: &Path) -> Result<()> {
        self.cgroup_links.attach(cgroup_id, cgroup)
    }

    fn detach_cgroup(&mut self, cgroup_id: u64) {
        self.cgroup_links.detach(cgroup_id);
    }

    fn attach_netns(&mut self, cgroup_id: u64, ns: &Path) -> Result<()> {
        let ino = fs::metadata(ns)
            .with_context(|| format!("opening netns {}", ns.display()))?
            .ino();
        // Named before the link exists: the listener check never sees a half-attached pod.
        self.maps.set_netns(cgroup_id, ino)?;
        let started = Instant::now();
        let prog = self.sk_lookups.program_for(cgroup_id)?;
        let program_us = started.elapsed().as_micros();
        netns::attach(&prog, ns, &self.pins.netns_link(cgroup_id))?;
        debug!(
            program_us,
            attached_us = started.elapsed().as_micros(),
            "the pod's sk_lookup trampoline attached"
        );
        Ok(())
    }

    fn detach_netns(&mut self, cgroup_id: u64) {
        netns::detach(&self.pins.netns_link(cgroup_id));
        self.maps.clear_netns(cgroup_id);
        self.sk_lookups.release(cgroup_id);
    }

    fn add_passthrough_v6(&mut self, ns: &Path) -> Result<()> {
        Ok(passthrough::add_passthrough_v6(ns)?)
    }

    fn watch_local_addrs(&mut self, cgroup_id: u64, ns: &Path) -> Result<BTreeSet<IpAddr>> {
        let watch = AddrWatch::open(ns)?;
        let task = watch
            .notify(cgroup_id, self.addr_changes.clone())
            .context("polling the address watch")?;
        let addrs = watch.addrs().clone();
        self.unwatch_local_addrs(cgroup_id);
        self.watches.insert(cgroup_id, (watch, task));
        Ok(addrs)
    }

    fn local_addrs_changed(&mut self, cgroup_id: u64) -> Result<Option<BTreeSet<IpAddr>>> {
        let Some((watch, _)) = self.watches.get_mut(&cgroup_id) else {
            return Ok(None);
        };
        let changed = watch.drain().context("reading the pod's address changes")?;
        Ok(changed.then(|| watch.addrs().clone()))
    }

    fn unwatch_local_addrs(&mut self, cgroup_id: u64) {
        if let Some((_, task)) = self.watches.remove(&cgroup_id) {
            task.abort();
        }
    }

    fn update_local(&mut self, cgroup_id: u64, plan: &Plan, previous: &Plan) -> Result<()> {
        self.maps.update_local(cgroup_id, plan, previous)
    }

    fn apply(&mut self, cgroup_id: u64, plan: &Plan, previous: Option<&Plan>) -> Result<()> {
        self.maps.apply(cgroup_id, plan, previous)
    }

    fn in_effect(&self, cgroup_id: u64, plan: &Plan, ns: Option<&Path>) -> Result<()> {
        anyhow::ensure!(
            self.maps.config(cgroup_id) == Some(plan.config),
            "the pod's config is not in the datapath (MS_PODS) as the agent wrote it"
        );
        self.cgroup_links.attached(cgroup_id)?;
        match ns {
            Some(ns) => netns::attached(&self.pins.netns_link(cgroup_id), ns),
            None => Ok(()),
        }
    }

    fn remove(&mut self, cgroup_id: u64, plan: &Plan) {
        self.unwatch_local_addrs(cgroup_id);
        self.maps.remove(cgroup_id, Some(plan));
    }

    fn existing_listeners(
        &self,
        dir: &Path,
        netns: &Path,
        port: u16,
    ) -> Result<Vec<ExistingListener<OwnedFd>>> {
        let found = proc::existing_listeners(dir, netns, port)?;
        Ok(found
            .into_iter()
            .map(|l| ExistingListener {
                socket: l.socket,
                family: l.family,
                uid: l.uid,
                gid: l.gid,
                in_pod_netns: l.in_netns,
            })
            .collect())
    }

    fn add_listener(&mut self, cgroup_id: u64, l: &ExistingListener<OwnedFd>) -> Result<()> {
        self.maps.add_listener(cgroup_id, l.family, &l.socket)
    }
}
