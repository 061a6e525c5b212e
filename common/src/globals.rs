//! Read-only globals of the eBPF object, set by the agent when it loads the programs (so not
//! pinned: a new agent loads its own copy with its own values).

/// Where the current task's credentials keep the ids iptables' owner match (xt_owner) compares:
/// `current->cred->fsuid` and `->fsgid`, the ids a socket file is opened with. Byte offsets,
/// from the kernel's BTF. `OWNER_OFFSETS` in the object.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OwnerOffsets {
    /// `struct task_struct::cred`.
    pub task_cred: u32,
    /// `struct cred::fsuid` (a `kuid_t`: its `val` comes first).
    pub cred_fsuid: u32,
    /// `struct cred::fsgid`.
    pub cred_fsgid: u32,
    /// Non-zero once the agent set the offsets.
    pub valid: u32,
}
plain_data!(OwnerOffsets);

/// The symbol name of the [`OwnerOffsets`] global.
pub const OWNER_OFFSETS: &str = "OWNER_OFFSETS";

/// Where a socket's network namespace keeps its inode number: the number an nsfs file
/// (`/proc/<pid>/ns/net`, a CNI netns path) shows, so the agent can name a pod's namespace the
/// same way (`MS_POD_NETNS`). Byte offsets, from the kernel's BTF: the chain
/// `sk->__sk_common.skc_net.net->ns.inum`. `NETNS_OFFSETS` in the object.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NetnsOffsets {
    /// `struct sock::__sk_common` plus `struct sock_common::skc_net` (a `possible_net_t`,
    /// whose one member is the `struct net` pointer).
    pub sock_net: u32,
    /// `struct net::ns` plus `struct ns_common::inum`.
    pub net_inum: u32,
    /// Non-zero once the agent set the offsets.
    pub valid: u32,
}
plain_data!(NetnsOffsets);

/// The symbol name of the [`NetnsOffsets`] global.
pub const NETNS_OFFSETS: &str = "NETNS_OFFSETS";
