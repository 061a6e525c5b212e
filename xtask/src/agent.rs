//! Building the agent and running it as root (`cargo xtask build`, `run`).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, anyhow};

use crate::process::{find_in_path, is_root, run};
use crate::workspace::{cargo, host_target_dir};

/// The agent's package, which is also the name of its binary.
const PACKAGE: &str = "meshsteer";

/// Builds the agent and returns its binary's path.
pub fn build(root: &Path, release: bool) -> Result<PathBuf> {
    build_package(root, PACKAGE, release)
}

/// The CNI plugin's package, whose binary has its name.
pub const CNI_PACKAGE: &str = "meshsteer-cni";

/// Builds the CNI plugin as one static executable and returns its path. It runs on the node,
/// out of the image it ships in, so it must not depend on the node's libc: glibc linked
/// statically (`crt-static`; the plugin resolves no names, so glibc's NSS is never needed).
/// `--target` keeps the flag off build scripts and off the rest of the workspace's builds.
pub fn build_cni_plugin(root: &Path, release: bool) -> Result<PathBuf> {
    let target = host_triple()?;
    let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
    flags.push_str(" -C target-feature=+crt-static");
    let mut cmd = cargo(root);
    cmd.env("RUSTFLAGS", flags.trim()).args([
        "build",
        "--package",
        CNI_PACKAGE,
        "--target",
        &target,
    ]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    Ok(host_target_dir(root)
        .join(target)
        .join(profile)
        .join(CNI_PACKAGE))
}

/// The host's target triple, as rustc names it.
fn host_triple() -> Result<String> {
    let out = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .arg("-vV")
        .output()
        .map_err(|e| anyhow!("running rustc -vV: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("rustc -vV printed no host triple"))
}

/// Builds `package`'s binary of the same name; its path.
pub fn build_package(root: &Path, package: &str, release: bool) -> Result<PathBuf> {
    let mut cmd = cargo(root);
    cmd.args(["build", "--package", package]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    Ok(host_target_dir(root).join(profile).join(package))
}

/// Replaces this process with the agent, through `sudo -E` unless we are root. Returns only on
/// failure.
pub fn exec(agent: &Path, args: &[OsString]) -> anyhow::Error {
    let mut cmd = match is_root() {
        Ok(true) => Command::new(agent),
        Ok(false) => match find_in_path("sudo") {
            Some(sudo) => {
                let mut cmd = Command::new(sudo);
                cmd.args(["-E", "--"]).arg(agent);
                cmd
            }
            None => return anyhow!("the agent needs root and sudo is not installed: run as root"),
        },
        Err(e) => return e,
    };
    cmd.args(args);
    let err = cmd.exec();
    anyhow!(err).context(format!(
        "could not exec `{}`",
        meshsteer_build::describe(&cmd)
    ))
}
