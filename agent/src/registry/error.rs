//! Why the registry refused a pod.
use std::path::PathBuf;

use crate::{
    source::change::SourceKey,
    spec::{budget::OverBudget, pod::SpecError},
};

/// Why a pod was not enrolled (or not updated: then its previous capture stays).
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("pod name {name:?} is already used by {other}")]
    NameTaken { name: String, other: SourceKey },
    #[error(
        "cgroup {} is outside the cgroup root {} where capture is attached",
        .cgroup.display(),
        .root.display()
    )]
    OutsideRoot { cgroup: PathBuf, root: PathBuf },
    #[error(
        "cgroup {} is the cgroup root where capture is attached: a pod is a cgroup below it",
        .0.display()
    )]
    IsRoot(PathBuf),
    #[error(
        "cgroup {} and {other}'s cgroup {} are nested: a socket belongs to the outermost \
         enrolled pod, so one pod would take the other's capture",
        .cgroup.display(),
        .other_cgroup.display()
    )]
    Nested {
        cgroup: PathBuf,
        other: SourceKey,
        other_cgroup: PathBuf,
    },
    #[error(
        "address {addr} is already {other}'s: inbound capture follows each address to one \
         pod's network namespace, so two pods cannot share one"
    )]
    AddressTaken {
        addr: std::net::IpAddr,
        other: SourceKey,
    },
    #[error("cgroup {} is already enrolled by {other}", .cgroup.display())]
    CgroupTaken { cgroup: PathBuf, other: SourceKey },
    #[error(
        "inbound capture (-b) needs the pod's network namespace: add `netns:` to the spec, \
         or `-b \"\"` to capture outbound only"
    )]
    InboundNeedsNetns,
    #[error(
        "{flag} {id} is not mapped in the pod's user namespace, so istio-init's owner rule \
         would be refused too (xt_owner reads it in that namespace)"
    )]
    UnmappedId { flag: &'static str, id: u32 },
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
    #[error(
        "the node's pod limit is reached: {max_pods} pods are enrolled with capture (--max-pods); \
         the pod is refused, fail closed"
    )]
    PodLimit { max_pods: u32 },
    /// The spec's `resolvConf` cannot be read (the error names the path).
    #[error("the pod's resolvConf: {0:#}")]
    ResolvConf(anyhow::Error),
    /// The spec asks for what meshsteer cannot do.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The host or the maps said no.
    #[error(transparent)]
    Dataplane(#[from] anyhow::Error),
}
