//! Builds the eBPF object (with `meshsteer-build`, as `cargo xtask build-ebpf` does) and leaves
//! it at `$OUT_DIR/meshsteer.bpf.o` for the agent to embed.
//!
//! Packaging escape hatch: with `MESHSTEER_EBPF_OBJ=<path>` set, that prebuilt object is used
//! instead and no nightly toolchain is needed.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

const PREBUILT_ENV: &str = "MESHSTEER_EBPF_OBJ";

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let out = env_path("OUT_DIR")?.join("meshsteer.bpf.o");
    println!("cargo::rerun-if-env-changed={PREBUILT_ENV}");
    let object = match env::var_os(PREBUILT_ENV) {
        Some(prebuilt) => {
            let prebuilt = PathBuf::from(prebuilt);
            println!("cargo::rerun-if-changed={}", prebuilt.display());
            prebuilt
        }
        None => build()?,
    };
    fs::copy(&object, &out)
        .map_err(|e| format!("copying {} to {}: {e}", object.display(), out.display()))?;
    Ok(())
}

/// Builds the object for this build's profile, watching what it is built from.
fn build() -> Result<PathBuf, String> {
    let manifest_dir = env_path("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest_dir)
        .parent()
        .ok_or("the agent's manifest dir has no parent")?;
    for path in meshsteer_build::watched_paths(root) {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    let release = env::var("PROFILE").is_ok_and(|profile| profile == "release");
    meshsteer_build::build(root, release)
}

fn env_path(name: &str) -> Result<PathBuf, String> {
    env::var_os(name)
        .map(PathBuf::from)
        .ok_or_else(|| format!("{name} is not set (not run by cargo?)"))
}
