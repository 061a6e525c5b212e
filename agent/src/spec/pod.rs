//! Pod specs: the files in `--pods-dir`, and what the Kubernetes source derives from a pod.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use meshsteer_common::maps::MAX_PROXY_IDS;
use serde::{Deserialize, Serialize};

use super::{
    istio::{ArgsError, Capture, INJECTOR_DEFAULT_ARGS},
    resolv::MAX_NAMESERVERS,
};

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
    /// The nameservers `--redirect-dns` captures, when the agent cannot read the pod's own
    /// resolv.conf (exclusive with `resolvConf`). See docs/dns.md for which source wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Vec<IpAddr>>,
    /// A resolv.conf to read the pod's nameservers from, on the agent's filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<PathBuf>,
    /// Set by the Kubernetes source, never read from a file: the nameservers the pod's
    /// `dnsPolicy` gives it, or why they are not known. The last resort (see docs/dns.md).
    #[serde(skip)]
    pub kube_nameservers: Option<Result<Vec<IpAddr>, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("not a valid pod spec: {}", redact(.0))]
    Yaml(serde_norway::Error),
    #[error("not a valid pod spec: {}", redact(.0))]
    Json(serde_json::Error),
    #[error("give either `args` or `capture`, not both")]
    BothForms,
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error("at most {MAX_PROXY_IDS} proxy uids/gids are supported, got {0}")]
    TooManyIds(usize),
    #[error("a proxy uid and gid list cannot be empty")]
    NoIds,
    #[error("{0} cannot redirect to port 0")]
    PortZero(&'static str),
    #[error("give either `nameservers` or `resolvConf`, not both")]
    BothNameserverSources,
    #[error("at most {MAX_NAMESERVERS} nameservers are supported, got {0}")]
    TooManyNameservers(usize),
}

/// A parse error without the file's own text: serde quotes the values it rejects, and a spec
/// file may be anything (a secret dropped into the wrong directory), while the reason ends up
/// in the status file. Field names, the expected type and the position stay.
fn redact(error: &impl std::fmt::Display) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in error.to_string().chars() {
        match (c, quoted) {
            ('"', false) => {
                out.push_str("\"…");
                quoted = true;
            }
            ('"', true) => {
                out.push('"');
                quoted = false;
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

impl PodSpec {
    /// JSON for a `.json` file, else YAML. Unknown fields are refused: a misspelt setting
    /// must not leave capture silently at its default.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SpecError> {
        let json = path.extension().is_some_and(|e| e == "json");
        if json {
            serde_json::from_str(text).map_err(SpecError::Json)
        } else {
            serde_norway::from_str(text).map_err(SpecError::Yaml)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::istio::Ports;

    fn yaml(text: &str) -> Result<PodSpec, String> {
        PodSpec::parse(text, Path::new("p.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn unknown_fields_are_refused_naming_the_field_and_where() {
        assert_eq!(
            yaml("name: a\ncgroup: /x\nextra: 1\n").unwrap_err(),
            "not a valid pod spec: unknown field `extra`, expected one of `name`, `cgroup`, \
             `netns`, `ips`, `args`, `capture`, `accelerate`, `nameservers`, `resolvConf` at line 3 column 1"
        );
        let e = yaml("name: a\ncgroup: /x\ncapture: {proxyPort: 1, exclude_inbound_ports: [1]}\n")
            .unwrap_err();
        assert!(
            e.starts_with(
                "not a valid pod spec: capture: unknown field `exclude_inbound_ports`, expected \
                 one of `proxyPort`,"
            ),
            "{e}"
        );
        let e = PodSpec::parse(
            r#"{"name":"a","cgroup":"/x","extra":1}"#,
            Path::new("a.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("not a valid pod spec: unknown field `extra`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_are_refused_naming_the_field_and_what_it_takes() {
        assert_eq!(
            yaml("name: a\ncgroup: /x\nips: 10.0.0.1\n").unwrap_err(),
            "not a valid pod spec: ips: invalid type: string \"…\", expected a sequence at line \
             3 column 6"
        );
        assert_eq!(
            yaml("name: a\ncgroup: /x\ncapture: {proxyPort: 70000}\n").unwrap_err(),
            "not a valid pod spec: capture.proxyPort: invalid value: integer `70000`, expected \
             u16 at line 3 column 22"
        );
        let e =
            yaml("name: a\ncgroup: /x\ncapture: {excludeOutboundCidrs: [10.0.0.1]}\n").unwrap_err();
        assert!(e.contains("expected ADDRESS/PREFIX-LENGTH"), "{e}");
        assert!(
            yaml("name: a\n")
                .unwrap_err()
                .contains("missing field `cgroup`")
        );
    }

    /// A file that is not a spec (say, a secret in the wrong directory) never has its text
    /// copied into the error, which the status file shows.
    #[test]
    fn errors_never_quote_the_file() {
        for (text, path) in [
            ("hunter2-secret-token\n", "p.yaml"),
            (
                "name: a\ncgroup: /x\nips: [\"hunter2-secret-token\"]\n",
                "p.yaml",
            ),
            ("\"hunter2-secret-token\"", "p.json"),
            (
                r#"{"name": "a", "cgroup": "/x", "ips": "hunter2-secret-token"}"#,
                "p.json",
            ),
        ] {
            let e = PodSpec::parse(text, Path::new(path))
                .unwrap_err()
                .to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.starts_with("not a valid pod spec: "), "{e}");
        }
    }

    /// What serde_yaml 0.9 did with these, kept when its fork replaced it: a YAML crate that
    /// reads them otherwise changes which pods are enrolled.
    #[test]
    fn yaml_edge_cases_read_as_before() {
        // YAML 1.2 booleans only, and numbers are not strings.
        for text in [
            "accelerate: yes",
            "accelerate: on",
            "accelerate: maybe",
            "capture: {proxyPort: '15001'}",
            "capture: {proxyPort: 1_000}",
            "capture: {proxyPort: 015001}",
        ] {
            assert!(
                yaml(&format!("name: a\ncgroup: /x\n{text}\n")).is_err(),
                "{text}"
            );
        }
        assert_eq!(
            yaml("name: a\ncgroup: /x\naccelerate: True\n")
                .unwrap()
                .accelerate,
            Some(true)
        );
        // One document, no duplicate keys, no merge keys.
        for text in [
            "name: a\ncgroup: /x\n---\nname: b\ncgroup: /y\n",
            "name: a\ncgroup: /x\nname: b\n",
            "<<: {name: a, cgroup: /x}\n",
            "",
        ] {
            assert!(yaml(text).is_err(), "{text:?}");
        }
        let s = yaml("---\nname: &n a\ncgroup: /x\nargs: *n\nnetns: ~\n...\n").unwrap();
        assert_eq!((s.args.as_deref(), s.netns), (Some("a"), None));
        let c = yaml("name: a\ncgroup: /x\ncapture: {includeInboundPorts: '*', proxyGids: [2]}\n")
            .unwrap()
            .capture
            .unwrap();
        assert_eq!(c.include_inbound_ports, Ports::All);
        assert_eq!(c.gids(), [2]);
    }
}
