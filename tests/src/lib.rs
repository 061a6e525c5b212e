//! Harness for meshsteer's privileged integration tests.
//!
//! A [`Node`] is a simulated Kubernetes node: its own network namespace with a bridge (the
//! "node" side of every pod's veth) and a test-only cgroup subtree under the cgroup v2 mount.
//! A [`Pod`] gets its own network namespace, a veth onto the bridge, IPv4 and IPv6 addresses
//! and a pod-level cgroup with a container cgroup below it. Processes are spawned inside both
//! (their pid is written to `cgroup.procs` before exec). Every name carries the test process's
//! pid and a counter, so tests run in parallel; everything is torn down on drop, including
//! when a test panics. No namespace made here has a route to the host's networks: traffic
//! only ever goes to loopback or to addresses inside these namespaces.
//!
//! [`Testbed`] is the usual start: a node, the agent on it, and pods enrolled the usual ways.
//!
//! All the tests are one binary (`tests/tests/integration`, one module per area); [`area`]
//! keeps each area's tests from running beside another area's, as when they were separate
//! binaries.
//!
//! [`kube::cluster`] is a real Kubernetes API server on loopback, shared by the tests of the
//! binary, for the agent's pod discovery.
pub mod accel;
pub mod agent;
pub mod apps;
pub mod area;
pub mod cmd;
pub mod cni;
pub mod cni_scene;
pub mod dns;
pub mod inject;
pub mod istio_rules;
pub mod kube;
pub mod load;
pub mod matrix;
pub mod node_box;
pub mod profile;
pub mod resolver;
pub mod testbed;
pub mod topology;

pub use agent::Agent;
pub use testbed::{Pair, Testbed, World};
pub use topology::{Node, Pod};

/// Fails loudly (never skips) when the tests cannot do what they exist for.
pub fn require_root() {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(
        uid, 0,
        "meshsteer's integration tests attach eBPF programs and need root: run `cargo xtask test`"
    );
}
