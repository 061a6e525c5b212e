//! Enrolling one pod: the checks that refuse it, then the dataplane writes, in the order the
//! datapath needs (link before addresses, new plan before the old one goes).
use std::path::Path;

use meshsteer_common::{
    Addr,
    inbound::may_listen,
    maps::{PodConfig, pod_flags},
};
use tracing::{info, warn};

use super::{Dataplane, Enrolled, Registry, error::EnrolError};
use crate::{
    bpf::accel::Support,
    host::userns::IdMaps,
    source::change::SourceKey,
    spec::{plan::Plan, pod::PodSpec},
};

impl<D: Dataplane> Registry<D> {
    pub(super) fn enrol(
        &mut self,
        key: &SourceKey,
        spec: &PodSpec,
        previous: Option<&Enrolled>,
    ) -> Result<Enrolled, EnrolError> {
        if let Some((other, _)) = self
            .pods
            .iter()
            .find(|(k, e)| *k != key && e.name == spec.name)
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
        if let Some((other, other_cgroup)) = self.pods.iter().find_map(|(k, e)| {
            let theirs = &e.spec.as_ref()?.cgroup;
            let nested = e.enrolled.is_some()
                && *theirs != spec.cgroup
                && (theirs.starts_with(&spec.cgroup) || spec.cgroup.starts_with(theirs));
            (k != key && nested).then(|| (k.clone(), theirs.clone()))
        }) {
            return Err(EnrolError::Nested {
                cgroup: spec.cgroup.clone(),
                other,
                other_cgroup,
            });
        }
        let cgroup_id = self.dataplane.cgroup_id(&spec.cgroup)?;
        if let Some((other, _)) = self.pods.iter().find(|(k, e)| {
            *k != key
                && e.enrolled
                    .as_ref()
                    .is_some_and(|x| x.cgroup_id == cgroup_id)
        }) {
            return Err(EnrolError::CgroupTaken {
                cgroup: spec.cgroup.clone(),
                other: other.clone(),
            });
        }
        if let Some(ns) = &spec.netns {
            self.dataplane.check_netns(ns)?;
        }
        let mut plan = Plan::new(spec, self.next_pod_id)?;
        if let Some(ns) = &spec.netns
            && let Some(maps) = self.dataplane.id_maps(ns, &spec.cgroup)?
        {
            to_host_ids(&mut plan.config, &maps)?;
        }
        self.next_pod_id += 1;
        plan.set_accelerate(spec.accelerate.unwrap_or(self.accelerate));
        if let (true, Support::Unavailable(why)) = (plan.accelerates(), &self.accel_support) {
            warn!(reason = %why, "acceleration asked for but unavailable: normal path");
        }
        let inbound = plan.config.flags & pod_flags::IN_CAPTURE != 0;
        if inbound && let Some((addr, other)) = self.address_taken(key, &plan) {
            return Err(EnrolError::AddressTaken { addr, other });
        }
        match (&spec.netns, inbound) {
            // Attached before the pod's addresses are mapped: until then it passes everything.
            (Some(ns), true) => self.dataplane.attach_netns(cgroup_id, ns)?,
            (None, true) => return Err(EnrolError::InboundNeedsNetns),
            // Detached only once the new plan is in: a failed write keeps all of the old one.
            (_, false) => {}
        }
        // Same cgroup as before: swap in place. A different one: the old one is removed.
        let same = previous.filter(|p| p.cgroup_id == cgroup_id);
        if let Err(e) = self
            .dataplane
            .apply(cgroup_id, &plan, same.map(|p| &p.plan))
        {
            if same.is_none() {
                self.dataplane.detach_netns(cgroup_id);
            }
            return Err(e.into());
        }
        if !inbound {
            self.dataplane.detach_netns(cgroup_id);
        }
        if let Some(old) = previous.filter(|p| p.cgroup_id != cgroup_id) {
            self.dataplane.remove(old.cgroup_id, &old.plan);
            self.dataplane.detach_netns(old.cgroup_id);
        }
        let addrs: Vec<Addr> = plan.local.iter().map(|k| k.addr).collect();
        self.dataplane
            .set_inbound_addrs(cgroup_id, if inbound { &addrs } else { &[] });
        if inbound && let Some(netns) = &spec.netns {
            self.register_existing_listeners(cgroup_id, &spec.cgroup, netns, &plan.config);
        }
        Ok(Enrolled {
            cgroup_id,
            plan,
            netns: spec.netns.clone(),
        })
    }

    /// An address of `plan` that another enrolled pod already captures inbound.
    fn address_taken(&self, key: &SourceKey, plan: &Plan) -> Option<(std::net::IpAddr, SourceKey)> {
        self.pods
            .iter()
            .filter(|(k, _)| *k != key)
            .filter_map(|(k, e)| Some((k, &e.enrolled.as_ref()?.plan)))
            .filter(|(_, theirs)| theirs.config.flags & pod_flags::IN_CAPTURE != 0)
            .find_map(|(k, theirs)| {
                let shared = plan
                    .local
                    .iter()
                    .find(|mine| theirs.local.iter().any(|t| t.addr == mine.addr))?;
                Some((std::net::IpAddr::from(shared.addr), k.clone()))
            })
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
