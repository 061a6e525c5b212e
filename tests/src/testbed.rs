//! What most tests start from: a node with the agent running on it, and pods enrolled the
//! usual ways.
use anyhow::Result;
use meshsteer::inspect::{Capture, INJECTOR_DEFAULT_ARGS};

use crate::{Agent, Node, Pod, istio_rules};

/// Whether the node's "world" (the probe listener on every probe port of 10.200.0.1 and
/// friends, see [`Node::start_world`]) runs: outbound tests connect there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    Listening,
    Absent,
}

/// A simulated node and the agent watching it. Field order is drop order: the agent stops
/// before its node goes. Pods made from it are locals declared after it, so they go first.
pub struct Testbed {
    pub agent: Agent,
    pub node: Node,
}

impl Testbed {
    /// The world listening, the agent with its default arguments.
    pub fn new() -> Result<Self> {
        Self::start(World::Listening, &[])
    }

    /// `agent_args` are appended to `meshsteer run`'s.
    pub fn start(world: World, agent_args: &[&str]) -> Result<Self> {
        let mut node = Node::new()?;
        if world == World::Listening {
            node.start_world()?;
        }
        let agent = Agent::start_with(&node, agent_args)?;
        Ok(Self { agent, node })
    }

    /// A pod whose "proxy" (uid 1337) listens on every probe port, enrolled with the
    /// injector's default arguments.
    pub fn enrolled_pod(&mut self, name: &str) -> Result<Pod> {
        let mut pod = self.node.add_pod(name)?;
        pod.start_listener()?;
        self.agent.enrol(&pod, INJECTOR_DEFAULT_ARGS)?;
        Ok(pod)
    }

    /// Two identical pods for a differential test: `ipt` with Istio's own nat rules for
    /// `args` (our generator of istio-iptables' output), `ebpf` enrolled with meshsteer.
    /// Neither listens yet.
    pub fn differential_pair(&mut self, args: &str) -> Result<Pair> {
        let ipt = self.node.add_pod("ipt")?;
        let ebpf = self.node.add_pod("ebpf")?;
        istio_rules::install(&ipt.netns, &Capture::from_args(args)?)?;
        self.agent.enrol(&ebpf, args)?;
        Ok(Pair { ipt, ebpf })
    }

    /// [`Testbed::differential_pair`] for user-namespaced pods (`hostUsers: false`), both
    /// mapping their ids to the host's `ids_base..`.
    pub fn differential_userns_pair(&mut self, args: &str, ids_base: u32) -> Result<Pair> {
        let ipt = self.node.add_userns_pod("ipt", ids_base)?;
        let ebpf = self.node.add_userns_pod("ebpf", ids_base)?;
        istio_rules::install_in(&ipt.netns, ipt.userns_holder, &Capture::from_args(args)?)?;
        self.agent.enrol(&ebpf, args)?;
        Ok(Pair { ipt, ebpf })
    }
}

/// The same pod twice: captured by iptables and by meshsteer.
pub struct Pair {
    pub ipt: Pod,
    pub ebpf: Pod,
}

impl Pair {
    /// Both pods' "proxies" listen on every probe port.
    pub fn start_listeners(&mut self) -> Result<()> {
        self.ipt.start_listener()?;
        self.ebpf.start_listener()
    }
}
