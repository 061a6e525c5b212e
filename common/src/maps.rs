//! Map keys and values. Every struct is `#[repr(C)]` with explicit padding fields so its size
//! has no hidden holes: the kernel compares keys byte for byte.

use crate::Addr;

/// Bumped whenever a pinned map's key/value layout changes; pins live under a directory named
/// after it, so an agent never adopts maps it would misread.
/// 2: per-pod counters grew to 48 (socket-level acceleration).
pub const LAYOUT_VERSION: u32 = 2;

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
    pub const TRACE_CTL: &str = "MS_TRACE_CTL";
    pub const TRACE: &str = "MS_TRACE";
    pub const SOCKS: &str = "MS_SOCKS";
    pub const ACCEL_STATE: &str = "MS_ACCEL_STATE";
    pub const ACCEL_PENDING: &str = "MS_ACCEL_PENDING";
    pub const ACCEL_CFG: &str = "MS_ACCEL_CFG";

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
        TRACE_CTL,
        TRACE,
        SOCKS,
        ACCEL_STATE,
        ACCEL_PENDING,
        ACCEL_CFG,
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
    /// Accelerated sockets on the node (two per connection).
    pub const SOCKS: u32 = 64 * 1024;
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
    /// Socket-level acceleration: connections within the pod's network namespace skip the
    /// TCP/IP stack (sockops + sk_msg, see [`super::accel`]).
    pub const ACCELERATE: u32 = 1 << 16;
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
    /// A proxy's accepted socket that owns its connection's `MS_ORIG_DST` entry.
    pub const ORIG_OWNER: u32 = 1 << 3;
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
    /// 1 once the proxy's accepted socket owns the entry: it frees it at its close, so a
    /// proxy that accepts after the app has closed still learns the destination (conntrack
    /// keeps its entry that long too). Until then the app's socket frees it.
    pub claimed: u16,
    pub _pad: u32,
    /// The app's pod, for counting on the proxy's side.
    pub pod_cgroup: u64,
}

/// Per-pod counters (`MS_POD_STATS`, per-CPU, keyed by pod cgroup id) are indexed by this. The
/// first entries mirror [`Rule`](crate::rules::Rule) so "passed by reason" is one index per rule.
pub mod counter {
    use crate::rules::{InRule, Rule};

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
    /// Inbound decisions start here, one per [`InRule`].
    pub const INBOUND_BASE: usize = 20;
    pub const fn inbound(rule: InRule) -> usize {
        INBOUND_BASE + rule as usize
    }
    /// A connection to steer, but the pod's proxy has no inbound listener: refused, as
    /// iptables REDIRECT to a closed port is.
    pub const IN_NO_LISTENER: usize = 28;
    /// Socket-level acceleration (pods with `ACCELERATE`): sockets put into `MS_SOCKS`.
    pub const ACCEL_SOCKETS: usize = 32;
    /// Connections left on the normal path, by reason. `MS_SOCKS` was full.
    pub const ACCEL_MAP_FULL: usize = 33;
    /// The peer socket was not in `MS_SOCKS` at the first send (its side was not established
    /// yet, or is outside meshsteer's cgroup root).
    pub const ACCEL_NO_PEER: usize = 34;
    /// The peer held more unread redirected bytes than the limit: the rest of the connection
    /// takes the normal path, where TCP's own buffers push back on the writer.
    pub const ACCEL_BACKPRESSURE: usize = 35;
    /// A connection to another pod's address on this node: sockets in two network namespaces
    /// cannot be keyed without collisions, so it stays on the normal path.
    pub const ACCEL_CROSS_POD: usize = 36;
    /// The kernel lacks what bounding redirected bytes needs (see `MS_ACCEL_CFG`).
    pub const ACCEL_UNSUPPORTED: usize = 37;
    /// The socket half-closed while acceleration was on (see the README).
    pub const ACCEL_HALF_CLOSE: usize = 38;
    pub const COUNT: usize = 48;

    pub const NAMES: [(usize, &str); 12] = [
        (ORIG_DST_HIT, "orig_dst_hit"),
        (ORIG_DST_MISS, "orig_dst_miss"),
        (ORIG_DST_MAP_FULL, "orig_dst_map_full"),
        (ORIG_DST_EVICTED, "orig_dst_evicted"),
        (IN_NO_LISTENER, "inbound_no_listener"),
        (ACCEL_SOCKETS, "accel_sockets"),
        (ACCEL_MAP_FULL, "accel_map_full"),
        (ACCEL_NO_PEER, "accel_no_peer"),
        (ACCEL_BACKPRESSURE, "accel_backpressure"),
        (ACCEL_CROSS_POD, "accel_cross_pod"),
        (ACCEL_UNSUPPORTED, "accel_unsupported"),
        (ACCEL_HALF_CLOSE, "accel_half_close"),
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
    /// Trace events lost because the ring buffer was full (`meshsteer trace` too slow).
    pub const TRACE_DROPPED: u32 = 1;
    pub const COUNT: u32 = 4;
}

/// `meshsteer trace`: capture decisions streamed through the `MS_TRACE` ring buffer while a
/// trace holds the lease in `MS_TRACE_CTL`. With no lease, the datapath's only cost is one
/// array lookup per decision.
pub mod trace {
    use crate::Addr;

    /// Size of the `MS_TRACE` ring buffer (a power-of-2 multiple of the page size).
    pub const RING_BYTES: usize = 256 * 1024;
    /// How long a lease lasts unless renewed: a `meshsteer trace` that dies without releasing
    /// it stops costing the datapath anything within this time.
    pub const LEASE_NS: u64 = 3_000_000_000;

    /// `MS_TRACE_CTL[0]`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct TraceCtl {
        /// Events are emitted while `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) is below this;
        /// 0: tracing is off.
        pub deadline_ns: u64,
        /// The `meshsteer trace` process holding the lease.
        pub owner_pid: u32,
        pub _pad: u32,
    }

    /// [`TraceEvent::direction`].
    pub mod direction {
        pub const OUTBOUND: u8 = 0;
        pub const INBOUND: u8 = 1;
    }

    /// [`TraceEvent::action`]: where the connection landed.
    pub mod action {
        /// Untouched: it goes where it was going.
        pub const PASSED: u8 = 0;
        /// Outbound: connect() rewritten to the family's localhost at `landed_port`.
        pub const REDIRECTED: u8 = 1;
        /// Inbound: handed to the proxy's listener on `landed_port`.
        pub const STEERED: u8 = 2;
        /// Inbound: to be steered, but the proxy has no listener: refused with a RST.
        pub const REFUSED: u8 = 3;
    }

    /// One capture decision (`MS_TRACE` record).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct TraceEvent {
        /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
        pub ktime_ns: u64,
        /// The pod-level cgroup id.
        pub pod_cgroup: u64,
        /// Outbound: the socket's bound source (unspecified if none). Inbound: the peer.
        pub src: Addr,
        /// Outbound: the original destination. Inbound: the pod address it arrived at.
        pub dst: Addr,
        /// Outbound: the socket owner. Inbound: 0.
        pub uid: u32,
        pub gid: u32,
        /// Host byte order; `src_port` is 0 for outbound (not chosen yet at connect()).
        pub src_port: u16,
        pub dst_port: u16,
        /// The port it landed on ([`action`]), or 0 when refused.
        pub landed_port: u16,
        /// [`direction`].
        pub direction: u8,
        /// [`crate::rules::Rule`] or [`crate::rules::InRule`], as `u8`.
        pub rule: u8,
        /// [`action`].
        pub action: u8,
        pub _pad: [u8; 7],
    }
}

/// Socket-level acceleration: established sockets of a pod with [`pod_flags::ACCELERATE`] go
/// into the `MS_SOCKS` sockhash under a [`TupleKey`] (the socket's own view: local, remote),
/// and the sk_msg program hands each send to the peer found under the mirrored key.
pub mod accel {
    /// `MS_ACCEL_CFG[0]`: node-wide settings the agent writes at start.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct AccelConfig {
        /// [`cfg_flags`].
        pub flags: u32,
        /// Unread redirected bytes a peer may hold before its writer falls back to the normal
        /// path (where TCP's own buffers push back).
        pub max_backlog: u32,
        /// Kernel struct offsets, from the kernel's BTF: `struct sk_msg::sk_redir`,
        /// `struct sock::sk_user_data`, `struct sk_psock::msg_tot_len`. With them the sk_msg
        /// program reads how many redirected bytes the peer has not read yet.
        pub off_msg_sk_redir: u32,
        pub off_sock_user_data: u32,
        pub off_psock_msg_tot_len: u32,
        pub _pad: u32,
    }

    pub mod cfg_flags {
        /// The offsets are valid: the peer's backlog can be bounded, so sockets may be
        /// accelerated. Without it, no socket is.
        pub const CAPABLE: u32 = 1 << 0;
    }

    /// `MS_ACCEL_STATE`: socket-local storage of every socket put into `MS_SOCKS`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct AccelState {
        /// The pod charged for the socket's counters.
        pub pod_cgroup: u64,
        /// [`state_flags`].
        pub flags: u32,
        pub _pad: u32,
    }

    pub mod state_flags {
        /// At least one send was redirected to the peer.
        pub const REDIRECTED: u32 = 1 << 0;
        /// Sends take the normal path for the rest of the connection. One-way: once a byte
        /// went through TCP, a later redirected byte could overtake it in the peer's queue.
        pub const NORMAL_PATH: u32 = 1 << 1;
    }

    /// `sk_user_data` low bits (include/net/sock.h): the pointer is a psock when
    /// `SK_USER_DATA_PSOCK` is set; the mask strips the flags.
    pub const SK_USER_DATA_PSOCK: u64 = 1 << 2;
    pub const SK_USER_DATA_PTRMASK: u64 = !0b111;
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
        assert_eq!(size_of::<OrigDst>(), 32);
        assert_eq!(size_of::<ListenerKey>(), 16);
        assert_eq!(size_of::<trace::TraceCtl>(), 16);
        assert_eq!(size_of::<accel::AccelConfig>(), 6 * 4);
        assert_eq!(size_of::<accel::AccelState>(), 16);
        const { assert!(counter::ACCEL_HALF_CLOSE < counter::COUNT) };
        assert_eq!(
            size_of::<trace::TraceEvent>(),
            8 + 8 + 16 + 16 + 4 + 4 + 2 + 2 + 2 + 1 + 1 + 1 + 7
        );
        const { assert!(node_counter::TRACE_DROPPED < node_counter::COUNT) };
        assert!(counter::inbound(crate::rules::InRule::Captured) < counter::IN_NO_LISTENER);
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
