//! What the registry reports of each pod, for the status file and `/metrics`.
use super::Registry;
use crate::source::change::{SourceKey, Unready};
use crate::telemetry::status::{OptionsFrom, OptionsOrigin, PodState, PodStatus};

impl<D> Registry<D> {
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
                // What is in effect: after a refused update, still the previous settings.
                capture: e.enrolled.as_ref().map(|x| x.plan.capture().clone()),
                ips: e
                    .enrolled
                    .as_ref()
                    .map(|x| x.plan.ips().to_vec())
                    .unwrap_or_default(),
                accelerate: e.enrolled.as_ref().map(|x| x.plan.accelerates()),
                options: Some(OptionsOrigin {
                    from: e.from.unwrap_or(match key {
                        SourceKey::File(_) => OptionsFrom::SpecFile,
                        SourceKey::Kube { .. } => OptionsFrom::Annotations,
                    }),
                    pending: e.pending.clone(),
                }),
                counters: None,
            })
            .collect()
    }
}
