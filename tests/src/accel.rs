//! Socket-level acceleration in the tests and the benchmark: pods enrolled with
//! `accelerate: true|false`, the `mst-stream` helper, and what the datapath reports.
use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use meshsteer::inspect::Pins;
use serde_json::Value;

use crate::{
    Agent, Pod,
    cmd::{self, Place},
    topology::probe_bin,
};

/// The pod spec with acceleration set explicitly.
pub fn spec(pod: &Pod, args: &str, accelerate: bool) -> String {
    format!("{}accelerate: {accelerate}\n", pod.spec(args))
}

/// Enrols `pod` with `args` and acceleration on or off, and waits until it is ready.
pub fn enrol(agent: &Agent, pod: &Pod, args: &str, accelerate: bool) -> Result<()> {
    agent.write_spec(&pod.name, &spec(pod, args, accelerate))?;
    // Ready with the asked-for acceleration: a re-enrolled pod is ready before the change.
    agent.wait_pod(&format!("test/{}", pod.name), |p| {
        p["state"] == "ready" && p["accelerate"] == accelerate
    })
}

/// The `mst-stream` binary, beside `mst-probe`.
pub fn stream_bin() -> String {
    Path::new(probe_bin())
        .with_file_name("mst-stream")
        .to_string_lossy()
        .into_owned()
}

/// Runs `mst-stream run SCENARIO DST ARGS...` at `place` and returns its report.
pub fn stream(place: &Place<'_>, scenario: &str, dst: &str, args: &[&str]) -> Result<Value> {
    let mut full = vec!["run", scenario, dst];
    full.extend_from_slice(args);
    let out = cmd::command(place, &stream_bin(), &full)?
        .output()
        .with_context(|| format!("running mst-stream {full:?}"))?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "mst-stream {full:?} printed no report: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Sockets in `MS_SOCKS` now (its idle size is 0).
pub fn socks_entries(agent: &Agent) -> Result<usize> {
    meshsteer::inspect::open_sockets(&Pins::new(&agent.bpffs_dir))
}

/// Waits until `MS_SOCKS` holds `n` sockets; the last count seen if it never does.
pub fn wait_socks(agent: &Agent, n: usize, limit: Duration) -> Result<usize> {
    let start = std::time::Instant::now();
    loop {
        let now = socks_entries(agent)?;
        if now == n || start.elapsed() > limit {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pod's counter `key` from `meshsteer status --json` (0 if absent).
pub fn counter(agent: &Agent, pod: &Pod, key: &str) -> Result<u64> {
    let status = agent.status()?;
    let name = format!("test/{}", pod.name);
    Ok(status["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["name"] == name.as_str()))
        .and_then(|p| p["counters"][key].as_u64())
        .unwrap_or(0))
}

/// A TCP sysctl's largest value (`tcp_rmem`, `tcp_wmem`: min default max) in `place`'s
/// network namespace.
pub fn tcp_buffer_max(place: &Place<'_>, name: &str) -> Result<u64> {
    let out = cmd::run(place, "sysctl", &["-n", &format!("net.ipv4.{name}")])?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("net.ipv4.{name} has no maximum"))
}
