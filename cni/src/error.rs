//! Every way the plugin fails, and the one place that maps each to a CNI error code and to the
//! error object the spec puts on stdout.

use std::io;

use serde_json::{Value, json};

use crate::args::ArgsError;
use crate::client::ClientError;
use crate::conf::{ConfError, SUPPORTED_VERSIONS};
use crate::env::EnvError;
use crate::proto::{Command, PodRef, Reply};
use crate::result::ResultError;

/// The agent refused the pod: its capture cannot be applied as configured (an unsupported
/// annotation, over its budget, …). The pod must not start until that is fixed.
pub const CODE_REFUSED: u32 = 100;
/// The agent could not apply or remove the pod's capture for another reason.
pub const CODE_AGENT_FAILED: u32 = 101;
/// The agent answered something this plugin does not understand, or a reply that does not fit
/// the command (a plugin and an agent of different versions).
pub const CODE_PROTOCOL: u32 = 102;
/// CHECK: the agent has no capture for the pod (it was removed since ADD).
pub const CODE_NOT_CAPTURED: u32 = 103;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the configuration from stdin: {0}")]
    Stdin(#[source] io::Error),
    #[error("configuration on stdin is larger than {0} bytes")]
    ConfigTooLarge(usize),
    #[error(transparent)]
    Conf(#[from] ConfError),
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error(transparent)]
    PrevResult(#[from] ResultError),
    #[error(
        "no prevResult: meshsteer-cni must be chained after the node's primary plugin in a conflist"
    )]
    NotChained,
    #[error("CHECK is not defined for cniVersion {0} (it needs 0.4.0 or later)")]
    CheckNeedsVersion(String),
    #[error(transparent)]
    Agent(#[from] ClientError),
    #[error("meshsteer refused pod {}/{}: {reason}", pod.namespace, pod.name)]
    Refused { pod: PodRef, reason: String },
    #[error("meshsteer failed for pod {}/{}: {reason}", pod.namespace, pod.name)]
    AgentFailed { pod: PodRef, reason: String },
    #[error("meshsteer agent answered {command:?} with an unexpected {reply:?}")]
    UnexpectedReply { command: Command, reply: Reply },
    #[error("capture is not in effect for pod {}/{}: the meshsteer agent has no enrolment for it", pod.namespace, pod.name)]
    NotCaptured { pod: PodRef },
    #[error("meshsteer-cni cannot serve ADD: {0}")]
    Unavailable(#[source] ClientError),
}

impl Error {
    /// The CNI error code: 0–99 as the spec defines them, 100+ meshsteer's own (above).
    pub fn code(&self) -> u32 {
        match self {
            Error::Conf(ConfError::Version(_)) | Error::CheckNeedsVersion(_) => 1,
            Error::Env(_) | Error::Args(_) => 4,
            Error::Stdin(_) => 5,
            Error::Conf(ConfError::Decode(_)) => 6,
            Error::Conf(ConfError::Invalid(_))
            | Error::ConfigTooLarge(_)
            | Error::PrevResult(_)
            | Error::NotChained => 7,
            Error::Agent(ClientError::Unreachable { .. } | ClientError::NoAnswer { .. }) => 11,
            Error::Unavailable(_) => 50,
            Error::Refused { .. } => CODE_REFUSED,
            Error::AgentFailed { .. } => CODE_AGENT_FAILED,
            Error::Agent(ClientError::Exchange { .. }) | Error::UnexpectedReply { .. } => {
                CODE_PROTOCOL
            }
            Error::NotCaptured { .. } => CODE_NOT_CAPTURED,
        }
    }

    /// What an operator can do about it; the runtime shows it after `msg`.
    fn details(&self) -> &'static str {
        match self {
            Error::Agent(ClientError::Unreachable { .. } | ClientError::NoAnswer { .. }) => {
                "meshsteer-cni fails closed while the node's meshsteer agent is not serving, so \
                 no meshed pod runs uncaptured; the kubelet retries the sandbox. Check the \
                 meshsteer agent pod on this node."
            }
            Error::Refused { .. } => {
                "meshsteer cannot capture this pod as configured, so it does not let it start; \
                 fix the pod's settings named above."
            }
            Error::AgentFailed { .. } => "see the meshsteer agent's log on this node",
            Error::Agent(ClientError::Exchange { .. }) | Error::UnexpectedReply { .. } => {
                "the meshsteer-cni binary and the agent may be of different versions; the agent \
                 reinstalls the binary when it starts"
            }
            Error::Conf(_) | Error::ConfigTooLarge(_) | Error::NotChained => {
                "check the meshsteer-cni entry of the node's CNI conflist"
            }
            _ => "",
        }
    }

    /// The error object for stdout, in `cni_version` (the configuration's when it has a
    /// supported one).
    pub fn to_json(&self, cni_version: &str) -> Value {
        let version = if SUPPORTED_VERSIONS.contains(&cni_version) {
            cni_version
        } else {
            crate::conf::FALLBACK_VERSION
        };
        json!({
            "cniVersion": version,
            "code": self.code(),
            "msg": self.to_string(),
            "details": self.details(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    fn pod() -> PodRef {
        PodRef {
            namespace: "shop".into(),
            name: "cart-0".into(),
            uid: "u".into(),
        }
    }

    #[test]
    fn error_object_shape() {
        let e = Error::Refused {
            pod: pod(),
            reason: "unsupported annotation traffic.sidecar.istio.io/foo".into(),
        };
        let v = e.to_json("0.4.0");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["code"], 100);
        assert_eq!(
            v["msg"],
            "meshsteer refused pod shop/cart-0: unsupported annotation traffic.sidecar.istio.io/foo"
        );
        assert!(
            v["details"]
                .as_str()
                .unwrap()
                .contains("does not let it start")
        );
        assert_eq!(v.as_object().unwrap().len(), 4);
        // An unknown version is not echoed.
        assert_eq!(e.to_json("9.9.9")["cniVersion"], "1.0.0");
    }

    #[test]
    fn codes() {
        let unreachable = Error::Agent(ClientError::Unreachable {
            socket: PathBuf::from("/run/meshsteer/cni.sock"),
            waited: Some(Duration::from_secs(30)),
            source: io::ErrorKind::NotFound.into(),
        });
        assert_eq!(unreachable.code(), 11);
        assert!(
            unreachable
                .to_string()
                .starts_with("meshsteer agent not reachable at /run/meshsteer/cni.sock for 30s: ")
        );
        assert_eq!(Error::NotChained.code(), 7);
        assert_eq!(Error::Conf(ConfError::Version("0.2.0".into())).code(), 1);
        assert_eq!(
            Error::Env(EnvError {
                var: "CNI_NETNS",
                problem: "missing".into()
            })
            .code(),
            4
        );
        assert_eq!(Error::Args(ArgsError::Missing("K8S_POD_UID")).code(), 4);
        assert_eq!(Error::NotCaptured { pod: pod() }.code(), 103);
    }
}
