//! The single implementation of the eBPF build.
//!
//! Used by the agent's build script (a build-dependency, which embeds the object) and by
//! `cargo xtask build-ebpf` / `lint`. It stays std-only: whatever it depends on is built before
//! the agent on every build.

mod describe;
mod scrub;

pub use describe::describe;
pub use scrub::{SCRUBBED_ENV, SCRUBBED_ENV_PREFIXES, scrub_env, should_scrub};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The rustup toolchain the eBPF crate needs (`-Z build-std`, the BPF target).
pub const TOOLCHAIN: &str = "nightly";
/// The eBPF crate's package name.
pub const PACKAGE: &str = "meshsteer-ebpf";
/// The eBPF crate's bin target, i.e. the file name of the BPF ELF object.
pub const BIN: &str = "meshsteer";
/// The BPF target triple (little-endian, as on every host we deploy to).
pub const TARGET: &str = "bpfel-unknown-none";

/// Rust flags for the BPF object: bpf-linker needs debug info to emit the BTF that CO-RE and
/// readable verifier messages rely on.
pub const RUSTFLAGS: &[&str] = &["-C", "debuginfo=2", "-C", "link-arg=--btf"];

/// An unoptimised BPF object fails the kernel verifier (stack use, unbounded loops, panic
/// paths), so even the dev-profile object is optimised like the release one (one codegen unit:
/// inlining, and so stack use, must not depend on the profile) and has no runtime checks.
pub const DEV_PROFILE_CONFIG: &[&str] = &[
    "profile.dev.opt-level=3",
    "profile.dev.debug-assertions=false",
    "profile.dev.overflow-checks=false",
    "profile.dev.codegen-units=1",
    "profile.dev.incremental=false",
];

/// [`RUSTFLAGS`] in the `CARGO_ENCODED_RUSTFLAGS` form (0x1f-separated, so no quoting issues).
pub fn encoded_rustflags() -> String {
    RUSTFLAGS.join("\x1f")
}

/// The eBPF build's own target dir: separate from the host one so the nightly and stable builds
/// never fight over fingerprints or locks.
pub fn target_dir(workspace_root: &Path) -> PathBuf {
    workspace_root.join("target").join("ebpf")
}

/// Where `build` leaves the BPF ELF object.
pub fn elf_path(workspace_root: &Path, release: bool) -> PathBuf {
    let profile = if release { "release" } else { "debug" };
    target_dir(workspace_root)
        .join(TARGET)
        .join(profile)
        .join(BIN)
}

/// `rustup run nightly cargo <subcommand>` for the eBPF crate and target, run in
/// `workspace_root` with a scrubbed environment and the BPF rust flags.
pub fn nightly_cargo(workspace_root: &Path, subcommand: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN, "cargo", subcommand])
        .args([
            "--package",
            PACKAGE,
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(target_dir(workspace_root))
        .current_dir(workspace_root);
    scrub_env(&mut cmd);
    cmd.env("CARGO_ENCODED_RUSTFLAGS", encoded_rustflags());
    cmd
}

/// Builds the eBPF crate and returns the path of the BPF ELF object.
pub fn build(workspace_root: &Path, release: bool) -> Result<PathBuf, String> {
    let mut cmd = nightly_cargo(workspace_root, "build");
    if release {
        cmd.arg("--release");
    } else {
        for setting in DEV_PROFILE_CONFIG {
            cmd.args(["--config", setting]);
        }
    }
    // A build script's stdout is read for `cargo::` directives: keep the nested cargo off it.
    cmd.stdout(Stdio::from(std::io::stderr()));
    let status = cmd
        .status()
        .map_err(|e| failure(&cmd, &format!("could not start: {e}")))?;
    if !status.success() {
        return Err(failure(&cmd, &format!("failed ({status})")));
    }
    let elf = elf_path(workspace_root, release);
    if !elf.is_file() {
        return Err(failure(
            &cmd,
            &format!("succeeded but left no {}", elf.display()),
        ));
    }
    Ok(elf)
}

/// What the eBPF object depends on, for a build script's `cargo::rerun-if-changed`.
pub fn watched_paths(workspace_root: &Path) -> Vec<PathBuf> {
    ["ebpf", "common", "Cargo.toml", "Cargo.lock"]
        .iter()
        .map(|p| workspace_root.join(p))
        .collect()
}

fn failure(cmd: &Command, what: &str) -> String {
    format!(
        "eBPF build: `{}` {what}.\nIf the nightly toolchain, rust-src or bpf-linker is missing \
         or broken, run `cargo xtask setup`.",
        describe(cmd)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn rustflags_are_unit_separated() {
        assert_eq!(
            encoded_rustflags(),
            "-C\x1fdebuginfo=2\x1f-C\x1flink-arg=--btf"
        );
    }

    #[test]
    fn nightly_cargo_sets_only_our_flags() {
        let cmd = nightly_cargo(Path::new("/ws"), "clippy");
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&(OsStr::new("RUSTC"), None)));
        assert!(envs.contains(&(OsStr::new("RUSTUP_TOOLCHAIN"), None)));
        let flags = encoded_rustflags();
        assert!(envs.contains(&(
            OsStr::new("CARGO_ENCODED_RUSTFLAGS"),
            Some(OsStr::new(&flags))
        )));
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "meshsteer-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--target-dir",
                "/ws/target/ebpf",
            ]
        );
        assert_eq!(cmd.get_current_dir(), Some(Path::new("/ws")));
    }

    #[test]
    fn elf_lands_in_the_ebpf_target_dir() {
        let root = Path::new("/ws");
        assert_eq!(
            elf_path(root, true),
            Path::new("/ws/target/ebpf/bpfel-unknown-none/release/meshsteer")
        );
        assert_eq!(
            elf_path(root, false),
            Path::new("/ws/target/ebpf/bpfel-unknown-none/debug/meshsteer")
        );
    }

    #[test]
    fn watches_the_ebpf_inputs() {
        let paths = watched_paths(Path::new("/ws"));
        for want in ["/ws/ebpf", "/ws/common", "/ws/Cargo.toml", "/ws/Cargo.lock"] {
            assert!(paths.contains(&PathBuf::from(want)), "{want}");
        }
    }

    #[test]
    fn failure_names_the_command_and_the_fix() {
        let msg = failure(&nightly_cargo(Path::new("/ws"), "build"), "failed");
        assert!(
            msg.contains("rustup run nightly cargo build --package meshsteer-ebpf"),
            "{msg}"
        );
        assert!(msg.contains("cargo xtask setup"), "{msg}");
    }
}
