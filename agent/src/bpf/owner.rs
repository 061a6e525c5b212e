//! The kernel offsets the datapath needs to see a socket's owner as iptables' owner match does
//! (the creator's fsuid/fsgid, see `ebpf/src/owner.rs`). No helper returns them, and aya has
//! no CO-RE for Rust programs, so the agent reads them from the kernel's BTF and sets them in
//! the object at load.
use std::fs;

use anyhow::{Context, Result};
use meshsteer_common::globals::OwnerOffsets;

use super::btf::Btf;

/// From `/sys/kernel/btf/vmlinux`.
pub fn kernel_offsets() -> Result<OwnerOffsets> {
    let path = "/sys/kernel/btf/vmlinux";
    let data = fs::read(path).with_context(|| format!("reading {path}"))?;
    offsets(&data).with_context(|| format!("finding the socket owner's credentials in {path}"))
}

fn offsets(btf: &[u8]) -> Result<OwnerOffsets> {
    let btf = Btf::parse(btf)?;
    let field = |s: &str, m: &str| {
        btf.member_offset(s, m)
            .with_context(|| format!("the kernel has no struct {s}::{m}"))
    };
    Ok(OwnerOffsets {
        task_cred: field("task_struct", "cred")?,
        cred_fsuid: field("cred", "fsuid")?,
        cred_fsgid: field("cred", "fsgid")?,
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
        assert!(offsets(b"not btf").is_err());
    }
}
