//! Per-pod state: which pod (spec file or Kubernetes pod) enrolled which cgroup under which
//! plan, and whether its capture is in effect. Every change is applied to the maps before it
//! is reported.
use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};
use tracing::{info, info_span, warn};

use meshsteer_common::{Addr, maps::pod_flags};

use crate::{
    bpf::{accel::Support, maps::PodMaps, netns, pins::Pins},
    host::{cgroup as host, proc},
    source::change::{Rejected, SourceKey, Unready},
    spec::{plan::Plan, pod::PodSpec},
    telemetry::status::{PodState, PodStatus},
};

struct Enrolled {
    cgroup_id: u64,
    plan: Plan,
    netns: Option<PathBuf>,
}

struct Entry {
    name: String,
    spec: Option<PodSpec>,
    enrolled: Option<Enrolled>,
    /// Why the pod is not (or no longer) as its source says (None: it is).
    unready: Option<Unready>,
}

pub struct Registry {
    maps: PodMaps,
    cgroup_root: PathBuf,
    pins: Pins,
    /// The sk_lookup program, attached to each capturing pod's network namespace.
    sk_lookup: OwnedFd,
    /// Keyed by where each pod comes from.
    pods: BTreeMap<SourceKey, Entry>,
    next_pod_id: u32,
    /// `--accelerate`: acceleration for pods whose spec does not say.
    accelerate: bool,
    accel_support: Support,
}

impl Registry {
    pub fn new(maps: PodMaps, cgroup_root: PathBuf, pins: Pins, sk_lookup: OwnedFd) -> Self {
        let next_pod_id = maps
            .enrolled()
            .iter()
            .map(|(_, c)| c.pod_id)
            .max()
            .unwrap_or(0)
            + 1;
        Self {
            maps,
            cgroup_root,
            pins,
            sk_lookup,
            pods: BTreeMap::new(),
            next_pod_id,
            accelerate: false,
            accel_support: Support::Unavailable("not probed".into()),
        }
    }

    /// Socket-level acceleration: `default` for pods whose spec does not say; `support`,
    /// whether this kernel can have it at all.
    pub fn with_acceleration(mut self, default: bool, support: Support) -> Self {
        self.accelerate = default;
        self.accel_support = support;
        self
    }

    pub fn maps(&self) -> &PodMaps {
        &self.maps
    }

    /// After the first full read of the pod source: forget what a previous agent enrolled for
    /// pods that no longer exist.
    pub fn reconcile_adopted(&mut self) {
        let keep: BTreeSet<u64> = self
            .pods
            .values()
            .filter_map(|e| e.enrolled.as_ref().map(|x| x.cgroup_id))
            .collect();
        self.maps.garbage_collect(&keep);
    }

    /// A pod was added or changed (`Err`: its source has no valid spec for it).
    pub fn upsert(&mut self, key: &SourceKey, spec: Result<PodSpec, Rejected>) {
        let name = match &spec {
            Ok(s) => s.name.clone(),
            Err(r) => r.name.clone(),
        };
        let span = info_span!("pod", pod = %name);
        let _g = span.enter();
        if let Some(e) = self.pods.get(key)
            && e.spec.as_ref() == spec.as_ref().ok()
            && e.unready.is_none()
        {
            return;
        }
        let previous = self.pods.remove(key);
        let mut entry = Entry {
            name,
            spec: None,
            enrolled: None,
            unready: None,
        };
        let result = spec.map_err(|r| r.why).and_then(|s| {
            entry.spec = Some(s.clone());
            self.enrol(key, &s, previous.as_ref().and_then(|p| p.enrolled.as_ref()))
                .map_err(|e| Unready::Refused(format!("{e:#}")))
        });
        match result {
            Ok(enrolled) => {
                info!(
                    cgroup_id = enrolled.cgroup_id,
                    pod_id = enrolled.plan.config.pod_id,
                    "ready"
                );
                entry.enrolled = Some(enrolled);
            }
            Err(why) => {
                match &why {
                    Unready::Waiting(reason) => info!(%reason, "waiting"),
                    Unready::Refused(reason) => warn!(error = %reason, "not enrolled"),
                }
                // A failed update leaves the pod's previous capture in effect: keep it.
                entry.enrolled = previous.and_then(|p| p.enrolled);
                entry.unready = Some(why);
            }
        }
        self.pods.insert(key.clone(), entry);
    }

    fn enrol(
        &mut self,
        key: &SourceKey,
        spec: &PodSpec,
        previous: Option<&Enrolled>,
    ) -> Result<Enrolled> {
        if let Some((other, _)) = self
            .pods
            .iter()
            .find(|(k, e)| *k != key && e.name == spec.name)
        {
            bail!("pod name {:?} is already used by {other}", spec.name);
        }
        if !spec.cgroup.starts_with(&self.cgroup_root) {
            bail!(
                "cgroup {} is outside the cgroup root {} where capture is attached",
                spec.cgroup.display(),
                self.cgroup_root.display()
            );
        }
        let cgroup_id = host::cgroup_id(&spec.cgroup)?;
        if let Some((other, _)) = self.pods.iter().find(|(k, e)| {
            *k != key
                && e.enrolled
                    .as_ref()
                    .is_some_and(|x| x.cgroup_id == cgroup_id)
        }) {
            bail!(
                "cgroup {} is already enrolled by {other}",
                spec.cgroup.display()
            );
        }
        if let Some(ns) = &spec.netns {
            netns::check(ns)?;
        }
        let mut plan = Plan::new(spec, self.next_pod_id)?;
        self.next_pod_id += 1;
        plan.set_accelerate(spec.accelerate.unwrap_or(self.accelerate));
        if let (true, Support::Unavailable(why)) = (plan.accelerates(), &self.accel_support) {
            warn!(reason = %why, "acceleration asked for but unavailable: normal path");
        }
        let inbound = plan.config.flags & pod_flags::IN_CAPTURE != 0;
        let link = self.pins.netns_link(cgroup_id);
        match (&spec.netns, inbound) {
            // Attached before the pod's addresses are mapped: until then it passes everything.
            (Some(ns), true) => netns::attach(self.sk_lookup.as_fd(), ns, &link)?,
            (None, true) => bail!(
                "inbound capture (-b) needs the pod's network namespace: add `netns:` to the spec, \
                 or `-b \"\"` to capture outbound only"
            ),
            (_, false) => netns::detach(&link),
        }
        // Same cgroup as before: swap in place. A different one: the old one is removed.
        let same = previous.filter(|p| p.cgroup_id == cgroup_id);
        if let Err(e) = self.maps.apply(cgroup_id, &plan, same.map(|p| &p.plan)) {
            if same.is_none() {
                netns::detach(&link);
            }
            return Err(e);
        }
        if let Some(old) = previous.filter(|p| p.cgroup_id != cgroup_id) {
            self.maps.remove(old.cgroup_id, Some(&old.plan));
            netns::detach(&self.pins.netns_link(old.cgroup_id));
        }
        let addrs: Vec<Addr> = plan.local.iter().map(|k| k.addr).collect();
        self.maps
            .set_inbound_addrs(cgroup_id, if inbound { &addrs } else { &[] });
        if inbound {
            self.register_existing_listeners(cgroup_id, &spec.cgroup, plan.config.inbound_port);
        }
        Ok(Enrolled {
            cgroup_id,
            plan,
            netns: spec.netns.clone(),
        })
    }

    /// Listeners the proxy opened before the agent ran never passed through sockops: fetch
    /// them from the pod's processes so their pod is steered at once.
    fn register_existing_listeners(&mut self, cgroup_id: u64, cgroup: &Path, port: u16) {
        match proc::existing_listeners(cgroup, port) {
            Ok(found) => {
                for (fd, family) in found {
                    if let Err(e) = self.maps.add_listener(cgroup_id, family, &fd) {
                        warn!(error = %format!("{e:#}"), "could not register an existing listener");
                    } else {
                        info!(port, family, "registered an existing inbound listener");
                    }
                }
            }
            Err(e) => warn!(error = %format!("{e:#}"), "scanning for existing listeners"),
        }
    }

    /// Pods whose network namespace went away (the pod died without its spec being removed):
    /// their capture is removed and the pod reported, instead of left dangling.
    pub fn check_namespaces(&mut self) -> bool {
        let gone: Vec<SourceKey> = self
            .pods
            .iter()
            .filter(|(_, e)| {
                e.enrolled
                    .as_ref()
                    .and_then(|x| x.netns.as_ref())
                    .is_some_and(|ns| !netns::alive(ns))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in &gone {
            if let Some(e) = self.pods.get_mut(key)
                && let Some(x) = e.enrolled.take()
            {
                let _g = info_span!("pod", pod = %e.name).entered();
                self.maps.remove(x.cgroup_id, Some(&x.plan));
                netns::detach(&self.pins.netns_link(x.cgroup_id));
                let ns = x.netns.map(|p| p.display().to_string()).unwrap_or_default();
                e.unready = Some(Unready::Refused(format!(
                    "network namespace {ns} disappeared; capture removed"
                )));
                warn!(netns = %ns, "network namespace gone: pod removed from the datapath");
            }
        }
        !gone.is_empty()
    }

    /// A pod went away: capture for that pod stops and its map entries are freed.
    pub fn remove(&mut self, key: &SourceKey) {
        if let Some(e) = self.pods.remove(key) {
            let _g = info_span!("pod", pod = %e.name).entered();
            if let Some(x) = e.enrolled {
                self.maps.remove(x.cgroup_id, Some(&x.plan));
                netns::detach(&self.pins.netns_link(x.cgroup_id));
            }
            info!("removed");
        }
    }

    pub fn status(&self) -> Vec<PodStatus> {
        self.pods
            .iter()
            .map(|(key, e)| PodStatus {
                name: e.name.clone(),
                source: key.clone(),
                state: match &e.unready {
                    None => PodState::Ready,
                    Some(Unready::Waiting(r)) => PodState::Waiting(r.clone()),
                    Some(Unready::Refused(r)) => PodState::Error(r.clone()),
                },
                cgroup: e.spec.as_ref().map(|s| s.cgroup.clone()),
                cgroup_id: e.enrolled.as_ref().map(|x| x.cgroup_id),
                pod_id: e.enrolled.as_ref().map(|x| x.plan.config.pod_id),
                accelerate: e.enrolled.as_ref().map(|x| x.plan.accelerates()),
                counters: None,
            })
            .collect()
    }
}
