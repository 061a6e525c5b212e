//! Driving real CNI plugins as a container runtime does: a conflist whose chain is Debian's
//! `bridge` (with `host-local` IPAM) then `meshsteer-cni`, each plugin run with the CNI_*
//! environment and its config on stdin, ADD in order with each result passed on as the next
//! `prevResult`, DEL in reverse. Plugins run in the test node's network namespace (the bridge
//! lives there, never on the machine's own); the pod's namespace is a bare one, as a runtime
//! makes it before ADD.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::{
    cmd::{self, Place},
    topology::Node,
};

/// Debian's containernetworking-plugins.
pub const PLUGINS_DIR: &str = "/usr/lib/cni";

/// The plugin under test (`cargo xtask test` builds it and says where).
pub fn plugin_bin() -> PathBuf {
    std::env::var_os("MESHSTEER_CNI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/meshsteer-cni")
        })
}

/// The pod a sandbox is for, as CNI_ARGS name it.
#[derive(Clone, Debug)]
pub struct PodId {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// A pod sandbox before ADD: its network namespace (no interface but `lo`) and its pod-level
/// cgroup with one container cgroup below, made where the kubelet makes them. Removed on drop.
pub struct Sandbox {
    ns_name: String,
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    pub app_cgroup: PathBuf,
    pub container_id: String,
}

impl Sandbox {
    /// `cgroup`: the pod-level cgroup, relative to the node's cgroup root.
    pub fn new(node: &Node, name: &str, cgroup: &Path) -> Result<Self> {
        let sandbox = Self::without_cgroup2(node, name, cgroup)?;
        sandbox.make_cgroup2()?;
        Ok(sandbox)
    }

    /// The sandbox as a hybrid host has it at ADD: runc makes the cgroup2 directories
    /// ([`Self::make_cgroup2`]) only when its first process starts, after ADD.
    pub fn without_cgroup2(node: &Node, name: &str, cgroup: &Path) -> Result<Self> {
        let ns_name = format!("{}-cni-{name}", node.id);
        cmd::host("ip", &["netns", "add", &ns_name])?;
        let cgroup = node.cgroup_root.join(cgroup);
        let app_cgroup = cgroup.join("app");
        let sandbox = Self {
            netns: PathBuf::from("/run/netns").join(&ns_name),
            ns_name,
            cgroup,
            app_cgroup,
            container_id: format!("{:0>64}", format!("{name}{}", std::process::id())),
        };
        cmd::host("ip", &["-n", &sandbox.ns_name, "link", "set", "lo", "up"])?;
        Ok(sandbox)
    }

    /// The pod's cgroup2 directory and its container's below, as runc makes them.
    pub fn make_cgroup2(&self) -> Result<()> {
        std::fs::create_dir_all(&self.app_cgroup)
            .with_context(|| format!("creating {}", self.app_cgroup.display()))
    }

    /// Where a process of the pod's app runs, as `uid`.
    pub fn place(&self, uid: u32) -> Place<'_> {
        Place {
            netns: Some(&self.netns),
            cgroup: Some(&self.app_cgroup),
            uid,
            gid: uid,
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = cmd::host("ip", &["netns", "del", &self.ns_name]);
        // Its container's cgroup too, waiting out a last process still exiting.
        let _ = crate::topology::remove_cgroup_tree(&self.cgroup);
    }
}

/// A cgroup v1 hierarchy of the test's own (named, no controller) standing in for a hybrid
/// host's: there a kubelet with the cgroupfs driver makes each pod's cgroup in the v1
/// hierarchies, at the node's cgroup root's place in each. Unmounted, with what the test made
/// in it, on drop.
pub struct CgroupV1 {
    mount: PathBuf,
    /// The node's cgroup root's place in it.
    root: PathBuf,
}

impl CgroupV1 {
    pub fn mount(node: &Node) -> Result<Self> {
        let mount = std::env::temp_dir()
            .join("meshsteer-tests")
            .join(format!("{}-cgroup1", node.id));
        std::fs::create_dir_all(&mount)?;
        let target = mount.to_str().context("temp dir not UTF-8")?;
        cmd::host(
            "mount",
            &[
                "-t",
                "cgroup",
                "-o",
                "none,name=meshsteer-test",
                "cgroup",
                target,
            ],
        )
        .context("mounting a named cgroup v1 hierarchy (the kernel must have cgroup v1)")?;
        let v2 = meshsteer::inspect::cgroup2_mount()?;
        let rel = node.cgroup_root.strip_prefix(&v2)?;
        Ok(Self {
            root: mount.join(rel),
            mount,
        })
    }

    /// The pod-level cgroup `rel` (relative to the node's cgroup root), as the kubelet makes it.
    pub fn make(&self, rel: &Path) -> Result<()> {
        let dir = self.root.join(rel);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))
    }
}

/// Removes the directories of a cgroup v1 tree, deepest first (their files go with them).
fn rmdir_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for CgroupV1 {
    fn drop(&mut self) {
        rmdir_tree(&self.root);
        for dir in self.root.ancestors().skip(1) {
            if dir == self.mount || std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
        let _ = cmd::host("umount", &[&self.mount.to_string_lossy()]);
        let _ = std::fs::remove_dir(&self.mount);
    }
}

/// A plugin's failure: its exit status and the CNI error it printed.
#[derive(Debug)]
pub struct CniError {
    pub plugin: String,
    pub error: Value,
    pub stderr: String,
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} failed: {} ({})",
            self.plugin,
            self.error,
            self.stderr.trim()
        )
    }
}

impl std::error::Error for CniError {}

impl CniError {
    /// The error's `msg` and `details`, for matching.
    pub fn text(&self) -> String {
        format!("{} {}", self.error["msg"], self.error["details"])
    }
}

/// The node's primary plugin as a conflist would name it: `bridge` on `cni0` with
/// `host-local` addresses of 10.89.0.0/16, its leases kept in `ipam_dir`.
pub fn bridge_plugin(ipam_dir: &Path) -> Value {
    json!({
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.89.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": ipam_dir,
        },
    })
}

/// A network: a conflist (bridge + host-local, then meshsteer-cni) and where it keeps state.
pub struct Chain<'a> {
    node: &'a Node,
    conf: Value,
    /// Removed on drop (None: the test owns the state).
    dir: Option<PathBuf>,
    /// Where plugin binaries are looked up, in order, as CNI_PATH (None: meshsteer-cni is the
    /// one under test, the others Debian's).
    bin_dirs: Option<Vec<PathBuf>>,
}

impl<'a> Chain<'a> {
    /// Pods get addresses of `subnet` on the node's bridge `cni0`; meshsteer-cni asks the
    /// agent on `socket`, waiting at most `timeout_s` seconds.
    pub fn new(node: &'a Node, socket: &Path, timeout_s: u32) -> Result<Self> {
        let dir = std::env::temp_dir()
            .join("meshsteer-tests")
            .join(format!("{}-cni", node.id));
        std::fs::create_dir_all(&dir)?;
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": "mst-pods",
            "plugins": [
                bridge_plugin(&dir.join("ipam")),
                {
                    "type": "meshsteer-cni",
                    "agentSocket": socket,
                    "timeoutSeconds": timeout_s,
                },
            ],
        });
        Ok(Self {
            node,
            conf,
            dir: Some(dir),
            bin_dirs: None,
        })
    }

    /// Pods get an IPv6 address of `subnet` too (and an IPv6 default route): a dual-stack
    /// network.
    pub fn with_ipv6(mut self, subnet: &str) -> Self {
        let ipam = &mut self.conf["plugins"][0]["ipam"];
        if let Some(ranges) = ipam["ranges"].as_array_mut() {
            ranges.push(json!([{ "subnet": subnet }]));
        }
        if let Some(routes) = ipam["routes"].as_array_mut() {
            routes.push(json!({ "dst": "::/0" }));
        }
        self
    }

    /// The network a runtime would set pods up with from `conf_dir`: its first configuration
    /// file in lexical order (`*.conf`, `*.conflist`, `*.json`, as libcni lists them), read
    /// now, each plugin found in `bin_dirs` in order (CNI_PATH).
    pub fn from_conf_dir(node: &'a Node, conf_dir: &Path, bin_dirs: &[PathBuf]) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| ["conf", "conflist", "json"].contains(&e))
            })
            .collect();
        files.sort();
        let file = files
            .first()
            .with_context(|| format!("no network configuration in {}", conf_dir.display()))?;
        let text = std::fs::read_to_string(file)?;
        let conf: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        if file.extension().is_some_and(|e| e == "conflist") {
            ensure!(
                conf["plugins"].is_array(),
                "{} has no plugins",
                file.display()
            );
        } else {
            bail!("{} is not a conflist", file.display());
        }
        Ok(Self {
            node,
            conf,
            dir: None,
            bin_dirs: Some(bin_dirs.to_vec()),
        })
    }

    /// The plugins' types, in order.
    pub fn types(&self) -> Vec<String> {
        self.plugins()
            .iter()
            .map(|p| p["type"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// ADD through the whole chain: the last plugin's result.
    pub fn add(&self, sb: &Sandbox, pod: &PodId) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            prev = Some(self.exec("ADD", &plugin, sb, pod, prev.as_ref())?);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// ADD, timed: how long meshsteer-cni alone took (the rest of the chain is not ours).
    pub fn add_timed(&self, sb: &Sandbox, pod: &PodId) -> Result<(Value, Duration), CniError> {
        let plugins = self.plugins();
        let (last, first) = plugins.split_last().expect("a chain");
        let mut prev: Option<Value> = None;
        for plugin in first {
            prev = Some(self.exec("ADD", plugin, sb, pod, prev.as_ref())?);
        }
        let started = Instant::now();
        let result = self.exec("ADD", last, sb, pod, prev.as_ref())?;
        Ok((result, started.elapsed()))
    }

    /// DEL through the chain, last plugin first.
    pub fn del(&self, sb: &Sandbox, pod: &PodId) -> Result<(), CniError> {
        for plugin in self.plugins().iter().rev() {
            self.exec("DEL", plugin, sb, pod, None)?;
        }
        Ok(())
    }

    /// CHECK of meshsteer-cni alone, given the chain's ADD result.
    pub fn check(&self, sb: &Sandbox, pod: &PodId, added: &Value) -> Result<(), CniError> {
        let last = self.plugins().last().expect("a chain").clone();
        self.exec("CHECK", &last, sb, pod, Some(added)).map(drop)
    }

    fn plugins(&self) -> Vec<Value> {
        self.conf["plugins"].as_array().cloned().unwrap_or_default()
    }

    /// Runs one plugin as a runtime does, in the node's network namespace.
    fn exec(
        &self,
        command: &str,
        plugin: &Value,
        sb: &Sandbox,
        pod: &PodId,
        prev: Option<&Value>,
    ) -> Result<Value, CniError> {
        let kind = plugin["type"].as_str().unwrap_or_default().to_string();
        let fail = |error: Value, stderr: String| CniError {
            plugin: format!("{kind} {command}"),
            error,
            stderr,
        };
        let mut conf = plugin.clone();
        conf["cniVersion"] = self.conf["cniVersion"].clone();
        conf["name"] = self.conf["name"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let (bin, cni_path) = match &self.bin_dirs {
            None => (
                if kind == "meshsteer-cni" {
                    plugin_bin()
                } else {
                    Path::new(PLUGINS_DIR).join(&kind)
                },
                format!(
                    "{PLUGINS_DIR}:{}",
                    plugin_bin().parent().unwrap_or(Path::new("/")).display()
                ),
            ),
            Some(dirs) => (
                dirs.iter()
                    .map(|d| d.join(&kind))
                    .find(|p| p.is_file())
                    .ok_or_else(|| {
                        fail(
                            json!({"msg": format!("failed to find plugin {kind:?} in {dirs:?}")}),
                            String::new(),
                        )
                    })?,
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
        };
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            pod.namespace, pod.name, sb.container_id, pod.uid
        );
        let place = Place {
            netns: Some(&self.node.netns),
            ..Place::default()
        };
        let run = || -> Result<std::process::Output> {
            let mut c = cmd::command(&place, &bin.to_string_lossy(), &[])?;
            c.env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", &sb.container_id)
                .env("CNI_NETNS", &sb.netns)
                .env("CNI_IFNAME", "eth0")
                .env("CNI_ARGS", &args)
                .env("CNI_PATH", &cni_path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = c
                .spawn()
                .with_context(|| format!("running {}", bin.display()))?;
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(conf.to_string().as_bytes())?;
            Ok(child.wait_with_output()?)
        };
        let out = run().map_err(|e| fail(json!({"msg": format!("{e:#}")}), String::new()))?;
        let stdout: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).unwrap_or_else(
                |_| json!({"msg": String::from_utf8_lossy(&out.stdout).into_owned()}),
            )
        };
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(fail(stdout, stderr));
        }
        Ok(stdout)
    }
}

impl Drop for Chain<'_> {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The ADD result's first IPv4 address, without its prefix length.
pub fn first_ipv4(result: &Value) -> Result<String> {
    first_of_family(result, false)
}

/// The ADD result's first IPv6 address, without its prefix length.
pub fn first_ipv6(result: &Value) -> Result<String> {
    first_of_family(result, true)
}

fn first_of_family(result: &Value, v6: bool) -> Result<String> {
    for ip in result["ips"].as_array().into_iter().flatten() {
        let addr = ip["address"].as_str().unwrap_or_default();
        if let Some((a, _)) = addr.split_once('/')
            && a.contains(':') == v6
        {
            return Ok(a.to_string());
        }
    }
    bail!("no IPv{} address in {result}", if v6 { 6 } else { 4 })
}
