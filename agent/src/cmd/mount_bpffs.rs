//! `meshsteer mount-bpffs`: what only a privileged container can do, done once before the
//! agent starts. A bpffs the agent mounted in its own container would die with it, pins and
//! capture included, so on a node without one the DaemonSet's privileged init container mounts
//! it with Bidirectional propagation (the node's mount), and the agent itself needs no
//! privilege.
use std::path::Path;

use anyhow::Result;

use crate::host::bpffs;

pub fn run(bpffs_dir: &Path) -> Result<()> {
    bpffs::ensure_bpffs(bpffs_dir)?;
    tracing::info!(path = %bpffs_dir.display(), "on a bpffs");
    Ok(())
}
