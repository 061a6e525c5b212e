//! The pod's capture sets as both decisions query them.
use crate::{Addr, maps::PortSet};

/// The pod's sets, wherever they live (BPF maps, or the agent's parsed config).
pub trait PodTables {
    fn port_in(&self, set: PortSet, port: u16) -> bool;
    /// `-x`: longest-prefix match over the pod's excluded CIDRs.
    fn cidr_excluded(&self, addr: &Addr) -> bool;
    /// `-i` when it is a list.
    fn cidr_included(&self, addr: &Addr) -> bool;
    /// An address assigned inside the pod's network namespace (besides loopback).
    fn is_pod_address(&self, addr: &Addr) -> bool;
    /// A nameserver whose DNS `--redirect-dns` captures (the pod's resolv.conf).
    fn is_dns_server(&self, addr: &Addr) -> bool;
}
