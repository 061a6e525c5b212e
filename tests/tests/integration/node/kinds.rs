//! Every QoS class and pod kind the kubelet makes is captured: Guaranteed, Burstable and
//! BestEffort pods (each in its own cgroup layout), a static pod (its cgroup is named after its
//! config hash, not its mirror pod's UID) and a pod with an init container. Each one's inbound
//! capture is proven end to end: a request from a client reaches its nginx through both
//! sidecars, from 127.0.0.6, and its sidecar's HAProxy counted it. Native sidecars need
//! Kubernetes 1.28: the 1.20 API server drops an init container's `restartPolicy`, checked here.
use std::{fs, time::Duration};

use anyhow::{Context, Result, ensure};
use meshsteer_tests::node_box::{NODE_NAME, NodeBox};
use serde_json::{Value, json};

use super::{AppNs, NGINX, agent_status, app, client, deploy_agent, node, server, sidecar};

const NS: &str = "mesh-kinds";
const STATIC: &str = "static-web";

#[test]
fn every_qos_class_and_pod_kind_is_captured() -> Result<()> {
    let node = node()?;
    let t = std::time::Instant::now();
    let static_manifest = node.static_pod_dir().join("meshsteer-test-static-web.json");
    let result = scenario(&node, &static_manifest);
    if result.is_err() {
        node.dump(super::AGENT_NS);
    }
    let _ = fs::remove_file(&static_manifest);
    eprintln!("node::kinds: {:.1?}", t.elapsed());
    result
}

fn scenario(node: &NodeBox, static_manifest: &std::path::Path) -> Result<()> {
    let agent = deploy_agent(node)?;
    let ns = AppNs::create(node, NS)?;
    let resources = |r: Value| {
        let mut app = app(NGINX);
        app["resources"] = r.clone();
        let mut proxy = sidecar();
        proxy["resources"] = r;
        vec![app, proxy]
    };
    let both = json!({"cpu": "50m", "memory": "64Mi"});
    let guaranteed = super::pod(
        NS,
        "guaranteed",
        resources(json!({"requests": both, "limits": both})),
    );
    let burstable = super::pod(
        NS,
        "burstable",
        resources(json!({"requests": {"cpu": "10m", "memory": "16Mi"}})),
    );
    let besteffort = server(NS, "besteffort");
    let mut with_init = server(NS, "with-init");
    with_init["spec"]["initContainers"] = json!([{
        "name": "init",
        "image": super::CURL,
        "imagePullPolicy": "Never",
        "command": ["/usr/bin/curl", "--version"],
    }]);
    ns.run(vec![
        guaranteed,
        burstable,
        besteffort,
        with_init,
        client(NS, "client"),
    ])?;

    // A static pod: the kubelet runs it from a file, and the API server only shows its mirror
    // pod. ConfigMaps are not for static pods: its configuration comes from host files.
    let mut stat = server(NS, STATIC);
    stat["spec"]["volumes"] = json!([
        {"name": "istio-proxy", "hostPath": {"path": ns.dir.0.join("proxy").to_string_lossy(), "type": "Directory"}},
        {"name": "nginx", "hostPath": {"path": ns.dir.0.join("web").to_string_lossy(), "type": "Directory"}},
    ]);
    for (sub, file) in [("proxy", "haproxy.cfg"), ("web", "nginx.conf")] {
        fs::create_dir_all(ns.dir.0.join(sub))?;
        fs::copy(ns.dir.0.join(file), ns.dir.0.join(sub).join(file))?;
    }
    fs::write(static_manifest, serde_json::to_vec_pretty(&stat)?)?;
    let mirror = format!("{STATIC}-{NODE_NAME}");
    NodeBox::wait_for(
        "the static pod's mirror pod Ready",
        Duration::from_secs(120),
        || {
            let ready = node.kc(&[
                "-n",
                NS,
                "get",
                "pod",
                &mirror,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            Ok((ready.ok().as_deref() == Some("True")).then_some(()))
        },
    )?;

    let expected = [
        ("guaranteed", "Guaranteed", "/kubepods/pod"),
        ("burstable", "Burstable", "/kubepods/burstable/pod"),
        ("besteffort", "BestEffort", "/kubepods/besteffort/pod"),
        ("with-init", "BestEffort", "/kubepods/besteffort/pod"),
        (mirror.as_str(), "BestEffort", "/kubepods/besteffort/pod"),
    ];
    for (pod, qos, _) in expected {
        let got = node.kc(&[
            "-n",
            NS,
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.status.qosClass}",
        ])?;
        ensure!(got == qos, "{pod} is {got}, not {qos}");
    }
    for (pod, _, _) in expected {
        ns.request_through_both("client", pod)?;
        let inbound = ns.sessions(pod, "inbound")?;
        ensure!(inbound >= 1, "{pod}'s sidecar counted no inbound session");
    }
    // Each in the cgroup its class gives it: the static pod's named after its config hash.
    let status = agent_status(node, &agent.name)?;
    for (pod, _, layout) in expected {
        let name = format!("{NS}/{pod}");
        let entry = status["pods"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == name.as_str()))
            .with_context(|| format!("{name} is not in the agent's status: {status}"))?;
        ensure!(entry["state"] == "ready", "{name}: {}", entry["state"]);
        // A static pod's cgroup is named after its config hash, not its mirror's uid.
        let field = if pod == mirror {
            "jsonpath={.metadata.annotations.kubernetes\\.io/config\\.mirror}"
        } else {
            "jsonpath={.metadata.uid}"
        };
        let uid = node.kc(&["-n", NS, "get", "pod", pod, "-o", field])?;
        let cgroup = entry["cgroup"].as_str().unwrap_or_default();
        ensure!(
            cgroup.ends_with(&format!("{layout}{uid}")),
            "{name}'s cgroup is {cgroup}, not …{layout}{uid}"
        );
    }

    // A native sidecar (an init container with restartPolicy Always) is a 1.28 feature: the
    // 1.20 API server drops the field, so the proxy would be an init container that never
    // ends and the pod would never start. kubectl validates against the schema and refuses
    // it; without validation the server takes the pod and loses the field.
    let mut native = super::pod(NS, "native", vec![app(NGINX)]);
    let mut proxy = sidecar();
    proxy["restartPolicy"] = json!("Always");
    native["spec"]["initContainers"] = json!([proxy]);
    let file = ns.dir.0.join("native.json");
    fs::write(&file, serde_json::to_vec(&native)?)?;
    let path = super::path_str(&file);
    ensure!(
        node.kc(&["apply", "-f", path]).is_err(),
        "kubectl 1.20 validation took restartPolicy on an init container"
    );
    node.kc(&["apply", "--validate=false", "-f", path])?;
    let kept = node.kc(&[
        "-n",
        NS,
        "get",
        "pod",
        "native",
        "-o",
        "jsonpath={.spec.initContainers[0].restartPolicy}",
    ])?;
    ensure!(
        kept.is_empty(),
        "the API server kept restartPolicy: {kept:?}"
    );
    node.kc(&["-n", NS, "delete", "pod", "native", "--wait=false"])?;
    Ok(())
}
