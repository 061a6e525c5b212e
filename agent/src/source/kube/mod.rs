//! Pods from the Kubernetes API server: this node's pods (`spec.nodeName` field selector),
//! list-watched with a plain paginated list then a watch, which every API server back to 1.20
//! serves (streaming lists need 1.27). They become the same [`Change`]s the pod-spec directory
//! produces, keyed `k8s://<namespace>/<name>`, so both sources share the registry's per-pod
//! state machine.
//!
//! A watcher task only reads the API: it reduces each pod to a [`PodView`] (what capture
//! depends on) and sends it over a bounded channel. The agent's loop resolves views into pod
//! specs — the pod's cgroup from its UID, its network namespace from one of its processes —
//! and retries the pods that are not fully on the node yet.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event, InitialListStrategy},
    },
};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, info, info_span, warn};

use super::change::{Batch, Change, Rejected, SourceKey};
use crate::{
    host::proc as netns,
    spec::{
        istio::{Capture, INJECTOR_DEFAULT_ARGS},
        pod::PodSpec,
    },
};

/// Updates queued between the watcher task and the agent's loop: when the loop falls behind,
/// the watcher waits instead of buffering without bound.
const QUEUE: usize = 64;

/// Where container runtimes bind-mount pod network namespaces.
const NAMED_NETNS_DIR: &str = "/run/netns";

/// The sidecar container Istio injects (a regular container, or a native sidecar among the
/// init containers).
const PROXY_CONTAINER: &str = "istio-proxy";

/// Annotations and labels Istio's injector reads, under the names it reads them.
mod istio_keys {
    /// Written by the injector on every pod it injected.
    pub const STATUS: &str = "sidecar.istio.io/status";
    /// Label or annotation: a false value opts the pod out.
    pub const INJECT: &str = "sidecar.istio.io/inject";
    pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
    pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
    pub const STATUS_PORT: &str = "status.sidecar.istio.io/port";
}

/// Annotations the injector turns into one istio-iptables option each.
const OPTION_ANNOTATIONS: &[(&str, &str)] = &[
    ("traffic.sidecar.istio.io/includeOutboundIPRanges", "-i"),
    ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "-x"),
    ("traffic.sidecar.istio.io/includeInboundPorts", "-b"),
    ("traffic.sidecar.istio.io/includeOutboundPorts", "-q"),
    ("traffic.sidecar.istio.io/excludeOutboundPorts", "-o"),
    (istio_keys::INTERCEPTION_MODE, "-m"),
    // Not implemented by meshsteer: refused by option name, as on a command line.
    ("traffic.sidecar.istio.io/kubevirtInterfaces", "-k"),
    ("traffic.sidecar.istio.io/excludeInterfaces", "-c"),
];

/// The status port the injector excludes from inbound capture unless annotated otherwise.
const DEFAULT_STATUS_PORT: &str = "15020";

/// What capture depends on in a pod: two equal views give the same pod spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// `namespace/name`: the pod's name in `meshsteer status`.
    pub name: String,
    pub uid: String,
    /// Only the annotations capture reads, so unrelated updates compare equal.
    pub annotations: BTreeMap<String, String>,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
}

impl PodView {
    /// `Ok(None)` for a pod meshsteer leaves alone: no Istio sidecar, opted out, interception
    /// mode `NONE`, on the host's network, or finished. `Err` for an object it cannot read.
    pub fn of(pod: &Pod) -> Result<Option<Self>, String> {
        let meta = &pod.metadata;
        let name = pod_name(pod).ok_or("pod without namespace or name")?;
        let uid = meta.uid.clone().ok_or("pod without metadata.uid")?;
        let spec = pod.spec.as_ref().ok_or("pod without spec")?;
        let annotations = meta.annotations.clone().unwrap_or_default();
        let labels = meta.labels.clone().unwrap_or_default();

        let has_proxy = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == PROXY_CONTAINER);
        if !has_proxy && !annotations.contains_key(istio_keys::STATUS) {
            return Ok(None);
        }
        let opted_out = [&labels, &annotations]
            .iter()
            .any(|m| m.get(istio_keys::INJECT).is_some_and(|v| !istio_true(v)));
        let mode_none = annotations
            .get(istio_keys::INTERCEPTION_MODE)
            .is_some_and(|m| m.trim() == "NONE");
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let finished = matches!(phase, Some("Succeeded" | "Failed"));
        if opted_out || mode_none || finished {
            return Ok(None);
        }
        if spec.host_network == Some(true) {
            // Its sockets are the node's: capturing them would capture the node.
            debug!(pod = %name, "host-network pod with a sidecar: left alone");
            return Ok(None);
        }

        let status = pod.status.as_ref();
        let listed = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().map(|i| i.ip.as_str()).collect::<Vec<_>>())
            .filter(|ips| !ips.is_empty());
        let ips = listed
            .or_else(|| Some(vec![status?.pod_ip.as_deref()?]))
            .unwrap_or_default()
            .into_iter()
            .map(|ip| {
                ip.trim()
                    .parse::<IpAddr>()
                    .map_err(|e| format!("pod address {ip:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;

        let read = OPTION_ANNOTATIONS
            .iter()
            .map(|(key, _)| *key)
            .chain([istio_keys::EXCLUDE_INBOUND_PORTS, istio_keys::STATUS_PORT]);
        let annotations = read
            .filter_map(|k| Some((k.to_string(), annotations.get(k)?.clone())))
            .collect();
        Ok(Some(Self {
            name,
            uid,
            annotations,
            ips,
        }))
    }
}

/// `namespace/name`.
fn pod_name(pod: &Pod) -> Option<String> {
    let meta = &pod.metadata;
    Some(format!(
        "{}/{}",
        meta.namespace.as_ref()?,
        meta.name.as_ref()?
    ))
}

/// How the injector reads `sidecar.istio.io/inject`: anything else opts out.
fn istio_true(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "" | "y" | "yes" | "true" | "on"
    )
}

/// The capture istio-init would have installed for a pod with these annotations: the
/// injector's command line, with each annotation in place of its option's default.
pub fn capture(annotations: &BTreeMap<String, String>) -> Result<Capture, String> {
    let mut c = Capture::from_args(INJECTOR_DEFAULT_ARGS).map_err(|e| e.to_string())?;
    for (key, flag) in OPTION_ANNOTATIONS {
        if let Some(value) = annotations.get(*key) {
            c.set_option(flag, value)
                .map_err(|e| format!("annotation {key}: {e}"))?;
        }
    }
    c.set_option("-d", &exclude_inbound_ports(annotations))
        .map_err(|e| {
            format!(
                "annotations {} / {}: {e}",
                istio_keys::EXCLUDE_INBOUND_PORTS,
                istio_keys::STATUS_PORT
            )
        })?;
    Ok(c)
}

/// `-d` as the injector writes it: the proxy's Prometheus and health ports (15090, 15021),
/// the pod's own exclusions, then its status port (15020 unless annotated; `0`: none).
fn exclude_inbound_ports(annotations: &BTreeMap<String, String>) -> String {
    let status_port = annotations
        .get(istio_keys::STATUS_PORT)
        .map_or(DEFAULT_STATUS_PORT, |p| p.trim());
    let own = annotations
        .get(istio_keys::EXCLUDE_INBOUND_PORTS)
        .map(String::as_str)
        .unwrap_or_default();
    let mut ports = vec!["15090", "15021", own];
    if status_port != "0" {
        ports.push(status_port);
    }
    ports.join(",")
}

/// Finds a pod's cgroup and network namespace on this node.
pub struct Resolver {
    cgroup_root: PathBuf,
    netns_template: Option<String>,
    named_netns: PathBuf,
}

/// Where kubelets put the pods' cgroups, below the cgroup root: their default `--cgroup-root`
/// and `kubelet` (kind's nodes).
const KUBELET_ROOTS: &[&[&str]] = &[&[], &["kubelet"]];
/// Guaranteed pods sit directly under `kubepods`.
const QOS_CLASSES: &[Option<&str>] = &[None, Some("burstable"), Some("besteffort")];

impl Resolver {
    pub fn new(cgroup_root: &Path, netns_template: Option<String>) -> Self {
        Self {
            cgroup_root: cgroup_root.to_path_buf(),
            netns_template,
            named_netns: PathBuf::from(NAMED_NETNS_DIR),
        }
    }

    /// The pod's spec, or why there is none yet.
    pub fn spec(&self, view: &PodView) -> Result<PodSpec, Rejected> {
        let reject = |reason: String| Rejected::waiting(&view.name, reason);
        let capture = capture(&view.annotations).map_err(|r| Rejected::refused(&view.name, r))?;
        if view.ips.is_empty() {
            return Err(reject(
                "waiting for the pod's addresses (status.podIPs)".into(),
            ));
        }
        let cgroup = self.pod_cgroup(&view.uid).ok_or_else(|| {
            reject(format!(
                "waiting for the pod's cgroup (pod UID {}) under {}",
                view.uid,
                self.cgroup_root.display()
            ))
        })?;
        let netns = self.netns(view, &cgroup).ok_or_else(|| {
            reject(format!(
                "waiting for the pod's network namespace (no process in {} yet)",
                cgroup.display()
            ))
        })?;
        Ok(PodSpec {
            name: view.name.clone(),
            cgroup,
            netns: Some(netns),
            ips: view.ips.clone(),
            args: None,
            capture: Some(capture),
            accelerate: None,
        })
    }

    /// The pod-level cgroup: the first of the kubelet's layouts that exists.
    fn pod_cgroup(&self, uid: &str) -> Option<PathBuf> {
        cgroup_candidates(uid)
            .into_iter()
            .map(|rel| self.cgroup_root.join(rel))
            .find(|dir| dir.join("cgroup.procs").is_file())
    }

    fn netns(&self, view: &PodView, cgroup: &Path) -> Option<PathBuf> {
        match &self.netns_template {
            Some(t) => {
                let (namespace, name) = view.name.split_once('/').unwrap_or_default();
                let path = PathBuf::from(
                    t.replace("{uid}", &view.uid)
                        .replace("{namespace}", namespace)
                        .replace("{name}", name),
                );
                path.exists().then_some(path)
            }
            None => netns::of_cgroup(cgroup, &self.named_netns),
        }
    }
}

/// The pod-level cgroup directories a kubelet may have made for pod `uid`, relative to the
/// cgroup root, for both cgroup drivers and every QoS class:
/// `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid with _>.slice`
/// (systemd) and `kubepods/besteffort/pod<uid>` (cgroupfs).
fn cgroup_candidates(uid: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in KUBELET_ROOTS {
        for qos in QOS_CLASSES {
            let mut levels: Vec<String> = root.iter().map(|s| s.to_string()).collect();
            levels.push("kubepods".into());
            levels.extend(qos.map(String::from));
            // systemd: each level's unit name repeats its parents', dash-joined; a dash in a
            // unit name would mean nesting, so the UID's dashes become underscores.
            let mut systemd = PathBuf::new();
            let mut unit = String::new();
            let pod = format!("pod{}", uid.replace('-', "_"));
            for level in levels.iter().chain([&pod]) {
                if !unit.is_empty() {
                    unit.push('-');
                }
                unit.push_str(level);
                systemd.push(format!("{unit}.slice"));
            }
            out.push(systemd);
            let cgroupfs: PathBuf = levels.iter().collect();
            out.push(cgroupfs.join(format!("pod{uid}")));
        }
    }
    out
}

/// What the watcher task tells the agent's loop.
enum Update {
    /// Every pod of the node that meshsteer captures: the first listing, or a relist after the
    /// watch could not resume. Pods it does not name are gone.
    Listed(Vec<PodView>),
    /// A pod was added or changed (`None`: meshsteer leaves it alone now).
    Applied(String, Option<PodView>),
    Deleted(String),
}

/// The Kubernetes pod source: its watcher task and the pods it knows of.
pub struct KubePods {
    updates: mpsc::Receiver<Update>,
    resolver: Resolver,
    pods: BTreeMap<String, Tracked>,
    watcher: JoinHandle<()>,
}

struct Tracked {
    view: PodView,
    /// What the registry was last given for it.
    sent: Result<PodSpec, Rejected>,
}

/// How to reach the API server and find pods on this node (from the `run` flags).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// This node's name (else $NODE_NAME).
    pub node_name: Option<String>,
    /// A kubeconfig file (else $KUBECONFIG, else the pod's service account).
    pub kubeconfig: Option<PathBuf>,
    /// Where the runtime keeps pod network namespaces, with `{uid}`, `{namespace}`, `{name}`.
    pub netns_path_template: Option<String>,
}

impl KubePods {
    /// Connects to the API server and starts watching this node's pods.
    pub async fn start(args: &Settings, cgroup_root: &Path) -> Result<Self> {
        let node = args
            .node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|n| !n.is_empty())
            .context(
                "--kubernetes needs this node's name: --node-name, MESHSTEER_NODE_NAME or \
                 NODE_NAME (the DaemonSet sets it from spec.nodeName)",
            )?;
        let kubeconfig = args
            .kubeconfig
            .clone()
            .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from))
            .filter(|p| !p.as_os_str().is_empty());
        let client = client(kubeconfig.as_deref()).await?;
        let (tx, updates) = mpsc::channel(QUEUE);
        info!(node = %node, "watching this node's pods on the Kubernetes API server");
        let watcher = tokio::spawn(watch(Api::all(client), node, tx));
        Ok(Self {
            updates,
            resolver: Resolver::new(cgroup_root, args.netns_path_template.clone()),
            pods: BTreeMap::new(),
            watcher,
        })
    }

    /// The next changes the API server reports. Cancel-safe: it only awaits the queue.
    pub async fn recv(&mut self) -> Result<Batch> {
        let update = self
            .updates
            .recv()
            .await
            .context("the Kubernetes pod watcher stopped")?;
        let mut changes = Vec::new();
        let complete = matches!(update, Update::Listed(_));
        match update {
            Update::Listed(views) => {
                let listed: BTreeSet<String> = views.iter().map(|v| v.name.clone()).collect();
                let gone: Vec<String> = self
                    .pods
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                changes.extend(gone.iter().filter_map(|k| self.untrack(k)));
                changes.extend(views.into_iter().filter_map(|v| self.track(v)));
            }
            Update::Applied(_, Some(view)) => changes.extend(self.track(view)),
            Update::Applied(name, None) | Update::Deleted(name) => {
                changes.extend(self.untrack(&name))
            }
        }
        Ok(Batch { changes, complete })
    }

    /// Pods not fully on the node yet (no addresses, cgroup or process) are retried; so are
    /// enrolled pods whose namespace path went away with the process it named.
    pub fn poll(&mut self) -> Vec<Change> {
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, t)| match &t.sent {
                Err(_) => true,
                Ok(spec) => spec.netns.as_ref().is_some_and(|ns| !ns.exists()),
            })
            .map(|(k, _)| k.clone())
            .collect();
        stale
            .into_iter()
            .filter_map(|name| {
                let view = self.pods.get(&name)?.view.clone();
                self.resolve(view)
            })
            .collect()
    }

    /// A pod appeared or changed.
    fn track(&mut self, view: PodView) -> Option<Change> {
        if self.pods.get(&view.name).is_some_and(|t| t.view == view) {
            return None;
        }
        self.resolve(view)
    }

    /// Resolves the pod's spec; a change only if it differs from what was sent.
    fn resolve(&mut self, view: PodView) -> Option<Change> {
        let _g = info_span!("pod", pod = %view.name).entered();
        let sent = self.resolver.spec(&view);
        let key = key(&view.name);
        let old = self.pods.insert(
            view.name.clone(),
            Tracked {
                view,
                sent: sent.clone(),
            },
        );
        if old.is_some_and(|t| t.sent == sent) {
            return None;
        }
        if let Err(r) = &sent {
            debug!(why = ?r.why, "not ready for capture");
        }
        Some(Change::Upsert(key, Box::new(sent)))
    }

    fn untrack(&mut self, name: &str) -> Option<Change> {
        self.pods.remove(name)?;
        Some(Change::Remove(key(name)))
    }
}

impl Drop for KubePods {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// The registry's key for a Kubernetes pod.
fn key(name: &str) -> SourceKey {
    let (namespace, name) = name.split_once('/').unwrap_or(("", name));
    SourceKey::Kube {
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// A client from `kubeconfig`, else the pod's service account (in-cluster config).
async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => Config::incluster().context(
            "no --kubeconfig (or KUBECONFIG) and no in-cluster service account to fall back on",
        )?,
    };
    Client::try_from(config).context("creating the Kubernetes client")
}

/// Lists then watches the node's pods for as long as the agent listens, retrying API errors
/// with exponential backoff.
async fn watch(pods: Api<Pod>, node: String, updates: mpsc::Sender<Update>) {
    let config = watcher::Config {
        // A paginated list, then a watch from its resourceVersion: served by every API server.
        initial_list_strategy: InitialListStrategy::ListWatch,
        ..watcher::Config::default().fields(&format!("spec.nodeName={node}"))
    };
    let mut events = watcher::watcher(pods, config).default_backoff().boxed();
    let mut listing: Option<Vec<PodView>> = None;
    while let Some(event) = events.next().await {
        let update = match event {
            Ok(Event::Init) => {
                listing = Some(Vec::new());
                continue;
            }
            Ok(Event::InitApply(pod)) => {
                if let (Some(listing), Some(view)) = (listing.as_mut(), view(&pod)) {
                    listing.push(view);
                }
                continue;
            }
            Ok(Event::InitDone) => Update::Listed(listing.take().unwrap_or_default()),
            Ok(Event::Apply(pod)) => match pod_name(&pod) {
                Some(name) => Update::Applied(name, view(&pod)),
                None => continue,
            },
            Ok(Event::Delete(pod)) => match pod_name(&pod) {
                Some(name) => Update::Deleted(name),
                None => continue,
            },
            Err(e) => {
                warn!(error = %e, "Kubernetes API error (retrying with backoff)");
                continue;
            }
        };
        if updates.send(update).await.is_err() {
            return; // the agent is stopping
        }
    }
}

/// The view of a pod meshsteer captures; unreadable objects are logged and skipped.
fn view(pod: &Pod) -> Option<PodView> {
    PodView::of(pod).unwrap_or_else(|e| {
        let name = pod_name(pod).unwrap_or_else(|| "?".into());
        warn!(pod = %name, error = %e, "skipping a pod the agent cannot read");
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        source::change::Unready,
        spec::istio::{Ports, Ranges},
    };

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    fn sidecar_pod(annotations: serde_json::Value) -> Pod {
        pod(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "a", "uid": "1-2", "annotations": annotations},
            "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]},
            "status": {"podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]},
        }))
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_annotations_is_the_injector_default() {
        let c = capture(&BTreeMap::new()).unwrap();
        assert_eq!(c, Capture::from_args(INJECTOR_DEFAULT_ARGS).unwrap());
    }

    #[test]
    fn annotations_become_options() {
        let c = capture(&annotations(&[
            (
                "traffic.sidecar.istio.io/includeOutboundIPRanges",
                "10.0.0.0/8",
            ),
            (
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "10.200.0.0/16",
            ),
            ("traffic.sidecar.istio.io/includeInboundPorts", "80,443"),
            ("traffic.sidecar.istio.io/excludeInboundPorts", "22"),
            ("traffic.sidecar.istio.io/includeOutboundPorts", "9000"),
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "3306"),
            ("status.sidecar.istio.io/port", "15999"),
        ]))
        .unwrap();
        assert_eq!(
            c.include_outbound_cidrs,
            Ranges::List(vec!["10.0.0.0/8".parse().unwrap()])
        );
        assert_eq!(
            c.exclude_outbound_cidrs,
            vec!["10.200.0.0/16".parse().unwrap()]
        );
        assert_eq!(c.include_inbound_ports, Ports::List(vec![80, 443]));
        assert_eq!(c.exclude_inbound_ports, vec![15090, 15021, 22, 15999]);
        assert_eq!(c.include_outbound_ports, vec![9000]);
        assert_eq!(c.exclude_outbound_ports, vec![3306]);
    }

    #[test]
    fn status_port_zero_is_not_excluded() {
        let c = capture(&annotations(&[("status.sidecar.istio.io/port", "0")])).unwrap();
        assert_eq!(c.exclude_inbound_ports, vec![15090, 15021]);
    }

    #[test]
    fn unsupported_settings_are_errors_naming_the_annotation() {
        let e = capture(&annotations(&[(
            "sidecar.istio.io/interceptionMode",
            "TPROXY",
        )]))
        .unwrap_err();
        assert!(
            e.contains("interceptionMode") && e.contains("TPROXY"),
            "{e}"
        );
        let e = capture(&annotations(&[(
            "traffic.sidecar.istio.io/kubevirtInterfaces",
            "net1",
        )]))
        .unwrap_err();
        assert!(e.contains("unsupported istio-iptables option -k"), "{e}");
        let e = capture(&annotations(&[(
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "10.0.0.1",
        )]))
        .unwrap_err();
        assert!(e.contains("excludeOutboundIPRanges"), "{e}");
    }

    #[test]
    fn views_keep_what_capture_reads() {
        let v = PodView::of(&sidecar_pod(serde_json::json!({
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.200.0.0/16",
            "unrelated": "x",
        })))
        .unwrap()
        .unwrap();
        assert_eq!(v.name, "ns/a");
        assert_eq!(v.uid, "1-2");
        assert_eq!(
            v.ips,
            ["10.0.0.5", "fd00::5"].map(|i| i.parse::<IpAddr>().unwrap())
        );
        assert_eq!(
            v.annotations,
            annotations(&[(
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "10.200.0.0/16"
            )])
        );
    }

    #[test]
    fn which_pods_are_captured() {
        let captured = |p: Pod| PodView::of(&p).unwrap().is_some();
        assert!(captured(sidecar_pod(serde_json::json!({}))));
        // Injected by annotation only, or as a native sidecar.
        assert!(captured(pod(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "a", "uid": "u",
                         "annotations": {"sidecar.istio.io/status": "{}"}},
            "spec": {"containers": [{"name": "app"}]},
        }))));
        assert!(captured(pod(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "a", "uid": "u"},
            "spec": {"containers": [{"name": "app"}],
                     "initContainers": [{"name": "istio-proxy", "restartPolicy": "Always"}]},
        }))));
        assert!(!captured(pod(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "a", "uid": "u"},
            "spec": {"containers": [{"name": "app"}]},
        }))));
        for opt_out in [
            serde_json::json!({"sidecar.istio.io/inject": "false"}),
            serde_json::json!({"sidecar.istio.io/interceptionMode": "NONE"}),
        ] {
            assert!(!captured(sidecar_pod(opt_out)));
        }
        let mut p = sidecar_pod(serde_json::json!({}));
        p.metadata.labels = Some(annotations(&[("sidecar.istio.io/inject", "false")]));
        assert!(!captured(p));
        let mut p = sidecar_pod(serde_json::json!({}));
        p.spec.as_mut().unwrap().host_network = Some(true);
        assert!(!captured(p));
        let mut p = sidecar_pod(serde_json::json!({}));
        p.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(!captured(p));
    }

    #[test]
    fn unreadable_pods_are_errors_not_panics() {
        assert!(PodView::of(&pod(serde_json::json!({"metadata": {"name": "a"}}))).is_err());
        let mut p = sidecar_pod(serde_json::json!({}));
        p.status.as_mut().unwrap().pod_ips = Some(vec![k8s_openapi::api::core::v1::PodIP {
            ip: "not-an-ip".into(),
        }]);
        assert!(PodView::of(&p).is_err());
    }

    #[test]
    fn cgroup_layouts_of_both_drivers_and_every_qos_class() {
        let c: Vec<String> = cgroup_candidates("ab-cd")
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        for expected in [
            "kubepods.slice/kubepods-podab_cd.slice",
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podab_cd.slice",
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podab_cd.slice",
            "kubepods/podab-cd",
            "kubepods/burstable/podab-cd",
            "kubepods/besteffort/podab-cd",
            "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-podab_cd.slice",
            "kubelet/kubepods/besteffort/podab-cd",
        ] {
            assert!(
                c.iter().any(|x| x == expected),
                "{expected} missing: {c:#?}"
            );
        }
        assert_eq!(c.len(), 12);
    }

    #[test]
    fn pending_pods_say_what_they_wait_for() {
        let root = std::env::temp_dir().join(format!("ms-kube-{}", std::process::id()));
        let resolver = Resolver::new(&root, None);
        let mut v = PodView::of(&sidecar_pod(serde_json::json!({})))
            .unwrap()
            .unwrap();
        let e = resolver.spec(&v).unwrap_err();
        assert!(
            matches!(&e.why, Unready::Waiting(w) if w.contains("waiting for the pod's cgroup (pod UID 1-2)")),
            "{e:?}"
        );
        assert_eq!(e.name, "ns/a");
        v.ips.clear();
        let e = resolver.spec(&v).unwrap_err();
        assert!(
            matches!(&e.why, Unready::Waiting(w) if w.contains("status.podIPs")),
            "{e:?}"
        );
    }
}
