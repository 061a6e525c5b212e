//! The real [`Dataplane`]: the pinned maps, the sk_lookup links under the pin directory, and
//! the host's cgroups, namespaces and /proc.
use std::{
    collections::BTreeSet,
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use anyhow::Result;
use meshsteer_common::Addr;

use super::dataplane::{Adopted, Dataplane, ExistingListener};
use crate::{
    bpf::{maps::PodMaps, netns, pins::Pins},
    host::{
        cgroup, netns as host_netns, proc,
        userns::{self, IdMaps},
    },
    spec::plan::Plan,
};

pub struct Kernel {
    maps: PodMaps,
    pins: Pins,
    /// The sk_lookup program, attached to each capturing pod's network namespace.
    sk_lookup: OwnedFd,
}

impl Kernel {
    pub fn new(maps: PodMaps, pins: Pins, sk_lookup: OwnedFd) -> Self {
        Self {
            maps,
            pins,
            sk_lookup,
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

    fn netns_alive(&self, ns: &Path) -> bool {
        netns::alive(ns)
    }

    fn attach_netns(&mut self, cgroup_id: u64, ns: &Path) -> Result<()> {
        netns::attach(self.sk_lookup.as_fd(), ns, &self.pins.netns_link(cgroup_id))
    }

    fn detach_netns(&mut self, cgroup_id: u64) {
        netns::detach(&self.pins.netns_link(cgroup_id));
    }

    fn apply(&mut self, cgroup_id: u64, plan: &Plan, previous: Option<&Plan>) -> Result<()> {
        self.maps.apply(cgroup_id, plan, previous)
    }

    fn remove(&mut self, cgroup_id: u64, plan: &Plan) {
        self.maps.remove(cgroup_id, Some(plan));
    }

    fn set_inbound_addrs(&mut self, cgroup_id: u64, addrs: &[Addr]) {
        self.maps.set_inbound_addrs(cgroup_id, addrs);
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
