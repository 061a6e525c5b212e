//! The nameservers of a resolv.conf, as istio-iptables takes them for `--redirect-dns`: every
//! `nameserver` line whose address parses (Go's `net.ParseIP`: an address with a `%zone`
//! suffix does not, and is left out there too), in file order, without repeats. Also which
//! source a pod's nameservers came from, and the nameservers Kubernetes gives a pod by its
//! `dnsPolicy` (docs/dns.md says which source wins).
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Most nameservers one pod may have captured (`MS_DNS_SERVERS` is sized by it). Kubernetes
/// allows three; a longer list is an operator's mistake, refused by name rather than cut.
pub const MAX_NAMESERVERS: usize = meshsteer_common::maps::capacity::NAMESERVERS_PER_POD as usize;

/// The nameservers `text` lists.
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok())
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// Where a pod's nameservers came from, most trusted first. New sources are new variants:
/// readers of the status file must accept values they do not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NameserversFrom {
    /// The spec's `nameservers` list.
    Spec,
    /// The file the spec's `resolvConf` names, on the agent's filesystem.
    ResolvConf,
    /// The pod's own `/etc/resolv.conf`, read through one of its processes.
    Pod,
    /// The pod's `dnsPolicy` and `dnsConfig`, as the kubelet writes its resolv.conf.
    Kubernetes,
}

impl NameserversFrom {
    /// Whether the pod's nameservers may change without its spec changing (its processes
    /// came or went): those are read again when the pod's source reports it.
    pub fn may_change(self) -> bool {
        matches!(self, Self::Pod | Self::Kubernetes)
    }
}

/// A pod's `spec.dnsPolicy` (the API server defaults it to `ClusterFirst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsPolicy {
    /// `ClusterFirst`, or `ClusterFirstWithHostNet` on a pod not on the host's network.
    ClusterFirst,
    /// `Default`: the node's resolv.conf.
    Default,
    /// `None`: `dnsConfig.nameservers` only.
    None,
}

impl DnsPolicy {
    /// The policy the kubelet applies for `policy` (a pod on the host's network is never
    /// meshsteer's). An unknown value is refused by the API server; read as it is defaulted.
    pub fn of(policy: Option<&str>) -> Self {
        match policy {
            Some("Default") => Self::Default,
            Some("None") => Self::None,
            _ => Self::ClusterFirst,
        }
    }
}

/// Most nameservers the kubelet writes into a pod's resolv.conf (it drops the rest, with an
/// event).
pub const KUBELET_MAX_NAMESERVERS: usize = 3;

/// The nameservers the kubelet writes into a pod's resolv.conf: by `policy`, the cluster DNS
/// service (`cluster`) or the node's (`node`, its resolv.conf's), then `extra`
/// (`dnsConfig.nameservers`) appended without repeats, the first three kept. `Err` says what
/// is missing to know them.
pub fn kube_nameservers(
    policy: DnsPolicy,
    cluster: Result<&[IpAddr], &str>,
    node: impl FnOnce() -> Result<Vec<IpAddr>, String>,
    extra: &[IpAddr],
) -> Result<Vec<IpAddr>, String> {
    let mut out = match policy {
        DnsPolicy::None => vec![],
        DnsPolicy::Default => node()?,
        DnsPolicy::ClusterFirst => match cluster {
            Ok(ips) if !ips.is_empty() => ips.to_vec(),
            Ok(_) => return Err("the cluster DNS service has no address".into()),
            Err(why) => return Err(format!("the cluster DNS service is not known: {why}")),
        },
    };
    for ip in extra {
        if !out.contains(ip) {
            out.push(*ip);
        }
    }
    out.truncate(KUBELET_MAX_NAMESERVERS);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_nameserver_lines_only() {
        let text = "# generated\nsearch default.svc.cluster.local svc.cluster.local\n\
                    nameserver 10.96.0.10\nnameserver  fd00::a \n;nameserver 10.0.0.9\n\
                    nameserver fe80::1%eth0\nnameserver 10.96.0.10\noptions ndots:5\n\
                    nameserver\nnameserver bogus\n";
        assert_eq!(
            nameservers(text),
            vec![
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00::a".parse().unwrap()
            ]
        );
        assert!(nameservers("").is_empty());
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|i| i.parse().unwrap()).collect()
    }

    #[test]
    fn kubernetes_policies_give_the_kubelets_nameservers() {
        let cluster = ips(&["10.96.0.10"]);
        let node = || Ok(ips(&["192.168.1.1", "192.168.1.2"]));
        let extra = ips(&["10.0.0.53", "10.96.0.10"]);
        let of = |policy, extra: &[IpAddr]| {
            kube_nameservers(DnsPolicy::of(policy), Ok(&cluster), node, extra)
        };
        assert_eq!(of(None, &[]), Ok(cluster.clone()));
        assert_eq!(
            of(Some("ClusterFirstWithHostNet"), &[]),
            Ok(cluster.clone())
        );
        // dnsConfig.nameservers are appended without repeats.
        assert_eq!(
            of(Some("ClusterFirst"), &extra),
            Ok(ips(&["10.96.0.10", "10.0.0.53"]))
        );
        assert_eq!(of(Some("None"), &extra), Ok(extra.clone()));
        // At most three, as the kubelet writes them.
        assert_eq!(
            of(Some("Default"), &extra),
            Ok(ips(&["192.168.1.1", "192.168.1.2", "10.0.0.53"]))
        );
        let e = kube_nameservers(DnsPolicy::ClusterFirst, Err("no kube-dns"), node, &[]);
        assert_eq!(
            e,
            Err("the cluster DNS service is not known: no kube-dns".into())
        );
        let e = kube_nameservers(DnsPolicy::Default, Ok(&cluster), || Err("x".into()), &[]);
        assert_eq!(e, Err("x".into()));
        // `None` needs neither.
        assert_eq!(
            kube_nameservers(DnsPolicy::None, Err("-"), || Err("-".into()), &extra),
            Ok(extra)
        );
    }
}
