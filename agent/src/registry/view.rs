//! What the registry reports of each pod, for the status file and `/metrics`.
use super::{Dataplane, Entry, Registry};
use crate::source::change::{SourceKey, Unready};
use crate::spec::budget::Usage;
use crate::telemetry::status::{EnrolledBy, OptionsFrom, OptionsOrigin, PodState, PodStatus};

impl<D: Dataplane> Registry<D> {
    /// The pod's state, if the registry has it.
    pub fn state(&self, key: &SourceKey) -> Option<PodState> {
        self.pods.get(key).map(Entry::state)
    }

    /// Whether the pod's error (its state `error: …`) is the agent's own failure, the host or
    /// the maps refusing a write, rather than settings meshsteer cannot apply.
    pub fn agent_failed(&self, key: &SourceKey) -> bool {
        self.pods
            .get(key)
            .is_some_and(|e| e.agent_failed && matches!(e.unready, Some(Unready::Refused(_))))
    }

    /// Whether the pod's capture is in effect in the datapath, as the agent last wrote it
    /// (see [`Dataplane::in_effect`]); why not, otherwise.
    pub fn verify(&self, key: &SourceKey) -> Result<(), String> {
        let e = self
            .pods
            .get(key)
            .ok_or("the agent has not enrolled the pod")?;
        if let Some(Unready::Refused(r) | Unready::Waiting(r)) = &e.unready {
            return Err(r.clone());
        }
        let x = e
            .enrolled
            .as_ref()
            .ok_or("the agent has not enrolled the pod")?;
        if x.plan.is_refused() {
            return Err("enrolled refused (fail closed)".into());
        }
        let inbound = x.plan.config.flags & meshsteer_common::maps::pod_flags::IN_CAPTURE != 0;
        let netns = x.netns.as_deref().filter(|_| inbound);
        self.dataplane
            .in_effect(x.cgroup_id, &x.plan, netns)
            .map_err(|e| format!("{e:#}"))
    }

    /// The network namespace the pod is enrolled in, if any.
    pub fn netns(&self, key: &SourceKey) -> Option<&std::path::Path> {
        self.pods.get(key)?.enrolled.as_ref()?.netns.as_deref()
    }
}

impl<D> Registry<D> {
    pub fn status(&self) -> Vec<PodStatus> {
        self.pods
            .iter()
            .map(|(key, e)| {
                // A pod enrolled refused has no capture in effect.
                let captured = e.enrolled.as_ref().filter(|x| !x.plan.is_refused());
                PodStatus {
                    name: e.name.clone(),
                    source: key.clone(),
                    state: e.state(),
                    cgroup: e.spec.as_ref().map(|s| s.cgroup.clone()),
                    cgroup_id: e.enrolled.as_ref().map(|x| x.cgroup_id),
                    pod_id: captured.map(|x| x.plan.config.pod_id),
                    // What is in effect: after a refused update, still the previous settings.
                    capture: captured.map(|x| x.plan.capture().clone()),
                    ips: captured.map(|x| x.plan.ips().to_vec()).unwrap_or_default(),
                    usage: captured.map(|x| Usage::of(&x.plan)),
                    fail_closed: e.enrolled.as_ref().is_some_and(|x| x.plan.is_refused()),
                    accelerate: captured.map(|x| x.plan.accelerates()),
                    local_addrs: captured
                        .map(|x| x.plan.netns_addrs().to_vec())
                        .unwrap_or_default(),
                    nameservers: captured.map(|x| x.plan.nameservers()).unwrap_or_default(),
                    nameservers_from: captured.and_then(|x| x.nameservers_from),
                    warnings: captured
                        .map(|x| {
                            x.warnings
                                .iter()
                                .chain(&x.addrs_warning)
                                .chain(&x.dns_warning)
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default(),
                    enrolled_by: e.enrolled_by.or(match key {
                        SourceKey::File(_) => Some(EnrolledBy::SpecFile),
                        SourceKey::Kube { .. } => None,
                    }),
                    options: Some(OptionsOrigin {
                        from: e.from.unwrap_or(match key {
                            SourceKey::File(_) => OptionsFrom::SpecFile,
                            SourceKey::Kube { .. } => OptionsFrom::Annotations,
                        }),
                        pending: e.pending.clone(),
                    }),
                    counters: None,
                }
            })
            .collect()
    }
}

impl Entry {
    /// What the status says of the pod.
    fn state(&self) -> PodState {
        match &self.unready {
            None => PodState::Ready,
            Some(Unready::Waiting(r)) => PodState::Waiting(r.clone()),
            Some(Unready::Refused(r)) => PodState::Error(r.clone()),
        }
    }
}
