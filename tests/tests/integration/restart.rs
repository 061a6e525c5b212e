//! The agent can stop, crash or be upgraded without disruption: programs stay attached through
//! pinned links and pods stay enrolled through pinned maps while no agent runs; a new agent
//! adopts both (swapping programs atomically) and reconciles with the pod specs. Connections
//! made while no agent runs keep their original destination across the next agent's start.
use std::{
    thread,
    time::{Duration, Instant},
};

use meshsteer_tests::{Testbed, cmd, load::ConnectLoop, topology::late_accept};
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
    let (ns, cg) = (slow.netns.clone(), slow.app_cgroup.clone());
    let late = thread::spawn(move || -> anyhow::Result<Value> {
        let place = cmd::Place {
            netns: Some(&ns),
            cgroup: Some(&cg),
            uid: 1000,
            gid: 1000,
        };
        late_accept(&place, &["0.0.0.0:15001"], WORLD, 1500)
    });
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
