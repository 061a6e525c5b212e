//! The status file: what the running agent reports of itself and of each pod, written on every
//! change and read by `meshsteer status`, `trace`, `explain` and the tests. Its JSON shape is
//! a contract: field names are camelCase and stay stable.
use std::{
    fmt, fs,
    io::Write,
    net::{IpAddr, SocketAddr},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    str::FromStr,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    source::change::SourceKey,
    spec::{
        budget::{Budget, Usage},
        istio::Capture,
        resolv::NameserversFrom,
    },
};

/// The whole file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub pid: u32,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (the bound address: with port 0
    /// in `--metrics-addr`, the port the kernel picked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,
    /// The node's pod limit and each pod's share of the maps (absent in files of older
    /// agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    pub pods: Vec<PodStatus>,
}

/// One pod the agent knows of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// `namespace/name` (Kubernetes) or the spec's `name`.
    pub name: String,
    /// Where the pod came from.
    pub source: SourceKey,
    pub state: PodState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_id: Option<u32>,
    /// The capture settings in effect (parsed; absent until the pod is enrolled). With
    /// `ips`, what `meshsteer explain` decides from, whatever the pod's source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<Capture>,
    /// The addresses the settings in effect were applied for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// The other addresses of the pod's network namespace, local like `ips` for R8–R10
    /// (iptables' `-o lo` matches every address of the namespace); kept current.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_addrs: Vec<IpAddr>,
    /// The nameservers DNS capture (`--redirect-dns`) redirects, when it is in effect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    /// Where `nameservers` came from (docs/dns.md): `spec`, `resolvConf`, `pod` (its own
    /// resolv.conf, through one of its processes) or `kubernetes` (its dnsPolicy). Absent
    /// without `--redirect-dns`, while no source has them, and in files of older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameservers_from: Option<NameserversFrom>,
    /// What the capture in effect takes of the pod's budget (see the file's `budget`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The pod is enrolled refused (its state says why): its TCP connect()s fail with EPERM
    /// and connections to its addresses are refused, rather than any of them going direct.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_closed: bool,
    /// Socket-level acceleration is on for the enrolled pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerate: Option<bool>,
    /// What of the pod's enrolment is not as istio-init would have it, though its capture is
    /// in effect (`::6/128` missing from its `lo`), and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// How the agent enrolled the pod: `cni` (at its sandbox's ADD, before any container ran),
    /// `watch` (found running: it started before the CNI plugin was installed) or `specFile`.
    /// Absent until enrolled, and in files of older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_by: Option<EnrolledBy>,
    /// Where the pod's capture options came from (absent in files of older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<OptionsOrigin>,
    /// Live counters, added by `meshsteer status` from the pinned maps (never in the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<std::collections::BTreeMap<String, u64>>,
}

/// Where a pod's capture options came from, and what changed since that the agent has not
/// applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OptionsOrigin {
    pub from: OptionsFrom,
    /// Changes to the pod that were not applied, and why (on Kubernetes: annotations changed
    /// after the pod's capture was decided, which istio-init decides once per pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

pub use crate::source::change::{EnrolledBy, OptionsFrom};

/// Whether a pod's capture is in effect. In the file it is one string: `ready`,
/// `waiting: <reason>` or `error: <reason>`, so that a person and a script read it alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum PodState {
    /// Its capture is in effect.
    Ready,
    /// Not on the node yet (no addresses, cgroup or network namespace); retried.
    Waiting(String),
    /// Refused or failed. A pod that was ready before keeps its previous capture.
    Error(String),
}

impl PodState {
    /// The state's name alone, as `/metrics` labels it.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Waiting(_) => "waiting",
            Self::Error(_) => "error",
        }
    }
}

impl fmt::Display for PodState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready => f.write_str("ready"),
            Self::Waiting(why) => write!(f, "waiting: {why}"),
            Self::Error(why) => write!(f, "error: {why}"),
        }
    }
}

/// A state string that is none of `ready`, `waiting: …`, `error: …`.
#[derive(Debug, thiserror::Error)]
#[error("unknown pod state {0:?}")]
pub struct UnknownState(String);

impl FromStr for PodState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, UnknownState> {
        if s == "ready" {
            return Ok(Self::Ready);
        }
        if let Some(why) = s.strip_prefix("waiting: ") {
            return Ok(Self::Waiting(why.into()));
        }
        if let Some(why) = s.strip_prefix("error: ") {
            return Ok(Self::Error(why.into()));
        }
        Err(UnknownState(s.into()))
    }
}

impl From<PodState> for String {
    fn from(s: PodState) -> Self {
        s.to_string()
    }
}

impl TryFrom<String> for PodState {
    type Error = UnknownState;

    fn try_from(s: String) -> Result<Self, UnknownState> {
        s.parse()
    }
}

impl AgentStatus {
    /// Atomically replaces the status file (readers never see half a file).
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        // Owner only: it names every pod on the node and their settings. A leftover tmp file
        // (an earlier crash) keeps its old mode under `mode()`, so it goes first.
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }

    /// The running agent's status file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading {} (is `meshsteer run` running?)", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_as_one_string() {
        for (state, text) in [
            (PodState::Ready, "\"ready\""),
            (
                PodState::Waiting("no cgroup".into()),
                "\"waiting: no cgroup\"",
            ),
            (PodState::Error("bad -p".into()), "\"error: bad -p\""),
        ] {
            assert_eq!(serde_json::to_string(&state).unwrap(), text);
            assert_eq!(serde_json::from_str::<PodState>(text).unwrap(), state);
        }
        assert!(serde_json::from_str::<PodState>("\"fine\"").is_err());
    }

    #[test]
    fn a_layout_2_agents_budget_is_read() {
        let doc: AgentStatus = serde_json::from_str(
            r#"{"pid": 1, "budget": {"maxPods": 128, "ports": 512, "cidrs": 2048,
                "localAddrs": 512}, "pods": []}"#,
        )
        .unwrap();
        assert_eq!(doc.budget.map(|b| (b.ports, b.orig_dst)), Some((512, 0)));
    }

    #[test]
    fn file_round_trips() {
        let doc = AgentStatus {
            pid: 7,
            metrics_addr: Some("127.0.0.1:9102".parse().unwrap()),
            budget: None,
            pods: vec![PodStatus {
                name: "default/web".into(),
                source: SourceKey::Kube {
                    namespace: "default".into(),
                    name: "web".into(),
                },
                state: PodState::Ready,
                cgroup: Some("/sys/fs/cgroup/kubepods/podx".into()),
                cgroup_id: Some(42),
                pod_id: Some(1),
                capture: Some(Capture::default()),
                ips: vec!["10.0.0.5".parse().unwrap()],
                local_addrs: vec![],
                nameservers: vec!["10.96.0.10".parse().unwrap()],
                nameservers_from: Some(NameserversFrom::Pod),
                accelerate: Some(false),
                usage: None,
                fail_closed: false,
                warnings: vec!["::6/128 is not on the pod's lo".into()],
                enrolled_by: Some(EnrolledBy::Cni),
                options: Some(OptionsOrigin {
                    from: OptionsFrom::Annotations,
                    pending: Some("annotation x changed".into()),
                }),
                counters: None,
            }],
        };
        let text = serde_json::to_string(&doc).unwrap();
        assert!(text.contains(r#""cgroupId":42"#), "{text}");
        assert!(
            text.contains(r#""options":{"from":"annotations","pending":"annotation x changed"}"#),
            "{text}"
        );
        assert!(text.contains(r#""source":{"kube":{"namespace":"default","name":"web"}}"#));
        assert!(text.contains(r#""ips":["10.0.0.5"]"#), "{text}");
        assert!(
            text.contains(r#""warnings":["::6/128 is not on the pod's lo"]"#),
            "{text}"
        );
        assert!(text.contains(r#""enrolledBy":"cni""#), "{text}");
        assert!(text.contains(r#""capture":{"proxyPort":15001,"#), "{text}");
        assert_eq!(serde_json::from_str::<AgentStatus>(&text).unwrap(), doc);

        let dir = std::env::temp_dir().join(format!("ms-status-{}", std::process::id()));
        let path = dir.join("status.json");
        doc.write(&path).unwrap();
        doc.write(&path).unwrap();
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path).unwrap().permissions())
                & 0o777;
        assert_eq!(mode, 0o600, "the status file is the owner's only");
        assert_eq!(AgentStatus::read(&path).unwrap(), doc);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn options_are_optional_and_spelt_camel_case() {
        // A file from an agent without the field still reads.
        let old =
            r#"{"pid":1,"pods":[{"name":"a","source":{"file":"/p/a.yaml"},"state":"ready"}]}"#;
        let doc: AgentStatus = serde_json::from_str(old).unwrap();
        assert_eq!(doc.pods[0].options, None);
        let o = OptionsOrigin {
            from: OptionsFrom::SpecFile,
            pending: None,
        };
        assert_eq!(serde_json::to_string(&o).unwrap(), r#"{"from":"specFile"}"#);
    }
}
