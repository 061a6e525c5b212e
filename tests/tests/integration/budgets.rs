//! Per-pod budgets: no pod can fill the node-wide maps for the others, and a pod the agent
//! refuses (over its budget, beyond the pod limit) is enrolled fail closed: its connections
//! fail, counted, and none goes direct.
use meshsteer::inspect::INJECTOR_DEFAULT_ARGS;
use meshsteer_tests::{Pod, Testbed, World};
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
