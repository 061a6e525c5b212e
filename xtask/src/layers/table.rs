//! The agent's layers, top to bottom: the one table the layering check reads.
//!
//! Each entry names top-level modules of `agent/src` (a directory `x/` or a file `x.rs`). A
//! file may use only modules of layers strictly below its own, and modules inside its own
//! top-level module. The first layer (the crate roots and the tests' facade) may use anything.

/// One layer: its name in messages, and the top-level modules it holds.
#[derive(Debug)]
pub struct Layer {
    pub name: &'static str,
    pub modules: &'static [&'static str],
}

/// `agent/src`, top to bottom.
pub const AGENT: &[Layer] = &[
    Layer {
        name: "main",
        modules: &["main", "lib", "inspect"],
    },
    Layer {
        name: "cmd",
        modules: &["cmd"],
    },
    Layer {
        name: "registry",
        modules: &["registry"],
    },
    Layer {
        name: "telemetry",
        modules: &["telemetry"],
    },
    Layer {
        name: "source",
        modules: &["source"],
    },
    Layer {
        name: "bpf",
        modules: &["bpf"],
    },
    Layer {
        name: "host",
        modules: &["host"],
    },
    Layer {
        name: "spec",
        modules: &["spec"],
    },
    Layer {
        name: "sys",
        modules: &["sys"],
    },
];

/// The only top-level module of `agent/src` whose files may hold `unsafe`.
pub const UNSAFE_MODULE: &str = "sys";

/// Source trees (relative to the workspace) whose files must not import each other in a cycle.
/// The agent's are checked per top-level module. The CNI plugin is a crate of its own with no
/// layers; its files only need to stay free of cycles.
pub const CYCLE_FREE_CRATES: &[&str] = &["common/src", "ebpf/src", "cni/src"];

/// The agent's source tree, relative to the workspace.
pub const AGENT_SRC: &str = "agent/src";
