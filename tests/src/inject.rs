//! meshsteer's Istio injection template (`deploy/kind/istio.yaml`), rendered as Istio's
//! injector renders templates: Go's text/template (the `gtmpl` crate) with the injector's
//! data (`.ObjectMeta`, `.ProxyConfig`, `.MeshConfig`, `.Values`, `.ProxyUID`) and the few
//! helpers the template uses, written here after Istio's (`annotation`, `isset`,
//! `excludeInboundPort`, `valueOrDefault`, in `pkg/kube/inject/template.go`) and sprig's
//! (`default`, `toString`, `list`, `concat`, `append`, `dict`, `toJson`, `quote`).
use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, Result, anyhow};
use gtmpl::{Context, Func, FuncError, Template, Value};
use gtmpl_value::Number;
use serde_json::json;

use crate::kube::repo_root;

/// The annotation the template writes.
pub const ISTIO_INIT: &str = "meshsteer.io/istio-init";

/// The `meshsteer` template's text, from `deploy/kind/istio.yaml`.
pub fn meshsteer_template() -> Result<String> {
    let path = repo_root().join("deploy/kind/istio.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let op: serde_json::Value = serde_norway::from_str(&text)?;
    op["spec"]["values"]["sidecarInjectorWebhook"]["templates"]["meshsteer"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| anyhow!("no meshsteer template in {}", path.display()))
}

/// What the injector renders a template with, for one pod.
#[derive(Clone, Debug)]
pub struct Injection {
    /// The pod's annotations and labels as created (before injection).
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// ProxyConfig's `interceptionMode` after mesh config, ProxyConfig resources and the
    /// pod's `proxy.istio.io/config` are merged.
    pub interception_mode: String,
    /// ProxyConfig's `proxyMetadata`, likewise merged.
    pub proxy_metadata: BTreeMap<String, String>,
    /// Mesh config's `proxyListenPort`, `proxyInboundListenPort` (0: unset).
    pub listen_ports: (u16, u16),
    /// The namespace's uid (OpenShift's range), else 1337.
    pub proxy_uid: i64,
    /// Istio CNI (`pilot.cni.enabled`).
    pub cni: bool,
    /// `global.logAsJson`, `global.proxy_init.forceApplyIptables`.
    pub log_as_json: bool,
    pub force_apply: bool,
}

impl Default for Injection {
    fn default() -> Self {
        Self {
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            interception_mode: "REDIRECT".into(),
            proxy_metadata: BTreeMap::new(),
            listen_ports: (0, 0),
            proxy_uid: 1337,
            cni: false,
            log_as_json: false,
            force_apply: false,
        }
    }
}

impl Injection {
    /// The template's data, shaped as the injector's `SidecarTemplateData`, with the install
    /// values of Istio's default profile.
    fn data(&self) -> serde_json::Value {
        json!({
            "ObjectMeta": {"Annotations": self.annotations, "Labels": self.labels},
            "ProxyConfig": {
                "InterceptionMode": self.interception_mode,
                // A nil map when empty, as an unset ProxyMetadata is.
                "ProxyMetadata": (!self.proxy_metadata.is_empty()).then_some(&self.proxy_metadata),
            },
            "MeshConfig": {
                "ProxyListenPort": self.listen_ports.0,
                "ProxyInboundListenPort": self.listen_ports.1,
            },
            "ProxyUID": self.proxy_uid,
            "ProxyGID": self.proxy_uid,
            "Values": {
                "pilot": {"cni": {"enabled": self.cni}},
                "global": {
                    "logAsJson": self.log_as_json,
                    "logging": {"level": "default:info"},
                    "proxy": {
                        "includeIPRanges": "*",
                        "excludeIPRanges": "",
                        "includeInboundPorts": "*",
                        "excludeInboundPorts": "",
                        "includeOutboundPorts": "",
                        "excludeOutboundPorts": "",
                        "statusPort": 15020,
                    },
                    "proxy_init": {"forceApplyIptables": self.force_apply},
                },
            },
        })
    }

    /// The template rendered for this pod, parsed (the overlay the injector merges into it).
    pub fn render(&self) -> Result<serde_json::Value> {
        let mut t = Template::default();
        t.add_funcs(HELPERS);
        t.parse(meshsteer_template()?)
            .map_err(|e| anyhow!("parsing the meshsteer template: {e}"))?;
        let text = t
            .render(&Context::from(value(&self.data())))
            .map_err(|e| anyhow!("rendering the meshsteer template: {e}"))?;
        serde_norway::from_str(&text).with_context(|| format!("the rendered template:\n{text}"))
    }

    /// The annotation the rendered template writes.
    pub fn istio_init_annotation(&self) -> Result<String> {
        let overlay = self.render()?;
        overlay["metadata"]["annotations"][ISTIO_INIT]
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow!("no {ISTIO_INIT} in {overlay}"))
    }
}

/// JSON data as template values (objects as Go maps).
fn value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => Value::Number(match n.as_i64() {
            Some(i) => Number::from(i),
            None => Number::from(n.as_f64().unwrap_or_default()),
        }),
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(value).collect()),
        serde_json::Value::Object(o) => {
            Value::Map(o.iter().map(|(k, v)| (k.clone(), value(v))).collect())
        }
    }
}

/// Template values back as JSON (Go's `encoding/json`: map keys sorted).
fn json_of(v: &Value) -> serde_json::Value {
    match v {
        Value::NoValue | Value::Nil | Value::Function(_) => serde_json::Value::Null,
        Value::Bool(b) => json!(b),
        Value::String(s) => json!(s),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => json!(i),
            (_, Some(u)) => json!(u),
            _ => json!(n.as_f64()),
        },
        Value::Array(a) => serde_json::Value::Array(a.iter().map(json_of).collect()),
        Value::Map(m) | Value::Object(m) => {
            let sorted: BTreeMap<&String, serde_json::Value> =
                m.iter().map(|(k, v)| (k, json_of(v))).collect();
            json!(sorted)
        }
    }
}

/// Go's `fmt.Sprint` of one value, as far as the template needs it.
fn sprint(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Nil => "<nil>".into(),
        Value::NoValue => "<no value>".into(),
        other => json_of(other).to_string(),
    }
}

/// sprig's `empty`: the zero value of its type.
fn empty(v: &Value) -> bool {
    match v {
        Value::NoValue | Value::Nil => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0) || n.as_i64() == Some(0),
        Value::Array(a) => a.is_empty(),
        Value::Map(m) | Value::Object(m) => m.is_empty(),
        Value::Function(_) => false,
    }
}

fn args<const N: usize>(name: &str, a: &[Value]) -> Result<[Value; N], FuncError> {
    <[Value; N]>::try_from(a.to_vec()).map_err(|_| FuncError::ExactlyXArgs(name.into(), N))
}

fn map_of(v: &Value) -> Option<&HashMap<String, Value>> {
    match v {
        Value::Map(m) | Value::Object(m) => Some(m),
        _ => None,
    }
}

/// Istio's `annotation meta name default`: the annotation when set (even empty), else
/// `fmt.Sprint(default)`.
fn annotation(a: &[Value]) -> Result<Value, FuncError> {
    let [meta, name, default] = args("annotation", a)?;
    let set = map_of(&meta)
        .and_then(|m| map_of(m.get("Annotations")?))
        .and_then(|m| m.get(&sprint(&name)).cloned());
    Ok(Value::String(sprint(&set.unwrap_or(default))))
}

/// Istio's `isset map key`.
fn isset(a: &[Value]) -> Result<Value, FuncError> {
    let [m, key] = args("isset", a)?;
    Ok(Value::Bool(
        map_of(&m).is_some_and(|m| m.contains_key(&sprint(&key))),
    ))
}

/// Istio's `excludeInboundPort port excluded`: `excluded` with the (status) port added unless
/// it is empty, 0 or already there.
fn exclude_inbound_port(a: &[Value]) -> Result<Value, FuncError> {
    let [port, excluded] = args("excludeInboundPort", a)?;
    let (port, excluded) = (sprint(&port).trim().to_string(), sprint(&excluded));
    if port.is_empty() || port == "0" {
        return Ok(Value::String(excluded));
    }
    let ports: Vec<&str> = excluded.split(',').collect();
    if ports.contains(&port.as_str()) {
        return Ok(Value::String(excluded));
    }
    let mut out: Vec<String> = ports
        .iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    out.push(port);
    Ok(Value::String(out.join(",")))
}

/// Istio's `valueOrDefault value default`.
fn value_or_default(a: &[Value]) -> Result<Value, FuncError> {
    let [v, default] = args("valueOrDefault", a)?;
    Ok(match &v {
        Value::Nil | Value::NoValue => default,
        Value::String(s) if s.is_empty() => default,
        _ => v,
    })
}

/// sprig's `default d v`.
fn default(a: &[Value]) -> Result<Value, FuncError> {
    let [d, v] = args("default", a)?;
    Ok(if empty(&v) { d } else { v })
}

fn to_string(a: &[Value]) -> Result<Value, FuncError> {
    let [v] = args("toString", a)?;
    Ok(Value::String(sprint(&v)))
}

fn list(a: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::Array(a.to_vec()))
}

fn items(v: &Value) -> Result<Vec<Value>, FuncError> {
    match v {
        Value::Array(a) => Ok(a.clone()),
        other => Err(FuncError::Generic(format!("not a list: {other}"))),
    }
}

fn concat(a: &[Value]) -> Result<Value, FuncError> {
    let mut out = Vec::new();
    for l in a {
        out.extend(items(l)?);
    }
    Ok(Value::Array(out))
}

fn append(a: &[Value]) -> Result<Value, FuncError> {
    let [l, v] = args("append", a)?;
    let mut out = items(&l)?;
    out.push(v);
    Ok(Value::Array(out))
}

fn dict(a: &[Value]) -> Result<Value, FuncError> {
    let mut m = HashMap::new();
    for pair in a.chunks(2) {
        m.insert(
            sprint(&pair[0]),
            pair.get(1).cloned().unwrap_or(Value::String(String::new())),
        );
    }
    Ok(Value::Map(m))
}

fn to_json(a: &[Value]) -> Result<Value, FuncError> {
    let [v] = args("toJson", a)?;
    Ok(Value::String(json_of(&v).to_string()))
}

/// sprig's `quote`: Go's `%q` of each argument, space-separated (a valid YAML double-quoted
/// scalar).
fn quote(a: &[Value]) -> Result<Value, FuncError> {
    let quoted: Vec<String> = a
        .iter()
        .filter(|v| !matches!(v, Value::Nil))
        .map(|v| {
            let mut q = String::from('"');
            for c in sprint(v).chars() {
                match c {
                    '"' => q.push_str("\\\""),
                    '\\' => q.push_str("\\\\"),
                    '\n' => q.push_str("\\n"),
                    '\t' => q.push_str("\\t"),
                    '\r' => q.push_str("\\r"),
                    c if c.is_control() => q.push_str(&format!("\\u{:04x}", c as u32)),
                    c => q.push(c),
                }
            }
            q.push('"');
            q
        })
        .collect();
    Ok(Value::String(quoted.join(" ")))
}

const HELPERS: &[(&str, Func)] = &[
    ("annotation", annotation),
    ("isset", isset),
    ("excludeInboundPort", exclude_inbound_port),
    ("valueOrDefault", value_or_default),
    ("default", default),
    ("toString", to_string),
    ("list", list),
    ("concat", concat),
    ("append", append),
    ("dict", dict),
    ("toJson", to_json),
    ("quote", quote),
];

/// One row of issue 12's table: a pod as created, what the injector rendered it with, and
/// istio-init as Istio's `sidecar` template would have rendered it (written by hand from
/// that template), or `None` where it has no istio-init.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub injection: Injection,
    pub istio_init: Option<IstioInit>,
}

/// istio-init's `args` and `env`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IstioInit {
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

impl IstioInit {
    /// The default profile's line with `changes` (option, value) in place, and `extra` words
    /// before the log level.
    fn line(changes: &[(&str, &str)], extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args: Vec<String> = [
            "istio-iptables",
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
            "15090,15021,15020",
        ]
        .map(String::from)
        .to_vec();
        for (flag, value) in changes {
            let at = args
                .iter()
                .position(|a| a == flag)
                .expect("an option of the line")
                + 1;
            args[at] = value.to_string();
        }
        args.extend(extra.iter().map(|w| w.to_string()));
        args.push("--log_output_level=default:info".into());
        Self {
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The cases of issue 12's table that meshsteer's template renders (Helm gateways and pods
/// with their own templates never run it).
pub fn cases() -> Vec<Case> {
    let d = Injection::default;
    vec![
        Case {
            name: "default",
            injection: d(),
            istio_init: Some(IstioInit::line(&[], &[], &[])),
        },
        Case {
            name: "openshift-uid",
            injection: Injection {
                proxy_uid: 1000770000,
                ..d()
            },
            istio_init: Some(IstioInit::line(&[("-u", "1000770000")], &[], &[])),
        },
        Case {
            name: "proxyconfig-none",
            injection: Injection {
                annotations: strings(&[("proxy.istio.io/config", "interceptionMode: NONE")]),
                interception_mode: "NONE".into(),
                ..d()
            },
            istio_init: None,
        },
        Case {
            name: "proxyconfig-tproxy",
            injection: Injection {
                annotations: strings(&[("proxy.istio.io/config", "interceptionMode: TPROXY")]),
                interception_mode: "TPROXY".into(),
                ..d()
            },
            istio_init: Some(IstioInit::line(&[("-m", "TPROXY")], &[], &[])),
        },
        Case {
            name: "mesh-ports",
            injection: Injection {
                listen_ports: (15002, 15007),
                ..d()
            },
            istio_init: Some(IstioInit::line(
                &[("-p", "15002"), ("-z", "15007")],
                &[],
                &[],
            )),
        },
        Case {
            name: "dns-capture",
            injection: Injection {
                proxy_metadata: strings(&[("ISTIO_META_DNS_CAPTURE", "true")]),
                ..d()
            },
            istio_init: Some(IstioInit::line(
                &[],
                &[],
                &[("ISTIO_META_DNS_CAPTURE", "true")],
            )),
        },
        Case {
            name: "dual-stack",
            injection: Injection {
                proxy_metadata: strings(&[("ISTIO_DUAL_STACK", "true")]),
                ..d()
            },
            istio_init: Some(IstioInit::line(&[], &[], &[("ISTIO_DUAL_STACK", "true")])),
        },
        Case {
            name: "kubevirt-empty",
            injection: Injection {
                annotations: strings(&[
                    ("traffic.sidecar.istio.io/kubevirtInterfaces", ""),
                    ("traffic.sidecar.istio.io/excludeOutboundPorts", "3306"),
                    ("status.sidecar.istio.io/port", "0"),
                ]),
                ..d()
            },
            istio_init: Some(IstioInit::line(
                &[("-d", "15090,15021")],
                &["-o", "3306", "-k", ""],
                &[],
            )),
        },
        Case {
            // The webhook injected it (the label wins); the template sees both.
            name: "label-beats-annotation",
            injection: Injection {
                annotations: strings(&[("sidecar.istio.io/inject", "false")]),
                labels: strings(&[("sidecar.istio.io/inject", "true")]),
                ..d()
            },
            istio_init: Some(IstioInit::line(&[], &[], &[])),
        },
        Case {
            name: "cni",
            injection: Injection { cni: true, ..d() },
            istio_init: None,
        },
    ]
}

/// How a pod was injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injector {
    /// With meshsteer's template after `sidecar` (`deploy/kind/istio.yaml`).
    Meshsteer,
    /// With a template that only deleted istio-init: a pod injected before meshsteer's
    /// template wrote its annotation.
    Older,
}

impl Case {
    /// The pod as Istio's injector makes it from one created with the case's annotations
    /// (metadata and spec, without name and node), written by hand from Istio 1.24's
    /// `sidecar` template: its `istio-proxy` container's environment (ProxyMetadata, the
    /// interception mode) and user (ProxyUID; root with TPROXY), istio-validation with CNI,
    /// no istio-init (meshsteer's template deleted it), and with `injector` meshsteer's
    /// annotation as rendered.
    pub fn injected_pod(&self, injector: Injector) -> Result<serde_json::Value> {
        let i = &self.injection;
        let mut annotations = i.annotations.clone();
        let mut labels = i.labels.clone();
        labels.insert("app".into(), self.name.into());
        annotations.insert(
            "sidecar.istio.io/status".into(),
            r#"{"initContainers":null,"containers":["istio-proxy"],"volumes":["workload-socket","istio-envoy","istio-data","istio-podinfo","istio-token","istiod-ca-cert"],"imagePullSecrets":null,"revision":"default"}"#.into(),
        );
        if injector == Injector::Meshsteer {
            annotations.insert(ISTIO_INIT.into(), i.istio_init_annotation()?);
        }
        let mode = match annotations.get("sidecar.istio.io/interceptionMode") {
            Some(m) if !m.is_empty() => m.clone(),
            _ => i.interception_mode.clone(),
        };
        let mut env = vec![
            json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
            json!({"name": "PROXY_CONFIG", "value": "{}\n"}),
            json!({"name": "ISTIO_META_INTERCEPTION_MODE", "value": mode}),
        ];
        env.extend(
            i.proxy_metadata
                .iter()
                .map(|(k, v)| json!({"name": k, "value": v})),
        );
        let root = mode == "TPROXY";
        let mut spec = json!({
            "containers": [
                {"name": "app", "image": "app"},
                {
                    "name": "istio-proxy",
                    "image": "proxyv2",
                    "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"],
                    "env": env,
                    "securityContext": {
                        "runAsUser": if root { 0 } else { i.proxy_uid },
                        "runAsGroup": i.proxy_uid,
                        "runAsNonRoot": !root,
                    },
                },
            ],
        });
        if i.cni && mode != "NONE" {
            spec["initContainers"] = json!([{
                "name": "istio-validation",
                "image": "proxyv2",
                "args": ["istio-iptables", "--run-validation", "--skip-rule-apply"],
            }]);
        }
        Ok(json!({
            "metadata": {
                "annotations": annotations,
                "labels": labels,
            },
            "spec": spec,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The template renders, for each case, istio-init's args and env exactly as Istio's
    /// `sidecar` template gives them to istio-init, or says there is none.
    #[test]
    fn the_template_renders_istio_inits_line_for_each_case() {
        for case in cases() {
            let overlay = case.injection.render().unwrap();
            // istio-init goes in every case (a no-op where the sidecar template had none).
            assert_eq!(
                overlay["spec"]["initContainers"],
                json!([{"name": "istio-init", "$patch": "delete"}]),
                "{}",
                case.name
            );
            let rendered: serde_json::Value =
                serde_json::from_str(&case.injection.istio_init_annotation().unwrap()).unwrap();
            match &case.istio_init {
                Some(init) => {
                    assert_eq!(rendered["args"], json!(init.args), "{}", case.name);
                    let env = if init.env.is_empty() {
                        json!(null)
                    } else {
                        json!(init.env)
                    };
                    assert_eq!(rendered["env"], env, "{}", case.name);
                }
                None => assert!(rendered["none"].is_string(), "{}: {rendered}", case.name),
            }
        }
    }

    /// Install values that add words to istio-init's line, in its order.
    #[test]
    fn log_and_apply_options_follow_istio_inits_order() {
        let i = Injection {
            log_as_json: true,
            force_apply: true,
            annotations: strings(&[("sidecar.istio.io/agentLogLevel", "default:debug")]),
            ..Injection::default()
        };
        let rendered: serde_json::Value =
            serde_json::from_str(&i.istio_init_annotation().unwrap()).unwrap();
        let args = rendered["args"].as_array().unwrap();
        assert_eq!(
            args[args.len() - 3..],
            [
                json!("--log_output_level=default:debug"),
                json!("--log_as_json"),
                json!("--force-apply")
            ]
        );
    }

    #[test]
    fn quoting_survives_any_annotation_value() {
        let odd = "a\"b\\c'd\n e";
        let i = Injection {
            annotations: strings(&[("traffic.sidecar.istio.io/excludeOutboundIPRanges", odd)]),
            ..Injection::default()
        };
        let rendered: serde_json::Value =
            serde_json::from_str(&i.istio_init_annotation().unwrap()).unwrap();
        assert_eq!(rendered["args"][12], odd);
    }
}
