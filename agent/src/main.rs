//! The `meshsteer` binary: parse the command line, set up logging, run the command.
#![deny(unsafe_code)]

use clap::Parser;
use meshsteer::cmd::{
    self,
    args::{Cli, Command, LogFormat},
};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log.log, cli.log.log_format);
    let result = match cli.command {
        Command::Run(args) => block_on(cmd::run::run(args)),
        Command::Status(a) => cmd::status::show(&a.status.status_file, &a.pins.bpffs_dir, a.json),
        Command::Trace(a) => block_on(cmd::trace::run(a)),
        Command::Explain(a) => cmd::explain::run(&a),
        Command::Uninstall(a) => cmd::uninstall::run(&a),
        Command::MountBpffs(a) => cmd::mount_bpffs::run(&a.bpffs_dir),
        Command::InstallCni(a) => block_on(cmd::install_cni::run(a)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshsteer: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn block_on(f: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(f))
}

/// `tracing` to stderr; eBPF logs arrive through the `log` crate and are bridged in.
fn init_logging(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
