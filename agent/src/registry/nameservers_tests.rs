//! Which nameservers `--redirect-dns` captures, from which source, against the in-memory
//! dataplane: the precedence, the cost, the refusals and the re-reads.
use std::net::IpAddr;

use super::{
    Registry,
    fake::{Call, Fake},
};
use crate::{
    source::change::{Change, SourceKey},
    spec::{pod::PodSpec, resolv::NameserversFrom},
    telemetry::status::{PodState, PodStatus},
};

const CG: &str = "/sys/fs/cgroup/kubepods/pod-a";
const NS: &str = "/run/netns/a";
const POD_FILE: &str = "nameserver 10.96.0.10\nsearch default.svc.cluster.local\n";

fn key() -> SourceKey {
    SourceKey::File("/etc/meshsteer/pods/a.yaml".into())
}

/// A pod that redirects DNS (`--redirect-dns`), its nameservers from nowhere yet.
fn dns_pod() -> PodSpec {
    PodSpec {
        name: "a".into(),
        cgroup: CG.into(),
        netns: Some(NS.into()),
        ips: vec!["10.0.0.5".parse().unwrap()],
        args: Some("--redirect-dns".into()),
        capture: None,
        accelerate: None,
        nameservers: None,
        resolv_conf: None,
        kube_nameservers: None,
    }
}

fn registry(fake: Fake) -> Registry<Fake> {
    Registry::new(
        fake.with_cgroup(CG, 11).with_netns(NS),
        "/sys/fs/cgroup".into(),
    )
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

fn status(r: &Registry<Fake>) -> PodStatus {
    r.status().into_iter().find(|p| p.source == key()).unwrap()
}

/// The pod's nameservers in effect and their source.
fn dns(r: &Registry<Fake>) -> (Vec<IpAddr>, Option<NameserversFrom>) {
    let s = status(r);
    (s.nameservers, s.nameservers_from)
}

fn upsert(r: &mut Registry<Fake>, spec: PodSpec) {
    r.apply(vec![Change::Upsert(key(), Box::new(Ok(spec)))]);
}

#[test]
fn without_redirect_dns_nothing_is_read() {
    let mut fake = Fake::default().with_file("/etc/pod-resolv.conf", POD_FILE);
    fake.set_pod_resolv(CG, Some(POD_FILE));
    let mut r = registry(fake);
    let spec = PodSpec {
        args: None,
        kube_nameservers: Some(Ok(ips(&["10.96.0.99"]))),
        ..dns_pod()
    };
    upsert(&mut r, spec.clone());
    assert_eq!(status(&r).state, PodState::Ready);
    assert_eq!(dns(&r), (vec![], None));
    r.apply(vec![Change::Refresh(key())]);
    upsert(&mut r, spec.clone());
    // Even a resolvConf that does not exist is not read: the pod does not redirect DNS.
    upsert(
        &mut r,
        PodSpec {
            resolv_conf: Some("/nonexistent".into()),
            ..spec
        },
    );
    assert_eq!(status(&r).state, PodState::Ready);
    assert_eq!(r.host().resolv_reads.get(), 0);
}

#[test]
fn sources_win_in_order_spec_resolv_conf_pod_kubernetes() {
    let mut fake =
        Fake::default().with_file("/etc/meshsteer/resolv.conf", "nameserver 10.0.0.53\n");
    fake.set_pod_resolv(CG, Some(POD_FILE));
    let mut r = registry(fake);
    let kube = Some(Ok(ips(&["10.96.0.99"])));
    // The spec's list, over everything else.
    upsert(
        &mut r,
        PodSpec {
            nameservers: Some(ips(&["10.1.1.1"])),
            kube_nameservers: kube.clone(),
            ..dns_pod()
        },
    );
    assert_eq!(dns(&r), (ips(&["10.1.1.1"]), Some(NameserversFrom::Spec)));
    assert_eq!(
        r.host().resolv_reads.get(),
        0,
        "the pod's own file is not read"
    );
    // The spec's resolvConf, over the pod's own file.
    upsert(
        &mut r,
        PodSpec {
            resolv_conf: Some("/etc/meshsteer/resolv.conf".into()),
            kube_nameservers: kube.clone(),
            ..dns_pod()
        },
    );
    assert_eq!(
        dns(&r),
        (ips(&["10.0.0.53"]), Some(NameserversFrom::ResolvConf))
    );
    // The pod's own, over what Kubernetes gives it.
    let spec = PodSpec {
        kube_nameservers: kube,
        ..dns_pod()
    };
    upsert(&mut r, spec.clone());
    assert_eq!(dns(&r), (ips(&["10.96.0.10"]), Some(NameserversFrom::Pod)));
    // Kubernetes' when no process has a file.
    r.host().set_pod_resolv(CG, None);
    upsert(
        &mut r,
        PodSpec {
            ips: ips(&["10.0.0.6"]),
            ..spec
        },
    );
    assert_eq!(
        dns(&r),
        (ips(&["10.96.0.99"]), Some(NameserversFrom::Kubernetes))
    );
    assert!(status(&r).warnings.is_empty());
}

#[test]
fn an_unreadable_resolv_conf_refuses_the_pod_naming_the_path() {
    let mut r = registry(Fake::default());
    let missing = PodSpec {
        resolv_conf: Some("/etc/missing-resolv.conf".into()),
        ..dns_pod()
    };
    upsert(&mut r, missing.clone());
    let PodState::Error(why) = status(&r).state else {
        panic!("refused expected: {:?}", status(&r).state);
    };
    assert!(
        why.contains("resolvConf") && why.contains("/etc/missing-resolv.conf"),
        "{why}"
    );
    // Enrolled refused, fail closed: never its capture half-applied.
    assert!(status(&r).fail_closed);
    assert!(r.host().refused.contains(&11));
    // A pod in effect keeps its capture when an update names an unreadable file.
    upsert(
        &mut r,
        PodSpec {
            nameservers: Some(ips(&["10.1.1.1"])),
            ..dns_pod()
        },
    );
    let ready = status(&r);
    assert_eq!(ready.state, PodState::Ready);
    r.host().take_calls();
    upsert(&mut r, missing);
    assert!(matches!(status(&r).state, PodState::Error(_)));
    assert!(r.host().take_calls().is_empty(), "nothing written");
    assert_eq!(dns(&r), (ips(&["10.1.1.1"]), Some(NameserversFrom::Spec)));
}

#[test]
fn no_source_is_a_warning_and_dns_is_left_alone() {
    let mut r = registry(Fake::default());
    upsert(&mut r, dns_pod());
    let s = status(&r);
    assert_eq!(s.state, PodState::Ready);
    assert_eq!((s.nameservers, s.nameservers_from), (vec![], None));
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("--redirect-dns") && w.contains("no DNS is captured")),
        "{:?}",
        s.warnings
    );
    let cluster_unknown = PodSpec {
        ips: ips(&["10.0.0.6"]),
        kube_nameservers: Some(Err("the cluster DNS service is not known: x".into())),
        ..dns_pod()
    };
    upsert(&mut r, cluster_unknown);
    assert!(
        status(&r)
            .warnings
            .iter()
            .any(|w| w.contains("the cluster DNS service is not known")),
        "{:?}",
        status(&r).warnings
    );
}

/// Enrolled at its CNI ADD before any process ran, a pod has what Kubernetes gives it; once
/// a process shows its own file, the next word from its source re-plans it with that file's.
#[test]
fn the_pods_own_file_replaces_kubernetes_once_a_process_has_it() {
    let mut r = registry(Fake::default());
    let spec = PodSpec {
        kube_nameservers: Some(Ok(ips(&["10.96.0.10"]))),
        ..dns_pod()
    };
    upsert(&mut r, spec.clone());
    assert_eq!(
        dns(&r),
        (ips(&["10.96.0.10"]), Some(NameserversFrom::Kubernetes))
    );
    let first = r.captured_pod_id();
    // A process with the same nameservers: nothing re-planned, only the source said.
    r.host().set_pod_resolv(CG, Some(POD_FILE));
    r.host().take_calls();
    r.apply(vec![Change::Refresh(key())]);
    assert_eq!(dns(&r), (ips(&["10.96.0.10"]), Some(NameserversFrom::Pod)));
    assert!(r.host().take_calls().is_empty());
    assert_eq!(r.captured_pod_id(), first);
    // The file differs: re-planned in place, the new plan swapped in over the old.
    r.host().set_pod_resolv(
        CG,
        Some("nameserver 169.254.20.10\nnameserver 10.96.0.10\n"),
    );
    r.host().take_calls();
    r.apply(vec![Change::Refresh(key())]);
    assert_eq!(
        dns(&r),
        (
            ips(&["169.254.20.10", "10.96.0.10"]),
            Some(NameserversFrom::Pod)
        )
    );
    let calls = r.host().take_calls();
    assert!(
        calls.iter().any(|c| matches!(c, Call::Apply { cgroup_id: 11, pod_id, previous: Some(p) } if *p == first && *pod_id > first)),
        "{calls:?}"
    );
    assert_eq!(status(&r).state, PodState::Ready);
    // The same spec again (a touched spec file) reads it again too.
    r.host().set_pod_resolv(CG, Some("nameserver 10.96.0.11\n"));
    upsert(&mut r, spec);
    assert_eq!(dns(&r), (ips(&["10.96.0.11"]), Some(NameserversFrom::Pod)));
    // Nothing changed: nothing written.
    r.host().take_calls();
    r.apply(vec![Change::Refresh(key())]);
    assert!(r.host().take_calls().is_empty());
}

/// A spec's own list or file is never read again on a refresh: only a spec change does.
#[test]
fn explicit_sources_are_not_read_again() {
    let fake = Fake::default().with_file("/etc/r.conf", "nameserver 10.0.0.53\n");
    let mut r = registry(fake);
    upsert(
        &mut r,
        PodSpec {
            resolv_conf: Some("/etc/r.conf".into()),
            ..dns_pod()
        },
    );
    r.host().set_pod_resolv(CG, Some(POD_FILE));
    r.apply(vec![Change::Refresh(key())]);
    assert_eq!(
        dns(&r),
        (ips(&["10.0.0.53"]), Some(NameserversFrom::ResolvConf))
    );
    assert_eq!(r.host().resolv_reads.get(), 0);
}

impl Registry<Fake> {
    fn host(&mut self) -> &mut Fake {
        &mut self.dataplane
    }

    fn captured_pod_id(&self) -> u32 {
        status(self).pod_id.unwrap()
    }
}
