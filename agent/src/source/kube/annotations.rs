//! Istio's pod vocabulary: the annotations and labels its sidecar injector reads, and the
//! capture istio-init would have installed for a pod that carries them. Two paths:
//!
//! - **template**: meshsteer's injection template (`deploy/kind/istio.yaml`) rendered
//!   istio-init's `args` and environment into [`keys::ISTIO_INIT`], with the injector's own
//!   data (mesh config, ProxyConfig, `ProxyUID`, install values): used as written;
//! - **annotations**: pods injected without it (before the template was installed) have the
//!   line re-derived from their annotations and their `istio-proxy` container.
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::spec::istio::{ArgsError, Capture, INJECTOR_DEFAULT_ARGS, reads_env};

/// The sidecar container Istio injects (a regular container, or a native sidecar among the
/// init containers).
pub(super) const PROXY_CONTAINER: &str = "istio-proxy";

/// Init containers through which Istio installs a pod's iptables rules itself: istio-init, and
/// with Istio CNI, `istio-validation` (the CNI plugin installs the rules).
pub(super) const ISTIO_RULES_CONTAINERS: &[&str] = &["istio-init", "istio-validation"];

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
    /// meshsteer's own: written by its injection template (`deploy/kind/istio.yaml`).
    pub const ISTIO_INIT: &str = "meshsteer.io/istio-init";
}

/// `istio-proxy`'s environment variable in which the injector renders the interception mode
/// istio-init got (the annotation, else ProxyConfig's `interceptionMode`, which the mesh config
/// or `proxy.istio.io/config` set).
pub(super) const INTERCEPTION_MODE_ENV: &str = "ISTIO_META_INTERCEPTION_MODE";

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

/// What of the `istio-proxy` container the annotation path reads: the injector renders the
/// mesh's `ProxyMetadata` into its environment as into istio-init's, the resolved interception
/// mode, and `ProxyUID` as its `runAsUser`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Proxy {
    /// The variables istio-iptables reads, and [`INTERCEPTION_MODE_ENV`]; literal values only,
    /// the last of a name winning as in Kubernetes.
    pub env: BTreeMap<String, String>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
}

impl Proxy {
    /// From the container's literal environment (`name`, `value`) in order and its
    /// security context's user and group.
    pub fn new<'a>(
        env: impl IntoIterator<Item = (&'a str, &'a str)>,
        run_as_user: Option<i64>,
        run_as_group: Option<i64>,
    ) -> Self {
        Self {
            env: env
                .into_iter()
                .filter(|(k, _)| *k == INTERCEPTION_MODE_ENV || reads_env(k))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            run_as_user,
            run_as_group,
        }
    }

    /// istio-init's `-u` (the injector's `ProxyUID`), which the sidecar runs as, except with
    /// TPROXY, `capNetBindService` or iptables trace logging, where it runs as root with
    /// `ProxyGID` as its group: then `ProxyUID` is the default 1337 when `ProxyGID` is too
    /// (both come from the namespace's ranges on OpenShift, else both are 1337), and unknown
    /// otherwise.
    fn uid(&self) -> Result<String, CaptureError> {
        match (self.run_as_user, self.run_as_group) {
            (Some(uid), _) if uid != 0 => Ok(uid.to_string()),
            (_, None | Some(DEFAULT_PROXY_ID)) => Ok(DEFAULT_PROXY_ID.to_string()),
            (_, Some(gid)) => Err(CaptureError::ProxyUid { gid }),
        }
    }
}

/// The injector's `ProxyUID` and `ProxyGID` outside OpenShift.
const DEFAULT_PROXY_ID: i64 = 1337;

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
    #[error(
        "container {PROXY_CONTAINER}'s {INTERCEPTION_MODE_ENV} (ProxyConfig's interceptionMode): \
         {error}"
    )]
    ProxyConfigMode { error: ArgsError },
    #[error(
        "container {PROXY_CONTAINER}'s environment (the mesh's ProxyMetadata, which istio-init \
         gets too): {error}"
    )]
    Environment { error: ArgsError },
    #[error(
        "container {PROXY_CONTAINER} runs as root with group {gid}: the proxy's uid (istio-init's \
         -u) cannot be told; recreate the pod with meshsteer's injection template in place"
    )]
    ProxyUid { gid: i64 },
    #[error(
        "annotation {key}: not what meshsteer's injection template writes: {0}",
        key = keys::ISTIO_INIT
    )]
    Template(String),
    #[error("annotation {}: {error}", keys::ISTIO_INIT)]
    TemplateArgs { error: ArgsError },
}

/// What meshsteer's injection template writes into [`keys::ISTIO_INIT`]: istio-init's `args`
/// and `env` as the `sidecar` template renders them, or, where that has no istio-init
/// (interception mode `NONE`, Istio CNI), why not.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rendered {
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    none: Option<String>,
}

/// The template's rendering, if the pod has one.
fn rendered(annotations: &BTreeMap<String, String>) -> Option<Result<Rendered, CaptureError>> {
    let text = annotations.get(keys::ISTIO_INIT)?;
    Some(
        serde_json::from_str::<Rendered>(text)
            .map_err(|e| CaptureError::Template(e.to_string()))
            .and_then(|r| match (&r.args, &r.none) {
                (Some(_), None) | (None, Some(_)) => Ok(r),
                _ => Err(CaptureError::Template(
                    "exactly one of \"args\" and \"none\" must be set".into(),
                )),
            }),
    )
}

/// Whether the pod's options come from meshsteer's injection template.
pub(super) fn from_template(annotations: &BTreeMap<String, String>) -> bool {
    annotations.contains_key(keys::ISTIO_INIT)
}

/// Why meshsteer's template says the pod has no istio-init, if it says so.
pub(super) fn template_says_none(annotations: &BTreeMap<String, String>) -> Option<String> {
    match rendered(annotations)? {
        Ok(Rendered {
            none: Some(why), ..
        }) => Some(format!("{}: {why}", keys::ISTIO_INIT)),
        _ => None,
    }
}

/// Every annotation [`capture`] reads.
pub(super) fn read_by_capture() -> impl Iterator<Item = &'static str> {
    OPTION_ANNOTATIONS.iter().map(|(key, _)| *key).chain([
        keys::EXCLUDE_INBOUND_PORTS,
        keys::STATUS_PORT,
        keys::ISTIO_INIT,
    ])
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

/// The interception mode istio-init got, on the annotation path: the annotation as is
/// (`annotation` in the template: present, even empty, wins), else the mode the injector
/// rendered into the sidecar's environment from ProxyConfig.
pub(super) fn interception_mode<'a>(
    annotations: &'a BTreeMap<String, String>,
    proxy: &'a Proxy,
) -> Option<&'a str> {
    annotations
        .get(keys::INTERCEPTION_MODE)
        .or_else(|| proxy.env.get(INTERCEPTION_MODE_ENV))
        .map(String::as_str)
}

/// The capture istio-init would have installed for a pod: from meshsteer's template's
/// rendering when it has one, else re-derived from its annotations and sidecar.
pub fn capture(
    annotations: &BTreeMap<String, String>,
    proxy: &Proxy,
) -> Result<Capture, CaptureError> {
    match rendered(annotations) {
        Some(r) => {
            let r = r?;
            let Some(args) = r.args else {
                return Err(CaptureError::Template(
                    "no istio-init: nothing to capture".into(),
                ));
            };
            Capture::from_istio_init(&args, &r.env.unwrap_or_default())
                .map_err(|error| CaptureError::TemplateArgs { error })
        }
        None => derived(annotations, proxy),
    }
}

/// The annotation path: the injector's command line with each annotation in place of its
/// option's default, `-u` from the sidecar's user, `-m` from the sidecar's environment when
/// not annotated, and the sidecar's environment as istio-init's.
fn derived(annotations: &BTreeMap<String, String>, proxy: &Proxy) -> Result<Capture, CaptureError> {
    let mut words: Vec<String> = shlex::split(INJECTOR_DEFAULT_ARGS).ok_or(
        CaptureError::Defaults(ArgsError::Quotes(INJECTOR_DEFAULT_ARGS.into())),
    )?;
    let mut add = |flag: &str, value: String| {
        words.push(flag.into());
        words.push(value);
    };
    // Each annotation checked on its own first, so that an error names it.
    let mut scratch = Capture::default();
    for (key, flag) in OPTION_ANNOTATIONS {
        if let Some(value) = annotations.get(*key) {
            scratch
                .set_option(flag, value)
                .map_err(|error| CaptureError::Annotation { key, error })?;
            add(flag, value.clone());
        }
    }
    if !annotations.contains_key(keys::INTERCEPTION_MODE)
        && let Some(mode) = proxy.env.get(INTERCEPTION_MODE_ENV)
    {
        scratch
            .set_option("-m", mode)
            .map_err(|error| CaptureError::ProxyConfigMode { error })?;
        add("-m", mode.clone());
    }
    let d = exclude_inbound_ports(annotations);
    scratch
        .set_option("-d", &d)
        .map_err(|error| CaptureError::ExcludeInboundPorts { error })?;
    add("-d", d);
    add("-u", proxy.uid()?);
    Capture::from_istio_init(&words, &proxy.env).map_err(|error| match error {
        ArgsError::Env { .. } | ArgsError::EnvOnly { .. } => CaptureError::Environment { error },
        other => CaptureError::Defaults(other),
    })
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

    fn proxy(env: &[(&str, &str)]) -> Proxy {
        Proxy::new(env.iter().copied(), Some(1337), Some(1337))
    }

    fn capture_of(a: &BTreeMap<String, String>) -> Result<Capture, CaptureError> {
        capture(a, &Proxy::default())
    }

    #[test]
    fn dual_stack_from_the_proxy_metadata_environment() {
        let dual =
            |env: &[(&str, &str)]| capture(&BTreeMap::new(), &proxy(env)).unwrap().dual_stack;
        assert!(!dual(&[]));
        assert!(dual(&[("ISTIO_DUAL_STACK", "true")]));
        assert!(dual(&[("DUAL_STACK", "1")]));
        assert!(!dual(&[("ISTIO_DUAL_STACK", "yes")]));
        // ISTIO_DUAL_STACK is read last and wins; a bad value leaves the other in force.
        assert!(!dual(&[
            ("ISTIO_DUAL_STACK", "false"),
            ("DUAL_STACK", "true")
        ]));
        assert!(dual(&[("ISTIO_DUAL_STACK", "x"), ("DUAL_STACK", "true")]));
        // The last entry of a name wins, as in Kubernetes.
        assert!(dual(&[
            ("ISTIO_DUAL_STACK", "false"),
            ("ISTIO_DUAL_STACK", "True")
        ]));
        // 1.17 and 1.18 named it ISTIO_AGENT_DUAL_STACK: not read.
        assert!(!dual(&[("ISTIO_AGENT_DUAL_STACK", "true")]));
    }

    /// The annotation path reads ProxyConfig and ProxyUID where the injector renders them on
    /// the sidecar.
    #[test]
    fn proxy_config_and_uid_from_the_sidecar() {
        let none = BTreeMap::new();
        // OpenShift: ProxyUID and ProxyGID from the namespace's ranges.
        let c = capture(&none, &Proxy::new([], Some(1000770000), Some(1000770000))).unwrap();
        assert_eq!(c.proxy_uids, vec![1000770000]);
        assert_eq!(c.gids(), &[1000770000]);
        // Root (capNetBindService) with the default group: the default uid.
        let c = capture(&none, &Proxy::new([], Some(0), Some(1337))).unwrap();
        assert_eq!(c.proxy_uids, vec![1337]);
        assert_eq!(
            capture(&none, &Proxy::new([], Some(0), Some(1000770000)))
                .unwrap_err()
                .to_string(),
            "container istio-proxy runs as root with group 1000770000: the proxy's uid \
             (istio-init's -u) cannot be told; recreate the pod with meshsteer's injection \
             template in place"
        );
        // TPROXY from ProxyConfig, not annotated: an error naming where it came from.
        let e = capture(&none, &proxy(&[("ISTIO_META_INTERCEPTION_MODE", "TPROXY")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("container istio-proxy's ISTIO_META_INTERCEPTION_MODE"),
            "{e}"
        );
        // The annotation wins over ProxyConfig, as `annotation` in the template.
        let redirect = annotations(&[(keys::INTERCEPTION_MODE, "REDIRECT")]);
        assert!(
            capture(
                &redirect,
                &proxy(&[("ISTIO_META_INTERCEPTION_MODE", "TPROXY")])
            )
            .is_ok()
        );
        // The mesh's DNS capture reaches istio-init through the sidecar's environment, as
        // the injector renders it.
        assert!(
            capture(&none, &proxy(&[("ISTIO_META_DNS_CAPTURE", "true")]))
                .unwrap()
                .redirect_dns
        );
        // Invalid-packet drops are not implemented: an error, never half a capture. Off, they
        // are nothing to refuse.
        let (var, flag) = ("INVALID_DROP", "--drop-invalid");
        let e = capture(&none, &proxy(&[(var, "true")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(var) && e.contains(flag), "{e}");
        assert!(capture(&none, &proxy(&[(var, "false")])).is_ok(), "{var}");
    }

    /// The template path: exactly the rendered line and environment, whatever else the pod
    /// says; what is not meshsteer's template's is an error naming the annotation.
    #[test]
    fn the_templates_rendering_is_used_as_written() {
        let with = |text: &str, others: &[(&str, &str)]| {
            let mut a = annotations(others);
            a.insert(keys::ISTIO_INIT.into(), text.into());
            capture(&a, &proxy(&[("ISTIO_DUAL_STACK", "true")]))
        };
        let c = with(
            r#"{"args": ["istio-iptables", "-p", "15002", "-z", "15007", "-u", "1000770000",
                 "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020",
                 "--log_output_level=default:info"], "env": {"ISTIO_META_MESH_ID": "x"}}"#,
            // Ignored on this path: the template saw them when it rendered the line.
            &[(
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "10.0.0.0/8",
            )],
        )
        .unwrap();
        assert_eq!((c.proxy_port, c.inbound_port), (15002, 15007));
        assert_eq!(c.proxy_uids, vec![1000770000]);
        assert!(c.exclude_outbound_cidrs.is_empty());
        // The sidecar's environment is the annotation path's: here only the rendered one.
        assert!(!c.dual_stack);
        let c = with(
            r#"{"args": ["istio-iptables"], "env": {"ISTIO_DUAL_STACK": "true"}}"#,
            &[],
        );
        assert!(c.unwrap().dual_stack);
        assert!(
            with(
                r#"{"args": [], "env": {"ISTIO_META_DNS_CAPTURE": "true"}}"#,
                &[],
            )
            .unwrap()
            .redirect_dns
        );
        let e = with(r#"{"args": [], "env": {"INVALID_DROP": "true"}}"#, &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("annotation meshsteer.io/istio-init: INVALID_DROP=\"true\""),
            "{e}"
        );
        for bad in [
            "istio-iptables -p 15001",
            r#"{"args": [], "none": "x"}"#,
            r#"{}"#,
            r#"{"args": [], "extra": 1}"#,
        ] {
            let e = with(bad, &[]).unwrap_err().to_string();
            assert!(
                e.starts_with(
                    "annotation meshsteer.io/istio-init: not what meshsteer's injection template writes"
                ),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn no_annotations_is_the_injector_default() {
        let c = capture_of(&BTreeMap::new()).unwrap();
        assert_eq!(c, Capture::from_args(INJECTOR_DEFAULT_ARGS).unwrap());
    }

    #[test]
    fn annotations_become_options() {
        let c = capture_of(&annotations(&[
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
        let c = capture_of(&annotations(&[("status.sidecar.istio.io/port", "0")])).unwrap();
        assert_eq!(c.exclude_inbound_ports, vec![15090, 15021]);
    }

    #[test]
    fn unsupported_settings_are_errors_naming_the_annotation() {
        let e = capture_of(&annotations(&[(
            "sidecar.istio.io/interceptionMode",
            "TPROXY",
        )]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("interceptionMode") && e.contains("TPROXY"),
            "{e}"
        );
        let e = capture_of(&annotations(&[(
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
                capture_of(&annotations(&[(key, "")])).unwrap(),
                capture_of(&BTreeMap::new()).unwrap(),
                "{key}"
            );
        }
        let e = capture_of(&annotations(&[(
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "10.0.0.1",
        )]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("excludeOutboundIPRanges"), "{e}");
    }

    #[test]
    fn error_texts_name_the_annotation_then_the_option() {
        let e = capture_of(&annotations(&[(
            "sidecar.istio.io/interceptionMode",
            "TPROXY",
        )]))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "annotation sidecar.istio.io/interceptionMode: unsupported interception mode \"TPROXY\": \
             only REDIRECT is implemented (TPROXY is not)"
        );
        let e = capture_of(&annotations(&[(
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
