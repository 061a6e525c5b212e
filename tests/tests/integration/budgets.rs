//! Per-pod budgets: no pod can fill the node-wide maps for the others, and a pod the agent
//! refuses (over its budget, beyond the pod limit) is enrolled fail closed: its connections
//! fail, counted, and none goes direct. Original destinations: a pod holding many connections
//! gets at most its budget of them and cannot push out another pod's; a proxy asking for one
//! that is missing gets ENOENT, never its own address.
use std::{thread, time::Duration};

use meshsteer::inspect::{INJECTOR_DEFAULT_ARGS, Pins};
use meshsteer_common::maps::{OrigDst, TupleKey, names};
use meshsteer_tests::{
    Pod, Testbed, World, cmd,
    topology::{late_accept_in, probe_bin},
};
use serde_json::Value;

const WORLD: &str = "10.200.0.1:80";

/// What a pod enrolled fail closed must look like: outbound connect()s fail with EPERM,
/// counted; connections to its addresses are refused; `status` says so.
fn assert_fail_closed(bed: &Testbed, pod: &Pod, peer: &Pod, why: &str) -> anyhow::Result<()> {
    let agent = &bed.agent;
    let name = format!("test/{}", pod.name);
    agent.wait_state(&name, |s| s.starts_with("error:") && s.contains(why))?;
    // Its app, and its proxy too: nothing of the pod leaves, captured or not.
    for uid in [1000, 1337] {
        let v = pod.probe(uid, uid, WORLD, &[])?;
        assert_eq!(v["error"], "permission denied", "uid {uid}: {v}");
    }
    // An inbound connection to its app's port is refused, not handed to whatever listens.
    let v = peer.probe(1000, 1000, &format!("{}:8080", pod.ip4), &[])?;
    assert_eq!(v["error"], "connection refused", "inbound: {v}");
    let status = agent.pod_status(&name).expect("listed");
    assert_eq!(status["failClosed"], true, "{status}");
    let counters = &status["counters"];
    assert!(
        counters["refused_connect"].as_u64() >= Some(2),
        "{counters}"
    );
    assert!(
        counters["refused_inbound"].as_u64() >= Some(1),
        "{counters}"
    );
    let (code, metrics) = agent.http_get("/metrics")?;
    assert_eq!(code, 200);
    let line = format!(
        "meshsteer_refused_pod_connections_total{{pod=\"{name}\",direction=\"outbound\"}} "
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.strip_prefix(&line).is_some_and(|n| n != "0")),
        "{line} missing or 0 in:\n{metrics}"
    );
    Ok(())
}

fn assert_captured(pod: &Pod) -> anyhow::Result<()> {
    let v = pod.probe(1000, 1000, WORLD, &[])?;
    assert_eq!(v["listener"], 15001, "{v}");
    assert_eq!(v["orig_dst"], WORLD, "{v}");
    Ok(())
}

#[test]
fn a_map_filling_pod_fails_closed_and_its_neighbour_stays_captured() -> anyhow::Result<()> {
    let mut bed = Testbed::new()?;
    let peer = bed.node.add_pod("peer")?;
    // With the injector's three -d ports, 65,533 -q ports are exactly all of MS_PORTS
    // (65,536): enrolled whole, it would leave no room for any other pod's ports.
    let mut filler = bed.node.add_pod("filler")?;
    filler.start_listener()?;
    let ports: Vec<String> = (1..=65_533u32).map(|p| p.to_string()).collect();
    let args = format!("{INJECTOR_DEFAULT_ARGS} -q {}", ports.join(","));
    bed.agent.write_spec("filler", &filler.spec(&args))?;
    bed.agent
        .wait_state("test/filler", |s| s.starts_with("error:"))?;

    // The victim, enrolled after it, is captured as if the filler did not exist.
    let victim = bed.enrolled_pod("victim")?;
    assert_captured(&victim)?;
    let status = bed.agent.pod_status("test/victim").expect("listed");
    assert_eq!(status["usage"]["ports"], 3, "{status}");

    assert_fail_closed(
        &bed,
        &filler,
        &peer,
        "over the per-pod budget: 65536 port-set",
    )?;
    let doc: Value = serde_json::from_slice(&std::fs::read(&bed.agent.status_file)?)?;
    assert_eq!(
        doc["budget"]["ports"], 512,
        "the default --max-pods' share: {doc}"
    );
    Ok(())
}

#[test]
fn a_pod_beyond_the_pod_limit_fails_closed_until_a_slot_frees() -> anyhow::Result<()> {
    let mut bed = Testbed::start(World::Listening, &["--max-pods", "1"])?;
    let peer = bed.node.add_pod("peer")?;
    let first = bed.enrolled_pod("first")?;
    let mut second = bed.node.add_pod("second")?;
    second.start_listener()?;
    bed.agent
        .write_spec("second", &second.spec(INJECTOR_DEFAULT_ARGS))?;
    assert_fail_closed(&bed, &second, &peer, "pod limit is reached")?;
    assert_captured(&first)?;

    // The first pod goes; the second takes its slot at once, captured.
    bed.agent.remove_spec("first")?;
    bed.agent.wait_state("test/second", |s| s == "ready")?;
    assert_captured(&second)?;
    let status = bed.agent.pod_status("test/second").expect("listed");
    assert!(status.get("failClosed").is_none(), "{status}");
    Ok(())
}

/// A pod's `status --json` counter.
fn counter(bed: &Testbed, pod: &str, key: &str) -> u64 {
    let status = bed.agent.pod_status(pod).expect("listed");
    status["counters"][key].as_u64().unwrap_or_default()
}

#[test]
fn a_pod_holding_many_connections_cannot_push_out_another_pods_destinations() -> anyhow::Result<()>
{
    // --max-pods 2048: each pod may hold 64 live redirected connections.
    let mut bed = Testbed::start(World::Listening, &["--max-pods", "2048"])?;
    let slow = bed.node.add_pod("slow")?;
    bed.agent.enrol(&slow, INJECTOR_DEFAULT_ARGS)?;
    let mut hog = bed.node.add_pod("hog")?;
    bed.agent.enrol(&hog, INJECTOR_DEFAULT_ARGS)?;
    let doc: Value = serde_json::from_slice(&std::fs::read(&bed.agent.status_file)?)?;
    let budget = doc["budget"]["origDst"].as_u64().expect("budget.origDst");
    assert_eq!(budget, 64, "{doc}");

    // The victim's connection is made first; its proxy accepts only after the pressure.
    let late = late_accept_in(&slow, WORLD, 1500);
    thread::sleep(Duration::from_millis(300));
    // The hog opens 200 redirected connections and holds them all.
    let out = cmd::run(
        &hog.place(1000, 1000),
        probe_bin(),
        &["hold", "0.0.0.0:15001", WORLD, "200", "0"],
    )?;
    let held: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(held["held"], budget, "{held}");
    assert_eq!(held["errors"]["permission denied"], 200 - budget, "{held}");
    // None of the hog's own live entries was pushed out either.
    assert_eq!(held["learnt"], budget, "{held}");
    assert_eq!(held["wrong"], 0, "{held}");
    assert_eq!(
        counter(&bed, "test/hog", "orig_dst_over_budget"),
        200 - budget
    );

    let late = late.join().expect("late-accept thread")?;
    assert_eq!(late["orig_dst"], WORLD, "the victim's proxy: {late}");
    assert_eq!(late["payload"], "hello", "{late}");
    assert_eq!(counter(&bed, "test/slow", "orig_dst_over_budget"), 0);
    // The hog's connections are gone: its budget is whole again.
    bed.agent
        .wait_until(Duration::from_secs(5), "the hog's entries to go", |_| {
            counter(&bed, "test/hog", "orig_dst_live") == 0
        })?;
    hog.start_listener()?;
    assert_captured(&hog)?;
    Ok(())
}

#[test]
fn a_proxy_asking_for_a_missing_destination_gets_enoent_not_its_own_address() -> anyhow::Result<()>
{
    let mut bed = Testbed::new()?;
    let mut pod = bed.node.add_pod("slow")?;
    bed.agent.enrol(&pod, INJECTOR_DEFAULT_ARGS)?;
    let late = late_accept_in(&pod, WORLD, 1500);
    // Redirected and published: then its entry is lost, as one that could not be stored.
    let pins = Pins::new(&bed.agent.bpffs_dir);
    let map = pins.open_map(names::ORIG_DST)?;
    let mut orig: aya::maps::HashMap<_, TupleKey, OrigDst> = map.try_into()?;
    bed.agent
        .wait_until(Duration::from_secs(1), "the entry to be published", |_| {
            orig.keys().count() == 1
        })?;
    let keys: Vec<TupleKey> = orig.keys().filter_map(Result::ok).collect();
    for k in keys {
        orig.remove(&k)?;
    }
    let late = late.join().expect("late-accept thread")?;
    assert_eq!(late["orig_dst"], Value::Null, "{late}");
    assert_eq!(late["orig_dst_errno"], libc::ENOENT, "{late}");
    assert_eq!(late["payload"], "hello", "{late}");
    assert_eq!(counter(&bed, "test/slow", "orig_dst_not_found"), 1);

    // A connection made straight to the proxy's port is no miss: it is answered as conntrack
    // answers it (the differential tests compare it with iptables).
    pod.start_listener()?;
    let v = pod.probe(1000, 1000, "127.0.0.1:15001", &[])?;
    assert_eq!(v["orig_dst"], "127.0.0.1:15001", "{v}");
    Ok(())
}
