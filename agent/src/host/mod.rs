//! The host as the agent finds it: the cgroup2 mount and cgroup ids ([`cgroup`]), the bpffs
//! ([`bpffs`]), and what /proc says of a pod's processes ([`proc`]).
pub mod bpffs;
pub mod cgroup;
pub mod cni_conf;
pub mod conflist;
pub mod local_addrs;
pub mod locks;
pub mod netns;
pub mod passthrough;
pub mod proc;
pub mod resolv;
pub mod rtnl;
pub mod userns;
