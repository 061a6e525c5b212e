//! The meshsteer node agent, in layers. Each imports only from the layers below it (`cargo
//! xtask lint` checks this), and only `sys` may use `unsafe`:
//!
//! - [`cmd`]: the commands (`run`, `status`, `trace`, `explain`, `uninstall`) and their flags;
//! - [`registry`]: the per-pod state machine;
//! - [`telemetry`]: the status file, the counter catalogue, the HTTP endpoints;
//! - [`source`]: where pods come from (the pod-spec directory, the Kubernetes API server);
//! - [`bpf`]: loading, attaching, pinning, and the map writes;
//! - [`host`]: cgroups, the bpffs, /proc;
//! - [`spec`]: pure and kernel-free: istio-iptables options, pod specs, plans;
//! - [`sys`]: the syscall wrappers.
//!
//! [`inspect`] is the small facade the privileged tests and the benchmark read.
#![deny(unsafe_code)]

pub mod bpf;
pub mod cmd;
pub mod host;
pub mod inspect;
pub mod registry;
pub mod source;
pub mod spec;
pub mod sys;
pub mod telemetry;
