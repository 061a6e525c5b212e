//! The test API server: kube-apiserver v1.20 built from Debian's source package by
//! `tests/k8s-box.sh` (`K8S_BOX` names another copy), plus
//! `kubectl` for the tests that check the deployment's manifests. The build takes minutes once
//! and is cached under `$BOX_DIR` (`~/.cache/k8s-box`); later runs only check for it.

use crate::apt;
use crate::process::{find_in_path, run};
use anyhow::{Result, bail};
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the box needs to build (Go, the vendored reflect2 fix) and to run (etcd, openssl, curl).
const PACKAGES: &[&str] = &[
    "golang-1.19-go",
    "golang-github-modern-go-reflect2-dev",
    "etcd-server",
    "etcd-client",
    "rsync",
    "openssl",
    "curl",
];

/// Debian's kubectl, matching the box's API server; any kubectl already on PATH will do.
const KUBECTL_PACKAGE: &str = "kubernetes-client";

pub fn ensure(workspace_root: &Path) -> Result<()> {
    match find_in_path("kubectl") {
        Some(path) => println!("ok: kubectl ({})", path.display()),
        None => apt::ensure_installed(&[KUBECTL_PACKAGE])?,
    }
    apt::ensure_installed(PACKAGES)?;
    let built = box_dir().join("bin/kube-apiserver");
    if built.is_file() {
        println!("ok: test API server ({})", built.display());
        return Ok(());
    }
    let script = script(workspace_root);
    if !script.is_file() {
        bail!(
            "{} is missing: the Kubernetes tests need it (set K8S_BOX to its path)",
            script.display()
        );
    }
    eprintln!("building the test API server (kube-apiserver v1.20; several minutes, once)");
    run(Command::new("bash").arg(&script).arg("build"))?;
    println!("installed test API server ({})", built.display());
    Ok(())
}

fn script(workspace_root: &Path) -> PathBuf {
    env::var_os("K8S_BOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root.join("tests/k8s-box.sh"))
}

/// Where the script keeps its build, as it computes it.
fn box_dir() -> PathBuf {
    match env::var_os("BOX_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/k8s-box"),
    }
}
