//! From a socket to its pod: socket storage, the cgroup ancestor walk, the pod's config and
//! the map-backed [`PodTables`] the shared decision model runs on.
use core::ptr;

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    btf_maps::{SkStorage, lpm_trie::Key},
    helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_sk_storage_get},
};
use meshsteer_common::{
    Addr,
    maps::{
        CidrKey, DnsServerKey, LocalKey, MAX_CGROUP_DEPTH, PodConfig, PortKey, PortSet, SockState,
        counter, pod_flags,
    },
    tables::PodTables,
};

use crate::{
    ctx::Sock,
    maps::{
        CIDR_EXCLUDE, CIDR_INCLUDE, DNS_SERVERS, LOCAL_ADDRS, NODE_STATS, POD_STATS, PODS, PORTS,
    },
};

/// The socket's state, if any.
#[inline(always)]
pub fn sock_state(sk: Sock) -> Option<&'static mut SockState> {
    storage_get(sk, 0)
}

/// The socket's state, created zeroed if absent (None only if the kernel is out of memory).
#[inline(always)]
pub fn sock_state_or_create(sk: Sock) -> Option<&'static mut SockState> {
    storage_get(sk, BPF_SK_STORAGE_GET_F_CREATE.into())
}

#[inline(always)]
fn storage_get(sk: Sock, flags: u64) -> Option<&'static mut SockState> {
    sk_storage(&crate::maps::SOCK_STATE, sk, flags)
}

/// `sk`'s value in the socket-local storage `map` (with `BPF_SK_STORAGE_GET_F_CREATE` in
/// `flags`: created zeroed if absent).
#[inline(always)]
pub fn sk_storage<T>(map: &SkStorage<T>, sk: Sock, flags: u64) -> Option<&'static mut T> {
    let map = ptr::from_ref(map).cast_mut().cast();
    // SAFETY: the map pointer is the map definition the loader relocates; the kernel
    // returns NULL or a pointer to a live, properly sized value owned by the socket.
    let p = unsafe { bpf_sk_storage_get(map, sk.as_ptr(), ptr::null_mut(), flags) }.cast::<T>();
    // SAFETY: non-null values stay valid for the whole program run.
    unsafe { p.as_mut() }
}

/// The enrolled pod whose cgroup contains the current task, with its config: the shallowest
/// ancestor that has a config wins (containers are cgroups below the pod's). The walk's own
/// lookup gives the config, so callers need not look it up again.
#[inline(always)]
pub fn pod_of_current_task() -> Option<(u64, &'static PodConfig)> {
    let mut pod_cgroup = 0;
    let cfg = walk_to_pod(&mut pod_cgroup)?;
    Some((pod_cgroup, cfg))
}

/// [`pod_of_current_task`]'s walk, the pod's cgroup id left in `pod_cgroup`. Out of line:
/// LLVM unrolls the walk, and each level's key would otherwise take its own slot in the
/// caller's frame.
#[inline(never)]
fn walk_to_pod(pod_cgroup: &mut u64) -> Option<&'static PodConfig> {
    let mut level = 1;
    while level < MAX_CGROUP_DEPTH {
        // SAFETY: plain helper call, no pointers.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            // Deeper than the task's own cgroup.
            return None;
        }
        if let Some(cfg) = pod_config(id) {
            *pod_cgroup = id;
            return Some(cfg);
        }
        level += 1;
    }
    None
}

#[inline(always)]
pub fn pod_config(pod_cgroup: u64) -> Option<&'static PodConfig> {
    // SAFETY: values of this map are plain data; the agent replaces them whole.
    PODS.get_ptr(pod_cgroup).map(|p| unsafe { &*p })
}

/// Bumps one of a pod's per-CPU counters.
#[inline(always)]
pub fn count(pod_cgroup: u64, index: usize) {
    if index >= counter::COUNT {
        return;
    }
    if let Some(c) = POD_STATS.get_ptr_mut(pod_cgroup) {
        // SAFETY: per-CPU value of this CPU; nothing else writes it concurrently.
        unsafe { (*c).0[index] += 1 };
    }
}

#[inline(always)]
pub fn count_node(index: u32) {
    if let Some(c) = NODE_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, as above.
        unsafe { *c += 1 };
    }
}

/// The pod's sets as the decision model sees them, backed by the shared maps. Empty sets are
/// skipped through the config's `HAS_*` flags.
pub struct MapTables {
    pub pod_id: u32,
    pub flags: u32,
}

impl MapTables {
    pub const fn new(cfg: &PodConfig) -> Self {
        Self {
            pod_id: cfg.pod_id,
            flags: cfg.flags,
        }
    }

    #[inline(always)]
    const fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

// Out of line: each lookup key then lives in its own small frame, instead of every key of an
// inlined decision piling up in one 512-byte BPF stack.
impl PodTables for MapTables {
    #[inline(never)]
    fn port_in(&self, set: PortSet, port: u16) -> bool {
        let flag = match set {
            PortSet::OutExclude => pod_flags::HAS_OUT_EXCLUDE_PORTS,
            PortSet::OutInclude => pod_flags::HAS_OUT_INCLUDE_PORTS,
            PortSet::InExclude => pod_flags::HAS_IN_EXCLUDE_PORTS,
            PortSet::InInclude => pod_flags::HAS_IN_INCLUDE_PORTS,
        };
        self.has(flag)
            && PORTS
                .get_ptr(PortKey::new(self.pod_id, set, port))
                .is_some()
    }

    #[inline(never)]
    fn cidr_excluded(&self, addr: &Addr) -> bool {
        let key = Key::new(CidrKey::FULL, CidrKey::new(self.pod_id, *addr));
        self.has(pod_flags::HAS_CIDR_EXCLUDE) && CIDR_EXCLUDE.get(&key).is_some()
    }

    #[inline(never)]
    fn cidr_included(&self, addr: &Addr) -> bool {
        let key = Key::new(CidrKey::FULL, CidrKey::new(self.pod_id, *addr));
        self.has(pod_flags::HAS_CIDR_INCLUDE) && CIDR_INCLUDE.get(&key).is_some()
    }

    #[inline(never)]
    fn is_pod_address(&self, addr: &Addr) -> bool {
        let key = LocalKey {
            pod_id: self.pod_id,
            addr: *addr,
        };
        self.has(pod_flags::HAS_LOCAL_ADDRS) && LOCAL_ADDRS.get_ptr(key).is_some()
    }

    #[inline(never)]
    fn is_dns_server(&self, addr: &Addr) -> bool {
        let key = DnsServerKey {
            pod_id: self.pod_id,
            addr: *addr,
        };
        self.has(pod_flags::HAS_DNS_SERVERS) && DNS_SERVERS.get_ptr(key).is_some()
    }
}
