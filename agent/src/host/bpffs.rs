//! The bpf filesystem the pins live on.
use std::{fs, path::Path};

use anyhow::{Context, Result, bail};

use crate::sys::mount;

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Makes `dir` exist on a bpffs, mounting one at /sys/fs/bpf if `dir` is not on bpffs yet.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).ok();
    if is_bpffs(dir) {
        return Ok(());
    }
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && !is_bpffs(root) {
        mount_bpffs(root)?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if !is_bpffs(dir) {
        bail!(
            "{} is not on a bpf filesystem: pins there would not survive the agent; \
             use a --bpffs-dir under /sys/fs/bpf",
            dir.display()
        );
    }
    Ok(())
}

fn is_bpffs(p: &Path) -> bool {
    mount::fs_type(p).is_ok_and(|t| t == BPF_FS_MAGIC)
}

fn mount_bpffs(at: &Path) -> Result<()> {
    fs::create_dir_all(at).ok();
    mount::mount_bpffs(at).with_context(|| format!("mounting bpffs at {}", at.display()))?;
    tracing::info!(path = %at.display(), "mounted bpffs");
    Ok(())
}
