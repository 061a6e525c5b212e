//! The agent at scale: `MESHSTEER_BENCH_PODS` pods on one node, each a network namespace and a
//! cgroup of its own, enrolled by a burst of spec files. How long until all are ready, the
//! agent's memory, how long a SIGKILLed agent's successor takes to have them all ready again,
//! and what one real pod's connections cost at that scale against the same pod alone.
use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use meshsteer::inspect::{INJECTOR_DEFAULT_ARGS, Pins};
use meshsteer_tests::{Agent, Node, cmd, topology::start_listener_on};
use serde_json::Value;

use super::{
    Mode, PROXY, Results, Settings, agent_cpu_at_rest, agent_rss_mib, measured_churn, run_stats_on,
};

/// Seconds the agent's CPU is measured with every pod ready and nothing changing.
const AT_REST_SECS: u64 = 3;

/// Names of the rows the goals read.
pub const READY: &str = "scale: all ready after the spec burst";
pub const RSS: &str = "scale: agent RSS";
pub const CPU_AT_REST: &str = "scale: agent CPU at rest, all pods";
pub const ADOPTION: &str = "scale: restart, all ready again";
pub const RATE_ONE: &str = "scale: connect rate, 1 pod";
pub const RATE_ALL: &str = "scale: connect rate, all pods";
pub const EBPF_ONE: &str = "scale: eBPF µs per connection, 1 pod";
pub const EBPF_ALL: &str = "scale: eBPF µs per connection, all pods";

/// How long the workload waits for every pod to be ready before it gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Pods with nothing in them but a network namespace and a cgroup, removed on drop.
struct BarePods {
    netns: Vec<String>,
    cgroups: Vec<PathBuf>,
}

impl BarePods {
    fn new(node: &Node, n: usize) -> Result<Self> {
        let mut pods = Self {
            netns: Vec::new(),
            cgroups: Vec::new(),
        };
        // One `ip` process for all the namespaces, not one each.
        let mut batch = String::new();
        for i in 0..n {
            let ns = format!("{}-b{i}", node.id);
            batch.push_str(&format!("netns add {ns}\n"));
            pods.netns.push(ns);
        }
        ip_batch(&batch)?;
        for i in 0..n {
            let cgroup = node.cgroup_root.join(format!("b{i}"));
            fs::create_dir_all(&cgroup)
                .with_context(|| format!("creating {}", cgroup.display()))?;
            pods.cgroups.push(cgroup);
        }
        Ok(pods)
    }

    fn spec(&self, i: usize) -> String {
        format!(
            "name: test/b{i}\ncgroup: {}\nnetns: /run/netns/{}\nips: [10.99.{}.{}]\nargs: {}\n",
            self.cgroups[i].display(),
            self.netns[i],
            i / 256,
            i % 256,
            serde_json::to_string(INJECTOR_DEFAULT_ARGS).unwrap_or_default()
        )
    }
}

impl Drop for BarePods {
    fn drop(&mut self) {
        let batch: String = self
            .netns
            .iter()
            .map(|ns| format!("netns del {ns}\n"))
            .collect();
        let _ = ip_batch(&batch);
        for cgroup in &self.cgroups {
            let _ = fs::remove_dir(cgroup);
        }
    }
}

fn ip_batch(batch: &str) -> Result<()> {
    let file = std::env::temp_dir().join(format!("mst-bench-ip-{}", std::process::id()));
    fs::write(&file, batch)?;
    let out = cmd::host("ip", &["-batch", file.to_str().unwrap_or_default()]);
    let _ = fs::remove_file(&file);
    out.map(drop)
}

/// The pods in the agent's status file (none while it has none published).
fn published_pods(agent: &Agent) -> Vec<Value> {
    fs::read(&agent.status_file)
        .ok()
        .and_then(|text| serde_json::from_slice::<Value>(&text).ok())
        .and_then(|mut doc| doc["pods"].as_array_mut().map(std::mem::take))
        .unwrap_or_default()
}

/// Pods the agent reports `ready` in its status file.
fn ready_pods(agent: &Agent) -> usize {
    published_pods(agent)
        .iter()
        .filter(|p| p["state"] == "ready")
        .count()
}

/// Pods the agent lists in its status file, whatever their state.
fn listed_pods(agent: &Agent) -> usize {
    published_pods(agent).len()
}

/// Waits until `n` pods are ready; the time since `since`.
fn all_ready(agent: &Agent, n: usize, since: Instant) -> Result<Duration> {
    loop {
        if ready_pods(agent) >= n {
            return Ok(since.elapsed());
        }
        ensure!(
            since.elapsed() < READY_TIMEOUT,
            "{} of {n} pods ready after {READY_TIMEOUT:?}",
            ready_pods(agent)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How many times a SIGKILLed agent is replaced at scale: the row's median is the goal's.
const RESTARTS: usize = 3;

/// The real pod's churn, recorded under `rate` and `ebpf`.
fn churn_row(
    s: &Settings,
    r: &mut Results,
    real: &meshsteer_tests::Pod,
    pins: &Pins,
    (rate, ebpf): (&str, &str),
    rep: usize,
) -> Result<()> {
    let c = measured_churn(s, real, pins)?;
    r.add(rate, "conn/s", true, Mode::Meshsteer, rep, c.rate);
    r.add(ebpf, "µs", false, Mode::Meshsteer, rep, c.ebpf_us_per_conn);
    Ok(())
}

/// Runs in the order one pod, all pods, restarts, all pods, one pod again: each ratio of the
/// goals compares medians taken on both sides of the same stretch of time, so a machine that
/// slows down or speeds up meanwhile (these are shared) moves both alike.
pub fn run(s: &Settings, r: &mut Results) -> Result<()> {
    let n = s.pods.max(2);
    let mut node = Node::new()?;
    node.start_world()?;
    let max_pods = n.max(16).to_string();
    let mut agent = Agent::start_with(&node, &["--max-pods", &max_pods])?;
    let pins = Pins::new(&agent.bpffs_dir);
    // The agent loads the trampolines of the slots pods will take in the background: done
    // before anything is measured, so that no measurement shares the CPU with it.
    let pool = meshsteer::inspect::preloaded_trampolines(n.max(16) as u32) as usize;
    agent.wait_until(READY_TIMEOUT, "the preloaded sk_lookup trampolines", |a| {
        a.trampoline_slots().len() >= pool
    })?;
    let _stats = run_stats_on()?;

    // One real pod with a stand-in proxy: its connections are what the scale may slow down.
    let mut real = node.add_pod("s0")?;
    real.keep(start_listener_on(&real.place(PROXY.0, PROXY.1), &[15001])?);
    agent.enrol(&real, INJECTOR_DEFAULT_ARGS)?;
    churn_row(s, r, &real, &pins, (RATE_ONE, EBPF_ONE), 0)?;

    let bare = BarePods::new(&node, n - 1)?;
    let start = Instant::now();
    for i in 0..n - 1 {
        agent.write_spec(&format!("b{i}"), &bare.spec(i))?;
    }
    let written = start.elapsed();
    let ready = all_ready(&agent, n, start)?;
    eprintln!(
        "  {n} pods: specs written in {:.2} s, all ready {:.2} s after the first",
        written.as_secs_f64(),
        ready.as_secs_f64()
    );
    r.add(READY, "s", false, Mode::Meshsteer, 0, ready.as_secs_f64());
    r.add(
        RSS,
        "MiB",
        false,
        Mode::Meshsteer,
        0,
        agent_rss_mib(&agent)?,
    );
    // What the pods cost the agent when nothing happens: its polls, nothing else.
    r.add(
        CPU_AT_REST,
        "% of a CPU",
        false,
        Mode::Meshsteer,
        0,
        agent_cpu_at_rest(&agent, AT_REST_SECS)?,
    );
    churn_row(s, r, &real, &pins, (RATE_ALL, EBPF_ALL), 0)?;

    for rep in 0..RESTARTS {
        let start = Instant::now();
        agent.restart(libc::SIGKILL)?;
        let adopted = all_ready(&agent, n, start)?;
        r.add(
            ADOPTION,
            "s",
            false,
            Mode::Meshsteer,
            rep,
            adopted.as_secs_f64(),
        );
    }
    churn_row(s, r, &real, &pins, (RATE_ALL, EBPF_ALL), 1)?;

    // The bare pods leave the agent (their specs removed) before the one pod runs alone again.
    for i in 0..n - 1 {
        agent.remove_spec(&format!("b{i}"))?;
    }
    agent.wait_until(READY_TIMEOUT, "the bare pods to leave the agent", |a| {
        listed_pods(a) == 1
    })?;
    churn_row(s, r, &real, &pins, (RATE_ONE, EBPF_ONE), 1)?;

    // The agent (uninstalled on drop) before the pods it captures.
    drop(agent);
    drop(bare);
    Ok(())
}
