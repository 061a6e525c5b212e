//! `mst-bench` (run by `cargo xtask bench`): meshsteer against Istio's own iptables rules and
//! against no capture at all, in one run, on one simulated node, through a real proxy; and
//! meshsteer with socket-level acceleration (`meshsteer+accel`: pods enrolled with
//! `accelerate: true`).
//!
//! Each mode gets its own pair of pods: a client (load generator as uid 1000, plus a sidecar)
//! and a server (nginx and iperf3, plus a sidecar). The sidecar is HAProxy as uid 1337 at
//! layer 4: outbound 15001 to the original destination, inbound 15006 to the app from
//! 127.0.0.6. Pairs, not one pair reconfigured, so no mode inherits another's state (conntrack
//! stays hooked in a namespace once iptables' nat table has been used there). Every
//! measurement checks the proxies' session counters: a captured mode whose traffic did not go
//! through both sidecars, or a direct mode whose traffic did, fails the run.
//!
//! In `meshsteer+accel`, acceleration applies where both sockets of a connection are in one
//! pod: app → client sidecar (loopback) and server sidecar → app (127.0.0.6 → pod address);
//! the sidecar-to-sidecar hop between pods stays on TCP. A second, loopback-only set of
//! workloads isolates that: the app talks to a stand-in sidecar (`mst-stream`) on 15001 in its
//! own pod, with bulk throughput, small-message round trips and CPU per round trip.
//!
//! A profile follows: the keep-alive and new-connection workloads once more per mode under a
//! machine-wide `perf record`, with CPU per request split into netfilter, eBPF, the rest of
//! the kernel and each program's user space (`meshsteer_tests::profile`).
//!
//! Last, the CNI plugin's ADD latency: sandboxes in a row through a real chain (bridge and
//! host-local, then the release `meshsteer-cni`), pods from the test API server and a second
//! agent in Kubernetes mode, each sandbox's first connect checked as captured. Its median and
//! p99 are reported against the target (p99 < 20 ms).
//!
//! Repetitions alternate the order of the modes; the table shows medians with their range and
//! every figure as a ratio to `iptables` and to `direct` from the same run. JSON lines go to
//! `target/bench/results.jsonl`.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use meshsteer::inspect::{Capture, INJECTOR_DEFAULT_ARGS, Pins};
use meshsteer_tests::{
    Agent, Node, Pod, accel,
    apps::{self, Scratch},
    cmd::{self, Proc},
    cni::Chain,
    cni_scene::{Scene, median_p99},
    istio_rules, profile,
    topology::{probe_bin, start_listener_on},
};
use serde_json::{Value, json};

mod goals;
mod scale;

const APP: (u32, u32) = (1000, 1000);
/// The CNI plugin's ADD latency target (p99), in ms.
const ADD_P99_TARGET_MS: f64 = 20.0;
const PROXY: (u32, u32) = (1337, 1337);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Direct,
    Iptables,
    Meshsteer,
    MeshsteerAccel,
}

impl Mode {
    const ALL: [Mode; 4] = [
        Mode::Direct,
        Mode::Iptables,
        Mode::Meshsteer,
        Mode::MeshsteerAccel,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Iptables => "iptables",
            Mode::Meshsteer => "meshsteer",
            Mode::MeshsteerAccel => "meshsteer+accel",
        }
    }

    /// For pod names (a veth name must stay under 16 bytes).
    fn short(self) -> &'static str {
        match self {
            Mode::Direct => "dir",
            Mode::Iptables => "ipt",
            Mode::Meshsteer => "ms",
            Mode::MeshsteerAccel => "msa",
        }
    }

    /// Puts `pod` under this mode's capture.
    fn capture(self, agent: &Agent, pod: &Pod) -> Result<()> {
        match self {
            Mode::Direct => Ok(()),
            Mode::Iptables => {
                istio_rules::install(&pod.netns, &Capture::from_args(INJECTOR_DEFAULT_ARGS)?)
            }
            Mode::Meshsteer => accel::enrol(agent, pod, INJECTOR_DEFAULT_ARGS, false),
            Mode::MeshsteerAccel => accel::enrol(agent, pod, INJECTOR_DEFAULT_ARGS, true),
        }
    }

    fn captured(self) -> bool {
        self != Mode::Direct
    }
}

/// Knobs, from the environment so `cargo xtask bench` stays a one-word command.
struct Settings {
    reps: usize,
    secs: u32,
    conns: u32,
    churn: u64,
    /// Sandboxes set up in a row for the CNI ADD latency.
    sandboxes: usize,
    cidr_sizes: Vec<usize>,
    /// Pods on the node for the scale workload.
    pods: usize,
    /// Sizes of the `-o` excluded-port lists.
    port_sizes: Vec<usize>,
    /// The steps to run (`MESHSTEER_BENCH_STEPS`, a comma list; all if unset).
    steps: Vec<Step>,
    out: PathBuf,
}

/// A part of the run that `MESHSTEER_BENCH_STEPS` can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Keep-alive, new-connection, single-connection and bulk, every mode.
    Workloads,
    /// The same under `perf record`: where each mode's CPU goes.
    Profile,
    /// Per meshsteer program, its runs and run time in the meshsteer pods' new connections.
    Programs,
    /// Program runs while pods that are not enrolled make connections.
    RunsOutside,
    Loopback,
    RuleScaling,
    Enrolment,
    Footprint,
    Scale,
    Cni,
}

impl Step {
    const ALL: [Step; 10] = [
        Step::Workloads,
        Step::Profile,
        Step::Programs,
        Step::RunsOutside,
        Step::Loopback,
        Step::RuleScaling,
        Step::Enrolment,
        Step::Footprint,
        Step::Scale,
        Step::Cni,
    ];

    fn name(self) -> &'static str {
        match self {
            Step::Workloads => "workloads",
            Step::Profile => "profile",
            Step::Programs => "programs",
            Step::RunsOutside => "runs-outside",
            Step::Loopback => "loopback",
            Step::RuleScaling => "rule-scaling",
            Step::Enrolment => "enrolment",
            Step::Footprint => "footprint",
            Step::Scale => "scale",
            Step::Cni => "cni",
        }
    }

    /// `MESHSTEER_BENCH_STEPS`: a comma list of step names, every step if unset or empty.
    fn from_env() -> Result<Vec<Step>> {
        Step::parse(&std::env::var("MESHSTEER_BENCH_STEPS").unwrap_or_default())
    }

    fn parse(list: &str) -> Result<Vec<Step>> {
        if list.trim().is_empty() {
            return Ok(Step::ALL.to_vec());
        }
        list.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| {
                Step::ALL
                    .into_iter()
                    .find(|s| s.name() == n)
                    .with_context(|| {
                        let names: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
                        format!(
                            "MESHSTEER_BENCH_STEPS: no step {n:?} (steps: {})",
                            names.join(", ")
                        )
                    })
            })
            .collect()
    }
}

impl Settings {
    fn from_env() -> Result<Self> {
        let num = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        Ok(Self {
            reps: num("MESHSTEER_BENCH_REPS", 5) as usize,
            secs: num("MESHSTEER_BENCH_SECS", 3) as u32,
            conns: num("MESHSTEER_BENCH_CONNS", 32) as u32,
            churn: num("MESHSTEER_BENCH_CHURN", 20_000),
            sandboxes: num("MESHSTEER_BENCH_SANDBOXES", 200) as usize,
            cidr_sizes: vec![1, 100, 1_000, 10_000],
            port_sizes: vec![1, 1_000],
            pods: num("MESHSTEER_BENCH_PODS", 1_000) as usize,
            steps: Step::from_env()?,
            out: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/results.jsonl"),
        })
    }

    fn runs(&self, step: Step) -> bool {
        self.steps.contains(&step)
    }
}

/// One mode's client and server pods with their programs running.
struct Pair {
    mode: Mode,
    client: Pod,
    server: Pod,
}

impl Pair {
    fn new(node: &mut Node, agent: &Agent, scratch: &Scratch, mode: Mode) -> Result<Self> {
        let mut client = node.add_pod(&format!("{}c", mode.short()))?;
        let mut server = node.add_pod(&format!("{}s", mode.short()))?;
        for pod in [&client, &server] {
            mode.capture(agent, pod)?;
        }
        server.keep(apps::start_nginx(&server, scratch, APP.0, APP.1)?);
        // Its per-test report would interleave with the table: to a file.
        let log = scratch.path.join(format!("iperf3-{}.log", server.name));
        let mut iperf = Proc::spawn_logged(
            &server.place(APP.0, APP.1),
            "iperf3",
            &["-s", "-p", "5201"],
            &log,
        )?;
        apps::wait_listening(&server, &mut iperf, 5201, 1)?;
        server.keep(iperf);
        for pod in [&mut client, &mut server] {
            let sidecar = apps::start_sidecar(pod, scratch, PROXY.0, PROXY.1)?;
            pod.keep(sidecar);
        }
        Ok(Self {
            mode,
            client,
            server,
        })
    }

    /// Sessions the client's outbound and the server's inbound listener have taken so far.
    fn proxied(&self, scratch: &Scratch) -> Result<(u64, u64)> {
        let stats = |pod: &Pod| {
            scratch
                .path
                .join(format!("sidecar-{}/stats.sock", pod.name))
        };
        Ok((
            apps::haproxy_sessions(&stats(&self.client), "outbound", "FRONTEND")?,
            apps::haproxy_sessions(&stats(&self.server), "inbound", "FRONTEND")?,
        ))
    }

    /// Runs `work`, then checks the traffic went through both sidecars exactly when captured.
    fn checked<T>(&self, scratch: &Scratch, work: impl FnOnce() -> Result<T>) -> Result<T> {
        let before = self.proxied(scratch)?;
        let out = work()?;
        let after = self.proxied(scratch)?;
        let through = (after.0 > before.0, after.1 > before.1);
        let want = (self.mode.captured(), self.mode.captured());
        ensure!(
            through == want,
            "{}: traffic through (client outbound, server inbound) sidecars = {through:?}, expected {want:?}",
            self.mode.name()
        );
        Ok(out)
    }

    /// CPU time (µs) the two pods' cgroups have used so far.
    fn cpu_usec(&self) -> Result<u64> {
        Ok(cpu_usec(&self.client)? + cpu_usec(&self.server)?)
    }
}

/// CPU time (µs) a pod's cgroup has used so far.
fn cpu_usec(pod: &Pod) -> Result<u64> {
    let stat = fs::read_to_string(pod.cgroup.join("cpu.stat"))?;
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.parse().ok()))
        .context("cpu.stat without usage_usec")
}

/// One wrk run's outcome.
struct Wrk {
    requests: f64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_req: f64,
}

/// wrk, printing a JSON summary from its `done` hook.
const WRK_SCRIPT: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#;

fn wrk(pair: &Pair, scratch: &Scratch, conns: u32, secs: u32, close: bool) -> Result<Wrk> {
    let script = scratch.path.join("summary.lua");
    fs::write(&script, WRK_SCRIPT)?;
    let url = format!("http://{}:80/", pair.server.ip4);
    let (c, d) = (conns.to_string(), format!("{secs}s"));
    let mut args = vec![
        "-t1",
        "-c",
        &c,
        "-d",
        &d,
        "-s",
        script.to_str().unwrap_or_default(),
    ];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(&url);
    let cpu_before = pair.cpu_usec()?;
    let out = cmd::run(&pair.client.place(APP.0, APP.1), "wrk", &args)?;
    let cpu = pair.cpu_usec()? - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("wrk printed no summary")?;
    let v: Value = serde_json::from_str(line)?;
    let requests = v["requests"].as_f64().unwrap_or(0.0);
    ensure!(requests > 0.0, "wrk made no request: {text}");
    ensure!(v["errors"] == 0, "wrk saw errors: {line}");
    Ok(Wrk {
        requests,
        rps: requests / (v["duration_us"].as_f64().unwrap_or(1.0) / 1e6),
        p50_us: v["p50_us"].as_f64().unwrap_or(0.0),
        p99_us: v["p99_us"].as_f64().unwrap_or(0.0),
        cpu_us_per_req: cpu as f64 / requests,
    })
}

/// iperf3 from the client app to the server app: Gbit/s received.
fn iperf(pair: &Pair, secs: u32) -> Result<f64> {
    let t = secs.to_string();
    let args = ["-c", &pair.server.ip4, "-p", "5201", "-t", &t, "-J"];
    let out = cmd::run(&pair.client.place(APP.0, APP.1), "iperf3", &args)?;
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("iperf3: no result")
}

/// Samples per (workload, mode).
#[derive(Default)]
struct Results {
    samples: BTreeMap<(String, Mode), Vec<f64>>,
    units: BTreeMap<String, (&'static str, bool)>,
    lines: Vec<Value>,
    /// Each target, whether met, as the table's footer says it.
    targets: Vec<String>,
    /// Tables of their own, printed after the main one.
    tables: Vec<String>,
}

impl Results {
    /// `higher_is_better` decides how the table reads the ratios.
    fn add(
        &mut self,
        workload: &str,
        unit: &'static str,
        higher_is_better: bool,
        mode: Mode,
        rep: usize,
        v: f64,
    ) {
        self.samples
            .entry((workload.into(), mode))
            .or_default()
            .push(v);
        self.units.insert(workload.into(), (unit, higher_is_better));
        self.lines.push(json!({ "workload": workload, "mode": mode.name(), "rep": rep, "value": v, "unit": unit }));
        eprintln!(
            "  {workload:<28} {:<9} rep {rep}: {v:.2} {unit}",
            mode.name()
        );
    }

    fn median(&self, workload: &str, mode: Mode) -> Option<(f64, f64, f64)> {
        let mut v = self.samples.get(&(workload.to_string(), mode))?.clone();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        // Of an even count, the mean of the middle two (the scale step's rows have two).
        let median = if v.len() % 2 == 0 {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        };
        Some((median, v[0], v[v.len() - 1]))
    }

    fn table(&self) -> String {
        use Mode::*;
        /// (numerator, denominator, column title) of every ratio column.
        const RATIOS: [(Mode, Mode, &str); 5] = [
            (Meshsteer, Iptables, "meshsteer / iptables"),
            (MeshsteerAccel, Iptables, "accel / iptables"),
            (MeshsteerAccel, Meshsteer, "accel / meshsteer"),
            (Meshsteer, Direct, "meshsteer / direct"),
            (Iptables, Direct, "iptables / direct"),
        ];
        let titles: Vec<&str> = Mode::ALL
            .iter()
            .map(|m| m.name())
            .chain(RATIOS.iter().map(|r| r.2))
            .collect();
        let mut t = format!(
            "| workload | unit | {} |\n|---|---|{}\n",
            titles.join(" | "),
            "---|".repeat(titles.len())
        );
        for (w, (unit, _)) in &self.units {
            let cell = |m| match self.median(w, m) {
                Some((med, lo, hi)) => format!("{med:.2} ({lo:.2}–{hi:.2})"),
                None => "–".into(),
            };
            let ratio = |a, b| match (self.median(w, a), self.median(w, b)) {
                (Some((x, ..)), Some((y, ..))) if y != 0.0 => format!("{:.2}×", x / y),
                _ => "–".into(),
            };
            let cells: Vec<String> = Mode::ALL
                .iter()
                .map(|m| cell(*m))
                .chain(RATIOS.iter().map(|(a, b, _)| ratio(*a, *b)))
                .collect();
            let _ = writeln!(t, "| {w} | {unit} | {} |", cells.join(" | "));
        }
        t
    }
}

/// The main workloads, every mode per repetition, in a rotating order.
fn run_workloads(s: &Settings, pairs: &[Pair], scratch: &Scratch, r: &mut Results) -> Result<()> {
    for rep in 0..s.reps {
        eprintln!("repetition {}/{}", rep + 1, s.reps);
        for i in 0..pairs.len() {
            let pair = &pairs[(i + rep) % pairs.len()];
            let m = pair.mode;
            let ka = pair.checked(scratch, || wrk(pair, scratch, s.conns, s.secs, false))?;
            r.add("keep-alive rate", "req/s", true, m, rep, ka.rps);
            r.add(
                "keep-alive CPU per request",
                "µs",
                false,
                m,
                rep,
                ka.cpu_us_per_req,
            );
            let nc = pair.checked(scratch, || wrk(pair, scratch, s.conns / 2, s.secs, true))?;
            r.add("new-connection rate", "req/s", true, m, rep, nc.rps);
            r.add(
                "new-connection CPU per req",
                "µs",
                false,
                m,
                rep,
                nc.cpu_us_per_req,
            );
            let one = pair.checked(scratch, || wrk(pair, scratch, 1, s.secs, false))?;
            r.add("single-connection p50", "µs", false, m, rep, one.p50_us);
            r.add("single-connection p99", "µs", false, m, rep, one.p99_us);
            let gbps = pair.checked(scratch, || iperf(pair, s.secs))?;
            r.add("bulk throughput", "Gbit/s", true, m, rep, gbps);
        }
    }
    Ok(())
}

/// Where each mode's CPU goes, per request: the keep-alive and new-connection workloads again,
/// under a machine-wide `perf record` (runs of their own: sampling slows them, so they give
/// no rates). Every CPU is sampled, so the softirq work that loopback and veth traffic does on
/// behalf of the pods counts too.
fn run_profile(s: &Settings, pairs: &[Pair], scratch: &Scratch, r: &mut Results) -> Result<()> {
    let data = scratch.path.join("perf.data");
    for (workload, conns, close) in [
        ("keep-alive", s.conns, false),
        ("new-connection", s.conns / 2, true),
    ] {
        for pair in pairs {
            let recording = profile::Recording::start(&data)?;
            let run = pair.checked(scratch, || wrk(pair, scratch, conns, s.secs, close));
            let cpu = recording.finish()?;
            let requests = run?.requests;
            let mut add = |what: &str, us: f64| {
                let name = format!("profile: {workload} µs/req, {what}");
                r.add(&name, "µs", false, pair.mode, 0, us / requests);
            };
            for class in profile::CLASSES {
                add(&class.name(), cpu.usec(class));
            }
            add("all", cpu.total());
            let top: Vec<String> = cpu
                .top_capture_symbols(6)
                .iter()
                .map(|(sym, us)| format!("{sym} {:.2}", us / requests))
                .collect();
            eprintln!(
                "  {workload} {}: netfilter and eBPF, µs/req: {}",
                pair.mode.name(),
                top.join(", ")
            );
            r.lines.push(json!({
                "workload": format!("profile: {workload}, capture symbols"),
                "mode": pair.mode.name(),
                "usec_per_req": top,
            }));
        }
    }
    Ok(())
}

/// What meshsteer's programs cost the sockets it does not capture, from the kernel's own run
/// statistics: the runs of every pinned program while one client pod per mode makes
/// `s.churn` connections (nothing else runs in the test's cgroup subtree meanwhile). A pod
/// that is not enrolled (`direct`, `iptables`) should run none.
fn runs_outside_meshed_pods(
    s: &Settings,
    pairs: &[Pair],
    agent: &Agent,
    r: &mut Results,
) -> Result<()> {
    let pins = Pins::new(&agent.bpffs_dir);
    // Statistics stay on while this fd is open, for everyone: only around this measurement.
    let _stats = run_stats_on()?;
    for pair in pairs.iter().filter(|p| p.mode != Mode::MeshsteerAccel) {
        let churn = measured_churn(s, &pair.client, &pins)?;
        r.add(
            "eBPF program runs per connection",
            "runs",
            false,
            pair.mode,
            0,
            churn.runs_per_conn,
        );
        r.add(
            "eBPF run time per connection",
            "µs",
            false,
            pair.mode,
            0,
            churn.ebpf_us_per_conn,
        );
    }
    Ok(())
}

/// Turns the kernel's per-program run statistics on for as long as the returned fd is open
/// (for everyone: hold it only around a measurement).
fn run_stats_on() -> Result<std::os::fd::OwnedFd> {
    meshsteer::inspect::enable_run_stats()
        .context("turning on eBPF run statistics (BPF_ENABLE_STATS, Linux 5.8)")
}

/// Run time per run, 0 for a program that never ran.
fn ns_per_run(ns: u64, cnt: u64) -> f64 {
    if cnt > 0 { ns as f64 / cnt as f64 } else { 0.0 }
}

/// One churn of `s.churn` connections from `pod`, with what our programs spent on it.
struct Churn {
    rate: f64,
    runs_per_conn: f64,
    ebpf_us_per_conn: f64,
}

/// [`churn_rate`] between two readings of the pinned programs' run statistics (which the
/// caller has turned on).
fn measured_churn(s: &Settings, pod: &Pod, pins: &Pins) -> Result<Churn> {
    let before = meshsteer::inspect::pinned_program_runs(pins)?;
    let rate = churn_rate(pod, s.churn)?;
    let after = meshsteer::inspect::pinned_program_runs(pins)?;
    let n = s.churn as f64;
    Ok(Churn {
        rate,
        runs_per_conn: (after.run_cnt - before.run_cnt) as f64 / n,
        ebpf_us_per_conn: (after.run_time_ns - before.run_time_ns) as f64 / n / 1e3,
    })
}

/// What each meshsteer program costs the meshsteer pods per request of the new-connection
/// workload (wrk with `Connection: close` through both sidecars: three TCP connections per
/// request), from the kernel's run statistics of the pinned programs, summed by program name
/// over `s.reps` runs of `s.secs`. Only this pair makes traffic meanwhile (the others are
/// idle), so the counts are this workload's.
fn program_costs(
    s: &Settings,
    pairs: &[Pair],
    scratch: &Scratch,
    agent: &Agent,
    r: &mut Results,
) -> Result<()> {
    let pins = Pins::new(&agent.bpffs_dir);
    let _stats = run_stats_on()?;
    for pair in pairs.iter().filter(|p| p.mode == Mode::Meshsteer) {
        let mut requests = 0.0;
        let mut runs: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for _ in 0..s.reps {
            let before = meshsteer::inspect::pinned_program_runs_by_name(&pins)?;
            let nc = pair.checked(scratch, || wrk(pair, scratch, s.conns / 2, s.secs, true))?;
            let after = meshsteer::inspect::pinned_program_runs_by_name(&pins)?;
            requests += nc.requests;
            for (name, a) in &after {
                let b = before.get(name).copied().unwrap_or_default();
                let e = runs.entry(name.clone()).or_default();
                e.0 += a.run_cnt - b.run_cnt;
                e.1 += a.run_time_ns - b.run_time_ns;
            }
        }
        let mut t = format!(
            "eBPF programs in the {} pods, new-connection workload ({requests:.0} requests)\n\n\
             | program | runs per request | ns per run | ns per request |\n|---|---|---|---|\n",
            pair.mode.name()
        );
        let (mut all_cnt, mut all_ns) = (0u64, 0u64);
        for (name, (cnt, ns)) in &runs {
            all_cnt += cnt;
            all_ns += ns;
            let per_run = ns_per_run(*ns, *cnt);
            let per_req = *ns as f64 / requests;
            let _ = writeln!(
                t,
                "| {name} | {:.2} | {per_run:.0} | {per_req:.0} |",
                *cnt as f64 / requests
            );
            r.lines.push(json!({
                "workload": "program costs, new-connection", "mode": pair.mode.name(),
                "program": name, "requests": requests, "run_cnt": cnt, "run_time_ns": ns,
            }));
        }
        let _ = writeln!(
            t,
            "| all | {:.2} | {:.0} | {:.0} |",
            all_cnt as f64 / requests,
            ns_per_run(all_ns, all_cnt),
            all_ns as f64 / requests
        );
        r.tables.push(t);
        r.add(
            "eBPF run time per new-connection request (run statistics)",
            "µs",
            false,
            pair.mode,
            0,
            all_ns as f64 / requests / 1e3,
        );
    }
    Ok(())
}

/// What the datapath did with the accelerated pair's sockets (JSON lines, and the run fails if
/// nothing was accelerated): sockets accelerated, and connections left on or sent back to the
/// normal path by reason.
fn acceleration_counters(agent: &Agent, pods: &[&Pod], r: &mut Results) -> Result<()> {
    const KEYS: [&str; 4] = [
        "accel_sockets",
        "accel_backpressure",
        "accel_no_peer",
        "accel_cross_pod",
    ];
    for pod in pods {
        let counts: serde_json::Map<String, Value> = KEYS
            .iter()
            .map(|k| Ok((k.to_string(), accel::counter(agent, pod, k)?.into())))
            .collect::<Result<_>>()?;
        eprintln!("  {} counters: {}", pod.name, Value::from(counts.clone()));
        ensure!(
            counts["accel_sockets"].as_u64() > Some(0),
            "{}: no socket was accelerated",
            pod.name
        );
        r.lines.push(
            json!({ "workload": "acceleration counters", "pod": pod.name, "counters": counts }),
        );
    }
    Ok(())
}

/// The app and its sidecar over loopback and nothing else, where acceleration applies end to
/// end: bulk throughput, round trips of 64-byte messages, and the pod's CPU per round trip.
/// The sidecar is a stand-in (`mst-stream serve`, uid 1337) on 15001; the app connects to an
/// outside address that capture sends there (direct: to 15001 itself).
fn run_loopback(s: &Settings, node: &mut Node, agent: &Agent, r: &mut Results) -> Result<()> {
    let mut pods = Vec::new();
    for mode in Mode::ALL {
        let mut pod = node.add_pod(&format!("lo{}", mode.short()))?;
        mode.capture(agent, &pod)?;
        let place = pod.place(PROXY.0, PROXY.1);
        let sidecar = Proc::spawn_ready(&place, &accel::stream_bin(), &["serve", "0.0.0.0:15001"])?;
        pod.keep(sidecar);
        pods.push((mode, pod));
    }
    let secs = s.secs.to_string();
    for rep in 0..s.reps {
        for i in 0..pods.len() {
            let (mode, pod) = &pods[(i + rep) % pods.len()];
            let dst = match mode {
                Mode::Direct => "127.0.0.1:15001",
                _ => "10.200.0.1:80",
            };
            let place = pod.place(APP.0, APP.1);
            let bulk = loopback(&place, "bulk", dst, &[&secs, "131072"])?;
            r.add(
                "loopback bulk",
                "Gbit/s",
                true,
                *mode,
                rep,
                num(&bulk, "gbit_per_s")?,
            );
            let cpu_before = cpu_usec(pod)?;
            let rr = loopback(&place, "rr", dst, &[&secs, "64"])?;
            let cpu = (cpu_usec(pod)? - cpu_before) as f64;
            r.add(
                "loopback round trips, 64 B",
                "per s",
                true,
                *mode,
                rep,
                num(&rr, "per_s")?,
            );
            let per_rt = cpu / num(&rr, "round_trips")?;
            r.add(
                "loopback CPU per round trip",
                "µs",
                false,
                *mode,
                rep,
                per_rt,
            );
        }
    }
    let accelerated: Vec<&Pod> = pods
        .iter()
        .filter(|(m, _)| *m == Mode::MeshsteerAccel)
        .map(|(_, p)| p)
        .collect();
    acceleration_counters(agent, &accelerated, r)
}

/// One `mst-stream` measurement; a failed transfer fails the run.
fn loopback(place: &cmd::Place<'_>, scenario: &str, dst: &str, args: &[&str]) -> Result<Value> {
    let v = accel::stream(place, scenario, dst, args)?;
    ensure!(v["failures"] == json!([]), "{scenario} to {dst}: {v}");
    Ok(v)
}

fn num(v: &Value, key: &str) -> Result<f64> {
    v[key].as_f64().with_context(|| format!("no {key} in {v}"))
}

/// Cost of the capture decision at connect() against the number of excluded CIDRs: the
/// iptables chain is walked rule by rule, meshsteer does one LPM lookup. Measured as the
/// rate of short redirected connections from the app to the pod's own proxy listener.
/// The capture decision's cost against the size of the pod's rules: the connect rate with 1 to
/// 10,000 `-x` CIDRs, and with 1 and 1,000 `-o` excluded ports (none of them the destination),
/// under iptables and meshsteer.
fn run_rule_scaling(s: &Settings, node: &mut Node, agent: &Agent, r: &mut Results) -> Result<()> {
    let mut ipt = node.add_pod("xipt")?;
    let mut ms = node.add_pod("xms")?;
    for pod in [&mut ipt, &mut ms] {
        pod.keep(start_listener_on(&pod.place(PROXY.0, PROXY.1), &[15001])?);
    }
    let mut cases: Vec<(String, String)> = Vec::new();
    for &n in &s.cidr_sizes {
        // Never the destination: 100.64.0.0/10 addresses, /32 each.
        let cidrs: Vec<String> = (0..n)
            .map(|i| format!("100.{}.{}.{}/32", 64 + i / 65536, (i / 256) % 256, i % 256))
            .collect();
        cases.push((
            format!("connect rate, {n:>5} -x CIDRs"),
            format!("-x {}", cidrs.join(",")),
        ));
    }
    for &n in &s.port_sizes {
        // Never the destination (80): 20000 and up.
        let ports: Vec<String> = (0..n).map(|i| (20_000 + i).to_string()).collect();
        cases.push((
            format!("connect rate, {n:>5} -o ports"),
            format!("-o {}", ports.join(",")),
        ));
    }
    for (workload, extra) in cases {
        let args = format!("{INJECTOR_DEFAULT_ARGS} {extra}");
        let capture = Capture::from_args(&args)?;
        flush_nat(&ipt)?;
        istio_rules::install(&ipt.netns, &capture)?;
        agent.enrol(&ms, &args)?;
        for rep in 0..s.reps.min(3) {
            let order = if rep % 2 == 0 {
                [(&ipt, Mode::Iptables), (&ms, Mode::Meshsteer)]
            } else {
                [(&ms, Mode::Meshsteer), (&ipt, Mode::Iptables)]
            };
            for (pod, mode) in order {
                let rate = churn_rate(pod, s.churn)?;
                r.add(&workload, "conn/s", true, mode, rep, rate);
            }
        }
    }
    Ok(())
}

fn flush_nat(pod: &Pod) -> Result<()> {
    let place = cmd::Place {
        netns: Some(&pod.netns),
        ..Default::default()
    };
    for tool in ["iptables", "ip6tables"] {
        cmd::run(&place, tool, &["-t", "nat", "-F"])?;
        cmd::run(&place, tool, &["-t", "nat", "-X"])?;
    }
    Ok(())
}

fn churn_rate(pod: &Pod, n: u64) -> Result<f64> {
    let count = n.to_string();
    let out = cmd::run(
        &pod.place(APP.0, APP.1),
        probe_bin(),
        &["churn", "10.200.0.1:80", &count, "1"],
    )?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(v["failed"] == 0, "churn failures: {v}");
    v["per_sec"].as_f64().context("churn rate")
}

/// Spec written → `ready` in the agent's status, over several fresh pods (ms).
fn enrolment_latency(node: &mut Node, agent: &Agent, r: &mut Results) -> Result<()> {
    for i in 0..10 {
        let pod = node.add_pod(&format!("en{i}"))?;
        let name = format!("test/{}", pod.name);
        let start = Instant::now();
        agent.write_spec(&pod.name, &pod.spec(INJECTOR_DEFAULT_ARGS))?;
        while agent.published_state(&name).as_deref() != Some("ready") {
            ensure!(
                start.elapsed() < Duration::from_secs(5),
                "pod {name} not ready after 5 s"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        r.add(
            "enrolment latency",
            "ms",
            false,
            Mode::Meshsteer,
            i,
            start.elapsed().as_secs_f64() * 1e3,
        );
        agent.remove_spec(&pod.name)?;
    }
    Ok(())
}

/// The CNI plugin's ADD latency over `s.sandboxes` sandboxes in a row (meshsteer-cni alone,
/// the primary plugin's part left out), against its target.
fn cni_add_latency(s: &Settings, r: &mut Results) -> Result<()> {
    let scene = Scene::new()?;
    let chain = Chain::new(&scene.node, &scene.socket, 30)?;
    let took = scene.sandboxes_in_a_row(&chain, s.sandboxes)?;
    let (median, p99) = median_p99(&took);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let n = s.sandboxes;
    r.add(
        "CNI ADD latency, median",
        "ms",
        false,
        Mode::Meshsteer,
        0,
        ms(median),
    );
    r.add(
        "CNI ADD latency, p99",
        "ms",
        false,
        Mode::Meshsteer,
        0,
        ms(p99),
    );
    let met = ms(p99) < ADD_P99_TARGET_MS;
    r.targets.push(format!(
        "CNI ADD latency over {n} sandboxes: median {:.1} ms, p99 {:.1} ms; target p99 < \
         {ADD_P99_TARGET_MS} ms: {}",
        ms(median),
        ms(p99),
        if met { "met" } else { "NOT met" }
    ));
    r.lines.push(json!({
        "workload": "CNI ADD latency",
        "sandboxes": n,
        "samples_ms": took.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        "median_ms": ms(median),
        "p99_ms": ms(p99),
        "target_p99_ms": ADD_P99_TARGET_MS,
        "met": met,
    }));
    Ok(())
}

/// The agent's resident memory and its CPU use while idle (pods enrolled, no changes).
fn agent_footprint(agent: &Agent, r: &mut Results) -> Result<()> {
    let pid = agent.pid().context("agent not running")?;
    r.add(
        "agent RSS",
        "MiB",
        false,
        Mode::Meshsteer,
        0,
        agent_rss_mib(agent)?,
    );
    let ticks = || -> Result<f64> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = after_comm.split_whitespace().collect();
        Ok(f[11].parse::<f64>()? + f[12].parse::<f64>()?)
    };
    let (t0, start) = (ticks()?, Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (ticks()? - t0) / hz / start.elapsed().as_secs_f64() * 100.0;
    r.add(
        "agent idle CPU",
        "% of a core",
        false,
        Mode::Meshsteer,
        0,
        cpu,
    );
    Ok(())
}

/// The agent's resident memory, in MiB.
fn agent_rss_mib(agent: &Agent) -> Result<f64> {
    let pid = agent.pid().context("agent not running")?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    Ok(rss_kb / 1024.0)
}

/// The CPU time the agent's threads have had so far, from each thread's `schedstat` (ns; a
/// thread that exits meanwhile takes its time with it, which the agent's long-lived threads do
/// not).
fn agent_cpu_ns(agent: &Agent) -> Result<u64> {
    let pid = agent.pid().context("agent not running")?;
    let mut ns = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(ns)
}

/// The agent's CPU over `secs` seconds of doing nothing asked of it, in % of one CPU.
fn agent_cpu_at_rest(agent: &Agent, secs: u64) -> Result<f64> {
    let before = agent_cpu_ns(agent)?;
    std::thread::sleep(Duration::from_secs(secs));
    let after = agent_cpu_ns(agent)?;
    Ok(after.saturating_sub(before) as f64 / (secs as f64 * 1e9) * 100.0)
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    format!(
        "{cores} × {cpu}, Linux {}",
        meshsteer::inspect::kernel_release()
    )
}

fn main() -> Result<()> {
    meshsteer_tests::require_root();
    let s = Settings::from_env()?;
    let mut node = Node::new()?;
    node.start_world()?;
    // The CIDR benchmark enrols a pod with 10,000 -x CIDRs: over the default per-pod budget
    // (1/128 of the trie), within 1/16 of it.
    let agent = Agent::start_with(&node, &["--max-pods", "16"])?;
    let scratch = Scratch::new("bench")?;
    let mut r = Results::default();
    let paired = [
        Step::Workloads,
        Step::Profile,
        Step::Programs,
        Step::RunsOutside,
    ];
    if paired.iter().any(|p| s.runs(*p)) {
        let pairs: Vec<Pair> = Mode::ALL
            .iter()
            .map(|m| Pair::new(&mut node, &agent, &scratch, *m))
            .collect::<Result<_>>()?;
        if s.runs(Step::Workloads) {
            run_workloads(&s, &pairs, &scratch, &mut r)?;
        }
        if s.runs(Step::Profile) {
            run_profile(&s, &pairs, &scratch, &mut r)?;
        }
        if s.runs(Step::Programs) {
            program_costs(&s, &pairs, &scratch, &agent, &mut r)?;
        }
        // Only traffic through the accelerated pair accelerates anything.
        if s.runs(Step::Workloads) || s.runs(Step::Profile) {
            let accelerated: Vec<&Pod> = pairs
                .iter()
                .filter(|p| p.mode == Mode::MeshsteerAccel)
                .flat_map(|p| [&p.client, &p.server])
                .collect();
            acceleration_counters(&agent, &accelerated, &mut r)?;
        }
        if s.runs(Step::RunsOutside) {
            runs_outside_meshed_pods(&s, &pairs, &agent, &mut r)?;
        }
    }
    if s.runs(Step::Loopback) {
        run_loopback(&s, &mut node, &agent, &mut r)?;
    }
    if s.runs(Step::RuleScaling) {
        run_rule_scaling(&s, &mut node, &agent, &mut r)?;
    }
    if s.runs(Step::Enrolment) {
        enrolment_latency(&mut node, &agent, &mut r)?;
    }
    if s.runs(Step::Footprint) {
        agent_footprint(&agent, &mut r)?;
    }
    if s.runs(Step::Scale) {
        scale::run(&s, &mut r)?;
    }
    if s.runs(Step::Cni) && s.sandboxes > 0 {
        cni_add_latency(&s, &mut r)?;
    }

    if let Some(dir) = s.out.parent() {
        fs::create_dir_all(dir)?;
    }
    let goals = goals::evaluate(&r, s.pods);
    r.lines.extend(goals.iter().map(goals::Goal::json));
    let jsonl: String = r.lines.iter().map(|l| format!("{l}\n")).collect();
    fs::write(&s.out, jsonl).with_context(|| format!("writing {}", s.out.display()))?;
    let steps: Vec<&str> = s.steps.iter().map(|st| st.name()).collect();
    println!(
        "\nmeshsteer benchmark: {} repetitions of {} s, {} connections; steps {}; {}",
        s.reps,
        s.secs,
        s.conns,
        steps.join(","),
        machine()
    );
    println!("medians (min–max); ratios of medians from this run\n");
    println!("{}", r.table());
    for t in &r.tables {
        println!("{t}");
    }
    println!("{}", goals::table(&goals));
    for target in &r.targets {
        println!("{target}");
    }
    println!("JSON lines: {}", s.out.display());
    if r.samples.is_empty() {
        bail!("no measurement was made");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Step;

    #[test]
    fn steps_are_a_comma_list_and_default_to_all() {
        assert_eq!(Step::parse("").unwrap(), Step::ALL);
        assert_eq!(
            Step::parse("programs, profile").unwrap(),
            [Step::Programs, Step::Profile]
        );
        let err = Step::parse("programs,nope").unwrap_err().to_string();
        assert!(
            err.contains("nope") && err.contains("runs-outside"),
            "{err}"
        );
    }
}
