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
mod node;
mod reap;
mod view;
mod watch;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result};
use kube::Api;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, info, info_span};

pub use self::watch::SetupError;
use self::{
    node::Resolver,
    reap::Reaper,
    view::{PodRef, PodView},
    watch::{Update, client, watch},
};
use super::change::{Batch, Change, Rejected};
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
    /// The cgroups of pods the agent enrolled and then left alone (finished, opted out), for
    /// when their deletion comes.
    released: BTreeMap<PodRef, PathBuf>,
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

/// A checked configuration: the node's name and a client whose files were all read. Checked
/// before the agent attaches anything, so a node without credentials is left as it was.
pub struct Prepared {
    node: String,
    client: kube::Client,
    netns_path_template: Option<String>,
}

impl Settings {
    /// Checks everything the source needs short of the API server answering.
    pub async fn prepare(&self) -> Result<Prepared, SetupError> {
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
        Ok(Prepared {
            node,
            client,
            netns_path_template: self.netns_path_template.clone(),
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
        } = prepared;
        let (tx, updates) = mpsc::channel(QUEUE);
        info!(node = %node, "watching this node's pods on the Kubernetes API server");
        let watcher = tokio::spawn(watch(Api::all(client), node, tx));
        Self {
            updates,
            resolver: Resolver::new(cgroup_root, netns_path_template),
            pods: BTreeMap::new(),
            reaper: Reaper::new(),
            released: BTreeMap::new(),
            watcher,
        }
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
                let listed: BTreeSet<&PodRef> = views.iter().map(|v| &v.pod).collect();
                let gone: Vec<PodRef> = self
                    .pods
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                // Missing from a relist: deleted, or only left alone now (a listing names
                // captured pods only), which cannot be told apart. Cgroups are removed only
                // after a deletion the API server reported, so these wait for theirs.
                changes.extend(gone.iter().filter_map(|k| self.untrack(k, false)));
                self.released.retain(|_, dir| dir.exists());
                changes.extend(views.into_iter().filter_map(|v| self.track(v)));
            }
            Update::Applied(_, Some(view)) => changes.extend(self.track(view)),
            // No longer captured (opted out, finished): its cgroup is the kubelet's business.
            Update::Applied(id, None) => changes.extend(self.untrack(&id, false)),
            Update::Deleted(id) => changes.extend(self.untrack(&id, true)),
        }
        Ok(Batch { changes, complete })
    }

    /// Pods not fully on the node yet (no addresses, cgroup or process) are retried; so are
    /// enrolled pods whose namespace path went away with the process it named, and those whose
    /// cgroup is empty while a live one in another layout exists (the empty one was stale).
    /// Deleted pods' empty cgroups are removed.
    pub fn poll(&mut self) -> Vec<Change> {
        self.reap(Instant::now());
        let stale: Vec<PodRef> = self
            .pods
            .iter()
            .filter(|(_, t)| match &t.sent {
                Err(_) => true,
                Ok(spec) => {
                    spec.netns.as_ref().is_some_and(|ns| !ns.exists())
                        || (!cgroup::in_use(&spec.cgroup)
                            && self.resolver.pod_cgroup(&t.view.uid).as_ref() != Some(&spec.cgroup))
                }
            })
            .map(|(k, _)| k.clone())
            .collect();
        stale
            .into_iter()
            .filter_map(|id| {
                let view = self.pods.get(&id)?.view.clone();
                self.resolve(view)
            })
            .collect()
    }

    /// Removes deleted pods' cgroups that are due and empty.
    fn reap(&mut self, now: Instant) {
        let pods = &self.pods;
        self.reaper.poll(now, |dir| {
            pods.values()
                .any(|t| t.sent.as_ref().is_ok_and(|s| s.cgroup == dir))
        });
    }

    /// A pod appeared or changed.
    fn track(&mut self, view: PodView) -> Option<Change> {
        self.released.remove(&view.pod);
        if self.pods.get(&view.pod).is_some_and(|t| t.view == view) {
            return None;
        }
        self.resolve(view)
    }

    /// Resolves the pod's spec; a change only if it differs from what was sent.
    fn resolve(&mut self, view: PodView) -> Option<Change> {
        let _g = info_span!("pod", pod = %view.pod).entered();
        let sent = self.resolver.spec(&view).map(|mut spec| {
            if let Some(c) = spec.capture.as_mut() {
                c.dual_stack = view.dual_stack;
            }
            spec
        });
        let key = view.pod.key();
        let old = self.pods.insert(
            view.pod.clone(),
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

    /// A pod is gone from what the agent captures; `deleted`: from the API server too, so its
    /// cgroup, once empty, is removed (the registry unenrols it before the next poll). A pod
    /// only left alone (finished, opted out) keeps its cgroup until its deletion is seen.
    fn untrack(&mut self, id: &PodRef, deleted: bool) -> Option<Change> {
        let now = Instant::now();
        let Some(t) = self.pods.remove(id) else {
            if deleted && let Some(dir) = self.released.remove(id) {
                self.reaper.deleted(id.to_string(), dir, now);
            }
            return None;
        };
        let dir = t
            .sent
            .ok()
            .map(|s| s.cgroup)
            .filter(|dir| self.resolver.removable(dir, &t.view.uid));
        match dir {
            Some(dir) if deleted => self.reaper.deleted(id.to_string(), dir, now),
            Some(dir) => {
                self.released.insert(id.clone(), dir);
            }
            None => {}
        }
        Some(Change::Remove(id.key()))
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

    #[tokio::test]
    async fn deleted_pods_empty_cgroupfs_dirs_are_removed_and_nothing_else() {
        let root = node::tests::FakeRoot::new("reap");
        std::fs::write(root.0.join("netns"), "").unwrap();
        let template = root.0.join("netns").display().to_string();
        let (tx, updates) = mpsc::channel(QUEUE);
        let mut pods = KubePods {
            updates,
            resolver: Resolver::new(&root.0, Some(template)),
            pods: BTreeMap::new(),
            reaper: Reaper::with_remove(cgroup_rmdir),
            released: BTreeMap::new(),
            watcher: tokio::spawn(async {}),
        };
        // Deleted while its container is still stopping; deleted with a systemd slice;
        // opted out (not deleted), later deleted; deleted while a new pod with its UID (a static pod's hash)
        // took its directory.
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
        let batch = pods.recv().await.unwrap();
        for c in &batch.changes {
            match c {
                Change::Upsert(key, spec) => {
                    assert!(spec.is_ok(), "{key}: {:?}", spec.as_ref().as_ref().err())
                }
                Change::Remove(key) => panic!("removed {key}"),
                Change::Pending(key, _) => panic!("noted {key}"),
            }
        }
        for name in ["a", "b", "d"] {
            tx.send(Update::Deleted(views[0].pod.clone().with_name(name)))
                .await
                .unwrap();
            pods.recv().await.unwrap();
        }
        tx.send(Update::Applied(views[2].pod.clone(), None))
            .await
            .unwrap();
        pods.recv().await.unwrap();
        assert_eq!(pods.reaper.pending(), [a.as_path(), d.as_path()]);
        // `c` was left alone, then deleted: its directory goes too.
        tx.send(Update::Deleted(views[2].pod.clone()))
            .await
            .unwrap();
        pods.recv().await.unwrap();
        assert_eq!(
            pods.reaper.pending(),
            [a.as_path(), d.as_path(), c.as_path()]
        );
        // `d`'s directory is now a tracked pod's (the same static pod, recreated).
        let mut again = view_of("d2", "d", serde_json::json!({}));
        again.pod.name = "d2".into();
        tx.send(Update::Applied(again.pod.clone(), Some(again)))
            .await
            .unwrap();
        pods.recv().await.unwrap();

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

    #[tokio::test]
    async fn listings_key_pods_by_namespace_and_name_and_drop_the_gone() {
        let (tx, updates) = mpsc::channel(QUEUE);
        let root = std::env::temp_dir().join(format!("ms-kube-pods-{}", std::process::id()));
        let mut pods = KubePods {
            updates,
            resolver: Resolver::new(&root, None),
            pods: BTreeMap::new(),
            reaper: Reaper::new(),
            released: BTreeMap::new(),
            watcher: tokio::spawn(async {}),
        };

        tx.send(Update::Listed(vec![view("a"), view("b")]))
            .await
            .unwrap();
        let batch = pods.recv().await.unwrap();
        assert!(batch.complete);
        // No cgroup under `root`: both wait, shown as `namespace/name`.
        let upserted: Vec<_> = batch
            .changes
            .iter()
            .map(|c| match c {
                Change::Upsert(key, spec) => (key.clone(), spec.as_ref().clone().unwrap_err().name),
                Change::Remove(key) => panic!("removed {key}"),
                Change::Pending(key, _) => panic!("noted {key}"),
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
        tx.send(Update::Applied(view("b").pod, Some(view("b"))))
            .await
            .unwrap();
        assert!(pods.recv().await.unwrap().changes.is_empty());
        tx.send(Update::Listed(vec![view("b")])).await.unwrap();
        let batch = pods.recv().await.unwrap();
        assert!(matches!(&batch.changes[..], [Change::Remove(k)] if *k == kube_key("a")));
        tx.send(Update::Deleted(view("b").pod)).await.unwrap();
        let batch = pods.recv().await.unwrap();
        assert!(matches!(&batch.changes[..], [Change::Remove(k)] if *k == kube_key("b")));
    }
}
