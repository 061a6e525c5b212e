//! Names of the maps, pinned under `<bpffs-dir>/v<LAYOUT_VERSION>/maps/<NAME>`.

pub const PODS: &str = "MS_PODS";
pub const PORTS: &str = "MS_PORTS";
pub const CIDR_EXCLUDE: &str = "MS_CIDR_EXCLUDE";
pub const CIDR_INCLUDE: &str = "MS_CIDR_INCLUDE";
pub const LOCAL_ADDRS: &str = "MS_LOCAL_ADDRS";
pub const SOCK_STATE: &str = "MS_SOCK_STATE";
pub const ORIG_DST: &str = "MS_ORIG_DST";
/// Layout 2's `MS_ORIG_DST` (an LRU map), adopted by an upgrade and read until its
/// connections are gone; on a node that never ran layout 2, an empty one-entry map.
pub const ORIG_DST_V2: &str = "MS_ORIG_DST_V2";
pub const POD_LIVE: &str = "MS_POD_LIVE";
pub const POD_STATS: &str = "MS_POD_STATS";
pub const NODE_STATS: &str = "MS_NODE_STATS";
/// Layout 3's address → pod map for sk_lookup, which layout 4 no longer has.
pub const INBOUND_ADDRS_V3: &str = "MS_INBOUND_ADDRS";
pub const POD_NETNS: &str = "MS_POD_NETNS";
pub const SK_LOOKUP_PODS: &str = "MS_SK_LOOKUP_PODS";
/// The slot a pod's sk_lookup trampoline hands to the shared program (per CPU, one entry).
pub const SK_LOOKUP_SLOT: &str = "MS_SK_LOOKUP_SLOT";
/// The shared sk_lookup program, which every pod's trampoline tail-calls (index 0).
pub const SK_LOOKUP_PROG: &str = "MS_SK_LOOKUP_PROG";
pub const LISTENERS: &str = "MS_LISTENERS";
pub const TRACE_CTL: &str = "MS_TRACE_CTL";
pub const TRACE: &str = "MS_TRACE";
pub const SOCKS: &str = "MS_SOCKS";
pub const ACCEL_STATE: &str = "MS_ACCEL_STATE";
pub const ACCEL_PENDING: &str = "MS_ACCEL_PENDING";
/// How many `MS_ACCEL_PENDING` entries there may be: accepts skip the lookup while it is 0.
pub const ACCEL_PENDING_COUNT: &str = "MS_ACCEL_PENDING_COUNT";
pub const ACCEL_CFG: &str = "MS_ACCEL_CFG";
pub const DNS_SERVERS: &str = "MS_DNS_SERVERS";
pub const DNS_SOCK: &str = "MS_DNS_SOCK";

/// Every map the agent pins (and adopts on restart).
pub const PINNED: &[&str] = &[
    PODS,
    PORTS,
    CIDR_EXCLUDE,
    CIDR_INCLUDE,
    LOCAL_ADDRS,
    SOCK_STATE,
    ORIG_DST,
    ORIG_DST_V2,
    POD_LIVE,
    POD_STATS,
    NODE_STATS,
    POD_NETNS,
    SK_LOOKUP_PODS,
    SK_LOOKUP_SLOT,
    SK_LOOKUP_PROG,
    LISTENERS,
    TRACE_CTL,
    TRACE,
    SOCKS,
    ACCEL_STATE,
    ACCEL_PENDING,
    ACCEL_PENDING_COUNT,
    ACCEL_CFG,
    DNS_SERVERS,
    DNS_SOCK,
];
