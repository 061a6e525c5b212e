//! Per-pod state: which pod (spec file or Kubernetes pod) enrolled which cgroup under which
//! plan, and whether its capture is in effect. Every change is applied to the maps before it
//! is reported.
//!
//! The registry decides and a [`Dataplane`] carries it out: [`Kernel`] on a node; in its unit
//! tests an in-memory fake, so the state machine is tested without root.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
};

use meshsteer_common::maps::pod_flags;
use tracing::{info, info_span, warn};

use crate::{
    bpf::accel::Support,
    source::{
        change::{Change, EnrolledBy, OptionsFrom, Rejected, SourceKey, Unready},
        rotation::Rotation,
    },
    spec::{budget::Budget, plan::Plan, pod::PodSpec, resolv::NameserversFrom},
};

mod cgroup_path;
mod dataplane;
mod enrol;
mod error;
mod kernel;
mod local_addrs;
mod nameservers;
mod view;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod local_addrs_tests;
#[cfg(test)]
mod nameservers_tests;
#[cfg(test)]
mod tests;

pub use self::{
    dataplane::{Adopted, Dataplane, ExistingListener},
    error::EnrolError,
    kernel::Kernel,
};

struct Enrolled {
    cgroup_id: u64,
    /// The pod's capture, or [`Plan::refused`]: enrolled fail closed.
    plan: Plan,
    netns: Option<PathBuf>,
    /// What of the enrolment is not as istio-init would have it, though capture is in
    /// effect (`::6/128` missing from the pod's `lo`).
    warnings: Vec<String>,
    /// Why not every address of the pod's network namespace is local in the datapath (see
    /// [`local_addrs`]), kept apart: it changes with the addresses.
    addrs_warning: Option<String>,
    /// Where the nameservers in `plan` came from (`None`: nowhere, or no DNS redirect).
    nameservers_from: Option<NameserversFrom>,
    /// Why the pod's DNS is not captured as istio-init would, when it is not.
    dns_warning: Option<String>,
}

impl Enrolled {
    /// The addresses this pod claims: no other pod may list one of them (inbound capture
    /// follows each pod's network namespace, so a duplicate is an operator's mistake).
    fn inbound_ips(&self) -> &[IpAddr] {
        if self.plan.is_refused() {
            return match self.netns {
                Some(_) => self.plan.ips(),
                None => &[],
            };
        }
        if self.plan.config.flags & pod_flags::IN_CAPTURE == 0 {
            return &[];
        }
        // Its `ips` only: other addresses of its namespace (`::6`, link-local ones) may be
        // on every pod.
        self.plan.ips()
    }
}

struct Entry {
    name: String,
    spec: Option<PodSpec>,
    /// The spec's cgroup, for the nesting checks of other pods' enrolments.
    cgroup: Option<cgroup_path::CgroupPath>,
    enrolled: Option<Enrolled>,
    /// Why the pod is not (or no longer) as its source says (None: it is).
    unready: Option<Unready>,
    /// The refusal in `unready` is the agent's own failure (the host or the maps said no), not
    /// something wrong with the pod's settings: a CNI ADD reports it as failed, not refused.
    agent_failed: bool,
    /// When an agent failure is tried again ([`Registry::retry_failed`]).
    retry: Option<Retry>,
    /// What its source did not apply ([`Change::Pending`]).
    pending: Option<String>,
    /// Where its options came from, when its source said ([`Change::Origin`]).
    from: Option<OptionsFrom>,
    /// How it was enrolled, when its source said ([`Change::EnrolledBy`]).
    enrolled_by: Option<EnrolledBy>,
}

/// The next try of a pod the agent failed to enrol: after `ticks` more poll ticks, the
/// `tries`-th failure in a row.
#[derive(Clone, Copy, Debug)]
struct Retry {
    ticks: u32,
    tries: u32,
}

/// Poll ticks (50 ms) before the first retry: 1 s, doubled after each failure up to a minute.
const RETRY_FIRST_TICKS: u32 = 20;
const RETRY_MAX_TICKS: u32 = 1_200;

impl Retry {
    fn after(tries: u32) -> Self {
        let ticks = RETRY_FIRST_TICKS
            .saturating_mul(1 << tries.saturating_sub(1).min(16))
            .min(RETRY_MAX_TICKS);
        Self { ticks, tries }
    }
}

pub struct Registry<D = Kernel> {
    dataplane: D,
    cgroup_root: PathBuf,
    /// Keyed by where each pod comes from.
    pods: BTreeMap<SourceKey, Entry>,
    next_pod_id: u32,
    /// `--accelerate`: acceleration for pods whose spec does not say.
    accelerate: bool,
    accel_support: Support,
    /// The pod limit and each pod's share of the maps.
    budget: Budget,
    /// Cgroups a previous agent enrolled, until reconciled: a failed enrolment leaves their
    /// links (and so their capture) as it found them.
    adopted: BTreeSet<u64>,
    /// Which pods' namespaces the next poll checks.
    netns_checks: Rotation<SourceKey>,
}

impl<D: Dataplane> Registry<D> {
    pub fn new(dataplane: D, cgroup_root: PathBuf) -> Self {
        let adopted = dataplane.adopted();
        // Pod ids a previous agent used may still key live sets: never reuse them.
        let next_pod_id = adopted.iter().map(|a| a.pod_id).max().unwrap_or(0) + 1;
        Self {
            dataplane,
            cgroup_root,
            pods: BTreeMap::new(),
            next_pod_id,
            accelerate: false,
            accel_support: Support::Unavailable("not probed".into()),
            budget: Budget::default(),
            adopted: adopted.iter().map(|a| a.cgroup_id).collect(),
            netns_checks: Rotation::default(),
        }
    }

    /// The node's pod limit and per-pod budgets (`--max-pods`).
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Socket-level acceleration: `default` for pods whose spec does not say; `support`,
    /// whether this kernel can have it at all.
    pub fn with_acceleration(mut self, default: bool, support: Support) -> Self {
        self.accelerate = default;
        self.accel_support = support;
        self
    }

    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// After the first full read of the pod source: forget what a previous agent enrolled for
    /// pods that no longer exist.
    pub fn reconcile_adopted(&mut self) {
        let keep: BTreeSet<u64> = self
            .pods
            .values()
            .filter_map(|e| e.enrolled.as_ref().map(|x| x.cgroup_id))
            .collect();
        self.dataplane.garbage_collect(&keep);
        self.adopted.clear();
    }

    /// One look at a source. A pod whose key changed within it (a spec file renamed: its new
    /// name appears and its old one goes in the same scan) moves to the new key with its
    /// capture in place, instead of being refused as a duplicate and then removed.
    pub fn apply(&mut self, changes: Vec<Change>) {
        let removed: Vec<&SourceKey> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Remove(k) => Some(k),
                Change::Upsert(..)
                | Change::Pending(..)
                | Change::Origin(..)
                | Change::EnrolledBy(..)
                | Change::Refresh(..) => None,
            })
            .collect();
        let mut renames = Vec::new();
        for c in &changes {
            if let Change::Upsert(new, spec) = c
                && let Ok(spec) = spec.as_ref()
                && !self.pods.contains_key(new)
                && let Some(old) = removed
                    .iter()
                    .find(|old| self.pods.get(**old).is_some_and(|e| e.name == spec.name))
            {
                renames.push(((*old).clone(), new.clone()));
            }
        }
        for (old, new) in renames {
            if let Some(entry) = self.pods.remove(&old) {
                info!(pod = %entry.name, from = %old, to = %new, "renamed");
                self.pods.insert(new, entry);
            }
        }
        for c in changes {
            match c {
                Change::Upsert(key, spec) => self.upsert(&key, *spec),
                Change::Remove(key) => self.remove(&key),
                Change::Pending(key, pending) => {
                    if let Some(e) = self.pods.get_mut(&key) {
                        e.pending = pending;
                    }
                }
                Change::Origin(key, from) => {
                    if let Some(e) = self.pods.get_mut(&key) {
                        e.from = Some(from);
                    }
                }
                Change::EnrolledBy(key, by) => {
                    if let Some(e) = self.pods.get_mut(&key) {
                        e.enrolled_by = Some(by);
                    }
                }
                Change::Refresh(key) => {
                    self.refresh_nameservers(&key);
                }
            }
        }
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
            drop(_g);
            // The same spec again: only what the pod's processes say may have changed.
            self.refresh_nameservers(key);
            return;
        }
        drop(_g);
        self.replan(key, spec);
    }

    /// Plans and enrols the pod anew from `spec`, whatever it had.
    fn replan(&mut self, key: &SourceKey, spec: Result<PodSpec, Rejected>) {
        let name = match &spec {
            Ok(s) => s.name.clone(),
            Err(r) => r.name.clone(),
        };
        let span = info_span!("pod", pod = %name);
        let _g = span.enter();
        let previous = self.pods.remove(key);
        // The wait grows with failures of the same spec only: a changed one starts afresh.
        let same_spec = previous
            .as_ref()
            .and_then(|p| p.spec.as_ref())
            .is_some_and(|old| spec.as_ref().ok() == Some(old));
        let failures = previous
            .as_ref()
            .and_then(|p| p.retry)
            .filter(|_| same_spec)
            .map_or(0, |r| r.tries);
        let mut entry = Entry {
            name,
            spec: None,
            cgroup: None,
            enrolled: None,
            unready: None,
            agent_failed: false,
            retry: None,
            pending: previous.as_ref().and_then(|p| p.pending.clone()),
            from: previous.as_ref().and_then(|p| p.from),
            enrolled_by: previous.as_ref().and_then(|p| p.enrolled_by),
        };
        let mut located = None;
        let result = spec
            .map_err(|r| {
                located = r.located.map(|b| *b);
                r.why
            })
            .and_then(|s| {
                entry.spec = Some(s.clone());
                entry.cgroup = Some(cgroup_path::CgroupPath::new(&s.cgroup));
                self.enrol(key, &s, previous.as_ref().and_then(|p| p.enrolled.as_ref()))
                    .map_err(|e| {
                        entry.agent_failed = matches!(e, EnrolError::Dataplane(_));
                        // The status file's reason: the whole chain, as anyhow shows it.
                        Unready::Refused(format!("{:#}", anyhow::Error::new(e)))
                    })
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
                // A failed update leaves the pod's previous capture in effect: keep it. A pod
                // with none is enrolled refused, fail closed: never uncaptured.
                // Where the pod is: its spec, or where its source found it.
                let at = entry.spec.clone().or(located);
                entry.enrolled = match (previous.and_then(|p| p.enrolled), at) {
                    (Some(x), _) if !x.plan.is_refused() => Some(x),
                    (old, Some(spec)) if matches!(why, Unready::Refused(_)) => {
                        self.fence(key, &spec, old)
                    }
                    (old, _) => old,
                };
                entry.unready = Some(why);
                if entry.agent_failed {
                    let retry = Retry::after(failures + 1);
                    info!(
                        after = ?(crate::source::POLL * retry.ticks),
                        "the agent's failure will be tried again"
                    );
                    entry.retry = Some(retry);
                }
            }
        }
        self.pods.insert(key.clone(), entry);
    }

    /// Pods whose enrolment the agent itself failed (the kernel or the host said no, not the
    /// pod's settings) are enrolled again once their wait is over, counted in poll ticks: a
    /// passing failure must not leave a pod uncaptured, or fenced, until its spec changes.
    /// Called once per tick; whether a pod was tried.
    pub fn retry_failed(&mut self) -> bool {
        let mut due = Vec::new();
        for (key, e) in &mut self.pods {
            let Some(retry) = e.retry.as_mut() else {
                continue;
            };
            if retry.ticks > 0 {
                retry.ticks -= 1;
            } else if let Some(spec) = &e.spec {
                due.push((key.clone(), spec.clone()));
            }
        }
        for (key, spec) in &due {
            self.replan(key, Ok(spec.clone()));
        }
        !due.is_empty()
    }

    /// Pods whose network namespace went away (the pod died without its spec being removed):
    /// their capture is removed and the pod reported, instead of left dangling. Each call
    /// checks the next slice of the pods (a stat each), so each pod once every
    /// [`ROUND`](crate::source::rotation::ROUND) polls.
    pub fn check_namespaces(&mut self) -> bool {
        let gone: Vec<SourceKey> = self
            .netns_checks
            .next_slice(&self.pods)
            .into_iter()
            .filter(|k| {
                self.pods
                    .get(k)
                    .and_then(|e| e.enrolled.as_ref())
                    .and_then(|x| x.netns.as_ref())
                    .is_some_and(|ns| !self.dataplane.netns_alive(ns))
            })
            .collect();
        for key in &gone {
            if let Some(e) = self.pods.get_mut(key)
                && let Some(x) = e.enrolled.take()
            {
                let _g = info_span!("pod", pod = %e.name).entered();
                enrol::unenrol(&mut self.dataplane, &x);
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
            let freed = e.enrolled.is_some();
            if let Some(x) = e.enrolled {
                enrol::unenrol(&mut self.dataplane, &x);
            }
            info!("removed");
            drop(_g);
            if freed {
                self.retry_refused();
            }
        }
    }

    /// A pod went: pods enrolled refused (beyond the pod limit, or sharing its address) may
    /// fit now, without waiting for a change of their own.
    fn retry_refused(&mut self) {
        let refused: Vec<(SourceKey, PodSpec)> = self
            .pods
            .iter()
            .filter(|(_, e)| e.enrolled.as_ref().is_some_and(|x| x.plan.is_refused()))
            .filter_map(|(k, e)| Some((k.clone(), e.spec.clone()?)))
            .collect();
        for (key, spec) in refused {
            self.upsert(&key, Ok(spec));
        }
    }
}
