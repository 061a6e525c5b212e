//! The meshsteer node agent, split by responsibility:
//!
//! - [`cli`]: flags and `MESHSTEER_*` variables;
//! - [`features`], [`host`]: what the kernel and host provide;
//! - [`datapath`], [`bpf_sys`]: loading, attaching and pinning the eBPF side;
//! - [`istio`], [`podspec`]: pod specs and the istio-iptables options they carry;
//! - [`podmaps`], [`pods`]: per-pod state and the map writes behind it;
//! - [`source`]: the pod-spec directory;
//! - [`status`], [`explain`]: what users ask the agent.
pub mod agent;
pub mod bpf_sys;
pub mod cli;
pub mod datapath;
pub mod explain;
pub mod features;
pub mod host;
pub mod istio;
pub mod netns;
pub mod podmaps;
pub mod pods;
pub mod podspec;
pub mod source;
pub mod status;
