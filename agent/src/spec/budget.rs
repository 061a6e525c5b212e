//! Per-pod budgets: how many entries one pod may hold in each node-wide map. Each budget is
//! that map's capacity divided by the node's pod limit (`--max-pods`), and the agent enrols at
//! most that many pods with sets, so pods at their budgets fill each map at most exactly:
//! whatever one pod asks for, every other pod still has its whole budget. The agent checks the
//! maps it writes before writing; the datapath checks live original destinations itself.
use meshsteer_common::maps::capacity;
use serde::{Deserialize, Serialize};

use super::plan::Plan;

/// The default `--max-pods`: above Kubernetes' default of 110 pods per node.
pub const DEFAULT_MAX_PODS: u32 = 128;

/// The node's pod limit and each pod's share of every map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Pods enrolled with capture (pods enrolled refused, with no sets, do not count).
    pub max_pods: u32,
    /// Per pod: outbound and inbound port-set entries (`-o`, `-q`, `-d`, `-b`), together.
    pub ports: u32,
    /// Per pod: `-x` CIDRs, and separately `-i` CIDRs (one trie each).
    pub cidrs: u32,
    /// Per pod: the pod's own addresses.
    pub local_addrs: u32,
    /// Per pod: live redirected connections (their original destinations, `MS_ORIG_DST`).
    /// Absent in status files of layout-2 agents.
    #[serde(default)]
    pub orig_dst: u32,
}

/// What one pod's plan takes of each map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub ports: u32,
    pub cidr_exclude: u32,
    pub cidr_include: u32,
    pub local_addrs: u32,
}

/// `--max-pods` out of range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "--max-pods {0}: must be from 1 to {max} (the node-wide maps hold {max} pods, half of \
     them kept for pods enrolled refused)",
    max = Budget::MAX_PODS
)]
pub struct MaxPodsError(u32);

/// A plan larger than its pod's budget.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "over the per-pod budget: {used} {what}, at most {limit} (each pod gets 1/{max_pods} of \
     the node's maps, see --max-pods); the pod is refused, fail closed"
)]
pub struct OverBudget {
    pub what: &'static str,
    pub used: u32,
    pub limit: u32,
    pub max_pods: u32,
}

impl Budget {
    /// The largest pod limit: `MS_PODS` keeps as many entries again for pods enrolled refused.
    pub const MAX_PODS: u32 = capacity::PODS / 2;

    pub fn new(max_pods: u32) -> Result<Self, MaxPodsError> {
        if max_pods == 0 || max_pods > Self::MAX_PODS {
            return Err(MaxPodsError(max_pods));
        }
        Ok(Self {
            max_pods,
            ports: capacity::PORTS / max_pods,
            cidrs: capacity::CIDRS / max_pods,
            // The addresses also key MS_INBOUND_ADDRS, of the same capacity.
            local_addrs: capacity::LOCAL_ADDRS / max_pods,
            // The map's slack beyond the budgets absorbs concurrent connect()s (capacity.rs).
            orig_dst: capacity::ORIG_DST_BUDGETED / max_pods,
        })
    }

    /// Refuses a plan that takes more than its share of any map.
    pub fn check(&self, u: &Usage) -> Result<(), OverBudget> {
        for (what, used, limit) in [
            ("port-set entries (-o, -q, -d, -b)", u.ports, self.ports),
            ("-x CIDRs", u.cidr_exclude, self.cidrs),
            ("-i CIDRs", u.cidr_include, self.cidrs),
            ("pod addresses", u.local_addrs, self.local_addrs),
        ] {
            if used > limit {
                return Err(OverBudget {
                    what,
                    used,
                    limit,
                    max_pods: self.max_pods,
                });
            }
        }
        Ok(())
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PODS).expect("the default pod limit is in range")
    }
}

impl Usage {
    /// The entries `plan` writes (duplicates counted as listed: never fewer than written).
    pub fn of(plan: &Plan) -> Self {
        let n = |len: usize| u32::try_from(len).unwrap_or(u32::MAX);
        Self {
            ports: n(plan.ports.len()),
            cidr_exclude: n(plan.cidr_exclude.len()),
            cidr_include: n(plan.cidr_include.len()),
            local_addrs: n(plan.local.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_at_their_budgets_fit_in_every_map() {
        for max_pods in [1, 16, DEFAULT_MAX_PODS, 1000, Budget::MAX_PODS] {
            let b = Budget::new(max_pods).unwrap();
            assert!(u64::from(b.ports) * u64::from(max_pods) <= u64::from(capacity::PORTS));
            assert!(u64::from(b.cidrs) * u64::from(max_pods) <= u64::from(capacity::CIDRS));
            assert!(
                u64::from(b.local_addrs) * u64::from(max_pods) <= u64::from(capacity::LOCAL_ADDRS)
            );
            assert!(
                u64::from(b.orig_dst) * u64::from(max_pods)
                    <= u64::from(capacity::ORIG_DST - capacity::ORIG_DST_SLACK)
            );
            assert!(b.ports >= 1 && b.cidrs >= 1 && b.local_addrs >= 1 && b.orig_dst >= 1);
        }
        assert!(Budget::new(0).is_err());
        assert!(Budget::new(Budget::MAX_PODS + 1).is_err());
    }

    #[test]
    fn the_first_set_over_budget_is_named() {
        let b = Budget::new(DEFAULT_MAX_PODS).unwrap();
        let at = Usage {
            ports: b.ports,
            cidr_exclude: b.cidrs,
            cidr_include: b.cidrs,
            local_addrs: b.local_addrs,
        };
        assert_eq!(b.check(&at), Ok(()));
        let over = Usage {
            cidr_include: b.cidrs + 1,
            ..at
        };
        let e = b.check(&over).unwrap_err();
        assert_eq!(
            (e.what, e.used, e.limit),
            ("-i CIDRs", b.cidrs + 1, b.cidrs)
        );
        assert!(e.to_string().contains("fail closed"), "{e}");
    }
}
