//! `MS_PODS`: each enrolled pod's capture config.
use crate::Addr;

/// istio-iptables accepts comma lists for `-u`/`-g`; more than this is refused at enrolment.
pub const MAX_PROXY_IDS: usize = 4;

/// `MS_PODS` value, keyed by the pod-level cgroup id (`u64`, the cgroup directory's inode).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodConfig {
    /// Small id that scopes this pod's entries in the shared port/CIDR/address maps.
    pub pod_id: u32,
    /// [`pod_flags`].
    pub flags: u32,
    /// `-p`: outbound capture port (host byte order).
    pub proxy_port: u16,
    /// `-z`: inbound capture port.
    pub inbound_port: u16,
    /// `-e`: inbound tunnel port, never captured (HBONE, 15008).
    pub tunnel_port: u16,
    pub n_uids: u8,
    pub n_gids: u8,
    /// `-u`, in the order given (istio emits its owner rules per id, in order).
    pub uids: [u32; MAX_PROXY_IDS],
    /// `-g`.
    pub gids: [u32; MAX_PROXY_IDS],
    /// The pod's first address of each family (unspecified if none): the source routing picks
    /// for off-pod destinations, which a redirected socket is bound to so the proxy sees the
    /// same peer address as under iptables REDIRECT.
    pub primary_v4: Addr,
    pub primary_v6: Addr,
}
plain_data!(PodConfig);

/// Where istio-iptables' DNS rules send captured DNS: its agent's DNS proxy (fixed, not an
/// option: `IstioAgentDNSListenerPort`).
pub const DNS_PROXY_PORT: u16 = 15053;
/// The port DNS capture matches.
pub const DNS_PORT: u16 = 53;

pub mod pod_flags {
    /// `-i '*'`: every outbound IPv4 destination not excluded is captured.
    pub const OUT_INCLUDE_ALL_V4: u32 = 1 << 0;
    /// Same for IPv6.
    pub const OUT_INCLUDE_ALL_V6: u32 = 1 << 1;
    /// `-i` names a loopback range (127/8 or ::1, either family): istio then omits R10
    /// (`-o lo -m owner ! --uid-owner P -j RETURN`) for every id and both families.
    pub const OUT_INCLUDES_LOOPBACK: u32 = 1 << 2;
    /// `-b '*'`: all inbound ports captured except the `-d` set.
    pub const IN_ALL_PORTS: u32 = 1 << 4;
    /// Inbound capture is on at all (`-b` non-empty).
    pub const IN_CAPTURE: u32 = 1 << 5;
    /// IPv6 rules are installed (istio writes ip6tables rules only for pods with IPv6).
    pub const IPV6: u32 = 1 << 6;
    /// Which per-pod sets are non-empty: the datapath skips lookups in empty ones.
    pub const HAS_OUT_EXCLUDE_PORTS: u32 = 1 << 8;
    pub const HAS_OUT_INCLUDE_PORTS: u32 = 1 << 9;
    pub const HAS_CIDR_EXCLUDE: u32 = 1 << 10;
    pub const HAS_CIDR_INCLUDE: u32 = 1 << 11;
    pub const HAS_IN_EXCLUDE_PORTS: u32 = 1 << 12;
    pub const HAS_IN_INCLUDE_PORTS: u32 = 1 << 13;
    pub const HAS_LOCAL_ADDRS: u32 = 1 << 14;
    /// The pod has nameservers in `MS_DNS_SERVERS` (with [`DNS_CAPTURE`]).
    pub const HAS_DNS_SERVERS: u32 = 1 << 15;
    /// `--redirect-dns` in effect: TCP and UDP to port 53 of the pod's nameservers go to the
    /// proxy's DNS port. (istio-iptables drops the option when it has no nameserver and no
    /// `--capture-all-dns`: the agent then leaves this off.)
    pub const DNS_CAPTURE: u32 = 1 << 17;
    /// `--capture-all-dns` with `--redirect-dns`: port 53 of every destination, not only the
    /// pod's nameservers.
    pub const DNS_CAPTURE_ALL: u32 = 1 << 18;
    /// Socket-level acceleration: connections within the pod's network namespace skip the
    /// TCP/IP stack (sockops + sk_msg, see [`crate::maps::accel`]).
    pub const ACCELERATE: u32 = 1 << 16;
    /// The agent refused the pod (over its budget, an option meshsteer cannot apply, ...):
    /// it is enrolled *fail closed*, as a pod whose istio-init failed never runs. Its TCP
    /// connect()s fail with EPERM and connections steered to it are refused; it has no sets.
    /// (New in layout 2: entries of older agents never carry it.)
    pub const REFUSED: u32 = 1 << 20;
}
