//! The kernel offsets the datapath needs to see a socket's owner as iptables' owner match does
//! (the creator's fsuid/fsgid, see `ebpf/src/owner.rs`). No helper returns them, and aya has
//! no CO-RE for Rust programs, so the agent reads them from the kernel's BTF and sets them in
//! the object at load.
use anyhow::{Context, Result};
use meshsteer_common::globals::OwnerOffsets;

use super::btf;

const FIELDS: [(&str, &str); 3] = [
    ("task_struct", "cred"),
    ("cred", "fsuid"),
    ("cred", "fsgid"),
];

/// From the kernel's BTF.
pub fn kernel_offsets() -> Result<OwnerOffsets> {
    let [task_cred, cred_fsuid, cred_fsgid] =
        btf::kernel_offsets(FIELDS).context("finding the socket owner's credentials")?;
    Ok(OwnerOffsets {
        task_cred,
        cred_fsuid,
        cred_fsgid,
        valid: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_has_them() {
        let off = kernel_offsets().unwrap();
        assert_ne!(off.task_cred, 0);
        // cred starts with its usage count and uid, gid, suid, sgid, euid, egid: fsuid comes
        // after them, fsgid right after it.
        assert!(off.cred_fsuid >= 4 * 6, "{off:?}");
        assert_eq!(off.cred_fsgid, off.cred_fsuid + 4, "{off:?}");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(btf::offsets_in(b"not btf", FIELDS).is_err());
    }
}
