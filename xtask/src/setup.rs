//! `cargo xtask setup`: the idempotent bootstrap of everything the eBPF build (and, with
//! `--test-deps`, the privileged tests) need. Every check is a cheap probe so a second run is
//! near-instant.

use crate::process::{cargo_home, find_in_path, probe, run};
use crate::{apt, elf, image, k8s_box, node_box};
use anyhow::{Context, Result, bail};
use meshsteer_build::{self as ebpf_build, TOOLCHAIN};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The bpf-linker release we build against nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Any patch release of this series will do.
const BPF_LINKER_SERIES: &str = "0.13";

pub fn run_setup(test_deps: bool) -> Result<()> {
    let sysroot = ensure_nightly()?;
    ensure_component(
        &sysroot,
        "rust-src",
        "lib/rustlib/src/rust/library/core/Cargo.toml",
    )?;
    // The eBPF crate is linted with nightly clippy.
    ensure_component(&sysroot, "clippy", "bin/cargo-clippy")?;
    ensure_bpf_linker(&sysroot)?;
    if test_deps {
        apt::ensure_installed(apt::TEST_PACKAGES)?;
        apt::ensure_installed(image::PACKAGES)?;
        let root = crate::workspace::root()?;
        k8s_box::ensure(&root)?;
        node_box::ensure(&root)?;
    }
    Ok(())
}

fn rustup() -> Command {
    let mut cmd = Command::new("rustup");
    // An outer `cargo run` pins its own toolchain here; we always name ours.
    cmd.env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

fn nightly_sysroot() -> Option<PathBuf> {
    let out = probe(rustup().args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"]))?;
    Some(PathBuf::from(out.trim()))
}

/// Makes sure the nightly toolchain exists and returns its sysroot.
fn ensure_nightly() -> Result<PathBuf> {
    if find_in_path("rustup").is_none() {
        bail!("rustup is not on PATH: meshsteer needs it to manage the {TOOLCHAIN} toolchain");
    }
    if let Some(sysroot) = nightly_sysroot() {
        println!("ok: {TOOLCHAIN} toolchain ({})", sysroot.display());
        return Ok(sysroot);
    }
    run(rustup()
        .args(["toolchain", "install", TOOLCHAIN, "--profile", "minimal"])
        .args(["--component", "rust-src", "--component", "clippy"]))?;
    let sysroot = nightly_sysroot()
        .with_context(|| format!("the {TOOLCHAIN} toolchain is still unusable after installing"))?;
    println!("installed {TOOLCHAIN} toolchain ({})", sysroot.display());
    Ok(sysroot)
}

/// Makes sure a rustup component is installed, judged by a file it ships (faster than asking
/// rustup).
fn ensure_component(sysroot: &Path, component: &str, marker: &str) -> Result<()> {
    if sysroot.join(marker).exists() {
        println!("ok: {TOOLCHAIN} component {component}");
        return Ok(());
    }
    run(rustup().args(["component", "add", component, "--toolchain", TOOLCHAIN]))?;
    println!("installed {TOOLCHAIN} component {component}");
    Ok(())
}

fn ensure_bpf_linker(sysroot: &Path) -> Result<()> {
    match check_bpf_linker() {
        Ok(found) => {
            println!("ok: {found}");
            return Ok(());
        }
        Err(problem) => eprintln!("bpf-linker: {problem}; (re)installing it (takes a few minutes)"),
    }
    let lib = install_bpf_linker(sysroot)?;
    let found = check_bpf_linker().map_err(anyhow::Error::msg).context(
        "bpf-linker is still unusable after installing it (is $CARGO_HOME/bin on PATH?)",
    )?;
    println!("installed {found} (LLVM: {})", lib.display());
    Ok(())
}

/// Describes a usable bpf-linker on PATH, or says what is wrong with it.
fn check_bpf_linker() -> Result<String, String> {
    let path = find_in_path("bpf-linker").ok_or("not found on PATH")?;
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|e| format!("{} does not start: {e}", path.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} does not run: {}",
            path.display(),
            stderr.trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let version = parse_version(&stdout, "bpf-linker")
        .ok_or_else(|| format!("unexpected `bpf-linker --version` output {stdout:?}"))?;
    if !in_series(version, BPF_LINKER_SERIES) {
        return Err(format!(
            "{} is version {version}, not {BPF_LINKER_SERIES}",
            path.display()
        ));
    }
    // It runs now, but if it loads LLVM from a temporary directory it breaks once that is
    // cleaned: treat it as broken already.
    if let Ok(dynamic) = elf::read_dynamic(&path) {
        let temp = temp_dirs();
        if let Some(dir) = dynamic
            .runpath
            .iter()
            .find(|d| is_temporary(Path::new(d), &temp))
        {
            return Err(format!(
                "{} loads LLVM from temporary directory {dir}",
                path.display()
            ));
        }
    }
    Ok(format!("bpf-linker {version} ({})", path.display()))
}

/// Builds bpf-linker against the nightly toolchain's own libLLVM (no system LLVM needed) and
/// returns that library's path.
fn install_bpf_linker(sysroot: &Path) -> Result<PathBuf> {
    let (lib, soname) = find_llvm_library(&sysroot.join("lib"))?;
    let major = llvm_major(&soname)
        .with_context(|| format!("no LLVM major version in library name {soname}"))?;
    // The installed binary keeps `<prefix>/lib` as its RUNPATH: the prefix must outlive /tmp.
    let prefix = cargo_home()?.join("meshsteer").join("llvm-prefix");
    make_llvm_prefix(&prefix, &lib, &soname)?;
    let mut cmd = rustup();
    cmd.args([
        "run",
        TOOLCHAIN,
        "cargo",
        "install",
        "bpf-linker",
        "--force",
    ])
    .args(["--version", BPF_LINKER_VERSION, "--no-default-features"])
    .arg("--features")
    .arg(format!("llvm-{major}"))
    .env("LLVM_PREFIX", &prefix);
    ebpf_build::scrub_env(&mut cmd);
    run(&mut cmd)?;
    Ok(lib)
}

/// The toolchain's libLLVM and its SONAME (what bpf-linker will record as NEEDED).
fn find_llvm_library(lib_dir: &Path) -> Result<(PathBuf, String)> {
    let names: Vec<String> = fs::read_dir(lib_dir)
        .with_context(|| format!("listing {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    // Some of these names are linker scripts, not libraries: the first with a SONAME wins.
    for name in llvm_library_candidates(&names) {
        let path = lib_dir.join(name);
        if let Ok(elf::Dynamic {
            soname: Some(soname),
            ..
        }) = elf::read_dynamic(&path)
        {
            return Ok((path, soname));
        }
    }
    bail!(
        "no libLLVM shared library in {} (is the {TOOLCHAIN} toolchain complete?)",
        lib_dir.display()
    )
}

/// libLLVM file names in preference order: the versioned soname file first.
fn llvm_library_candidates(names: &[String]) -> Vec<&str> {
    let mut candidates: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("libLLVM") && n.contains(".so"))
        .collect();
    candidates.sort_by_key(|n| (!n.starts_with("libLLVM.so."), *n));
    candidates
}

/// The LLVM major version in a library name: `libLLVM.so.22.1-rust-…` or `libLLVM-22-rust-….so`.
fn llvm_major(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("libLLVM")?;
    let rest = rest
        .strip_prefix(".so.")
        .or_else(|| rest.strip_prefix('-'))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// An LLVM "install prefix" for llvm-sys: an `llvm-config` it only needs to find, and `lib/`
/// pointing at the toolchain's libLLVM under both the link name and the soname.
fn make_llvm_prefix(prefix: &Path, lib: &Path, soname: &str) -> Result<()> {
    let (bin_dir, lib_dir) = (prefix.join("bin"), prefix.join("lib"));
    for dir in [&bin_dir, &lib_dir] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let llvm_config = bin_dir.join("llvm-config");
    fs::write(&llvm_config, "#!/bin/sh\nexit 0\n")
        .with_context(|| format!("writing {}", llvm_config.display()))?;
    fs::set_permissions(&llvm_config, fs::Permissions::from_mode(0o755))?;
    // Links left by an older nightly would be dead: start afresh.
    for entry in fs::read_dir(&lib_dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("libLLVM") {
            fs::remove_file(entry.path()).or_else(|e| {
                if e.kind() == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
        }
    }
    for name in ["libLLVM.so", soname] {
        let link = lib_dir.join(name);
        symlink(lib, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

/// The version in a `<program> <version>` line.
fn parse_version<'a>(output: &'a str, program: &str) -> Option<&'a str> {
    let rest = output.lines().next()?.trim().strip_prefix(program)?;
    rest.split_whitespace().next()
}

/// Whether `version` is `series` itself or one of its releases (`0.13` matches `0.13.2`).
fn in_series(version: &str, series: &str) -> bool {
    version
        .strip_prefix(series)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

fn temp_dirs() -> Vec<PathBuf> {
    vec![
        PathBuf::from("/tmp"),
        PathBuf::from("/var/tmp"),
        std::env::temp_dir(),
    ]
}

fn is_temporary(dir: &Path, temp_dirs: &[PathBuf]) -> bool {
    temp_dirs.iter().any(|t| dir.starts_with(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bpf_linker_version() {
        assert_eq!(
            parse_version("bpf-linker 0.13.0\n", "bpf-linker"),
            Some("0.13.0")
        );
        assert_eq!(parse_version("something else 1.0", "bpf-linker"), None);
        assert_eq!(parse_version("", "bpf-linker"), None);
    }

    #[test]
    fn version_series() {
        assert!(in_series("0.13.0", "0.13"));
        assert!(in_series("0.13", "0.13"));
        assert!(!in_series("0.130.1", "0.13"));
        assert!(!in_series("0.12.9", "0.13"));
    }

    #[test]
    fn llvm_major_from_library_names() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM-22-rust-1.97.0-nightly.so"), Some(22));
        assert_eq!(llvm_major("libLLVM.so"), None);
        assert_eq!(llvm_major("librustc_driver-b5a965480ee51f9a.so"), None);
    }

    #[test]
    fn prefers_the_soname_file() {
        let names = [
            "librustc_driver-b5a965480ee51f9a.so",
            "libLLVM-22-rust-1.97.0-nightly.so",
            "rustlib",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
        ]
        .map(String::from);
        assert_eq!(
            llvm_library_candidates(&names),
            [
                "libLLVM.so.22.1-rust-1.97.0-nightly",
                "libLLVM-22-rust-1.97.0-nightly.so"
            ]
        );
    }

    #[test]
    fn temporary_dirs() {
        let temp = [PathBuf::from("/tmp"), PathBuf::from("/var/tmp")];
        assert!(is_temporary(Path::new("/tmp/boot/llvm/lib"), &temp));
        assert!(is_temporary(Path::new("/var/tmp/x"), &temp));
        assert!(!is_temporary(
            Path::new("/root/.cargo/meshsteer/llvm-prefix/lib"),
            &temp
        ));
        assert!(!is_temporary(Path::new("/tmpfoo/lib"), &temp));
        assert!(!is_temporary(Path::new("$ORIGIN/../lib"), &temp));
    }

    #[test]
    fn llvm_prefix_layout() {
        let dir = std::env::temp_dir().join(format!("xtask-prefix-test-{}", std::process::id()));
        let lib = dir.join("libLLVM.so.22.1-rust-x");
        fs::create_dir_all(&dir).unwrap();
        fs::write(&lib, b"").unwrap();
        let prefix = dir.join("prefix");
        fs::create_dir_all(prefix.join("lib")).unwrap();
        symlink("/nonexistent", prefix.join("lib/libLLVM.so.21.1-rust-old")).unwrap();
        for _ in 0..2 {
            make_llvm_prefix(&prefix, &lib, "libLLVM.so.22.1-rust-x").unwrap();
        }
        assert_eq!(fs::read_link(prefix.join("lib/libLLVM.so")).unwrap(), lib);
        assert_eq!(
            fs::read_link(prefix.join("lib/libLLVM.so.22.1-rust-x")).unwrap(),
            lib
        );
        assert!(fs::symlink_metadata(prefix.join("lib/libLLVM.so.21.1-rust-old")).is_err());
        let mode = fs::metadata(prefix.join("bin/llvm-config"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        fs::remove_dir_all(&dir).unwrap();
    }
}
