//! The kernel offsets sock_create needs to name the network namespace a socket is made in as
//! the agent names a pod's (by nsfs inode number, see `ebpf/src/netns.rs`). No helper returns
//! that number and aya has no CO-RE for Rust programs, so they come from the kernel's BTF, as
//! the owner's do (`owner.rs`).
use anyhow::{Context, Result};
use meshsteer_common::globals::NetnsOffsets;

use super::btf;

const FIELDS: [(&str, &str); 4] = [
    ("task_struct", "nsproxy"),
    ("nsproxy", "net_ns"),
    ("net", "ns"),
    ("ns_common", "inum"),
];

/// From the kernel's BTF.
pub fn kernel_offsets() -> Result<NetnsOffsets> {
    let [task_nsproxy, nsproxy_net_ns, net_ns, ns_inum] = btf::kernel_offsets(FIELDS)
        .context("finding where a task's network namespace keeps its inode number")?;
    Ok(NetnsOffsets {
        task_nsproxy,
        nsproxy_net_ns,
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
        assert_ne!(off.task_nsproxy, 0, "{off:?}");
        // nsproxy starts with its refcount and the uts namespace: net_ns comes later.
        assert!(off.nsproxy_net_ns >= 8, "{off:?}");
    }
}
