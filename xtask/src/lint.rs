//! `cargo xtask lint`: rustfmt, clippy with warnings denied (host crates and the eBPF crate),
//! and the agent's layering.

use std::path::Path;

use anyhow::{Result, anyhow};

use crate::process::run;
use crate::workspace::cargo;
use crate::{layers, setup};

pub fn run_lint(root: &Path) -> Result<()> {
    setup::run_setup(false)?;
    let mut fmt = cargo(root);
    fmt.args(["fmt", "--all", "--", "--check"]);
    let mut clippy = cargo(root);
    clippy.args([
        "clippy",
        "--workspace",
        "--exclude",
        meshsteer_build::PACKAGE,
        "--all-targets",
    ]);
    clippy.args(["--", "-D", "warnings"]);
    let mut ebpf_clippy = meshsteer_build::nightly_cargo(root, "clippy");
    ebpf_clippy.args(["--", "-D", "warnings"]);

    // Run every check so one pass shows all problems.
    let mut failed = Vec::new();
    for (name, mut cmd) in [
        ("rustfmt", fmt),
        ("clippy", clippy),
        ("clippy (eBPF)", ebpf_clippy),
    ] {
        eprintln!("lint: {name}");
        if let Err(e) = run(&mut cmd) {
            eprintln!("error: {e:#}");
            failed.push(name);
        }
    }
    eprintln!("lint: layers");
    if let Err(e) = layers::check(root) {
        eprintln!("error: {e:#}");
        failed.push("layers");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("lint failed: {}", failed.join(", ")))
    }
}
