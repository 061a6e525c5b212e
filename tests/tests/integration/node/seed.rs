//! A real node (tests/node-box: kubelet v1.20 on containerd, CNI bridge, no route out): the
//! DaemonSet of `deploy/` as shipped plus only the operator overlay of
//! `tests/node-box/overlay/`, on images from `cargo xtask image`. Its pod must reach Ready
//! through /readyz, and then capture real pods that carry Istio's sidecar (an `istio-proxy`
//! HAProxy as uid/gid 1337) and the injector's annotations, with no istio-init: a request from
//! the client's app goes through the client's sidecar (15001), the server's sidecar (15006) and
//! reaches nginx from 127.0.0.6. HAProxy's own counters prove each hop.
use std::{fs, path::Path, time::Duration};

use anyhow::{Context, Result, ensure};
use meshsteer_tests::{
    apps, area,
    kube::repo_root,
    node_box::{NODE_NAME, NodeBox, checked, image_archive},
};
use serde_json::json;

const AGENT_NS: &str = "meshsteer";
const AGENT_SELECTOR: &str = "app.kubernetes.io/name=meshsteer";
const APP_NS: &str = "mesh-demo";
const SERVERS: [&str; 3] = ["web-0", "web-1", "web-2"];
const CLIENT: &str = "client";
/// What Istio's injector writes on a pod it injected (a regular sidecar, no init container:
/// meshsteer replaces istio-init).
const STATUS: &str = r#"{"initContainers":null,"containers":["istio-proxy"],"volumes":["istio-envoy"],"imagePullSecrets":null,"revision":"default"}"#;
/// The answer of nginx's `/both` when the request went through both sidecars.
const THROUGH_BOTH: &str = "out=haproxy-outbound in=haproxy-inbound peer=127.0.0.6";
const IMAGES: [&str; 4] = ["meshsteer.tar", "nginx.tar", "curl.tar", "istio-proxy.tar"];

#[test]
fn daemonset_captures_real_pods_through_real_sidecars() -> Result<()> {
    let _area = area::enter();
    // Checked before the node starts: a missing image fails at once.
    let archives = IMAGES
        .iter()
        .map(|f| image_archive(f))
        .collect::<Result<Vec<_>>>()?;
    let bpffs_before = bpffs_mount();
    let node = NodeBox::start()?;
    let overlay = tempdir("overlay")?;
    let result = scenario(&node, &archives, &overlay);
    if result.is_err() {
        node.dump(AGENT_NS);
    }
    let cleanup = cleanup(&node, &overlay);
    drop(node);
    result?;
    cleanup?;
    ensure!(
        !Path::new("/sys/fs/bpf/meshsteer").exists(),
        "/sys/fs/bpf/meshsteer is still there after uninstall and stop"
    );
    // The node made /sys/fs/bpf shared while it ran; stop puts it back as it was.
    ensure!(
        bpffs_mount() == bpffs_before,
        "/sys/fs/bpf after stop: {:?}, before start: {bpffs_before:?}",
        bpffs_mount()
    );
    Ok(())
}

/// /sys/fs/bpf's mount and propagation (`shared:N` or none), from mountinfo.
fn bpffs_mount() -> Option<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(4) == Some(&"/sys/fs/bpf")).then(|| {
            let optional: Vec<&str> = f[6..].iter().take_while(|x| **x != "-").copied().collect();
            format!("{} {}", f[2], optional.join(" "))
        })
    })
}

fn scenario(node: &NodeBox, archives: &[std::path::PathBuf], overlay: &Path) -> Result<()> {
    let t = std::time::Instant::now();
    for archive in archives {
        node.import(archive)?;
    }
    eprintln!("node-box: images imported in {:.1?}", t.elapsed());

    // --- the DaemonSet, as shipped plus the overlay
    for f in ["namespace.yaml", "rbac.yaml", "daemonset.yaml"] {
        fs::copy(repo_root().join("deploy").join(f), overlay.join(f))?;
    }
    for f in ["kustomization.yaml", "daemonset-patch.yaml"] {
        fs::copy(
            repo_root().join("tests/node-box/overlay").join(f),
            overlay.join(f),
        )?;
    }
    node.kc(&["apply", "-k", path_str(overlay)])?;
    let agent_pod = NodeBox::wait_for(
        "agent pod Ready (/readyz)",
        Duration::from_secs(240),
        || {
            let out = node.kc(&[
            "-n",
            AGENT_NS,
            "get",
            "pods",
            "-l",
            AGENT_SELECTOR,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        ])?;
            Ok(out
                .lines()
                .find_map(|l| l.strip_suffix(" True").map(str::to_string)))
        },
    )?;
    eprintln!("agent pod {agent_pod} Ready");

    // --- the app: nginx ×3 and a client, each with its sidecar, as the injector leaves them
    node.kc(&["create", "namespace", APP_NS])?;
    NodeBox::wait_for(
        "the namespace's service account token",
        Duration::from_secs(60),
        || {
            let s = node.kc(&[
                "-n",
                APP_NS,
                "get",
                "sa",
                "default",
                "-o",
                "jsonpath={.secrets[0].name}",
            ])?;
            Ok((!s.trim().is_empty()).then_some(()))
        },
    )?;
    let sidecar = apps::haproxy_config(
        "/tmp",
        "http",
        &format!(
            "{}\n{}",
            apps::haproxy_outbound_http(15001),
            apps::haproxy_inbound_http(15006)
        ),
    );
    fs::write(overlay.join("haproxy.cfg"), sidecar)?;
    fs::write(overlay.join("nginx.conf"), apps::nginx_config("/tmp")?)?;
    let file = |name: &str| format!("--from-file={name}={}", overlay.join(name).display());
    node.kc(&[
        "-n",
        APP_NS,
        "create",
        "configmap",
        "istio-proxy",
        &file("haproxy.cfg"),
    ])?;
    node.kc(&[
        "-n",
        APP_NS,
        "create",
        "configmap",
        "nginx",
        &file("nginx.conf"),
    ])?;
    let mut pods = vec![];
    for name in SERVERS {
        pods.push(pod(
            name,
            "docker.io/meshsteer-test/nginx:1",
            Some(("nginx", "/etc/meshsteer-test")),
        ));
    }
    pods.push(pod(CLIENT, "docker.io/meshsteer-test/curl:1", None));
    let list = json!({"apiVersion": "v1", "kind": "List", "items": pods});
    let manifest = overlay.join("pods.json");
    fs::write(&manifest, serde_json::to_vec_pretty(&list)?)?;
    node.kc(&["apply", "-f", path_str(&manifest)])?;
    node.kc(&[
        "-n",
        APP_NS,
        "wait",
        "--for=condition=Ready",
        "pod",
        "--all",
        "--timeout=180s",
    ])
    .context("the app's pods did not become Ready")?;

    // --- each server, from the client's app, through both sidecars
    for server in SERVERS {
        let ip = node.kc(&[
            "-n",
            APP_NS,
            "get",
            "pod",
            server,
            "-o",
            "jsonpath={.status.podIP}",
        ])?;
        let url = format!("http://{}/both", ip.trim());
        // Pods created before the agent enrolled them are not captured yet (the start-up
        // window): new connections are, once it has.
        let body = NodeBox::wait_for(
            &format!("a request to {server} through both sidecars"),
            Duration::from_secs(90),
            || {
                let out = checked(node.kubectl().args([
                    "-n",
                    APP_NS,
                    "exec",
                    CLIENT,
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
                anyhow::ensure!(body == THROUGH_BOTH, "{url} answered {body:?}");
                Ok(Some(body))
            },
        )?;
        eprintln!("{server}: {body}");
    }

    // --- HAProxy's own counters: the client's outbound listener took every request, each
    //     server's inbound listener its own.
    let stot = |pod: &str, frontend: &str| -> Result<u64> {
        let pid = node.container_pid(APP_NS, pod, "istio-proxy")?;
        let socket = format!("/proc/{pid}/root/tmp/stats.sock");
        apps::haproxy_sessions(Path::new(&socket), frontend, "FRONTEND")
            .with_context(|| format!("{pod}'s sidecar"))
    };
    // Ready, and capturing: the agent attached at the node's cgroup2 root, which on this
    // hybrid node is /sys/fs/cgroup/unified and which it found itself (the manifest names none).
    let client_out = stot(CLIENT, "outbound")?;
    eprintln!("client sidecar: {client_out} outbound sessions");
    ensure!(
        client_out >= SERVERS.len() as u64,
        "the client's sidecar counted {client_out} outbound sessions, fewer than the {} requests",
        SERVERS.len()
    );
    for server in SERVERS {
        let inbound = stot(server, "inbound")?;
        ensure!(
            inbound >= 1,
            "{server}'s sidecar counted no inbound session"
        );
        let outbound = stot(server, "outbound")?;
        ensure!(
            outbound == 0,
            "{server}'s sidecar counted {outbound} outbound sessions"
        );
        eprintln!("{server} sidecar: {inbound} inbound sessions, {outbound} outbound");
    }
    Ok(())
}

/// A pod as Istio's injector leaves it: the app, an `istio-proxy` sidecar as 1337, the
/// injector's status annotation, and no istio-init.
fn pod(name: &str, image: &str, config: Option<(&str, &str)>) -> serde_json::Value {
    let mut app = json!({"name": "app", "image": image, "imagePullPolicy": "Never"});
    let mut volumes = vec![json!({"name": "istio-proxy", "configMap": {"name": "istio-proxy"}})];
    if let Some((map, path)) = config {
        app["volumeMounts"] = json!([{"name": map, "mountPath": path}]);
        volumes.push(json!({"name": map, "configMap": {"name": map}}));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": APP_NS,
            "labels": {"app": name, "security.istio.io/tlsMode": "istio"},
            "annotations": {"sidecar.istio.io/status": STATUS},
        },
        "spec": {
            "nodeName": NODE_NAME,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                app,
                {
                    "name": "istio-proxy",
                    "image": "docker.io/meshsteer-test/istio-proxy:1",
                    "imagePullPolicy": "Never",
                    "securityContext": {"runAsUser": 1337, "runAsGroup": 1337},
                    "volumeMounts": [{"name": "istio-proxy", "mountPath": "/etc/istio-proxy"}],
                },
            ],
            "volumes": volumes,
        },
    })
}

/// The DaemonSet deleted (its pins stay, by design), then `meshsteer uninstall` on the node
/// removes them.
fn cleanup(node: &NodeBox, overlay: &Path) -> Result<()> {
    let _ = node.kc(&["delete", "namespace", APP_NS, "--wait=false"]);
    node.kc(&[
        "-n",
        AGENT_NS,
        "delete",
        "daemonset",
        "meshsteer",
        "--wait=true",
        "--timeout=60s",
    ])?;
    NodeBox::wait_for("the agent pod gone", Duration::from_secs(60), || {
        let out = node.kc(&[
            "-n",
            AGENT_NS,
            "get",
            "pods",
            "-l",
            AGENT_SELECTOR,
            "-o",
            "name",
        ])?;
        Ok(out.trim().is_empty().then_some(()))
    })?;
    let agent = std::env::var_os("MESHSTEER_BIN").context("MESHSTEER_BIN is not set")?;
    checked(std::process::Command::new(agent).arg("uninstall"))?;
    let _ = fs::remove_dir_all(overlay);
    Ok(())
}

fn tempdir(name: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir()
        .join("meshsteer-tests")
        .join(format!("node-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}
