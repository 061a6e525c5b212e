//! Pod discovery against a real API server (kube-apiserver v1.20 + etcd on loopback): pods
//! are created through the API for a node name, their status set as a kubelet would, and each
//! is backed by a simulated pod whose cgroup sits where a systemd-driver kubelet puts it. The
//! agent (`run --kubernetes`, as the unprivileged `node-agent` user bound to the deployment's
//! ClusterRole) must find them by UID and capture them. Also: the deployment's manifests
//! validate server-side and its ServiceAccount can do what the agent needs and no more.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use meshsteer::inspect::{Capture, INJECTOR_DEFAULT_ARGS};
use meshsteer_tests::{
    Agent, Node, Pod,
    agent::path_str,
    area::{self, AreaGuard},
    inject::{self, Injector},
    kube::{Cluster, UP_SH_APPLY, besteffort_cgroup, cluster, repo_root},
    topology::{lo_ipv6, start_listener_on},
};
use serde_json::json;

const WORLD: &str = "10.200.0.1:80";
const EXCLUDE_OUTBOUND: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";

/// One test's world: a namespace of its own on the shared API server, a simulated node with
/// its world listening, and an agent watching that node's pods as `node-agent`.
struct Scene {
    k8s: &'static Cluster,
    ns: String,
    // Stopped before the node goes.
    agent: Agent,
    node: Node,
    /// Taken before the API server is started (the node takes it again).
    _area: AreaGuard,
}

impl Scene {
    fn new() -> Result<Self> {
        let area = area::enter();
        let k8s = cluster()?;
        let ns = k8s.namespace()?;
        // Not a `Testbed`: the agent's arguments name the node, so it starts after it.
        let mut node = Node::new()?;
        node.start_world()?;
        let kubeconfig = k8s.agent_kubeconfig();
        let agent = Agent::start_with(
            &node,
            &[
                "--kubernetes",
                "--node-name",
                &node.id,
                "--kubeconfig",
                path_str(&kubeconfig),
            ],
        )?;
        Ok(Self {
            k8s,
            ns,
            agent,
            node,
            _area: area,
        })
    }

    /// The pod's name in `meshsteer status`.
    fn status_name(&self, pod: &str) -> String {
        format!("{}/{pod}", self.ns)
    }

    /// A pod made through the API for node `on` (default: this one), backed by a simulated pod
    /// of this node with its app listening and its addresses published, as a kubelet would.
    fn running_pod(&mut self, name: &str, on: Option<&str>, sidecar: bool) -> Result<Pod> {
        self.running_pod_with(name, on, sidecar, &BTreeMap::new())
    }

    /// [`Scene::running_pod`], created with `annotations`.
    fn running_pod_with(
        &mut self,
        name: &str,
        on: Option<&str>,
        sidecar: bool,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Pod> {
        let on = on.unwrap_or(&self.node.id).to_string();
        let uid = self
            .k8s
            .create_pod(&self.ns, name, &on, sidecar, annotations)?;
        let mut pod = self.node.add_pod_at(name, &besteffort_cgroup(&uid))?;
        pod.start_listener()?;
        self.publish_ips(&pod)?;
        Ok(pod)
    }

    fn publish_ips(&self, pod: &Pod) -> Result<()> {
        self.k8s
            .set_pod_ips(&self.ns, &pod.name, &[pod.ip4.parse()?, pod.ip6.parse()?])
    }
}

#[test]
fn capture_follows_the_pod_through_the_api_server() -> Result<()> {
    let mut s = Scene::new()?;
    let pod = s.running_pod("a", None, true)?;
    let (k8s, ns, name) = (s.k8s, s.ns.clone(), s.status_name("a"));
    let ns = ns.as_str();

    s.agent.wait_state(&name, |st| st == "ready")?;
    let took = pod.lands_on(WORLD, 15001)?;
    eprintln!("captured {took:?} after ready");
    // `explain` knows the pod by name from the agent's live state (no spec file exists).
    let explain = |s: &Scene| -> Result<serde_json::Value> {
        let out = s.agent.cli(&[
            "explain", "--json", "--pod", &name, "--uid", "1000", "--dst", WORLD,
        ])?;
        Ok(serde_json::from_slice(&out)?)
    };
    let e = explain(&s)?;
    assert_eq!(e["from"], "agent", "{e}");
    assert_eq!(e["lands"], "127.0.0.1:15001", "{e}");

    // istio-init runs once per pod: a live change, even opting out, is reported as pending
    // and not applied.
    let pending = |key: &'static str| {
        move |p: &serde_json::Value| {
            p["options"]["pending"]
                .as_str()
                .is_some_and(|t| t.contains(key))
        }
    };
    k8s.annotate(ns, "a", EXCLUDE_OUTBOUND, Some("10.200.0.0/16"))?;
    s.agent.wait_pod(&name, pending(EXCLUDE_OUTBOUND))?;
    // `explain` decides from the settings in effect, not from the pending annotation.
    let e = explain(&s)?;
    assert_eq!(e["lands"], "127.0.0.1:15001", "{e}");
    k8s.annotate(ns, "a", INTERCEPTION_MODE, Some("NONE"))?;
    s.agent.wait_pod(&name, pending(INTERCEPTION_MODE))?;
    assert_eq!(s.agent.state(&name).as_deref(), Some("ready"));
    assert_eq!(pod.probe(1000, 1000, WORLD, &[])?["listener"], 15001);
    k8s.annotate(ns, "a", EXCLUDE_OUTBOUND, None)?;
    k8s.annotate(ns, "a", INTERCEPTION_MODE, None)?;
    s.agent.wait_pod(&name, |p| {
        p["options"]["from"] == "annotations" && p["options"]["pending"].is_null()
    })?;

    // What meshsteer does not implement is a clear error on the pod that asks for it, which is
    // enrolled refused, fail closed: its connections fail rather than go uncaptured.
    let tproxy = BTreeMap::from([(INTERCEPTION_MODE.to_string(), "TPROXY".to_string())]);
    let t = s.running_pod_with("t", None, true, &tproxy)?;
    s.agent.wait_pod(&s.status_name("t"), |p| {
        let st = p["state"].as_str().unwrap_or_default();
        st.contains("interceptionMode") && st.contains("TPROXY") && p["failClosed"] == true
    })?;
    let v = t.probe(1000, 1000, WORLD, &[])?;
    assert_eq!(v["error"], "permission denied", "{v}");

    // Deletion stops capture and frees the pod's map entries.
    k8s.delete_pod(ns, "t")?;
    k8s.delete_pod(ns, "a")?;
    let took = pod.lands_on(WORLD, 80)?;
    eprintln!("deleted: capture gone after {took:?}");
    let t_name = s.status_name("t");
    s.agent.wait_until(
        Duration::from_secs(5),
        "the pods to leave the status",
        |a| a.state(&name).is_none() && a.state(&t_name).is_none(),
    )?;
    assert_eq!(s.agent.enrolled_pods()?, 0);
    Ok(())
}

#[test]
fn pods_wait_for_the_node_and_other_pods_are_left_alone() -> Result<()> {
    let mut s = Scene::new()?;
    // Another node's pod and a pod without a sidecar, both with cgroups the agent could find.
    let elsewhere = s.running_pod("o", Some("some-other-node"), true)?;
    let plain = s.running_pod("n", None, false)?;

    // Known to the API server before it exists on the node: reported as waiting, in order.
    let w = s.status_name("w");
    let uid = s
        .k8s
        .create_pod(&s.ns, "w", &s.node.id, true, &BTreeMap::new())?;
    s.agent
        .wait_state(&w, |st| st.contains("waiting for the pod's addresses"))?;
    let mut pod = s.node.add_pod_at("w", &besteffort_cgroup(&uid))?;
    s.publish_ips(&pod)?;
    s.agent.wait_state(&w, |st| {
        st.contains("waiting for the pod's network namespace")
    })?;
    pod.start_listener()?;
    s.agent.wait_state(&w, |st| st == "ready")?;
    pod.lands_on(WORLD, 15001)?;

    for p in [&elsewhere, &plain] {
        assert_eq!(s.agent.state(&s.status_name(&p.name)), None);
        assert_eq!(
            p.probe(1000, 1000, WORLD, &[])?["listener"],
            80,
            "{}",
            p.name
        );
    }
    assert_eq!(s.agent.enrolled_pods()?, 1);
    Ok(())
}

/// A pod made through the API with `annotations`, backed by a simulated pod whose cgroup is
/// `cgroup(uid)` (relative to the node's root), running, with its addresses published.
fn pod_at(
    s: &mut Scene,
    name: &str,
    annotations: &[(&str, &str)],
    cgroup: impl Fn(&str) -> PathBuf,
) -> Result<Pod> {
    let annotations = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let uid = s
        .k8s
        .create_pod(&s.ns, name, &s.node.id.clone(), true, &annotations)?;
    let mut pod = s.node.add_pod_at(name, &cgroup(&uid))?;
    pod.start_listener()?;
    s.publish_ips(&pod)?;
    Ok(pod)
}

/// A static pod's mirror: the kubelet runs it under its config hash, which names its cgroup,
/// not under the mirror pod's UID.
#[test]
fn a_static_pod_is_found_by_its_config_hash() -> Result<()> {
    let mut s = Scene::new()?;
    let hash = "5f0c4b7ad2e94e1b8c3a6d9e0f1a2b3c";
    let pod = pod_at(
        &mut s,
        "static",
        &[
            ("kubernetes.io/config.mirror", hash),
            ("kubernetes.io/config.hash", hash),
        ],
        |_| PathBuf::from(format!("kubepods/pod{hash}")),
    )?;
    s.agent
        .wait_state(&s.status_name("static"), |st| st == "ready")?;
    pod.lands_on(WORLD, 15001)?;
    Ok(())
}

/// On hybrid hosts the pod-level cgroup2 directory outlives the pod (cgroupfs driver): the
/// agent removes it once the pod is deleted and the directory is empty, not before.
#[test]
fn a_deleted_pods_empty_cgroup_is_removed() -> Result<()> {
    let mut s = Scene::new()?;
    let mut pod = pod_at(&mut s, "gone", &[], |uid| {
        PathBuf::from(format!("kubepods/besteffort/pod{uid}"))
    })?;
    let name = s.status_name("gone");
    s.agent.wait_state(&name, |st| st == "ready")?;
    s.k8s.delete_pod(&s.ns, "gone")?;
    s.agent
        .wait_until(Duration::from_secs(5), "the pod to leave the status", |a| {
            a.state(&name).is_none()
        })?;
    // Its container is still there: the directory stays.
    std::thread::sleep(Duration::from_millis(1500));
    ensure!(pod.cgroup.exists(), "removed while in use");
    pod.stop_containers()?;
    let start = Instant::now();
    while pod.cgroup.exists() {
        ensure!(
            start.elapsed() < Duration::from_secs(5),
            "{} still there 5 s after the pod's containers stopped",
            pod.cgroup.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(
        pod.cgroup.parent().is_some_and(Path::exists),
        "only the pod's own directory goes"
    );
    Ok(())
}

/// SIGKILL leaves capture in effect; changes made through the API while the agent was down
/// are reconciled by the next agent, from its first list. (A restarted agent has not seen the
/// pod's earlier annotations: it decides from those it finds, so an annotation changed while
/// it was down applies, unlike one changed while it runs.)
#[test]
fn a_restarted_agent_reconciles_what_changed_while_it_was_down() -> Result<()> {
    let mut s = Scene::new()?;
    let a = s.running_pod("a", None, true)?;
    let b = s.running_pod("b", None, true)?;
    for p in [&a, &b] {
        s.agent
            .wait_state(&s.status_name(&p.name), |st| st == "ready")?;
    }

    s.agent.stop(libc::SIGKILL);
    s.k8s
        .annotate(&s.ns, "a", EXCLUDE_OUTBOUND, Some("10.200.0.0/16"))?;
    s.k8s.delete_pod(&s.ns, "b")?;
    for p in [&a, &b] {
        assert_eq!(p.probe(1000, 1000, WORLD, &[])?["listener"], 15001);
    }

    let start = Instant::now();
    s.agent.restart(libc::SIGKILL)?;
    a.lands_on(WORLD, 80)?;
    b.lands_on(WORLD, 80)?;
    eprintln!("restarted agent reconciled after {:?}", start.elapsed());
    s.agent
        .wait_state(&s.status_name("a"), |st| st == "ready")?;
    ensure!(
        s.agent.state(&s.status_name("b")).is_none(),
        "deleted pod still listed"
    );
    assert_eq!(s.agent.enrolled_pods()?, 1);
    Ok(())
}

/// `deploy/` as the API server sees it: it installs on a fresh API server the way
/// `deploy/kind/up.sh` applies it (the harness's first step, [`cluster`]), every manifest
/// passes server-side validation, and the ServiceAccount may read pods, and the cluster DNS
/// Service (docs/dns.md), and nothing else.
#[test]
fn deploy_manifests_validate_and_grant_only_pod_reads() -> Result<()> {
    let _area = area::enter();
    let k8s = cluster()?;
    let up = std::fs::read_to_string(repo_root().join("deploy/kind/up.sh"))?;
    ensure!(
        up.lines().any(|l| l.trim() == UP_SH_APPLY),
        "deploy/kind/up.sh no longer installs with `{UP_SH_APPLY}`, which the harness mirrors"
    );
    let ds = k8s
        .kubectl()
        .args([
            "-n",
            "meshsteer",
            "get",
            "daemonset",
            "meshsteer",
            "-o",
            "name",
        ])
        .output()?;
    ensure!(
        String::from_utf8_lossy(&ds.stdout).trim() == "daemonset.apps/meshsteer",
        "the DaemonSet was not installed: {}",
        String::from_utf8_lossy(&ds.stderr)
    );
    let deploy = repo_root().join("deploy");
    let out = k8s
        .kubectl()
        .args(["apply", "--dry-run=server", "-k"])
        .arg(&deploy)
        .output()
        .context("running kubectl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "kubectl apply --dry-run=server -k deploy/ failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in [
        "daemonset.apps/meshsteer",
        "clusterrole.rbac.authorization.k8s.io/meshsteer",
    ] {
        ensure!(text.contains(kind), "{kind} not applied: {text}");
    }

    let sa = "system:serviceaccount:meshsteer:meshsteer";
    let can = |verb: &str, resource: &str, namespace: Option<&str>| -> Result<bool> {
        let mut cmd = k8s.kubectl();
        cmd.args(["auth", "can-i", verb, resource, "--as", sa]);
        match namespace {
            Some(n) => cmd.args(["--namespace", n]),
            None => cmd.arg("--all-namespaces"),
        };
        let out = cmd.output().context("running kubectl auth can-i")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
    };
    for verb in ["get", "list", "watch"] {
        ensure!(can(verb, "pods", None)?, "the agent cannot {verb} pods");
    }
    for (verb, resource) in [
        ("list", "secrets"),
        ("get", "secrets"),
        ("create", "pods"),
        ("delete", "pods"),
        ("patch", "pods"),
        ("list", "nodes"),
        ("list", "configmaps"),
        ("create", "pods/exec"),
    ] {
        ensure!(
            !can(verb, resource, None)?,
            "the agent may {verb} {resource}"
        );
    }
    ensure!(!can("get", "secrets", Some("meshsteer"))?);
    // The cluster DNS Service's address, and no other Service.
    ensure!(
        can("get", "services/kube-dns", Some("kube-system"))?,
        "the agent cannot read the kube-dns Service"
    );
    for (verb, resource) in [
        ("get", "services/kubernetes"),
        ("list", "services"),
        ("watch", "services"),
        ("update", "services/kube-dns"),
    ] {
        ensure!(
            !can(verb, resource, Some("kube-system"))?,
            "the agent may {verb} {resource} in kube-system"
        );
    }
    Ok(())
}

/// What the agent should make of an injected pod.
#[derive(Debug)]
enum Outcome {
    /// Captured with exactly this (istio-init's) capture.
    Ready(Capture),
    /// Refused, with this in its error.
    Error(&'static str),
    /// Istio gave it no istio-init: not captured, not listed.
    LeftAlone,
}

/// Issue 12's table against a real API server: each pod as Istio's injector makes it
/// ([`inject::cases`]), injected with meshsteer's template (its annotation rendered from
/// `deploy/kind/istio.yaml`) and as an older pod without it, gets exactly the capture
/// istio-init would have given it (parsed from istio-init's args and env, written by hand
/// from Istio's `sidecar` template), a clear error for what meshsteer does not implement, or
/// none where Istio gives no istio-init. Also: a Helm gateway, a pod with its own
/// `inject.istio.io/templates` (keeping istio-init), and a live change of the annotation.
#[test]
fn injected_pods_get_exactly_istio_inits_capture() -> Result<()> {
    let mut s = Scene::new()?;
    let mut expected = Vec::new();
    let mut pods = BTreeMap::new();
    for injector in [Injector::Meshsteer, Injector::Older] {
        for case in inject::cases() {
            let name = format!(
                "{}-{}",
                case.name,
                if injector == Injector::Meshsteer {
                    "t"
                } else {
                    "a"
                }
            );
            let outcome = match (&case.istio_init, case.name) {
                (None, _) => Outcome::LeftAlone,
                (Some(_), "proxyconfig-tproxy") => Outcome::Error("TPROXY"),
                // Mesh config is not on the pod: an older pod gets the default ports (the
                // template is what fixes this).
                (Some(_), "mesh-ports") if injector == Injector::Older => {
                    Outcome::Ready(Capture::from_args(INJECTOR_DEFAULT_ARGS)?)
                }
                (Some(init), _) => Outcome::Ready(Capture::from_istio_init(&init.args, &init.env)?),
            };
            let pod = case.injected_pod(injector)?;
            pods.insert(name.clone(), injected(&mut s, &name, pod)?);
            expected.push((name, injector, outcome));
        }
    }
    // A pod of Istio's Helm `gateway` chart: its own template, no istio-init, no meshsteer.
    let gateway = json!({
        "metadata": {
            "labels": {"sidecar.istio.io/inject": "true", "istio": "ingressgateway"},
            "annotations": {"inject.istio.io/templates": "gateway", "sidecar.istio.io/status": "{}"},
        },
        "spec": {"containers": [{"name": "istio-proxy", "image": "proxyv2",
                                 "args": ["proxy", "router"]}]},
    });
    pods.insert("gateway".into(), injected(&mut s, "gateway", gateway)?);
    // Its own `inject.istio.io/templates: sidecar`: Istio's istio-init stays, with its rules.
    let own = json!({
        "metadata": {"annotations": {"inject.istio.io/templates": "sidecar", "sidecar.istio.io/status": "{}"}},
        "spec": {
            "initContainers": [{"name": "istio-init", "image": "proxyv2",
                                "args": ["istio-iptables", "-p", "15001"]}],
            "containers": [{"name": "app", "image": "app"}, {"name": "istio-proxy", "image": "proxyv2"}],
        },
    });
    pods.insert(
        "own-templates".into(),
        injected(&mut s, "own-templates", own)?,
    );

    let (mut ready, mut refused) = (0, 0);
    for (name, injector, outcome) in &expected {
        let status_name = s.status_name(name);
        match outcome {
            Outcome::Ready(capture) => {
                ready += 1;
                let from = match injector {
                    Injector::Meshsteer => "template",
                    Injector::Older => "annotations",
                };
                s.agent.wait_pod(&status_name, |p| p["state"] == "ready")?;
                let p = s.agent.pod_status(&status_name).context("listed")?;
                assert_eq!(p["capture"], serde_json::to_value(capture)?, "{name}");
                assert_eq!(p["options"]["from"], from, "{name}");
                // No CNI plugin here: found running, and said so.
                assert_eq!(p["enrolledBy"], "watch", "{name}");
            }
            Outcome::Error(what) => {
                s.agent.wait_state(&status_name, |st| {
                    st.starts_with("error: ") && st.contains(what)
                })?;
                // Refused, it fails closed (as a pod whose istio-init failed never runs):
                // its connections fail, none goes around the proxy.
                refused += 1;
                s.agent
                    .wait_pod(&status_name, |p| p["failClosed"] == true)?;
                let v = pods[name].probe(1000, 1000, WORLD, &[])?;
                assert_eq!(v["error"], "permission denied", "{name}: {v}");
            }
            Outcome::LeftAlone => {}
        }
    }
    // Every listed pod has been decided: the rest were left alone.
    for (name, _, outcome) in &expected {
        if matches!(outcome, Outcome::LeftAlone) {
            assert_eq!(s.agent.state(&s.status_name(name)), None, "{name}");
            assert_eq!(
                pods[name].probe(1000, 1000, WORLD, &[])?["listener"],
                80,
                "{name}"
            );
        }
    }
    for name in ["gateway", "own-templates"] {
        assert_eq!(s.agent.state(&s.status_name(name)), None, "{name}");
        assert_eq!(
            pods[name].probe(1000, 1000, WORLD, &[])?["listener"],
            80,
            "{name}"
        );
    }
    // Refused pods are in the maps too, failing closed.
    assert_eq!(s.agent.enrolled_pods()?, ready + refused);

    // The capture in effect, by traffic: IPv4-first pods get IPv6 capture only with
    // ISTIO_DUAL_STACK; the proxy's own uid (OpenShift's) is never captured; the mesh's ports.
    const WORLD6: &str = "[fd00:200::1]:80";
    pods["default-t"].lands_on(WORLD, 15001)?;
    assert_eq!(
        pods["default-t"].probe(1000, 1000, WORLD6, &[])?["listener"],
        80
    );
    pods["dual-stack-t"].lands_on(WORLD6, 15001)?;
    // istio-init's `::6/128` on lo goes with its ip6tables rules, from the watch as from the
    // other sources.
    let passthrough = |pod: &str| -> Result<bool> {
        Ok(lo_ipv6(&pods[pod].netns)?.iter().any(|a| a == "::6/128"))
    };
    ensure!(
        passthrough("dual-stack-t")?,
        "no ::6/128 on dual-stack-t's lo"
    );
    ensure!(
        !passthrough("default-t")?,
        "::6/128 on default-t's lo, without ip6tables rules"
    );
    let openshift = &pods["openshift-uid-t"];
    assert_eq!(
        openshift.probe(1000770000, 1000770000, WORLD, &[])?["listener"],
        80
    );
    openshift.lands_on(WORLD, 15001)?;
    let mesh = pods.get_mut("mesh-ports-t").context("mesh-ports-t")?;
    let listener = start_listener_on(&mesh.place(1337, 1337), &[15002, 15007])?;
    mesh.keep(listener);
    mesh.lands_on(WORLD, 15002)?;

    // A live change of meshsteer's annotation: noted, not applied (istio-init ran once).
    let name = s.status_name("default-t");
    s.k8s.annotate(
        &s.ns,
        "default-t",
        inject::ISTIO_INIT,
        Some(r#"{"none": "changed"}"#),
    )?;
    s.agent.wait_pod(&name, |p| {
        p["options"]["pending"]
            .as_str()
            .is_some_and(|t| t.contains(inject::ISTIO_INIT))
    })?;
    assert_eq!(s.agent.state(&name).as_deref(), Some("ready"));
    pods["default-t"].lands_on(WORLD, 15001)?;
    Ok(())
}

/// A pod made through the API from `pod` (as an injector left it), backed by a simulated pod
/// of this node with its app listening and its addresses published.
fn injected(s: &mut Scene, name: &str, pod: serde_json::Value) -> Result<Pod> {
    let node = s.node.id.clone();
    let uid = s.k8s.create_pod_object(&s.ns, name, &node, pod)?;
    // Named after its UID on the node: interface names are short.
    let mut pod = s.node.add_pod_at(&uid[..8], &besteffort_cgroup(&uid))?;
    pod.start_listener()?;
    s.k8s
        .set_pod_ips(&s.ns, name, &[pod.ip4.parse()?, pod.ip6.parse()?])?;
    Ok(pod)
}
