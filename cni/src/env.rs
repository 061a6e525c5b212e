//! The CNI_* environment the runtime runs the plugin with.

use std::ffi::OsString;
use std::path::PathBuf;

/// CNI_COMMAND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
    Version,
    /// Spec 1.1.0.
    Gc,
    /// Spec 1.1.0.
    Status,
}

/// A variable missing or invalid; the message names it, as the spec asks (error code 4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct EnvError {
    pub var: &'static str,
    pub problem: String,
}

/// The variables as given; each command requires its own ([`Env::container_id`], …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: CniCommand,
    container_id: Option<String>,
    netns: Option<PathBuf>,
    ifname: Option<String>,
    pub args: String,
}

impl Env {
    /// Reads the variables through `var` (`std::env::var_os`, or a map in tests).
    pub fn read(var: impl Fn(&str) -> Option<OsString>) -> Result<Self, EnvError> {
        let text = |name: &'static str| -> Result<Option<String>, EnvError> {
            match var(name) {
                None => Ok(None),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => v.into_string().map(Some).map_err(|_| EnvError {
                    var: name,
                    problem: "not valid UTF-8".into(),
                }),
            }
        };
        let command = match text("CNI_COMMAND")?.as_deref() {
            Some("ADD") => CniCommand::Add,
            Some("DEL") => CniCommand::Del,
            Some("CHECK") => CniCommand::Check,
            Some("VERSION") => CniCommand::Version,
            Some("GC") => CniCommand::Gc,
            Some("STATUS") => CniCommand::Status,
            Some(other) => {
                return Err(EnvError {
                    var: "CNI_COMMAND",
                    problem: format!(
                        "unknown command {other:?} (ADD, DEL, CHECK, VERSION, GC, STATUS)"
                    ),
                });
            }
            None => {
                return Err(EnvError {
                    var: "CNI_COMMAND",
                    problem: "missing".into(),
                });
            }
        };
        // The path is handed to the agent as is; it opens it, so it need not be UTF-8 here,
        // but every runtime uses plain paths and the protocol is JSON.
        Ok(Self {
            command,
            container_id: text("CNI_CONTAINERID")?,
            netns: text("CNI_NETNS")?.map(PathBuf::from),
            ifname: text("CNI_IFNAME")?,
            args: text("CNI_ARGS")?.unwrap_or_default(),
        })
    }

    /// CNI_CONTAINERID, required by ADD, DEL and CHECK: non-empty, an alphanumeric first
    /// character, then alphanumerics, `_`, `.` or `-` (the spec's rule).
    pub fn container_id(&self) -> Result<&str, EnvError> {
        let id = self.container_id.as_deref().ok_or(EnvError {
            var: "CNI_CONTAINERID",
            problem: "missing".into(),
        })?;
        let mut chars = id.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            return Err(EnvError {
                var: "CNI_CONTAINERID",
                problem: format!("{id:?} is not a valid container id"),
            });
        }
        Ok(id)
    }

    /// CNI_IFNAME, required by ADD, DEL and CHECK.
    pub fn ifname(&self) -> Result<&str, EnvError> {
        self.ifname.as_deref().ok_or(EnvError {
            var: "CNI_IFNAME",
            problem: "missing".into(),
        })
    }

    /// CNI_NETNS, required by ADD and CHECK: an absolute path.
    pub fn netns(&self) -> Result<&PathBuf, EnvError> {
        let netns = self.netns.as_ref().ok_or(EnvError {
            var: "CNI_NETNS",
            problem: "missing".into(),
        })?;
        if !netns.is_absolute() {
            return Err(EnvError {
                var: "CNI_NETNS",
                problem: format!("{} is not an absolute path", netns.display()),
            });
        }
        Ok(netns)
    }

    /// CNI_NETNS if given: DEL may come after the namespace is gone.
    pub fn netns_if_any(&self) -> Option<&PathBuf> {
        self.netns.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, EnvError> {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Env::read(|k| vars.get(k).cloned())
    }

    #[test]
    fn an_add_environment() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-1_2.3"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAME=a"),
        ])
        .unwrap();
        assert_eq!(e.command, CniCommand::Add);
        assert_eq!(e.container_id().unwrap(), "abc-1_2.3");
        assert_eq!(e.netns().unwrap(), &PathBuf::from("/var/run/netns/cni-1"));
        assert_eq!(e.ifname().unwrap(), "eth0");
        assert_eq!(e.args, "K8S_POD_NAME=a");
    }

    #[test]
    fn missing_and_invalid_variables_are_named() {
        assert_eq!(env(&[]).unwrap_err().var, "CNI_COMMAND");
        assert_eq!(
            env(&[("CNI_COMMAND", "ADDD")]).unwrap_err().var,
            "CNI_COMMAND"
        );
        let e = env(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")]).unwrap();
        assert_eq!(e.container_id().unwrap_err().var, "CNI_CONTAINERID");
        assert_eq!(e.ifname().unwrap_err().var, "CNI_IFNAME");
        assert_eq!(e.netns().unwrap_err().var, "CNI_NETNS");
        assert_eq!(e.netns_if_any(), None);
        for bad in ["-abc", "a/b", "a b", "ä"] {
            let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", bad)]).unwrap();
            assert_eq!(
                e.container_id().unwrap_err().var,
                "CNI_CONTAINERID",
                "{bad}"
            );
        }
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "netns/x")]).unwrap();
        assert!(e.netns().unwrap_err().problem.contains("absolute"));
    }
}
