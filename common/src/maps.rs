//! Map keys and values. Every struct is `#[repr(C)]` with explicit padding fields so its size
//! has no hidden holes: the kernel compares keys byte for byte.

use crate::Addr;

/// Bumped whenever a pinned map's key/value layout changes; pins live under a directory named
/// after it, so an agent never adopts maps it would misread.
pub const LAYOUT_VERSION: u32 = 1;

/// istio-iptables accepts comma lists for `-u`/`-g`; more than this is refused at enrolment.
pub const MAX_PROXY_IDS: usize = 4;

/// Depth of the cgroup ancestor walk that maps a socket's cgroup to its pod
/// (kubepods.slice/kubepods-burstable.slice/…-pod<uid>.slice/cri-…scope is depth 4).
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// Names of the maps, pinned under `<bpffs-dir>/v<LAYOUT_VERSION>/maps/<NAME>`.
pub mod names {
    pub const PODS: &str = "MS_PODS";
    pub const PORTS: &str = "MS_PORTS";
    pub const CIDR_EXCLUDE: &str = "MS_CIDR_EXCLUDE";
    pub const CIDR_INCLUDE: &str = "MS_CIDR_INCLUDE";
    pub const LOCAL_ADDRS: &str = "MS_LOCAL_ADDRS";
    pub const SOCK_STATE: &str = "MS_SOCK_STATE";
    pub const ORIG_DST: &str = "MS_ORIG_DST";
    pub const POD_STATS: &str = "MS_POD_STATS";
    pub const NODE_STATS: &str = "MS_NODE_STATS";
    pub const INBOUND_ADDRS: &str = "MS_INBOUND_ADDRS";
    pub const LISTENERS: &str = "MS_LISTENERS";

    /// Every map the agent pins (and adopts on restart).
    pub const PINNED: &[&str] = &[
        PODS,
        PORTS,
        CIDR_EXCLUDE,
        CIDR_INCLUDE,
        LOCAL_ADDRS,
        SOCK_STATE,
        ORIG_DST,
        POD_STATS,
        NODE_STATS,
        INBOUND_ADDRS,
        LISTENERS,
    ];
}

/// Capacities. CIDR tries have no per-pod cap (unlike Merbridge's 20): a node's pods share them.
pub mod capacity {
    /// Pods on one node (Kubernetes' default max is 110; large nodes run a few hundred).
    pub const PODS: u32 = 4 * 1024;
    pub const PORTS: u32 = 64 * 1024;
    pub const CIDRS: u32 = 256 * 1024;
    pub const LOCAL_ADDRS: u32 = 64 * 1024;
    /// Live redirected connections on the node.
    pub const ORIG_DST: u32 = 128 * 1024;
}

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
}

/// Which port set a [`PortKey`] belongs to.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortSet {
    /// `-o`: outbound ports never captured.
    OutExclude = 1,
    /// `-q`: outbound ports always captured.
    OutInclude = 2,
    /// `-d`: inbound ports not captured when `-b '*'`.
    InExclude = 3,
    /// `-b` list: the only inbound ports captured.
    InInclude = 4,
}

/// `MS_PORTS` key (value: `u8` 1). Port in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub pod_id: u32,
    pub port: u16,
    pub set: u8,
    pub _pad: u8,
}

impl PortKey {
    pub const fn new(pod_id: u32, set: PortSet, port: u16) -> Self {
        Self {
            pod_id,
            port,
            set: set as u8,
            _pad: 0,
        }
    }
}

/// Data part of the LPM keys of `MS_CIDR_EXCLUDE` / `MS_CIDR_INCLUDE` (value: `u8` 1).
/// The pod id comes first, big-endian, so the prefix length is `32 + bits`: one trie serves
/// every pod and a lookup is O(address bits) whatever the number of CIDRs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CidrKey {
    pub pod_id_be: [u8; 4],
    pub addr: Addr,
}

impl CidrKey {
    /// Bits of the key that are the pod id.
    pub const POD_BITS: u32 = 32;

    pub const fn new(pod_id: u32, addr: Addr) -> Self {
        Self {
            pod_id_be: pod_id.to_be_bytes(),
            addr,
        }
    }

    /// LPM prefix length for a CIDR of `bits` on `addr`'s family (IPv4 is mapped: +96).
    pub const fn prefix_len(addr: &Addr, bits: u8) -> u32 {
        let family_bits = if addr.is_ipv4() { 96 } else { 0 };
        Self::POD_BITS + family_bits + bits as u32
    }

    /// Prefix length for an exact lookup of one address.
    pub const FULL: u32 = Self::POD_BITS + 128;
}

/// `MS_LOCAL_ADDRS` key (value: `u8` 1): addresses assigned inside the pod's network namespace
/// (besides loopback), i.e. destinations that iptables sees leaving through `-o lo`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalKey {
    pub pod_id: u32,
    pub addr: Addr,
}

/// `MS_LISTENERS` key: the proxy's inbound listener of a pod, per socket family. sk_lookup
/// finds the pod from the connection's local address (`MS_INBOUND_ADDRS`: address → pod
/// cgroup id), as it cannot ask for its network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerKey {
    pub pod_cgroup: u64,
    /// AF_INET or AF_INET6.
    pub family: u32,
    pub _pad: u32,
}

/// `MS_SOCK_STATE`: socket-local storage, created at socket creation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockState {
    /// Pod-level cgroup id of the socket's cgroup at creation (0: not in an enrolled pod then).
    pub pod_cgroup: u64,
    /// Owner as iptables' owner match sees it: the creator's uid/gid (primary group only).
    pub uid: u32,
    pub gid: u32,
    /// [`sock_flags`].
    pub flags: u32,
    /// Original destination port (network byte order), valid with `REDIRECTED`.
    pub orig_port_be: u16,
    pub _pad: u16,
    /// Original destination, valid with `REDIRECTED`.
    pub orig_addr: Addr,
}

pub mod sock_flags {
    /// uid/gid were recorded at creation (else: the socket predates the agent).
    pub const OWNER_KNOWN: u32 = 1 << 0;
    /// connect() was steered to the proxy; `orig_*` hold where it was going.
    pub const REDIRECTED: u32 = 1 << 1;
    /// The original destination was published in `MS_ORIG_DST`.
    pub const PUBLISHED: u32 = 1 << 2;
}

/// `MS_ORIG_DST` key: a redirected connection as the proxy's accepted socket sees it,
/// within one network namespace (the cookie keeps pods with equal tuples apart).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TupleKey {
    pub netns_cookie: u64,
    /// The proxy side (where the connection was redirected to).
    pub local: Addr,
    /// The application side.
    pub remote: Addr,
    /// Network byte order.
    pub local_port_be: u16,
    pub remote_port_be: u16,
    pub _pad: u32,
}

/// `MS_ORIG_DST` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrigDst {
    pub addr: Addr,
    pub port_be: u16,
    pub _pad: [u8; 6],
}

/// Per-pod counters (`MS_POD_STATS`, per-CPU, keyed by pod cgroup id) are indexed by this. The first
/// entries mirror [`crate::outbound::Rule`] so "passed by reason" is one index per rule.
pub mod counter {
    use crate::outbound::Rule;

    pub const fn outbound(rule: Rule) -> usize {
        rule as usize
    }
    /// A proxy's getsockopt(SO_ORIGINAL_DST) answered from our map.
    pub const ORIG_DST_HIT: usize = 16;
    /// Asked on a connection we did not redirect: answered as conntrack would (its own
    /// original destination), or the kernel's answer passed through.
    pub const ORIG_DST_MISS: usize = 17;
    /// A redirected connection's entry could not be stored (map full).
    pub const ORIG_DST_MAP_FULL: usize = 18;
    /// A live entry was gone at close (LRU eviction): its proxy may have asked in vain.
    pub const ORIG_DST_EVICTED: usize = 19;
    /// Inbound decisions start here, one per [`crate::inbound::InRule`].
    pub const INBOUND_BASE: usize = 20;
    pub const fn inbound(rule: crate::inbound::InRule) -> usize {
        INBOUND_BASE + rule as usize
    }
    /// A connection to steer, but the pod's proxy has no inbound listener: refused, as
    /// iptables REDIRECT to a closed port is.
    pub const IN_NO_LISTENER: usize = 28;
    pub const COUNT: usize = 32;

    pub const NAMES: [(usize, &str); 5] = [
        (ORIG_DST_HIT, "orig_dst_hit"),
        (ORIG_DST_MISS, "orig_dst_miss"),
        (ORIG_DST_MAP_FULL, "orig_dst_map_full"),
        (ORIG_DST_EVICTED, "orig_dst_evicted"),
        (IN_NO_LISTENER, "inbound_no_listener"),
    ];
}

/// `MS_POD_STATS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodCounters(pub [u64; counter::COUNT]);

impl Default for PodCounters {
    fn default() -> Self {
        Self([0; counter::COUNT])
    }
}

/// `MS_NODE_STATS` (per-CPU array) indices: events with no pod to charge.
pub mod node_counter {
    /// Sockets that connect from an enrolled pod but were created before the agent ran:
    /// their owner is taken from the connecting task instead of the creator.
    pub const OWNER_FROM_TASK: u32 = 0;
    pub const COUNT: u32 = 4;
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(
            size_of::<PodConfig>(),
            4 + 4 + 2 + 2 + 2 + 1 + 1 + 16 + 16 + 32
        );
        assert_eq!(size_of::<PortKey>(), 8);
        assert_eq!(size_of::<CidrKey>(), 20);
        assert_eq!(size_of::<LocalKey>(), 20);
        assert_eq!(size_of::<SockState>(), 8 + 4 + 4 + 4 + 2 + 2 + 16);
        assert_eq!(size_of::<TupleKey>(), 8 + 16 + 16 + 2 + 2 + 4);
        assert_eq!(size_of::<OrigDst>(), 24);
        assert_eq!(size_of::<ListenerKey>(), 16);
        assert!(counter::inbound(crate::inbound::InRule::Captured) < counter::IN_NO_LISTENER);
    }

    #[test]
    fn cidr_prefix_counts_pod_and_family_bits() {
        assert_eq!(
            CidrKey::prefix_len(&Addr::v4([10, 0, 0, 0]), 8),
            32 + 96 + 8
        );
        assert_eq!(CidrKey::prefix_len(&Addr::LOCALHOST_V6, 64), 32 + 64);
    }
}
