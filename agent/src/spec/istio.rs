//! istio-iptables command lines, parsed into the capture settings they stand for.
//!
//! Supported: `-p -z -u -g -m REDIRECT -i -x -b -d -q -o -e --dual-stack` (and their long
//! names), with istio-iptables' own defaults for what is omitted; `-k` and `-c` with an empty
//! list (what the injector emits for an empty annotation). The [`Opt::Ignored`] options
//! (logging, validation, how the rules are applied) have no effect on capture and are accepted
//! and ignored by name, so that a real istio-init line parses. Anything else is refused by name
//! so a pod is never enrolled with capture that differs silently from what its rules asked
//! for. istio-init's environment (the mesh's `ProxyMetadata`) is read as istio-iptables reads
//! it: [`Capture::from_istio_init`].
use std::{
    collections::BTreeMap,
    fmt,
    net::{AddrParseError, IpAddr},
    num::ParseIntError,
    str::FromStr,
};

use serde::{Deserialize, Serialize};

/// The command line istio's sidecar injector runs by default: used for a pod spec that gives
/// neither `args` nor `capture`.
pub const INJECTOR_DEFAULT_ARGS: &str =
    "-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x \"\" -b '*' -d 15090,15021,15020";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("unsupported istio-iptables option {0}: meshsteer does not implement it yet")]
    Unsupported(String),
    /// An option set through istio-init's environment (the mesh's `ProxyMetadata`).
    #[error("{var}={value:?} in istio-init's environment: {error}")]
    Env {
        var: String,
        value: String,
        error: Box<ArgsError>,
    },
    #[error(
        "{var}={value:?} in istio-init's environment: meshsteer implements only the default \
         of this istio-iptables setting"
    )]
    EnvOnly { var: String, value: String },
    #[error("unsupported interception mode {0:?}: only REDIRECT is implemented (TPROXY is not)")]
    Mode(String),
    /// `-k` or `-c` naming interfaces: only the empty list is implemented.
    #[error(
        "unsupported istio-iptables option {option} {value:?}: meshsteer implements only an empty \
         interface list"
    )]
    Interfaces { option: String, value: String },
    #[error("unknown istio-iptables option {0}")]
    Unknown(String),
    #[error("option {0} needs a value")]
    MissingValue(String),
    #[error("invalid value {value:?} for {option}: {reason}")]
    Invalid {
        option: String,
        value: String,
        reason: ValueError,
    },
    #[error("unbalanced quotes in args {0:?}")]
    Quotes(String),
    #[error("unexpected argument {0:?}")]
    Positional(String),
}

/// Why an option's value is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("not a port: {0}")]
    Port(ParseIntError),
    /// One item of a comma-separated list (a uid, a port, a CIDR).
    #[error("{item:?}: {reason}")]
    Item { item: String, reason: String },
    #[error("'*' cannot be excluded (istio refuses it too)")]
    ExcludeAll,
    /// A switch's `=value` that Go's `strconv.ParseBool` refuses.
    #[error("not a boolean (true, false, 1, 0, t, f)")]
    Bool,
}

/// Why a CIDR does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("expected ADDRESS/PREFIX-LENGTH")]
    NoPrefixLength,
    #[error(transparent)]
    Address(#[from] AddrParseError),
    #[error("bad prefix length {0:?}")]
    BadPrefixLength(String),
    #[error("prefix length {len} > {max}")]
    PrefixTooLong { len: u8, max: u8 },
}

/// A CIDR as istio takes it (`addr/len`; a bare address is an error there too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, ip, max) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u32::from(n) as u128, u32::from(i) as u128, 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        let shift = max - u32::from(self.len);
        shift >= 128 || (net >> shift) == (ip >> shift)
    }

    pub fn is_loopback(&self) -> bool {
        self.addr.is_loopback()
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (a, l) = s.split_once('/').ok_or(CidrError::NoPrefixLength)?;
        let addr: IpAddr = a.parse()?;
        let len: u8 = l
            .parse()
            .map_err(|_| CidrError::BadPrefixLength(l.into()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(CidrError::PrefixTooLong { len, max });
        }
        Ok(Self { addr, len })
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;
    fn try_from(s: String) -> Result<Self, CidrError> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> Self {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// `-i`: everything, or a list (possibly empty: nothing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ranges {
    #[serde(with = "wildcard")]
    All,
    List(Vec<Cidr>),
}

/// `-b`: every port, or a list (possibly empty: no inbound capture).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ports {
    #[serde(with = "wildcard")]
    All,
    List(Vec<u16>),
}

/// Serde for the `"*"` variants.
mod wildcard {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("*")
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        let s = String::deserialize(d)?;
        if s == "*" {
            Ok(())
        } else {
            Err(D::Error::custom("expected \"*\" or a list"))
        }
    }
}

/// What one pod's capture rules say, whichever way they were written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Capture {
    /// `-p`
    pub proxy_port: u16,
    /// `-z`
    pub inbound_port: u16,
    /// `-e`
    pub tunnel_port: u16,
    /// `-u`
    pub proxy_uids: Vec<u32>,
    /// `-g` (istio: defaults to the `-u` list)
    pub proxy_gids: Option<Vec<u32>>,
    /// `-i`
    pub include_outbound_cidrs: Ranges,
    /// `-x`
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// `-b`
    pub include_inbound_ports: Ports,
    /// `-d` (only used with `-b '*'`)
    pub exclude_inbound_ports: Vec<u16>,
    /// `-q`
    pub include_outbound_ports: Vec<u16>,
    /// `-o`
    pub exclude_outbound_ports: Vec<u16>,
    /// `--dual-stack` (1.18+; `ISTIO_DUAL_STACK` in istio-init's environment from 1.19): IPv6
    /// rules whenever the pod has an IPv6 address. Without it istio-init writes them only when
    /// the pod has no IPv4 address (see [`Capture::ipv6_rules`]).
    pub dual_stack: bool,
    /// `--redirect-dns` (`ISTIO_META_DNS_CAPTURE` in istio-init's environment): DNS to the
    /// pod's nameservers goes to the proxy's DNS port, 15053.
    pub redirect_dns: bool,
    /// `--capture-all-dns`: with `--redirect-dns`, DNS to every server, not only the pod's
    /// nameservers.
    pub capture_all_dns: bool,
}

impl Default for Capture {
    /// istio-iptables' defaults with no flags: nothing captured by range or inbound port.
    fn default() -> Self {
        Self {
            proxy_port: 15001,
            inbound_port: 15006,
            tunnel_port: 15008,
            proxy_uids: vec![1337],
            proxy_gids: None,
            include_outbound_cidrs: Ranges::List(vec![]),
            exclude_outbound_cidrs: vec![],
            include_inbound_ports: Ports::List(vec![]),
            exclude_inbound_ports: vec![],
            include_outbound_ports: vec![],
            exclude_outbound_ports: vec![],
            dual_stack: false,
            redirect_dns: false,
            capture_all_dns: false,
        }
    }
}

impl Capture {
    pub fn gids(&self) -> &[u32] {
        self.proxy_gids.as_deref().unwrap_or(&self.proxy_uids)
    }

    /// Whether istio-init writes ip6tables rules for a pod with these addresses. It decides by
    /// the first non-loopback address of the pod's interfaces, and the kernel lists every
    /// IPv4 address before any IPv6 one: the first is IPv6 only when the pod has no IPv4
    /// address. With `--dual-stack`, any IPv6 address will do.
    pub fn ipv6_rules(&self, ips: &[IpAddr]) -> bool {
        ips.iter().any(IpAddr::is_ipv6) && (self.dual_stack || !ips.iter().any(IpAddr::is_ipv4))
    }

    /// Parses an istio-iptables command line (the program name may lead).
    pub fn from_args(line: &str) -> Result<Self, ArgsError> {
        let words = shlex::split(line).ok_or_else(|| ArgsError::Quotes(line.into()))?;
        Self::from_istio_init(&words, &BTreeMap::new())
    }

    /// What istio-init installs when run with `args` (its container's `args`, the program
    /// name may lead) and environment `env` (the injector renders the mesh's `ProxyMetadata`
    /// there). As istio-iptables, an option on the command line wins over its environment
    /// variable, and a boolean variable that is not a Go boolean is ignored. A variable that
    /// asks for what meshsteer does not implement (`INVALID_DROP=true`) is an error
    /// naming it.
    pub fn from_istio_init(
        args: &[impl AsRef<str>],
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ArgsError> {
        let mut words = args.iter().map(AsRef::as_ref).peekable();
        if words.peek().is_some_and(|w| w.ends_with("istio-iptables")) {
            words.next();
        }
        let line = parse_words(words)?;
        let mut c = Self::default();
        for (var, (known, value)) in environment(env) {
            if line.iter().any(|s| s.known.long == known.long) {
                continue;
            }
            let flag = format!("--{}", known.long);
            c.apply(known, &flag, Some(value))
                .map_err(|error| ArgsError::Env {
                    var: var.clone(),
                    value: value.clone(),
                    error: Box::new(error),
                })?;
        }
        for (var, default) in ENV_ONLY {
            if let Some(value) = env.get(*var).filter(|v| v.as_str() != *default) {
                return Err(ArgsError::EnvOnly {
                    var: var.to_string(),
                    value: value.clone(),
                });
            }
        }
        for s in line {
            c.apply(s.known, &s.flag, s.value.as_ref())?;
        }
        Ok(c)
    }

    /// One option as given: a switch's value (`None`: on, else `=value`), or an option's value.
    fn apply(
        &mut self,
        known: &Known,
        flag: &str,
        value: Option<&String>,
    ) -> Result<(), ArgsError> {
        if known.switch {
            let on = match value {
                Some(v) => parse_bool(v).map_err(|reason| ArgsError::Invalid {
                    option: flag.into(),
                    value: v.clone(),
                    reason,
                })?,
                None => true,
            };
            return match known.opt {
                Opt::DualStack => {
                    self.dual_stack = on;
                    Ok(())
                }
                Opt::RedirectDns => {
                    self.redirect_dns = on;
                    Ok(())
                }
                Opt::CaptureAllDns => {
                    self.capture_all_dns = on;
                    Ok(())
                }
                Opt::Unsupported if on => Err(ArgsError::Unsupported(flag.into())),
                _ => Ok(()),
            };
        }
        let value = value.ok_or_else(|| ArgsError::MissingValue(flag.into()))?;
        self.set(known.opt, flag, value)
    }

    /// Sets one option as istio-iptables would take it from its command line: `flag` is its
    /// short or long name (`-x`, `--istio-service-exclude-cidr`), `value` its argument.
    /// Options meshsteer does not implement are refused by name, as in [`Capture::from_args`].
    pub fn set_option(&mut self, flag: &str, value: &str) -> Result<(), ArgsError> {
        self.apply(Known::lookup(flag)?, flag, Some(&value.to_string()))
    }

    fn set(&mut self, opt: Opt, flag: &str, v: &str) -> Result<(), ArgsError> {
        let invalid = |reason: ValueError| ArgsError::Invalid {
            option: flag.into(),
            value: v.into(),
            reason,
        };
        match opt {
            Opt::ProxyPort => self.proxy_port = parse_port(v).map_err(invalid)?,
            Opt::InboundPort => self.inbound_port = parse_port(v).map_err(invalid)?,
            Opt::TunnelPort => self.tunnel_port = parse_port(v).map_err(invalid)?,
            Opt::Uid => self.proxy_uids = parse_list(v).map_err(invalid)?,
            Opt::Gid => self.proxy_gids = Some(parse_list(v).map_err(invalid)?),
            Opt::Mode => {
                if v == "TPROXY" {
                    return Err(ArgsError::Mode(v.into()));
                }
                // istio: anything but TPROXY means REDIRECT.
            }
            Opt::IncludeCidrs => {
                self.include_outbound_cidrs = if v.trim() == "*" {
                    Ranges::All
                } else {
                    Ranges::List(parse_list(v).map_err(invalid)?)
                }
            }
            Opt::ExcludeCidrs => {
                if v.trim() == "*" {
                    return Err(invalid(ValueError::ExcludeAll));
                }
                self.exclude_outbound_cidrs = parse_list(v).map_err(invalid)?;
            }
            Opt::IncludeInboundPorts => {
                self.include_inbound_ports = if v.trim() == "*" {
                    Ports::All
                } else {
                    Ports::List(parse_ports(v).map_err(invalid)?)
                }
            }
            Opt::ExcludeInboundPorts => {
                self.exclude_inbound_ports = parse_ports(v).map_err(invalid)?
            }
            Opt::IncludeOutboundPorts => {
                self.include_outbound_ports = parse_ports(v).map_err(invalid)?
            }
            Opt::ExcludeOutboundPorts => {
                self.exclude_outbound_ports = parse_ports(v).map_err(invalid)?
            }
            Opt::Interfaces => {
                // istio's Split drops empty items: `-k ""` (and `-k ,`) name no interface.
                if v.split(',').any(|i| !i.trim().is_empty()) {
                    return Err(ArgsError::Interfaces {
                        option: flag.into(),
                        value: v.into(),
                    });
                }
            }
            Opt::DualStack => {
                self.dual_stack = parse_bool(v).map_err(invalid)?;
            }
            Opt::RedirectDns => {
                self.redirect_dns = parse_bool(v).map_err(invalid)?;
            }
            Opt::CaptureAllDns => {
                self.capture_all_dns = parse_bool(v).map_err(invalid)?;
            }
            Opt::Ignored => {}
            Opt::Unsupported => return Err(ArgsError::Unsupported(flag.into())),
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    ProxyPort,
    InboundPort,
    TunnelPort,
    Uid,
    Gid,
    Mode,
    IncludeCidrs,
    ExcludeCidrs,
    IncludeInboundPorts,
    ExcludeInboundPorts,
    IncludeOutboundPorts,
    ExcludeOutboundPorts,
    /// `-k`, `-c`: interface lists, accepted only empty.
    Interfaces,
    /// `--dual-stack`, a switch.
    DualStack,
    /// `--redirect-dns`, a switch.
    RedirectDns,
    /// `--capture-all-dns`, a switch.
    CaptureAllDns,
    /// Accepted and ignored: no effect on capture.
    Ignored,
    /// Changes capture in a way meshsteer does not implement: refused by name (a switch only
    /// when on).
    Unsupported,
}

/// One option istio-iptables has.
#[derive(Debug)]
struct Known {
    short: &'static str,
    /// istio-iptables' own long name; its environment variable is this in UPPER_SNAKE.
    long: &'static str,
    opt: Opt,
    /// A boolean switch (pflag's `Bool`: `--flag` or `--flag=false`, never the next word).
    switch: bool,
}

const fn known(short: &'static str, long: &'static str, opt: Opt, switch: bool) -> Known {
    Known {
        short,
        long,
        opt,
        switch,
    }
}

/// Every option of istio-iptables (and, for `log_*`, of `pilot-agent`, which runs it from
/// 1.15 on). The [`Opt::Ignored`] ones have no effect on the capture a pod gets: real
/// istio-init lines carry `--log_output_level=…` and `--log_as_json` (1.15+),
/// `--run-validation --skip-rule-apply` (with Istio CNI, which installs the same rules
/// itself) and `--force-apply` (1.24). The [`Opt::Unsupported`] ones change capture in ways
/// meshsteer does not implement (`--dry-run` and `--cleanup-only` install none,
/// `--cni-mode` is the CNI plugin's).
const KNOWN: &[Known] = &[
    known("p", "envoy-port", Opt::ProxyPort, false),
    known("z", "inbound-capture-port", Opt::InboundPort, false),
    known("e", "inbound-tunnel-port", Opt::TunnelPort, false),
    known("u", "proxy-uid", Opt::Uid, false),
    known("g", "proxy-gid", Opt::Gid, false),
    known("m", "istio-inbound-interception-mode", Opt::Mode, false),
    known("i", "istio-service-cidr", Opt::IncludeCidrs, false),
    known("x", "istio-service-exclude-cidr", Opt::ExcludeCidrs, false),
    known("b", "istio-inbound-ports", Opt::IncludeInboundPorts, false),
    known(
        "d",
        "istio-local-exclude-ports",
        Opt::ExcludeInboundPorts,
        false,
    ),
    known(
        "q",
        "istio-outbound-ports",
        Opt::IncludeOutboundPorts,
        false,
    ),
    known(
        "o",
        "istio-local-outbound-ports-exclude",
        Opt::ExcludeOutboundPorts,
        false,
    ),
    // Virtual machine interfaces (`traffic.sidecar.istio.io/kubevirtInterfaces`): the injector
    // emits `-k` whenever the annotation is set, even to "".
    known("k", "kube-virt-interfaces", Opt::Interfaces, false),
    // Interfaces never captured (`traffic.sidecar.istio.io/excludeInterfaces`, 1.15+; 1.12 to
    // 1.14 have only the long name).
    known("c", "istio-exclude-interfaces", Opt::Interfaces, false),
    known("", "dual-stack", Opt::DualStack, true),
    known("", "redirect-dns", Opt::RedirectDns, true),
    known("", "capture-all-dns", Opt::CaptureAllDns, true),
    known("", "log_output_level", Opt::Ignored, false),
    known("", "log_as_json", Opt::Ignored, true),
    known("", "log_stacktrace_level", Opt::Ignored, false),
    known("", "log_caller", Opt::Ignored, false),
    known("", "log_target", Opt::Ignored, false),
    known("", "log_rotate", Opt::Ignored, false),
    known("", "log_rotate_max_age", Opt::Ignored, false),
    known("", "log_rotate_max_size", Opt::Ignored, false),
    known("", "log_rotate_max_backups", Opt::Ignored, false),
    known("", "run-validation", Opt::Ignored, true),
    known("", "skip-rule-apply", Opt::Ignored, true),
    known("", "force-apply", Opt::Ignored, true),
    known("", "reconcile", Opt::Ignored, true),
    known("", "iptables-probe-port", Opt::Ignored, false),
    known("", "probe-timeout", Opt::Ignored, false),
    known("", "iptables-trace-logging", Opt::Ignored, true),
    known("f", "restore-format", Opt::Ignored, true),
    known("", "output-paths", Opt::Ignored, false),
    known("", "iptables-version", Opt::Ignored, false),
    known(
        "r",
        "istio-inbound-tproxy-route-table",
        Opt::Unsupported,
        false,
    ),
    known("t", "istio-inbound-tproxy-mark", Opt::Unsupported, false),
    known("n", "dry-run", Opt::Unsupported, true),
    known("", "drop-invalid", Opt::Unsupported, true),
    known("", "network-namespace", Opt::Unsupported, false),
    known("", "cni-mode", Opt::Unsupported, true),
    known("", "cleanup-only", Opt::Unsupported, true),
];

/// Older names istio-iptables also reads an option from, after its own (so they win):
/// `ProxyMetadata` keys the injector copies into istio-init's environment.
const ENV_ALIASES: &[(&str, &str)] = &[
    ("ISTIO_META_DNS_CAPTURE", "redirect-dns"),
    ("INVALID_DROP", "drop-invalid"),
    ("ISTIO_DUAL_STACK", "dual-stack"),
];

/// Settings istio-iptables takes only from its environment, with their defaults: any other
/// value changes capture in a way meshsteer does not implement.
const ENV_ONLY: &[(&str, &str)] = &[
    ("ISTIO_OUTBOUND_OWNER_GROUPS", "*"),
    ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", ""),
    ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/32"),
];

/// The option settings an environment gives, by variable, the last that counts for each
/// option: each option's UPPER_SNAKE variable (viper's `AutomaticEnv` before 1.19, `BindEnv`
/// from 1.19), then its [`ENV_ALIASES`]. A switch's variable counts only with a Go boolean
/// (pflag refuses anything else, and istio-iptables ignores the refusal).
fn environment(env: &BTreeMap<String, String>) -> Vec<(String, (&'static Known, &String))> {
    let mut set: Vec<(String, (&'static Known, &String))> = Vec::new();
    let named = KNOWN
        .iter()
        .filter(|k| !k.long.is_empty())
        .map(|k| (k.long.to_uppercase().replace('-', "_"), k.long))
        .chain(ENV_ALIASES.iter().map(|(v, l)| (v.to_string(), *l)));
    for (var, long) in named {
        let Some(value) = env.get(&var) else { continue };
        let Some(k) = KNOWN.iter().find(|k| k.long == long) else {
            continue;
        };
        if k.switch && go_bool(value).is_none() {
            continue;
        }
        set.retain(|(_, (other, _))| other.long != long);
        set.push((var, (k, value)));
    }
    set
}

/// Whether istio-iptables reads environment variable `var` (as an option, or as a setting it
/// takes only from there).
pub fn reads_env(var: &str) -> bool {
    ENV_ALIASES.iter().any(|(v, _)| *v == var)
        || ENV_ONLY.iter().any(|(v, _)| *v == var)
        || KNOWN
            .iter()
            .any(|k| !k.long.is_empty() && k.long.to_uppercase().replace('-', "_") == var)
}

impl Known {
    fn lookup(flag: &str) -> Result<&'static Self, ArgsError> {
        let (short, long) = match flag.strip_prefix("--") {
            Some(l) => ("", l),
            None => (flag.trim_start_matches('-'), ""),
        };
        KNOWN
            .iter()
            .find(|k| {
                (!short.is_empty() && k.short == short) || (!long.is_empty() && k.long == long)
            })
            .ok_or_else(|| ArgsError::Unknown(flag.into()))
    }
}

/// One option of a command line, as written.
struct Setting {
    known: &'static Known,
    flag: String,
    value: Option<String>,
}

/// A command line's options, in order. Unknown options, and those meshsteer does not
/// implement that take a value, are refused by name before their value is looked at.
fn parse_words<'a>(words: impl Iterator<Item = &'a str>) -> Result<Vec<Setting>, ArgsError> {
    let mut words = words.peekable();
    let mut line = Vec::new();
    while let Some(word) = words.next() {
        let (flag, inline) = split_flag(word)?;
        let known = Known::lookup(&flag)?;
        if known.opt == Opt::Unsupported && !known.switch {
            return Err(ArgsError::Unsupported(flag));
        }
        // A switch never takes the next word (`--log_as_json`), only `=value`.
        let value = match inline {
            Some(v) => Some(v),
            None if known.switch => None,
            None => Some(
                words
                    .next()
                    .ok_or_else(|| ArgsError::MissingValue(flag.clone()))?
                    .to_string(),
            ),
        };
        line.push(Setting { known, flag, value });
    }
    Ok(line)
}

/// `-p15001`, `-p=15001`, `--envoy-port=15001`, or a flag whose value is the next word.
fn split_flag(word: &str) -> Result<(String, Option<String>), ArgsError> {
    if let Some(long) = word.strip_prefix("--") {
        return Ok(match long.split_once('=') {
            Some((f, v)) => (format!("--{f}"), Some(v.into())),
            None => (word.into(), None),
        });
    }
    let Some(short) = word.strip_prefix('-').filter(|s| !s.is_empty()) else {
        return Err(ArgsError::Positional(word.into()));
    };
    let mut chars = short.chars();
    let name = chars.next().map(String::from).unwrap_or_default();
    let rest = chars.as_str();
    let value = (!rest.is_empty()).then(|| rest.strip_prefix('=').unwrap_or(rest).to_string());
    Ok((format!("-{name}"), value))
}

/// Go's `strconv.ParseBool`, which pflag uses for `--flag=value` and for the environment
/// variables istio-iptables reads in place of flags.
pub fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn parse_bool(v: &str) -> Result<bool, ValueError> {
    go_bool(v).ok_or(ValueError::Bool)
}

fn parse_port(v: &str) -> Result<u16, ValueError> {
    v.trim().parse().map_err(ValueError::Port)
}

/// istio's `Split`: comma-separated, empty items dropped.
fn parse_list<T: FromStr>(v: &str) -> Result<Vec<T>, ValueError>
where
    T::Err: fmt::Display,
{
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<T>().map_err(|e| ValueError::Item {
                item: s.into(),
                reason: e.to_string(),
            })
        })
        .collect()
}

fn parse_ports(v: &str) -> Result<Vec<u16>, ValueError> {
    parse_list(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_injector_default() {
        let c = Capture::from_args(INJECTOR_DEFAULT_ARGS).unwrap();
        assert_eq!(c.proxy_port, 15001);
        assert_eq!(c.inbound_port, 15006);
        assert_eq!(c.proxy_uids, vec![1337]);
        assert_eq!(c.gids(), &[1337]);
        assert_eq!(c.include_outbound_cidrs, Ranges::All);
        assert!(c.exclude_outbound_cidrs.is_empty());
        assert_eq!(c.include_inbound_ports, Ports::All);
        assert_eq!(c.exclude_inbound_ports, vec![15090, 15021, 15020]);
    }

    #[test]
    fn accepts_istio_flag_spellings() {
        let c = Capture::from_args(
            "istio-iptables -p15002 --inbound-capture-port=15007 -u=1,2 -g 3 -i 10.0.0.0/8,fd00::/8, -x 10.1.0.0/16 -o 3306 -q 9000 -e 15009 -b 80,443",
        )
        .unwrap();
        assert_eq!(
            (c.proxy_port, c.inbound_port, c.tunnel_port),
            (15002, 15007, 15009)
        );
        assert_eq!(c.proxy_uids, vec![1, 2]);
        assert_eq!(c.gids(), &[3]);
        assert_eq!(
            c.include_outbound_cidrs,
            Ranges::List(vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/8".parse().unwrap()
            ])
        );
        assert_eq!(c.include_inbound_ports, Ports::List(vec![80, 443]));
        assert_eq!(c.exclude_outbound_ports, vec![3306]);
        assert_eq!(c.include_outbound_ports, vec![9000]);
    }

    #[test]
    fn refuses_what_it_does_not_implement() {
        assert_eq!(
            Capture::from_args("-m TPROXY").unwrap_err(),
            ArgsError::Mode("TPROXY".into())
        );
        assert_eq!(
            Capture::from_args("-k eth1").unwrap_err(),
            ArgsError::Interfaces {
                option: "-k".into(),
                value: "eth1".into()
            }
        );
        assert!(matches!(
            Capture::from_args("--istio-exclude-interfaces=eth1,"),
            Err(ArgsError::Interfaces { .. })
        ));
        for refused in [
            "-n",
            "--dry-run",
            "--drop-invalid",
            "--cni-mode",
            "--cleanup-only",
            "-t 1337",
            "-r 133",
            "--network-namespace=/x",
        ] {
            assert!(
                matches!(Capture::from_args(refused), Err(ArgsError::Unsupported(_))),
                "{refused}"
            );
        }
        assert_eq!(
            Capture::from_args("--drop-invalid=true").unwrap_err(),
            ArgsError::Unsupported("--drop-invalid".into())
        );
        assert!(matches!(
            Capture::from_args("-Z 1"),
            Err(ArgsError::Unknown(_))
        ));
        assert!(matches!(
            Capture::from_args("-i 10.0.0.1"),
            Err(ArgsError::Invalid { .. })
        ));
        assert!(matches!(
            Capture::from_args("-x '*'"),
            Err(ArgsError::Invalid { .. })
        ));
        assert!(matches!(
            Capture::from_args("-p"),
            Err(ArgsError::MissingValue(_))
        ));
    }

    /// istio-init's `args` as the injection template renders them, written by hand.
    #[test]
    fn real_istio_init_lines_parse() {
        let default = Capture::from_args(INJECTOR_DEFAULT_ARGS).unwrap();
        for line in [
            // 1.12, no annotations.
            "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020",
            // 1.12 with the kubevirtInterfaces annotation set empty; with Istio CNI
            // (istio-validation).
            "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020 -k ''",
            "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020 --run-validation --skip-rule-apply",
            // 1.20: the log level always, JSON logs when global.logAsJson; kubevirtInterfaces
            // and excludeInterfaces set empty.
            "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020 --log_output_level=default:info",
            "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020 -k '' -c '' --log_output_level=default:info --log_as_json",
            // 1.24 with global.proxy_init.forceApplyIptables; or with CNI.
            "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020 --log_output_level=default:info --force-apply",
            "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020 --log_output_level=default:info --log_as_json --run-validation --skip-rule-apply",
        ] {
            assert_eq!(Capture::from_args(line), Ok(default.clone()), "{line}");
        }
    }

    #[test]
    fn ignored_options_take_a_value_or_are_switches_as_in_istio() {
        let c = Capture::from_args(
            "--log_as_json -p 1 --log_output_level info -f --restore-format=false --iptables-probe-port 15002 \
             --probe-timeout=5s --output-paths /tmp/x --iptables-version 1.8 --iptables-trace-logging \
             --reconcile=true --log_target stdout --log_caller x --log_stacktrace_level none \
             --log_rotate /x --log_rotate_max_age 1 --log_rotate_max_size 1 --log_rotate_max_backups 1",
        )
        .unwrap();
        assert_eq!(c.proxy_port, 1);
        // A switch never takes the next word: `-p` after `--force-apply` is an option.
        assert_eq!(
            Capture::from_args("--force-apply -p 2").unwrap().proxy_port,
            2
        );
        assert!(matches!(
            Capture::from_args("--force-apply 2"),
            Err(ArgsError::Positional(_))
        ));
        assert_eq!(
            Capture::from_args("--skip-rule-apply=maybe")
                .unwrap_err()
                .to_string(),
            "invalid value \"maybe\" for --skip-rule-apply: not a boolean (true, false, 1, 0, t, f)"
        );
        assert!(matches!(
            Capture::from_args("--log_output_level"),
            Err(ArgsError::MissingValue(_))
        ));
        assert!(matches!(
            Capture::from_args("--log-output-level=info"),
            Err(ArgsError::Unknown(_))
        ));
    }

    #[test]
    fn ipv6_rules_follow_the_first_address_istio_init_sees_or_dual_stack() {
        let ips =
            |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|i| i.parse().unwrap()).collect() };
        let single = Capture::default();
        let dual = Capture::from_args("--dual-stack").unwrap();
        assert!(dual.dual_stack);
        assert!(!Capture::from_args("--dual-stack=false").unwrap().dual_stack);
        assert!(
            !Capture::from_args("--dual-stack --dual-stack=0")
                .unwrap()
                .dual_stack
        );
        // A switch: `-p 1` after it is an option, not its value.
        assert_eq!(
            Capture::from_args("--dual-stack -p 1").unwrap().proxy_port,
            1
        );
        assert!(matches!(
            Capture::from_args("--dual-stack=yes"),
            Err(ArgsError::Invalid { .. })
        ));
        for (list, without, with) in [
            (&["10.0.0.5"][..], false, false),
            (&["fd00::5"][..], true, true),
            // IPv4 first (the common dual-stack cluster) and IPv6 first: istio-init sees the
            // IPv4 address first either way.
            (&["10.0.0.5", "fd00::5"][..], false, true),
            (&["fd00::5", "10.0.0.5"][..], false, true),
            (&[][..], false, false),
        ] {
            assert_eq!(single.ipv6_rules(&ips(list)), without, "{list:?}");
            assert_eq!(dual.ipv6_rules(&ips(list)), with, "{list:?} dual-stack");
        }
    }

    /// istio-init's environment, as istio-iptables reads it: each option's UPPER_SNAKE
    /// variable and the older ProxyMetadata names, under the command line.
    #[test]
    fn istio_init_environment_sets_what_the_line_does_not() {
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let run =
            |args: &[&str], pairs: &[(&str, &str)]| Capture::from_istio_init(args, &env(pairs));
        let c = run(
            &["istio-iptables", "-p", "15001"],
            &[
                ("PROXY_GID", "5"),
                ("ISTIO_OUTBOUND_PORTS", "9000"),
                ("INBOUND_TUNNEL_PORT", "15009"),
            ],
        )
        .unwrap();
        assert_eq!(
            (c.gids(), &c.include_outbound_ports[..], c.tunnel_port),
            (&[5][..], &[9000][..], 15009)
        );
        // The line wins.
        assert_eq!(
            run(&["-g", "6"], &[("PROXY_GID", "5")]).unwrap().gids(),
            &[6]
        );
        assert!(
            run(
                &["--redirect-dns=false"],
                &[("ISTIO_META_DNS_CAPTURE", "true")]
            )
            .is_ok()
        );
        // The mesh's DNS capture, through the environment as the injector renders it.
        let dns = run(&[], &[("ISTIO_META_DNS_CAPTURE", "true")]).unwrap();
        assert!(dns.redirect_dns && !dns.capture_all_dns);
        let all = run(
            &["--redirect-dns"],
            &[
                ("CAPTURE_ALL_DNS", "true"),
                ("ISTIO_META_DNS_CAPTURE", "false"),
            ],
        )
        .unwrap();
        assert!(all.redirect_dns && all.capture_all_dns);
        // Not implemented, set through the environment: named.
        assert_eq!(
            run(&[], &[("INVALID_DROP", "true")])
                .unwrap_err()
                .to_string(),
            "INVALID_DROP=\"true\" in istio-init's environment: unsupported istio-iptables \
             option --drop-invalid: meshsteer does not implement it yet"
        );
        for var in ["INVALID_DROP", "DROP_INVALID", "DRY_RUN"] {
            assert!(
                matches!(run(&[], &[(var, "1")]), Err(ArgsError::Env { .. })),
                "{var}"
            );
            // Off, or not a Go boolean (pflag refuses it, istio-iptables ignores that): nothing.
            assert!(run(&[], &[(var, "false")]).is_ok(), "{var}");
            assert!(run(&[], &[(var, "yes")]).is_ok(), "{var}");
        }
        // The older name is read after the new one and wins.
        assert!(
            !run(
                &[],
                &[
                    ("REDIRECT_DNS", "true"),
                    ("ISTIO_META_DNS_CAPTURE", "false")
                ]
            )
            .unwrap()
            .redirect_dns
        );
        assert!(run(&[], &[("ISTIO_INBOUND_TPROXY_MARK", "1337")]).is_err());
        assert!(matches!(
            run(&[], &[("ISTIO_OUTBOUND_OWNER_GROUPS", "1000")]),
            Err(ArgsError::EnvOnly { .. })
        ));
        assert!(run(&[], &[("ISTIO_OUTBOUND_OWNER_GROUPS", "*")]).is_ok());
        // A value option's bad value fails as it would in istio-iptables.
        assert!(matches!(
            run(&[], &[("INBOUND_CAPTURE_PORT", "x")]),
            Err(ArgsError::Env { .. })
        ));
        // Variables istio-iptables does not read are nobody's business.
        assert_eq!(
            run(&[], &[("ISTIO_META_MESH_ID", "x")]),
            Ok(Capture::default())
        );
        assert!(reads_env("ISTIO_DUAL_STACK") && reads_env("PROXY_UID") && !reads_env("POD_NAME"));
    }

    #[test]
    fn empty_interface_lists_are_accepted() {
        for line in ["-k ''", "-c ''", "-k ,", "--kube-virt-interfaces=", "-c=''"] {
            assert_eq!(Capture::from_args(line), Ok(Capture::default()), "{line}");
        }
    }

    #[test]
    fn empty_args_are_istio_defaults() {
        assert_eq!(Capture::from_args("").unwrap(), Capture::default());
    }

    #[test]
    fn cidr_contains() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn invalid_values_say_which_option_value_and_why() {
        let text = |line: &str| Capture::from_args(line).unwrap_err().to_string();
        assert_eq!(
            text("-p x"),
            "invalid value \"x\" for -p: not a port: invalid digit found in string"
        );
        assert_eq!(
            text("-x '*'"),
            "invalid value \"*\" for -x: '*' cannot be excluded (istio refuses it too)"
        );
        assert_eq!(
            text("-i 10.0.0.1"),
            "invalid value \"10.0.0.1\" for -i: \"10.0.0.1\": expected ADDRESS/PREFIX-LENGTH"
        );
        assert_eq!(
            text("--istio-service-cidr=10.0.0.0/40"),
            "invalid value \"10.0.0.0/40\" for --istio-service-cidr: \"10.0.0.0/40\": prefix length 40 > 32"
        );
        assert_eq!(
            text("-i 10.0.0.0/x"),
            "invalid value \"10.0.0.0/x\" for -i: \"10.0.0.0/x\": bad prefix length \"x\""
        );
        assert_eq!(
            text("-i 10.0.0.300/8"),
            "invalid value \"10.0.0.300/8\" for -i: \"10.0.0.300/8\": invalid IP address syntax"
        );
        assert_eq!(
            "fd00::/129".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong { len: 129, max: 128 })
        );
    }
}
