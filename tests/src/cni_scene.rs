//! A node whose agent serves the CNI plugin: pods on the test API server, their sandboxes set
//! up through a real chain ([`crate::cni::Chain`]), and the agent in Kubernetes mode on the
//! plugin's socket. Shared by the CNI tests and the benchmark's ADD latency.
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context, Result, ensure};

use crate::{
    Agent, Node,
    agent::path_str,
    area::{self, AreaGuard},
    cmd::Proc,
    cni::{Chain, PodId, Sandbox},
    kube::{Cluster, besteffort_cgroup, cluster},
    topology::{probe_bin, start_tagged_listener_on},
};

/// Where the app's first connect goes: the node's world.
pub const WORLD: &str = "10.200.0.1:80";

/// A test API server namespace, a node with its world, and an agent in Kubernetes mode
/// serving the CNI socket.
pub struct Scene {
    pub k8s: &'static Cluster,
    pub ns: String,
    pub socket: PathBuf,
    pub agent: Agent,
    pub node: Node,
    _area: AreaGuard,
}

/// One pod through the chain: its API object, its sandbox, and its proxy's listener.
pub struct Meshed {
    pub id: PodId,
    pub sandbox: Sandbox,
    _proxy: Proc,
}

impl Meshed {
    /// A pod set up by hand: its proxy listens already.
    pub fn of(id: PodId, sandbox: Sandbox, proxy: Proc) -> Self {
        Self {
            id,
            sandbox,
            _proxy: proxy,
        }
    }
}

impl Scene {
    pub fn new() -> Result<Self> {
        let area = area::enter();
        let k8s = cluster()?;
        let ns = k8s.namespace()?;
        let mut node = Node::new()?;
        node.start_world()?;
        let socket = std::env::temp_dir()
            .join("meshsteer-tests")
            .join(format!("{}-cni", node.id))
            .join("cni.sock");
        let kubeconfig = k8s.agent_kubeconfig();
        let agent = Agent::start_with(
            &node,
            &[
                "--kubernetes",
                "--node-name",
                &node.id,
                "--kubeconfig",
                path_str(&kubeconfig),
                "--cni-socket",
                path_str(&socket),
            ],
        )?;
        Ok(Self {
            k8s,
            ns,
            socket,
            agent,
            node,
            _area: area,
        })
    }

    /// A pod with an Istio sidecar on the API server and its sandbox on the node, before ADD;
    /// its proxy (uid 1337, in the pod's cgroup) listens on 15001. It starts before ADD only
    /// so that the first connect finds it: a listener is in no capture's way.
    pub fn pod(&self, name: &str, annotations: &BTreeMap<String, String>) -> Result<Meshed> {
        let uid = self
            .k8s
            .create_pod(&self.ns, name, &self.node.id, true, annotations)?;
        let sandbox = Sandbox::new(&self.node, name, &besteffort_cgroup(&uid))?;
        let proxy = start_tagged_listener_on(&sandbox.place(1337), &[15001], Some("proxy"))?;
        Ok(Meshed {
            id: PodId {
                namespace: self.ns.clone(),
                name: name.into(),
                uid,
            },
            sandbox,
            _proxy: proxy,
        })
    }

    /// `n` pods one after another, each as a runtime sets it up and tears it down: on the API
    /// server, its sandbox through `chain` (ADD), a process started the instant ADD returns
    /// connecting out, which must land on the proxy with its original destination, then DEL
    /// and the pod deleted. How long each ADD of meshsteer-cni took.
    pub fn sandboxes_in_a_row(&self, chain: &Chain, n: usize) -> Result<Vec<Duration>> {
        let mut took = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("p{i}");
            let m = self.pod(&name, &BTreeMap::new())?;
            let (_, t) = chain.add_timed(&m.sandbox, &m.id)?;
            took.push(t);
            let v = first_connect(&m)?;
            ensure!(captured(&v), "sandbox {i}: the first connect escaped: {v}");
            chain.del(&m.sandbox, &m.id)?;
            self.k8s.delete_pod(&self.ns, &name)?;
        }
        Ok(took)
    }
}

/// The app's first connect, at once: where it landed and what the proxy learnt.
pub fn first_connect(m: &Meshed) -> Result<serde_json::Value> {
    let out = crate::cmd::run(&m.sandbox.place(1000), probe_bin(), &["connect", WORLD])?;
    serde_json::from_slice(&out.stdout).context("probe output")
}

/// Landed on the proxy's outbound port with its original destination.
pub fn captured(v: &serde_json::Value) -> bool {
    v["listener"] == 15001 && v["orig_dst"] == WORLD
}

/// The median and 99th percentile of latencies (nearest rank; zero for none).
pub fn median_p99(took: &[Duration]) -> (Duration, Duration) {
    let mut sorted = took.to_vec();
    sorted.sort();
    let at = |q: usize| {
        sorted
            .get((sorted.len() * q / 100).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    (at(50), at(99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p99_by_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let took: Vec<Duration> = (1..=200).rev().map(ms).collect();
        assert_eq!(median_p99(&took), (ms(101), ms(199)));
        assert_eq!(median_p99(&[ms(7)]), (ms(7), ms(7)));
        assert_eq!(median_p99(&[]), (ms(0), ms(0)));
    }
}
