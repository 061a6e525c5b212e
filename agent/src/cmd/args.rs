//! Command line. Every flag can also come from a `MESHSTEER_*` environment variable.
use std::{
    net::{AddrParseError, IpAddr, SocketAddr},
    path::PathBuf,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::spec::budget::{Budget, DEFAULT_MAX_PODS};

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
    /// Load and attach the datapath, then enrol the pods of --pods-dir (or, with --kubernetes,
    /// of this node) until stopped.
    Run(RunArgs),
    /// List pods with `ready` or `error: <reason>`, and their counters.
    Status(StatusArgs),
    /// Print where a connection from a pod lands, and which rule decided.
    Explain(ExplainArgs),
    /// Stream live capture decisions, one line each, until interrupted.
    Trace(TraceArgs),
    /// Detach every program and remove every pin: capture stops on this node.
    Uninstall(UninstallArgs),
    /// Make sure --bpffs-dir is on a bpffs, mounting one at /sys/fs/bpf if there is none, and
    /// exit: the DaemonSet's init container, whose mount propagates to the node.
    MountBpffs(PinArgs),
    /// Install the CNI plugin (`meshsteer-cni`): copy its binary into --cni-bin-dir and put its
    /// entry last in the primary conflist of --cni-conf-dir, then keep it there until stopped.
    InstallCni(InstallCniArgs),
}

/// The node's CNI directories.
#[derive(Args, Debug, Clone)]
pub struct CniDirArgs {
    /// Where the container runtime finds CNI plugin binaries.
    #[arg(long, env = "MESHSTEER_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// Where the container runtime finds network configurations (the first file, in lexical
    /// order, is the one it uses).
    #[arg(long, env = "MESHSTEER_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct InstallCniArgs {
    #[command(flatten)]
    pub dirs: CniDirArgs,
    /// The meshsteer-cni binary to copy (default: `meshsteer-cni` next to this executable).
    #[arg(long, env = "MESHSTEER_CNI_PLUGIN_BIN")]
    pub plugin_bin: Option<PathBuf>,
    /// The agent's socket (`run --cni-socket`), written into the entry as `agentSocket`.
    #[arg(
        long,
        env = "MESHSTEER_CNI_SOCKET",
        default_value = "/run/meshsteer/cni.sock"
    )]
    pub cni_socket: PathBuf,
    /// The file of --cni-conf-dir to put the entry in (default: the primary one, the first
    /// *.conflist, *.conf or *.json in lexical order, as the runtime picks it).
    #[arg(long, env = "MESHSTEER_CNI_CONFLIST")]
    pub conflist: Option<String>,
    /// Install and exit instead of keeping the entry there.
    #[arg(long)]
    pub once: bool,
    /// Remove the entry (restoring the file as it was) and the binary, and exit. A running
    /// `install-cni` on these directories is asked to do it, and stops re-adding the entry.
    #[arg(long, conflicts_with = "once")]
    pub uninstall: bool,
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
pub struct UninstallArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// If a live agent holds the pins, have it detach everything and remove them (it then
    /// idles, capturing nothing, until it is stopped) instead of refusing. For `kubectl exec`
    /// in the agent's pod; then delete the DaemonSet, or a restarted agent captures again.
    #[arg(long)]
    pub live: bool,
    /// Also remove the CNI plugin: its entry from the conflists of this directory, as
    /// `install-cni --uninstall` does (needs --cni-bin-dir).
    #[arg(long, env = "MESHSTEER_CNI_CONF_DIR", requires = "cni_bin_dir")]
    pub cni_conf_dir: Option<PathBuf>,
    /// Also remove the CNI plugin's binary from this directory (needs --cni-conf-dir).
    #[arg(long, env = "MESHSTEER_CNI_BIN_DIR", requires = "cni_conf_dir")]
    pub cni_bin_dir: Option<PathBuf>,
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
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Socket-level acceleration (sockops + sk_msg) for pods whose spec does not say
    /// (`accelerate: true|false` wins). See the README for what it changes.
    #[arg(long, env = "MESHSTEER_ACCELERATE", value_enum, default_value_t = Switch::Off)]
    pub accelerate: Switch,
    /// Pods enrolled with capture at most, and so each pod's share of the node-wide maps
    /// (ports, CIDRs, addresses: each map's capacity / this). Set it at least to the kubelet's
    /// maxPods; a pod beyond it, or over its share, is enrolled refused (fail closed).
    #[arg(long, env = "MESHSTEER_MAX_PODS", default_value_t = DEFAULT_MAX_PODS,
          value_parser = parse_max_pods)]
    pub max_pods: u32,
}

fn parse_max_pods(s: &str) -> Result<u32, String> {
    let n: u32 = s.trim().parse().map_err(|e| format!("{e}"))?;
    Budget::new(n).map(|_| n).map_err(|e| e.to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    pub fn on(self) -> bool {
        self == Self::On
    }
}

#[derive(Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Where to serve /metrics, /healthz and /readyz: `IP:PORT` (`[IPv6]:PORT`), or a bare IP
    /// for port 9090; port 0 picks one, published in the status file; "" or "off" serves
    /// nothing. Loopback by default: the DaemonSet binds the node's own IP (`status.hostIP`)
    /// so that its probes and Prometheus reach it, and nothing else does.
    #[arg(
        long = "metrics-addr",
        env = "MESHSTEER_METRICS_ADDR",
        default_value = "127.0.0.1:9090",
        value_parser = parse_metrics_addr
    )]
    pub addr: MetricsAddr,
}

/// The port of a `--metrics-addr` given as a bare IP.
pub const METRICS_PORT: u16 = 9090;

/// `--metrics-addr`: an address, or none (endpoints off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

/// A `--metrics-addr` that is neither an address nor "off".
#[derive(Debug, thiserror::Error)]
#[error("{0}: expected IP:PORT, [IPv6]:PORT, a bare IP (port 9090), \"\" or \"off\"")]
pub struct MetricsAddrError(AddrParseError);

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, MetricsAddrError> {
    match s.trim() {
        "" | "off" => Ok(MetricsAddr(None)),
        // A bare IP (the DaemonSet passes `status.hostIP`, which has no brackets for IPv6).
        a => match a.parse::<SocketAddr>() {
            Ok(sa) => Ok(MetricsAddr(Some(sa))),
            Err(e) => a
                .parse::<std::net::IpAddr>()
                .map(|ip| MetricsAddr(Some(SocketAddr::new(ip, METRICS_PORT))))
                .map_err(|_| MetricsAddrError(e)),
        },
    }
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Only this pod's decisions (its name, as in `meshsteer status`).
    #[arg(long, env = "MESHSTEER_POD")]
    pub pod: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub pins: PinArgs,
    #[command(flatten)]
    pub status: StatusFileArgs,
}

/// Pod discovery from the Kubernetes API server (instead of --pods-dir).
#[derive(Args, Debug, Clone)]
pub struct KubeArgs {
    /// Enrol this node's pods that carry an Istio sidecar, from the API server, instead of the
    /// specs in --pods-dir.
    #[arg(long, env = "MESHSTEER_KUBERNETES")]
    pub kubernetes: bool,
    /// This node's name (default: $NODE_NAME, which the DaemonSet sets from spec.nodeName).
    #[arg(long, env = "MESHSTEER_NODE_NAME")]
    pub node_name: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, else the pod's service account).
    #[arg(long, env = "MESHSTEER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Where the container runtime keeps pod network namespaces, with `{uid}`, `{namespace}`
    /// and `{name}` filled in (default: the namespace of a process of the pod).
    #[arg(long, env = "MESHSTEER_NETNS_PATH_TEMPLATE")]
    pub netns_path_template: Option<String>,
    /// Serve the CNI plugin (`meshsteer-cni`) on this unix socket: pods are enrolled while
    /// their sandbox is set up, before any of their containers runs.
    #[arg(long, env = "MESHSTEER_CNI_SOCKET", requires = "kubernetes")]
    pub cni_socket: Option<PathBuf>,
    /// The cluster DNS service's address(es), as the kubelet's `--cluster-dns`: the
    /// nameservers of pods with dnsPolicy ClusterFirst, for `--redirect-dns` before any of
    /// their processes shows its resolv.conf (default: the kube-system/kube-dns Service's
    /// clusterIP).
    #[arg(
        long,
        env = "MESHSTEER_CLUSTER_DNS",
        value_delimiter = ',',
        value_name = "IP",
        requires = "kubernetes"
    )]
    pub cluster_dns: Vec<IpAddr>,
    /// The node's resolv.conf, as the kubelet's `--resolv-conf` (a path on the node, read
    /// through its init process): the nameservers of pods with dnsPolicy Default.
    #[arg(
        long,
        env = "MESHSTEER_NODE_RESOLV_CONF",
        default_value = "/etc/resolv.conf",
        value_name = "PATH"
    )]
    pub node_resolv_conf: PathBuf,
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
    /// Pod name, as in `meshsteer status` (`namespace/name` for Kubernetes pods) or in its
    /// spec file.
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
    /// The running agent's status: the settings in effect of every pod it enrolled, from
    /// any source (spec files in --pods-dir are read only for pods it has not enrolled).
    #[command(flatten)]
    pub status: StatusFileArgs,
    /// Decide an arriving connection (ISTIO_INBOUND) from --src to the pod's --dst instead.
    #[arg(long)]
    pub inbound: bool,
    /// A UDP datagram (DNS capture) instead of a TCP connection.
    #[arg(long, conflicts_with = "inbound")]
    pub udp: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["meshsteer", "run"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Run(a) => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn metrics_addr() {
        let addr = |extra: &[&str]| run_args(extra).map(|a| a.metrics.addr.0);
        assert_eq!(addr(&[]).unwrap(), Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(
            addr(&["--metrics-addr", "10.0.0.7"]).unwrap(),
            Some("10.0.0.7:9090".parse().unwrap())
        );
        assert_eq!(
            addr(&["--metrics-addr", "fd00::7"]).unwrap(),
            Some("[fd00::7]:9090".parse().unwrap())
        );
        assert_eq!(
            addr(&["--metrics-addr", "127.0.0.1:0"]).unwrap(),
            Some("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(addr(&["--metrics-addr", ""]).unwrap(), None);
        assert_eq!(addr(&["--metrics-addr", "off"]).unwrap(), None);
        let e = addr(&["--metrics-addr", "9090"]).unwrap_err();
        assert!(
            e.to_string().contains(
                "invalid socket address syntax: expected IP:PORT, [IPv6]:PORT, a bare IP"
            ),
            "{e}"
        );
    }

    #[test]
    fn max_pods() {
        assert_eq!(run_args(&[]).unwrap().max_pods, DEFAULT_MAX_PODS);
        assert_eq!(run_args(&["--max-pods", "16"]).unwrap().max_pods, 16);
        assert!(run_args(&["--max-pods", "0"]).is_err());
        assert!(run_args(&["--max-pods", "1000000"]).is_err());
    }

    #[test]
    fn accelerate_switch() {
        assert_eq!(run_args(&[]).unwrap().accelerate, Switch::Off);
        let on = run_args(&["--accelerate", "on"]).unwrap();
        assert!(on.accelerate.on());
        assert!(run_args(&["--accelerate", "yes"]).is_err());
    }
}
