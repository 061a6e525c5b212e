//! The DaemonSet's pod reaches Ready through /readyz and captures real pods: a request from the
//! client's app goes through the client's sidecar (15001), the server's sidecar (15006) and
//! reaches nginx from 127.0.0.6. HAProxy's own counters prove each hop. This is also the proof
//! of the least-privilege manifest: `deploy/` runs the agent with capabilities, not privileged.
use anyhow::{Result, ensure};

use super::{AppNs, client, deploy_agent, node, server};

const NS: &str = "mesh-demo";
const SERVERS: [&str; 3] = ["web-0", "web-1", "web-2"];
const CLIENT: &str = "client";

#[test]
fn daemonset_captures_real_pods_through_real_sidecars() -> Result<()> {
    let node = node()?;
    let t = std::time::Instant::now();
    let result = scenario(&node);
    if result.is_err() {
        node.dump(super::AGENT_NS);
    }
    eprintln!("node::seed: {:.1?}", t.elapsed());
    result
}

fn scenario(node: &meshsteer_tests::node_box::NodeBox) -> Result<()> {
    let agent = deploy_agent(node)?;
    eprintln!("agent pod {} Ready", agent.name);
    let ns = AppNs::create(node, NS)?;
    let mut pods: Vec<_> = SERVERS.iter().map(|s| server(NS, s)).collect();
    pods.push(client(NS, CLIENT));
    ns.run(pods)?;
    for s in SERVERS {
        ns.request_through_both(CLIENT, s)?;
    }
    // HAProxy's own counters: the client's outbound listener took every request, each
    // server's inbound listener its own. The agent attached at the node's cgroup2 root, which
    // on this hybrid node is /sys/fs/cgroup/unified and which it found itself.
    let client_out = ns.sessions(CLIENT, "outbound")?;
    ensure!(
        client_out >= SERVERS.len() as u64,
        "the client's sidecar counted {client_out} outbound sessions, fewer than the {} requests",
        SERVERS.len()
    );
    for s in SERVERS {
        let inbound = ns.sessions(s, "inbound")?;
        ensure!(inbound >= 1, "{s}'s sidecar counted no inbound session");
        let outbound = ns.sessions(s, "outbound")?;
        ensure!(
            outbound == 0,
            "{s}'s sidecar counted {outbound} outbound sessions"
        );
    }
    Ok(())
}
