//! The API side: a client from a kubeconfig or the pod's service account, and the task that
//! list-watches this node's pods and reduces each to a [`PodView`].
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{
    Api, Client, Config,
    config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event, InitialListStrategy},
    },
};
use tokio::sync::mpsc;
use tracing::warn;

use super::view::{PodRef, PodView};

/// What the watcher task tells the agent's loop.
pub(super) enum Update {
    /// Every pod of the node with an Istio sidecar: the first listing, or a relist after the
    /// watch could not resume. Pods it does not name are gone.
    Listed(Vec<PodView>),
    /// A pod was added or changed (`None`: no sidecar, host network, or finished).
    Applied(PodRef, Option<Box<PodView>>),
    Deleted(PodRef),
}

/// Why the agent cannot talk to the API server, found before it changes anything on the node.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "--kubernetes needs this node's name: --node-name, MESHSTEER_NODE_NAME or NODE_NAME \
         (the DaemonSet sets it from spec.nodeName)"
    )]
    NoNodeName,
    #[error("loading kubeconfig {}", .path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error("no --kubeconfig (or KUBECONFIG) and no in-cluster service account to fall back on")]
    InCluster(#[source] InClusterError),
    #[error("reading the API token {}", .path.display())]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the Kubernetes client")]
    Client(#[source] kube::Error),
}

/// A client from `kubeconfig`, else the pod's service account (in-cluster config). Nothing is
/// sent yet, but every file it needs has been read: a missing token fails here, not on the
/// first request after the agent attached.
pub(super) async fn client(kubeconfig: Option<&Path>) -> Result<Client, SetupError> {
    let config = match kubeconfig {
        Some(path) => {
            let failed = |source| SetupError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(failed)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(failed)?
        }
        None => Config::incluster().map_err(SetupError::InCluster)?,
    };
    // The client re-reads a token file on each request; it must at least be readable now.
    if let Some(path) = &config.auth_info.token_file {
        std::fs::read(path).map_err(|source| SetupError::Token {
            path: path.into(),
            source,
        })?;
    }
    Client::try_from(config).map_err(SetupError::Client)
}

/// The Service whose address kubeadm (and most installers) give the kubelet as
/// `--cluster-dns`: CoreDNS keeps the name kube-dns.
const CLUSTER_DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

/// How long the agent's start waits for the API server to name it.
const CLUSTER_DNS_WAIT: Duration = Duration::from_secs(5);

/// The cluster DNS service's address (the kube-dns Service's clusterIP), or why it is not
/// known. Asked once, at start.
pub(super) async fn cluster_dns(client: &Client) -> Result<Vec<IpAddr>, String> {
    let (namespace, name) = CLUSTER_DNS_SERVICE;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let got = tokio::time::timeout(CLUSTER_DNS_WAIT, services.get(name))
        .await
        .map_err(|_| format!("Service {namespace}/{name}: no answer within {CLUSTER_DNS_WAIT:?}"))?
        .map_err(|e| format!("Service {namespace}/{name}: {e}"))?;
    let ip = got
        .spec
        .and_then(|s| s.cluster_ip)
        .filter(|ip| !ip.is_empty() && ip != "None")
        .ok_or_else(|| format!("Service {namespace}/{name} has no clusterIP"))?;
    let ip = ip
        .parse()
        .map_err(|e| format!("Service {namespace}/{name}: clusterIP {ip:?}: {e}"))?;
    Ok(vec![ip])
}

/// Lists then watches the node's pods for as long as the agent listens, retrying API errors
/// with exponential backoff.
pub(super) async fn watch(pods: Api<Pod>, node: String, updates: mpsc::Sender<Update>) {
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
            Ok(Event::Apply(pod)) => match PodRef::of(&pod) {
                Some(id) => Update::Applied(id, view(&pod).map(Box::new)),
                None => continue,
            },
            Ok(Event::Delete(pod)) => match PodRef::of(&pod) {
                Some(id) => Update::Deleted(id),
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

/// The view of a pod with an Istio sidecar; unreadable objects are logged and skipped.
fn view(pod: &Pod) -> Option<PodView> {
    PodView::of(pod).unwrap_or_else(|e| {
        let id = PodRef::of(pod).map_or_else(|| "?".into(), |id| id.to_string());
        warn!(pod = %id, error = %e, "skipping a pod the agent cannot read");
        None
    })
}
