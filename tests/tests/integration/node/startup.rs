//! Issue 14 on the real node: with the DaemonSet's CNI plugin in the chain, a pod's capture is
//! in effect before its first container starts. Each client's app runs curl as its very first
//! process, at once; its connection must go through its own sidecar (which may not listen yet:
//! curl retries a refused connection, as an app waiting for its proxy does), never straight to
//! the server. Without the plugin, the first connection escaped in 10 of 10 tries.
use anyhow::{Context, Result, ensure};
use meshsteer_tests::node_box::NodeBox;
use serde_json::json;

use super::{AGENT_NS, AppNs, CURL, THROUGH_BOTH, deploy_agent, node, pod, server, sidecar};

const NS: &str = "mesh-startup";
const CLIENTS: usize = 10;

#[test]
fn a_pods_first_connection_at_start_up_is_captured() -> Result<()> {
    let node = node()?;
    let t = std::time::Instant::now();
    let result = scenario(&node);
    if result.is_err() {
        node.dump(AGENT_NS);
    }
    eprintln!("node::startup: {:.1?}", t.elapsed());
    result
}

fn scenario(node: &NodeBox) -> Result<()> {
    deploy_agent(node)?;
    let ns = AppNs::create(node, NS)?;
    ns.run(vec![server(NS, "web")])?;
    let url = format!("http://{}/both", ns.ip("web")?);
    let clients: Vec<String> = (0..CLIENTS).map(|i| format!("starter-{i}")).collect();
    ns.apply(clients.iter().map(|c| starter(c, &url)).collect())?;
    for c in &clients {
        let line = NodeBox::wait_for(
            &format!("{c}'s start-up request to finish"),
            std::time::Duration::from_secs(180),
            || {
                let log = node
                    .kc(&["-n", NS, "logs", c, "-c", "app"])
                    .unwrap_or_default();
                Ok(log
                    .lines()
                    .find(|l| l.starts_with("out="))
                    .map(str::to_string))
            },
        )
        .with_context(|| format!("{c} never got an answer"))?;
        ensure!(
            line == THROUGH_BOTH,
            "{c}'s first request at start-up did not go through its sidecar: {line:?}"
        );
    }
    Ok(())
}

/// A client whose app's first process connects to `url` at once, retrying while its sidecar
/// does not listen yet, then exits (the pod is not restarted).
fn starter(name: &str, url: &str) -> serde_json::Value {
    let app = json!({
        "name": "app",
        "image": CURL,
        "imagePullPolicy": "Never",
        "command": [
            "/usr/bin/curl", "-sS", "--max-time", "5", "--retry", "60", "--retry-delay", "1",
            "--retry-all-errors", url,
        ],
    });
    let mut p = pod(NS, name, vec![app, sidecar()]);
    p["spec"]["restartPolicy"] = json!("Never");
    p
}
