//! The test node: a kubelet, kube-scheduler and kube-controller-manager v1.20 built from
//! Debian's source package by `tests/node-box/node-box.sh` (beside the API server of
//! `tests/k8s-box.sh`), on Debian's containerd, runc and CNI plugins. The build takes about
//! three minutes on two idle cores, once; it is cached under `$NB_DIR` (`~/.cache/node-box`).

use crate::process::run;
use anyhow::{Result, bail};
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the script builds.
const BINARIES: &[&str] = &["kubelet", "kube-scheduler", "kube-controller-manager"];

/// What the node runs on, besides the binaries it builds.
const RUNTIME: &[&str] = &["containerd", "runc", "/usr/lib/cni/bridge"];

pub fn ensure(workspace_root: &Path) -> Result<()> {
    let bin = nb_dir().join("bin");
    let built = BINARIES.iter().all(|b| bin.join(b).is_file());
    let runtime = RUNTIME
        .iter()
        .all(|p| Path::new(p).is_file() || crate::process::find_in_path(p).is_some());
    if built && runtime {
        println!("ok: test node ({})", bin.display());
        return Ok(());
    }
    let script = workspace_root.join("tests/node-box/node-box.sh");
    if !script.is_file() {
        bail!("{} is missing: the node tests need it", script.display());
    }
    // The script installs the runtime's packages and skips a build it has.
    eprintln!("building the test node (kubelet v1.20 and its controllers; minutes, once)");
    run(Command::new("bash").arg(&script).arg("build"))?;
    println!("installed test node ({})", bin.display());
    Ok(())
}

/// Where the script keeps its build, as it computes it.
fn nb_dir() -> PathBuf {
    match env::var_os("NB_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/node-box"),
    }
}
