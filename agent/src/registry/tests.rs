//! The state machine against an in-memory dataplane: the cases that otherwise only the
//! privileged tests reach (renames, moves, failed updates, restarts, dying namespaces).

use super::{
    Registry,
    fake::{Call, Fake, Op},
};
use crate::{
    bpf::accel::Support,
    host::userns::{IdMap, IdMaps},
    source::{
        change::{Change, Rejected, SourceKey},
        rotation::ROUND,
    },
    spec::{budget::Budget, pod::PodSpec},
    telemetry::status::PodState,
};

const ROOT: &str = "/sys/fs/cgroup";
const CG_A: &str = "/sys/fs/cgroup/kubepods/pod-a";
const CG_B: &str = "/sys/fs/cgroup/kubepods/pod-b";
const NS_A: &str = "/run/netns/a";
const NS_B: &str = "/run/netns/b";

fn file(stem: &str) -> SourceKey {
    SourceKey::File(format!("/etc/meshsteer/pods/{stem}.yaml").into())
}

/// The injector's defaults: inbound and outbound capture.
fn pod(name: &str, cgroup: &str, netns: &str) -> PodSpec {
    PodSpec {
        name: name.into(),
        cgroup: cgroup.into(),
        netns: Some(netns.into()),
        ips: vec!["10.0.0.5".parse().unwrap()],
        args: None,
        capture: None,
        accelerate: None,
        nameservers: None,
        resolv_conf: None,
        kube_nameservers: None,
    }
}

fn outbound_only(name: &str, cgroup: &str) -> PodSpec {
    PodSpec {
        netns: None,
        args: Some("-i '*' -b \"\"".into()),
        ..pod(name, cgroup, "")
    }
}

/// Two pod cgroups (ids 11 and 12) and their namespaces.
fn host() -> Fake {
    Fake::default()
        .with_cgroup(CG_A, 11)
        .with_cgroup(CG_B, 12)
        .with_netns(NS_A)
        .with_netns(NS_B)
}

fn registry(fake: Fake) -> Registry<Fake> {
    Registry::new(fake, ROOT.into())
}

impl Registry<Fake> {
    fn fake(&mut self) -> &mut Fake {
        &mut self.dataplane
    }

    /// (cgroup id, pod id) of the capture in effect for the pod.
    fn captured(&self, key: &SourceKey) -> Option<(u64, u32)> {
        let p = self.status().into_iter().find(|p| p.source == *key)?;
        Some((p.cgroup_id?, p.pod_id?))
    }

    fn error(&self, key: &SourceKey) -> String {
        match self.state(key) {
            Some(PodState::Error(why)) => why,
            other => panic!("{key}: expected an error, got {other:?}"),
        }
    }
}

#[test]
fn enrols_with_the_link_first_and_the_addresses_last() {
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    assert_eq!(
        r.fake().take_calls(),
        [
            Call::Attach {
                cgroup_id: 11,
                netns: NS_A.into()
            },
            Call::Apply {
                cgroup_id: 11,
                pod_id: 1,
                previous: None
            },
        ]
    );
    assert_eq!(r.state(&file("a")), Some(PodState::Ready));
    assert_eq!(r.captured(&file("a")), Some((11, 1)));

    // The same spec again (every poll of an unchanged source) writes nothing.
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    assert_eq!(r.fake().take_calls(), []);
}

#[test]
fn outbound_only_pods_have_no_link_and_no_addresses() {
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(outbound_only("test/a", CG_A)));
    assert_eq!(
        r.fake().take_calls(),
        [
            Call::Apply {
                cgroup_id: 11,
                pod_id: 1,
                previous: None
            },
            // A link a previous plan had goes once the new plan is in.
            Call::Detach { cgroup_id: 11 },
        ]
    );
    assert_eq!(r.state(&file("a")), Some(PodState::Ready));
}

#[test]
fn inbound_capture_without_a_namespace_is_refused() {
    let mut r = registry(host());
    let spec = PodSpec {
        netns: None,
        ..pod("test/a", CG_A, "")
    };
    r.upsert(&file("a"), Ok(spec));
    assert_eq!(
        r.error(&file("a")),
        "inbound capture (-b) needs the pod's network namespace: add `netns:` to the spec, \
         or `-b \"\"` to capture outbound only"
    );
    // Enrolled refused, fail closed: no capture, none of its connections go direct.
    assert_eq!(
        r.fake().take_calls(),
        [Call::Apply {
            cgroup_id: 11,
            pod_id: 0,
            previous: None
        }]
    );
    assert!(r.fake().refused.contains(&11));
    assert_eq!(r.captured(&file("a")), None);
}

#[test]
fn a_cgroup_outside_the_root_is_refused() {
    let mut r = registry(host().with_cgroup("/sys/fs/cgroup2/x", 20));
    r.upsert(&file("a"), Ok(pod("test/a", "/sys/fs/cgroup2/x", NS_A)));
    assert_eq!(
        r.error(&file("a")),
        "cgroup /sys/fs/cgroup2/x is outside the cgroup root /sys/fs/cgroup where capture is \
         attached"
    );
    assert_eq!(r.fake().take_calls(), []);
}

#[test]
fn refusals_keep_the_whole_error_chain() {
    let mut r = registry(host());
    let gone = "/sys/fs/cgroup/kubepods/gone";
    r.upsert(&file("a"), Ok(pod("test/a", gone, NS_A)));
    assert_eq!(
        r.error(&file("a")),
        format!("cgroup {gone}: No such file or directory (os error 2)")
    );
}

#[test]
fn a_renamed_spec_file_moves_the_pod_to_its_new_key() {
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    r.fake().take_calls();

    r.remove(&file("a"));
    r.upsert(&file("renamed"), Ok(pod("test/a", CG_A, NS_A)));
    assert_eq!(
        r.fake().take_calls(),
        [
            Call::Remove {
                cgroup_id: 11,
                pod_id: 1
            },
            Call::Detach { cgroup_id: 11 },
            Call::Attach {
                cgroup_id: 11,
                netns: NS_A.into()
            },
            Call::Apply {
                cgroup_id: 11,
                pod_id: 2,
                previous: None
            },
        ]
    );
    assert_eq!(r.state(&file("a")), None);
    assert_eq!(r.state(&file("renamed")), Some(PodState::Ready));
    assert_eq!(r.fake().enrolled, [(11, 2)].into());
}

/// A spec file renamed (`mv a.yaml renamed.yaml`): one scan sees the new key appear and the
/// old one go. The pod moves to its new key with its capture untouched: no write at all, and
/// never a moment uncaptured. (It used to be refused as a duplicate name, then removed.)
#[test]
fn a_rename_seen_in_one_scan_keeps_capture() {
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    r.fake().take_calls();

    r.apply(vec![
        Change::Upsert(file("renamed"), Box::new(Ok(pod("test/a", CG_A, NS_A)))),
        Change::Remove(file("a")),
    ]);
    assert_eq!(r.fake().take_calls(), []);
    assert_eq!(r.state(&file("a")), None);
    assert_eq!(r.state(&file("renamed")), Some(PodState::Ready));
    assert_eq!(r.captured(&file("renamed")), Some((11, 1)));
    assert_eq!(r.fake().enrolled, [(11, 1)].into());
    assert_eq!(r.fake().links.len(), 1);
}

/// A rename that also changes the spec: moved to the new key, then updated in place.
#[test]
fn a_rename_with_a_changed_spec_updates_in_place() {
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    r.fake().take_calls();

    r.apply(vec![
        Change::Remove(file("a")),
        Change::Upsert(file("renamed"), Box::new(Ok(outbound_only("test/a", CG_A)))),
    ]);
    assert_eq!(r.state(&file("renamed")), Some(PodState::Ready));
    assert_eq!(r.state(&file("a")), None);
    assert!(
        r.fake()
            .take_calls()
            .iter()
            .all(|c| !matches!(c, Call::Remove { .. })),
        "the pod was never removed"
    );
    assert!(
        r.fake().links.is_empty(),
        "outbound only: no sk_lookup link"
    );
}

#[test]
fn a_pod_whose_cgroup_moves_is_applied_on_the_new_one_before_the_old_one_goes() {
    let key = SourceKey::Kube {
        namespace: "test".into(),
        name: "a".into(),
    };
    let mut r = registry(host());
    r.upsert(&key, Ok(pod("test/a", CG_A, NS_A)));
    r.fake().take_calls();

    r.upsert(&key, Ok(pod("test/a", CG_B, NS_B)));
    assert_eq!(
        r.fake().take_calls(),
        [
            Call::Attach {
                cgroup_id: 12,
                netns: NS_B.into()
            },
            Call::Apply {
                cgroup_id: 12,
                pod_id: 2,
                previous: None
            },
            Call::Remove {
                cgroup_id: 11,
                pod_id: 1
            },
            Call::Detach { cgroup_id: 11 },
        ]
    );
    assert_eq!(r.fake().enrolled, [(12, 2)].into());
    assert_eq!(r.fake().links, [(12, NS_B.into())].into());
    assert_eq!(r.captured(&key), Some((12, 2)));
}

#[test]
fn a_failed_update_keeps_the_previous_capture_and_says_why() {
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    r.fake().take_calls();

    let changed = PodSpec {
        ips: vec!["10.0.0.6".parse().unwrap()],
        ..pod("test/a", CG_A, NS_A)
    };
    r.fake().fail(Op::Apply);
    r.upsert(&file("a"), Ok(changed.clone()));
    assert_eq!(
        r.error(&file("a")),
        "writing the pod's config: injected Apply failure"
    );
    // The agent's own failure, not the pod's settings (a CNI ADD says "failed").
    assert!(r.agent_failed(&file("a")));
    // Same cgroup: the link stays, the old plan stays.
    assert_eq!(
        r.fake().take_calls(),
        [
            Call::Attach {
                cgroup_id: 11,
                netns: NS_A.into()
            },
            Call::Apply {
                cgroup_id: 11,
                pod_id: 2,
                previous: Some(1)
            },
        ]
    );
    assert_eq!(r.captured(&file("a")), Some((11, 1)));
    assert_eq!(r.fake().enrolled, [(11, 1)].into());
    assert_eq!(r.fake().links, [(11, NS_A.into())].into());

    // Not ready, so the same spec is tried again, and swaps from the plan still in effect.
    r.fake().recover(Op::Apply);
    r.upsert(&file("a"), Ok(changed));
    assert_eq!(r.state(&file("a")), Some(PodState::Ready));
    assert!(r.fake().take_calls().contains(&Call::Apply {
        cgroup_id: 11,
        pod_id: 3,
        previous: Some(1)
    }));
    assert_eq!(r.fake().links, [(11, NS_A.into())].into());
}

#[test]
fn a_failed_move_leaves_the_old_cgroup_captured() {
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    r.fake().take_calls();

    r.fake().fail(Op::Apply);
    r.upsert(&file("a"), Ok(pod("test/a", CG_B, NS_B)));
    assert_eq!(
        r.fake().take_calls(),
        [
            Call::Attach {
                cgroup_id: 12,
                netns: NS_B.into()
            },
            Call::Apply {
                cgroup_id: 12,
                pod_id: 2,
                previous: None
            },
            // Only the new cgroup's link: the old one still captures.
            Call::Detach { cgroup_id: 12 },
        ]
    );
    assert_eq!(r.fake().enrolled, [(11, 1)].into());
    assert_eq!(r.fake().links, [(11, NS_A.into())].into());
    assert_eq!(r.captured(&file("a")), Some((11, 1)));
}

#[test]
fn an_unsupported_option_writes_nothing_and_keeps_the_previous_capture() {
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    r.fake().take_calls();

    let bad = PodSpec {
        args: Some("-i '*' -k eth1".into()),
        ..pod("test/a", CG_A, NS_A)
    };
    r.upsert(&file("a"), Ok(bad));
    assert!(
        r.error(&file("a"))
            .contains("unsupported istio-iptables option -k"),
    );
    // The pod's settings, not the agent: a CNI ADD says "refused".
    assert!(!r.agent_failed(&file("a")));
    assert_eq!(r.fake().take_calls(), []);
    assert_eq!(r.captured(&file("a")), Some((11, 1)));
}

#[test]
fn a_second_pod_of_the_same_name_is_refused() {
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    r.fake().take_calls();

    r.upsert(&file("b"), Ok(pod("test/a", CG_B, NS_B)));
    assert_eq!(
        r.error(&file("b")),
        "pod name \"test/a\" is already used by /etc/meshsteer/pods/a.yaml"
    );
    assert_eq!(r.fake().take_calls(), []);
    assert_eq!(r.state(&file("a")), Some(PodState::Ready));
}

#[test]
fn a_second_pod_in_the_same_cgroup_is_refused() {
    let kube = SourceKey::Kube {
        namespace: "test".into(),
        name: "a".into(),
    };
    let mut r = registry(host());
    r.upsert(&kube, Ok(pod("test/a", CG_A, NS_A)));
    r.fake().take_calls();

    r.upsert(&file("b"), Ok(pod("test/b", CG_A, NS_A)));
    assert_eq!(
        r.error(&file("b")),
        format!("cgroup {CG_A} is already enrolled by pod test/a")
    );
    assert_eq!(r.fake().take_calls(), []);
    assert_eq!(r.captured(&kube), Some((11, 1)));
}

#[test]
fn after_a_restart_ids_continue_and_only_pods_not_re_enrolled_are_collected() {
    // A previous agent enrolled cgroups 11 (pod id 7), 12 (pod id 9) and 30 (pod id 4).
    let fake = host()
        .with_adopted(11, 7)
        .with_adopted(12, 9)
        .with_adopted(30, 4);
    let mut r = registry(fake);

    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    // Pod b's spec is now refused: it is enrolled refused (fail closed) over its old
    // capture, whose sets the collection frees (no config uses pod id 9 any more).
    let bad = PodSpec {
        args: Some("-m TPROXY".into()),
        ..pod("test/b", CG_B, NS_B)
    };
    r.upsert(&file("b"), Ok(bad));
    assert!(r.error(&file("b")).contains("TPROXY"));
    assert!(r.fake().take_calls().contains(&Call::Apply {
        cgroup_id: 11,
        pod_id: 10,
        previous: None
    }));

    r.reconcile_adopted();
    assert_eq!(
        r.fake().take_calls(),
        [Call::GarbageCollect { keep: vec![11, 12] }]
    );
    assert_eq!(r.fake().enrolled, [(11, 10), (12, 0)].into());
    assert!(r.fake().refused.contains(&12));
}

#[test]
fn a_fresh_node_starts_pod_ids_at_one() {
    let mut r = registry(host());
    r.reconcile_adopted();
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    assert_eq!(r.captured(&file("a")), Some((11, 1)));
}

#[test]
fn a_vanished_namespace_removes_capture_and_reports_it() {
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    r.upsert(&file("b"), Ok(outbound_only("test/b", CG_B)));
    assert!(!(0..ROUND).any(|_| r.check_namespaces()));
    r.fake().take_calls();

    r.fake().delete_netns(NS_A);
    // Within one round of polls, and in a single one of them.
    let found: Vec<bool> = (0..ROUND).map(|_| r.check_namespaces()).collect();
    assert_eq!(found.iter().filter(|f| **f).count(), 1, "{found:?}");
    assert_eq!(
        r.fake().take_calls(),
        [
            Call::Remove {
                cgroup_id: 11,
                pod_id: 1
            },
            Call::Detach { cgroup_id: 11 },
        ]
    );
    assert_eq!(
        r.error(&file("a")),
        "network namespace /run/netns/a disappeared; capture removed"
    );
    assert_eq!(r.captured(&file("a")), None);
    // A pod without a namespace of its own is not affected.
    assert_eq!(r.state(&file("b")), Some(PodState::Ready));

    // Reported once.
    assert!(!(0..ROUND).any(|_| r.check_namespaces()));
    assert_eq!(r.fake().take_calls(), []);
}

#[test]
fn waiting_and_refused_pods_are_told_apart_and_write_nothing() {
    let mut r = registry(host());
    r.upsert(
        &file("a"),
        Err(Rejected::waiting("test/a", "no pod IP yet")),
    );
    r.upsert(
        &file("b"),
        Err(Rejected::refused("test/b", "not a pod spec")),
    );
    assert_eq!(
        r.state(&file("a")),
        Some(PodState::Waiting("no pod IP yet".into()))
    );
    assert_eq!(
        r.state(&file("b")),
        Some(PodState::Error("not a pod spec".into()))
    );
    assert_eq!(r.fake().take_calls(), []);
    let status = r.status();
    assert!(
        status
            .iter()
            .all(|p| p.cgroup.is_none() && p.pod_id.is_none())
    );

    // Once it is there, the waiting pod enrols.
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    assert_eq!(r.state(&file("a")), Some(PodState::Ready));
}

#[test]
fn a_ready_pod_its_source_no_longer_has_keeps_its_capture_while_waiting() {
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    r.fake().take_calls();

    r.upsert(&file("a"), Err(Rejected::waiting("test/a", "no netns yet")));
    assert_eq!(
        r.state(&file("a")),
        Some(PodState::Waiting("no netns yet".into()))
    );
    assert_eq!(r.captured(&file("a")), Some((11, 1)));
    assert_eq!(r.fake().take_calls(), []);
}

#[test]
fn existing_listeners_are_registered_and_failures_only_warn() {
    let (v4, v6) = (libc::AF_INET as u32, libc::AF_INET6 as u32);
    let mut r = registry(host().with_listener(CG_A, v4).with_listener(CG_A, v6));
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    let calls = r.fake().take_calls();
    assert_eq!(
        calls[calls.len() - 2..],
        [
            Call::AddListener {
                cgroup_id: 11,
                family: v4
            },
            Call::AddListener {
                cgroup_id: 11,
                family: v6
            },
        ]
    );

    // A listener that cannot be registered, or a scan that fails, does not refuse the pod.
    for op in [Op::AddListener, Op::ScanListeners] {
        r.remove(&file("a"));
        r.fake().fail(op);
        r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
        assert_eq!(r.state(&file("a")), Some(PodState::Ready), "{op:?}");
        r.fake().recover(op);
    }

    // Outbound-only pods are not scanned.
    r.remove(&file("a"));
    r.fake().take_calls();
    r.upsert(&file("a"), Ok(outbound_only("test/a", CG_A)));
    assert!(
        !r.fake()
            .take_calls()
            .iter()
            .any(|c| matches!(c, Call::AddListener { .. }))
    );
}

#[test]
fn only_the_proxys_listeners_in_the_pods_netns_are_registered() {
    let v4 = libc::AF_INET as u32;
    let others = host()
        .with_listener_of(CG_A, v4, (1000, 1000), None)
        .with_listener_of(CG_A, v4, (1337, 1337), Some("/run/netns/elsewhere"))
        .with_listener_of(CG_A, v4, (0, 0), None);
    let mut r = registry(others);
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    assert!(
        !r.fake()
            .take_calls()
            .iter()
            .any(|c| matches!(c, Call::AddListener { .. })),
        "an app's listener, root's, or the proxy uid's in another netns took the inbound port"
    );
    assert_eq!(r.state(&file("a")), Some(PodState::Ready));

    // The proxy by gid alone (`-g 1337`) is the proxy.
    let mut r = registry(host().with_listener_of(CG_A, v4, (1000, 1337), None));
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    assert!(
        r.fake()
            .take_calls()
            .iter()
            .any(|c| matches!(c, Call::AddListener { .. }))
    );
}

#[test]
fn a_user_namespaced_pods_proxy_ids_are_mapped_to_the_hosts() {
    let maps = IdMaps {
        uid: IdMap::parse("0 100000 65536"),
        gid: IdMap::parse("0 200000 2000"),
    };
    let mut r = registry(host().with_userns(NS_A, maps));
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    assert_eq!(r.state(&file("a")), Some(PodState::Ready));
    let cfg = r.fake().configs[&11];
    assert_eq!((cfg.uids[0], cfg.gids[0]), (101337, 201337));

    // istio-init's owner rule would be refused for an id the namespace does not map.
    let maps = IdMaps {
        uid: IdMap::parse("0 100000 1000"),
        gid: IdMap::parse("0 200000 65536"),
    };
    let mut r = registry(host().with_userns(NS_A, maps));
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    let Some(PodState::Error(why)) = r.state(&file("a")) else {
        panic!("{:?}", r.state(&file("a")));
    };
    assert!(why.contains("-u 1337 is not mapped"), "{why}");
    // As when istio-init fails, the pod does not run uncaptured: it is enrolled refused.
    assert!(r.fake().refused.contains(&11), "fail closed");
}

#[test]
fn a_removed_pod_stops_capture_and_leaves_the_status() {
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    r.fake().take_calls();

    r.remove(&file("a"));
    assert_eq!(
        r.fake().take_calls(),
        [
            Call::Remove {
                cgroup_id: 11,
                pod_id: 1
            },
            Call::Detach { cgroup_id: 11 },
        ]
    );
    assert!(r.status().is_empty());
    assert!(r.fake().enrolled.is_empty() && r.fake().links.is_empty());

    // Unknown keys (and refused pods) have nothing to undo.
    r.remove(&file("a"));
    r.upsert(&file("b"), Err(Rejected::refused("test/b", "bad")));
    r.remove(&file("b"));
    assert_eq!(r.fake().take_calls(), []);
}

#[test]
fn acceleration_follows_the_spec_then_the_agent_default() {
    let mut r = registry(host()).with_acceleration(true, Support::Available);
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    let off = PodSpec {
        accelerate: Some(false),
        ips: vec!["10.0.0.6".parse().unwrap()],
        ..pod("test/b", CG_B, NS_B)
    };
    r.upsert(&file("b"), Ok(off));
    let accel: Vec<_> = r.status().into_iter().map(|p| p.accelerate).collect();
    assert_eq!(accel, [Some(true), Some(false)]);
}

#[test]
fn a_new_pod_whose_link_cannot_attach_is_refused_before_any_map_write() {
    let mut r = registry(host());
    r.fake().fail(Op::Attach);
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    assert_eq!(r.error(&file("a")), "injected Attach failure");
    // None of its plan: only its refused config (fail closed).
    assert!(
        !r.fake()
            .take_calls()
            .iter()
            .any(|c| matches!(c, Call::Apply { pod_id, .. } if *pod_id != 0))
    );
    assert_eq!(r.fake().enrolled, [(11, 0)].into());
    assert!(r.fake().refused.contains(&11));
}

/// A failed update that would turn inbound capture off keeps all of the previous capture,
/// its sk_lookup link included: the link goes only once the new plan is in the maps.
#[test]
fn a_failed_update_to_outbound_only_keeps_the_link() {
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    r.fake().take_calls();

    r.fake().fail(Op::Apply);
    r.upsert(&file("a"), Ok(outbound_only("test/a", CG_A)));
    assert!(r.error(&file("a")).contains("injected Apply failure"));
    assert_eq!(r.captured(&file("a")), Some((11, 1)));
    assert_eq!(r.fake().enrolled, [(11, 1)].into());
    assert_eq!(
        r.fake().links.len(),
        1,
        "the previous capture's link is kept"
    );
}

/// The attach root itself is no pod: enrolling it would capture every process below it.
#[test]
fn the_cgroup_root_is_refused() {
    let mut r = registry(host().with_cgroup(ROOT, 1));
    r.upsert(&file("root"), Ok(outbound_only("test/root", ROOT)));
    assert!(
        r.error(&file("root")).contains("is the cgroup root"),
        "{}",
        r.error(&file("root"))
    );
    assert!(r.fake().take_calls().is_empty());
}

/// Nested pod cgroups are refused either way round: the datapath gives a socket to its
/// outermost enrolled ancestor, so the outer pod would take the inner one's capture.
#[test]
fn nested_pod_cgroups_are_refused() {
    let inner = "/sys/fs/cgroup/kubepods/pod-a/inner";
    let mut r = registry(host().with_cgroup(inner, 13));
    r.upsert(&file("a"), Ok(outbound_only("test/a", CG_A)));
    r.fake().take_calls();

    r.upsert(&file("inner"), Ok(outbound_only("test/inner", inner)));
    let e = r.error(&file("inner"));
    assert!(e.contains("are nested"), "{e}");
    assert!(
        r.fake().take_calls().is_empty(),
        "nothing written for the refused pod"
    );

    // The other way round: an ancestor of an enrolled pod.
    let mut r = registry(host().with_cgroup(inner, 13));
    r.upsert(&file("inner"), Ok(outbound_only("test/inner", inner)));
    r.upsert(&file("a"), Ok(outbound_only("test/a", CG_A)));
    assert!(r.error(&file("a")).contains("are nested"));
    assert_eq!(r.state(&file("inner")), Some(PodState::Ready));

    // Siblings whose names share a prefix are not nested.
    let mut r = registry(host().with_cgroup("/sys/fs/cgroup/kubepods/pod-ab", 14));
    r.upsert(&file("a"), Ok(outbound_only("test/a", CG_A)));
    r.upsert(
        &file("ab"),
        Ok(outbound_only("test/ab", "/sys/fs/cgroup/kubepods/pod-ab")),
    );
    assert_eq!(r.state(&file("ab")), Some(PodState::Ready));
}

/// A second pod claiming an enrolled pod's address is an operator's mistake: it is refused
/// (fail closed, in its own network namespace only), and the first pod keeps its capture.
#[test]
fn a_duplicate_inbound_address_is_refused() {
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    r.fake().take_calls();

    r.upsert(&file("b"), Ok(pod("test/b", CG_B, NS_B)));
    let e = r.error(&file("b"));
    assert!(
        e.contains("address 10.0.0.5 is already /etc/meshsteer/pods/a.yaml's"),
        "{e}"
    );
    // Only its refused config and its own namespace's link: fail closed.
    assert_eq!(
        r.fake().take_calls(),
        [
            Call::Apply {
                cgroup_id: 12,
                pod_id: 0,
                previous: None
            },
            Call::Attach {
                cgroup_id: 12,
                netns: NS_B.into()
            }
        ]
    );
    r.remove(&file("b"));
    assert_eq!(r.state(&file("a")), Some(PodState::Ready));
    assert_eq!(
        r.fake().take_calls(),
        [
            Call::Remove {
                cgroup_id: 12,
                pod_id: 0
            },
            Call::Detach { cgroup_id: 12 }
        ],
        "removing the refused pod touches only its own entry"
    );

    // Outbound-only pods claim no address, so they may share one.
    r.upsert(&file("c"), Ok(outbound_only("test/c", CG_B)));
    assert_eq!(r.state(&file("c")), Some(PodState::Ready));
}

/// The status carries the settings in effect (what `explain` decides from): the enrolled
/// ones, still the previous ones after a refused update, none for a pod never enrolled.
#[test]
fn the_status_carries_the_settings_in_effect() {
    let mut r = registry(host());
    let excluding = PodSpec {
        args: Some("-i '*' -x 10.200.0.0/16".into()),
        ..pod("test/a", CG_A, NS_A)
    };
    r.upsert(&file("a"), Ok(excluding.clone()));
    let settings = |r: &Registry<Fake>, key: &SourceKey| {
        let p = r.status().into_iter().find(|p| p.source == *key).unwrap();
        (p.capture, p.ips)
    };
    let expected = (
        Some(excluding.capture().unwrap()),
        vec!["10.0.0.5".parse().unwrap()],
    );
    assert_eq!(settings(&r, &file("a")), expected);

    let bad = PodSpec {
        args: Some("-i '*' -k eth1".into()),
        ..pod("test/a", CG_A, NS_A)
    };
    r.upsert(&file("a"), Ok(bad));
    assert_eq!(settings(&r, &file("a")), expected);

    r.upsert(
        &file("b"),
        Err(Rejected::waiting("test/b", "no cgroup yet")),
    );
    assert_eq!(settings(&r, &file("b")), (None, vec![]));
}

#[test]
fn status_says_where_options_came_from_and_what_was_not_applied() {
    use crate::telemetry::status::{OptionsFrom, OptionsOrigin};
    let kube = SourceKey::Kube {
        namespace: "ns".into(),
        name: "b".into(),
    };
    let mut r = registry(host());
    let b = PodSpec {
        ips: vec!["10.0.0.6".parse().unwrap()],
        ..pod("ns/b", CG_B, NS_B)
    };
    r.apply(vec![
        Change::Upsert(file("a"), Box::new(Ok(pod("test/a", CG_A, NS_A)))),
        Change::Upsert(kube.clone(), Box::new(Ok(b.clone()))),
        Change::Pending(kube.clone(), Some("annotation x changed".into())),
        // A pod the registry does not know: nothing to note.
        Change::Pending(file("z"), Some("ignored".into())),
    ]);
    let options = |r: &Registry<Fake>, key: &SourceKey| {
        r.status()
            .into_iter()
            .find(|p| p.source == *key)
            .and_then(|p| p.options)
    };
    assert_eq!(
        options(&r, &file("a")),
        Some(OptionsOrigin {
            from: OptionsFrom::SpecFile,
            pending: None
        })
    );
    let noted = Some(OptionsOrigin {
        from: OptionsFrom::Annotations,
        pending: Some("annotation x changed".into()),
    });
    assert_eq!(options(&r, &kube), noted);
    assert_eq!(r.status().len(), 2);
    // A later update of the pod (its namespace re-resolved, say) keeps the note; the note
    // alone writes nothing.
    r.fake().take_calls();
    let moved = PodSpec {
        ips: vec!["10.0.0.7".parse().unwrap()],
        ..b
    };
    r.apply(vec![Change::Upsert(kube.clone(), Box::new(Ok(moved)))]);
    assert_eq!(options(&r, &kube), noted);
    r.fake().take_calls();
    r.apply(vec![Change::Pending(kube.clone(), None)]);
    assert_eq!(r.fake().take_calls(), []);
    assert_eq!(options(&r, &kube).unwrap().pending, None);
    assert_eq!(r.state(&kube), Some(PodState::Ready));
}

/// `n` outbound ports: a spec whose `-q` list is that long.
fn with_ports(name: &str, cgroup: &str, n: u16) -> PodSpec {
    let ports: Vec<String> = (1..=n).map(|p| p.to_string()).collect();
    PodSpec {
        args: Some(format!("-i '*' -b \"\" -q {}", ports.join(","))),
        ..outbound_only(name, cgroup)
    }
}

#[test]
fn a_pod_over_its_budget_is_enrolled_refused_and_its_neighbour_keeps_its_share() {
    let budget = Budget::new(2).unwrap();
    let mut r = registry(host()).with_budget(budget);
    let over = u16::try_from(budget.ports + 1).unwrap();
    r.upsert(&file("a"), Ok(with_ports("test/a", CG_A, over)));
    let why = r.error(&file("a"));
    assert!(why.contains("over the per-pod budget"), "{why}");
    assert!(why.contains("fail closed"), "{why}");
    // Nothing of its plan was written: only its refused config.
    assert_eq!(
        r.fake().take_calls(),
        [Call::Apply {
            cgroup_id: 11,
            pod_id: 0,
            previous: None
        }]
    );
    assert!(r.fake().refused.contains(&11));
    let status = r.status();
    let a = status.iter().find(|p| p.source == file("a")).unwrap();
    assert!(a.fail_closed && a.capture.is_none() && a.usage.is_none());
    assert_eq!(a.cgroup_id, Some(11), "its counters stay visible");

    // A pod at exactly its budget is enrolled.
    let at = u16::try_from(budget.ports).unwrap();
    r.upsert(&file("b"), Ok(with_ports("test/b", CG_B, at)));
    assert_eq!(r.state(&file("b")), Some(PodState::Ready));
    let b = r
        .status()
        .into_iter()
        .find(|p| p.source == file("b"))
        .unwrap();
    assert_eq!(b.usage.unwrap().ports, budget.ports);
    assert!(!r.fake().refused.contains(&12));

    // Fixed, the refused pod is captured in place.
    r.upsert(&file("a"), Ok(with_ports("test/a", CG_A, 3)));
    assert_eq!(r.state(&file("a")), Some(PodState::Ready));
    assert!(r.fake().refused.is_empty());
    assert!(
        r.captured(&file("a"))
            .is_some_and(|(c, id)| c == 11 && id > 0)
    );
}

#[test]
fn pods_beyond_the_pod_limit_are_enrolled_refused() {
    let mut r = registry(host()).with_budget(Budget::new(1).unwrap());
    r.upsert(&file("a"), Ok(outbound_only("test/a", CG_A)));
    r.upsert(&file("b"), Ok(outbound_only("test/b", CG_B)));
    assert_eq!(r.state(&file("a")), Some(PodState::Ready));
    let why = r.error(&file("b"));
    assert!(why.contains("pod limit is reached: 1 pods"), "{why}");
    assert!(r.fake().refused.contains(&12));
    // An update of the pod that has the slot is no new pod.
    r.upsert(&file("a"), Ok(with_ports("test/a", CG_A, 2)));
    assert_eq!(r.state(&file("a")), Some(PodState::Ready));
    // Its slot freed, the refused pod takes it at once.
    r.remove(&file("a"));
    assert_eq!(r.state(&file("b")), Some(PodState::Ready));
    assert!(r.fake().refused.is_empty());
}

#[test]
fn a_refused_new_pod_refuses_inbound_too_and_a_ready_pod_keeps_its_capture() {
    let mut r = registry(host()).with_budget(Budget::new(2).unwrap());
    let mut bad = pod("test/a", CG_A, NS_A);
    bad.args = Some("--cni-mode".into());
    r.upsert(&file("a"), Ok(bad.clone()));
    assert!(r.fake().refused.contains(&11));
    // Its sk_lookup refuses every connection into its network namespace.
    assert_eq!(r.fake().links.get(&11), Some(&NS_A.into()));
    // The address is its own: another pod cannot take it while it is refused.
    r.upsert(&file("b"), Ok(pod("test/b", CG_B, NS_B)));
    assert!(
        r.error(&file("b")).contains("already"),
        "{}",
        r.error(&file("b"))
    );
    r.remove(&file("b"));
    r.remove(&file("a"));
    assert!(r.fake().enrolled.is_empty() && r.fake().links.is_empty());

    // A pod that was ready keeps its capture when an update is refused: never fenced.
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    r.upsert(&file("a"), Ok(bad));
    assert!(r.fake().refused.is_empty());
    assert!(r.captured(&file("a")).is_some());
}

#[test]
fn a_pod_whose_cgroup_cannot_be_enrolled_is_not_fenced_either() {
    let mut r = registry(host());
    let mut outside = outbound_only("test/a", "/elsewhere/pod-a");
    outside.args = Some("--cni-mode".into());
    r.upsert(&file("a"), Ok(outside));
    assert!(r.error(&file("a")).contains("outside the cgroup root"));
    assert!(r.fake().enrolled.is_empty());
}

#[test]
fn a_pod_its_source_refuses_but_located_is_enrolled_refused() {
    let mut r = registry(host());
    let refused = Rejected::refused(
        "ns/a",
        "annotation sidecar.istio.io/interceptionMode: TPROXY",
    );
    r.upsert(&file("a"), Err(refused.clone().at(pod("ns/a", CG_A, NS_A))));
    assert!(r.error(&file("a")).contains("TPROXY"));
    assert!(r.fake().refused.contains(&11));
    assert_eq!(r.fake().links.get(&11), Some(&NS_A.into()));
    // Not located (yet): nothing to enrol.
    r.upsert(&file("b"), Err(Rejected::refused("ns/b", "TPROXY")));
    assert!(!r.fake().enrolled.contains_key(&12));
    r.remove(&file("a"));
    assert!(r.fake().enrolled.is_empty());
}

/// A pod with the given addresses and `args` (inbound and outbound capture as the injector's).
fn with_ips(ips: &[&str], args: &str) -> PodSpec {
    PodSpec {
        ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        args: Some(args.into()),
        ..pod("test/a", CG_A, NS_A)
    }
}

#[test]
fn the_passthrough_address_goes_where_istio_init_writes_ip6tables_rules() {
    for (ips, args, added) in [
        (&["10.0.0.5", "fd00::5"][..], "-i '*' --dual-stack", true),
        (&["fd00::5"][..], "-i '*'", true),
        // istio-init, like its ip6tables rules, goes by the first address it sees: IPv4.
        (&["10.0.0.5", "fd00::5"][..], "-i '*'", false),
        (&["10.0.0.5"][..], "-i '*' --dual-stack", false),
    ] {
        let mut r = registry(host());
        r.upsert(&file("a"), Ok(with_ips(ips, args)));
        assert_eq!(r.state(&file("a")), Some(PodState::Ready), "{ips:?} {args}");
        let want: Vec<std::path::PathBuf> = if added { vec![NS_A.into()] } else { vec![] };
        assert_eq!(r.fake().passthrough, want, "{ips:?} {args}");
        assert_eq!(r.status()[0].warnings, Vec::<String>::new());
    }
}

#[test]
fn a_passthrough_address_that_cannot_be_added_is_reported_and_capture_stays() {
    let mut r = registry(host());
    r.fake().fail(Op::Passthrough);
    r.upsert(
        &file("a"),
        Ok(with_ips(&["10.0.0.5", "fd00::5"], "-b '*' --dual-stack")),
    );
    assert_eq!(r.state(&file("a")), Some(PodState::Ready));
    assert_eq!(r.captured(&file("a")), Some((11, 1)));
    assert_eq!(
        r.fake().links.get(&11).map(|p| p.to_str()),
        Some(Some(NS_A))
    );
    let warnings = &r.status()[0].warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("::6/128 is not on the pod's lo")
            && warnings[0].contains("CAP_SYS_ADMIN"),
        "{warnings:?}"
    );

    // Its next enrolment (a restarted agent, a changed spec) tries again.
    r.fake().recover(Op::Passthrough);
    r.upsert(
        &file("a"),
        Ok(with_ips(
            &["10.0.0.5", "fd00::5"],
            "-b '*' --dual-stack -d 22",
        )),
    );
    assert_eq!(r.fake().passthrough, [std::path::PathBuf::from(NS_A)]);
    assert_eq!(r.status()[0].warnings, Vec::<String>::new());
}

#[test]
fn an_ipv6_pod_without_a_namespace_is_told_its_passthrough_address_is_missing() {
    let spec = PodSpec {
        ips: vec!["fd00::5".parse().unwrap()],
        ..outbound_only("test/a", CG_A)
    };
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(spec));
    assert_eq!(r.state(&file("a")), Some(PodState::Ready));
    let warnings = &r.status()[0].warnings;
    assert!(
        warnings.len() == 1 && warnings[0].contains("no network namespace is known"),
        "{warnings:?}"
    );
}

/// The capture programs run only in enrolled pods: each enrolment attaches them to its
/// cgroup (refused pods too: their connect()s fail there), a move attaches the new cgroup
/// before the old one goes, and a removed pod's cgroup has none left.
#[test]
fn each_enrolled_pods_cgroup_and_only_those_have_the_programs() {
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    assert_eq!(r.fake().cgroup_links, [11].into());
    r.upsert(&file("a"), Ok(pod("test/a", CG_B, NS_B)));
    assert_eq!(r.fake().cgroup_links, [12].into());
    assert_eq!(r.captured(&file("a")), Some((12, 2)));
    r.remove(&file("a"));
    assert!(r.fake().cgroup_links.is_empty());

    let bad = PodSpec {
        args: Some("-m TPROXY".into()),
        ..pod("test/b", CG_B, NS_B)
    };
    r.upsert(&file("b"), Ok(bad));
    assert!(r.fake().refused.contains(&12));
    assert_eq!(r.fake().cgroup_links, [12].into());
}

/// A pod whose cgroup cannot take the programs is captured nowhere, so it cannot be fenced
/// either: it is reported, and nothing of it is left behind (no config, no links).
#[test]
fn a_pod_whose_cgroup_cannot_take_the_programs_is_reported_and_leaves_nothing() {
    let mut r = registry(host());
    r.fake().fail(Op::AttachCgroup);
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    let why = r.error(&file("a"));
    assert!(
        why.contains("attaching to the pod's cgroup") && why.contains("injected AttachCgroup"),
        "{why}"
    );
    assert!(r.fake().enrolled.is_empty());
    assert!(r.fake().links.is_empty());
    assert!(r.fake().cgroup_links.is_empty());

    // Fixed: the next change enrols it.
    r.fake().recover(Op::AttachCgroup);
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_B)));
    assert_eq!(r.captured(&file("a")), Some((11, 2)));
    assert_eq!(r.fake().cgroup_links, [11].into());
}

/// A failed enrolment leaves nothing in a cgroup it attached fresh, but a previous agent's
/// pod keeps its cgroup's programs: its config is still in the maps until it is enrolled
/// again or reconciled away, and without the programs it would escape meanwhile.
#[test]
fn a_failed_enrolment_detaches_only_what_it_attached() {
    let mut r = registry(host().with_adopted(12, 9));
    r.fake().fail(Op::Apply);
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    r.upsert(&file("b"), Ok(pod("test/b", CG_B, NS_B)));
    assert!(r.error(&file("a")).contains("injected Apply"));
    assert_eq!(r.fake().cgroup_links, [12].into());
    r.reconcile_adopted();
    assert!(r.fake().cgroup_links.is_empty());
}

/// The same for a previous agent's pod with inbound capture: its sk_lookup link stays too,
/// or connections into its network namespace would reach the app past the proxy until the
/// pod is fenced or reconciled.
#[test]
fn a_failed_enrolment_keeps_an_adopted_pods_inbound_link() {
    let mut r = registry(host().with_adopted_inbound(12, 9, NS_B));
    r.fake().fail(Op::Apply);
    r.upsert(&file("b"), Ok(pod("test/b", CG_B, NS_B)));
    assert!(r.error(&file("b")).contains("injected Apply"));
    assert_eq!(r.fake().links.get(&12), Some(&NS_B.into()));
    assert_eq!(r.fake().cgroup_links, [12].into());
    r.reconcile_adopted();
    assert!(r.fake().links.is_empty());
}

/// A pod the agent failed to enrol (the host said no, not the pod's settings) is tried again
/// on the poll ticks, without a change of its own, waiting longer after each failure, and is
/// captured once the failure has passed. Before, it stayed uncaptured until its spec changed.
#[test]
fn an_agent_failure_is_tried_again_until_the_pod_is_captured() {
    let mut r = registry(host());
    r.fake().fail(Op::AttachCgroup);
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    assert!(r.error(&file("a")).contains("injected AttachCgroup"));
    for _ in 0..super::RETRY_FIRST_TICKS {
        assert!(!r.retry_failed(), "tried before its wait was over");
    }
    assert!(r.retry_failed());
    assert!(r.error(&file("a")).contains("injected AttachCgroup"));
    // Failed twice: twice the wait.
    for _ in 0..2 * super::RETRY_FIRST_TICKS {
        assert!(!r.retry_failed(), "tried before its doubled wait was over");
    }
    r.fake().recover(Op::AttachCgroup);
    assert!(r.retry_failed());
    assert_eq!(r.captured(&file("a")).map(|c| c.0), Some(11));
    assert_eq!(r.fake().cgroup_links, [11].into());
    // Captured: nothing more to try.
    for _ in 0..=super::RETRY_MAX_TICKS {
        assert!(!r.retry_failed());
    }
}

/// A changed spec starts its retries afresh: the wait doubles with failures of one spec, not
/// across the operator's fixes.
#[test]
fn a_changed_spec_starts_its_retry_wait_afresh() {
    let mut r = registry(host());
    r.fake().fail(Op::AttachCgroup);
    r.upsert(&file("a"), Ok(pod("test/a", CG_A, NS_A)));
    for _ in 0..super::RETRY_FIRST_TICKS {
        assert!(!r.retry_failed());
    }
    assert!(
        r.retry_failed(),
        "first retry, failed again: the wait doubles"
    );
    let mut changed = pod("test/a", CG_A, NS_A);
    changed.ips = vec!["10.0.0.6".parse().unwrap()];
    r.upsert(&file("a"), Ok(changed));
    assert!(r.error(&file("a")).contains("injected AttachCgroup"));
    for _ in 0..super::RETRY_FIRST_TICKS {
        assert!(!r.retry_failed(), "tried before the first wait was over");
    }
    assert!(r.retry_failed(), "the first wait again, not a doubled one");
}

/// A pod refused for its own settings is not tried again: only a change of its spec can
/// change the answer.
#[test]
fn a_refusal_for_the_pods_settings_is_not_tried_again() {
    let mut r = registry(host());
    r.upsert(&file("a"), Ok(pod("test/a", "/elsewhere/a", NS_A)));
    assert!(r.error(&file("a")).contains("outside"));
    for _ in 0..=super::RETRY_MAX_TICKS {
        assert!(!r.retry_failed());
    }
}
