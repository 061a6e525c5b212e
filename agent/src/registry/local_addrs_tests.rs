//! The local-address set of enrolled pods against the in-memory dataplane.
use std::{collections::BTreeSet, net::IpAddr};

use super::{
    Registry,
    fake::{Fake, Op},
};
use crate::{
    source::change::SourceKey,
    spec::{budget::Budget, pod::PodSpec},
    telemetry::status::{PodState, PodStatus},
};

const CG_A: &str = "/sys/fs/cgroup/kubepods/pod-a";
const CG_B: &str = "/sys/fs/cgroup/kubepods/pod-b";
const NS_A: &str = "/run/netns/a";
const NS_B: &str = "/run/netns/b";

fn key(stem: &str) -> SourceKey {
    SourceKey::File(format!("/etc/meshsteer/pods/{stem}.yaml").into())
}

fn pod(name: &str, cgroup: &str, netns: &str, ip: &str) -> PodSpec {
    PodSpec {
        name: name.into(),
        cgroup: cgroup.into(),
        netns: Some(netns.into()),
        ips: vec![ip.parse().unwrap()],
        args: None,
        capture: None,
        accelerate: None,
        nameservers: None,
        resolv_conf: None,
        kube_nameservers: None,
    }
}

fn registry(fake: Fake) -> Registry<Fake> {
    let fake = fake
        .with_cgroup(CG_A, 11)
        .with_cgroup(CG_B, 12)
        .with_netns(NS_A)
        .with_netns(NS_B);
    Registry::new(fake, "/sys/fs/cgroup".into())
}

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

fn status(r: &Registry<Fake>, stem: &str) -> PodStatus {
    r.status()
        .into_iter()
        .find(|p| p.source == key(stem))
        .unwrap()
}

#[test]
fn the_namespaces_addresses_are_local_from_enrolment_and_follow_its_changes() {
    let mut fake = Fake::default();
    fake.add_addr(NS_A, "10.250.0.7");
    fake.add_addr(NS_A, "10.0.0.5");
    let mut r = registry(fake);
    r.upsert(&key("a"), Ok(pod("test/a", CG_A, NS_A, "10.0.0.5")));
    assert_eq!(r.dataplane.local[&11], ips(&["10.0.0.5", "10.250.0.7"]));
    let s = status(&r, "a");
    assert_eq!(
        s.local_addrs,
        ips(&["10.250.0.7"]).into_iter().collect::<Vec<_>>()
    );
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);

    // Nothing changed: nothing written, nothing to publish.
    assert!(!r.refresh_local_addrs(11));

    r.dataplane.add_addr(NS_A, "fd00:250::8");
    r.dataplane.remove_addr(NS_A, "10.250.0.7");
    assert!(r.refresh_local_addrs(11));
    assert_eq!(r.dataplane.local[&11], ips(&["10.0.0.5", "fd00:250::8"]));
    assert_eq!(
        status(&r, "a").local_addrs,
        ips(&["fd00:250::8"]).into_iter().collect::<Vec<_>>()
    );
    // The spec's ips stay local even when the namespace no longer has them.
    r.dataplane.remove_addr(NS_A, "10.0.0.5");
    assert!(!r.refresh_local_addrs(11));
    assert_eq!(r.dataplane.local[&11], ips(&["10.0.0.5", "fd00:250::8"]));
    // The config written is the one the registry holds: still in effect.
    assert_eq!(r.state(&key("a")), Some(PodState::Ready));
}

#[test]
fn addresses_over_the_budget_are_remote_and_named_in_the_status() {
    let mut fake = Fake::default();
    for a in ["10.250.0.7", "10.250.0.8", "10.250.0.9"] {
        fake.add_addr(NS_A, a);
    }
    let budget = Budget {
        local_addrs: 2,
        ..Budget::default()
    };
    let mut r = registry(fake).with_budget(budget);
    r.upsert(&key("a"), Ok(pod("test/a", CG_A, NS_A, "10.0.0.5")));
    assert_eq!(r.state(&key("a")), Some(PodState::Ready));
    assert_eq!(r.dataplane.local[&11], ips(&["10.0.0.5", "10.250.0.7"]));
    let w = status(&r, "a").warnings.join("\n");
    assert!(w.contains("10.250.0.8, 10.250.0.9"), "{w}");

    // One goes: the next one fits, and the warning names only what is still left out.
    r.dataplane.remove_addr(NS_A, "10.250.0.7");
    assert!(r.refresh_local_addrs(11));
    assert_eq!(r.dataplane.local[&11], ips(&["10.0.0.5", "10.250.0.8"]));
    let w = status(&r, "a").warnings.join("\n");
    assert!(w.contains("10.250.0.9") && !w.contains("10.250.0.8"), "{w}");
    r.dataplane.remove_addr(NS_A, "10.250.0.9");
    assert!(r.refresh_local_addrs(11));
    assert!(status(&r, "a").warnings.is_empty());
}

#[test]
fn without_a_watch_capture_stays_with_the_spec_ips_and_says_so() {
    let mut fake = Fake::default();
    fake.add_addr(NS_A, "10.250.0.7");
    fake.fail(Op::WatchAddrs);
    let mut r = registry(fake);
    r.upsert(&key("a"), Ok(pod("test/a", CG_A, NS_A, "10.0.0.5")));
    assert_eq!(r.state(&key("a")), Some(PodState::Ready));
    assert_eq!(r.dataplane.local[&11], ips(&["10.0.0.5"]));
    let w = status(&r, "a").warnings.join("\n");
    assert!(
        w.contains("not tracked") && w.contains("CAP_SYS_ADMIN"),
        "{w}"
    );
}

#[test]
fn addresses_every_pod_has_do_not_make_pods_clash() {
    let mut fake = Fake::default();
    for ns in [NS_A, NS_B] {
        fake.add_addr(ns, "::6");
        fake.add_addr(ns, "fe80::1");
    }
    let mut r = registry(fake);
    r.upsert(&key("a"), Ok(pod("test/a", CG_A, NS_A, "10.0.0.5")));
    r.upsert(&key("b"), Ok(pod("test/b", CG_B, NS_B, "10.0.0.6")));
    assert_eq!(r.state(&key("a")), Some(PodState::Ready));
    assert_eq!(r.state(&key("b")), Some(PodState::Ready));
    assert_eq!(r.dataplane.local[&12], ips(&["10.0.0.6", "::6", "fe80::1"]));
}

#[test]
fn a_removed_pod_is_no_longer_watched() {
    let mut fake = Fake::default();
    fake.add_addr(NS_A, "10.250.0.7");
    let mut r = registry(fake);
    r.upsert(&key("a"), Ok(pod("test/a", CG_A, NS_A, "10.0.0.5")));
    r.remove(&key("a"));
    r.dataplane.add_addr(NS_A, "10.250.0.8");
    assert!(!r.refresh_local_addrs(11));
    assert!(!r.dataplane.local.contains_key(&11));
}
