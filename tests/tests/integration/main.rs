//! meshsteer's privileged integration tests: one binary, one module per area. Run as root
//! through `cargo xtask test`; they fail (never skip) when they cannot do what they exist for.
//!
//! Tests of one area run in parallel with each other, never beside another area's (see
//! `meshsteer_tests::area`). The harness (simulated node and pods, the agent, the probe
//! binaries, the test API server) is the `meshsteer_tests` library.

/// Socket-level acceleration: byte-exact streams, bounded memory, teardown.
mod accel;
/// Per-pod budgets: no pod fills the maps for another; refused pods fail closed.
mod budgets;
/// A million short connections leave no state behind.
mod churn;
/// The chained CNI plugin with real CNI plugins: capture from a pod's first connect.
mod cni;
/// DNS capture (`--redirect-dns`, `--capture-all-dns`) against Istio's rules, differentially.
mod dns;
/// Real programs end to end: curl, HAProxy as the sidecar, nginx.
mod e2e;
/// Programs attach under the test's cgroup subtree and change only enrolled pods.
mod foundation;
/// Inbound capture against Istio's rules, differentially.
mod inbound;
/// Pod discovery through a real Kubernetes API server.
mod kubernetes;
/// Pod specs apply live; unsupported options are clear errors.
mod lifecycle;
/// A real node: the DaemonSet on kubelet + containerd, real pods through real sidecars.
mod node;
/// Metrics, probes, `meshsteer trace`, JSON logs.
mod observability;
/// Outbound capture against Istio's rules, differentially.
mod outbound;
/// Real resolvers (dig, glibc, our own) through DNS capture into a DNS proxy (dnsmasq).
mod resolvers;
/// Agent crash, stop and upgrade without disruption.
mod restart;
