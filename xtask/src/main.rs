//! `cargo xtask`: meshsteer's developer tasks (toolchain setup, eBPF build, lint, tests).

mod agent;
mod apt;
mod bench;
mod elf;
mod image;
mod k8s_box;
mod layers;
mod lint;
mod node_box;
mod previous;
mod process;
mod setup;
mod test;
mod workspace;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::{Parser, Subcommand};

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
    /// Build the agent (its build script builds the eBPF object) and the static CNI plugin;
    /// print their paths, one per line.
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
    /// rustfmt check, clippy with warnings denied on the host crates and the eBPF crate, and
    /// the layering of the agent's modules (see xtask/src/layers/table.rs).
    Lint {
        /// Only the layering and import-cycle checks (no toolchain, no build).
        #[arg(long)]
        layers_only: bool,
    },
    /// meshsteer vs Istio's iptables rules vs no capture, in one run, as root; prints the
    /// table and the goals table, and writes JSON lines to target/bench/results.jsonl. Knobs:
    /// MESHSTEER_BENCH_REPS, MESHSTEER_BENCH_SECS, MESHSTEER_BENCH_CONNS, MESHSTEER_BENCH_CHURN,
    /// MESHSTEER_BENCH_SANDBOXES, MESHSTEER_BENCH_PODS, MESHSTEER_BENCH_STEPS (a comma list of
    /// steps to run, see docs/benchmarks.md).
    Bench,
    /// Build (once, cached) the previous pin layout's release agent for the upgrade test, from
    /// the last commit with that layout, and print its path (see xtask/src/previous.rs).
    PreviousAgent,
    /// OCI image archives for the real-node test, in target/images (see xtask/src/image.rs):
    /// the agent (release build), nginx, curl and the `istio-proxy` HAProxy sidecar.
    Image,
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
    let root = workspace::root()?;
    match task {
        Task::Setup { test_deps } => setup::run_setup(test_deps)?,
        Task::BuildEbpf { release } => {
            setup::run_setup(false)?;
            let elf = meshsteer_build::build(&root, release).map_err(|e| anyhow!(e))?;
            println!("{}", elf.display());
        }
        Task::Build { release } => {
            setup::run_setup(false)?;
            println!("{}", agent::build(&root, release)?.display());
            println!("{}", agent::build_cni_plugin(&root, release)?.display());
        }
        Task::Run { release, args } => {
            setup::run_setup(false)?;
            return Err(agent::exec(&agent::build(&root, release)?, &args));
        }
        Task::Test { args } => return test::run_tests(&root, &args),
        Task::Bench => return bench::run_bench(&root),
        Task::PreviousAgent => println!("{}", previous::build(&root)?.display()),
        Task::Image => {
            setup::run_setup(false)?;
            println!("{}", image::build_all(&root)?.display());
        }
        Task::Lint { layers_only: true } => layers::check(&root)?,
        Task::Lint { layers_only: false } => lint::run_lint(&root)?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
}
