//! What a pod source reports: one pod appeared, changed, is not ready or went away. The leaf
//! of `source/`: the registry and the status file name pods by [`SourceKey`].
use std::{fmt, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::pod::PodSpec;

/// Where a pod comes from: the key its source knows it by, stable across its updates.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SourceKey {
    /// A spec file in `--pods-dir`.
    File(PathBuf),
    /// A pod on this node, from the Kubernetes API server.
    Kube { namespace: String, name: String },
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Kube { namespace, name } => write!(f, "pod {namespace}/{name}"),
        }
    }
}

/// Why a source has no spec for a pod it knows of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unready {
    /// The pod is not there yet (no addresses, cgroup or network namespace): a later look
    /// may find it.
    Waiting(String),
    /// Its spec is invalid or asks for what meshsteer cannot do: it stays refused until it
    /// changes.
    Refused(String),
}

/// A pod its source knows of but cannot give a spec for, with the name `meshsteer status`
/// shows it under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub name: String,
    pub why: Unready,
    /// Where the refused pod is (its cgroup, network namespace and addresses; no capture),
    /// when its source knows: the registry enrols it refused, fail closed, rather than leave
    /// it uncaptured.
    pub located: Option<Box<PodSpec>>,
}

impl Rejected {
    pub fn refused(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            why: Unready::Refused(reason.into()),
            located: None,
        }
    }

    pub fn waiting(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            why: Unready::Waiting(reason.into()),
            located: None,
        }
    }

    /// The refused pod is at `pod` (whose capture is not used).
    pub fn at(mut self, pod: PodSpec) -> Self {
        self.located = Some(Box::new(pod));
        self
    }
}

/// The path a pod's options took. New paths are new variants: readers must accept values
/// they do not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OptionsFrom {
    /// A spec file's `args` or `capture` (or the injector's default line).
    SpecFile,
    /// A Kubernetes pod's annotations and sidecar, as Istio's injector turns them into
    /// istio-init's line (pods injected without meshsteer's template).
    Annotations,
    /// istio-init's line and environment as meshsteer's injection template rendered them into
    /// the pod's `meshsteer.io/istio-init` annotation.
    Template,
}

/// How the agent came to enrol a pod, which says whether capture was in effect from its first
/// instruction. New ways are new variants: readers must accept values they do not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EnrolledBy {
    /// A spec file in `--pods-dir`.
    SpecFile,
    /// The CNI plugin's ADD, while the runtime set the pod's sandbox up: before any of its
    /// containers ran.
    Cni,
    /// The Kubernetes watch, once the pod was on the node: a pod that started before the CNI
    /// plugin was installed, or on a node without it.
    Watch,
}

/// One pod of a source appeared, changed or went away.
pub enum Change {
    Upsert(SourceKey, Box<Result<PodSpec, Rejected>>),
    Remove(SourceKey),
    /// Changes to a known pod that the source does not apply, and why (`None`: there are
    /// none). Shown in `meshsteer status`; follows the pod's `Upsert`.
    Pending(SourceKey, Option<String>),
    /// Where a known pod's options came from, when its source tells them apart. Follows the
    /// pod's `Upsert`.
    Origin(SourceKey, OptionsFrom),
    /// How the known pod was enrolled. Follows its first ready `Upsert`.
    EnrolledBy(SourceKey, EnrolledBy),
    /// The known pod's processes may have changed (containers started) though its spec did
    /// not: what the registry reads through them (its resolv.conf) is read again.
    Refresh(SourceKey),
}

/// Changes from one look at a source.
pub struct Batch {
    pub changes: Vec<Change>,
    /// The source listed all its pods: every pod it did not name is gone, so what a previous
    /// agent enrolled for pods that no longer exist can be forgotten.
    pub complete: bool,
}
