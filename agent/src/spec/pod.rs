//! Pod specs: the files in `--pods-dir`, and what the Kubernetes source derives from a pod.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use meshsteer_common::maps::MAX_PROXY_IDS;
use serde::{Deserialize, Serialize};

use super::istio::{ArgsError, Capture, INJECTOR_DEFAULT_ARGS};

/// A pod spec file, YAML or JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    /// Unique, e.g. `namespace/name`.
    pub name: String,
    /// The pod-level cgroup v2 directory.
    pub cgroup: PathBuf,
    /// The pod's network namespace file (used by inbound capture).
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The pod's addresses (first of each family = its source for off-pod traffic).
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// An istio-iptables command line, verbatim.
    #[serde(default)]
    pub args: Option<String>,
    /// The same settings as structured fields (exclusive with `args`).
    #[serde(default)]
    pub capture: Option<Capture>,
    /// Socket-level acceleration for this pod (default: the agent's `--accelerate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerate: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("not a valid pod spec: {0}")]
    Syntax(String),
    #[error("give either `args` or `capture`, not both")]
    BothForms,
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error("at most {MAX_PROXY_IDS} proxy uids/gids are supported, got {0}")]
    TooManyIds(usize),
    #[error("a proxy uid and gid list cannot be empty")]
    NoIds,
}

impl PodSpec {
    pub fn parse(text: &str, path: &Path) -> Result<Self, SpecError> {
        let json = path.extension().is_some_and(|e| e == "json");
        if json {
            serde_json::from_str(text).map_err(|e| SpecError::Syntax(e.to_string()))
        } else {
            serde_yaml::from_str(text).map_err(|e| SpecError::Syntax(e.to_string()))
        }
    }

    /// The capture settings, from `args`, `capture`, or the injector's default command line.
    pub fn capture(&self) -> Result<Capture, SpecError> {
        match (&self.args, &self.capture) {
            (Some(_), Some(_)) => Err(SpecError::BothForms),
            (Some(a), None) => Ok(Capture::from_args(a)?),
            (None, Some(c)) => Ok(c.clone()),
            (None, None) => Ok(Capture::from_args(INJECTOR_DEFAULT_ARGS)?),
        }
    }
}
