//! The agent can stop, crash or be upgraded without disruption: programs stay attached through
//! pinned links and pods stay enrolled through pinned maps while no agent runs; a new agent
//! adopts both (swapping programs atomically) and reconciles with the pod specs. Connections
//! made while no agent runs keep their original destination across the next agent's start. An
//! upgrade from the previous pin layout's agent loses nothing either.
use std::{
    thread,
    time::{Duration, Instant},
};

use meshsteer_tests::{Testbed, load::ConnectLoop, resolver, topology::late_accept_in};
use serde_json::Value;

const WORLD: &str = "10.200.0.1:80";

#[test]
fn sigkill_loses_nothing_and_restart_reconciles() -> anyhow::Result<()> {
    let mut bed = Testbed::new()?;
    let pod = bed.enrolled_pod("a")?;
    let a_netns = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&pod.netns)?);
    assert_eq!(meshsteer::inspect::netns_links(a_netns)?.len(), 1);
    // A pod whose proxy is slow to accept (it has no other listener on 15001).
    let slow = bed.node.add_pod("c")?;
    let agent = &mut bed.agent;
    agent.enrol(&slow, meshsteer::inspect::INJECTOR_DEFAULT_ARGS)?;

    // New connections are attempted continuously from the pod's app while the agent is
    // killed and while none runs.
    let load = ConnectLoop::start(&pod.place(1000, 1000), WORLD);
    thread::sleep(Duration::from_millis(200));
    agent.stop(libc::SIGKILL);
    thread::sleep(Duration::from_millis(500));
    let seen = load.stop()?;
    let captured = seen
        .iter()
        .filter(|v| v["listener"] == 15001 && v["orig_dst"] == WORLD)
        .count();
    assert_eq!(
        captured,
        seen.len(),
        "of {} connections around the crash, {captured} were captured",
        seen.len()
    );

    // Specs changed while no agent ran are picked up by the next one within a second.
    let mut other = bed.node.add_pod("b")?;
    other.start_listener()?;
    agent.write_spec("b", &other.spec(meshsteer::inspect::INJECTOR_DEFAULT_ARGS))?;
    agent.remove_spec("a")?;
    // A connection made while no agent runs, whose proxy accepts it only after the next agent
    // has swapped its programs in: it still arrives whole, and the proxy learns where it went.
    let late = late_accept_in(&slow, WORLD, 1500);
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    agent.restart(libc::SIGKILL)?;
    agent.wait_state("test/b", |s| s == "ready")?;
    agent.wait_until(Duration::from_secs(1), "pod a's capture to go", |_| {
        pod.probe(1000, 1000, WORLD, &[])
            .is_ok_and(|v| v["listener"] == 80)
    })?;
    let took = started.elapsed();
    eprintln!("restarted agent reconciled in {took:?}");
    assert!(took < Duration::from_secs(1), "reconcile took {took:?}");
    assert_eq!(other.probe(1000, 1000, WORLD, &[])?["listener"], 15001);
    // Pod a went while no agent ran: its sk_lookup link goes with its map entries, pin and
    // all, instead of staying attached to its namespace.
    assert_eq!(meshsteer::inspect::netns_links(a_netns)?, Vec::<u32>::new());
    let late = late.join().expect("late-accept thread")?;
    assert_eq!(
        late,
        serde_json::json!({ "listener": 15001, "orig_dst": WORLD, "payload": "hello" }),
        "a connection from across the restart"
    );
    Ok(())
}

/// A restarted agent of the same build reuses its pinned programs: every pod's links run them
/// already, so nothing is loaded or swapped. Another build's agent (here: the pinned programs
/// removed, as a new build's agent finds none of its own) puts its sk_lookup program in for
/// every pod at once (one update of `MS_SK_LOOKUP_PROG`) and swaps each pod's trampoline and
/// cgroup programs. Connections keep arriving at two pods through both restarts: none is
/// missed, and each lands on its own pod's proxy (a trampoline that named the other pod's slot
/// would find no listener in its namespace and refuse).
#[test]
fn a_restart_reuses_its_programs_and_a_new_build_swaps_them_without_a_gap() -> anyhow::Result<()> {
    use meshsteer::inspect::{Pins, cgroup_id, link_prog_id, obj_get, prog_array_entry};
    use std::os::fd::AsFd;

    let mut bed = Testbed::new()?;
    let a = bed.enrolled_pod("a")?;
    let b = bed.enrolled_pod("b")?;
    let peer = bed.node.add_pod("peer")?;
    let pins = Pins::new(&bed.agent.bpffs_dir);
    // The shared sk_lookup, then per pod its trampoline and its connect4 and sockops links.
    let programs = || -> anyhow::Result<Vec<u32>> {
        let mut ids = vec![
            prog_array_entry(obj_get(&pins.map("MS_SK_LOOKUP_PROG"))?.as_fd(), 0)?
                .unwrap_or_default(),
        ];
        for pod in [&a, &b] {
            let id = cgroup_id(&pod.cgroup)?;
            for pin in [
                pins.netns_link(id),
                pins.cgroup_link(id, "connect4"),
                pins.cgroup_link(id, "ms_sockops"),
            ] {
                ids.push(link_prog_id(obj_get(&pin)?.as_fd())?);
            }
        }
        Ok(ids)
    };
    let first = programs()?;
    assert_ne!(first[0], 0, "no shared sk_lookup program");
    assert_ne!(first[1], first[4], "pods a and b share a trampoline");

    let targets = [format!("{}:8080", a.ip4), format!("{}:8080", b.ip4)];
    let loops = targets
        .iter()
        .map(|to| ConnectLoop::start(&peer.place(1000, 1000), to))
        .collect::<Vec<_>>();
    thread::sleep(Duration::from_millis(200));
    let restart = |bed: &mut Testbed| -> anyhow::Result<()> {
        bed.agent.restart(libc::SIGKILL)?;
        for name in ["test/a", "test/b"] {
            bed.agent.wait_state(name, |s| s == "ready")?;
        }
        thread::sleep(Duration::from_millis(200));
        Ok(())
    };
    restart(&mut bed)?;
    let same_build = programs()?;
    bed.agent.stop(libc::SIGKILL);
    std::fs::remove_dir_all(pins.programs())?;
    restart(&mut bed)?;
    let new_build = programs()?;
    for (to, l) in targets.iter().zip(loops) {
        assert_all_landed(&l.stop()?, 15006, to, "connections across two restarts");
    }
    assert_eq!(
        same_build, first,
        "a restart of the same build swapped programs"
    );
    for (i, (before, after)) in first.iter().zip(&new_build).enumerate() {
        assert_ne!(
            before, after,
            "program {i} not swapped by another build: {new_build:?}"
        );
    }
    Ok(())
}

/// An upgrade from the previous pin layout's agent, built from git history: the new agent
/// adopts its pins (maps, the cgroup root's links, per-pod sk_lookup links), swaps its own
/// programs in, attaches them to each pod's cgroup, retires the root's links and the old
/// layout's directory, while connections keep being made out of a pod and into it. None escapes the proxy and none fails. A connection made under the old programs
/// whose proxy accepts it after the swap still learns its original destination.
#[test]
fn an_upgrade_from_the_previous_layout_loses_nothing() -> anyhow::Result<()> {
    use meshsteer::inspect::{Pins, cgroup_id, cgroup_links};

    let previous = meshsteer_tests::agent::previous_agent_bin()?;
    let mut node = meshsteer_tests::Node::new()?;
    node.start_world()?;
    let agent = meshsteer_tests::Agent::start_bin(&node, &previous, &[])?;
    let mut bed = Testbed { agent, node };
    let pod = bed.enrolled_pod("a")?;
    let mut slow = bed.node.add_pod("slow")?;
    bed.agent
        .enrol(&slow, meshsteer::inspect::INJECTOR_DEFAULT_ARGS)?;
    let peer = bed.node.add_pod("peer")?;
    let layout = meshsteer_common::maps::LAYOUT_VERSION;
    let old_pins = bed.agent.bpffs_dir.join(format!("v{}", layout - 1));
    assert!(
        old_pins.is_dir(),
        "the previous agent pins under {}",
        old_pins.display()
    );

    let inbound = format!("{}:8080", pod.ip4);
    let out_loop = ConnectLoop::start(&pod.place(1000, 1000), WORLD);
    let in_loop = ConnectLoop::start(&peer.place(1000, 1000), &inbound);
    let late = late_accept_in(&slow, WORLD, 2000);
    thread::sleep(Duration::from_millis(300));
    bed.agent.upgrade(libc::SIGTERM)?;
    for name in ["test/a", "test/slow"] {
        bed.agent.wait_state(name, |s| s == "ready")?;
    }
    thread::sleep(Duration::from_millis(300));
    let outs = out_loop.stop()?;
    let ins = in_loop.stop()?;

    assert_all_landed(
        &outs,
        15001,
        WORLD,
        "outbound connections across the upgrade",
    );
    assert_all_landed(
        &ins,
        15006,
        &inbound,
        "inbound connections across the upgrade",
    );
    let late = late.join().expect("late-accept thread")?;
    assert_eq!(
        late,
        serde_json::json!({ "listener": 15001, "orig_dst": WORLD, "payload": "hello" }),
        "a connection redirected by the previous layout's programs, accepted after the upgrade"
    );
    eprintln!(
        "upgrade: {} outbound and {} inbound connections, all captured",
        outs.len(),
        ins.len()
    );

    // The new layout is in place, the old one gone, and the new datapath in effect.
    assert!(!old_pins.exists(), "{} left behind", old_pins.display());
    assert!(bed.agent.bpffs_dir.join(format!("v{layout}")).is_dir());
    let status = bed.agent.pod_status("test/a").expect("listed");
    assert!(status["counters"]["orig_dst_live"].is_u64(), "{status}");
    let doc: Value = serde_json::from_slice(&std::fs::read(&bed.agent.status_file)?)?;
    assert!(doc["budget"]["origDst"].is_u64(), "{doc}");

    // Layout 6 attaches the programs to each pod's cgroup: the pods have their own links,
    // and the root's links of layout 5 are gone once every pod had its own.
    let pins = Pins::new(&bed.agent.bpffs_dir);
    for p in [&pod, &slow] {
        let id = cgroup_id(&p.cgroup)?;
        for program in [
            "sock_create",
            "connect4",
            "sendmsg4",
            "recvmsg6",
            "ms_sockops",
        ] {
            let path = pins.cgroup_link(id, program);
            assert!(path.exists(), "{} missing", path.display());
        }
        assert_eq!(cgroup_links(id)?.len(), 11, "{}", p.name);
    }
    let root_id = cgroup_id(&bed.node.cgroup_root)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cgroup_links(root_id)?.is_empty() && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        cgroup_links(root_id)?,
        Vec::<u32>::new(),
        "links left at the root"
    );
    assert!(!pins.root.join("links/connect4").exists());
    // The peer pod is not enrolled: nothing of meshsteer runs for it.
    assert_eq!(cgroup_links(cgroup_id(&peer.cgroup)?)?, Vec::<u32>::new());

    // Layout 8 reads a listener's network namespace from the socket (layout 7 kept it in
    // `MS_SOCK_NETNS`, not carried): a proxy that starts listening after the upgrade, in a pod
    // enrolled before it, takes the pod's inbound connections.
    assert!(!pins.map("MS_SOCK_NETNS").exists(), "MS_SOCK_NETNS carried");
    slow.start_listener()?;
    let into_slow = format!("{}:8080", slow.ip4);
    let v = peer.probe(1000, 1000, &into_slow, &[])?;
    assert_eq!(
        (&v["listener"], &v["orig_dst"]),
        (&15006.into(), &into_slow.clone().into()),
        "a proxy listening since the upgrade: {v}"
    );

    // And a pod of the upgraded node gets its DNS to the proxy's DNS port (layout 5's DNS
    // capture, carried).
    let path = pins.map("MS_DNS_SERVERS");
    assert!(path.exists(), "{} missing", path.display());
    let ns = write_dns_spec(&bed, &pod)?;
    bed.agent
        .wait_pod("test/a", |p| p["nameservers"][0] == ns)?;
    let mut pod = pod;
    dns_proxy(&mut pod)?;
    let got = resolver::dnsq(&pod, 1000, &format!("{ns}:53"), "svc.mesh.test", &[])?;
    assert_eq!(
        (&got["answer"], &got["from"]),
        (&"10.9.9.9".into(), &format!("{ns}:53").into()),
        "{got}"
    );
    Ok(())
}

/// During an upgrade from layout 5 the cgroup root's links (run with the new programs) stay
/// beside each pod's own until every pod has its own: a pod's sockets run every program twice,
/// the pod's copy first. The second run must change nothing: outbound capture, the original
/// destination, getpeername, a connected UDP socket's DNS peer, and no counter says the
/// original-destination map was full. (Made here as the upgrade makes it: a copy of each of
/// the pod's programs attached at the test's cgroup root.)
#[test]
fn programs_that_run_twice_in_a_chain_act_once() -> anyhow::Result<()> {
    use meshsteer::inspect::{
        AttachType, Pins, cgroup_id, cgroup_link_info, link_create, obj_get, prog_by_id,
    };
    use std::os::fd::AsFd;

    let mut bed = Testbed::new()?;
    let mut pod = bed.node.add_pod("a")?;
    pod.start_listener()?;
    let ns = write_dns_spec(&bed, &pod)?;
    bed.agent.wait_state("test/a", |s| s == "ready")?;
    dns_proxy(&mut pod)?;

    // The second copies, held by this test: detached when it returns, whatever happens.
    let root = std::fs::File::open(&bed.node.cgroup_root)?;
    let dir = Pins::new(&bed.agent.bpffs_dir)
        .cgroup_links()
        .join(cgroup_id(&pod.cgroup)?.to_string());
    let mut copies = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let link = obj_get(&e?.path())?;
        let info = cgroup_link_info(link.as_fd())?;
        let attach = AttachType::from_raw(info.attach_type)
            .ok_or_else(|| anyhow::anyhow!("attach type {}", info.attach_type))?;
        let prog = prog_by_id(info.prog_id)?;
        copies.push(link_create(prog.as_fd(), root.as_fd(), attach)?);
    }
    assert_eq!(copies.len(), 11);

    for _ in 0..3 {
        let v = pod.probe(1000, 1000, WORLD, &[])?;
        assert_eq!(
            (&v["listener"], &v["orig_dst"], &v["getpeername"]),
            (&15001.into(), &WORLD.into(), &WORLD.into()),
            "{v}"
        );
    }
    let got = resolver::dnsq(
        &pod,
        1000,
        &format!("{ns}:53"),
        "svc.mesh.test",
        &["--connect"],
    )?;
    assert_eq!(
        (&got["answer"], &got["from"]),
        (&"10.9.9.9".into(), &format!("{ns}:53").into()),
        "{got}"
    );
    let (_, metrics) = bed.agent.http_get("/metrics")?;
    let full = metrics
        .lines()
        .find(|l| l.starts_with("meshsteer_original_dst_map_full_total{pod=\"test/a\"}"))
        .unwrap_or_default();
    assert!(full.ends_with(" 0"), "{full}");
    drop(copies);
    Ok(())
}

/// Writes the pod's spec with the injector's defaults and DNS capture, its nameserver the
/// world's address; returns that nameserver.
fn write_dns_spec(bed: &Testbed, pod: &meshsteer_tests::Pod) -> anyhow::Result<&'static str> {
    let ns = WORLD.split(':').next().unwrap_or_default();
    let spec = pod.spec(&format!(
        "{} --redirect-dns",
        meshsteer::inspect::INJECTOR_DEFAULT_ARGS
    ));
    bed.agent
        .write_spec(&pod.name, &format!("{spec}nameservers: [{ns}]\n"))?;
    Ok(ns)
}

/// The pod's DNS proxy on 127.0.0.1:15053, answering `svc.mesh.test` with 10.9.9.9, kept
/// with the pod; returns once it answers.
fn dns_proxy(pod: &mut meshsteer_tests::Pod) -> anyhow::Result<()> {
    let proxy = resolver::dnsmasq(
        &pod.place(1337, 1337),
        &[
            "--listen-address=127.0.0.1",
            "--port=15053",
            "--address=/svc.mesh.test/10.9.9.9",
        ],
    )?;
    pod.keep(proxy);
    resolver::wait_answers(pod, 1337, "127.0.0.1:15053", "10.9.9.9")
}

/// Every connection of `seen`, and at least one, reached the proxy's `listener`, which learnt
/// `to` as its original destination: none escaped the proxy, none failed.
fn assert_all_landed(seen: &[Value], listener: u16, to: &str, what: &str) {
    let missed: Vec<&Value> = seen
        .iter()
        .filter(|v| !(v["listener"] == listener && v["orig_dst"] == to))
        .collect();
    assert!(
        missed.is_empty() && !seen.is_empty(),
        "of {} {what}, these did not reach {listener} with {to} as their destination: {missed:?}",
        seen.len()
    );
}
