//! Command line. Every flag can also come from a `MESHSTEER_*` environment variable.
use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "meshsteer",
    version,
    about = "eBPF traffic capture for Istio-style sidecars, without iptables"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load and attach the datapath, then enrol the pods of --pods-dir until stopped.
    Run(RunArgs),
    /// List pods with `ready` or `error: <reason>`, and their counters.
    Status(StatusArgs),
    /// Print where a connection from a pod lands, and which rule decided.
    Explain(ExplainArgs),
    /// Detach every program and remove every pin: capture stops on this node.
    Uninstall(PinArgs),
}

#[derive(Args, Debug, Clone)]
pub struct PinArgs {
    /// Where maps and links are pinned (on a bpffs).
    #[arg(
        long,
        env = "MESHSTEER_BPFFS_DIR",
        default_value = "/sys/fs/bpf/meshsteer"
    )]
    pub bpffs_dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct StatusFileArgs {
    /// Where the running agent publishes pod states.
    #[arg(
        long,
        env = "MESHSTEER_STATUS_FILE",
        default_value = "/run/meshsteer/status.json"
    )]
    pub status_file: PathBuf,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Directory of pod specs (YAML or JSON), watched for changes.
    #[arg(
        long,
        env = "MESHSTEER_PODS_DIR",
        default_value = "/run/meshsteer/pods"
    )]
    pub pods_dir: PathBuf,
    /// cgroup v2 directory to attach at (default: the cgroup2 mount from /proc/self/mountinfo).
    #[arg(long, env = "MESHSTEER_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    #[command(flatten)]
    pub pins: PinArgs,
    #[command(flatten)]
    pub status: StatusFileArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Machine-readable output.
    #[arg(long, env = "MESHSTEER_JSON")]
    pub json: bool,
    #[command(flatten)]
    pub pins: PinArgs,
    #[command(flatten)]
    pub status: StatusFileArgs,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Pod name, as in its spec.
    #[arg(long, env = "MESHSTEER_POD")]
    pub pod: String,
    /// The socket owner's uid (outbound).
    #[arg(
        long,
        env = "MESHSTEER_UID",
        default_value_t = 0,
        required_unless_present = "inbound"
    )]
    pub uid: u32,
    /// Its primary gid (default: same as uid).
    #[arg(long, env = "MESHSTEER_GID")]
    pub gid: Option<u32>,
    /// Address the socket is bound to, if any (with --inbound: the remote peer's address).
    #[arg(long, env = "MESHSTEER_SRC")]
    pub src: Option<IpAddr>,
    /// Destination, `IP:PORT` or `[IPv6]:PORT`.
    #[arg(long, env = "MESHSTEER_DST")]
    pub dst: std::net::SocketAddr,
    #[arg(
        long,
        env = "MESHSTEER_PODS_DIR",
        default_value = "/run/meshsteer/pods"
    )]
    pub pods_dir: PathBuf,
    /// Decide an arriving connection (ISTIO_INBOUND) from --src to the pod's --dst instead.
    #[arg(long)]
    pub inbound: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, global = true, env = "MESHSTEER_LOG", default_value = "info")]
    pub log: String,
    #[arg(long, global = true, env = "MESHSTEER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
