//! Socket-level acceleration, correctness first. With it on, every byte arrives exactly and
//! in order whatever the write size, the API (write, writev, sendfile, splice), the number of
//! connections and the way they end (half-close either way, reset); a slow reader costs no
//! more queued memory than the normal socket buffer limits allow; dual-stack sockets carrying
//! IPv4 are accelerated; and sockets leave `MS_SOCKS` when they close. With it off (the
//! default), nothing is accelerated and blocking reads behave as on plain TCP.
//!
//! The client and the servers run `mst-stream` inside one enrolled pod:
//! - the app (uid 1000) connects to an outside address and is captured to the sidecar's 15001
//!   (`app → sidecar` over loopback);
//! - the sidecar (uid 1337) connects from 127.0.0.6 to the app on the pod's address
//!   (`sidecar → app`, inbound passthrough).
//!
//! Each report says, per connection, whether its payload skipped TCP (`bypass_conns`) or went
//! through it (`tcp_conns`, from TCP_INFO's byte counters): a test cannot pass by silently not
//! accelerating.
use std::time::Duration;

use anyhow::{Context, Result};
use meshsteer::inspect::INJECTOR_DEFAULT_ARGS;
use meshsteer_tests::{
    Agent, Node, Pod, Testbed, World,
    accel::{self, stream, stream_bin},
    apps,
    cmd::{self, Proc},
};
use serde_json::{Value, json};

const APP: (u32, u32) = (1000, 1000);
const PROXY: (u32, u32) = (1337, 1337);
/// Captured to the sidecar's 15001 (an address outside the pod).
const OUTSIDE: &str = "10.200.0.1:80";

/// One enrolled pod with the sidecar's and the app's servers. Field order is drop order.
struct Bed {
    pod: Pod,
    agent: Agent,
    node: Node,
}

impl Bed {
    /// `accelerate`: the pod spec's field (None: not given, the agent's default applies).
    fn new(accelerate: Option<bool>, agent_args: &[&str]) -> Result<Self> {
        let Testbed { mut node, agent } = Testbed::start(World::Absent, agent_args)?;
        let mut pod = node.add_pod("a")?;
        match accelerate {
            Some(on) => accel::enrol(&agent, &pod, INJECTOR_DEFAULT_ARGS, on)?,
            None => agent.enrol(&pod, INJECTOR_DEFAULT_ARGS)?,
        }
        start_servers(&mut pod)?;
        Ok(Self { pod, agent, node })
    }

    fn accelerated() -> Result<Self> {
        Self::new(Some(true), &[])
    }

    /// The app's side: captured into the sidecar.
    fn app(&self, scenario: &str, args: &[&str]) -> Result<Value> {
        app(&self.pod, scenario, args)
    }

    /// The sidecar's side: from 127.0.0.6 to the app at the pod's address.
    fn sidecar(&self, scenario: &str, args: &[&str]) -> Result<Value> {
        let mut full = vec!["--bind", "127.0.0.6"];
        full.extend_from_slice(args);
        let dst = format!("{}:8080", self.pod.ip4);
        stream(&self.pod.place(PROXY.0, PROXY.1), scenario, &dst, &full)
    }

    fn counter(&self, key: &str) -> Result<u64> {
        accel::counter(&self.agent, &self.pod, key)
    }

    /// Another pod on the same node, enrolled with `accelerate`, with the same servers. The
    /// caller drops it before the bed.
    fn add_pod(&mut self, name: &str, accelerate: bool) -> Result<Pod> {
        let mut pod = self.node.add_pod(name)?;
        accel::enrol(&self.agent, &pod, INJECTOR_DEFAULT_ARGS, accelerate)?;
        start_servers(&mut pod)?;
        Ok(pod)
    }

    /// Every socket has left `MS_SOCKS`, and the servers never saw EAGAIN.
    fn assert_idle(&self) -> Result<()> {
        let left = accel::wait_socks(&self.agent, 0, Duration::from_secs(5))?;
        assert_eq!(left, 0, "MS_SOCKS still holds {left} sockets");
        for r in [self.app("stats", &[])?, self.sidecar("stats", &[])?] {
            assert_eq!(r["server_eagain_total"], 0, "{r}");
        }
        Ok(())
    }
}

fn start_servers(pod: &mut Pod) -> Result<()> {
    serve(pod, PROXY, &["0.0.0.0:15001", "[::]:15002"])?;
    let app = format!("{}:8080", pod.ip4);
    serve(pod, APP, &[&app])
}

fn serve(pod: &mut Pod, (uid, gid): (u32, u32), addrs: &[&str]) -> Result<()> {
    let mut args = vec!["serve"];
    args.extend_from_slice(addrs);
    let p = Proc::spawn_ready(&pod.place(uid, gid), &stream_bin(), &args)?;
    pod.keep(p);
    Ok(())
}

fn app(pod: &Pod, scenario: &str, args: &[&str]) -> Result<Value> {
    stream(&pod.place(APP.0, APP.1), scenario, OUTSIDE, args)
}

/// Every byte arrived exactly, with no EAGAIN (but the documented kind), and no connection
/// went all through TCP (one whose reader fell behind by more than the limit goes on through
/// TCP: `mixed_conns`).
fn assert_exact_and_accelerated(r: &Value) {
    assert_exact(r);
    assert_eq!(r["tcp_conns"], 0, "a connection was not accelerated: {r}");
}

fn assert_exact(r: &Value) {
    assert_eq!(r["failures"], json!([]), "{r}");
    assert_eq!(r["eagain"], 0, "{r}");
    assert!(r["conns"].as_u64().is_some_and(|n| n > 0), "{r}");
}

#[test]
fn every_write_size_arrives_exactly_both_paths() -> Result<()> {
    let bed = Bed::accelerated()?;
    let app = bed.app("sizes", &[])?;
    assert_exact_and_accelerated(&app);
    let sidecar = bed.sidecar("sizes", &[])?;
    assert_exact_and_accelerated(&sidecar);
    eprintln!("sizes: app {app}\nsizes: sidecar {sidecar}");
    // Two sockets per connection, 28 connections per path.
    assert_eq!(bed.counter("accel_sockets")?, 2 * 2 * 28);
    bed.assert_idle()
}

#[test]
fn writev_and_many_concurrent_connections() -> Result<()> {
    let bed = Bed::accelerated()?;
    assert_exact_and_accelerated(&bed.app("writev", &["8388608"])?);
    let r = bed.app("concurrent", &["64", "1048576"])?;
    assert_exact_and_accelerated(&r);
    assert_eq!(r["conns"], 64, "{r}");
    bed.assert_idle()
}

/// shutdown(SHUT_WR) either way: the data and then EOF arrive, with every byte exact. A
/// blocking read after the reader's *own* shutdown may fail with EAGAIN on this kernel
/// (`eagain_after_shutdown`, reported; see the README): any other EAGAIN fails the test.
#[test]
fn half_close_either_way() -> Result<()> {
    let bed = Bed::accelerated()?;
    let app = bed.app("halfclose", &["300", "1000"])?;
    let sidecar = bed.sidecar("halfclose", &["300", "100000"])?;
    eprintln!("half-close: app {app}\nhalf-close: sidecar {sidecar}");
    assert_exact_and_accelerated(&app);
    assert_exact_and_accelerated(&sidecar);
    bed.assert_idle()
}

/// recv(MSG_WAITALL) on an accelerated socket: every byte arrives exactly; how much the first
/// call returns is reported (on this kernel it returns what is queued: see the README).
#[test]
fn msg_waitall_readers_get_every_byte() -> Result<()> {
    let bed = Bed::accelerated()?;
    let r = bed.app("waitall", &["100000", "4"])?;
    eprintln!("MSG_WAITALL, accelerated: {r}");
    assert_exact_and_accelerated(&r);
    bed.assert_idle()
}

/// Resets from either side end the transfer at once (no hang, the watchdog would say so),
/// and the server goes on serving.
#[test]
fn resets_end_transfers_promptly() -> Result<()> {
    let bed = Bed::accelerated()?;
    let r = bed.app("abort", &["--timeout", "30"])?;
    eprintln!("abort: {r}");
    assert_exact_and_accelerated(&r);
    assert!(
        r["server_reset"]
            .as_str()
            .is_some_and(|s| s.contains("ConnectionReset") || s.contains("BrokenPipe")),
        "{r}"
    );
    bed.assert_idle()
}

/// A reader asleep for 1.5 s while the writer pushes 64 MiB: the writer must block once the
/// normal socket buffer limits are reached (net.ipv4.tcp_wmem + tcp_rmem maxima), then
/// everything arrives. Measured with and without acceleration, in one pod each. The
/// accelerated connection falls back to TCP midway, so its reader finds bytes in two queues:
/// it is also read as edge-triggered event loops read (a short read taken for an empty
/// socket), which must not stall on the bytes left in the second queue.
#[test]
fn slow_reader_is_bounded_and_loses_nothing() -> Result<()> {
    let mut bed = Bed::accelerated()?;
    let plain = bed.add_pod("b", false)?;
    let place = bed.pod.place(0, 0);
    let limit =
        accel::tcp_buffer_max(&place, "tcp_wmem")? + accel::tcp_buffer_max(&place, "tcp_rmem")?;
    let readers = [
        ("accelerated", &bed.pod, "0"),
        ("accelerated, edge-triggered reader", &bed.pod, "1"),
        ("normal path", &plain, "0"),
    ];
    for (what, pod, edge_triggered) in readers {
        let r = app(pod, "slow", &["67108864", "1500", edge_triggered])?;
        eprintln!("slow reader, {what}: {r} (limit {limit})");
        assert_exact(&r);
        let asleep = r["written_while_asleep"].as_u64().unwrap_or(u64::MAX);
        assert!(
            asleep <= limit,
            "{what}: the writer got {asleep} bytes queued while the reader slept (limit {limit})"
        );
    }
    // Each accelerated connection hit the bound and went on through TCP.
    assert_eq!(bed.counter("accel_backpressure")?, 2);
    bed.assert_idle()
}

#[test]
fn sendfile_and_splice_both_ways() -> Result<()> {
    let bed = Bed::accelerated()?;
    for how in ["sendfile", "splice"] {
        let r = bed.app(how, &["8388608"])?;
        eprintln!("{how}: {r}");
        assert_exact_and_accelerated(&r);
    }
    bed.assert_idle()
}

/// AF_INET6 sockets carrying IPv4 (`::ffff:a.b.c.d`) are keyed like IPv4 ones and
/// accelerated: to a dual-stack `[::]` listener (both sides v4-mapped), to an AF_INET listener,
/// and captured into the sidecar.
#[test]
fn dual_stack_sockets_with_ipv4_mapped_addresses() -> Result<()> {
    let bed = Bed::accelerated()?;
    let place = bed.pod.place(APP.0, APP.1);
    for dst in ["127.0.0.1:15002", "127.0.0.1:15001", OUTSIDE] {
        let r = stream(&place, "sizes", dst, &["--v6", "1048576"])?;
        eprintln!("v4-mapped to {dst}: {r}");
        assert_exact_and_accelerated(&r);
    }
    bed.assert_idle()
}

/// An open accelerated connection holds its two sockets in `MS_SOCKS`; closing it frees them.
#[test]
fn teardown_frees_sockhash_entries() -> Result<()> {
    let bed = Bed::accelerated()?;
    assert_eq!(accel::socks_entries(&bed.agent)?, 0);
    // A slow transfer keeps one connection open for a while.
    let place = bed.pod.place(APP.0, APP.1);
    let args = ["run", "slow", OUTSIDE, "1048576", "1500"];
    let slow = cmd::command(&place, &stream_bin(), &args)?
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting a slow transfer")?;
    let open = accel::wait_socks(&bed.agent, 2, Duration::from_secs(5))?;
    let out = slow.wait_with_output()?;
    assert_eq!(open, 2, "an open connection should hold its two sockets");
    let r: Value = serde_json::from_slice(&out.stdout)?;
    assert_exact_and_accelerated(&r);
    // The accepting side took its pending view, and the count with it: accepts elsewhere on
    // the node skip the lookup again.
    let pins = meshsteer::inspect::Pins::new(&bed.agent.bpffs_dir);
    assert_eq!(meshsteer::inspect::pending_count(&pins)?, 0);
    bed.assert_idle()
}

/// Random sizes, directions, echoes, early closes and resets on 6 threads for 8 s, every
/// completed transfer checked end to end; then the map is back to idle.
#[test]
fn stress_random_sizes_and_closes() -> Result<()> {
    let bed = Bed::accelerated()?;
    let r = bed.app("stress", &["8", "7", "6", "--timeout", "60"])?;
    eprintln!("stress: {r}");
    assert_exact(&r);
    assert!(r["ops"].as_u64().is_some_and(|n| n > 50), "{r}");
    assert!(
        r["bypass_conns"].as_u64() >= r["conns"].as_u64().map(|n| n * 9 / 10),
        "most connections should skip TCP: {r}"
    );
    bed.assert_idle()
}

/// A connection to another pod on the node is never accelerated (its sockets live in two
/// network namespaces), and is counted.
#[test]
fn connections_to_other_pods_stay_on_the_normal_path() -> Result<()> {
    let mut bed = Bed::accelerated()?;
    let mut other = bed.add_pod("b", true)?;
    // The other pod's sidecar takes what arrives on its inbound port.
    serve(&mut other, PROXY, &["0.0.0.0:15006"])?;
    // The sidecar's own traffic is not captured: straight to the other pod.
    let dst = format!("{}:15006", other.ip4);
    let r = stream(&bed.pod.place(PROXY.0, PROXY.1), "sizes", &dst, &["65536"])?;
    assert_exact(&r);
    assert_eq!(r["tcp_conns"], r["conns"], "{r}");
    assert_eq!(
        bed.counter("accel_cross_pod")?,
        r["conns"].as_u64().unwrap_or(0)
    );
    assert_eq!(accel::counter(&bed.agent, &other, "accel_sockets")?, 0);
    bed.assert_idle()
}

/// The default (no `accelerate` in the spec, no `--accelerate on`): nothing enters
/// `MS_SOCKS`, and blocking reads keep TCP's contract: no EAGAIN after either side's
/// half-close, MSG_WAITALL waits for everything.
#[test]
fn default_path_keeps_blocking_semantics() -> Result<()> {
    let bed = Bed::new(None, &[])?;
    let r = bed.app("halfclose", &["300", "1000"])?;
    assert_exact(&r);
    assert_eq!(r["eagain_after_shutdown"], 0, "{r}");
    assert_eq!(r["tcp_conns"], r["conns"], "{r}");
    let w = bed.app("waitall", &["100000", "4"])?;
    assert_exact(&w);
    assert_eq!(w["waitall_returned"], 100000, "{w}");
    assert_eq!(bed.counter("accel_sockets")?, 0);
    bed.assert_idle()
}

/// `--accelerate on` accelerates pods that do not say; `accelerate: false` still wins.
#[test]
fn node_switch_and_pod_override() -> Result<()> {
    let bed = Bed::new(None, &["--accelerate", "on"])?;
    assert_exact_and_accelerated(&bed.app("sizes", &["4096"])?);
    accel::enrol(&bed.agent, &bed.pod, INJECTOR_DEFAULT_ARGS, false)?;
    let before = bed.counter("accel_sockets")?;
    let r = bed.app("sizes", &["4096"])?;
    assert_exact(&r);
    assert_eq!(r["tcp_conns"], r["conns"], "{r}");
    assert_eq!(bed.counter("accel_sockets")?, before);
    bed.assert_idle()
}

/// A restarted agent leaves accelerated connections running, byte-exact, and accelerates new
/// ones through the pinned sockhash and its (re-attached) sk_msg program.
#[test]
fn agent_restart_keeps_and_reattaches() -> Result<()> {
    let mut bed = Bed::accelerated()?;
    let place = bed.pod.place(APP.0, APP.1);
    let args = ["run", "slow", OUTSIDE, "16777216", "1500"];
    let slow = cmd::command(&place, &stream_bin(), &args)?
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    accel::wait_socks(&bed.agent, 2, Duration::from_secs(5))?;
    bed.agent.restart(libc::SIGKILL)?;
    bed.agent
        .wait_state(&format!("test/{}", bed.pod.name), |s| s == "ready")?;
    let r: Value = serde_json::from_slice(&slow.wait_with_output()?.stdout)?;
    assert_exact(&r);
    assert_exact_and_accelerated(&bed.app("sizes", &["65536"])?);
    bed.assert_idle()
}

/// Real event-driven programs on both accelerated hops: wrk (app) → HAProxy (client sidecar)
/// → the server pod's HAProxy (inbound) → nginx from 127.0.0.6, as in the benchmark. Every
/// request is answered, on one keep-alive connection and on 32, and both hops were accelerated.
#[test]
fn real_proxies_answer_every_request() -> Result<()> {
    let Testbed { mut node, agent } = Testbed::start(World::Absent, &[])?;
    let scratch = apps::Scratch::new("accel-e2e")?;
    let mut client = node.add_pod("c")?;
    let mut server = node.add_pod("s")?;
    for pod in [&client, &server] {
        accel::enrol(&agent, pod, INJECTOR_DEFAULT_ARGS, true)?;
    }
    server.keep(apps::start_nginx(&server, &scratch, APP.0, APP.1)?);
    for pod in [&mut client, &mut server] {
        let sidecar = apps::start_sidecar(pod, &scratch, PROXY.0, PROXY.1)?;
        pod.keep(sidecar);
    }
    let url = format!("http://{}:80/", server.ip4);
    for conns in ["1", "32", "1"] {
        let args = ["-t1", "-c", conns, "-d", "1s", &url];
        let out = cmd::run(&client.place(APP.0, APP.1), "wrk", &args)?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains(" 0 requests in")
                && !text.contains("Non-2xx")
                && !text.contains("errors"),
            "wrk -c {conns}:\n{text}"
        );
    }
    for pod in [&client, &server] {
        assert!(
            accel::counter(&agent, pod, "accel_sockets")? > 0,
            "{}",
            pod.name
        );
    }
    Ok(())
}
