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
