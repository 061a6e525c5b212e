//! Istio's pod vocabulary: the annotations and labels its sidecar injector reads, and the
//! capture istio-init would have installed for a pod that carries them.
use std::collections::BTreeMap;

use crate::spec::istio::{ArgsError, Capture, INJECTOR_DEFAULT_ARGS, go_bool};

/// The sidecar container Istio injects (a regular container, or a native sidecar among the
/// init containers).
pub(super) const PROXY_CONTAINER: &str = "istio-proxy";

/// Annotations and labels Istio's injector reads, under the names it reads them.
pub(super) mod keys {
    /// Written by the injector on every pod it injected.
    pub const STATUS: &str = "sidecar.istio.io/status";
    /// Label or annotation: a false value opts the pod out. The label wins when both are set.
    pub const INJECT: &str = "sidecar.istio.io/inject";
    /// The injection templates a pod asks for, in place of the injector's `defaultTemplates`.
    pub const TEMPLATES: &str = "inject.istio.io/templates";
    pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
    pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
    pub const STATUS_PORT: &str = "status.sidecar.istio.io/port";
}

/// Annotations the injector turns into one istio-iptables option each.
const OPTION_ANNOTATIONS: &[(&str, &str)] = &[
    ("traffic.sidecar.istio.io/includeOutboundIPRanges", "-i"),
    ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "-x"),
    ("traffic.sidecar.istio.io/includeInboundPorts", "-b"),
    ("traffic.sidecar.istio.io/includeOutboundPorts", "-q"),
    ("traffic.sidecar.istio.io/excludeOutboundPorts", "-o"),
    (keys::INTERCEPTION_MODE, "-m"),
    // Not implemented by meshsteer: refused by option name, as on a command line.
    ("traffic.sidecar.istio.io/kubevirtInterfaces", "-k"),
    ("traffic.sidecar.istio.io/excludeInterfaces", "-c"),
];

/// The environment variables that set istio-iptables' `--dual-stack`, in the order it reads
/// them (1.19+: the flag's own, then `ISTIO_DUAL_STACK`, which wins). The injector copies the
/// mesh's `ProxyMetadata` into istio-init's environment and into `istio-proxy`'s alike, so
/// the sidecar's environment shows what istio-init's had.
const DUAL_STACK_ENV: &[&str] = &["DUAL_STACK", "ISTIO_DUAL_STACK"];

/// Whether istio-init would have run with `--dual-stack`, from the `istio-proxy` container's
/// literal environment (`name`, `value`) in order. As in Kubernetes, a later entry of the same
/// name wins; as in istio-iptables, a value that is not a Go boolean is ignored.
pub(super) fn dual_stack<'a>(env: impl IntoIterator<Item = (&'a str, &'a str)>) -> bool {
    let env: BTreeMap<&str, &str> = env.into_iter().collect();
    DUAL_STACK_ENV
        .iter()
        .filter_map(|name| go_bool(env.get(name)?))
        .next_back()
        .unwrap_or(false)
}

/// The status port the injector excludes from inbound capture unless annotated otherwise.
const DEFAULT_STATUS_PORT: &str = "15020";

/// Why a pod's annotations give no capture. Shown in `meshsteer status`: each names the
/// annotation to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaptureError {
    /// The injector's own command line did not parse: meshsteer's bug, not the pod's.
    #[error(transparent)]
    Defaults(ArgsError),
    #[error("annotation {key}: {error}")]
    Annotation { key: &'static str, error: ArgsError },
    /// `-d` is built from two annotations.
    #[error(
        "annotations {} / {}: {error}",
        keys::EXCLUDE_INBOUND_PORTS,
        keys::STATUS_PORT
    )]
    ExcludeInboundPorts { error: ArgsError },
}

/// Every annotation [`capture`] reads.
pub(super) fn read_by_capture() -> impl Iterator<Item = &'static str> {
    OPTION_ANNOTATIONS
        .iter()
        .map(|(key, _)| *key)
        .chain([keys::EXCLUDE_INBOUND_PORTS, keys::STATUS_PORT])
}

/// The only one of Istio's injection templates that has istio-init (`gateway`,
/// `grpc-simple`, `grpc-agent`, `waypoint` and `kube-gateway` do not).
pub(super) const SIDECAR_TEMPLATE: &str = "sidecar";

/// How the injector reads `sidecar.istio.io/inject` (`strings.ToLower`, no trimming): empty
/// leaves the decision to the namespace, anything else but these opts out.
pub(super) fn istio_true(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "" | "y" | "yes" | "true" | "on"
    )
}

/// The injector's choice between the label and the annotation `sidecar.istio.io/inject`:
/// the label whenever it is present, even empty.
pub(super) fn inject_selector<'a>(
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
) -> Option<&'a str> {
    labels
        .get(keys::INJECT)
        .or_else(|| annotations.get(keys::INJECT))
        .map(String::as_str)
}

/// Whether the templates a pod was injected with include istio-init: those its
/// `inject.istio.io/templates` names (comma-separated, trimmed, as the injector splits
/// them), else the injector's defaults (`sidecar` in Istio's charts). Aliases defined in the
/// injector's configuration are not visible on the pod: only the name `sidecar` counts.
pub(super) fn templates_have_istio_init(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(keys::TEMPLATES)
        .is_none_or(|names| names.split(',').any(|name| name.trim() == SIDECAR_TEMPLATE))
}

/// The capture istio-init would have installed for a pod with these annotations: the
/// injector's command line, with each annotation in place of its option's default.
pub fn capture(annotations: &BTreeMap<String, String>) -> Result<Capture, CaptureError> {
    let mut c = Capture::from_args(INJECTOR_DEFAULT_ARGS).map_err(CaptureError::Defaults)?;
    for (key, flag) in OPTION_ANNOTATIONS {
        if let Some(value) = annotations.get(*key) {
            c.set_option(flag, value)
                .map_err(|error| CaptureError::Annotation { key, error })?;
        }
    }
    c.set_option("-d", &exclude_inbound_ports(annotations))
        .map_err(|error| CaptureError::ExcludeInboundPorts { error })?;
    Ok(c)
}

/// `-d` as the injector writes it: the proxy's Prometheus and health ports (15090, 15021),
/// the pod's own exclusions, then its status port (15020 unless annotated; `0`: none).
fn exclude_inbound_ports(annotations: &BTreeMap<String, String>) -> String {
    let status_port = annotations
        .get(keys::STATUS_PORT)
        .map_or(DEFAULT_STATUS_PORT, |p| p.trim());
    let own = annotations
        .get(keys::EXCLUDE_INBOUND_PORTS)
        .map(String::as_str)
        .unwrap_or_default();
    let mut ports = vec!["15090", "15021", own];
    if status_port != "0" {
        ports.push(status_port);
    }
    ports.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::istio::{Ports, Ranges};

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_injection_label_wins_over_the_annotation() {
        let (t, f, empty) = (
            annotations(&[(keys::INJECT, "true")]),
            annotations(&[(keys::INJECT, "false")]),
            annotations(&[(keys::INJECT, "")]),
        );
        let none = BTreeMap::new();
        assert_eq!(inject_selector(&t, &f), Some("true"));
        assert_eq!(inject_selector(&f, &t), Some("false"));
        // An empty label still wins: the namespace decides, not the annotation.
        assert_eq!(inject_selector(&empty, &f), Some(""));
        assert_eq!(inject_selector(&none, &f), Some("false"));
        assert_eq!(inject_selector(&none, &none), None);
        // The injector lower-cases but does not trim.
        for v in ["", "y", "Yes", "TRUE", "on"] {
            assert!(istio_true(v), "{v}");
        }
        for v in ["false", "no", " true", "1", "enabled"] {
            assert!(!istio_true(v), "{v}");
        }
    }

    #[test]
    fn only_the_sidecar_template_has_istio_init() {
        assert!(templates_have_istio_init(&BTreeMap::new()));
        for yes in [
            "sidecar",
            "sidecar,meshsteer",
            " gateway , sidecar ",
            "meshsteer,sidecar",
        ] {
            assert!(
                templates_have_istio_init(&annotations(&[(keys::TEMPLATES, yes)])),
                "{yes}"
            );
        }
        for no in [
            "gateway",
            "grpc-agent",
            "grpc-simple",
            "",
            "sidecars",
            "Sidecar",
        ] {
            assert!(
                !templates_have_istio_init(&annotations(&[(keys::TEMPLATES, no)])),
                "{no}"
            );
        }
    }

    #[test]
    fn dual_stack_from_the_proxy_metadata_environment() {
        assert!(!dual_stack([]));
        assert!(dual_stack([("ISTIO_DUAL_STACK", "true")]));
        assert!(dual_stack([("DUAL_STACK", "1")]));
        assert!(!dual_stack([("ISTIO_DUAL_STACK", "yes")]));
        // ISTIO_DUAL_STACK is read last and wins; a bad value leaves the other in force.
        assert!(!dual_stack([
            ("ISTIO_DUAL_STACK", "false"),
            ("DUAL_STACK", "true")
        ]));
        assert!(dual_stack([
            ("ISTIO_DUAL_STACK", "x"),
            ("DUAL_STACK", "true")
        ]));
        // The last entry of a name wins, as in Kubernetes.
        assert!(dual_stack([
            ("ISTIO_DUAL_STACK", "false"),
            ("ISTIO_DUAL_STACK", "True")
        ]));
        // 1.17 and 1.18 named it ISTIO_AGENT_DUAL_STACK: not read.
        assert!(!dual_stack([("ISTIO_AGENT_DUAL_STACK", "true")]));
    }

    #[test]
    fn no_annotations_is_the_injector_default() {
        let c = capture(&BTreeMap::new()).unwrap();
        assert_eq!(c, Capture::from_args(INJECTOR_DEFAULT_ARGS).unwrap());
    }

    #[test]
    fn annotations_become_options() {
        let c = capture(&annotations(&[
            (
                "traffic.sidecar.istio.io/includeOutboundIPRanges",
                "10.0.0.0/8",
            ),
            (
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "10.200.0.0/16",
            ),
            ("traffic.sidecar.istio.io/includeInboundPorts", "80,443"),
            ("traffic.sidecar.istio.io/excludeInboundPorts", "22"),
            ("traffic.sidecar.istio.io/includeOutboundPorts", "9000"),
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "3306"),
            ("status.sidecar.istio.io/port", "15999"),
        ]))
        .unwrap();
        assert_eq!(
            c.include_outbound_cidrs,
            Ranges::List(vec!["10.0.0.0/8".parse().unwrap()])
        );
        assert_eq!(
            c.exclude_outbound_cidrs,
            vec!["10.200.0.0/16".parse().unwrap()]
        );
        assert_eq!(c.include_inbound_ports, Ports::List(vec![80, 443]));
        assert_eq!(c.exclude_inbound_ports, vec![15090, 15021, 22, 15999]);
        assert_eq!(c.include_outbound_ports, vec![9000]);
        assert_eq!(c.exclude_outbound_ports, vec![3306]);
    }

    #[test]
    fn status_port_zero_is_not_excluded() {
        let c = capture(&annotations(&[("status.sidecar.istio.io/port", "0")])).unwrap();
        assert_eq!(c.exclude_inbound_ports, vec![15090, 15021]);
    }

    #[test]
    fn unsupported_settings_are_errors_naming_the_annotation() {
        let e = capture(&annotations(&[(
            "sidecar.istio.io/interceptionMode",
            "TPROXY",
        )]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("interceptionMode") && e.contains("TPROXY"),
            "{e}"
        );
        let e = capture(&annotations(&[(
            "traffic.sidecar.istio.io/kubevirtInterfaces",
            "net1",
        )]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("unsupported istio-iptables option -k"), "{e}");
        // Set but empty, as the injector passes it: no interface, nothing to refuse.
        for key in [
            "traffic.sidecar.istio.io/kubevirtInterfaces",
            "traffic.sidecar.istio.io/excludeInterfaces",
        ] {
            assert_eq!(
                capture(&annotations(&[(key, "")])).unwrap(),
                capture(&BTreeMap::new()).unwrap(),
                "{key}"
            );
        }
        let e = capture(&annotations(&[(
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "10.0.0.1",
        )]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("excludeOutboundIPRanges"), "{e}");
    }

    #[test]
    fn error_texts_name_the_annotation_then_the_option() {
        let e = capture(&annotations(&[(
            "sidecar.istio.io/interceptionMode",
            "TPROXY",
        )]))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "annotation sidecar.istio.io/interceptionMode: unsupported interception mode \"TPROXY\": \
             only REDIRECT is implemented (TPROXY is not)"
        );
        let e = capture(&annotations(&[(
            "traffic.sidecar.istio.io/excludeInboundPorts",
            "22,x",
        )]))
        .unwrap_err();
        assert!(matches!(e, CaptureError::ExcludeInboundPorts { .. }));
        assert_eq!(
            e.to_string(),
            "annotations traffic.sidecar.istio.io/excludeInboundPorts / status.sidecar.istio.io/port: \
             invalid value \"15090,15021,22,x,15020\" for -d: \"x\": invalid digit found in string"
        );
    }
}
