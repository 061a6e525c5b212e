//! Enrolling one pod: the checks that refuse it, then the dataplane writes, in the order the
//! datapath needs (link before addresses, new plan before the old one goes).
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use meshsteer_common::{
    Addr,
    inbound::may_listen,
    maps::{PodConfig, pod_flags},
};
use tracing::{debug, error, info, warn};

use super::{Dataplane, Enrolled, Registry, cgroup_path::CgroupPath, error::EnrolError};
use crate::{
    bpf::accel::Support,
    host::userns::IdMaps,
    source::change::SourceKey,
    spec::{budget::Usage, plan::Plan, pod::PodSpec},
    telemetry::laps::Laps,
};

impl<D: Dataplane> Registry<D> {
    /// The checks on a pod's cgroup (its own, inside the root, nested in no other pod's and
    /// around none): the cgroup id it may be enrolled under, captured or refused.
    fn admit_cgroup(&self, key: &SourceKey, spec: &PodSpec) -> Result<u64, EnrolError> {
        if let Some((other, _)) = self
            .pods
            .iter()
            .find(|(k, e)| e.name == spec.name && *k != key)
        {
            return Err(EnrolError::NameTaken {
                name: spec.name.clone(),
                other: other.clone(),
            });
        }
        if !spec.cgroup.starts_with(&self.cgroup_root) {
            return Err(EnrolError::OutsideRoot {
                cgroup: spec.cgroup.clone(),
                root: self.cgroup_root.clone(),
            });
        }
        if spec.cgroup.components().eq(self.cgroup_root.components()) {
            return Err(EnrolError::IsRoot(spec.cgroup.clone()));
        }
        let mine = CgroupPath::new(&spec.cgroup);
        if let Some((other, other_cgroup)) = self.pods.iter().find_map(|(k, e)| {
            let theirs = &e.spec.as_ref()?.cgroup;
            let nested = e.enrolled.is_some() && e.cgroup.as_ref()?.nests_with(&mine);
            (nested && k != key).then(|| (k.clone(), theirs.clone()))
        }) {
            return Err(EnrolError::Nested {
                cgroup: spec.cgroup.clone(),
                other,
                other_cgroup,
            });
        }
        let cgroup_id = self.dataplane.cgroup_id(&spec.cgroup)?;
        if let Some((other, _)) = self.pods.iter().find(|(k, e)| {
            e.enrolled
                .as_ref()
                .is_some_and(|x| x.cgroup_id == cgroup_id)
                && *k != key
        }) {
            return Err(EnrolError::CgroupTaken {
                cgroup: spec.cgroup.clone(),
                other: other.clone(),
            });
        }
        Ok(cgroup_id)
    }

    /// Pods other than `key`'s enrolled with capture (refused ones hold no sets). Counted
    /// without comparing every key with `key` (keys hold paths, slow to compare: this runs for
    /// each of 1,000 pods in a restart).
    fn captured_pods(&self, key: &SourceKey) -> u32 {
        let captured = |e: &super::Entry| e.enrolled.as_ref().is_some_and(|x| !x.plan.is_refused());
        let all = self.pods.values().filter(|e| captured(e)).count();
        let own = usize::from(self.pods.get(key).is_some_and(captured));
        u32::try_from(all - own).unwrap_or(u32::MAX)
    }

    pub(super) fn enrol(
        &mut self,
        key: &SourceKey,
        spec: &PodSpec,
        previous: Option<&Enrolled>,
    ) -> Result<Enrolled, EnrolError> {
        let mut laps = Laps::start();
        let cgroup_id = self.admit_cgroup(key, spec)?;
        laps.mark("cgroup");
        if let Some(ns) = &spec.netns {
            self.dataplane.check_netns(ns)?;
        }
        let mut plan = Plan::new(spec, self.next_pod_id)?;
        let dns = self.nameservers(spec, plan.capture())?;
        plan = plan.with_nameservers(&dns.servers)?;
        if let Some(w) = &dns.warning {
            warn!(warning = %w, "DNS capture");
        }
        laps.mark("plan");
        if let Some(ns) = &spec.netns
            && let Some(maps) = self.dataplane.id_maps(ns, &spec.cgroup)?
        {
            to_host_ids(&mut plan.config, &maps)?;
        }
        laps.mark("userns");
        self.next_pod_id += 1;
        // Checked before anything is written: a pod over its share is refused whole.
        self.budget.check(&Usage::of(&plan))?;
        if self.captured_pods(key) >= self.budget.max_pods {
            return Err(EnrolError::PodLimit {
                max_pods: self.budget.max_pods,
            });
        }
        plan.set_accelerate(spec.accelerate.unwrap_or(self.accelerate));
        if let (true, Support::Unavailable(why)) = (plan.accelerates(), &self.accel_support) {
            warn!(reason = %why, "acceleration asked for but unavailable: normal path");
        }
        let inbound = plan.config.flags & pod_flags::IN_CAPTURE != 0;
        let addrs: Vec<Addr> = plan.local.iter().map(|k| k.addr).collect();
        if inbound && let Some((addr, other)) = self.address_taken(key, &addrs) {
            return Err(EnrolError::AddressTaken { addr, other });
        }
        laps.mark("checks");
        if inbound && spec.netns.is_none() {
            return Err(EnrolError::InboundNeedsNetns);
        }
        // Same cgroup as before: swap in place. A different one: the old one is removed.
        let same = previous.filter(|p| p.cgroup_id == cgroup_id);
        // Before the first write: the pod's own addresses are local from its first connection.
        let (plan, addrs_warning) = self.watch_local_addrs(cgroup_id, plan, spec.netns.as_deref());
        // Attached before the config is written: until then the programs pass everything.
        // Detached only once the new plan is in: a failed write keeps all of the old one.
        if let Err(e) = self.attach(cgroup_id, spec, inbound) {
            if same.is_none() {
                self.undo_attach(cgroup_id);
            }
            return Err(e);
        }
        laps.mark("attach");
        if let Err(e) = self
            .dataplane
            .apply(cgroup_id, &plan, same.map(|p| &p.plan))
        {
            if same.is_none() {
                self.undo_attach(cgroup_id);
            }
            return Err(e.into());
        }
        if !inbound {
            self.dataplane.detach_netns(cgroup_id);
        }
        if let Some(old) = previous.filter(|p| p.cgroup_id != cgroup_id) {
            unenrol(&mut self.dataplane, old);
        }
        laps.mark("maps");
        if inbound && let Some(netns) = &spec.netns {
            self.register_existing_listeners(cgroup_id, &spec.cgroup, netns, &plan.config);
        }
        laps.mark("listeners");
        let warnings = self.add_passthrough_v6(&plan, spec.netns.as_deref());
        laps.mark("passthrough");
        debug!(%laps, "enrolment steps");
        Ok(Enrolled {
            cgroup_id,
            plan,
            netns: spec.netns.clone(),
            warnings,
            addrs_warning,
            nameservers_from: dns.from,
            dns_warning: dns.warning,
        })
    }

    /// The pod's links: its cgroup's programs and, for inbound capture, its sk_lookup trampoline
    /// in `spec.netns`.
    fn attach(&mut self, cgroup_id: u64, spec: &PodSpec, inbound: bool) -> Result<(), EnrolError> {
        self.dataplane.attach_cgroup(cgroup_id, &spec.cgroup)?;
        if inbound && let Some(ns) = &spec.netns {
            self.dataplane.attach_netns(cgroup_id, ns)?;
        }
        Ok(())
    }

    /// What a failed enrolment in a cgroup that had none attached goes. A previous agent's
    /// pod keeps its links, sk_lookup as well as cgroup programs: its config, still in the
    /// maps, captures it until the pod is enrolled (or fenced) or reconciled away.
    fn undo_attach(&mut self, cgroup_id: u64) {
        if !self.adopted.contains(&cgroup_id) {
            self.dataplane.detach_netns(cgroup_id);
            self.dataplane.detach_cgroup(cgroup_id);
        }
        self.dataplane.unwatch_local_addrs(cgroup_id);
    }

    /// A failed fencing's cgroup programs go, except a previous agent's pod's, as above.
    fn undo_attach_cgroup(&mut self, cgroup_id: u64) {
        if !self.adopted.contains(&cgroup_id) {
            self.dataplane.detach_cgroup(cgroup_id);
        }
    }

    /// istio-init's `ip -6 addr add ::6/128 dev lo`, in a pod it writes ip6tables rules for:
    /// Envoy's inbound passthrough to the app binds `::6`. Without it capture is whole
    /// (nothing escapes; the pod stays enrolled), but the proxy cannot reach its app over
    /// IPv6: said in the log and in the pod's status (the returned warnings).
    fn add_passthrough_v6(&mut self, plan: &Plan, netns: Option<&Path>) -> Vec<String> {
        if plan.config.flags & pod_flags::IPV6 == 0 {
            return vec![];
        }
        let why = match netns {
            // The spec's choice (outbound capture only): said, not an error.
            None => {
                let why = "no network namespace is known for the pod (`netns:`)";
                warn!(reason = why, "::6/128 not added to the pod's lo");
                why.to_string()
            }
            Some(ns) => match self.dataplane.add_passthrough_v6(ns) {
                Ok(()) => {
                    debug!("::6/128 on the pod's lo");
                    return vec![];
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    error!(
                        error = %why,
                        "could not add ::6/128 to the pod's lo: its proxy's IPv6 inbound \
                         passthrough cannot bind; capture is in effect"
                    );
                    why
                }
            },
        };
        vec![format!(
            "::6/128 is not on the pod's lo, as istio-init would add it: {why}. Capture is in \
             effect, but the proxy cannot bind ::6 to pass inbound IPv6 connections to the app"
        )]
    }

    /// An address of `addrs` that another enrolled pod already has for inbound capture (or,
    /// enrolled refused, for refusing connections to it).
    fn address_taken(&self, key: &SourceKey, addrs: &[Addr]) -> Option<(IpAddr, SourceKey)> {
        let mine: Vec<IpAddr> = addrs.iter().map(|a| IpAddr::from(*a)).collect();
        self.pods
            .iter()
            .filter_map(|(k, e)| Some((k, e.enrolled.as_ref()?)))
            .find_map(|(k, theirs)| {
                let theirs = theirs.inbound_ips();
                let shared = mine.iter().find(|ip| theirs.contains(ip))?;
                (k != key).then(|| (*shared, k.clone()))
            })
    }

    /// A pod that cannot be captured as asked is enrolled refused, fail closed, as a pod
    /// whose istio-init failed never runs: its connect()s fail, and connections into its
    /// network namespace are refused. `old` is what the pod had enrolled
    /// (nothing, or refused already); returned when the pod cannot even be enrolled refused
    /// (its cgroup is not one that can be: outside the root, nested, missing).
    pub(super) fn fence(
        &mut self,
        key: &SourceKey,
        spec: &PodSpec,
        old: Option<Enrolled>,
    ) -> Option<Enrolled> {
        let cgroup_id = match self.admit_cgroup(key, spec) {
            Ok(id) => id,
            Err(e) => {
                warn!(error = %e, "cannot enrol the pod refused either");
                return old;
            }
        };
        if old.as_ref().is_some_and(|o| o.cgroup_id == cgroup_id) {
            return old;
        }
        let plan = Plan::refused(&spec.ips);
        // Its connect()s fail only where the programs run.
        let applied = self
            .dataplane
            .attach_cgroup(cgroup_id, &spec.cgroup)
            .and_then(|()| self.dataplane.apply(cgroup_id, &plan, None));
        if let Err(e) = applied {
            self.undo_attach_cgroup(cgroup_id);
            warn!(error = %format!("{e:#}"), "could not enrol the pod refused");
            return old;
        }
        if let Some(o) = old {
            unenrol(&mut self.dataplane, &o);
        }
        let netns = self.refuse_inbound(cgroup_id, spec);
        info!(cgroup_id, "enrolled refused: its connections fail");
        Some(Enrolled {
            cgroup_id,
            plan,
            netns,
            warnings: vec![],
            addrs_warning: None,
            nameservers_from: None,
            dns_warning: None,
        })
    }

    /// Attaches a refused pod's sk_lookup, which refuses every connection into its network
    /// namespace. The netns, if attached.
    fn refuse_inbound(&mut self, cgroup_id: u64, spec: &PodSpec) -> Option<PathBuf> {
        let ns = spec.netns.as_ref()?;
        let attached = self
            .dataplane
            .check_netns(ns)
            .and_then(|()| self.dataplane.attach_netns(cgroup_id, ns));
        if let Err(e) = attached {
            warn!(error = %format!("{e:#}"), "refused pod: inbound connections not refused");
            return None;
        }
        Some(ns.clone())
    }

    /// Listeners the proxy opened before the agent ran never passed through sockops: fetch
    /// them from the pod's processes so their pod is steered at once.
    /// Only the proxy's listeners in the pod's own network namespace are taken, as sockops
    /// takes them (`inbound::may_listen`).
    fn register_existing_listeners(
        &mut self,
        cgroup_id: u64,
        cgroup: &Path,
        netns: &Path,
        config: &PodConfig,
    ) {
        let port = config.inbound_port;
        match self.dataplane.existing_listeners(cgroup, netns, port) {
            Ok(found) => {
                for listener in found {
                    let family = listener.family;
                    let (uid, gid) = (listener.uid, listener.gid);
                    if !listener.in_pod_netns {
                        warn!(
                            port,
                            uid, gid, "ignored a listener in another network namespace"
                        );
                        continue;
                    }
                    if !may_listen(config, uid, gid) {
                        warn!(port, uid, gid, "ignored a listener that is not the proxy's");
                        continue;
                    }
                    if let Err(e) = self.dataplane.add_listener(cgroup_id, &listener) {
                        warn!(error = %format!("{e:#}"), "could not register an existing listener");
                    } else {
                        info!(port, family, "registered an existing inbound listener");
                    }
                }
            }
            Err(e) => warn!(error = %format!("{e:#}"), "scanning for existing listeners"),
        }
    }
}

/// Everything of an enrolment goes: its map entries, then its links.
pub(super) fn unenrol<D: Dataplane>(dataplane: &mut D, x: &Enrolled) {
    dataplane.remove(x.cgroup_id, &x.plan);
    dataplane.detach_netns(x.cgroup_id);
    dataplane.detach_cgroup(x.cgroup_id);
}

/// `-u`/`-g` as the kernel compares them: through the pod's user namespace, as xt_owner reads
/// istio-init's rules.
fn to_host_ids(config: &mut PodConfig, maps: &IdMaps) -> Result<(), EnrolError> {
    let (nu, ng) = (usize::from(config.n_uids), usize::from(config.n_gids));
    for (flag, ids, n, map) in [
        ("-u", &mut config.uids, nu, &maps.uid),
        ("-g", &mut config.gids, ng, &maps.gid),
    ] {
        for id in ids.iter_mut().take(n) {
            *id = map
                .to_host(*id)
                .ok_or(EnrolError::UnmappedId { flag, id: *id })?;
        }
    }
    Ok(())
}
