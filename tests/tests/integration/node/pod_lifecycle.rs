//! Deleting pods frees everything they had: 50 pods (each with Istio's sidecar and its
//! annotation) created and deleted in two rounds leave the agent at its idle state. Every
//! per-pod map of the node's pins is back at its count from
//! before (read from the host, through the pins), the pin tree has the same entries, `status`
//! lists none of them and shows no error, and no pod cgroup is left behind in cgroup2 (on this
//! hybrid node the kubelet removes pod cgroups from the v1 hierarchies only; the agent removes
//! the empty cgroup2 ones).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use meshsteer::inspect::{Pins, PodMaps, cgroup2_mount};
use meshsteer_tests::node_box::NodeBox;

use super::{AppNs, agent_status, deploy_agent, node, pod, sidecar, states_in};

const NS: &str = "mesh-churn";
const ROUNDS: usize = 2;
const PER_ROUND: usize = 25;
const PINS: &str = "/sys/fs/bpf/meshsteer";

#[test]
fn fifty_pods_created_and_deleted_leave_the_agent_idle() -> Result<()> {
    let node = node()?;
    let t = Instant::now();
    let result = scenario(&node);
    if result.is_err() {
        node.dump(super::AGENT_NS);
    }
    eprintln!("node::pod_lifecycle: {:.1?}", t.elapsed());
    result
}

fn scenario(node: &NodeBox) -> Result<()> {
    let agent = deploy_agent(node)?;
    let ns = AppNs::create(node, NS)?;
    // Other tests' pods may still be going: they would leave the maps meanwhile. Idle is no
    // pod on the node but the agent's, and none in the agent's status.
    NodeBox::wait_for(
        "the agent alone on the node",
        Duration::from_secs(120),
        || {
            let namespaces = node.kc(&[
                "get",
                "pods",
                "-A",
                "-o",
                "jsonpath={.items[*].metadata.namespace}",
            ])?;
            let others = namespaces.split_whitespace().any(|n| n != super::AGENT_NS);
            let listed = agent_status(node, &agent.name)?["pods"]
                .as_array()
                .map_or(0, Vec::len);
            Ok((!others && listed == 0).then_some(()))
        },
    )?;
    let before = idle_state()?;
    let mut uids = Vec::new();
    for round in 0..ROUNDS {
        let names: Vec<String> = (0..PER_ROUND).map(|i| format!("p{round}-{i}")).collect();
        // Only the sidecar: what capture and its cleanup depend on, at half the containers.
        ns.run(names.iter().map(|n| pod(NS, n, vec![sidecar()])).collect())?;
        for n in &names {
            uids.push(node.kc(&["-n", NS, "get", "pod", n, "-o", "jsonpath={.metadata.uid}"])?);
        }
        NodeBox::wait_for(
            &format!("round {round}: every pod ready in the agent"),
            Duration::from_secs(60),
            || {
                let states = states_in(&agent_status(node, &agent.name)?, NS);
                let ready = states.iter().filter(|(_, s)| s == "ready").count();
                Ok((ready == PER_ROUND).then_some(()))
            },
        )?;
        node.kc(&[
            "-n",
            NS,
            "delete",
            "pods",
            "--all",
            "--wait=true",
            "--timeout=120s",
        ])?;
    }
    let mut last = String::new();
    NodeBox::wait_for(
        "the agent back at its idle state",
        Duration::from_secs(120),
        || {
            let status = agent_status(node, &agent.name)?;
            let errors: Vec<_> = status["pods"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["state"].as_str().is_some_and(|s| s.starts_with("error")))
                .collect();
            ensure!(errors.is_empty(), "errors in status: {errors:?}");
            let listed = states_in(&status, NS);
            let now = idle_state()?;
            let left = stale_cgroups(&uids)?;
            last = format!("status lists {listed:?}; state {now:?}; cgroups left {left:?}");
            Ok((listed.is_empty() && now == before && left.is_empty()).then_some(()))
        },
    )
    .map_err(|e| e.context(format!("before: {before:?}; last seen: {last}")))?;
    Ok(())
}

/// What the agent holds on the node, read from the host: entries of each per-pod map, and the
/// files of the pin tree.
fn idle_state() -> Result<(BTreeMap<&'static str, usize>, Vec<PathBuf>)> {
    let maps = PodMaps::from_pins(&Pins::new(Path::new(PINS)))?;
    let counts = maps.entry_counts().into_iter().collect();
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::from(PINS)];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                dirs.push(p.clone());
            }
            files.push(p);
        }
    }
    files.sort();
    Ok((counts, files))
}

/// Pod cgroups of `uids` still in the cgroup2 tree (any QoS class of the cgroupfs layout).
fn stale_cgroups(uids: &[String]) -> Result<Vec<PathBuf>> {
    let root = cgroup2_mount()?;
    Ok(uids
        .iter()
        .flat_map(|uid| {
            ["kubepods", "kubepods/burstable", "kubepods/besteffort"]
                .map(|q| root.join(q).join(format!("pod{uid}")))
        })
        .filter(|p| p.exists())
        .collect())
}
