//! A real Kubernetes API server for the tests: kube-apiserver v1.20 and etcd on loopback, run
//! by the repository's `tests/k8s-box.sh` (`K8S_BOX` names another copy; `BOX_DIR` and its
//! port variables are passed on to it).
//!
//! One server per test binary: the first test that asks starts it, and it stops when the
//! process exits. Tests share it and keep apart by namespace and node name. The agent runs
//! as the box's unprivileged `node-agent` user, bound to the ClusterRole of `deploy/` and to
//! nothing else, so the tests also prove that role is enough.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;

/// The user the box's agent kubeconfig authenticates as.
const AGENT_USER: &str = "node-agent";

/// How `deploy/kind/up.sh` installs the agent; the harness does the same on its fresh server.
pub const UP_SH_APPLY: &str = r#"kubectl apply -k "$repo/deploy""#;

pub struct Cluster {
    box_dir: PathBuf,
    runtime: tokio::runtime::Runtime,
    client: Client,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static NEXT_NAMESPACE: AtomicU32 = AtomicU32::new(0);

/// The test binary's API server, started on first use.
/// Where a systemd-driver kubelet puts a best-effort pod's cgroup, relative to the node's
/// cgroup root.
pub fn besteffort_cgroup(uid: &str) -> PathBuf {
    let uid = uid.replace('-', "_");
    PathBuf::from(format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice"
    ))
}

pub fn cluster() -> Result<&'static Cluster> {
    CLUSTER
        .get_or_init(|| Cluster::start().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("starting the test API server: {e}"))
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn box_script() -> PathBuf {
    std::env::var_os("K8S_BOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/k8s-box.sh"))
}

fn box_dir() -> PathBuf {
    match std::env::var_os("BOX_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/k8s-box"),
    }
}

fn run_box(verb: &str) -> Result<()> {
    crate::cmd::script(&box_script(), verb)
}

extern "C" fn stop_box_at_exit() {
    if let Err(e) = run_box("stop") {
        eprintln!("warning: {e:#}");
    }
}

/// Output of a command that must succeed; a failure carries its stderr.
fn checked(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

impl Cluster {
    fn start() -> Result<Self> {
        crate::require_root();
        // A box left running by a killed test run would hold the ports.
        run_box("stop")?;
        let started = std::time::Instant::now();
        run_box("start")?;
        eprintln!("test API server ready in {:?}", started.elapsed());
        // SAFETY: registers a plain function with no captured state.
        unsafe { libc::atexit(stop_box_at_exit) };
        let box_dir = box_dir();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let kubeconfig = box_dir.join("kubeconfig");
        let client = runtime.block_on(async {
            let file = Kubeconfig::read_from(&kubeconfig)?;
            let config =
                Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await?;
            anyhow::Ok(Client::try_from(config)?)
        })?;
        let cluster = Self {
            box_dir,
            runtime,
            client,
        };
        cluster.grant_agent_role()?;
        Ok(cluster)
    }

    /// Installs `deploy/` as `deploy/kind/up.sh` does, the first thing on the fresh server (so
    /// a manifest that needs something applied before it fails here, as on a new cluster), and
    /// binds its ClusterRole to the user the agent kubeconfig names.
    fn grant_agent_role(&self) -> Result<()> {
        checked(
            self.kubectl()
                .args(["apply", "-k"])
                .arg(repo_root().join("deploy")),
        )
        .context("applying deploy/ to a fresh API server, as deploy/kind/up.sh does")?;
        checked(self.kubectl().args([
            "create",
            "clusterrolebinding",
            "meshsteer-test-node-agent",
            "--clusterrole=meshsteer",
            &format!("--user={AGENT_USER}"),
        ]))?;
        Ok(())
    }

    /// `kubectl` as the box's admin.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(self.box_dir.join("kubeconfig"));
        cmd
    }

    /// The kubeconfig of the unprivileged user the agent runs as.
    pub fn agent_kubeconfig(&self) -> PathBuf {
        self.box_dir.join("kubeconfig-agent")
    }

    pub fn block_on<T>(&self, f: impl Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    /// A new namespace of its own for a test.
    pub fn namespace(&self) -> Result<String> {
        let name = format!(
            "t{}-{}",
            std::process::id(),
            NEXT_NAMESPACE.fetch_add(1, Ordering::Relaxed)
        );
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        self.block_on(
            Api::<Namespace>::all(self.client.clone()).create(&PostParams::default(), &ns),
        )
        .with_context(|| format!("creating namespace {name}"))?;
        Ok(name)
    }

    pub fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Creates a pod bound to `node` (as the scheduler would) with an app container and, if
    /// `sidecar`, Istio's `istio-proxy`; returns its UID.
    pub fn create_pod(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        sidecar: bool,
        annotations: &BTreeMap<String, String>,
    ) -> Result<String> {
        let mut containers = vec![json!({"name": "app", "image": "app"})];
        if sidecar {
            containers.push(json!({"name": "istio-proxy", "image": "proxy"}));
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"nodeName": node, "containers": containers},
        }))?;
        let pod = self
            .block_on(self.pods(namespace).create(&PostParams::default(), &pod))
            .with_context(|| format!("creating pod {namespace}/{name}"))?;
        pod.metadata.uid.context("created pod has no UID")
    }

    /// Creates pod `name` from `pod` (metadata and spec, as an injector left it) bound to
    /// `node`; returns its UID.
    pub fn create_pod_object(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        mut pod: serde_json::Value,
    ) -> Result<String> {
        pod["metadata"]["name"] = json!(name);
        pod["spec"]["nodeName"] = json!(node);
        let pod: Pod = serde_json::from_value(pod)?;
        let pod = self
            .block_on(self.pods(namespace).create(&PostParams::default(), &pod))
            .with_context(|| format!("creating pod {namespace}/{name}"))?;
        pod.metadata.uid.context("created pod has no UID")
    }

    /// Publishes the pod's addresses through the status subresource, as its kubelet would.
    pub fn set_pod_ips(&self, namespace: &str, name: &str, ips: &[IpAddr]) -> Result<()> {
        let listed: Vec<_> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
        let status = json!({"status": {
            "phase": "Running",
            "podIP": ips.first().map(IpAddr::to_string),
            "podIPs": listed,
        }});
        self.block_on(self.pods(namespace).patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(status),
        ))
        .with_context(|| format!("setting the status of {namespace}/{name}"))?;
        Ok(())
    }

    /// Sets (or with `None` removes) one annotation.
    pub fn annotate(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<()> {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        self.block_on(self.pods(namespace).patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(patch),
        ))
        .with_context(|| format!("annotating {namespace}/{name}"))?;
        Ok(())
    }

    /// Deletes the pod at once: no kubelet is there to finish a graceful deletion.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> Result<()> {
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        self.block_on(self.pods(namespace).delete(name, &now))
            .with_context(|| format!("deleting {namespace}/{name}"))?;
        Ok(())
    }
}
