//! `meshsteer uninstall --live`, run in the agent's pod with `kubectl exec` while the agent
//! runs, removes everything of meshsteer from the node, checked from the host: no pins under
//! the bpffs, no link on a pod's cgroup (nor ever one at the node's cgroup2 root), no sk_lookup
//! link in a pod's network
//! namespace, no CNI plugin in the node's CNI directories, and a pod's request goes straight to
//! nginx again. The agent stays up, idle, until
//! the DaemonSet is deleted, and does not capture again meanwhile.
use std::{os::unix::fs::MetadataExt, path::Path, time::Instant};

use anyhow::{Result, ensure};
use meshsteer::inspect::{cgroup_id, cgroup_links, cgroup2_mount, netns_links};
use meshsteer_tests::node_box::{NodeBox, checked};

use super::{AGENT_NS, AppNs, agent_exec, client, deploy_agent, node, server};

const NS: &str = "mesh-uninstall";
const PINS: &str = "/sys/fs/bpf/meshsteer";

#[test]
fn uninstall_in_the_agent_pod_removes_everything_from_the_node() -> Result<()> {
    let node = node()?;
    let t = Instant::now();
    let result = scenario(&node);
    if result.is_err() {
        node.dump(AGENT_NS);
    }
    eprintln!("node::uninstall: {:.1?}", t.elapsed());
    result
}

fn scenario(node: &NodeBox) -> Result<()> {
    let agent = deploy_agent(node)?;
    let ns = AppNs::create(node, NS)?;
    ns.run(vec![server(NS, "web"), client(NS, "client")])?;
    ns.request_through_both("client", "web")?;
    let root = cgroup_id(&cgroup2_mount()?)?;
    let web_pid = node.container_pid(NS, "web", "app")?;
    let web_netns = std::fs::metadata(format!("/proc/{web_pid}/ns/net"))?.ino();
    let web_pod = cgroup_id(&pod_cgroup_of(web_pid)?)?;
    ensure!(
        !cgroup_links(web_pod)?.is_empty(),
        "no link on web's pod cgroup"
    );
    let links = cgroup_links(root)?;
    ensure!(links.is_empty(), "links at the cgroup2 root: {links:?}");
    ensure!(
        !netns_links(web_netns)?.is_empty(),
        "no sk_lookup link in web's netns"
    );

    // The DaemonSet's install-cni put the plugin on the node.
    let (conf_dir, bin_dir) = node.cni_dirs();
    let plugin = bin_dir.join("meshsteer-cni");
    let primary = conf_dir.join("10-box.conflist");
    ensure!(plugin.is_file(), "{} is not installed", plugin.display());
    ensure!(
        std::fs::read_to_string(&primary)?.contains("meshsteer-cni"),
        "no meshsteer-cni entry in {}",
        primary.display()
    );

    // Refused without --live: the agent is live.
    let refused = checked(node.kubectl().args([
        "-n",
        AGENT_NS,
        "exec",
        &agent.name,
        "-c",
        "agent",
        "--",
        "meshsteer",
        "uninstall",
    ]))
    .err()
    .map(|e| format!("{e:#}"))
    .unwrap_or_default();
    ensure!(
        refused.contains("uninstall --live"),
        "uninstall under the live agent was not refused with the way out: {refused:?}"
    );
    agent_exec(node, &agent.name, &["uninstall", "--live"])?;

    let gone = || -> Result<()> {
        ensure!(!Path::new(PINS).exists(), "{PINS} is still there");
        let links = cgroup_links(web_pod)?;
        ensure!(links.is_empty(), "links on web's pod cgroup: {links:?}");
        let links = netns_links(web_netns)?;
        ensure!(
            links.is_empty(),
            "sk_lookup links in web's netns: {links:?}"
        );
        ensure!(!plugin.exists(), "{} is still there", plugin.display());
        let conflist = std::fs::read_to_string(&primary)?;
        ensure!(
            !conflist.contains("meshsteer-cni"),
            "the plugin's entry is still in {}: {conflist}",
            primary.display()
        );
        Ok(())
    };
    gone()?;
    // Capture is off: the client's request reaches nginx directly, from the client's address.
    let direct = node.kc(&[
        "-n",
        NS,
        "exec",
        "client",
        "-c",
        "app",
        "--",
        "/usr/bin/curl",
        "-sS",
        "--max-time",
        "5",
        &format!("http://{}/both", ns.ip("web")?),
    ])?;
    let client_ip = ns.ip("client")?;
    ensure!(
        direct.trim() == format!("out= in= peer={client_ip}"),
        "after uninstall: {direct:?}"
    );
    // The agent stays Ready (probes answered, so the kubelet does not restart it into
    // capturing again), and nothing comes back while it idles or when it is deleted.
    std::thread::sleep(std::time::Duration::from_secs(2));
    ensure!(
        super::ready_agent(node)?
            .is_some_and(|p| p.uid == agent.uid && p.restarts == agent.restarts),
        "the agent did not stay up idle: {:?}",
        super::agent_pods(node)?
    );
    gone()?;
    node.kc(&[
        "-n",
        AGENT_NS,
        "delete",
        "daemonset",
        "meshsteer",
        "--wait=true",
        "--timeout=60s",
    ])?;
    // The agent exits at once; the kubelet of 1.20 takes ~45 s more to remove its pod, which
    // changes nothing on the node.
    NodeBox::wait_for(
        "the agent's container stopped",
        std::time::Duration::from_secs(60),
        || {
            let running = node
                .container_pid(AGENT_NS, &agent.name, "agent")
                .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            Ok((!running).then_some(()))
        },
    )?;
    gone()
}

/// The pod cgroup of a container's process: the parent of the container's own cgroup (as the
/// kubelet lays them out, `…/pod<uid>/<container id>`).
fn pod_cgroup_of(pid: u32) -> Result<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| anyhow::anyhow!("no cgroup v2 line in /proc/{pid}/cgroup: {text}"))?;
    let container = cgroup2_mount()?.join(rel.trim_start_matches('/'));
    container
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("{} has no parent", container.display()))
}
