//! Observability: `/metrics` counts what the datapath decided, per pod and rule; `/healthz`
//! and `/readyz` answer; `meshsteer trace` streams each decision and gives tracing back when
//! it stops; JSON logs carry the pod's span.
use std::{
    fs,
    io::Write,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use meshsteer::inspect::Pins;
use meshsteer_tests::{Pod, Testbed, World};
use serde_json::Value;

const WORLD: &str = "10.200.0.1:80";

/// A pod enrolled with the injector's defaults, its "proxy" listening on every probe port, and
/// a peer pod (not enrolled) to connect to it from.
struct Setup {
    // Dropped in this order: pods before the agent and node they live on.
    pod: Pod,
    peer: Pod,
    bed: Testbed,
}

fn setup(agent_args: &[&str]) -> Result<Setup> {
    let mut bed = Testbed::start(World::Listening, agent_args)?;
    let pod = bed.enrolled_pod("a")?;
    let peer = bed.node.add_pod("b")?;
    Ok(Setup { pod, peer, bed })
}

impl Setup {
    /// One connection of each kind: redirected (app), passed (proxy, R11), steered (inbound).
    fn connect_each_way(&self) -> Result<()> {
        let v = self.pod.probe(1000, 1000, WORLD, &[])?;
        assert_eq!(v["listener"], 15001, "{v}");
        let v = self.pod.probe(1337, 1337, WORLD, &[])?;
        assert_eq!(v["listener"], 80, "{v}");
        let v = self.peer.probe(1000, 1000, &self.inbound_dst(), &[])?;
        assert_eq!(v["listener"], 15006, "{v}");
        Ok(())
    }

    fn inbound_dst(&self) -> String {
        format!("{}:8080", self.pod.ip4)
    }
}

/// The value of one series (`name{labels}` exactly as exposed) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_and_probes_follow_the_datapath() -> Result<()> {
    let s = setup(&["--log-format", "json"])?;
    assert_eq!(s.bed.agent.http_get("/healthz")?.0, 200);
    let (code, body) = s.bed.agent.http_get("/readyz")?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(s.bed.agent.http_get("/nope")?.0, 404);
    s.connect_each_way()?;

    let (code, text) = s.bed.agent.http_get("/metrics")?;
    assert_eq!(code, 200, "{text}");
    let pod = r#"pod="test/a""#;
    for (series, want) in [
        (
            format!(
                r#"meshsteer_outbound_connections_total{{{pod},rule="included_cidr",action="redirected"}}"#
            ),
            1.0,
        ),
        (
            format!(
                r#"meshsteer_outbound_connections_total{{{pod},rule="proxy_owner",action="passed"}}"#
            ),
            1.0,
        ),
        (
            format!(
                r#"meshsteer_inbound_connections_total{{{pod},rule="captured",action="steered"}}"#
            ),
            1.0,
        ),
        (
            format!(r#"meshsteer_inbound_no_listener_total{{{pod}}}"#),
            0.0,
        ),
        (r#"meshsteer_pods{state="ready"}"#.to_string(), 1.0),
        (r#"meshsteer_pods{state="error"}"#.to_string(), 0.0),
    ] {
        assert_eq!(sample(&text, &series), Some(want), "{series} in:\n{text}");
    }
    // The proxy asked SO_ORIGINAL_DST on the redirected connection.
    let hits = format!(r#"meshsteer_original_dst_lookups_total{{{pod},result="hit"}}"#);
    assert!(sample(&text, &hits).is_some_and(|v| v >= 1.0), "{text}");
    assert!(
        sample(&text, "meshsteer_orig_dst_entries").is_some(),
        "{text}"
    );

    // `status` shows the same counters.
    let status = s.bed.agent.status()?;
    let counters = &status["pods"][0]["counters"];
    assert_eq!(counters["outbound_included_cidr"], 1, "{status}");
    assert_eq!(counters["inbound_captured"], 1, "{status}");

    // JSON logs: the pod's lines carry its span.
    let log = fs::read_to_string(s.bed.agent.log_file())?;
    let enrolled = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|l| l["fields"]["message"] == "ready" && l["span"]["pod"] == "test/a");
    assert!(enrolled, "no `ready` line in the pod's span:\n{log}");
    Ok(())
}

#[test]
fn trace_streams_decisions_and_stops_cleanly() -> Result<()> {
    let s = setup(&[])?;
    let pins = Pins::new(&s.bed.agent.bpffs_dir);
    let out = s.bed.agent.log_file().with_file_name("trace.out");
    let mut trace = s.bed.agent.trace(&["--json", "--pod", "test/a"], &out)?;
    s.bed
        .agent
        .wait_until(Duration::from_secs(10), "trace to turn tracing on", |_| {
            meshsteer::inspect::current_lease(&pins).is_ok_and(|l| l.deadline_ns != 0)
        })?;
    s.connect_each_way()?;

    // Wait for the three events the test checks, not for a count: other decisions (the
    // redirected connection's own loopback lookup) may come first.
    let wanted = [
        ("included_cidr", "redirected"),
        ("proxy_owner", "passed"),
        ("captured", "steered"),
    ];
    let lines = wait_for_events(&out, &wanted)?;
    trace.kill(libc::SIGINT);
    let exit = trace.wait().context("reaping trace")?;
    assert!(exit.success(), "trace exited with {exit}");
    assert_eq!(
        meshsteer::inspect::current_lease(&pins)?.deadline_ns,
        0,
        "tracing still on after trace stopped"
    );

    // A trace that dies without giving tracing back does not block the next one.
    let mut crashed = s.bed.agent.trace(&[], &out.with_file_name("crashed.out"))?;
    s.bed
        .agent
        .wait_until(Duration::from_secs(10), "a second trace", |_| {
            meshsteer::inspect::current_lease(&pins).is_ok_and(|l| l.owner_pid == crashed.pid())
        })?;
    crashed.kill(libc::SIGKILL);
    crashed.wait();
    let mut next = s.bed.agent.trace(&[], &out.with_file_name("next.out"))?;
    s.bed.agent.wait_until(
        Duration::from_secs(10),
        "a trace after a crashed one",
        |_| meshsteer::inspect::current_lease(&pins).is_ok_and(|l| l.owner_pid == next.pid()),
    )?;
    next.kill(libc::SIGTERM);
    assert!(next.wait().is_some_and(|e| e.success()));
    assert_eq!(meshsteer::inspect::current_lease(&pins)?.deadline_ns, 0);

    let find = |rule: &str, action: &str| -> Result<&Value> {
        lines
            .iter()
            .find(|l| l["rule"] == rule && l["action"] == action)
            .with_context(|| format!("no {rule}/{action} event in {lines:#?}"))
    };
    let redirected = find("included_cidr", "redirected")?;
    assert_eq!(redirected["pod"], "test/a");
    assert_eq!(redirected["direction"], "outbound");
    assert_eq!(redirected["uid"], 1000);
    assert_eq!(redirected["dst"], WORLD);
    assert_eq!(redirected["landed"], "127.0.0.1:15001");
    let passed = find("proxy_owner", "passed")?;
    assert_eq!(passed["uid"], 1337);
    assert_eq!(passed["landed"], WORLD);
    let steered = find("captured", "steered")?;
    assert_eq!(steered["direction"], "inbound");
    assert_eq!(steered["dst"], s.inbound_dst());
    assert_eq!(steered["landed"], format!("{}:15006", s.pod.ip4));
    assert!(
        steered["src"]
            .as_str()
            .is_some_and(|src| src.starts_with(&format!("{}:", s.peer.ip4))),
        "{steered}"
    );
    Ok(())
}

/// The JSON lines of `path` once each `(rule, action)` of `wanted` is among them (the trace's
/// banner is skipped).
fn wait_for_events(path: &std::path::Path, wanted: &[(&str, &str)]) -> Result<Vec<Value>> {
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let seen = |&(rule, action): &(&str, &str)| {
            lines
                .iter()
                .any(|l| l["rule"] == rule && l["action"] == action)
        };
        if wanted.iter().all(seen) {
            return Ok(lines);
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("after 10s the trace lacks one of {wanted:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The probes stay answered while a thousand connections idle, dribble their request heads
/// (slowloris) or ask for /metrics and never read: the kubelet never restarts an agent for
/// what a client of its port does.
#[test]
fn probes_are_answered_under_a_slowloris_burst() -> Result<()> {
    let bed = Testbed::start(World::Absent, &[])?;
    let addr = bed.agent.metrics_addr()?;
    let mut held = Vec::new();
    for i in 0..1000 {
        let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        match i % 3 {
            0 => {}
            1 => {
                let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ");
            }
            _ => {
                let _ = c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
            }
        }
        held.push(c);
    }
    for _ in 0..20 {
        let start = Instant::now();
        let (code, body) = bed.agent.http_get("/healthz")?;
        assert_eq!(code, 200, "{body}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
    let (code, _) = bed.agent.http_get("/readyz")?;
    assert_eq!(code, 200);
    drop(held);
    Ok(())
}
