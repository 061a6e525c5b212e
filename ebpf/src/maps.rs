//! Every map of the object. Names are the pin names the agent uses (`common::maps::names`).
use aya_ebpf::{
    btf_maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf,
        SkStorage, SockHash,
    },
    macros::btf_map,
};
use meshsteer_common::maps::{
    CidrKey, DnsServerKey, DnsSock, ListenerKey, LocalKey, OrigDst, PodConfig, PodCounters,
    PodLive, PortKey, SockState, TupleKey,
    accel::{AccelConfig, AccelState},
    capacity, node_counter,
    trace::{self, TraceCtl, TraceEvent},
};

const NO_PREALLOC: usize = aya_ebpf::bindings::BPF_F_NO_PREALLOC as usize;

/// Pod-level cgroup id → the pod's capture config.
#[btf_map(name = "MS_PODS")]
pub static PODS: HashMap<u64, PodConfig, { capacity::PODS as usize }> = HashMap::new();

/// (pod, set, port) → 1.
#[btf_map(name = "MS_PORTS")]
pub static PORTS: HashMap<PortKey, u8, { capacity::PORTS as usize }> = HashMap::new();

/// (pod, CIDR) → 1, for `-x` and for `-i` lists. Two tries, because istio checks all
/// exclusions before any inclusion: a longest match across both sets would differ.
#[btf_map(name = "MS_CIDR_EXCLUDE")]
pub static CIDR_EXCLUDE: LpmTrie<CidrKey, u8, { capacity::CIDRS as usize }> = LpmTrie::new();
#[btf_map(name = "MS_CIDR_INCLUDE")]
pub static CIDR_INCLUDE: LpmTrie<CidrKey, u8, { capacity::CIDRS as usize }> = LpmTrie::new();

/// (pod, address) → 1: the pod's own addresses, reached through `lo`.
#[btf_map(name = "MS_LOCAL_ADDRS")]
pub static LOCAL_ADDRS: HashMap<LocalKey, u8, { capacity::LOCAL_ADDRS as usize }> = HashMap::new();

/// (pod, nameserver) → 1: where `--redirect-dns` captures DNS (the pod's resolv.conf).
#[btf_map(name = "MS_DNS_SERVERS")]
pub static DNS_SERVERS: HashMap<DnsServerKey, u8, { capacity::DNS_SERVERS as usize }> =
    HashMap::new();

/// A UDP socket whose DNS went to the proxy: the servers its app must see replies from.
#[btf_map(name = "MS_DNS_SOCK")]
pub static DNS_SOCK: SkStorage<DnsSock> = SkStorage::new();

/// Per-socket state, freed with the socket.
#[btf_map(name = "MS_SOCK_STATE")]
pub static SOCK_STATE: SkStorage<SockState> = SkStorage::new();

/// Redirected connection (as the proxy's accepted socket sees it) → original destination.
/// A plain hash map: an entry lives exactly as long as its connection (freed at close, see
/// `orig_dst.rs`), and each pod holds at most its budget of them (`MS_POD_LIVE`), so no pod's
/// connections can push out another's. Preallocated: an insert within the budgets never fails.
#[btf_map(name = "MS_ORIG_DST")]
pub static ORIG_DST: HashMap<TupleKey, OrigDst, { capacity::ORIG_DST as usize }> = HashMap::new();

/// Layout 2's LRU `MS_ORIG_DST`, adopted by an upgrade: connections redirected before it are
/// looked up and freed here until none is left. One entry on a node that never ran layout 2
/// (the loader reuses the pinned map whatever its size).
#[btf_map(name = "MS_ORIG_DST_V2")]
pub static ORIG_DST_V2: LruHashMap<TupleKey, OrigDst, 1> = LruHashMap::new();

/// Pod-level cgroup id → its live `MS_ORIG_DST` entries and their budget ([`PodLive`]),
/// written by the agent at enrolment and counted here with atomic adds.
#[btf_map(name = "MS_POD_LIVE")]
pub static POD_LIVE: HashMap<u64, PodLive, { capacity::PODS as usize }> = HashMap::new();

/// Pod-level cgroup id → counters (stable across config changes). Not preallocated:
/// per-CPU values for every possible pod add up.
#[btf_map(name = "MS_POD_STATS")]
pub static POD_STATS: PerCpuHashMap<u64, PodCounters, { capacity::PODS as usize }, NO_PREALLOC> =
    PerCpuHashMap::new();

/// Node-wide counters (`common::maps::node_counter`).
#[btf_map(name = "MS_NODE_STATS")]
pub static NODE_STATS: PerCpuArray<u64, { node_counter::COUNT as usize }> = PerCpuArray::new();

/// Pod-level cgroup id → the inode number of the pod's network namespace, written by the agent
/// when it attaches the pod's sk_lookup: only a listener made there may take the pod's
/// inbound connections.
#[btf_map(name = "MS_POD_NETNS")]
pub static POD_NETNS: HashMap<u64, u64, { capacity::PODS as usize }> = HashMap::new();

/// sk_lookup slot → the pod cgroup id its copy serves (0: none, it passes everything).
#[btf_map(name = "MS_SK_LOOKUP_PODS")]
pub static SK_LOOKUP_PODS: Array<u64, { capacity::SK_LOOKUP_SLOTS as usize }> = Array::new();

/// The slot of the pod whose sk_lookup trampoline is running on this CPU: written by the
/// trampoline just before its tail call into `MS_SK_LOOKUP_PROG`, read first thing by
/// `ms_sk_lookup`. Per CPU and never torn: sk_lookup runs with bottom halves off, so nothing
/// else on the CPU runs a trampoline between the write and the read.
#[btf_map(name = "MS_SK_LOOKUP_SLOT")]
pub static SK_LOOKUP_SLOT: PerCpuArray<u32, 1> = PerCpuArray::new();

/// Index 0: `ms_sk_lookup`, set by the agent at load (an atomic swap for every pod at once).
/// Every pod's trampoline tail-calls it. The agent's only handle on it: no program has it as
/// a map of its own.
#[btf_map(name = "MS_SK_LOOKUP_PROG")]
pub static SK_LOOKUP_PROG: ProgramArray<1> = ProgramArray::new();

/// Each pod's inbound proxy listener (per family), registered by sockops when the proxy calls
/// listen() and by the agent for listeners older than it. The kernel drops closed sockets.
#[btf_map(name = "MS_LISTENERS")]
pub static LISTENERS: SockHash<ListenerKey, { capacity::PODS as usize * 2 }> = SockHash::new();

/// `meshsteer trace`'s lease ([`TraceCtl`]): while it is unexpired, decisions are traced.
#[btf_map(name = "MS_TRACE_CTL")]
pub static TRACE_CTL: Array<TraceCtl, 1> = Array::new();

/// Capture decisions for `meshsteer trace`, written only while it holds the lease.
#[btf_map(name = "MS_TRACE")]
pub static TRACE: RingBuf<TraceEvent, { trace::RING_BYTES }> = RingBuf::new();

/// Established sockets of accelerated pods, each under its own view of the connection
/// (netns cookie, local, remote): a socket finds its peer under the mirrored key. The kernel
/// removes a socket when it closes. The sk_msg program is attached to this map.
#[btf_map(name = "MS_SOCKS")]
pub static SOCKS: SockHash<TupleKey, { capacity::SOCKS as usize }> = SockHash::new();

/// Acceleration state of each socket in `MS_SOCKS`, freed with the socket.
#[btf_map(name = "MS_ACCEL_STATE")]
pub static ACCEL_STATE: SkStorage<AccelState> = SkStorage::new();

/// Connections whose connecting side is in `MS_SOCKS` while the accepting side is not
/// established yet: (netns, the accepting side's view) → pod cgroup id. LRU: an accepting
/// side that never comes (its socket outside the cgroup root) cannot leak an entry.
#[btf_map(name = "MS_ACCEL_PENDING")]
pub static ACCEL_PENDING: LruHashMap<TupleKey, u64, { capacity::SOCKS as usize }> =
    LruHashMap::new();

/// Index 0: how many `MS_ACCEL_PENDING` entries there may be (see `accel.rs`). While it
/// reads 0, an accepted connection has no connecting side to join and looks nothing up.
#[btf_map(name = "MS_ACCEL_PENDING_COUNT")]
pub static ACCEL_PENDING_COUNT: Array<i64, 1> = Array::new();

/// Node-wide acceleration settings ([`AccelConfig`]), written by the agent at start.
#[btf_map(name = "MS_ACCEL_CFG")]
pub static ACCEL_CFG: Array<AccelConfig, 1> = Array::new();
