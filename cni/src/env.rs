//! The CNI_* environment the runtime runs the plugin with.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

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

    /// CNI_NETNS, required by ADD and CHECK: an absolute path, as [`host_path`] names it.
    pub fn netns(&self) -> Result<PathBuf, EnvError> {
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
        Ok(host_path(netns))
    }

    /// CNI_NETNS if given: DEL may come after the namespace is gone.
    pub fn netns_if_any(&self) -> Option<PathBuf> {
        self.netns.as_deref().map(host_path)
    }
}

/// The namespace's path with its directory's symlinks resolved: the agent sees the node's
/// files through its own mounts, which hold `/run/netns` but not `/var/run`, a symlink to
/// `/run` on the node (containerd passes `/var/run/netns/cni-…`). Only the directory: the
/// file itself may be a magic link (`/proc/<pid>/ns/net`), which must stay a path. A directory
/// that cannot be resolved (gone already, at DEL) is passed as given.
pub fn host_path(netns: &Path) -> PathBuf {
    let (Some(dir), Some(name)) = (netns.parent(), netns.file_name()) else {
        return netns.to_path_buf();
    };
    match std::fs::canonicalize(dir) {
        Ok(dir) => dir.join(name),
        Err(_) => netns.to_path_buf(),
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
            ("CNI_NETNS", "/nonexistent-run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAME=a"),
        ])
        .unwrap();
        assert_eq!(e.command, CniCommand::Add);
        assert_eq!(e.container_id().unwrap(), "abc-1_2.3");
        // A directory that does not resolve stays as given.
        assert_eq!(
            e.netns().unwrap(),
            PathBuf::from("/nonexistent-run/netns/cni-1")
        );
        assert_eq!(e.ifname().unwrap(), "eth0");
        assert_eq!(e.args, "K8S_POD_NAME=a");
    }

    /// containerd passes `/var/run/netns/cni-…`; the agent's container has `/run/netns` from
    /// the node, not `/var/run`, which is a symlink to `/run` on the node. Found on the real
    /// node: every ADD failed on a path the agent could not open.
    #[test]
    fn the_netns_path_has_its_directorys_symlinks_resolved() {
        let tmp = std::env::temp_dir()
            .canonicalize()
            .unwrap()
            .join(format!("ms-cni-netns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("run/netns")).unwrap();
        std::os::unix::fs::symlink(tmp.join("run"), tmp.join("var-run")).unwrap();
        let given = tmp.join("var-run/netns/cni-1");
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_NETNS", given.to_str().unwrap()),
        ])
        .unwrap();
        assert_eq!(e.netns().unwrap(), tmp.join("run/netns/cni-1"));
        assert_eq!(e.netns_if_any(), Some(tmp.join("run/netns/cni-1")));
        // The file itself is never resolved: /proc/<pid>/ns/net is a magic link.
        let proc_ns = format!("/proc/{}/ns/net", std::process::id());
        assert_eq!(host_path(Path::new(&proc_ns)), PathBuf::from(&proc_ns));
        std::fs::remove_dir_all(&tmp).unwrap();
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
