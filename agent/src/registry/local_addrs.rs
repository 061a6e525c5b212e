//! The addresses of an enrolled pod's network namespace, local for R8–R10 as iptables' `-o lo`
//! has them: listed at enrolment, then kept current as the namespace's addresses change.
//!
//! An address beyond the pod's budget of local addresses is left out of the maps and named in
//! the pod's status: the datapath then treats it as remote. That fails safe: the app's
//! connections to it are still captured (to the proxy's outbound port, not returned as R10
//! would), nothing escapes the proxy; only the proxy's own connections to it go direct rather
//! than through inbound (R9). Refusing the whole pod, fail closed, for an address added at run
//! time would cut a running pod off for a difference that lets nothing escape.
use std::{collections::BTreeSet, net::IpAddr, path::Path};

use tracing::{debug, error, info_span, warn};

use super::{Dataplane, Registry};
use crate::spec::plan::Plan;

impl<D: Dataplane> Registry<D> {
    /// `plan` with the current addresses of `netns` as local too, watched from now on; and
    /// what the status must say if that is not whole.
    pub(super) fn watch_local_addrs(
        &mut self,
        cgroup_id: u64,
        plan: Plan,
        netns: Option<&Path>,
    ) -> (Plan, Option<String>) {
        let Some(ns) = netns else {
            return (plan, None);
        };
        match self.dataplane.watch_local_addrs(cgroup_id, ns) {
            Ok(found) => self.with_addrs(&plan, &found),
            Err(e) => {
                let why = format!("{e:#}");
                error!(
                    error = %why,
                    "could not list the addresses of the pod's network namespace: only its \
                     `ips` are local for R8-R10"
                );
                let warning = format!(
                    "the addresses of the pod's network namespace are not tracked ({why}): \
                     only its ips count as local (R8-R10), where iptables' -o lo matches every \
                     address of the namespace"
                );
                (plan, Some(warning))
            }
        }
    }

    /// The plan with `found` as local addresses, within the pod's budget.
    fn with_addrs(&self, plan: &Plan, found: &BTreeSet<IpAddr>) -> (Plan, Option<String>) {
        let limit = self.budget.local_addrs;
        let (plan, over) = plan.with_netns_addrs(found, limit);
        debug!(addrs = ?plan.netns_addrs(), "local addresses of the pod's network namespace");
        if over.is_empty() {
            return (plan, None);
        }
        let list: Vec<String> = over.iter().map(ToString::to_string).collect();
        warn!(
            addrs = %list.join(","),
            budget = limit,
            "addresses of the pod's network namespace over its budget: treated as remote"
        );
        let warning = format!(
            "{} address(es) of the pod's network namespace are over its budget of {limit} \
             local addresses and treated as remote, where iptables' -o lo would match them \
             (the app's connections to them are captured rather than returned by R10; the \
             proxy's go direct rather than to inbound by R9): {}",
            over.len(),
            list.join(", ")
        );
        (plan, Some(warning))
    }

    /// The addresses of the pod enrolled under `cgroup_id` may have changed: its local set
    /// follows them. Whether what the status says of it changed.
    pub fn refresh_local_addrs(&mut self, cgroup_id: u64) -> bool {
        let found = match self.dataplane.local_addrs_changed(cgroup_id) {
            Ok(Some(found)) => found,
            Ok(None) => return false,
            Err(e) => {
                warn!(cgroup_id, error = %format!("{e:#}"), "reading address changes");
                return false;
            }
        };
        let Some((name, current)) = self.pods.values().find_map(|e| {
            let x = e.enrolled.as_ref()?;
            (x.cgroup_id == cgroup_id && !x.plan.is_refused()).then(|| (e.name.clone(), x))
        }) else {
            return false;
        };
        let _g = info_span!("pod", pod = %name).entered();
        let (plan, warning) = self.with_addrs(&current.plan, &found);
        if plan == current.plan && warning == current.addrs_warning {
            return false;
        }
        if let Err(e) = self.dataplane.update_local(cgroup_id, &plan, &current.plan) {
            error!(
                error = %format!("{e:#}"),
                "could not write the pod's new local addresses: the previous ones stay"
            );
            return false;
        }
        tracing::info!(addrs = ?plan.netns_addrs(), "local addresses changed");
        if let Some(x) = self
            .pods
            .values_mut()
            .filter_map(|e| e.enrolled.as_mut())
            .find(|x| x.cgroup_id == cgroup_id)
        {
            x.plan = plan;
            x.addrs_warning = warning;
        }
        true
    }
}
