//! What the registry asks of the node: the map writes, the per-pod cgroup and sk_lookup links, and the
//! few facts it reads from the host. Behind a trait so that the state machine runs without
//! root ([`super::kernel::Kernel`] is the real one; tests use an in-memory fake).
use std::{collections::BTreeSet, net::IpAddr, path::Path};

use anyhow::Result;

use crate::{host::userns::IdMaps, spec::plan::Plan};

/// A pod a previous agent left in the maps: still captured until it is re-enrolled or
/// garbage-collected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adopted {
    pub cgroup_id: u64,
    pub pod_id: u32,
}

/// A proxy listener that predates the agent, found among a pod's processes.
#[derive(Debug)]
pub struct ExistingListener<S> {
    pub socket: S,
    /// `AF_INET` or `AF_INET6`.
    pub family: u32,
    /// The socket's owner (creator's fsuid/fsgid).
    pub uid: u32,
    pub gid: u32,
    /// Held by a process in the pod's own network namespace.
    pub in_pod_netns: bool,
}

/// Every effect the registry has outside itself. Pods are named by cgroup id, as the
/// datapath names them.
pub trait Dataplane {
    /// How an [`ExistingListener`] is held until it is registered.
    type Socket;

    /// The pods enrolled before this agent started (by a previous agent).
    fn adopted(&self) -> Vec<Adopted>;

    /// Forgets every pod whose cgroup is not in `keep`, and whatever their sets left behind.
    fn garbage_collect(&mut self, keep: &BTreeSet<u64>);

    /// The id the datapath knows the cgroup v2 directory `cgroup` by.
    fn cgroup_id(&self, cgroup: &Path) -> Result<u64>;

    /// Whether `netns` can be a network namespace at all (it exists and is not a directory).
    fn check_netns(&self, netns: &Path) -> Result<()>;

    /// The id maps of the user namespace that owns `netns` (read through a process of
    /// `cgroup`), or `None` when it is the host's.
    fn id_maps(&self, netns: &Path, cgroup: &Path) -> Result<Option<IdMaps>>;

    /// The pod's own resolv.conf, read through one of the processes of `cgroup` (see
    /// [`crate::host::resolv::of_cgroup`]), with the pid it was read through; `None` while no
    /// process has one.
    fn pod_resolv_conf(&self, cgroup: &Path) -> Option<(i32, String)>;

    /// The resolv.conf a pod spec names (`resolvConf`), on the agent's filesystem.
    fn read_resolv_conf(&self, path: &Path) -> Result<String>;

    /// Whether the pod's network namespace is still there.
    fn netns_alive(&self, netns: &Path) -> bool;

    /// Attaches the capture programs to the pod's cgroup `cgroup` (id `cgroup_id`), or swaps
    /// this agent's programs into the links a previous agent left there. Until the pod's config
    /// is written they pass everything. All or nothing.
    fn attach_cgroup(&mut self, cgroup_id: u64, cgroup: &Path) -> Result<()>;

    /// Detaches the programs from the pod's cgroup, if they are attached.
    fn detach_cgroup(&mut self, cgroup_id: u64);

    /// Attaches the pod's sk_lookup trampoline to `netns` (swaps it in, if the pod has a link
    /// there already), and names `netns` as the
    /// one its proxy's listener must be made in. Until the pod's config is written it passes
    /// everything.
    fn attach_netns(&mut self, cgroup_id: u64, netns: &Path) -> Result<()>;

    /// Detaches the pod's sk_lookup link, if it has one.
    fn detach_netns(&mut self, cgroup_id: u64);

    /// Adds Envoy's IPv6 inbound-passthrough source `::6/128` to `lo` in `netns`, as
    /// istio-init does in a pod it writes ip6tables rules for. Already there: success.
    fn add_passthrough_v6(&mut self, netns: &Path) -> Result<()>;

    /// Starts watching the addresses of `netns` for the pod (replacing any earlier watch of
    /// its), and returns them as they are now (loopback ones left out).
    fn watch_local_addrs(&mut self, cgroup_id: u64, netns: &Path) -> Result<BTreeSet<IpAddr>>;

    /// The pod's addresses, if they changed since last asked (`None`: they did not, or they
    /// are not watched).
    fn local_addrs_changed(&mut self, cgroup_id: u64) -> Result<Option<BTreeSet<IpAddr>>>;

    /// Stops watching the pod's addresses.
    fn unwatch_local_addrs(&mut self, cgroup_id: u64);

    /// Points the pod, in place (same pod id), at `plan`, which differs from `previous` in
    /// its local addresses only: the new ones are written before the config, the stale ones
    /// removed after.
    fn update_local(&mut self, cgroup_id: u64, plan: &Plan, previous: &Plan) -> Result<()>;

    /// Points the pod at `plan`. `previous` (a plan of the same cgroup) stays in effect until
    /// the swap, and on error nothing of `plan` stays behind.
    fn apply(&mut self, cgroup_id: u64, plan: &Plan, previous: Option<&Plan>) -> Result<()>;

    /// Whether the pod's capture is in effect as `plan` says, in the datapath itself (its
    /// config in the maps, its cgroup's links and, with `netns`, its sk_lookup link there): a
    /// check against changes made behind the agent's back.
    fn in_effect(&self, cgroup_id: u64, plan: &Plan, netns: Option<&Path>) -> Result<()>;

    /// Stops capture for the pod and frees its entries.
    fn remove(&mut self, cgroup_id: u64, plan: &Plan);

    /// Listening sockets on `port` held by the processes of `cgroup`, in any network
    /// namespace (each says whether it is `netns`).
    fn existing_listeners(
        &self,
        cgroup: &Path,
        netns: &Path,
        port: u16,
    ) -> Result<Vec<ExistingListener<Self::Socket>>>;

    /// Steers the pod's inbound connections to a listener found by
    /// [`Dataplane::existing_listeners`].
    fn add_listener(
        &mut self,
        cgroup_id: u64,
        listener: &ExistingListener<Self::Socket>,
    ) -> Result<()>;
}
