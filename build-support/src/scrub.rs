//! The nested nightly cargo's environment: what of the outer cargo's must not reach it.

use std::process::Command;

/// What an outer cargo (running us through `cargo run`, or as a build script) leaves in the
/// environment that would point the nested nightly cargo at the wrong compiler, flags, target or
/// output directory.
pub const SCRUBBED_ENV: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_LINKER",
    "RUSTDOC",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "RUSTUP_TOOLCHAIN",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_RUSTC",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTDOC",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_RUSTDOCFLAGS",
    // The outer jobserver's descriptors are not ours to use.
    "CARGO_MAKEFLAGS",
    // Set by `cargo clippy` for its driver; meaningless to (and wrong for) a nested build.
    "CLIPPY_ARGS",
    // Inputs of the outer build script that nested build scripts must not see.
    "TARGET",
    "HOST",
    "OUT_DIR",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
];

/// Prefixes of the outer build script's cfg/feature variables, scrubbed for the same reason.
pub const SCRUBBED_ENV_PREFIXES: &[&str] = &["CARGO_CFG_", "CARGO_FEATURE_"];

/// Whether the nested build must not inherit the environment variable `name`.
pub fn should_scrub(name: &str) -> bool {
    SCRUBBED_ENV.contains(&name) || SCRUBBED_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Removes from `cmd`'s environment everything [`should_scrub`] names.
pub fn scrub_env(cmd: &mut Command) {
    for name in SCRUBBED_ENV {
        cmd.env_remove(name);
    }
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(should_scrub) {
            cmd.env_remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_what_breaks_a_nested_build() {
        for name in [
            "RUSTC",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTUP_TOOLCHAIN",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "CARGO_MAKEFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
            "RUSTDOC",
            "CARGO_CFG_TARGET_ARCH",
            "CARGO_FEATURE_STD",
        ] {
            assert!(should_scrub(name), "{name}");
        }
    }

    #[test]
    fn keeps_what_a_nested_build_needs() {
        for name in [
            "PATH",
            "HOME",
            "CARGO_HOME",
            "RUSTUP_HOME",
            "CARGO",
            "CARGO_TERM_COLOR",
        ] {
            assert!(!should_scrub(name), "{name}");
        }
    }
}
