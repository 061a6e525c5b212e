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
