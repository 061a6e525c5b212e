//! What capture depends on in a pod, read from its Kubernetes object.
use std::{
    collections::BTreeMap,
    fmt,
    net::{AddrParseError, IpAddr},
};

use k8s_openapi::api::core::v1::Pod;
use tracing::debug;

use super::annotations::{
    ISTIO_RULES_CONTAINERS, PROXY_CONTAINER, Proxy, from_template, inject_selector,
    interception_mode, istio_true, keys, read_by_capture, template_says_none,
    templates_have_istio_init,
};
use crate::{
    source::change::{OptionsFrom, SourceKey},
    spec::resolv::DnsPolicy,
};

/// A pod's namespace and name: what the API server names it by, and (shown
/// `namespace/name`) its name in `meshsteer status`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    /// `None` for an object without both (the API server always sets them on pods).
    pub fn of(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        Some(Self {
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
        })
    }

    /// The pod of the same namespace named `name`.
    #[cfg(test)]
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// The registry's key for this pod.
    pub fn key(&self) -> SourceKey {
        SourceKey::Kube {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Set by the kubelet on the mirror pod of a static pod: the static pod's config hash, which is
/// the UID the kubelet runs it under.
pub const MIRROR: &str = "kubernetes.io/config.mirror";

/// A pod object the agent cannot read (logged, then skipped).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ViewError {
    #[error("pod without namespace or name")]
    NoName,
    #[error("pod without metadata.uid")]
    NoUid,
    #[error("mirror pod with an unusable {MIRROR} annotation {0:?}")]
    MirrorHash(String),
    #[error("pod without spec")]
    NoSpec,
    #[error("pod address {address:?}: {error}")]
    Address {
        address: String,
        error: AddrParseError,
    },
}

/// What capture depends on in a pod: two equal views give the same pod spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub pod: PodRef,
    /// The UID the kubelet names the pod's cgroup (and runtime paths) after: its
    /// `metadata.uid`, except for a static pod's mirror, whose API object has a UID of its own
    /// while the kubelet runs the pod under its config hash.
    pub uid: String,
    /// Only the annotations capture and the choice of pods read, so unrelated updates
    /// compare equal.
    pub annotations: BTreeMap<String, String>,
    /// Only the labels the choice of pods reads (`sidecar.istio.io/inject`).
    pub labels: BTreeMap<String, String>,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// What the annotation path reads of the `istio-proxy` container.
    pub proxy: Proxy,
    /// Why Istio gave this pod no istio-init, though it has a sidecar (`None`: it did).
    pub left_alone: Option<String>,
    /// `spec.dnsPolicy`, as the kubelet applies it.
    pub dns_policy: DnsPolicy,
    /// `spec.dnsConfig.nameservers` (the API server checked they are addresses).
    pub dns_nameservers: Vec<IpAddr>,
    /// The containers running (`status.containerStatuses`, init ones too): when one starts,
    /// the pod's processes changed, and what is read through them is read again.
    pub running: Vec<String>,
}

impl PodView {
    /// `Ok(None)` for a pod meshsteer never captures: no Istio sidecar, on the host's
    /// network, or finished. A pod with a sidecar that Istio gave no istio-init (by labels and
    /// annotations, which can change) is a view with [`PodView::left_alone`] set. `Err` for an
    /// object it cannot read.
    pub fn of(pod: &Pod) -> Result<Option<Self>, ViewError> {
        let meta = &pod.metadata;
        let id = PodRef::of(pod).ok_or(ViewError::NoName)?;
        let uid = node_uid(pod)?;
        let spec = pod.spec.as_ref().ok_or(ViewError::NoSpec)?;
        let annotations = meta.annotations.clone().unwrap_or_default();
        let labels = meta.labels.clone().unwrap_or_default();

        let proxy = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == PROXY_CONTAINER);
        let has_proxy = proxy.is_some();
        let proxy = proxy.map_or_else(Proxy::default, |c| {
            let security = c.security_context.as_ref();
            Proxy::new(
                c.env
                    .iter()
                    .flatten()
                    .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?))),
                security.and_then(|s| s.run_as_user),
                security.and_then(|s| s.run_as_group),
            )
        });
        let istio_rules = spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| ISTIO_RULES_CONTAINERS.contains(&c.name.as_str()))
            .map(|c| c.name.clone());
        if !has_proxy && !annotations.contains_key(keys::STATUS) {
            return Ok(None);
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return Ok(None);
        }
        if spec.host_network == Some(true) {
            // Its sockets are the node's: capturing them would capture the node.
            debug!(pod = %id, "host-network pod with a sidecar: left alone");
            return Ok(None);
        }

        let status = pod.status.as_ref();
        let listed = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().map(|i| i.ip.as_str()).collect::<Vec<_>>())
            .filter(|ips| !ips.is_empty());
        let ips = listed
            .or_else(|| Some(vec![status?.pod_ip.as_deref()?]))
            .unwrap_or_default()
            .into_iter()
            .map(|ip| {
                ip.trim()
                    .parse::<IpAddr>()
                    .map_err(|error| ViewError::Address {
                        address: ip.into(),
                        error,
                    })
            })
            .collect::<Result<_, _>>()?;

        let dns_nameservers = spec
            .dns_config
            .as_ref()
            .and_then(|c| c.nameservers.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.trim().parse().ok())
            .collect();
        let running = status
            .into_iter()
            .flat_map(|s| {
                let init = s.init_container_statuses.iter().flatten();
                s.container_statuses.iter().flatten().chain(init)
            })
            .filter(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
            .map(|c| c.name.clone())
            .collect();
        let left_alone = match istio_rules {
            Some(name) => Some(format!(
                "has Istio's own init container {name}: Istio installs its iptables rules"
            )),
            None => left_alone(&labels, &annotations, &proxy),
        };
        let keep = |map: &BTreeMap<String, String>, keys: &mut dyn Iterator<Item = &str>| {
            keys.filter_map(|k| Some((k.to_string(), map.get(k)?.clone())))
                .collect()
        };
        Ok(Some(Self {
            pod: id,
            uid,
            annotations: keep(
                &annotations,
                &mut read_by_capture().chain(SELECTION_ANNOTATIONS.iter().copied()),
            ),
            labels: keep(&labels, &mut [keys::INJECT].into_iter()),
            ips,
            proxy,
            left_alone,
            dns_policy: DnsPolicy::of(spec.dns_policy.as_deref()),
            dns_nameservers,
            running,
        }))
    }

    /// The pod as its capture was decided (`first`, its UID's first view: istio-init runs
    /// once) at its current addresses.
    pub fn decided_by(&self, first: &PodView) -> PodView {
        PodView {
            ips: self.ips.clone(),
            ..first.clone()
        }
    }

    /// What changed in the labels and annotations capture reads since `first`, named, or
    /// `None`.
    pub fn changed_since(&self, first: &PodView) -> Option<String> {
        let diff = |kind: &str, a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| format!("{kind} {k}"))
                .collect::<Vec<_>>()
        };
        let mut changed = diff("label", &first.labels, &self.labels);
        changed.extend(diff("annotation", &first.annotations, &self.annotations));
        (!changed.is_empty()).then(|| {
            format!(
                "{} changed after the pod's capture was decided; as istio-init, which runs once, \
                 the change applies when the pod restarts",
                changed.join(", ")
            )
        })
    }
}

/// Annotations that decide whether Istio gave a pod istio-init at all.
const SELECTION_ANNOTATIONS: &[&str] = &[keys::INJECT, keys::TEMPLATES];

/// Why a pod with an Istio sidecar got no istio-init. With meshsteer's template, what it
/// wrote (interception mode `NONE`, Istio CNI). Without, read from its labels, annotations and
/// sidecar: opted out (the `sidecar.istio.io/inject` label, else the annotation), injected
/// with templates that do not include `sidecar` (Helm gateways), or interception mode `NONE`
/// (annotated, else from ProxyConfig).
fn left_alone(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    proxy: &Proxy,
) -> Option<String> {
    if from_template(annotations) {
        return template_says_none(annotations);
    }
    if let Some(v) = inject_selector(labels, annotations).filter(|v| !istio_true(v)) {
        return Some(format!("{} is {v:?}", keys::INJECT));
    }
    if !templates_have_istio_init(annotations) {
        return Some(format!(
            "{} has no sidecar template, hence no istio-init",
            keys::TEMPLATES
        ));
    }
    // The injection template compares it as is: no trimming.
    if interception_mode(annotations, proxy) == Some("NONE") {
        return Some(match annotations.get(keys::INTERCEPTION_MODE) {
            Some(_) => format!("{} is NONE", keys::INTERCEPTION_MODE),
            None => "ProxyConfig's interceptionMode is NONE".into(),
        });
    }
    None
}

impl PodView {
    /// Where the pod's options come from: meshsteer's injection template, or its annotations.
    pub fn options_from(&self) -> OptionsFrom {
        if from_template(&self.annotations) {
            OptionsFrom::Template
        } else {
            OptionsFrom::Annotations
        }
    }

    /// Whether istio-init would have captured the pod.
    pub fn captured(&self) -> bool {
        self.left_alone.is_none()
    }

    #[cfg(test)]
    fn of_captured(pod: &Pod) -> Result<Option<Self>, ViewError> {
        Ok(Self::of(pod)?.filter(Self::captured))
    }
}

/// The UID the pod runs under on its node (see [`PodView::uid`]). It becomes part of a cgroup
/// path, so a mirror hash (an annotation anyone creating a pod can set) must be one plain
/// path component.
fn node_uid(pod: &Pod) -> Result<String, ViewError> {
    let meta = &pod.metadata;
    if let Some(hash) = meta.annotations.as_ref().and_then(|a| a.get(MIRROR)) {
        let plain = !hash.is_empty()
            && hash.len() <= 64
            && hash.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        return if plain {
            Ok(hash.clone())
        } else {
            Err(ViewError::MirrorHash(hash.clone()))
        };
    }
    meta.uid.clone().ok_or(ViewError::NoUid)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    pub(crate) fn sidecar_pod(annotations: serde_json::Value) -> Pod {
        pod(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "a", "uid": "1-2", "annotations": annotations},
            "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]},
            "status": {"podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]},
        }))
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn views_keep_what_capture_reads() {
        let v = PodView::of(&sidecar_pod(serde_json::json!({
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.200.0.0/16",
            "unrelated": "x",
        })))
        .unwrap()
        .unwrap();
        assert_eq!(
            v.pod,
            PodRef {
                namespace: "ns".into(),
                name: "a".into()
            }
        );
        assert_eq!(v.pod.to_string(), "ns/a");
        assert_eq!(v.uid, "1-2");
        assert_eq!(v.left_alone, None);
        assert_eq!(
            v.ips,
            ["10.0.0.5", "fd00::5"].map(|i| i.parse::<IpAddr>().unwrap())
        );
        assert_eq!(
            v.annotations,
            annotations(&[(
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "10.200.0.0/16"
            )])
        );
    }

    #[test]
    fn views_keep_the_dns_policy_and_the_running_containers() {
        let mut p = sidecar_pod(serde_json::json!({}));
        let v = PodView::of(&p).unwrap().unwrap();
        assert_eq!(v.dns_policy, DnsPolicy::ClusterFirst);
        assert!(v.dns_nameservers.is_empty() && v.running.is_empty());
        p = pod(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "a", "uid": "1-2"},
            "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}],
                     "dnsPolicy": "None", "dnsConfig": {"nameservers": ["10.0.0.53", "fd00::53"]}},
            "status": {"podIPs": [{"ip": "10.0.0.5"}],
                       "containerStatuses": [
                           {"name": "app", "state": {"waiting": {}}, "image": "", "imageID": "",
                            "ready": false, "restartCount": 0},
                           {"name": "istio-proxy", "state": {"running": {}}, "image": "",
                            "imageID": "", "ready": false, "restartCount": 0}]},
        }));
        let v = PodView::of(&p).unwrap().unwrap();
        assert_eq!(v.dns_policy, DnsPolicy::None);
        assert_eq!(
            v.dns_nameservers,
            ["10.0.0.53", "fd00::53"].map(|i| i.parse::<IpAddr>().unwrap())
        );
        assert_eq!(v.running, ["istio-proxy"]);
    }

    #[test]
    fn static_pods_go_by_their_mirror_hash() {
        let mut p = sidecar_pod(serde_json::json!({
            "kubernetes.io/config.mirror": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "kubernetes.io/config.hash": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        }));
        assert_eq!(
            PodView::of(&p).unwrap().unwrap().uid,
            "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
        );
        // Never a path of its own choosing.
        for bad in ["", "../../x", "a/b", "a b"] {
            p.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(MIRROR.into(), bad.into());
            assert_eq!(PodView::of(&p), Err(ViewError::MirrorHash(bad.into())));
        }
    }

    #[test]
    fn which_pods_are_captured() {
        let captured = |p: Pod| PodView::of_captured(&p).unwrap().is_some();
        assert!(captured(sidecar_pod(serde_json::json!({}))));
        // Injected by annotation only, or as a native sidecar.
        assert!(captured(pod(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "a", "uid": "u",
                         "annotations": {"sidecar.istio.io/status": "{}"}},
            "spec": {"containers": [{"name": "app"}]},
        }))));
        assert!(captured(pod(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "a", "uid": "u"},
            "spec": {"containers": [{"name": "app"}],
                     "initContainers": [{"name": "istio-proxy", "restartPolicy": "Always"}]},
        }))));
        assert!(!captured(pod(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "a", "uid": "u"},
            "spec": {"containers": [{"name": "app"}]},
        }))));
        for opt_out in [
            serde_json::json!({"sidecar.istio.io/inject": "false"}),
            serde_json::json!({"sidecar.istio.io/interceptionMode": "NONE"}),
        ] {
            assert!(!captured(sidecar_pod(opt_out)));
        }
        let mut p = sidecar_pod(serde_json::json!({}));
        p.metadata.labels = Some(annotations(&[("sidecar.istio.io/inject", "false")]));
        assert!(!captured(p));
        let mut p = sidecar_pod(serde_json::json!({}));
        p.spec.as_mut().unwrap().host_network = Some(true);
        assert!(!captured(p));
        let mut p = sidecar_pod(serde_json::json!({}));
        p.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(!captured(p));
    }

    /// A pod of Istio's Helm `gateway` chart after injection: the chart's label and
    /// annotations, the `gateway` template's `istio-proxy` running `proxy router`, and no
    /// istio-init.
    fn helm_gateway() -> Pod {
        pod(serde_json::json!({
            "metadata": {
                "namespace": "istio-ingress", "name": "istio-ingressgateway-5d7c9b9b4-x2x7q",
                "uid": "g-1",
                "labels": {"sidecar.istio.io/inject": "true", "app": "istio-ingressgateway",
                           "istio": "ingressgateway"},
                "annotations": {
                    "inject.istio.io/templates": "gateway",
                    "sidecar.istio.io/inject": "true",
                    "prometheus.io/port": "15020",
                    "istio.io/rev": "default",
                    "sidecar.istio.io/status": "{\"initContainers\":null,\"containers\":[\"istio-proxy\"],\"volumes\":[\"workload-socket\",\"istio-token\",\"istiod-ca-cert\"],\"imagePullSecrets\":null,\"revision\":\"default\"}",
                },
            },
            "spec": {"containers": [{
                "name": "istio-proxy", "image": "istio/proxyv2:1.24.6",
                "args": ["proxy", "router", "--domain", "$(POD_NAMESPACE).svc.cluster.local"],
            }]},
            "status": {"podIPs": [{"ip": "10.0.0.9"}]},
        }))
    }

    #[test]
    fn gateways_and_other_templates_without_istio_init_are_left_alone() {
        assert_eq!(PodView::of_captured(&helm_gateway()), Ok(None));
        // The same pod with the sidecar template among its own templates gets istio-init.
        let mut g = helm_gateway();
        let a = g.metadata.annotations.as_mut().unwrap();
        a.insert("inject.istio.io/templates".into(), "sidecar,gateway".into());
        assert!(PodView::of_captured(&g).unwrap().is_some());
        for templates in ["grpc-agent", "grpc-simple", "meshsteer"] {
            let p = sidecar_pod(serde_json::json!({"inject.istio.io/templates": templates}));
            assert_eq!(PodView::of_captured(&p), Ok(None), "{templates}");
        }
        let p = sidecar_pod(serde_json::json!({"inject.istio.io/templates": "sidecar,meshsteer"}));
        assert!(PodView::of_captured(&p).unwrap().is_some());
    }

    #[test]
    fn the_injection_label_beats_the_annotation() {
        let captured = |label: &str, annotation: &str| {
            let mut p = sidecar_pod(serde_json::json!({"sidecar.istio.io/inject": annotation}));
            p.metadata.labels = Some(annotations(&[("sidecar.istio.io/inject", label)]));
            PodView::of_captured(&p).unwrap().is_some()
        };
        // Injected with istio-init: the label said so, whatever the annotation says.
        assert!(captured("true", "false"));
        // An empty label defers to the namespace, which injected it.
        assert!(captured("", "false"));
        assert!(!captured("false", "true"));
        assert!(!captured("False", "true"));
    }

    #[test]
    fn left_alone_pods_say_why_and_changes_are_named() {
        let why = |a: serde_json::Value| PodView::of(&sidecar_pod(a)).unwrap().unwrap().left_alone;
        assert_eq!(
            why(serde_json::json!({"sidecar.istio.io/inject": "false"})).unwrap(),
            "sidecar.istio.io/inject is \"false\""
        );
        assert_eq!(
            why(serde_json::json!({"inject.istio.io/templates": "gateway"})).unwrap(),
            "inject.istio.io/templates has no sidecar template, hence no istio-init"
        );
        assert_eq!(
            why(serde_json::json!({"sidecar.istio.io/interceptionMode": "NONE"})).unwrap(),
            "sidecar.istio.io/interceptionMode is NONE"
        );
        let first = PodView::of(&sidecar_pod(serde_json::json!({})))
            .unwrap()
            .unwrap();
        let mut later = sidecar_pod(serde_json::json!({
            "sidecar.istio.io/interceptionMode": "NONE",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8",
            "unrelated": "x",
        }));
        later.metadata.labels = Some(annotations(&[("sidecar.istio.io/inject", "false")]));
        later.status.as_mut().unwrap().pod_ips = Some(vec![k8s_openapi::api::core::v1::PodIP {
            ip: "10.0.0.7".into(),
        }]);
        let later = PodView::of(&later).unwrap().unwrap();
        assert_eq!(
            later.changed_since(&first).unwrap(),
            "label sidecar.istio.io/inject, annotation sidecar.istio.io/interceptionMode, \
             annotation traffic.sidecar.istio.io/excludeOutboundIPRanges changed after the \
             pod's capture was decided; as istio-init, which runs once, the change applies \
             when the pod restarts"
        );
        assert_eq!(first.changed_since(&first), None);
        // Decided as first seen, at the current addresses.
        let decided = later.decided_by(&first);
        assert_eq!(decided.left_alone, None);
        assert_eq!(decided.annotations, first.annotations);
        assert_eq!(decided.ips, later.ips);
    }

    #[test]
    fn the_sidecars_environment_and_user_are_read() {
        let mut p = sidecar_pod(serde_json::json!({}));
        assert_eq!(PodView::of(&p).unwrap().unwrap().proxy, Proxy::default());
        // As the injector renders meshConfig.defaultConfig.proxyMetadata and ProxyUID.
        let proxy = &mut p.spec.as_mut().unwrap().containers[1];
        proxy.env = Some(
            serde_json::from_value(serde_json::json!([
                {"name": "ISTIO_META_MESH_ID", "value": "cluster.local"},
                {"name": "ISTIO_DUAL_STACK", "value": "true"},
                {"name": "ISTIO_META_INTERCEPTION_MODE", "value": "REDIRECT"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ]))
            .unwrap(),
        );
        proxy.security_context = Some(
            serde_json::from_value(
                serde_json::json!({"runAsUser": 1000770000, "runAsGroup": 1000770001}),
            )
            .unwrap(),
        );
        let v = PodView::of(&p).unwrap().unwrap();
        assert_eq!(
            v.proxy,
            Proxy::new(
                [
                    ("ISTIO_DUAL_STACK", "true"),
                    ("ISTIO_META_INTERCEPTION_MODE", "REDIRECT")
                ],
                Some(1000770000),
                Some(1000770001)
            )
        );
        assert_eq!(v.options_from(), OptionsFrom::Annotations);
        // Only the sidecar's environment counts.
        let mut p = sidecar_pod(serde_json::json!({}));
        p.spec.as_mut().unwrap().containers[0].env = Some(
            serde_json::from_value(
                serde_json::json!([{"name": "ISTIO_DUAL_STACK", "value": "true"}]),
            )
            .unwrap(),
        );
        assert_eq!(PodView::of(&p).unwrap().unwrap().proxy, Proxy::default());
    }

    #[test]
    fn proxy_config_none_and_istios_own_rules_leave_the_pod_alone() {
        let mut p = sidecar_pod(serde_json::json!({}));
        p.spec.as_mut().unwrap().containers[1].env = Some(
            serde_json::from_value(
                serde_json::json!([{"name": "ISTIO_META_INTERCEPTION_MODE", "value": "NONE"}]),
            )
            .unwrap(),
        );
        assert_eq!(
            PodView::of(&p).unwrap().unwrap().left_alone.unwrap(),
            "ProxyConfig's interceptionMode is NONE"
        );
        // The annotation wins over ProxyConfig, as the template's `annotation` has it.
        p.metadata.annotations = Some(annotations(&[(keys::INTERCEPTION_MODE, "REDIRECT")]));
        assert_eq!(PodView::of(&p).unwrap().unwrap().left_alone, None);
        // A pod that kept Istio's istio-init (its own templates name `sidecar` only, or it
        // was injected before meshsteer) has iptables rules: never captured twice.
        for init in ["istio-init", "istio-validation"] {
            let mut p = sidecar_pod(serde_json::json!({"inject.istio.io/templates": "sidecar"}));
            p.spec.as_mut().unwrap().init_containers =
                Some(serde_json::from_value(serde_json::json!([{"name": init}])).unwrap());
            assert_eq!(
                PodView::of(&p).unwrap().unwrap().left_alone.unwrap(),
                format!("has Istio's own init container {init}: Istio installs its iptables rules")
            );
        }
    }

    #[test]
    fn meshsteers_template_decides_where_it_wrote() {
        let line = r#"{"args": ["istio-iptables", "-p", "15001"], "env": null}"#;
        let v = PodView::of(&sidecar_pod(
            serde_json::json!({"meshsteer.io/istio-init": line}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(v.options_from(), OptionsFrom::Template);
        assert_eq!(v.left_alone, None);
        assert_eq!(v.annotations[keys::ISTIO_INIT], line);
        // NONE in the template's data: no istio-init, even with nothing on the pod saying so.
        let v = PodView::of(&sidecar_pod(serde_json::json!({
            "meshsteer.io/istio-init": r#"{"none": "interception mode NONE"}"#,
        })))
        .unwrap()
        .unwrap();
        assert_eq!(
            v.left_alone.unwrap(),
            "meshsteer.io/istio-init: interception mode NONE"
        );
    }

    #[test]
    fn unreadable_pods_are_errors_not_panics() {
        assert_eq!(
            PodView::of(&pod(serde_json::json!({"metadata": {"name": "a"}}))),
            Err(ViewError::NoName)
        );
        let mut p = sidecar_pod(serde_json::json!({}));
        p.status.as_mut().unwrap().pod_ips = Some(vec![k8s_openapi::api::core::v1::PodIP {
            ip: "not-an-ip".into(),
        }]);
        let e = PodView::of(&p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pod address \"not-an-ip\": invalid IP address syntax"
        );
    }
}
