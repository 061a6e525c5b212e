//! Where the CPU goes: `perf record` samples every CPU (kernel and user space) at a fixed
//! period while a workload runs, and each sample is put in a [`Class`] by its symbol and
//! command. With the period known, sample counts are CPU time, so a benchmark can say how many
//! µs of a request went to netfilter, to eBPF, to the rest of the kernel and to each program.
use std::{
    collections::BTreeMap,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use crate::cmd::Proc;

/// The sampling period of the `cpu-clock` event, in ns: 2,000 samples a second per CPU.
const PERIOD_NS: u64 = 500_000;

/// What a sample's CPU time was spent on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// iptables, conntrack and NAT.
    Netfilter,
    /// eBPF programs, their helpers and the sockmap machinery (not the BPF LSM's empty hooks,
    /// which every kernel built with it calls).
    Ebpf,
    /// Every other kernel symbol: sockets, TCP/IP, scheduler, memory, syscalls.
    Kernel,
    /// A program's own code (and its libraries), by command name.
    User(&'static str),
    /// A CPU with nothing to do: not counted.
    Idle,
}

impl Class {
    pub fn name(self) -> String {
        match self {
            Class::Netfilter => "netfilter".into(),
            Class::Ebpf => "eBPF".into(),
            Class::Kernel => "kernel, other".into(),
            Class::User(comm) => format!("{comm} (user space)"),
            Class::Idle => "idle".into(),
        }
    }
}

/// Programs whose user-space time is shown on its own; the rest is `other`.
const PROGRAMS: [&str; 3] = ["haproxy", "nginx", "wrk"];

/// Every class a [`Breakdown`] counts, in the order reports show them.
pub const CLASSES: [Class; 7] = [
    Class::Netfilter,
    Class::Ebpf,
    Class::Kernel,
    Class::User(PROGRAMS[0]),
    Class::User(PROGRAMS[1]),
    Class::User(PROGRAMS[2]),
    Class::User("other"),
];

/// The class of one sample: `kernel` tells a kernel symbol (`[k]`) from a user one (`[.]`).
pub fn classify(comm: &str, kernel: bool, sym: &str) -> Class {
    if !kernel {
        return Class::User(PROGRAMS.into_iter().find(|p| comm == *p).unwrap_or("other"));
    }
    const IDLE: [&str; 4] = ["idle", "safe_halt", "mwait", "cpuidle"];
    const NETFILTER: [&str; 9] = [
        "nf_",
        "__nf_",
        "nft_",
        "ipt_",
        "ip6t_",
        "xt_",
        "iptable_",
        "ip6table_",
        "ipv4_confirm",
    ];
    const EBPF: [&str; 4] = ["sock_map", "sk_psock", "sk_msg", "__sk_msg"];
    if IDLE.iter().any(|w| sym.contains(w)) {
        Class::Idle
    } else if NETFILTER.iter().any(|p| sym.starts_with(p)) || sym.contains("conntrack") {
        Class::Netfilter
    } else if (sym.contains("bpf") && !sym.starts_with("bpf_lsm_"))
        || EBPF.iter().any(|p| sym.starts_with(p))
    {
        Class::Ebpf
    } else {
        Class::Kernel
    }
}

/// A running machine-wide `perf record`; [`Recording::finish`] stops it and reads it.
pub struct Recording {
    proc: Proc,
    file: PathBuf,
}

impl Recording {
    /// Starts sampling every CPU into `file`.
    pub fn start(file: &Path) -> Result<Self> {
        let period = PERIOD_NS.to_string();
        let out = file.to_str().context("perf data path")?;
        let args = [
            "record",
            "-a",
            "-q",
            "-e",
            "cpu-clock",
            "-c",
            &period,
            "-o",
            out,
        ];
        let proc = Proc::spawn(&crate::cmd::Place::default(), "perf", &args)?;
        // perf opens its per-CPU events before it samples anything.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self {
            proc,
            file: file.into(),
        })
    }

    /// Stops sampling and returns CPU time per class.
    pub fn finish(mut self) -> Result<Breakdown> {
        self.proc.kill(libc::SIGINT);
        let status = self.proc.wait().context("waiting for perf record")?;
        // perf record ends by raising the signal that stopped it.
        let stopped = status.signal() == Some(libc::SIGINT);
        ensure!(status.success() || stopped, "perf record failed: {status}");
        let out = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "-q",
                "-t",
                "|",
                "--sort",
                "comm,dso,sym",
            ])
            .args(["-F", "sample,comm,dso,sym", "-i"])
            .arg(&self.file)
            .output()
            .context("running perf report")?;
        ensure!(
            out.status.success(),
            "perf report failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Breakdown::parse(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// CPU time per class, idle left out, and per symbol of the classes that are capture's own.
#[derive(Debug, Default)]
pub struct Breakdown {
    pub usec: BTreeMap<Class, f64>,
    /// Netfilter and eBPF symbols with their CPU time.
    pub capture_symbols: BTreeMap<String, f64>,
}

impl Breakdown {
    /// Reads `perf report -t '|' -F sample,comm,dso,sym` lines.
    pub fn parse(report: &str) -> Self {
        let mut b = Self::default();
        for line in report.lines() {
            let f: Vec<&str> = line.split('|').map(str::trim).collect();
            let [samples, comm, _dso, sym] = f[..] else {
                continue;
            };
            let Ok(samples) = samples.parse::<u64>() else {
                continue;
            };
            let (kernel, sym) = match sym.split_once(' ') {
                Some(("[k]", s)) => (true, s),
                Some((_, s)) => (false, s),
                None => (false, sym),
            };
            let class = classify(comm, kernel, sym);
            let usec = (samples * PERIOD_NS) as f64 / 1e3;
            if class != Class::Idle {
                *b.usec.entry(class).or_default() += usec;
            }
            if matches!(class, Class::Netfilter | Class::Ebpf) {
                *b.capture_symbols.entry(sym.to_string()).or_default() += usec;
            }
        }
        b
    }

    /// CPU time of `class` (0 if no sample had it).
    pub fn usec(&self, class: Class) -> f64 {
        self.usec.get(&class).copied().unwrap_or(0.0)
    }

    pub fn total(&self) -> f64 {
        self.usec.values().sum()
    }

    /// The `n` netfilter and eBPF symbols that took the most CPU, most first.
    pub fn top_capture_symbols(&self, n: usize) -> Vec<(&str, f64)> {
        let mut v: Vec<(&str, f64)> = self
            .capture_symbols
            .iter()
            .map(|(s, us)| (s.as_str(), *us))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_fall_into_their_classes() {
        let k = |s| classify("haproxy", true, s);
        assert_eq!(k("nf_conntrack_in"), Class::Netfilter);
        assert_eq!(k("ipt_do_table"), Class::Netfilter);
        assert_eq!(k("nf_nat_ipv4_out"), Class::Netfilter);
        assert_eq!(k("ipv4_conntrack_local"), Class::Netfilter);
        assert_eq!(k("bpf_prog_3f2a_ms_connect4"), Class::Ebpf);
        assert_eq!(k("__cgroup_bpf_run_filter_sock_addr"), Class::Ebpf);
        assert_eq!(k("tcp_bpf_recvmsg"), Class::Ebpf);
        assert_eq!(k("sk_psock_verdict_apply"), Class::Ebpf);
        assert_eq!(k("tcp_v4_connect"), Class::Kernel);
        assert_eq!(k("bpf_lsm_socket_sendmsg"), Class::Kernel);
        assert_eq!(k("pv_native_safe_halt"), Class::Idle);
        assert_eq!(
            classify("haproxy", false, "h1_process"),
            Class::User("haproxy")
        );
        assert_eq!(classify("curl", false, "main"), Class::User("other"));
    }

    #[test]
    fn report_lines_become_cpu_time() {
        let report = "\
 10  |haproxy |[kernel.kallsyms] |[k] nf_conntrack_in
 4   |swapper |[kernel.kallsyms] |[k] pv_native_safe_halt
 2   |nginx   |nginx             |[.] ngx_http_process_request
 6   |wrk     |[kernel.kallsyms] |[k] tcp_sendmsg
";
        let b = Breakdown::parse(report);
        assert_eq!(b.usec(Class::Netfilter), 5_000.0);
        assert_eq!(b.usec(Class::User("nginx")), 1_000.0);
        assert_eq!(b.usec(Class::Kernel), 3_000.0);
        assert_eq!(b.usec(Class::Idle), 0.0);
        assert_eq!(b.total(), 9_000.0);
        assert_eq!(b.top_capture_symbols(5), [("nf_conntrack_in", 5_000.0)]);
    }
}
