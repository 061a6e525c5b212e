//! What the registry reports of each pod, for the status file and `/metrics`.
use super::Registry;
use crate::source::change::{SourceKey, Unready};
use crate::spec::budget::Usage;
use crate::telemetry::status::{OptionsFrom, OptionsOrigin, PodState, PodStatus};

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
                    state: match &e.unready {
                        None => PodState::Ready,
                        Some(Unready::Waiting(r)) => PodState::Waiting(r.clone()),
                        Some(Unready::Refused(r)) => PodState::Error(r.clone()),
                    },
                    cgroup: e.spec.as_ref().map(|s| s.cgroup.clone()),
                    cgroup_id: e.enrolled.as_ref().map(|x| x.cgroup_id),
                    pod_id: captured.map(|x| x.plan.config.pod_id),
                    // What is in effect: after a refused update, still the previous settings.
                    capture: captured.map(|x| x.plan.capture().clone()),
                    ips: captured.map(|x| x.plan.ips().to_vec()).unwrap_or_default(),
                    usage: captured.map(|x| Usage::of(&x.plan)),
                    fail_closed: e.enrolled.as_ref().is_some_and(|x| x.plan.is_refused()),
                    accelerate: captured.map(|x| x.plan.accelerates()),
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
