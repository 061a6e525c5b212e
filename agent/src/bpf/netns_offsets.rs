//! The kernel offsets sockops needs to name the network namespace a listening socket was made
//! in as the agent names a pod's (by nsfs inode number, see `ebpf/src/netns.rs`). No helper
//! returns that number and aya has no CO-RE for Rust programs, so they come from the kernel's
//! BTF, as the owner's do (`owner.rs`).
use anyhow::{Context, Result};
use meshsteer_common::globals::NetnsOffsets;

use super::btf;

const FIELDS: [(&str, &str); 4] = [
    ("sock", "__sk_common"),
    ("sock_common", "skc_net"),
    ("net", "ns"),
    ("ns_common", "inum"),
];

/// From the kernel's BTF. `skc_net` is a `possible_net_t`, a struct whose one member is the
/// `struct net` pointer: its offset is the pointer's.
pub fn kernel_offsets() -> Result<NetnsOffsets> {
    let [sock_common, common_net, net_ns, ns_inum] = btf::kernel_offsets(FIELDS)
        .context("finding where a socket's network namespace keeps its inode number")?;
    Ok(NetnsOffsets {
        sock_net: sock_common + common_net,
        net_inum: net_ns + ns_inum,
        valid: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_has_them() {
        let off = kernel_offsets().unwrap();
        // sock_common starts with the addresses, ports and hashes: the namespace comes later.
        assert!(off.sock_net >= 16, "{off:?}");
        assert_ne!(off.net_inum, 0, "{off:?}");
    }
}
