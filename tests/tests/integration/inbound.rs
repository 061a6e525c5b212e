//! Inbound capture: TCP connections arriving at a pod from outside land where
//! `PREROUTING -j ISTIO_INBOUND` would send them, but without NAT (sk_lookup hands them to the
//! proxy's inbound listener, which sees the original destination as its local address).
use std::{os::unix::fs::MetadataExt, thread, time::Duration};

use meshsteer_tests::{
    Agent, Node, Pair, Pod, Testbed, World,
    agent::agent_without,
    cmd::Place,
    load::ConnectLoop,
    topology::{PROBE_PORTS, lo_ipv6, start_listener_on, start_tagged_listener_on},
};
use serde_json::Value;

const APP_PORTS: [u16; 9] = [22, 80, 3306, 8080, 9000, 15008, 15020, 15021, 15090];

/// What the peer sees when it connects to `target`'s port, with the target's addresses
/// replaced so two pods compare. The proxy-side local address is left out on purpose: under
/// iptables it is the REDIRECT target (`:15006`), under meshsteer the original destination
/// (no NAT); what the proxy asks for (SO_ORIGINAL_DST) must match.
fn land(peer: &Pod, target: &Pod, dst_ip: &str, port: u16) -> anyhow::Result<Value> {
    let dst = if dst_ip.contains(':') {
        format!("[{dst_ip}]:{port}")
    } else {
        format!("{dst_ip}:{port}")
    };
    let mut v = peer.probe(1000, 1000, &dst, &[])?;
    if let Some(m) = v.as_object_mut() {
        m.remove("local");
    }
    let s = v
        .to_string()
        .replace(&target.ip4, "TARGET4")
        .replace(&target.ip6, "TARGET6");
    Ok(serde_json::from_str(&s)?)
}

fn differential(args: &str) -> anyhow::Result<()> {
    let mut bed = Testbed::start(World::Absent, &[])?;
    let mut pair = bed.differential_pair(args)?;
    let peer = bed.node.add_pod("peer")?;
    pair.start_listeners()?;
    let Pair { ipt, ebpf } = &pair;
    let agent = &bed.agent;

    let mut mismatches = Vec::new();
    for port in PROBE_PORTS {
        for (a, b) in [(&ipt.ip4, &ebpf.ip4), (&ipt.ip6, &ebpf.ip6)] {
            let want = land(&peer, ipt, a, port)?;
            let got = land(&peer, ebpf, b, port)?;
            if want != got {
                mismatches.push(format!(
                    "port {port} ({a})\n  iptables:  {want}\n  meshsteer: {got}"
                ));
            }
            // `explain --inbound` runs the same decision as sk_lookup.
            let (src, dst) = if b.contains(':') {
                (peer.ip6.clone(), format!("[{b}]:{port}"))
            } else {
                (peer.ip4.clone(), format!("{b}:{port}"))
            };
            let name = format!("test/{}", ebpf.name);
            let args = [
                "explain",
                "--json",
                "--inbound",
                "--pod",
                &name,
                "--src",
                &src,
                "--dst",
                &dst,
            ];
            let e: Value = serde_json::from_slice(&agent.cli(&args)?)?;
            if got.get("listener").is_some() && e["listener_port"] != got["listener"] {
                mismatches.push(format!(
                    "port {port} ({b})\n  explain:   {e}\n  datapath:  {got}"
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    Ok(())
}

#[test]
fn istio_default_inbound() -> anyhow::Result<()> {
    differential(meshsteer::inspect::INJECTOR_DEFAULT_ARGS)
}

#[test]
fn inbound_port_list_and_custom_ports() -> anyhow::Result<()> {
    differential("-p 15001 -z 15006 -e 15008 -u 1337 -i '*' -b 80,8080,22 -d 8080")
}

#[test]
fn exclusions_including_ssh() -> anyhow::Result<()> {
    differential("-p 15001 -z 15006 -u 1337 -i '*' -b '*' -d 22,15090,15021,15020,3306")
}

#[test]
fn no_inbound_capture() -> anyhow::Result<()> {
    differential("-p 15001 -z 15006 -u 1337 -i '*' -b ''")
}

/// istio-init's `ip -6 addr add ::6/128 dev lo`: a dual-stack pod enrolled from a spec file gets
/// Envoy's IPv6 inbound-passthrough source on its `lo`, and the proxy (uid 1337) bound to it
/// reaches the app at the pod's IPv6 address: on the app's port, seen from `::6` (R8 lets it
/// through), not back on the proxy's inbound port.
#[test]
fn a_dual_stack_pods_proxy_reaches_its_app_from_the_ipv6_passthrough_source() -> anyhow::Result<()>
{
    let mut bed = Testbed::start(World::Absent, &[])?;
    let mut pod = bed.node.add_pod("srv")?;
    pod.keep(start_listener_on(&pod.place(1000, 1000), &APP_PORTS)?);
    pod.keep(start_listener_on(&pod.place(1337, 1337), &[15006])?);
    assert!(!lo_ipv6(&pod.netns)?.contains(&"::6/128".to_string()));
    bed.agent
        .enrol(&pod, meshsteer::inspect::INJECTOR_DEFAULT_ARGS)?;
    let on_lo = lo_ipv6(&pod.netns)?;
    assert!(on_lo.contains(&"::6/128".to_string()), "lo has {on_lo:?}");
    let status = bed.agent.pod_status("test/srv").unwrap_or_default();
    assert!(status.get("warnings").is_none(), "{status}");

    let app = format!("[{}]:80", pod.ip6);
    let v = pod.probe(1337, 1337, &app, &["--bind", "::6"])?;
    assert_eq!(
        (&v["listener"], &v["peer_ip"]),
        (&80.into(), &"::6".into()),
        "the proxy's passthrough from ::6 to {app}: {v}"
    );
    // Anyone else's connection from outside is still the proxy's.
    let peer = bed.node.add_pod("peer")?;
    assert_eq!(peer.probe(1000, 1000, &app, &[])?["listener"], 15006);

    // A restarted agent enrols the pod again: the address already there is no error.
    bed.agent.restart(libc::SIGTERM)?;
    bed.agent.wait_state("test/srv", |s| s == "ready")?;
    let status = bed.agent.pod_status("test/srv").unwrap_or_default();
    assert!(status.get("warnings").is_none(), "{status}");
    let mut on_lo = lo_ipv6(&pod.netns)?;
    on_lo.sort();
    assert_eq!(on_lo, ["::1/128", "::6/128"]);
    Ok(())
}

/// Without CAP_SYS_ADMIN the agent cannot enter the pod's network namespace to add `::6`. The
/// pod is captured all the same (nothing escapes), and the agent's log and the pod's status
/// say what is missing and why.
#[test]
fn a_passthrough_source_that_cannot_be_added_is_reported_and_capture_stays() -> anyhow::Result<()> {
    let mut node = Node::new()?;
    node.start_world()?;
    let work = std::env::temp_dir()
        .join("meshsteer-tests")
        .join(format!("{}-nocap", node.id));
    let agent = Agent::start_bin(&node, &agent_without("sys_admin", &work)?, &[])?;
    let mut bed = Testbed { agent, node };
    let pod = bed.enrolled_pod("a")?;
    let on_lo = lo_ipv6(&pod.netns)?;
    assert!(!on_lo.contains(&"::6/128".to_string()), "lo has {on_lo:?}");
    let status = bed.agent.pod_status("test/a").unwrap_or_default();
    let warning = status["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.starts_with("::6/128 is not on the pod's lo") && warning.contains("CAP_SYS_ADMIN"),
        "{status}"
    );
    let text = String::from_utf8(bed.agent.cli(&["status"])?)?;
    assert!(
        text.contains("\twarning: ::6/128 is not on the pod's lo"),
        "{text}"
    );
    let log = std::fs::read_to_string(bed.agent.log_file())?;
    assert!(
        log.lines()
            .any(|l| l.contains("could not add ::6/128") && l.contains("test/a")),
        "{log}"
    );

    assert_eq!(
        pod.probe(1000, 1000, "10.200.0.1:80", &[])?["listener"],
        15001
    );
    let peer = bed.node.add_pod("peer")?;
    let app = format!("[{}]:80", pod.ip6);
    assert_eq!(peer.probe(1000, 1000, &app, &[])?["listener"], 15006);
    drop(peer);
    drop(pod);
    drop(bed);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// While the proxy is down nothing lands on the app directly (refused, as REDIRECT to a closed
/// port); when it listens again, steering works from its first SYN. A listener that predates
/// the pod's enrolment is found too.
#[test]
fn proxy_restart_and_existing_listener() -> anyhow::Result<()> {
    let mut bed = Testbed::start(World::Absent, &[])?;
    let mut pod = bed.node.add_pod("srv")?;
    let peer = bed.node.add_pod("peer")?;
    let agent = &bed.agent;
    pod.keep(start_listener_on(&pod.place(1000, 1000), &APP_PORTS)?);
    // The proxy listens before the pod is enrolled: no sockops callback can have seen it.
    let mut proxy = start_listener_on(&pod.place(1337, 1337), &[15006])?;
    agent.enrol(&pod, meshsteer::inspect::INJECTOR_DEFAULT_ARGS)?;
    let dst = format!("{}:80", pod.ip4);
    assert_eq!(
        peer.probe(1000, 1000, &dst, &[])?["listener"],
        15006,
        "existing listener adopted"
    );

    // Steady connection attempts while the proxy goes down and comes back.
    let from_peer = Place {
        netns: Some(&peer.netns),
        uid: 1000,
        gid: 1000,
        ..Default::default()
    };
    let load = ConnectLoop::start(&from_peer, &dst);
    thread::sleep(Duration::from_millis(200));
    drop(proxy);
    thread::sleep(Duration::from_millis(300));
    let refused = peer.probe(1000, 1000, &dst, &[])?;
    assert_eq!(refused["error"], "connection refused", "{refused}");
    proxy = start_listener_on(&pod.place(1337, 1337), &[15006])?;
    // The very first connection after listen() is steered.
    assert_eq!(peer.probe(1000, 1000, &dst, &[])?["listener"], 15006);
    thread::sleep(Duration::from_millis(200));
    let seen = load.stop()?;
    // Connections still queued on the dying listener are reset, as under iptables; none may
    // land anywhere but the proxy.
    let count = |f: &dyn Fn(&Value) -> bool| seen.iter().filter(|v| f(v)).count();
    let steered = count(&|v| v["listener"] == 15006);
    let refused = count(&|v| v["error"] == "connection refused");
    let landed_elsewhere: Vec<&Value> = seen
        .iter()
        .filter(|v| v.get("listener").is_some() && v["listener"] != 15006)
        .collect();
    assert!(
        landed_elsewhere.is_empty(),
        "connections went around the proxy: {landed_elsewhere:?}"
    );
    assert!(
        steered > 0 && refused > 0,
        "of {}: steered {steered}, refused {refused}",
        seen.len()
    );
    drop(proxy);
    Ok(())
}

/// Only the proxy's socket takes the pod's inbound connections. An app of the pod listening on
/// the inbound port from a network namespace of its own (still in the pod's cgroup), before
/// the proxy listens or after, gets none of them: before, they are refused as under REDIRECT
/// to a closed port; after, they keep landing on the proxy.
#[test]
fn a_listener_in_another_netns_cannot_take_inbound() -> anyhow::Result<()> {
    let mut bed = Testbed::start(World::Absent, &[])?;
    let mut pod = bed.node.add_pod("srv")?;
    // Only their network namespaces serve: the hijacker's own.
    let hideout = bed.node.add_pod("hideout")?;
    let hideout2 = bed.node.add_pod("hideout2")?;
    let hideout3 = bed.node.add_pod("hideout3")?;
    let peer = bed.node.add_pod("peer")?;
    let agent = &bed.agent;
    pod.keep(start_listener_on(&pod.place(1000, 1000), &APP_PORTS)?);
    agent.enrol(&pod, meshsteer::inspect::INJECTOR_DEFAULT_ARGS)?;
    let in_pod_cgroup_from = |netns| Place {
        netns: Some(netns),
        cgroup: Some(&pod.app_cgroup),
        uid: 1000,
        gid: 1000,
    };
    let dst = format!("{}:80", pod.ip4);

    let early = start_tagged_listener_on(
        &in_pod_cgroup_from(&hideout.netns),
        &[15006],
        Some("hijacker"),
    )?;
    let v = peer.probe(1000, 1000, &dst, &[])?;
    assert_eq!(v["error"], "connection refused", "no proxy yet: {v}");

    let _proxy = start_tagged_listener_on(&pod.place(1337, 1337), &[15006], Some("proxy"))?;
    let v = peer.probe(1000, 1000, &dst, &[])?;
    assert_eq!(
        (&v["listener"], &v["tag"]),
        (&15006.into(), &"proxy".into()),
        "{v}"
    );

    let _late = start_tagged_listener_on(
        &in_pod_cgroup_from(&hideout2.netns),
        &[15006],
        Some("hijacker"),
    )?;
    // Even as the proxy's uid: a listener made outside the pod's namespace is not the
    // proxy's (under iptables it could never get the pod's REDIRECTed connections).
    let _as_proxy = start_tagged_listener_on(
        &Place {
            uid: 1337,
            gid: 1337,
            ..in_pod_cgroup_from(&hideout3.netns)
        },
        &[15006],
        Some("hijacker"),
    )?;
    for _ in 0..5 {
        let v = peer.probe(1000, 1000, &dst, &[])?;
        assert_eq!(v["tag"], "proxy", "inbound taken from the proxy: {v}");
    }
    drop(early);
    // Every refused listen is counted: two sockets (IPv4 and IPv6) per hijacker.
    let name = format!("test/{}", pod.name);
    let status = agent.status()?;
    let refused = status["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["name"] == name.as_str()))
        .map(|p| p["counters"]["inbound_listener_refused"].clone());
    assert_eq!(refused, Some(6.into()), "{status}");
    Ok(())
}

/// Every address of the pod's network namespace is captured, as PREROUTING captures it: a
/// secondary IPv4 address and a link-local IPv6 one, both added after enrolment (the agent is
/// never told of them), and the address the spec lists.
#[test]
fn every_address_of_the_pod_is_captured() -> anyhow::Result<()> {
    let mut bed = Testbed::start(World::Absent, &[])?;
    let mut pod = bed.node.add_pod("srv")?;
    let peer = bed.node.add_pod("peer")?;
    pod.keep(start_listener_on(&pod.place(1000, 1000), &APP_PORTS)?);
    bed.agent
        .enrol(&pod, meshsteer::inspect::INJECTOR_DEFAULT_ARGS)?;
    let _proxy = start_tagged_listener_on(&pod.place(1337, 1337), &[15006], Some("proxy"))?;
    pod.ip(&["addr", "add", "10.88.0.250/32", "dev", "eth0"])?;
    pod.ip(&["-6", "addr", "add", "fe80::5eed/64", "dev", "eth0", "nodad"])?;
    let scope = peer.ifindex("eth0")?;
    for dst in [
        "10.88.0.250:80".to_string(),
        format!("[fe80::5eed%{scope}]:80"),
        format!("{}:80", pod.ip4),
    ] {
        let v = peer.probe(1000, 1000, &dst, &[])?;
        assert_eq!(
            (&v["listener"], &v["tag"]),
            (&15006.into(), &"proxy".into()),
            "{dst} reached the app past the proxy: {v}"
        );
    }
    Ok(())
}

/// Trampolines for the slots pods will take (up to `--max-pods`) are loaded before any pod
/// needs one: a pod's enrolment then loads no program. The first pod's link runs the
/// trampoline pinned for slot 1 before the pod came, and its removal leaves the pool as it was.
#[test]
fn trampolines_are_loaded_before_pods_need_them() -> anyhow::Result<()> {
    use meshsteer::inspect::{Pins, cgroup_id, link_prog_id, obj_get, prog_id};
    use std::os::fd::AsFd;

    let mut bed = Testbed::start(World::Absent, &["--max-pods", "4"])?;
    let pins = Pins::new(&bed.agent.bpffs_dir);
    bed.agent
        .wait_until(Duration::from_secs(5), "the pool's trampolines", |a| {
            a.trampoline_slots() == [1, 2, 3, 4]
        })?;
    let build = std::fs::read_dir(pins.programs())?
        .next()
        .ok_or_else(|| anyhow::anyhow!("no pinned programs"))??
        .path();
    let slot1 = prog_id(obj_get(&build.join("sk_lookup/1"))?.as_fd())?;

    let pod = bed.node.add_pod("early")?;
    bed.agent
        .enrol(&pod, meshsteer::inspect::INJECTOR_DEFAULT_ARGS)?;
    // The fd closed at once: an open one would keep the link attached after its unpinning.
    let linked = link_prog_id(obj_get(&pins.netns_link(cgroup_id(&pod.cgroup)?))?.as_fd())?;
    assert_eq!(linked, slot1, "the preloaded trampoline");

    bed.agent.remove_spec("early")?;
    let ino = std::fs::metadata(&pod.netns)?.ino();
    bed.agent
        .wait_until(Duration::from_secs(5), "the sk_lookup link to go", |_| {
            meshsteer::inspect::netns_links(ino).is_ok_and(|l| l.is_empty())
        })?;
    assert_eq!(
        bed.agent.trampoline_slots(),
        [1, 2, 3, 4],
        "the pool, nothing more"
    );
    Ok(())
}

/// Removing the pod's spec detaches its sk_lookup program (the kernel's list of netns links
/// says so) and leaves no trampoline pinned beyond the pool of free slots' (here one slot),
/// and a namespace that vanishes under an enrolled pod is reported, not crashed on.
#[test]
fn removal_detaches_and_vanished_netns_is_reported() -> anyhow::Result<()> {
    let mut bed = Testbed::start(World::Absent, &["--max-pods", "1"])?;
    let pod = bed.node.add_pod("gone")?;
    let agent = &bed.agent;
    let ino = std::fs::metadata(&pod.netns)?.ino();
    agent.enrol(&pod, meshsteer::inspect::INJECTOR_DEFAULT_ARGS)?;
    assert_eq!(meshsteer::inspect::netns_links(ino)?.len(), 1);
    agent.remove_spec("gone")?;
    agent.wait_until(Duration::from_secs(5), "the sk_lookup link to go", |_| {
        meshsteer::inspect::netns_links(ino).is_ok_and(|l| l.is_empty())
    })?;
    assert_eq!(
        agent.trampoline_slots(),
        [1],
        "trampolines pinned per build, the pod gone: the pool's one slot"
    );

    let other = bed.node.add_pod("vanish")?;
    agent.enrol(&other, meshsteer::inspect::INJECTOR_DEFAULT_ARGS)?;
    let name = format!("test/{}", other.name);
    drop(other);
    agent.wait_state(&name, |s| s.contains("disappeared"))?;
    assert!(agent.pid().is_some(), "the agent is still running");
    Ok(())
}
