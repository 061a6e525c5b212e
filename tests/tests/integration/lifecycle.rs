//! Pod specs drive capture live: adding, changing and deleting a spec file applies at once;
//! an option meshsteer does not implement is a clear error and never half-enrols a pod.
use meshsteer::inspect::{Pins, PodMaps};
use meshsteer_tests::{Testbed, World};

const WORLD: &str = "10.200.0.1:80";

#[test]
fn specs_apply_live_and_errors_are_clear() -> anyhow::Result<()> {
    let mut bed = Testbed::new()?;
    let mut pod = bed.node.add_pod("a")?;
    pod.start_listener()?;
    let name = "test/a";
    let agent = &bed.agent;

    agent.write_spec("a", &pod.spec("-i '*'"))?;
    let took = pod.lands_on(WORLD, 15001)?;
    eprintln!("enrolment took effect after {took:?}");

    // A change (exclude the destination) applies without restarting anything.
    agent.write_spec("a", &pod.spec("-i '*' -x 10.200.0.0/16"))?;
    let took = pod.lands_on(WORLD, 80)?;
    eprintln!("update took effect after {took:?}");
    agent.wait_state(name, |s| s == "ready")?;

    // An unsupported option: a clear error naming it; the last good capture stays in effect
    // (dropping it would let traffic escape the proxy).
    agent.write_spec("a", &pod.spec("-i '*' -k eth1"))?;
    agent.wait_state(name, |s| s.contains("unsupported istio-iptables option -k"))?;
    assert_eq!(pod.probe(1000, 1000, WORLD, &[])?["listener"], 80);

    // A new pod with a bad spec is not enrolled at all.
    let mut other = bed.node.add_pod("b")?;
    other.start_listener()?;
    agent.write_spec("b", &other.spec("-m TPROXY -i '*'"))?;
    agent.wait_state("test/b", |s| s.contains("TPROXY"))?;
    assert_eq!(other.probe(1000, 1000, WORLD, &[])?["listener"], 80);
    let maps = PodMaps::from_pins(&Pins::new(&agent.bpffs_dir))?;
    assert_eq!(maps.enrolled().len(), 1, "only pod a is in the maps");

    // Fixing the spec enrols it.
    agent.write_spec("b", &other.spec("-i '*'"))?;
    agent.wait_state("test/b", |s| s == "ready")?;
    assert_eq!(other.probe(1000, 1000, WORLD, &[])?["listener"], 15001);

    // Deleting a spec stops capture and frees the pod's map entries.
    agent.remove_spec("a")?;
    agent.remove_spec("b")?;
    other.lands_on(WORLD, 80)?;
    agent.wait_until(
        std::time::Duration::from_secs(5),
        "pods to leave the status",
        |a| a.state(name).is_none() && a.state("test/b").is_none(),
    )?;
    let maps = PodMaps::from_pins(&Pins::new(&agent.bpffs_dir))?;
    assert!(maps.enrolled().is_empty());
    Ok(())
}

#[test]
fn a_cgroup_outside_the_attach_root_is_refused() -> anyhow::Result<()> {
    let bed = Testbed::start(World::Absent, &[])?;
    let agent = &bed.agent;
    let spec = "name: test/outside\ncgroup: /sys/fs/cgroup\nargs: \"-i '*'\"\n";
    agent.write_spec("outside", spec)?;
    agent.wait_state("test/outside", |s| s.contains("outside the cgroup root"))?;
    Ok(())
}
