//! The plugin's configuration, as the runtime hands it on stdin: the standard keys, the
//! chain's `prevResult`, and meshsteer's own `agentSocket` and `timeoutSeconds`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::proto::DEFAULT_SOCKET;

/// The spec versions this plugin speaks. 0.3.x is in because common primary plugins' conflists
/// (kind's kindnet among them) still declare 0.3.1, and its result has the same `ips` shape as
/// 0.4.0; CHECK needs 0.4.0 or later. 1.1.0 adds GC and STATUS, which the plugin answers.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version used to answer when the input names none (or cannot be read).
pub const FALLBACK_VERSION: &str = "1.0.0";

/// How long ADD waits for the agent unless `timeoutSeconds` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The range `timeoutSeconds` may take: at least one second, at most five minutes (the
/// runtime's own CNI timeout is of that order; longer only hides a broken node).
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=300;

/// The largest configuration read from stdin (config plus the chain's result).
pub const MAX_CONFIG: usize = 1024 * 1024;

/// A configuration the plugin cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("configuration is not valid JSON: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("unsupported cniVersion {0:?} (supported: {list})", list = SUPPORTED_VERSIONS.join(", "))]
    Version(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A parsed configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// The previous plugin's result, kept as raw JSON: ADD hands it back unchanged.
    pub prev_result: Option<Value>,
    pub agent_socket: PathBuf,
    pub timeout: Duration,
}

impl NetConf {
    /// Whether the configuration's version has CHECK (0.4.0 and later).
    pub fn has_check(&self) -> bool {
        !self.cni_version.starts_with("0.3.")
    }
}

/// `cniVersion` of `input`, if it is a JSON object naming one: the version to answer errors
/// (and VERSION) in, even when the rest of the configuration is wrong.
pub fn version_of(input: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(input).ok()?;
    value.get("cniVersion")?.as_str().map(str::to_string)
}

/// Parses and checks a configuration. Keys the plugin does not know (`args`,
/// `runtimeConfig`, `capabilities`, …) are left alone: the runtime adds them.
pub fn parse(input: &[u8]) -> Result<NetConf, ConfError> {
    let value: Value = serde_json::from_slice(input).map_err(ConfError::Decode)?;
    let Value::Object(map) = value else {
        return Err(ConfError::Invalid("not a JSON object".into()));
    };
    let cni_version = string(&map, "cniVersion")?;
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(ConfError::Version(cni_version));
    }
    let name = string(&map, "name")?;
    // `type` names this plugin's binary; the runtime found us through it.
    string(&map, "type")?;
    let prev_result = match map.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(other) => {
            return Err(ConfError::Invalid(format!(
                "prevResult must be an object, not {other}"
            )));
        }
    };
    let agent_socket = match map.get("agentSocket") {
        None => PathBuf::from(DEFAULT_SOCKET),
        Some(Value::String(s)) if s.starts_with('/') => PathBuf::from(s),
        Some(other) => {
            return Err(ConfError::Invalid(format!(
                "agentSocket must be an absolute path, not {other}"
            )));
        }
    };
    let timeout = match map.get("timeoutSeconds") {
        None => DEFAULT_TIMEOUT,
        Some(v) => match v.as_u64() {
            Some(secs) if TIMEOUT_RANGE.contains(&secs) => Duration::from_secs(secs),
            _ => {
                return Err(ConfError::Invalid(format!(
                    "timeoutSeconds must be a whole number of seconds from {} to {}, not {v}",
                    TIMEOUT_RANGE.start(),
                    TIMEOUT_RANGE.end()
                )));
            }
        },
    };
    Ok(NetConf {
        cni_version,
        name,
        prev_result,
        agent_socket,
        timeout,
    })
}

fn string(map: &Map<String, Value>, key: &str) -> Result<String, ConfError> {
    match map.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None => Err(ConfError::Invalid(format!("{key} is missing"))),
        Some(other) => Err(ConfError::Invalid(format!(
            "{key} must be a non-empty string, not {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn conf(extra: Value) -> Result<NetConf, ConfError> {
        let mut base =
            json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "meshsteer-cni"});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        parse(&serde_json::to_vec(&base).unwrap())
    }

    #[test]
    fn defaults() {
        let c = conf(json!({})).unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.name, "k8s-pod-network");
        assert_eq!(c.prev_result, None);
        assert_eq!(c.agent_socket, PathBuf::from("/run/meshsteer/cni.sock"));
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert!(c.has_check());
    }

    #[test]
    fn own_keys_and_prev_result() {
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]});
        let c = conf(json!({
            "agentSocket": "/tmp/x.sock",
            "timeoutSeconds": 2,
            "prevResult": prev,
            "runtimeConfig": {"portMappings": []},
        }))
        .unwrap();
        assert_eq!(c.agent_socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.prev_result, Some(prev));
    }

    #[test]
    fn bad_values_are_config_errors_naming_the_key() {
        for (extra, key) in [
            (json!({"timeoutSeconds": 0}), "timeoutSeconds"),
            (json!({"timeoutSeconds": 301}), "timeoutSeconds"),
            (json!({"timeoutSeconds": 1.5}), "timeoutSeconds"),
            (json!({"timeoutSeconds": "30"}), "timeoutSeconds"),
            (json!({"timeoutSeconds": -1}), "timeoutSeconds"),
            (json!({"agentSocket": "run/x.sock"}), "agentSocket"),
            (json!({"agentSocket": 7}), "agentSocket"),
            (json!({"prevResult": []}), "prevResult"),
            (json!({"name": ""}), "name"),
            (json!({"type": null}), "type"),
        ] {
            match conf(extra.clone()) {
                Err(ConfError::Invalid(msg)) => assert!(msg.contains(key), "{extra}: {msg}"),
                other => panic!("{extra}: {other:?}"),
            }
        }
        assert!(matches!(parse(b"{"), Err(ConfError::Decode(_))));
        assert!(matches!(parse(b"[]"), Err(ConfError::Invalid(_))));
    }

    #[test]
    fn versions() {
        for v in SUPPORTED_VERSIONS {
            assert!(conf(json!({"cniVersion": v})).is_ok(), "{v}");
        }
        assert!(!conf(json!({"cniVersion": "0.3.1"})).unwrap().has_check());
        assert!(matches!(
            conf(json!({"cniVersion": "0.2.0"})),
            Err(ConfError::Version(v)) if v == "0.2.0"
        ));
        assert!(matches!(
            conf(json!({"cniVersion": "2.0.0"})),
            Err(ConfError::Version(_))
        ));
        assert_eq!(
            version_of(br#"{"cniVersion":"0.4.0","x":1}"#).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(version_of(b"nonsense"), None);
    }
}
