//! `cargo xtask`: meshsteer's developer tasks (toolchain setup, eBPF build, lint, tests).

mod apt;
mod elf;
mod k8s_box;
mod process;
mod setup;

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};
use process::{ensure_root_or_reexec, find_in_path, is_root, run};
use std::env;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// The agent's package, which is also the name of its binary.
const AGENT: &str = "meshsteer";
/// What `cargo xtask test` runs (the eBPF crate only builds for the BPF target).
const TEST_PACKAGES: &[&str] = &[
    "meshsteer-common",
    "meshsteer",
    "meshsteer-build",
    "xtask",
    "meshsteer-tests",
];

#[derive(Parser)]
#[command(name = "cargo xtask", about = "meshsteer developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the nightly toolchain, rust-src and bpf-linker (idempotent).
    Setup {
        /// Also install what the privileged tests need: Debian packages, kubectl, and the test
        /// Kubernetes API server (built once, cached).
        #[arg(long)]
        test_deps: bool,
    },
    /// Build the eBPF object and print its path.
    BuildEbpf {
        #[arg(long)]
        release: bool,
    },
    /// Build the agent (its build script builds the eBPF object).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run the agent as root: `cargo xtask run [--release] -- <agent args>`.
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for the agent.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run all tests, privileged ones included, as root: `cargo xtask test [-- <cargo test args>]`.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// rustfmt check, and clippy with warnings denied on the host crates and the eBPF crate.
    Lint,
    /// meshsteer vs Istio's iptables rules vs no capture, in one run, as root; prints the
    /// table and writes JSON lines to target/bench/results.jsonl. Knobs: MESHSTEER_BENCH_REPS,
    /// MESHSTEER_BENCH_SECS, MESHSTEER_BENCH_CONNS, MESHSTEER_BENCH_CHURN.
    Bench,
}

fn main() -> ExitCode {
    match run_task(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> Result<ExitCode> {
    let root = workspace_root()?;
    match task {
        Task::Setup { test_deps } => setup::run_setup(test_deps)?,
        Task::BuildEbpf { release } => {
            setup::run_setup(false)?;
            let elf = meshsteer_build::build(&root, release).map_err(|e| anyhow!(e))?;
            println!("{}", elf.display());
        }
        Task::Build { release } => {
            setup::run_setup(false)?;
            println!("{}", build_agent(&root, release)?.display());
        }
        Task::Run { release, args } => {
            setup::run_setup(false)?;
            return Err(exec_agent(&build_agent(&root, release)?, &args));
        }
        Task::Test { args } => return test(&root, &args),
        Task::Bench => return bench(&root),
        Task::Lint => {
            setup::run_setup(false)?;
            lint(&root)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The workspace root: the parent of this crate's manifest dir (set by `cargo run` at run time,
/// else the one we were built from).
fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let root = manifest_dir
        .parent()
        .with_context(|| format!("{} has no parent", manifest_dir.display()))?;
    Ok(root.to_path_buf())
}

/// The stable cargo that runs us (`$CARGO`), in the workspace root.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

/// The host target dir, honouring `CARGO_TARGET_DIR` as cargo does.
fn host_target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Builds the agent and returns its binary's path.
fn build_agent(root: &Path, release: bool) -> Result<PathBuf> {
    let mut cmd = cargo(root);
    cmd.args(["build", "--package", AGENT]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    Ok(host_target_dir(root).join(profile).join(AGENT))
}

/// Replaces this process with the agent, through `sudo -E` unless we are root. Returns only on
/// failure.
fn exec_agent(agent: &Path, args: &[OsString]) -> anyhow::Error {
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

/// Runs every test, as root, and exits with cargo test's status.
fn test(root: &Path, extra: &[OsString]) -> Result<ExitCode> {
    ensure_root_or_reexec("`cargo xtask test` (privileged tests)")?;
    setup::run_setup(true)?;
    let agent = build_agent(root, false)?;
    let mut cmd = cargo(root);
    cmd.arg("test");
    for package in TEST_PACKAGES {
        cmd.args(["--package", package]);
    }
    cmd.args(extra).env("MESHSTEER_BIN", &agent);
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().context("could not start cargo test")?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    // Passed through line by line, and added up: cargo prints one summary per test binary
    // (the last ones are doc tests, often of nothing), so the run ends with one for all.
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

impl std::fmt::Display for TestTotals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "total: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        )
    }
}

fn bench(root: &Path) -> Result<ExitCode> {
    ensure_root_or_reexec("`cargo xtask bench` (it attaches eBPF programs and builds netns)")?;
    setup::run_setup(true)?;
    // The profile of where each mode's CPU goes.
    apt::ensure_installed(&["linux-perf"])?;
    let agent = build_agent(root, true)?;
    // The harness binaries in release too: the load generator's own pods are measured.
    let mut cmd = cargo(root);
    cmd.args([
        "build",
        "--release",
        "--package",
        "meshsteer-tests",
        "--bins",
    ]);
    run(&mut cmd)?;
    let bench = host_target_dir(root).join("release").join("mst-bench");
    let status = Command::new(&bench)
        .env("MESHSTEER_BIN", &agent)
        .status()
        .with_context(|| format!("could not start {}", bench.display()))?;
    Ok(ExitCode::from(status.code().map_or(1, |c| c as u8)))
}

fn lint(root: &Path) -> Result<()> {
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
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("lint failed: {}", failed.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_passes_agent_args_after_double_dash() {
        let cli =
            Cli::try_parse_from(["xtask", "run", "--release", "--", "--config", "x.yaml"]).unwrap();
        let Task::Run { release, args } = cli.command else {
            panic!("not run")
        };
        assert!(release);
        assert_eq!(args, ["--config", "x.yaml"]);
    }

    #[test]
    fn test_passes_cargo_args_verbatim() {
        let cli = Cli::try_parse_from(["xtask", "test", "--", "--", "--test-threads=1"]).unwrap();
        let Task::Test { args } = cli.command else {
            panic!("not test")
        };
        assert_eq!(args, ["--", "--test-threads=1"]);
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let root = workspace_root().unwrap();
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }
}
