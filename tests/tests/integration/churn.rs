//! State is freed when connections close: after a million short redirected connections the
//! original-destination map is back to its idle size, and no live entry was ever evicted.
use anyhow::Context;
use meshsteer::inspect::{Pins, PodMaps};
use meshsteer_common::maps::counter;
use meshsteer_tests::{Testbed, cmd, topology::probe_bin};

/// Overridable for a quick local run; CI runs the full million.
fn connections() -> u64 {
    std::env::var("MESHSTEER_CHURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

#[test]
fn a_million_connections_leave_no_state_behind() -> anyhow::Result<()> {
    let mut bed = Testbed::new()?;
    let pod = bed.enrolled_pod("churn")?;
    let agent = &bed.agent;
    let maps = PodMaps::from_pins(&Pins::new(&agent.bpffs_dir))?;
    let idle = maps.orig_dst_entries();

    let n = connections().to_string();
    let out = cmd::run(
        &pod.place(1000, 1000),
        probe_bin(),
        &["churn", "10.200.0.1:80", &n, "2"],
    )?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    eprintln!("churn: {report}");
    assert_eq!(report["failed"], 0, "{report}");

    // The last sockets leave LAST_ACK (and their entries go) just after the client exits.
    agent
        .wait_until(
            std::time::Duration::from_secs(5),
            "MS_ORIG_DST to drain",
            |_| maps.orig_dst_entries() == idle,
        )
        .with_context(|| format!("{} entries left", maps.orig_dst_entries()))?;
    let cgroup_id = meshsteer::inspect::cgroup_id(&pod.cgroup)?;
    let c = maps.counters(cgroup_id).expect("pod counters");
    let redirected = c.0[counter::outbound(meshsteer_common::outbound::Rule::IncludedCidr)];
    assert_eq!(redirected, connections(), "every connection was redirected");
    assert_eq!(
        c.0[counter::ORIG_DST_HIT],
        connections(),
        "the proxy learnt every original destination"
    );
    assert_eq!(c.0[counter::ORIG_DST_EVICTED], 0);
    assert_eq!(c.0[counter::ORIG_DST_MAP_FULL], 0);
    Ok(())
}
