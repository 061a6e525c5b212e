//! `cargo xtask test`: every test, privileged ones included, as root, ending with one total.

use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{ExitCode, Stdio};

use anyhow::{Context, Result};

use crate::process::ensure_root_or_reexec;
use crate::workspace::cargo;
use crate::{agent, image, previous, setup};

/// The privileged integration tests' package (also home of the bench's binaries).
pub const TESTS_PACKAGE: &str = "meshsteer-tests";

/// What `cargo xtask test` runs (the eBPF crate only builds for the BPF target).
const PACKAGES: &[&str] = &[
    "meshsteer-common",
    "meshsteer",
    "meshsteer-cni",
    "meshsteer-build",
    "xtask",
    TESTS_PACKAGE,
];

/// Runs every test, as root, and exits with cargo test's status. cargo test runs one test
/// binary at a time with libtest's default threads; the privileged tests are one binary whose
/// areas still never overlap (tests/src/area.rs), so no `--test-threads` is needed.
pub fn run_tests(root: &Path, extra: &[OsString]) -> Result<ExitCode> {
    ensure_root_or_reexec("`cargo xtask test` (privileged tests)")?;
    setup::run_setup(true)?;
    let agent = agent::build(root, false)?;
    let cni_plugin = agent::build_cni_plugin(root, false)?;
    // The upgrade test runs the previous pin layout's agent, then this one on its pins.
    let previous = previous::build(root)?;
    // The real-node test's images (the agent's is a release build).
    let images = image::build_all(root)?;
    let mut cmd = cargo(root);
    cmd.arg("test");
    for package in PACKAGES {
        cmd.args(["--package", package]);
    }
    cmd.args(extra)
        .env("MESHSTEER_BIN", &agent)
        .env("MESHSTEER_PREVIOUS_BIN", &previous)
        .env("MESHSTEER_CNI_BIN", &cni_plugin)
        .env("MESHSTEER_IMAGES", &images);
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().context("could not start cargo test")?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    // Passed through line by line, and added up: cargo prints one summary per test binary
    // (unit tests of each crate, the integration binary, doc tests often of nothing), so the
    // run ends with one for all.
    let mut total = TestTotals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        total.add(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("\n{total}");
    // Exit codes are 0..=255 on Unix; a signal death has none.
    Ok(ExitCode::from(status.code().map_or(1, |c| c as u8)))
}

/// The sum of cargo test's `test result:` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct TestTotals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl TestTotals {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

impl fmt::Display for TestTotals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "total: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_totals_add_up_cargo_summaries() {
        let mut t = TestTotals::default();
        t.add("test result: ok. 37 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.add("test result: FAILED. 3 passed; 1 failed; 2 ignored; 0 measured; 4 filtered out; finished in 1.00s");
        t.add("running 1 test");
        assert_eq!(
            t,
            TestTotals {
                passed: 40,
                failed: 1,
                ignored: 2
            }
        );
        assert_eq!(t.to_string(), "total: 40 passed, 1 failed, 2 skipped");
    }
}
