//! The inbound capture decision: Istio's `PREROUTING -p tcp -j ISTIO_INBOUND` chain for a TCP
//! connection arriving at a pod. As with [`crate::outbound`], `sk_lookup` and
//! `meshsteer explain` run this one function.
use crate::{
    Addr,
    maps::{PodConfig, PortSet, pod_flags},
    outbound::PodTables,
};

/// Which rule decided, in chain order.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InRule {
    /// `-b ""`: istio installs no PREROUTING jump at all.
    NotCaptured = 0,
    /// IPv6 arrival at a pod without IPv6 rules.
    NoIpv6Rules = 1,
    /// Sent from inside the pod (loopback or a pod address): PREROUTING never sees it.
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

/// ISTIO_INBOUND for a TCP connection from `remote` to the pod's port `local_port`.
#[inline(always)]
pub fn decide<T: PodTables>(cfg: &PodConfig, t: &T, remote: &Addr, local_port: u16) -> InRule {
    if cfg.flags & pod_flags::IN_CAPTURE == 0 {
        return InRule::NotCaptured;
    }
    if !remote.is_ipv4() && cfg.flags & pod_flags::IPV6 == 0 {
        return InRule::NoIpv6Rules;
    }
    if remote.is_loopback() || t.is_pod_address(remote) {
        return InRule::FromPod;
    }
    if local_port == cfg.tunnel_port {
        return InRule::TunnelPort;
    }
    if local_port == cfg.inbound_port {
        return InRule::InboundPort;
    }
    if cfg.flags & pod_flags::IN_ALL_PORTS != 0 {
        if t.port_in(PortSet::InExclude, local_port) {
            return InRule::ExcludedPort;
        }
        return InRule::Captured;
    }
    if t.port_in(PortSet::InInclude, local_port) {
        InRule::Captured
    } else {
        InRule::NotListed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct T;
    const POD: Addr = Addr::v4([10, 0, 0, 5]);
    impl PodTables for T {
        fn port_in(&self, set: PortSet, port: u16) -> bool {
            matches!(
                (set, port),
                (PortSet::InExclude, 15090) | (PortSet::InInclude, 8080)
            )
        }
        fn cidr_excluded(&self, _: &Addr) -> bool {
            false
        }
        fn cidr_included(&self, _: &Addr) -> bool {
            false
        }
        fn is_pod_address(&self, a: &Addr) -> bool {
            *a == POD
        }
    }

    fn cfg(flags: u32) -> PodConfig {
        PodConfig {
            flags,
            inbound_port: 15006,
            tunnel_port: 15008,
            ..Default::default()
        }
    }

    #[test]
    fn rules_round_trip_through_u8() {
        for (i, r) in InRule::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(InRule::from_u8(*r as u8), Some(*r));
        }
        assert_eq!(InRule::from_u8(InRule::ALL.len() as u8), None);
    }

    #[test]
    fn istio_inbound_chain() {
        let all = cfg(pod_flags::IN_CAPTURE | pod_flags::IN_ALL_PORTS);
        let peer = Addr::v4([10, 0, 0, 9]);
        assert_eq!(decide(&all, &T, &peer, 80), InRule::Captured);
        assert_eq!(decide(&all, &T, &peer, 15090), InRule::ExcludedPort);
        assert_eq!(decide(&all, &T, &peer, 15008), InRule::TunnelPort);
        assert_eq!(decide(&all, &T, &peer, 15006), InRule::InboundPort);
        assert_eq!(decide(&all, &T, &POD, 80), InRule::FromPod);
        assert_eq!(decide(&all, &T, &Addr::PASSTHROUGH_V4, 80), InRule::FromPod);
        assert_eq!(
            decide(&all, &T, &Addr::LOCALHOST_V6, 80),
            InRule::NoIpv6Rules
        );
        let list = cfg(pod_flags::IN_CAPTURE);
        assert_eq!(decide(&list, &T, &peer, 8080), InRule::Captured);
        assert_eq!(decide(&list, &T, &peer, 80), InRule::NotListed);
        assert_eq!(decide(&cfg(0), &T, &peer, 80), InRule::NotCaptured);
    }
}
