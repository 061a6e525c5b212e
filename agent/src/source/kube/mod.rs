//! Pods from the Kubernetes API server: this node's pods (`spec.nodeName` field selector),
//! list-watched with a plain paginated list then a watch, which every API server back to 1.20
//! serves (streaming lists need 1.27). They become the same [`Change`]s the pod-spec directory
//! produces, keyed [`SourceKey::Kube`](super::change::SourceKey::Kube), so both sources share
//! the registry's per-pod state machine.
//!
//! A watcher task ([`watch`]) only reads the API: it reduces each pod to a [`PodView`] (what
//! capture depends on, [`view`] and [`annotations`]) and sends it over a bounded channel. The
//! agent's loop ([`KubePods`], here) resolves views into pod specs ([`node`]: the pod's
//! cgroup from its UID, its network namespace from one of its processes) and retries the pods
//! that are not fully on the node yet.
mod annotations;
mod cni;
mod node;
mod reap;
mod view;
mod watch;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result};
use kube::Api;
use meshsteer_cni::proto::Request;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, info, info_span, warn};

use self::cni::Arrived;
pub use self::{
    cni::{CniCall, CniServer, Found},
    view::{PodRef, PodView},
    watch::SetupError,
};
use self::{
    node::Resolver,
    reap::Reaper,
    watch::{Update, client, cluster_dns, watch},
};
use super::{
    change::{Batch, Change, EnrolledBy, Rejected},
    rotation::Rotation,
};

/// What the Kubernetes source reports by itself.
pub enum Event {
    Changes(Batch),
    /// A request of the CNI plugin, for the agent's loop to answer.
    Cni(CniCall),
}
use crate::{host::cgroup, spec::pod::PodSpec};

/// Updates queued between the watcher task and the agent's loop: when the loop falls behind,
/// the watcher waits instead of buffering without bound.
const QUEUE: usize = 64;

/// The Kubernetes pod source: its watcher task and the pods it knows of.
pub struct KubePods {
    updates: mpsc::Receiver<Update>,
    resolver: Resolver,
    pods: BTreeMap<PodRef, Tracked>,
    /// Deleted pods' cgroup2 directories, removed once empty (hybrid hosts leave them).
    reaper: Reaper,
    /// The cgroups of pods the agent enrolled and then left alone (finished, no sidecar any
    /// more), for when their deletion comes.
    released: BTreeMap<PodRef, PathBuf>,
    /// The CNI plugin's socket (`--cni-socket`), if served.
    cni: Option<CniServer>,
    /// The sandboxes the CNI plugin reported: where a pod is before the API server knows.
    sandboxes: BTreeMap<PodRef, Sandbox>,
    /// Pods an earlier agent enrolled at their ADD, with the cgroup they had (a new pod of
    /// the same name has another): found again by the watch, they still were by CNI.
    cni_enrolled: BTreeMap<PodRef, PathBuf>,
    /// Which enrolled pods the next poll checks for a stale namespace or cgroup.
    stale_checks: Rotation<PodRef>,
    watcher: JoinHandle<()>,
}

/// A pod sandbox as its CNI ADD saw it: its network namespace and addresses, before the
/// kubelet reports them (the addresses) or any process is in it (the namespace).
#[derive(Clone, Debug)]
struct Sandbox {
    uid: String,
    netns: PathBuf,
    ips: Vec<IpAddr>,
}

/// One pod with an Istio sidecar.
struct Tracked {
    /// The pod as first seen (for its UID): its capture is decided from this view, once, as
    /// istio-init decides it once per pod.
    first: PodView,
    /// The pod as last seen.
    view: PodView,
    /// What the registry was last given for it (`None`: nothing, Istio gave it no istio-init).
    sent: Option<Result<PodSpec, Rejected>>,
    /// What the registry was last told was not applied.
    pending: Option<String>,
    /// The cgroup of the last spec sent: still the pod's to reap when its deletion comes
    /// after its spec became an error (the kubelet stops the sandbox, and the network
    /// namespace goes with it, before the API server deletes the pod).
    enrolled: Option<PathBuf>,
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
    /// The unix socket the CNI plugin asks on (none: no plugin).
    pub cni_socket: Option<PathBuf>,
    /// The cluster DNS service's addresses, as the kubelet's `--cluster-dns` (empty: the
    /// kube-system/kube-dns Service's).
    pub cluster_dns: Vec<IpAddr>,
    /// The node's resolv.conf, as the kubelet's `--resolv-conf` (a path on the node).
    pub node_resolv_conf: PathBuf,
}

/// A checked configuration: the node's name and a client whose files were all read. Checked
/// before the agent attaches anything, so a node without credentials is left as it was.
pub struct Prepared {
    node: String,
    client: kube::Client,
    netns_path_template: Option<String>,
    /// Bound already: calls wait in its queue until the agent's loop runs.
    cni: Option<CniServer>,
    /// The cluster DNS service's addresses, or why they are not known.
    cluster_dns: Result<Vec<IpAddr>, String>,
    node_resolv_conf: PathBuf,
}

impl Settings {
    /// Checks everything the source needs short of the API server answering.
    pub async fn prepare(&self) -> Result<Prepared> {
        let node = self
            .node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|n| !n.is_empty())
            .ok_or(SetupError::NoNodeName)?;
        let kubeconfig = self
            .kubeconfig
            .clone()
            .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from))
            .filter(|p| !p.as_os_str().is_empty());
        let client = client(kubeconfig.as_deref()).await?;
        let cni = match &self.cni_socket {
            Some(path) => Some(CniServer::bind(path, client.clone())?),
            None => None,
        };
        let cluster_dns = if self.cluster_dns.is_empty() {
            cluster_dns(&client).await
        } else {
            Ok(self.cluster_dns.clone())
        };
        match &cluster_dns {
            Ok(ips) => info!(
                ?ips,
                "the cluster DNS service (pods with dnsPolicy ClusterFirst)"
            ),
            Err(why) => warn!(
                reason = %why,
                "the cluster DNS service is not known: a pod with --redirect-dns and dnsPolicy \
                 ClusterFirst has its DNS captured only once one of its processes shows its \
                 resolv.conf (give --cluster-dns)"
            ),
        }
        Ok(Prepared {
            node,
            client,
            netns_path_template: self.netns_path_template.clone(),
            cni,
            cluster_dns,
            node_resolv_conf: self.node_resolv_conf.clone(),
        })
    }
}

impl KubePods {
    /// Starts watching this node's pods.
    pub fn start(prepared: Prepared, cgroup_root: &Path) -> Self {
        let Prepared {
            node,
            client,
            netns_path_template,
            cni,
            cluster_dns,
            node_resolv_conf,
        } = prepared;
        let (tx, updates) = mpsc::channel(QUEUE);
        info!(node = %node, "watching this node's pods on the Kubernetes API server");
        let watcher = tokio::spawn(watch(Api::all(client), node, tx));
        Self {
            updates,
            resolver: Resolver::new(cgroup_root, netns_path_template)
                .with_dns(cluster_dns, node_resolv_conf),
            pods: BTreeMap::new(),
            reaper: Reaper::new(),
            released: BTreeMap::new(),
            cni,
            sandboxes: BTreeMap::new(),
            cni_enrolled: BTreeMap::new(),
            stale_checks: Rotation::default(),
            watcher,
        }
    }

    /// Pods an earlier agent enrolled at their sandbox's ADD, with their cgroups (from its
    /// status file).
    pub fn with_cni_enrolled(mut self, pods: impl IntoIterator<Item = (PodRef, PathBuf)>) -> Self {
        self.cni_enrolled.extend(pods);
        self
    }

    /// A sandbox of `view`'s pod was set up (CNI ADD): the pod is decided and, if captured,
    /// located at once from the sandbox (its namespace and addresses), not from the API
    /// server's status or its processes, which come later.
    pub fn cni_add(&mut self, view: PodView, netns: PathBuf, ips: Vec<IpAddr>) -> Vec<Change> {
        let id = view.pod.clone();
        let sandbox = Sandbox {
            uid: view.uid.clone(),
            netns,
            ips,
        };
        self.sandboxes.insert(id.clone(), sandbox);
        let mut changes = self.track(view);
        changes.extend(self.resolve(&id));
        changes
    }

    /// The pod's sandbox was torn down (CNI DEL): its enrolment goes. Idempotent; a pod of
    /// another UID (a newer pod of the same name) keeps its own.
    pub fn cni_del(&mut self, pod: &PodRef, uid: &str) -> Vec<Change> {
        if self.sandboxes.get(pod).is_some_and(|s| s.uid == uid) {
            self.sandboxes.remove(pod);
        }
        let Some(t) = self.pods.get_mut(pod).filter(|t| t.first.uid == uid) else {
            return Vec::new();
        };
        if t.sent.take().is_none() {
            return Vec::new();
        }
        info!(pod = %pod, "sandbox torn down (CNI DEL): enrolment removed");
        vec![Change::Remove(pod.key())]
    }

    /// The next changes the API server reports, or the next request of the CNI plugin.
    /// Cancel-safe: it only awaits the queues.
    pub async fn recv(&mut self) -> Result<Event> {
        let update = loop {
            tokio::select! {
                update = self.updates.recv() => {
                    break update.context("the Kubernetes pod watcher stopped")?;
                }
                Some(arrived) = next_cni(&mut self.cni) => {
                    if let Some(call) = self.look_up(arrived) {
                        return Ok(Event::Cni(call));
                    }
                }
            }
        };
        let mut changes = Vec::new();
        let complete = matches!(update, Update::Listed(_));
        match update {
            Update::Listed(views) => {
                let listed: BTreeSet<&PodRef> = views.iter().map(|v| &v.pod).collect();
                let gone: Vec<PodRef> = self
                    .pods
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                // Missing from a relist: deleted, or only left alone now (a listing names
                // pods with an Istio sidecar only: finished ones drop out), which cannot be
                // told apart. Cgroups are removed only after a deletion the API server
                // reported, so these wait for theirs.
                changes.extend(gone.iter().filter_map(|k| self.untrack(k, false)));
                self.released.retain(|_, dir| dir.exists());
                for view in views {
                    changes.extend(self.track(view));
                }
            }
            Update::Applied(_, Some(view)) => changes.extend(self.track(*view)),
            // No longer a pod with an Istio sidecar (finished, say): its cgroup is the
            // kubelet's business until its deletion comes.
            Update::Applied(id, None) => changes.extend(self.untrack(&id, false)),
            Update::Deleted(id) => changes.extend(self.untrack(&id, true)),
        }
        Ok(Event::Changes(Batch { changes, complete }))
    }

    /// Pods not fully on the node yet (no addresses, cgroup or process) are retried, at every
    /// poll; so are enrolled pods whose namespace path went away with the process it named,
    /// and those whose cgroup is empty while a live one in another layout exists (the empty
    /// one was stale), each checked once a round (a stat, a read of `cgroup.procs` and a
    /// listing of its cgroup a pod: see [`Rotation`]). Deleted pods' empty cgroups are
    /// removed.
    pub fn poll(&mut self) -> Vec<Change> {
        self.reap(Instant::now());
        let waiting = self
            .pods
            .iter()
            .filter(|(_, t)| matches!(t.sent, Some(Err(_))))
            .map(|(k, _)| k.clone());
        let slice = self.stale_checks.next_slice(&self.pods);
        let stale = slice.into_iter().filter(|k| {
            let Some(t) = self.pods.get(k) else {
                return false;
            };
            let Some(Ok(spec)) = &t.sent else {
                return false;
            };
            spec.netns.as_ref().is_some_and(|ns| !ns.exists())
                || (!cgroup::in_use(&spec.cgroup)
                    && self.resolver.pod_cgroup(&t.view.uid).as_ref() != Some(&spec.cgroup))
        });
        let due: Vec<PodRef> = waiting.chain(stale).collect();
        due.iter().flat_map(|id| self.resolve(id)).collect()
    }

    /// Removes deleted pods' cgroups that are due and empty.
    fn reap(&mut self, now: Instant) {
        let pods = &self.pods;
        self.reaper.poll(now, |dir| {
            pods.values()
                .any(|t| matches!(&t.sent, Some(Ok(s)) if s.cgroup == dir))
        });
    }

    /// A pod appeared or changed. A pod seen for the first time (or with a new UID: a new pod
    /// of the same name) has its capture decided now; later changes to its labels and
    /// annotations are reported as pending, not applied.
    fn track(&mut self, view: PodView) -> Vec<Change> {
        self.released.remove(&view.pod);
        let first = match self.pods.get(&view.pod) {
            Some(t) if t.view == view => return Vec::new(),
            Some(t) if t.first.uid == view.uid => t.first.clone(),
            _ => view.clone(),
        };
        let id = view.pod.clone();
        let renewed = self.pods.get(&id).is_some_and(|t| t.first.uid != view.uid);
        let mut changes = Vec::new();
        if renewed {
            // The old pod is gone (deleted: a name is reused only after): what it had goes
            // before the new one is decided, and its cgroup, once empty, with it.
            changes.extend(self.untrack(&id, true));
        }
        let tracked = self.pods.entry(id.clone()).or_insert_with(|| Tracked {
            first,
            view: view.clone(),
            sent: None,
            pending: None,
            enrolled: None,
        });
        tracked.view = view;
        changes.extend(self.resolve(&id));
        // Its spec is the same, but its containers may have started: what the registry
        // reads through its processes may have changed.
        let key = id.key();
        let upserted = changes
            .iter()
            .any(|c| matches!(c, Change::Upsert(k, _) if *k == key));
        let enrolled = self
            .pods
            .get(&id)
            .is_some_and(|t| matches!(t.sent, Some(Ok(_))));
        if enrolled && !upserted {
            changes.push(Change::Refresh(key));
        }
        changes
    }

    /// Resolves the pod's spec from its decided capture; changes only for what differs from
    /// what was sent.
    fn resolve(&mut self, id: &PodRef) -> Vec<Change> {
        let Some(t) = self.pods.get_mut(id) else {
            return Vec::new();
        };
        let _g = info_span!("pod", pod = %id).entered();
        let mut decided = t.view.decided_by(&t.first);
        let sandbox = self.sandboxes.get(id).filter(|s| s.uid == t.first.uid);
        if let Some(s) = sandbox
            && decided.ips.is_empty()
        {
            decided.ips = s.ips.clone();
        }
        let netns = sandbox.map(|s| s.netns.as_path());
        let sent = decided
            .captured()
            .then(|| self.resolver.spec(&decided, netns));
        let key = id.key();
        let mut changes = Vec::new();
        if sent != t.sent {
            if let Some(Err(r)) = &sent {
                debug!(why = ?r.why, "not ready for capture");
            }
            match &sent {
                Some(s) => {
                    let first = t.sent.is_none();
                    changes.push(Change::Upsert(key.clone(), Box::new(s.clone())));
                    if first {
                        let from = decided.options_from();
                        info!(?from, "capture decided");
                        changes.push(Change::Origin(key.clone(), from));
                    }
                }
                None => changes.push(Change::Remove(key.clone())),
            }
            t.sent = sent;
            if let Some(Ok(spec)) = &t.sent {
                if t.enrolled.is_none() {
                    // Its sandbox's ADD, or an earlier agent's (its status file says so).
                    let by = if sandbox.is_some() || self.cni_enrolled.get(id) == Some(&spec.cgroup)
                    {
                        EnrolledBy::Cni
                    } else {
                        EnrolledBy::Watch
                    };
                    info!(?by, "enrolled");
                    changes.push(Change::EnrolledBy(key.clone(), by));
                }
                t.enrolled = Some(spec.cgroup.clone());
            }
        }
        if t.sent.is_none() {
            if let Some(why) = &decided.left_alone {
                debug!(%why, "no istio-init: left alone");
            }
            return changes;
        }
        let pending = t.view.changed_since(&t.first);
        if pending != t.pending {
            if let Some(p) = &pending {
                info!(pending = %p, "change not applied until the pod restarts");
            }
            changes.push(Change::Pending(key, pending.clone()));
            t.pending = pending;
        }
        changes
    }

    /// A pod is gone from what the agent tracks; `deleted`: from the API server too, so its
    /// cgroup, once empty, is removed (the registry unenrols it before the next poll). A pod
    /// only left alone (finished, no sidecar any more) keeps its cgroup until its deletion is
    /// seen. A pod Istio gave no istio-init was never enrolled: nothing to remove, and its
    /// cgroup is the kubelet's business.
    fn untrack(&mut self, id: &PodRef, deleted: bool) -> Option<Change> {
        let now = Instant::now();
        if deleted {
            self.sandboxes.remove(id);
        }
        let Some(t) = self.pods.remove(id) else {
            if deleted && let Some(dir) = self.released.remove(id) {
                self.reaper.deleted(id.to_string(), dir, now);
            }
            return None;
        };
        // Its cgroup is the agent's to remove whether or not it is still enrolled: a CNI DEL
        // (the sandbox torn down) unenrols a pod before its deletion comes.
        let dir = t
            .enrolled
            .filter(|dir| self.resolver.removable(dir, &t.view.uid));
        match dir {
            Some(dir) if deleted => self.reaper.deleted(id.to_string(), dir, now),
            Some(dir) => {
                self.released.insert(id.clone(), dir);
            }
            None => {}
        }
        t.sent.as_ref()?;
        Some(Change::Remove(id.key()))
    }
}

impl KubePods {
    /// The call of a CNI request whose pod the watch has (under the sandbox's UID), or needs
    /// none; else its pod is read from the API server, and the request comes back.
    fn look_up(&self, arrived: Arrived) -> Option<CniCall> {
        let cached = |r: &Request| {
            let id = PodRef {
                namespace: r.pod.namespace.clone(),
                name: r.pod.name.clone(),
            };
            let t = self.pods.get(&id).filter(|t| t.view.uid == r.pod.uid)?;
            debug!(pod = %id, "the pod as the watch has it");
            Some(Found::Meshed(Box::new(t.view.clone())))
        };
        match arrived.call(cached) {
            Ok(call) => Some(call),
            Err(arrived) => {
                if let Some(server) = &self.cni {
                    server.fetch(arrived);
                }
                None
            }
        }
    }
}

/// The next request of the CNI plugin; never, without `--cni-socket`. Cancel-safe.
async fn next_cni(cni: &mut Option<CniServer>) -> Option<Arrived> {
    match cni {
        Some(server) => server.next().await,
        None => std::future::pending().await,
    }
}

impl Drop for KubePods {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::change::SourceKey;

    fn view(name: &str) -> PodView {
        let mut pod = view::tests::sidecar_pod(serde_json::json!({}));
        pod.metadata.name = Some(name.into());
        PodView::of(&pod).unwrap().unwrap()
    }

    fn kube_key(name: &str) -> SourceKey {
        SourceKey::Kube {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    /// A pod `name` with UID `uid`, on the node with addresses.
    fn view_of(name: &str, uid: &str, annotations: serde_json::Value) -> PodView {
        let mut pod = view::tests::sidecar_pod(annotations);
        pod.metadata.name = Some(name.into());
        pod.metadata.uid = Some(uid.into());
        PodView::of(&pod).unwrap().unwrap()
    }

    /// As rmdir on cgroupfs: refused while the cgroup has processes or children; its
    /// interface file goes with it.
    fn cgroup_rmdir(dir: &Path) -> std::io::Result<()> {
        if cgroup::in_use(dir) {
            return Err(std::io::Error::from_raw_os_error(libc::EBUSY));
        }
        std::fs::remove_file(dir.join("cgroup.procs"))?;
        std::fs::remove_dir(dir)
    }

    /// The changes a watch event became (these tests have no CNI socket).
    fn changes_of(event: Event) -> Batch {
        match event {
            Event::Changes(batch) => batch,
            Event::Cni(call) => panic!("unexpected CNI call {call:?}"),
        }
    }

    /// The pods of a source fed through the returned sender (no API server, no watcher).
    fn pods_with(resolver: Resolver, reaper: Reaper) -> (mpsc::Sender<Update>, KubePods) {
        let (tx, updates) = mpsc::channel(QUEUE);
        let pods = KubePods {
            updates,
            resolver,
            pods: BTreeMap::new(),
            reaper,
            released: BTreeMap::new(),
            cni: None,
            sandboxes: BTreeMap::new(),
            cni_enrolled: BTreeMap::new(),
            stale_checks: Rotation::default(),
            watcher: tokio::spawn(async {}),
        };
        (tx, pods)
    }

    #[tokio::test]
    async fn deleted_pods_empty_cgroupfs_dirs_are_removed_and_nothing_else() {
        let root = node::tests::FakeRoot::new("reap");
        std::fs::write(root.0.join("netns"), "").unwrap();
        let template = root.0.join("netns").display().to_string();
        let (tx, mut pods) = pods_with(
            Resolver::new(&root.0, Some(template)),
            Reaper::with_remove(cgroup_rmdir),
        );
        // Deleted while its container is still stopping; deleted with a systemd slice;
        // finished (not deleted), later deleted; deleted while a new pod with its UID (a static
        // pod's hash) took its directory.
        let a = root.cgroup("kubepods/besteffort/poda", "");
        root.cgroup("kubepods/besteffort/poda/c1", "7\n");
        let b = root.cgroup("kubepods.slice/kubepods-podb.slice", "");
        let c = root.cgroup("kubepods/podc", "");
        let d = root.cgroup("kubepods/burstable/podd", "");
        let views = [
            view_of("a", "a", serde_json::json!({})),
            view_of("b", "b", serde_json::json!({})),
            view_of("c", "c", serde_json::json!({})),
            view_of("d", "d", serde_json::json!({})),
        ];
        tx.send(Update::Listed(views.to_vec())).await.unwrap();
        let batch = changes_of(pods.recv().await.unwrap());
        for c in &batch.changes {
            match c {
                Change::Upsert(key, spec) => {
                    assert!(spec.is_ok(), "{key}: {:?}", spec.as_ref().as_ref().err())
                }
                Change::Remove(key) => panic!("removed {key}"),
                Change::Pending(key, _) => panic!("noted {key}"),
                Change::Origin(..) | Change::EnrolledBy(..) | Change::Refresh(..) => {}
            }
        }
        for name in ["a", "b", "d"] {
            tx.send(Update::Deleted(views[0].pod.clone().with_name(name)))
                .await
                .unwrap();
            changes_of(pods.recv().await.unwrap());
        }
        tx.send(Update::Applied(views[2].pod.clone(), None))
            .await
            .unwrap();
        changes_of(pods.recv().await.unwrap());
        assert_eq!(pods.reaper.pending(), [a.as_path(), d.as_path()]);
        // `c` was left alone, then deleted: its directory goes too.
        tx.send(Update::Deleted(views[2].pod.clone()))
            .await
            .unwrap();
        changes_of(pods.recv().await.unwrap());
        assert_eq!(
            pods.reaper.pending(),
            [a.as_path(), d.as_path(), c.as_path()]
        );
        // `d`'s directory is now a tracked pod's (the same static pod, recreated).
        let mut again = view_of("d2", "d", serde_json::json!({}));
        again.pod.name = "d2".into();
        tx.send(Update::Applied(again.pod.clone(), Some(Box::new(again))))
            .await
            .unwrap();
        changes_of(pods.recv().await.unwrap());

        let now = Instant::now();
        pods.reap(now);
        assert!(a.exists(), "its container is still there");
        assert!(d.exists(), "in use by a tracked pod");
        assert!(!c.exists());
        assert_eq!(pods.reaper.pending(), [a.as_path()]);
        // The runtime removes the container's cgroup: the pod's goes at the next look.
        std::fs::remove_file(a.join("c1/cgroup.procs")).unwrap();
        std::fs::remove_dir(a.join("c1")).unwrap();
        pods.reap(now);
        assert!(a.exists(), "looked at once a second only");
        pods.reap(now + std::time::Duration::from_secs(2));
        assert!(!a.exists());
        assert!(b.exists() && d.exists());
        assert!(pods.reaper.pending().is_empty());
    }

    fn enrolled_by(changes: &[Change]) -> Vec<(SourceKey, EnrolledBy)> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::EnrolledBy(k, by) => Some((k.clone(), *by)),
                _ => None,
            })
            .collect()
    }

    /// Enrolled at its sandbox's ADD, before any process ran, a pod's spec stays the same
    /// when its containers start; the registry is told to read through its processes again.
    #[tokio::test]
    async fn a_started_container_refreshes_the_pod() {
        let root = node::tests::FakeRoot::new("refresh");
        let netns = root.0.join("netns");
        std::fs::write(&netns, "").unwrap();
        let (tx, mut pods) = pods_with(
            Resolver::new(&root.0, Some(netns.display().to_string())),
            Reaper::new(),
        );
        root.cgroup("kubepods/besteffort/poda", "");
        let view = view_of("a", "a", serde_json::json!({}));
        let added = pods.cni_add(view.clone(), netns.clone(), view.ips.clone());
        assert_eq!(said(&added), ["upsert", "from Annotations"]);
        let mut started = view.clone();
        started.running = vec!["app".into()];
        tx.send(Update::Applied(
            started.pod.clone(),
            Some(Box::new(started)),
        ))
        .await
        .unwrap();
        let changes = changes_of(pods.recv().await.unwrap()).changes;
        assert_eq!(said(&changes), ["refresh"]);
        // Not for a pod that is not enrolled.
        let mut waiting = view_of("b", "b", serde_json::json!({}));
        waiting.ips.clear();
        tx.send(Update::Applied(
            waiting.pod.clone(),
            Some(Box::new(waiting)),
        ))
        .await
        .unwrap();
        let changes = changes_of(pods.recv().await.unwrap()).changes;
        assert_eq!(said(&changes), ["upsert", "from Annotations"]);
    }

    /// Issue 14: `status` tells pods enrolled at their sandbox's ADD from those the watch
    /// found running, also after the agent restarted; said once, when first enrolled.
    #[tokio::test]
    async fn pods_say_whether_cni_or_the_watch_enrolled_them() {
        let root = node::tests::FakeRoot::new("enrolled-by");
        let netns = root.0.join("netns");
        std::fs::write(&netns, "").unwrap();
        let template = netns.display().to_string();
        let (tx, mut pods) = pods_with(
            Resolver::new(&root.0, Some(template.clone())),
            Reaper::new(),
        );
        let a = root.cgroup("kubepods/besteffort/poda", "");
        root.cgroup("kubepods/besteffort/podb", "7\n");
        // a: the watch sees it first, waiting for its addresses; then its ADD enrols it.
        let mut waiting = view_of("a", "a", serde_json::json!({}));
        waiting.ips.clear();
        tx.send(Update::Applied(
            waiting.pod.clone(),
            Some(Box::new(waiting.clone())),
        ))
        .await
        .unwrap();
        assert_eq!(
            enrolled_by(&changes_of(pods.recv().await.unwrap()).changes),
            []
        );
        let added = pods.cni_add(waiting, netns.clone(), vec!["10.0.0.1".parse().unwrap()]);
        assert_eq!(enrolled_by(&added), [(kube_key("a"), EnrolledBy::Cni)]);
        // The watch's later view with addresses changes nothing of it.
        let a_view = view_of("a", "a", serde_json::json!({}));
        tx.send(Update::Applied(a_view.pod.clone(), Some(Box::new(a_view))))
            .await
            .unwrap();
        assert_eq!(
            enrolled_by(&changes_of(pods.recv().await.unwrap()).changes),
            []
        );
        // b: running before the plugin was installed.
        let b_view = view_of("b", "b", serde_json::json!({}));
        tx.send(Update::Applied(b_view.pod.clone(), Some(Box::new(b_view))))
            .await
            .unwrap();
        let b = changes_of(pods.recv().await.unwrap());
        assert_eq!(
            enrolled_by(&b.changes),
            [(kube_key("b"), EnrolledBy::Watch)]
        );

        // A new agent learns from the old one's status which pods their ADD enrolled, for
        // the cgroup they had then (a new pod of the same name would have another).
        let (tx, pods) = pods_with(Resolver::new(&root.0, Some(template)), Reaper::new());
        let mut pods = pods.with_cni_enrolled([(
            PodRef {
                namespace: "ns".into(),
                name: "a".into(),
            },
            a.clone(),
        )]);
        let listed = vec![
            view_of("a", "a", serde_json::json!({})),
            view_of("b", "b", serde_json::json!({})),
        ];
        tx.send(Update::Listed(listed)).await.unwrap();
        let batch = changes_of(pods.recv().await.unwrap());
        assert_eq!(
            enrolled_by(&batch.changes),
            [
                (kube_key("a"), EnrolledBy::Cni),
                (kube_key("b"), EnrolledBy::Watch)
            ]
        );
    }

    /// Found on the real node with the CNI plugin: the sandbox's DEL unenrols the pod before
    /// the API server's deletion comes, and the pod's cgroup2 directory was then never removed.
    #[tokio::test]
    async fn a_pod_unenrolled_by_cni_del_still_has_its_cgroup_removed_at_deletion() {
        let root = node::tests::FakeRoot::new("reap-cni-del");
        let netns = root.0.join("netns");
        std::fs::write(&netns, "").unwrap();
        let (tx, mut pods) = pods_with(
            Resolver::new(&root.0, Some(netns.display().to_string())),
            Reaper::with_remove(cgroup_rmdir),
        );
        let a = root.cgroup("kubepods/besteffort/poda", "");
        let view = view_of("a", "a", serde_json::json!({}));
        let added = pods.cni_add(view.clone(), netns.clone(), view.ips.clone());
        assert!(
            added
                .iter()
                .any(|c| matches!(c, Change::Upsert(_, s) if s.is_ok()))
        );
        let removed = pods.cni_del(&view.pod, "a");
        assert!(matches!(removed.as_slice(), [Change::Remove(_)]));
        tx.send(Update::Deleted(view.pod.clone())).await.unwrap();
        assert!(changes_of(pods.recv().await.unwrap()).changes.is_empty());
        pods.reap(Instant::now() + std::time::Duration::from_secs(2));
        assert!(!a.exists(), "the deleted pod's cgroup is left");
    }

    /// On a real node the kubelet stops a deleted pod's sandbox, and its network namespace
    /// goes, before the API server's deletion comes: the pod's spec turns into "waiting for
    /// the network namespace" first. Its cgroup was still left behind on hybrid hosts.
    #[tokio::test]
    async fn a_pod_whose_netns_went_before_its_deletion_still_has_its_cgroup_removed() {
        let root = node::tests::FakeRoot::new("reap-netns");
        let netns = root.0.join("netns");
        std::fs::write(&netns, "").unwrap();
        let (tx, mut pods) = pods_with(
            Resolver::new(&root.0, Some(netns.display().to_string())),
            Reaper::with_remove(cgroup_rmdir),
        );
        let a = root.cgroup("kubepods/besteffort/poda", "7\n");
        let view = view_of("a", "a", serde_json::json!({}));
        tx.send(Update::Listed(vec![view.clone()])).await.unwrap();
        let batch = changes_of(pods.recv().await.unwrap());
        let upserts: Vec<_> = batch
            .changes
            .iter()
            .filter(|c| !matches!(c, Change::Origin(..) | Change::EnrolledBy(..)))
            .collect();
        assert!(
            matches!(upserts.as_slice(), [Change::Upsert(_, s)] if s.is_ok()),
            "enrolled"
        );
        std::fs::remove_file(&netns).unwrap();
        let changes = pods.poll();
        assert!(
            matches!(changes.as_slice(), [Change::Upsert(_, s)] if s.is_err()),
            "the spec turned into an error: {} changes",
            changes.len()
        );
        tx.send(Update::Deleted(view.pod.clone())).await.unwrap();
        changes_of(pods.recv().await.unwrap());
        assert_eq!(pods.reaper.pending(), [a.as_path()]);
    }

    #[tokio::test]
    async fn listings_key_pods_by_namespace_and_name_and_drop_the_gone() {
        let root = std::env::temp_dir().join(format!("ms-kube-pods-{}", std::process::id()));
        let (tx, mut pods) = pods_with(Resolver::new(&root, None), Reaper::new());

        tx.send(Update::Listed(vec![view("a"), view("b")]))
            .await
            .unwrap();
        let batch = changes_of(pods.recv().await.unwrap());
        assert!(batch.complete);
        // No cgroup under `root`: both wait, shown as `namespace/name`.
        let upserted: Vec<_> = batch
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Upsert(key, spec) => {
                    Some((key.clone(), spec.as_ref().clone().unwrap_err().name))
                }
                Change::Remove(key) => panic!("removed {key}"),
                Change::Pending(key, _) => panic!("noted {key}"),
                Change::Origin(..) | Change::EnrolledBy(..) | Change::Refresh(..) => None,
            })
            .collect();
        assert_eq!(
            upserted,
            [
                (kube_key("a"), "ns/a".into()),
                (kube_key("b"), "ns/b".into())
            ]
        );

        // The same view again changes nothing; a relist without `a` removes it.
        tx.send(Update::Applied(view("b").pod, Some(Box::new(view("b")))))
            .await
            .unwrap();
        assert!(changes_of(pods.recv().await.unwrap()).changes.is_empty());
        tx.send(Update::Listed(vec![view("b")])).await.unwrap();
        let batch = changes_of(pods.recv().await.unwrap());
        assert!(matches!(&batch.changes[..], [Change::Remove(k)] if *k == kube_key("a")));
        tx.send(Update::Deleted(view("b").pod)).await.unwrap();
        let batch = changes_of(pods.recv().await.unwrap());
        assert!(matches!(&batch.changes[..], [Change::Remove(k)] if *k == kube_key("b")));
    }

    fn pod_view(uid: &str, annotations: serde_json::Value, label: Option<&str>) -> PodView {
        let mut pod = view::tests::sidecar_pod(annotations);
        pod.metadata.uid = Some(uid.into());
        if let Some(l) = label {
            pod.metadata.labels =
                Some([("sidecar.istio.io/inject".to_string(), l.to_string())].into());
        }
        PodView::of(&pod).unwrap().unwrap()
    }

    /// What each change says, in order: `upsert`, `remove`, `pending: …`, `clear`,
    /// `from …`.
    fn said(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Upsert(..) => Some("upsert".into()),
                Change::Remove(_) => Some("remove".into()),
                Change::Pending(_, Some(p)) => Some(format!("pending: {p}")),
                Change::Pending(_, None) => Some("clear".into()),
                Change::Origin(_, from) => Some(format!("from {from:?}")),
                Change::Refresh(_) => Some("refresh".into()),
                Change::EnrolledBy(..) => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn capture_is_decided_once_per_pod_as_istio_init_runs_once() {
        let root = std::env::temp_dir().join(format!("ms-kube-once-{}", std::process::id()));
        let (_tx, mut pods) = pods_with(Resolver::new(&root, None), Reaper::new());
        let id = pod_view("u1", serde_json::json!({}), None).pod;
        assert_eq!(
            said(&pods.track(pod_view("u1", serde_json::json!({}), None))),
            ["upsert", "from Annotations"]
        );
        let decided = pods.pods[&id].sent.clone();

        // Opting out, NONE, or another option on the running pod: noted, not applied.
        let changed = pod_view(
            "u1",
            serde_json::json!({"sidecar.istio.io/interceptionMode": "NONE",
                               "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8"}),
            Some("false"),
        );
        let c = pods.track(changed.clone());
        assert_eq!(c.len(), 1);
        assert!(
            said(&c)[0].starts_with("pending: label sidecar.istio.io/inject, annotation sidecar.istio.io/interceptionMode, annotation traffic.sidecar.istio.io/excludeOutboundIPRanges changed"),
            "{:?}",
            said(&c)
        );
        assert_eq!(pods.pods[&id].sent, decided);
        // Retries resolve the capture as decided, and say nothing new.
        assert!(pods.poll().is_empty());
        assert_eq!(pods.pods[&id].sent, decided);
        // Changed back: nothing pending.
        assert_eq!(
            said(&pods.track(pod_view("u1", serde_json::json!({}), None))),
            ["clear"]
        );

        // A new pod of the same name (new UID) is decided afresh: left alone, as Istio's
        // gateway template gives it no istio-init.
        let gateway = pod_view(
            "u2",
            serde_json::json!({"inject.istio.io/templates": "gateway"}),
            Some("true"),
        );
        assert_eq!(said(&pods.track(gateway)), ["remove"]);
        // ... and stays left alone when its labels say otherwise, with nothing to report.
        let relabelled = pod_view(
            "u2",
            serde_json::json!({"inject.istio.io/templates": "sidecar"}),
            None,
        );
        assert!(pods.track(relabelled).is_empty());
        assert!(pods.poll().is_empty());
        // Its deletion has nothing to remove from the registry.
        assert!(pods.untrack(&id, true).is_none());

        // A pod first seen opted out by the annotation but injected by the label: captured.
        let labelled = pod_view(
            "u3",
            serde_json::json!({"sidecar.istio.io/inject": "false"}),
            Some("true"),
        );
        assert_eq!(said(&pods.track(labelled)), ["upsert", "from Annotations"]);
    }

    /// Both at once: a pod replaced by a new one of the same name (a new UID) was deleted, so
    /// its empty cgroup goes; a pod Istio gave no istio-init was never enrolled, so its
    /// deletion leaves its cgroup to the kubelet.
    #[tokio::test]
    async fn a_replaced_pods_cgroup_is_reaped_and_a_never_enrolled_pods_is_not() {
        let root = node::tests::FakeRoot::new("renew");
        std::fs::write(root.0.join("netns"), "").unwrap();
        let template = root.0.join("netns").display().to_string();
        let (_tx, mut pods) = pods_with(
            Resolver::new(&root.0, Some(template)),
            Reaper::with_remove(cgroup_rmdir),
        );
        let old = root.cgroup("kubepods/podu1", "");
        let new = root.cgroup("kubepods/podu2", "");
        let gw = root.cgroup("kubepods/podg", "");
        assert_eq!(
            said(&pods.track(view_of("web", "u1", serde_json::json!({})))),
            ["upsert", "from Annotations"]
        );
        assert_eq!(
            said(&pods.track(view_of("web", "u2", serde_json::json!({})))),
            ["remove", "upsert", "from Annotations"]
        );
        assert_eq!(pods.reaper.pending(), [old.as_path()]);

        let gateway = view_of(
            "gw",
            "g",
            serde_json::json!({"inject.istio.io/templates": "gateway"}),
        );
        let gateway_id = gateway.pod.clone();
        assert!(pods.track(gateway).is_empty());
        assert!(pods.untrack(&gateway_id, true).is_none());
        assert_eq!(pods.reaper.pending(), [old.as_path()]);

        pods.reap(Instant::now());
        assert!(!old.exists());
        assert!(new.exists(), "the new pod's");
        assert!(gw.exists(), "never enrolled: the kubelet's");
        assert!(pods.reaper.pending().is_empty());
    }
}
