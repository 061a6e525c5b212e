//! `cargo xtask bench`: the release agent against Istio's iptables rules and no capture, and
//! the release CNI plugin's ADD latency, run by `mst-bench` as root.

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result};

use crate::process::{ensure_root_or_reexec, run};
use crate::workspace::{cargo, host_target_dir};
use crate::{agent, apt, setup, test::TESTS_PACKAGE};

pub fn run_bench(root: &Path) -> Result<ExitCode> {
    ensure_root_or_reexec("`cargo xtask bench` (it attaches eBPF programs and builds netns)")?;
    setup::run_setup(true)?;
    // The profile of where each mode's CPU goes.
    apt::ensure_installed(&["linux-perf"])?;
    let agent = agent::build(root, true)?;
    // The CNI ADD latency is the release plugin's.
    let cni_plugin = agent::build_package(root, agent::CNI_PACKAGE, true)?;
    // The harness binaries in release too: the load generator's own pods are measured.
    let mut cmd = cargo(root);
    cmd.args(["build", "--release", "--package", TESTS_PACKAGE, "--bins"]);
    run(&mut cmd)?;
    let bench = host_target_dir(root).join("release").join("mst-bench");
    let status = Command::new(&bench)
        .env("MESHSTEER_BIN", &agent)
        .env("MESHSTEER_CNI_BIN", &cni_plugin)
        .status()
        .with_context(|| format!("could not start {}", bench.display()))?;
    Ok(ExitCode::from(status.code().map_or(1, |c| c as u8)))
}
