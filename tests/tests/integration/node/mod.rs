//! A real node (tests/node-box: kubelet v1.20 on containerd, CNI bridge, no route out): the
//! DaemonSet of `deploy/` as shipped plus only the operator overlay of
//! `tests/node-box/overlay/`, on images from `cargo xtask image`, capturing real pods that carry
//! Istio's sidecar (an `istio-proxy` HAProxy as uid/gid 1337) and the injector's annotations,
//! with no istio-init. The tests share one node (`node_box::shared`), one at a time; each
//! deploys what it needs and works in a namespace of its own.
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use meshsteer_tests::{
    apps,
    kube::repo_root,
    node_box::{self, NODE_NAME, NodeBox, Shared, checked, image_archive},
};
use serde_json::{Value, json};

/// The agent deleted, rolled and killed under load: no request fails.
mod agent_lifecycle;
/// Every QoS class and pod kind, captured.
mod kinds;
/// 50 pods created and deleted leave the agent idle.
mod pod_lifecycle;
/// The seed's scenario: nginx ×3 and a client through both sidecars.
mod seed;
/// A pod's first connection, at start-up, is captured (the CNI plugin).
mod startup;
/// `meshsteer uninstall --live` in the agent pod leaves nothing on the node.
mod uninstall;

pub const AGENT_NS: &str = "meshsteer";
pub const AGENT_SELECTOR: &str = "app.kubernetes.io/name=meshsteer";
/// What Istio's injector writes on a pod it injected (a regular sidecar, no init container:
/// meshsteer replaces istio-init).
const STATUS: &str = r#"{"initContainers":null,"containers":["istio-proxy"],"volumes":["istio-envoy"],"imagePullSecrets":null,"revision":"default"}"#;
/// The answer of nginx's `/both` when the request went through both sidecars.
pub const THROUGH_BOTH: &str = "out=haproxy-outbound in=haproxy-inbound peer=127.0.0.6";
const IMAGES: [&str; 4] = ["meshsteer.tar", "nginx.tar", "curl.tar", "istio-proxy.tar"];
pub const NGINX: &str = "localhost/meshsteer-test/nginx:1";
pub const CURL: &str = "localhost/meshsteer-test/curl:1";
const PROXY: &str = "localhost/meshsteer-test/istio-proxy:1";

/// The shared node with the test images imported. Checked before the node starts: a missing
/// image fails at once.
pub fn node() -> Result<Shared> {
    let archives = IMAGES
        .iter()
        .map(|f| image_archive(f))
        .collect::<Result<Vec<_>>>()?;
    let mut node = node_box::shared()?;
    for archive in &archives {
        node.import(archive)?;
    }
    Ok(node)
}

/// One agent pod as the API server shows it.
#[derive(Debug, Clone)]
pub struct AgentPod {
    pub name: String,
    pub uid: String,
    pub ready: bool,
    pub deleting: bool,
    pub restarts: u64,
    pub image: String,
}

pub fn agent_pods(node: &NodeBox) -> Result<Vec<AgentPod>> {
    let out = node.kc(&[
        "-n",
        AGENT_NS,
        "get",
        "pods",
        "-l",
        AGENT_SELECTOR,
        "-o",
        "json",
    ])?;
    let list: Value = serde_json::from_str(&out)?;
    let pods = list["items"].as_array().cloned().unwrap_or_default();
    Ok(pods
        .iter()
        .map(|p| {
            let agent = p["status"]["containerStatuses"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["name"] == "agent").cloned())
                .unwrap_or(Value::Null);
            AgentPod {
                name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
                uid: p["metadata"]["uid"].as_str().unwrap_or_default().into(),
                ready: agent["ready"] == true,
                deleting: !p["metadata"]["deletionTimestamp"].is_null(),
                restarts: agent["restartCount"].as_u64().unwrap_or(0),
                image: p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
            }
        })
        .collect())
}

/// The one agent pod that is Ready (through /readyz) and not going away, if there is exactly
/// one such and no other.
pub fn ready_agent(node: &NodeBox) -> Result<Option<AgentPod>> {
    let pods = agent_pods(node)?;
    Ok(match pods.as_slice() {
        [p] if p.ready && !p.deleting => Some(p.clone()),
        _ => None,
    })
}

/// The overlay's patch that only the node knows: where its runtime's CNI directories are.
const CNI_DIRS_PATCH: &str = "cni-dirs-patch.yaml";

fn cni_dirs_patch(node: &NodeBox) -> String {
    let (conf, bin) = node.cni_dirs();
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "meshsteer", "namespace": AGENT_NS},
        "spec": {"template": {"spec": {"volumes": [
            {"name": "cni-conf", "hostPath": {"path": conf}},
            {"name": "cni-bin", "hostPath": {"path": bin}},
        ]}}},
    })
    .to_string()
}

/// The DaemonSet of `deploy/` plus the overlay, applied (again: apply is idempotent), and its
/// one pod Ready.
pub fn deploy_agent(node: &NodeBox) -> Result<AgentPod> {
    let overlay = TempDir::new("overlay")?;
    for f in ["namespace.yaml", "rbac.yaml", "daemonset.yaml"] {
        fs::copy(repo_root().join("deploy").join(f), overlay.0.join(f))?;
    }
    for f in ["kustomization.yaml", "daemonset-patch.yaml"] {
        fs::copy(
            repo_root().join("tests/node-box/overlay").join(f),
            overlay.0.join(f),
        )?;
    }
    fs::write(overlay.0.join(CNI_DIRS_PATCH), cni_dirs_patch(node))?;
    node.kc(&["apply", "-k", path_str(&overlay.0)])?;
    // A changed template (a test rolled the image) replaces the pod: wait for the new one.
    node.kc(&[
        "-n",
        AGENT_NS,
        "rollout",
        "status",
        "daemonset/meshsteer",
        "--timeout=240s",
    ])?;
    let pod = NodeBox::wait_for(
        "agent pod Ready (/readyz)",
        Duration::from_secs(240),
        || ready_agent(node),
    )?;
    Ok(pod)
}

/// `meshsteer <args>` in the agent's container (kubectl exec), which must succeed.
pub fn agent_exec(node: &NodeBox, pod: &str, args: &[&str]) -> Result<String> {
    let mut all = vec![
        "-n",
        AGENT_NS,
        "exec",
        pod,
        "-c",
        "agent",
        "--",
        "meshsteer",
    ];
    all.extend_from_slice(args);
    node.kc(&all)
}

/// `meshsteer status --json` of the live agent, from inside its pod.
pub fn agent_status(node: &NodeBox, pod: &str) -> Result<Value> {
    Ok(serde_json::from_str(&agent_exec(
        node,
        pod,
        &["status", "--json"],
    )?)?)
}

/// The pods of `namespace` in the agent's status, by name (without the namespace), with their
/// state.
pub fn states_in(status: &Value, namespace: &str) -> Vec<(String, String)> {
    let prefix = format!("{namespace}/");
    status["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p["name"].as_str()?.strip_prefix(&prefix)?;
            Some((
                name.to_string(),
                p["state"].as_str().unwrap_or("?").to_string(),
            ))
        })
        .collect()
}

/// A namespace of the test's own, with the sidecar's and nginx's configuration as ConfigMaps,
/// deleted on drop.
pub struct AppNs<'a> {
    pub node: &'a NodeBox,
    pub name: &'static str,
    pub dir: TempDir,
}

impl<'a> AppNs<'a> {
    pub fn create(node: &'a NodeBox, name: &'static str) -> Result<Self> {
        // A namespace a failed run left is still being deleted, or still there.
        let _ = node.kc(&["delete", "namespace", name, "--wait=true", "--timeout=90s"]);
        node.kc(&["create", "namespace", name])?;
        let ns = Self {
            node,
            name,
            dir: TempDir::new(name)?,
        };
        NodeBox::wait_for(
            "the namespace's service account token",
            Duration::from_secs(60),
            || {
                let s = node.kc(&[
                    "-n",
                    name,
                    "get",
                    "sa",
                    "default",
                    "-o",
                    "jsonpath={.secrets[0].name}",
                ])?;
                Ok((!s.trim().is_empty()).then_some(()))
            },
        )?;
        let dir = &ns.dir.0;
        fs::write(dir.join("haproxy.cfg"), sidecar_config())?;
        fs::write(dir.join("nginx.conf"), apps::nginx_config("/tmp")?)?;
        for (map, file) in [("istio-proxy", "haproxy.cfg"), ("nginx", "nginx.conf")] {
            let from = format!("--from-file={file}={}", dir.join(file).display());
            node.kc(&["-n", name, "create", "configmap", map, &from])?;
        }
        Ok(ns)
    }

    /// Creates `pods` (a kubectl List) and waits until every pod of the namespace is Ready.
    pub fn run(&self, pods: Vec<Value>) -> Result<()> {
        self.apply(pods)?;
        self.node
            .kc(&[
                "-n",
                self.name,
                "wait",
                "--for=condition=Ready",
                "pod",
                "--all",
                "--timeout=180s",
            ])
            .context("the app's pods did not become Ready")?;
        Ok(())
    }

    pub fn apply(&self, pods: Vec<Value>) -> Result<()> {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": pods});
        let manifest = self.dir.0.join("pods.json");
        fs::write(&manifest, serde_json::to_vec_pretty(&list)?)?;
        self.node.kc(&["apply", "-f", path_str(&manifest)])?;
        Ok(())
    }

    pub fn ip(&self, pod: &str) -> Result<String> {
        let ip = self.node.kc(&[
            "-n",
            self.name,
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.status.podIP}",
        ])?;
        ensure!(!ip.trim().is_empty(), "{}/{pod} has no IP", self.name);
        Ok(ip.trim().to_string())
    }

    /// A request from `client`'s app to `server`'s nginx that must come back through both
    /// sidecars, retried a while: a pod Ready to the kubelet may still have its sidecar
    /// starting.
    pub fn request_through_both(&self, client: &str, server: &str) -> Result<()> {
        let url = format!("http://{}/both", self.ip(server)?);
        NodeBox::wait_for(
            &format!("a request from {client} to {server} through both sidecars"),
            Duration::from_secs(90),
            || {
                let out = checked(self.node.kubectl().args([
                    "-n",
                    self.name,
                    "exec",
                    client,
                    "-c",
                    "app",
                    "--",
                    "/usr/bin/curl",
                    "-sS",
                    "--max-time",
                    "5",
                    &url,
                ]))?;
                let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
                ensure!(body == THROUGH_BOTH, "{url} answered {body:?}");
                Ok(Some(()))
            },
        )
    }

    /// HAProxy's session count of one frontend of `pod`'s sidecar, from its stats socket.
    pub fn sessions(&self, pod: &str, frontend: &str) -> Result<u64> {
        let pid = self.node.container_pid(self.name, pod, "istio-proxy")?;
        let socket = format!("/proc/{pid}/root/tmp/stats.sock");
        apps::haproxy_sessions(Path::new(&socket), frontend, "FRONTEND")
            .with_context(|| format!("{pod}'s sidecar"))
    }
}

impl Drop for AppNs<'_> {
    fn drop(&mut self) {
        // The pods first: they go within their 1 s grace period, while the namespace
        // controller may take a minute to get to them.
        let _ = self
            .node
            .kc(&["-n", self.name, "delete", "pods", "--all", "--wait=false"]);
        let _ = self
            .node
            .kc(&["delete", "namespace", self.name, "--wait=false"]);
    }
}

/// HAProxy as Istio's sidecar: outbound on 15001, inbound on 15006, both to SO_ORIGINAL_DST.
pub fn sidecar_config() -> String {
    apps::haproxy_config(
        "/tmp",
        "http",
        &format!(
            "{}\n{}",
            apps::haproxy_outbound_http(15001),
            apps::haproxy_inbound_http(15006)
        ),
    )
}

/// The app container of a pod: nginx with its configuration, or the curl client (which
/// sleeps until it is told to run curl).
pub fn app(image: &str) -> Value {
    let mut app = json!({"name": "app", "image": image, "imagePullPolicy": "Never"});
    if image == NGINX {
        app["volumeMounts"] = json!([{"name": "nginx", "mountPath": "/etc/meshsteer-test"}]);
    }
    app
}

/// Istio's sidecar as the injector adds it: `istio-proxy`, as 1337.
pub fn sidecar() -> Value {
    json!({
        "name": "istio-proxy",
        "image": PROXY,
        "imagePullPolicy": "Never",
        "securityContext": {"runAsUser": 1337, "runAsGroup": 1337},
        "volumeMounts": [{"name": "istio-proxy", "mountPath": "/etc/istio-proxy"}],
    })
}

/// A pod as Istio's injector leaves it: `containers` (the app, then the sidecar), the
/// injector's status annotation, and no istio-init. Volumes from the namespace's ConfigMaps.
pub fn pod(namespace: &str, name: &str, containers: Vec<Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": name, "security.istio.io/tlsMode": "istio"},
            "annotations": {"sidecar.istio.io/status": STATUS},
        },
        "spec": {
            "nodeName": NODE_NAME,
            "terminationGracePeriodSeconds": 1,
            "containers": containers,
            "volumes": [
                {"name": "istio-proxy", "configMap": {"name": "istio-proxy"}},
                {"name": "nginx", "configMap": {"name": "nginx"}},
            ],
        },
    })
}

/// An nginx server with its sidecar.
pub fn server(namespace: &str, name: &str) -> Value {
    pod(namespace, name, vec![app(NGINX), sidecar()])
}

/// A curl client with its sidecar.
pub fn client(namespace: &str, name: &str) -> Value {
    pod(namespace, name, vec![app(CURL), sidecar()])
}

/// A directory of the test's, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Result<Self> {
        let dir = std::env::temp_dir()
            .join("meshsteer-tests")
            .join(format!("node-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}
