//! Finding a pod on this node: its pod-level cgroup (from its UID, in whichever layout the
//! kubelet made) and its network namespace (a runtime's path template, or one of its
//! processes').
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use tracing::info;

use super::{annotations::capture, view::PodView};
use crate::{
    host::{cgroup, proc as netns, resolv},
    source::change::Rejected,
    spec::{
        pod::PodSpec,
        resolv::{kube_nameservers, nameservers},
    },
};

/// What a pod still lacks on this node; a later look may find it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum NotYet {
    #[error("waiting for the pod's addresses (status.podIPs)")]
    Addresses,
    #[error("waiting for the pod's cgroup (pod UID {uid}) under {}", .root.display())]
    Cgroup { uid: String, root: PathBuf },
    #[error(
        "waiting for the pod's network namespace (no process in {} yet)",
        .cgroup.display()
    )]
    Netns { cgroup: PathBuf },
    #[error(
        "creating the pod's cgroup2 directory {} (the kubelet made it in cgroup v1 only): {error}",
        .dir.display()
    )]
    Mirror { dir: PathBuf, error: String },
}

/// Where container runtimes bind-mount pod network namespaces.
const NAMED_NETNS_DIR: &str = "/run/netns";

/// Finds a pod's cgroup and network namespace on this node.
pub(super) struct Resolver {
    cgroup_root: PathBuf,
    /// Where the kubelet's pod cgroups are in each cgroup v1 hierarchy (None: read from the
    /// mounts when needed).
    cgroup1_roots: Option<Vec<PathBuf>>,
    netns_template: Option<String>,
    named_netns: PathBuf,
    /// What pods with `dnsPolicy: ClusterFirst` get (see [`Resolver::with_dns`]).
    cluster_dns: Result<Vec<IpAddr>, String>,
    /// The node's resolv.conf, for `dnsPolicy: Default`, as its init process sees it.
    node_resolv_conf: PathBuf,
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
            cgroup1_roots: None,
            netns_template,
            named_netns: PathBuf::from(NAMED_NETNS_DIR),
            cluster_dns: Err("not looked up".into()),
            node_resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }

    /// The cluster DNS service's addresses (`--cluster-dns`, else the kube-dns Service's, or
    /// why neither is known), and the node's resolv.conf (`--node-resolv-conf`, a path on the
    /// node, read through its init process): the nameservers of pods by their `dnsPolicy`.
    pub fn with_dns(mut self, cluster: Result<Vec<IpAddr>, String>, node: PathBuf) -> Self {
        self.cluster_dns = cluster;
        self.node_resolv_conf = node;
        self
    }

    /// The nameservers the kubelet gives the pod by its `dnsPolicy`; read only for pods that
    /// redirect DNS (the node's file, for `Default`, only then).
    fn kube_nameservers(&self, view: &PodView) -> Result<Vec<IpAddr>, String> {
        let cluster = self.cluster_dns.as_deref().map_err(String::as_str);
        let node = || {
            resolv::of_process(1, &self.node_resolv_conf)
                .map(|text| nameservers(&text))
                .map_err(|e| format!("the node's resolv.conf: {e:#}"))
        };
        kube_nameservers(view.dns_policy, cluster, node, &view.dns_nameservers)
    }

    /// The pod's spec, or why there is none yet: refused for annotations meshsteer cannot
    /// honour, waiting for what is not on the node yet. `netns`: the pod's network namespace
    /// as its CNI ADD named it, else it is found on the node.
    pub fn spec(&self, view: &PodView, netns: Option<&Path>) -> Result<PodSpec, Rejected> {
        let name = view.pod.to_string();
        let located = self.locate(view, netns);
        let at = |(cgroup, netns): (PathBuf, PathBuf), capture| PodSpec {
            name: name.clone(),
            cgroup,
            netns: Some(netns),
            ips: view.ips.clone(),
            args: None,
            capture,
            accelerate: None,
            nameservers: None,
            resolv_conf: None,
            kube_nameservers: None,
        };
        let capture = match capture(&view.annotations, &view.proxy) {
            Ok(c) => c,
            Err(e) => {
                let refused = Rejected::refused(&name, e.to_string());
                // Found on the node, it is enrolled refused (fail closed), never uncaptured.
                return Err(match located {
                    Ok(place) => refused.at(at(place, None)),
                    Err(_) => refused,
                });
            }
        };
        let place = located.map_err(|e| Rejected::waiting(&name, e.to_string()))?;
        let dns = capture.redirect_dns.then(|| self.kube_nameservers(view));
        Ok(PodSpec {
            kube_nameservers: dns,
            ..at(place, Some(capture))
        })
    }

    /// The pod's cgroup and network namespace, once it has addresses.
    fn locate(&self, view: &PodView, netns: Option<&Path>) -> Result<(PathBuf, PathBuf), NotYet> {
        if view.ips.is_empty() {
            return Err(NotYet::Addresses);
        }
        let cgroup = match self.pod_cgroup(&view.uid) {
            Some(dir) => Some(dir),
            // Only a sandbox being set up (CNI ADD) is sure to be the pod's current one.
            None if netns.is_some() => self.mirror_cgroup1(&view.uid)?,
            None => None,
        };
        let cgroup = cgroup.ok_or_else(|| NotYet::Cgroup {
            uid: view.uid.clone(),
            root: self.cgroup_root.clone(),
        })?;
        let netns = match netns {
            Some(ns) => ns.to_path_buf(),
            None => self.netns(view, &cgroup).ok_or_else(|| NotYet::Netns {
                cgroup: cgroup.clone(),
            })?,
        };
        Ok((cgroup, netns))
    }

    /// The pod-level cgroup: of the kubelet's layouts that exist, the first with processes or
    /// children, else the first. An empty directory may be a stale one (hybrid hosts leave
    /// deleted pods' in cgroup2), so a live one in another layout wins over it.
    pub fn pod_cgroup(&self, uid: &str) -> Option<PathBuf> {
        let existing: Vec<PathBuf> = cgroup_candidates(uid)
            .into_iter()
            .map(|rel| self.cgroup_root.join(rel))
            .filter(|dir| dir.join("cgroup.procs").is_file())
            .collect();
        let live = existing.iter().position(|dir| cgroup::in_use(dir));
        existing.into_iter().nth(live.unwrap_or(0))
    }

    /// On a hybrid host a kubelet with the cgroupfs driver makes the pod's cgroup in the v1
    /// hierarchies only; runc makes the cgroup2 one when the sandbox's first process starts,
    /// after CNI ADD has returned. Capture must be in effect before that process runs, so ADD
    /// makes the directory where runc will find it: the v1 one's place, in cgroup2. systemd's
    /// slices are left to systemd, which makes them in cgroup2 too.
    fn mirror_cgroup1(&self, uid: &str) -> Result<Option<PathBuf>, NotYet> {
        let v1_roots = match &self.cgroup1_roots {
            Some(roots) => roots.clone(),
            None => self.read_cgroup1_roots(),
        };
        let made = cgroup_candidates(uid).into_iter().find(|rel| {
            rel.extension().is_none_or(|e| e != "slice")
                && v1_roots.iter().any(|v1| v1.join(rel).is_dir())
        });
        let Some(rel) = made else {
            return Ok(None);
        };
        let dir = self.cgroup_root.join(rel);
        std::fs::create_dir_all(&dir).map_err(|e| NotYet::Mirror {
            dir: dir.clone(),
            error: e.to_string(),
        })?;
        info!(cgroup = %dir.display(), "made the pod's cgroup2 directory (hybrid host)");
        Ok(Some(dir))
    }

    /// The cgroup root's place in each cgroup v1 hierarchy mounted (none on a pure cgroup v2
    /// host). Read at each need: this is rare (a sandbox with no cgroup2 directory yet).
    fn read_cgroup1_roots(&self) -> Vec<PathBuf> {
        let (Ok(v2), Ok(v1)) = (cgroup::cgroup2_mount(), cgroup::cgroup1_mounts()) else {
            return Vec::new();
        };
        match self.cgroup_root.strip_prefix(&v2) {
            Ok(rel) => v1.iter().map(|m| m.join(rel)).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Whether `dir` is one of the pod's cgroupfs-driver pod directories under the cgroup root:
    /// the only kind the agent removes after the pod is deleted (systemd removes its own
    /// `.slice` units).
    pub fn removable(&self, dir: &Path, uid: &str) -> bool {
        cgroup_candidates(uid).iter().any(|rel| {
            rel.extension().is_none_or(|e| e != "slice") && self.cgroup_root.join(rel) == dir
        })
    }

    fn netns(&self, view: &PodView, cgroup: &Path) -> Option<PathBuf> {
        match &self.netns_template {
            Some(t) => {
                let path = PathBuf::from(
                    t.replace("{uid}", &view.uid)
                        .replace("{namespace}", &view.pod.namespace)
                        .replace("{name}", &view.pod.name),
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::source::{change::Unready, kube::view::tests::sidecar_pod};

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

    /// A scratch cgroup root (plain directories: only the layout is looked at), removed on
    /// drop.
    pub(crate) struct FakeRoot(pub PathBuf);

    impl FakeRoot {
        pub fn new(tag: &str) -> Self {
            let root = std::env::temp_dir().join(format!("ms-kube-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            Self(root)
        }

        /// A cgroup directory at `rel`, with `procs` as its cgroup.procs.
        pub fn cgroup(&self, rel: &str, procs: &str) -> PathBuf {
            let dir = self.0.join(rel);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cgroup.procs"), procs).unwrap();
            dir
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn static_pods_are_found_by_their_config_hash() {
        let root = FakeRoot::new("static");
        let hash = "6f2b3d5a1c0e4f7a9b8c7d6e5f4a3b2c";
        let netns = root.0.join(format!("netns-{hash}"));
        std::fs::write(&netns, "").unwrap();
        let template = root.0.join("netns-{uid}").display().to_string();
        let resolver = Resolver::new(&root.0, Some(template));
        let cgroup = root.cgroup(&format!("kubepods/besteffort/pod{hash}"), "1\n");
        // The mirror pod's own UID names nothing on the node.
        root.cgroup("kubepods/besteffort/pod1-2", "");
        let view = PodView::of(&sidecar_pod(serde_json::json!({
            "kubernetes.io/config.mirror": hash,
            "kubernetes.io/config.hash": hash,
        })))
        .unwrap()
        .unwrap();
        let spec = resolver.spec(&view, None).unwrap();
        assert_eq!(spec.cgroup, cgroup);
        assert_eq!(spec.netns, Some(netns));
    }

    /// A pod that redirects DNS carries what its dnsPolicy gives it; one that does not,
    /// nothing (nor is anything looked up for it).
    #[test]
    fn pods_that_redirect_dns_carry_their_policys_nameservers() {
        let root = FakeRoot::new("dns");
        let netns = root.0.join("netns-1-2");
        std::fs::write(&netns, "").unwrap();
        let template = root.0.join("netns-{uid}").display().to_string();
        root.cgroup("kubepods/besteffort/pod1-2", "1\n");
        let cluster = vec!["10.96.0.10".parse::<IpAddr>().unwrap()];
        let resolver = Resolver::new(&root.0, Some(template))
            .with_dns(Ok(cluster.clone()), root.0.join("no-such-resolv.conf"));
        let mut pod = sidecar_pod(serde_json::json!({}));
        let spec = resolver
            .spec(&PodView::of(&pod).unwrap().unwrap(), None)
            .unwrap();
        assert_eq!(spec.kube_nameservers, None);
        let proxy = &mut pod.spec.as_mut().unwrap().containers[1];
        proxy.env = Some(vec![k8s_openapi::api::core::v1::EnvVar {
            name: "ISTIO_META_DNS_CAPTURE".into(),
            value: Some("true".into()),
            value_from: None,
        }]);
        let view = PodView::of(&pod).unwrap().unwrap();
        let spec = resolver.spec(&view, None).unwrap();
        assert_eq!(spec.kube_nameservers, Some(Ok(cluster)));
        // dnsPolicy Default: the node's file, which names its path when it cannot be read.
        let default = PodView {
            dns_policy: crate::spec::resolv::DnsPolicy::Default,
            ..view.clone()
        };
        let Some(Err(why)) = resolver.spec(&default, None).unwrap().kube_nameservers else {
            panic!("an error expected");
        };
        assert!(why.contains("no-such-resolv.conf"), "{why}");
        // No cluster DNS known: said.
        let unknown = resolver.with_dns(Err("x".into()), "/etc/resolv.conf".into());
        let Some(Err(why)) = unknown.spec(&view, None).unwrap().kube_nameservers else {
            panic!("an error expected");
        };
        assert!(why.contains("cluster DNS service is not known"), "{why}");
    }

    #[test]
    fn a_stale_empty_pod_cgroup_loses_to_a_live_one() {
        let root = FakeRoot::new("stale");
        let resolver = Resolver::new(&root.0, None);
        // Left in cgroup2 by an earlier life of the pod in another QoS class (first in the
        // kubelet's order), beside the live one, whose container holds the processes.
        let stale = root.cgroup("kubepods/pod1-2", "");
        let live = root.cgroup("kubepods/besteffort/pod1-2", "");
        root.cgroup("kubepods/besteffort/pod1-2/c1", "7\n");
        assert_eq!(resolver.pod_cgroup("1-2"), Some(live.clone()));
        // A pod cgroup with processes of its own counts as live too.
        std::fs::remove_dir_all(live.join("c1")).unwrap();
        std::fs::write(live.join("cgroup.procs"), "7\n").unwrap();
        assert_eq!(resolver.pod_cgroup("1-2"), Some(live.clone()));
        // All empty (a pod not started yet): the kubelet's first layout.
        std::fs::write(live.join("cgroup.procs"), "").unwrap();
        assert_eq!(resolver.pod_cgroup("1-2"), Some(stale.clone()));

        assert!(resolver.removable(&stale, "1-2"));
        assert!(resolver.removable(&live, "1-2"));
        assert!(!resolver.removable(&live, "1-3"), "another pod's name");
        assert!(!resolver.removable(&root.0.join("kubepods/besteffort"), "1-2"));
        assert!(!resolver.removable(Path::new("/elsewhere/kubepods/pod1-2"), "1-2"));
        let slice = root.0.join("kubepods.slice/kubepods-pod1_2.slice");
        assert!(!resolver.removable(&slice, "1-2"), "systemd's own unit");
    }

    /// Issue 14: on a hybrid host, a sandbox's ADD comes before runc makes the pod's cgroup2
    /// directory; ADD makes it where the kubelet put the v1 one.
    #[test]
    fn a_sandbox_on_a_hybrid_host_gets_its_cgroup2_directory_made() {
        let root = FakeRoot::new("hybrid");
        let v1 = FakeRoot::new("hybrid-v1");
        let mut resolver = Resolver::new(&root.0, None);
        resolver.cgroup1_roots = Some(vec![v1.0.join("cpu"), v1.0.join("memory")]);
        let view = PodView::of(&sidecar_pod(serde_json::json!({})))
            .unwrap()
            .unwrap();
        let netns = root.0.join("netns");
        std::fs::write(&netns, "").unwrap();
        let made = root.0.join("kubepods/burstable/pod1-2");
        // Not in v1 yet (or a pure cgroup v2 host, where the kubelet makes it): nothing made.
        assert!(resolver.spec(&view, Some(&netns)).is_err());
        assert!(!root.0.join("kubepods").exists());
        // systemd's slices are systemd's to make.
        std::fs::create_dir_all(v1.0.join("memory/kubepods.slice/kubepods-pod1_2.slice")).unwrap();
        assert!(resolver.spec(&view, Some(&netns)).is_err());
        std::fs::create_dir_all(v1.0.join("memory/kubepods/burstable/pod1-2")).unwrap();
        // A pod found by the watch may be an old sandbox's: only ADD makes it.
        assert!(resolver.spec(&view, None).is_err());
        assert!(!made.exists());
        let spec = resolver.spec(&view, Some(&netns)).unwrap();
        assert_eq!(spec.cgroup, made);
        assert!(made.is_dir());
    }

    #[test]
    fn pending_pods_say_what_they_wait_for() {
        let root = std::env::temp_dir().join(format!("ms-kube-{}", std::process::id()));
        let resolver = Resolver::new(&root, None);
        let mut v = PodView::of(&sidecar_pod(serde_json::json!({})))
            .unwrap()
            .unwrap();
        let e = resolver.spec(&v, None).unwrap_err();
        let cgroup = format!(
            "waiting for the pod's cgroup (pod UID 1-2) under {}",
            root.display()
        );
        assert_eq!(e.why, Unready::Waiting(cgroup));
        assert_eq!(e.name, "ns/a");
        v.ips.clear();
        let e = resolver.spec(&v, None).unwrap_err();
        assert_eq!(
            e.why,
            Unready::Waiting("waiting for the pod's addresses (status.podIPs)".into())
        );
        // Annotations meshsteer cannot honour are refused, whatever else is missing.
        v.annotations
            .insert("sidecar.istio.io/interceptionMode".into(), "TPROXY".into());
        let e = resolver.spec(&v, None).unwrap_err();
        assert!(
            matches!(&e.why, Unready::Refused(r) if r.starts_with("annotation sidecar.istio.io/interceptionMode: ")),
            "{e:?}"
        );
    }
}
