//! Which istio-iptables rule decided a connection: the outcome of [`crate::outbound::decide`]
//! and [`crate::inbound::decide`], and the index of the per-rule counters and trace records.
//! A leaf module, so the map layouts can name the rules without depending on the decisions.

/// Which ISTIO_OUTPUT rule decided, in chain order.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// IPv6 traffic of a pod without IPv6 rules (istio writes ip6tables rules only for
    /// pods with an IPv6 address).
    NoIpv6Rules = 0,
    /// `-o`: `-p tcp --dport P -j RETURN`, first in the chain.
    ExcludedPort = 1,
    /// R8: `-o lo -s 127.0.0.6/32 -j RETURN` (Envoy's inbound passthrough to the app).
    Passthrough = 2,
    /// R9: `-o lo ! -d 127.0.0.1/32 -p tcp ! --dport <-e> -m owner --uid-owner|--gid-owner P
    /// -j ISTIO_IN_REDIRECT`: the proxy calling its own pod goes through inbound.
    ProxyToLocal = 3,
    /// R10: `-o lo -m owner ! --uid-owner|--gid-owner P -j RETURN`: the app calling itself.
    AppToLocal = 4,
    /// R11: `-m owner --uid-owner|--gid-owner P -j RETURN`: the proxy's own traffic.
    ProxyOwner = 5,
    /// R12: `-d 127.0.0.1/32 -j RETURN`.
    Localhost = 6,
    /// `-x`: `-d CIDR -j RETURN`.
    ExcludedCidr = 7,
    /// `-q`: `-p tcp --dport P -j ISTIO_REDIRECT`.
    IncludedPort = 8,
    /// `-i`: `-j ISTIO_REDIRECT`, or `-d CIDR -j ISTIO_REDIRECT` per CIDR.
    IncludedCidr = 9,
    /// Fell off the end of ISTIO_OUTPUT (an `-i` list that does not cover the destination).
    NotIncluded = 10,
    /// DNS capture (`--redirect-dns`): `ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS`, there
    /// `-p tcp|udp --dport 53 [-d <nameserver>] -j REDIRECT --to-ports 15053`.
    DnsRedirect = 11,
    /// UDP that no DNS rule redirects: it passes ISTIO_OUTPUT's TCP-only redirects (and, with
    /// DNS capture off, is never redirected at all).
    UdpNotRedirected = 12,
}

impl Rule {
    pub const ALL: [Rule; 13] = [
        Rule::NoIpv6Rules,
        Rule::ExcludedPort,
        Rule::Passthrough,
        Rule::ProxyToLocal,
        Rule::AppToLocal,
        Rule::ProxyOwner,
        Rule::Localhost,
        Rule::ExcludedCidr,
        Rule::IncludedPort,
        Rule::IncludedCidr,
        Rule::NotIncluded,
        Rule::DnsRedirect,
        Rule::UdpNotRedirected,
    ];

    /// The rule `v` stands for (`Rule as u8`, e.g. from a trace event).
    pub const fn from_u8(v: u8) -> Option<Self> {
        if (v as usize) < Self::ALL.len() {
            Some(Self::ALL[v as usize])
        } else {
            None
        }
    }

    /// Whether [`crate::outbound::decide`] redirects the connections this rule matches (to the
    /// proxy's outbound port, or R9's inbound port).
    pub const fn redirects(self) -> bool {
        matches!(
            self,
            Rule::ProxyToLocal | Rule::IncludedPort | Rule::IncludedCidr | Rule::DnsRedirect
        )
    }

    /// Stable short name (metrics labels, `status --json`).
    pub const fn name(self) -> &'static str {
        match self {
            Rule::NoIpv6Rules => "no_ipv6_rules",
            Rule::ExcludedPort => "excluded_port",
            Rule::Passthrough => "passthrough_source",
            Rule::ProxyToLocal => "proxy_to_local",
            Rule::AppToLocal => "app_to_local",
            Rule::ProxyOwner => "proxy_owner",
            Rule::Localhost => "localhost",
            Rule::ExcludedCidr => "excluded_cidr",
            Rule::IncludedPort => "included_port",
            Rule::IncludedCidr => "included_cidr",
            Rule::NotIncluded => "not_included",
            Rule::DnsRedirect => "dns_redirect",
            Rule::UdpNotRedirected => "udp_not_redirected",
        }
    }

    /// The istio-iptables rule this stands for, for `explain`.
    pub const fn describe(self) -> &'static str {
        match self {
            Rule::NoIpv6Rules => {
                "IPv6 destination, but the pod has no IPv6 address: no ip6tables rules"
            }
            Rule::ExcludedPort => "-o excluded outbound port: -p tcp --dport P -j RETURN",
            Rule::Passthrough => "R8: -o lo -s 127.0.0.6/32 -j RETURN (inbound passthrough source)",
            Rule::ProxyToLocal => {
                "R9: -o lo ! -d 127.0.0.1/32 -p tcp ! --dport <tunnel> -m owner --uid-owner/--gid-owner <proxy> -j ISTIO_IN_REDIRECT"
            }
            Rule::AppToLocal => "R10: -o lo -m owner ! --uid-owner/--gid-owner <proxy> -j RETURN",
            Rule::ProxyOwner => "R11: -m owner --uid-owner/--gid-owner <proxy> -j RETURN",
            Rule::Localhost => "R12: -d 127.0.0.1/32 -j RETURN",
            Rule::ExcludedCidr => "-x excluded CIDR: -d CIDR -j RETURN",
            Rule::IncludedPort => "-q included outbound port: -p tcp --dport P -j ISTIO_REDIRECT",
            Rule::IncludedCidr => "-i included range: -j ISTIO_REDIRECT",
            Rule::NotIncluded => "end of ISTIO_OUTPUT: destination not in -i",
            Rule::DnsRedirect => {
                "--redirect-dns: ISTIO_OUTPUT_DNS -p tcp|udp --dport 53 [-d <nameserver>] -j REDIRECT --to-ports 15053"
            }
            Rule::UdpNotRedirected => {
                "UDP: no DNS rule redirects it, and ISTIO_REDIRECT only matches TCP"
            }
        }
    }
}

/// Which ISTIO_INBOUND rule decided, in chain order.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InRule {
    /// `-b ""`: istio installs no PREROUTING jump at all.
    NotCaptured = 0,
    /// IPv6 arrival at a pod without IPv6 rules.
    NoIpv6Rules = 1,
    /// Made inside the pod (from loopback, `::6` or a pod address): PREROUTING never sees it.
    FromPod = 2,
    /// `-p tcp --dport <-e> -j RETURN`, first in ISTIO_INBOUND.
    TunnelPort = 3,
    /// Already addressed to the inbound capture port: REDIRECT to itself, nothing to steer.
    InboundPort = 4,
    /// `-b '*'` with `-d P`: `-p tcp --dport P -j RETURN`.
    ExcludedPort = 5,
    /// `-b` list not naming the port: falls off ISTIO_INBOUND.
    NotListed = 6,
    /// `-p tcp -j ISTIO_IN_REDIRECT` (or the `-b` list's rule): to the inbound port.
    Captured = 7,
}

impl InRule {
    pub const ALL: [InRule; 8] = [
        InRule::NotCaptured,
        InRule::NoIpv6Rules,
        InRule::FromPod,
        InRule::TunnelPort,
        InRule::InboundPort,
        InRule::ExcludedPort,
        InRule::NotListed,
        InRule::Captured,
    ];

    /// The rule `v` stands for (`InRule as u8`, e.g. from a trace event).
    pub const fn from_u8(v: u8) -> Option<Self> {
        if (v as usize) < Self::ALL.len() {
            Some(Self::ALL[v as usize])
        } else {
            None
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            InRule::NotCaptured => "not_captured",
            InRule::NoIpv6Rules => "no_ipv6_rules",
            InRule::FromPod => "from_pod",
            InRule::TunnelPort => "tunnel_port",
            InRule::InboundPort => "inbound_port",
            InRule::ExcludedPort => "excluded_port",
            InRule::NotListed => "not_listed",
            InRule::Captured => "captured",
        }
    }

    pub const fn describe(self) -> &'static str {
        match self {
            InRule::NotCaptured => "-b \"\": no PREROUTING -j ISTIO_INBOUND rule",
            InRule::NoIpv6Rules => "IPv6, but the pod has no IPv6 address: no ip6tables rules",
            InRule::FromPod => "locally generated: PREROUTING does not see it",
            InRule::TunnelPort => "ISTIO_INBOUND -p tcp --dport <tunnel> -j RETURN",
            InRule::InboundPort => "addressed to the inbound capture port itself",
            InRule::ExcludedPort => {
                "-d excluded inbound port: ISTIO_INBOUND -p tcp --dport P -j RETURN"
            }
            InRule::NotListed => "-b list without this port: end of ISTIO_INBOUND",
            InRule::Captured => {
                "ISTIO_INBOUND -> ISTIO_IN_REDIRECT -j REDIRECT --to-ports <inbound>"
            }
        }
    }

    pub const fn steers(self) -> bool {
        matches!(self, InRule::Captured)
    }
}

#[cfg(test)]
mod tests {
    use core::fmt::Debug;

    use super::*;

    /// `ALL` lists the rules in discriminant order, and `from_u8` inverts `as u8`.
    fn assert_round_trip<R: Copy + PartialEq + Debug>(
        all: &[R],
        to: fn(R) -> u8,
        from: fn(u8) -> Option<R>,
    ) {
        for (i, r) in all.iter().enumerate() {
            assert_eq!(usize::from(to(*r)), i);
            assert_eq!(from(to(*r)), Some(*r));
        }
        assert_eq!(from(all.len() as u8), None);
    }

    #[test]
    fn rules_round_trip_through_u8() {
        assert_round_trip(&Rule::ALL, |r| r as u8, Rule::from_u8);
        assert_round_trip(&InRule::ALL, |r| r as u8, InRule::from_u8);
    }
}
