//! `MS_POD_STATS` and `MS_NODE_STATS`: counter indices and values.

/// Per-pod counters (`MS_POD_STATS`, per-CPU, keyed by pod cgroup id) are indexed by this. The
/// first entries mirror [`Rule`](crate::rules::Rule): "passed by reason" is one index per rule.
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
    /// A TCP connect() of a pod enrolled refused ([`pod_flags::REFUSED`]): failed with EPERM.
    ///
    /// [`pod_flags::REFUSED`]: crate::maps::pod_flags::REFUSED
    pub const REFUSED_CONNECT: usize = 29;
    /// A connection arriving at a refused pod's address: refused with a RST.
    pub const REFUSED_INBOUND: usize = 30;
    /// A redirected connect() failed (EPERM): the pod holds its whole budget of live
    /// original destinations (`MS_POD_LIVE`).
    pub const ORIG_DST_OVER_BUDGET: usize = 31;
    /// The proxy asked SO_ORIGINAL_DST on a connection redirected to it whose entry is not
    /// there (it could not be stored): answered ENOENT, as conntrack answers a miss.
    pub const ORIG_DST_NOT_FOUND: usize = 39;
    /// A socket that is not the proxy's listened on the inbound port: not registered.
    pub const IN_LISTENER_REFUSED: usize = 40;
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

    pub const NAMES: [(usize, &str); 17] = [
        (ORIG_DST_HIT, "orig_dst_hit"),
        (ORIG_DST_MISS, "orig_dst_miss"),
        (ORIG_DST_MAP_FULL, "orig_dst_map_full"),
        (ORIG_DST_EVICTED, "orig_dst_evicted"),
        (IN_NO_LISTENER, "inbound_no_listener"),
        (IN_LISTENER_REFUSED, "inbound_listener_refused"),
        (REFUSED_CONNECT, "refused_connect"),
        (REFUSED_INBOUND, "refused_inbound"),
        (ORIG_DST_OVER_BUDGET, "orig_dst_over_budget"),
        (ORIG_DST_NOT_FOUND, "orig_dst_not_found"),
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
plain_data!(PodCounters);

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
