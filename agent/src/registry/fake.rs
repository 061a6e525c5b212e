//! An in-memory [`Dataplane`] for the registry's tests: it keeps what the maps and links
//! would hold, records every write in order, and fails on demand.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use meshsteer_common::maps::PodConfig;

use super::dataplane::{Adopted, Dataplane, ExistingListener};
use crate::{host::userns::IdMaps, spec::plan::Plan};

/// A write the registry asked for (pods by cgroup id; plans by pod id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    GarbageCollect {
        keep: Vec<u64>,
    },
    Attach {
        cgroup_id: u64,
        netns: PathBuf,
    },
    Detach {
        cgroup_id: u64,
    },
    Apply {
        cgroup_id: u64,
        pod_id: u32,
        previous: Option<u32>,
    },
    Remove {
        cgroup_id: u64,
        pod_id: u32,
    },
    AddListener {
        cgroup_id: u64,
        family: u32,
    },
}

/// What can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Apply,
    Attach,
    AttachCgroup,
    ScanListeners,
    AddListener,
    Passthrough,
    WatchAddrs,
}

#[derive(Clone)]
struct FakeListener {
    family: u32,
    owner: (u32, u32),
    netns: Option<PathBuf>,
}

#[derive(Default)]
pub struct Fake {
    /// Cgroup directories on the "host", and their ids.
    cgroups: BTreeMap<PathBuf, u64>,
    /// Network namespaces on the "host".
    namespaces: BTreeSet<PathBuf>,
    /// The id maps of user-namespaced pods' network namespaces.
    userns: BTreeMap<PathBuf, IdMaps>,
    /// The listeners the processes of each cgroup hold.
    listeners: BTreeMap<PathBuf, Vec<FakeListener>>,
    /// The resolv.conf the processes of each cgroup show.
    pod_resolv: BTreeMap<PathBuf, String>,
    /// Files on the agent's filesystem.
    files: BTreeMap<PathBuf, String>,
    /// How many times a pod's resolv.conf was read.
    pub resolv_reads: std::cell::Cell<usize>,
    failing: BTreeSet<Op>,
    /// Every write, in order.
    pub calls: Vec<Call>,
    /// The maps: pod id by cgroup id.
    pub enrolled: BTreeMap<u64, u32>,
    /// The config last written for each cgroup id.
    pub configs: BTreeMap<u64, PodConfig>,
    /// Cgroups enrolled refused (fail closed).
    pub refused: BTreeSet<u64>,
    /// The sk_lookup links: namespace by cgroup id.
    pub links: BTreeMap<u64, PathBuf>,
    /// The cgroups the capture programs are attached to (not in `calls`: every enrolment
    /// makes one; `apply` checks it came first).
    pub cgroup_links: BTreeSet<u64>,
    /// The namespaces `::6/128` was added to, in order.
    pub passthrough: Vec<PathBuf>,
    /// The addresses assigned in each network namespace.
    pub addrs: BTreeMap<PathBuf, BTreeSet<IpAddr>>,
    /// Watched namespaces by cgroup id, and the addresses last reported.
    watched: BTreeMap<u64, (PathBuf, BTreeSet<IpAddr>)>,
    /// `MS_LOCAL_ADDRS`: each cgroup's local addresses as last written.
    pub local: BTreeMap<u64, BTreeSet<IpAddr>>,
}

impl Fake {
    pub fn with_cgroup(mut self, path: &str, id: u64) -> Self {
        self.cgroups.insert(path.into(), id);
        self
    }

    /// `addr` is assigned in the namespace `netns`.
    pub fn add_addr(&mut self, netns: &str, addr: &str) {
        let ip = addr.parse().expect("an address");
        self.addrs.entry(netns.into()).or_default().insert(ip);
    }

    pub fn remove_addr(&mut self, netns: &str, addr: &str) {
        let ip: IpAddr = addr.parse().expect("an address");
        self.addrs.entry(netns.into()).or_default().remove(&ip);
    }

    pub fn with_netns(mut self, path: &str) -> Self {
        self.namespaces.insert(path.into());
        self
    }

    /// `path` belongs to a user namespace with these maps.
    pub fn with_userns(mut self, path: &str, maps: IdMaps) -> Self {
        self.userns.insert(path.into(), maps);
        self
    }

    /// The proxy's listener (uid/gid 1337) in the pod's own network namespace.
    pub fn with_listener(self, cgroup: &str, family: u32) -> Self {
        self.with_listener_of(cgroup, family, (1337, 1337), None)
    }

    /// A listener of `owner`, held in `netns` (`None`: the pod's own).
    pub fn with_listener_of(
        mut self,
        cgroup: &str,
        family: u32,
        owner: (u32, u32),
        netns: Option<&str>,
    ) -> Self {
        self.listeners
            .entry(cgroup.into())
            .or_default()
            .push(FakeListener {
                family,
                owner,
                netns: netns.map(PathBuf::from),
            });
        self
    }

    /// The processes of `cgroup` show `text` as their resolv.conf (`None`: they have none).
    pub fn set_pod_resolv(&mut self, cgroup: &str, text: Option<&str>) {
        match text {
            Some(t) => self.pod_resolv.insert(cgroup.into(), t.into()),
            None => self.pod_resolv.remove(Path::new(cgroup)),
        };
    }

    /// A file on the agent's filesystem.
    pub fn with_file(mut self, path: &str, text: &str) -> Self {
        self.files.insert(path.into(), text.into());
        self
    }

    /// A pod a previous agent left in the maps.
    pub fn with_adopted(mut self, cgroup_id: u64, pod_id: u32) -> Self {
        self.enrolled.insert(cgroup_id, pod_id);
        self.cgroup_links.insert(cgroup_id);
        self
    }

    /// A pod a previous agent left in the maps with inbound capture: its sk_lookup link
    /// is attached in `netns`.
    pub fn with_adopted_inbound(mut self, cgroup_id: u64, pod_id: u32, netns: &str) -> Self {
        self.links.insert(cgroup_id, netns.into());
        self.with_adopted(cgroup_id, pod_id)
    }

    /// `op` fails from now on, until [`Fake::recover`].
    pub fn fail(&mut self, op: Op) {
        self.failing.insert(op);
    }

    pub fn recover(&mut self, op: Op) {
        self.failing.remove(&op);
    }

    /// The pod's namespace goes away (the pod died).
    pub fn delete_netns(&mut self, path: &str) {
        self.namespaces.remove(Path::new(path));
    }

    /// The calls since the last look.
    pub fn take_calls(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.calls)
    }

    fn check(&self, op: Op) -> Result<()> {
        if self.failing.contains(&op) {
            bail!("injected {op:?} failure");
        }
        Ok(())
    }
}

impl Dataplane for Fake {
    type Socket = ();

    fn adopted(&self) -> Vec<Adopted> {
        self.enrolled
            .iter()
            .map(|(&cgroup_id, &pod_id)| Adopted { cgroup_id, pod_id })
            .collect()
    }

    fn garbage_collect(&mut self, keep: &BTreeSet<u64>) {
        self.calls.push(Call::GarbageCollect {
            keep: keep.iter().copied().collect(),
        });
        self.enrolled.retain(|c, _| keep.contains(c));
        self.refused.retain(|c| keep.contains(c));
        self.cgroup_links.retain(|c| keep.contains(c));
        self.links.retain(|c, _| keep.contains(c));
    }

    fn cgroup_id(&self, cgroup: &Path) -> Result<u64> {
        self.cgroups
            .get(cgroup)
            .copied()
            .ok_or_else(|| anyhow!("No such file or directory (os error 2)"))
            .with_context(|| format!("cgroup {}", cgroup.display()))
    }

    fn check_netns(&self, netns: &Path) -> Result<()> {
        if !self.namespaces.contains(netns) {
            bail!("network namespace {}: no such file", netns.display());
        }
        Ok(())
    }

    fn id_maps(&self, netns: &Path, _cgroup: &Path) -> Result<Option<IdMaps>> {
        Ok(self.userns.get(netns).cloned())
    }

    fn pod_resolv_conf(&self, cgroup: &Path) -> Option<(i32, String)> {
        self.resolv_reads.set(self.resolv_reads.get() + 1);
        let text = self.pod_resolv.get(cgroup).cloned()?;
        Some((42, text))
    }

    fn read_resolv_conf(&self, path: &Path) -> Result<String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| anyhow!("No such file or directory (os error 2)"))
            .with_context(|| format!("reading {}", path.display()))
    }

    fn netns_alive(&self, netns: &Path) -> bool {
        self.namespaces.contains(netns)
    }

    fn attach_cgroup(&mut self, cgroup_id: u64, cgroup: &Path) -> Result<()> {
        self.check(Op::AttachCgroup)
            .with_context(|| format!("attaching to the pod's cgroup {}", cgroup.display()))?;
        self.cgroup_links.insert(cgroup_id);
        Ok(())
    }

    fn detach_cgroup(&mut self, cgroup_id: u64) {
        self.cgroup_links.remove(&cgroup_id);
    }

    fn attach_netns(&mut self, cgroup_id: u64, netns: &Path) -> Result<()> {
        self.calls.push(Call::Attach {
            cgroup_id,
            netns: netns.into(),
        });
        self.check(Op::Attach)?;
        self.links.insert(cgroup_id, netns.into());
        Ok(())
    }

    fn detach_netns(&mut self, cgroup_id: u64) {
        self.calls.push(Call::Detach { cgroup_id });
        self.links.remove(&cgroup_id);
    }

    fn add_passthrough_v6(&mut self, netns: &Path) -> Result<()> {
        self.check(Op::Passthrough)
            .context("entering network namespace (setns(2) needs CAP_SYS_ADMIN)")?;
        self.passthrough.push(netns.into());
        Ok(())
    }

    fn apply(&mut self, cgroup_id: u64, plan: &Plan, previous: Option<&Plan>) -> Result<()> {
        self.calls.push(Call::Apply {
            cgroup_id,
            pod_id: plan.config.pod_id,
            previous: previous.map(|p| p.config.pod_id),
        });
        self.check(Op::Apply).context("writing the pod's config")?;
        // A config no program reads would be capture on paper only.
        if !self.cgroup_links.contains(&cgroup_id) {
            bail!("the pod's config written before its cgroup's programs were attached");
        }
        self.enrolled.insert(cgroup_id, plan.config.pod_id);
        self.configs.insert(cgroup_id, plan.config);
        self.local.insert(cgroup_id, local_of(plan));
        if plan.is_refused() {
            self.refused.insert(cgroup_id);
        } else {
            self.refused.remove(&cgroup_id);
        }
        Ok(())
    }

    fn watch_local_addrs(&mut self, cgroup_id: u64, netns: &Path) -> Result<BTreeSet<IpAddr>> {
        self.check(Op::WatchAddrs)
            .context("entering network namespace (setns(2) needs CAP_SYS_ADMIN)")?;
        let now = self.addrs.get(netns).cloned().unwrap_or_default();
        self.watched
            .insert(cgroup_id, (netns.to_path_buf(), now.clone()));
        Ok(now)
    }

    fn local_addrs_changed(&mut self, cgroup_id: u64) -> Result<Option<BTreeSet<IpAddr>>> {
        let Some((ns, seen)) = self.watched.get_mut(&cgroup_id) else {
            return Ok(None);
        };
        let now = self.addrs.get(ns).cloned().unwrap_or_default();
        if now == *seen {
            return Ok(None);
        }
        *seen = now.clone();
        Ok(Some(now))
    }

    fn unwatch_local_addrs(&mut self, cgroup_id: u64) {
        self.watched.remove(&cgroup_id);
    }

    fn update_local(&mut self, cgroup_id: u64, plan: &Plan, previous: &Plan) -> Result<()> {
        self.check(Op::Apply).context("writing pod addresses")?;
        anyhow::ensure!(
            self.configs.get(&cgroup_id) == Some(&previous.config),
            "the previous plan is not in effect"
        );
        self.configs.insert(cgroup_id, plan.config);
        self.local.insert(cgroup_id, local_of(plan));
        Ok(())
    }

    fn in_effect(&self, cgroup_id: u64, plan: &Plan, netns: Option<&Path>) -> Result<()> {
        if self.configs.get(&cgroup_id) != Some(&plan.config)
            || !self.enrolled.contains_key(&cgroup_id)
        {
            bail!("the pod's config is not in the datapath");
        }
        if !self.cgroup_links.contains(&cgroup_id) {
            bail!("the pod's cgroup links are gone");
        }
        if let Some(ns) = netns
            && self.links.get(&cgroup_id).map(PathBuf::as_path) != Some(ns)
        {
            bail!("the pod's sk_lookup link is gone");
        }
        Ok(())
    }

    fn remove(&mut self, cgroup_id: u64, plan: &Plan) {
        self.calls.push(Call::Remove {
            cgroup_id,
            pod_id: plan.config.pod_id,
        });
        self.enrolled.remove(&cgroup_id);
        self.refused.remove(&cgroup_id);
        self.local.remove(&cgroup_id);
        self.watched.remove(&cgroup_id);
    }

    fn existing_listeners(
        &self,
        cgroup: &Path,
        netns: &Path,
        _port: u16,
    ) -> Result<Vec<ExistingListener<()>>> {
        self.check(Op::ScanListeners)?;
        let found = self
            .listeners
            .get(cgroup)
            .map(Vec::as_slice)
            .unwrap_or_default();
        Ok(found
            .iter()
            .map(|l| ExistingListener {
                socket: (),
                family: l.family,
                uid: l.owner.0,
                gid: l.owner.1,
                in_pod_netns: l.netns.as_deref().is_none_or(|n| n == netns),
            })
            .collect())
    }

    fn add_listener(&mut self, cgroup_id: u64, listener: &ExistingListener<()>) -> Result<()> {
        self.calls.push(Call::AddListener {
            cgroup_id,
            family: listener.family,
        });
        self.check(Op::AddListener)
    }
}

fn local_of(plan: &Plan) -> BTreeSet<IpAddr> {
    plan.local.iter().map(|k| IpAddr::from(k.addr)).collect()
}
