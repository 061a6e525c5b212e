//! Outbound capture, differentially: two identical pods on one node, one with Istio's own nat
//! rules (our generator of istio-iptables' output), one enrolled with meshsteer. The same
//! probe matrix runs in both; where every connection lands (listener port, original
//! destination the proxy learns, peer address it sees, what the app's getpeername says) must
//! be identical. `meshsteer explain` must agree with the datapath on every case.
use std::collections::BTreeMap;

use meshsteer_tests::{Agent, Pair, Testbed, matrix, topology::late_accept};
use serde_json::Value;

fn differential(args: &str) -> anyhow::Result<()> {
    differential_in(args, None)
}

/// With `userns`, both pods are user-namespaced, their ids mapped to the host's `userns..`.
fn differential_in(args: &str, userns: Option<u32>) -> anyhow::Result<()> {
    let mut bed = Testbed::new()?;
    let mut pair = match userns {
        None => bed.differential_pair(args)?,
        Some(base) => bed.differential_userns_pair(args, base)?,
    };
    pair.start_listeners()?;
    let Pair { ipt, ebpf } = &pair;
    let agent = &bed.agent;

    let mut mismatches = Vec::new();
    let mut landed: BTreeMap<String, usize> = BTreeMap::new();
    for case in matrix::outbound_cases() {
        let want = matrix::run(ipt, &case)?;
        let got = matrix::run(ebpf, &case)?;
        if want != got {
            mismatches.push(format!(
                "{}\n  iptables:  {want}\n  meshsteer: {got}",
                case.label()
            ));
        }
        *landed.entry(want["listener"].to_string()).or_default() += 1;
        if case.connector.is_none() {
            check_explain(agent, ebpf, &case, &got, &mut mismatches)?;
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        matrix::outbound_cases().len(),
        mismatches.join("\n")
    );
    // The matrix must exercise both outcomes, or it proves little.
    assert!(
        landed.contains_key("15001") && landed.contains_key("80"),
        "{landed:?}"
    );
    Ok(())
}

/// `explain` (the shared decision model on the parsed spec) vs what the datapath did.
fn check_explain(
    agent: &Agent,
    pod: &meshsteer_tests::Pod,
    case: &matrix::Case,
    got: &Value,
    out: &mut Vec<String>,
) -> anyhow::Result<()> {
    if got.get("error").is_some() {
        return Ok(());
    }
    let e = matrix::explain(agent, pod, case)?;
    let port: Option<u64> = e["lands"]
        .as_str()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok());
    if port != got["listener"].as_u64() {
        out.push(format!(
            "{}\n  explain:   {e}\n  datapath:  {got}",
            case.label()
        ));
    }
    Ok(())
}

#[test]
fn istio_default_rule_set() -> anyhow::Result<()> {
    differential(meshsteer::inspect::INJECTOR_DEFAULT_ARGS)
}

#[test]
fn exclusions_inclusions_and_port_lists() -> anyhow::Result<()> {
    differential(
        "-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x 10.201.0.0/16,fd00:201::/64 -o 3306 -q 9000 -b '*' -d 15090,15021,15020",
    )
}

#[test]
fn include_list_only() -> anyhow::Result<()> {
    differential("-p 15001 -z 15006 -u 1337 -i 10.200.0.0/16,fd00:200::/64 -q 9000 -b ''")
}

#[test]
fn loopback_include_and_separate_gid() -> anyhow::Result<()> {
    differential("-p 15001 -z 15006 -u 1337 -g 1000 -i 127.0.0.5/32,10.200.0.0/16 -b ''")
}

/// A client that sends and closes before its proxy gets round to accept(): conntrack keeps the
/// original destination until both sides are gone, so the proxy still learns it under
/// iptables, and must under meshsteer (else it would forward to itself).
#[test]
fn a_proxy_that_accepts_after_the_client_closed_still_learns_the_destination() -> anyhow::Result<()>
{
    let mut bed = Testbed::new()?;
    let Pair { ipt, ebpf } = bed.differential_pair(meshsteer::inspect::INJECTOR_DEFAULT_ARGS)?;
    // The proxy's listener: IPv4, IPv6, and a dual-stack `[::]` one taking IPv4.
    let cases = [
        ("10.200.0.1:80", &["0.0.0.0:15001"][..]),
        ("[fd00:200::1]:80", &["[::]:15001"][..]),
        ("10.200.0.1:80", &["[::]:15001", "dual"][..]),
    ];
    for (dst, listen) in cases {
        let late =
            |pod: &meshsteer_tests::Pod| late_accept(&pod.place(1000, 1000), listen, dst, 300);
        let want = late(&ipt)?;
        let got = late(&ebpf)?;
        assert_eq!(want["orig_dst"], dst, "iptables: {want}");
        assert_eq!(want["payload"], "hello", "iptables: {want}");
        assert_eq!(got, want, "meshsteer vs iptables for {dst} to {listen:?}");
    }
    Ok(())
}

/// A user-namespaced pod (`hostUsers: false`): istio-init's `-u 1337` means the pod's 1337,
/// which is host uid 101337 here (xt_owner maps the rule through the user namespace owning
/// the pod's network namespace). The proxy's own connections pass, the app's are captured.
#[test]
fn user_namespaced_pod() -> anyhow::Result<()> {
    differential_in(meshsteer::inspect::INJECTOR_DEFAULT_ARGS, Some(100_000))
}

/// iptables' `-o lo` matches every address of the pod's network namespace, not only its pod
/// IPs: an extra address on the pod's `lo` (there at enrolment), and one added after, must be
/// local for R8–R10 under meshsteer too (the app reaches itself there, the proxy goes through
/// inbound), and one removed is remote again.
#[test]
fn every_address_of_the_pods_namespace_is_local() -> anyhow::Result<()> {
    let args = meshsteer::inspect::INJECTOR_DEFAULT_ARGS;
    let mut bed = Testbed::new()?;
    let ipt = bed.node.add_pod("ipt")?;
    let ebpf = bed.node.add_pod("ebpf")?;
    let on_lo = |pod: &meshsteer_tests::Pod, op: &str, v4: &str, v6: &str| {
        pod.ip(&["addr", op, v4, "dev", "lo"])?;
        pod.ip(&["-6", "addr", op, v6, "dev", "lo"])
    };
    for pod in [&ipt, &ebpf] {
        on_lo(pod, "add", "10.250.0.7/32", "fd00:250::7/128")?;
    }
    meshsteer_tests::istio_rules::install(
        &ipt.netns,
        &meshsteer::inspect::Capture::from_args(args)?,
    )?;
    bed.agent.enrol(&ebpf, args)?;
    let mut pair = Pair { ipt, ebpf };
    pair.start_listeners()?;
    let agent = &bed.agent;
    let both = [matrix::APP, matrix::PROXY];
    let listed = |addrs: &[&str]| {
        let name = format!("test/{}", pair.ebpf.name);
        agent.wait_pod(&name, |p| {
            let mut have: Vec<String> = p["localAddrs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            // istio-init's ::6 and the interface's link-local address are there too.
            have.retain(|a| a != "::6" && !a.starts_with("fe80:"));
            have.sort();
            let mut want: Vec<String> = addrs.iter().map(|a| (*a).to_string()).collect();
            want.sort();
            have == want
        })
    };
    listed(&["10.250.0.7", "fd00:250::7"])?;
    let first = [
        "10.250.0.7:80",
        "10.250.0.7:15008",
        "[fd00:250::7]:80",
        "[fd00:250::7]:15008",
    ];
    compare(agent, &pair, &first, &both)?;

    // Added behind the agent's back: it follows.
    for pod in [&pair.ipt, &pair.ebpf] {
        on_lo(pod, "add", "10.250.0.8/32", "fd00:250::8/128")?;
    }
    listed(&["10.250.0.7", "10.250.0.8", "fd00:250::7", "fd00:250::8"])?;
    let added = [
        "10.250.0.8:80",
        "10.250.0.8:15008",
        "[fd00:250::8]:80",
        "[fd00:250::8]:15008",
    ];
    compare(agent, &pair, &added, &both)?;

    // Removed: remote again. Only the app's connections are probed, from no bound source
    // (captured, they never leave the pod); the proxy's would go off the node, to no one.
    for pod in [&pair.ipt, &pair.ebpf] {
        on_lo(pod, "del", "10.250.0.7/32", "fd00:250::7/128")?;
    }
    listed(&["10.250.0.8", "fd00:250::8"])?;
    compare_from(agent, &pair, &first, &[matrix::APP], &[false])?;
    compare(agent, &pair, &added, &both)
}

/// `owners` connecting to each of `dsts`, with and without the passthrough source: the same
/// outcome in both pods, and `explain` agrees with the datapath.
fn compare(
    agent: &Agent,
    pair: &Pair,
    dsts: &[&'static str],
    owners: &[(u32, u32)],
) -> anyhow::Result<()> {
    compare_from(agent, pair, dsts, owners, &[false, true])
}

/// [`compare`] from an unbound socket (`false`) and/or one bound to the family's passthrough
/// source (`true`).
fn compare_from(
    agent: &Agent,
    pair: &Pair,
    dsts: &[&'static str],
    owners: &[(u32, u32)],
    passthrough_source: &[bool],
) -> anyhow::Result<()> {
    let mut mismatches = Vec::new();
    for &dst in dsts {
        let passthrough = if dst.starts_with('[') {
            "::6"
        } else {
            "127.0.0.6"
        };
        for &owner in owners {
            for bind in passthrough_source.iter().map(|&b| b.then_some(passthrough)) {
                let case = matrix::Case {
                    owner,
                    connector: None,
                    real: None,
                    fs_only: false,
                    bind,
                    dst,
                    v6_socket: false,
                };
                let want = matrix::run(&pair.ipt, &case)?;
                let got = matrix::run(&pair.ebpf, &case)?;
                if want != got {
                    mismatches.push(format!(
                        "{}\n  iptables:  {want}\n  meshsteer: {got}",
                        case.label()
                    ));
                }
                check_explain(agent, &pair.ebpf, &case, &got, &mut mismatches)?;
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    Ok(())
}
