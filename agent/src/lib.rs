//! The meshsteer node agent, split by responsibility:
//!
//! - [`cli`]: flags and `MESHSTEER_*` variables;
//! - [`features`], [`host`]: what the kernel and host provide;
//! - [`datapath`], [`bpf_sys`]: loading, attaching and pinning the eBPF side; [`accel`]:
//!   what socket-level acceleration needs from the kernel;
//! - [`istio`], [`podspec`]: pod specs and the istio-iptables options they carry;
//! - [`podmaps`], [`pods`]: per-pod state and the map writes behind it;
//! - [`source`], [`kube_source`]: where pods come from: the pod-spec directory, or this
//!   node's pods on the Kubernetes API server;
//! - [`status`], [`explain`], [`trace`]: what users ask the agent;
//! - [`counters`], [`metrics`]: the datapath's counters, and `/metrics`, `/healthz`, `/readyz`.
pub mod accel;
pub mod agent;
pub mod bpf_sys;
pub mod cli;
pub mod counters;
pub mod datapath;
pub mod explain;
pub mod features;
pub mod host;
pub mod inspect;
pub mod istio;
pub mod kube_source;
pub mod metrics;
pub mod netns;
pub mod podmaps;
pub mod pods;
pub mod podspec;
pub mod source;
pub mod status;
pub mod trace;
