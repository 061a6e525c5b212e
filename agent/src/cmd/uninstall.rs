//! `meshsteer uninstall`: detach everything and remove the pins.
use std::{fs, path::Path, time::Duration};

use anyhow::{Context, Result};
use tracing::info;

use crate::bpf::{accel, lock::PinLock, migrate, pins::Pins};

/// Detaches everything and removes the pins: capture stops for every pod on the node.
pub fn uninstall(bpffs_dir: &Path) -> Result<()> {
    let pins = Pins::new(bpffs_dir);
    // Pins of the layout this agent would upgrade (never run since) go too.
    let previous = migrate::previous_root(bpffs_dir);
    if previous.exists() {
        let _lock = PinLock::acquire(bpffs_dir, Duration::ZERO)?;
        fs::remove_dir_all(&previous)
            .with_context(|| format!("unpinning {}", previous.display()))?;
        info!(path = %previous.display(), "uninstalled");
    }
    if !pins.root.exists() {
        info!(path = %pins.root.display(), "nothing pinned");
        return Ok(());
    }
    // Never under a live agent: it would keep running on maps and links pulled away from it.
    let _lock = PinLock::acquire(bpffs_dir, Duration::ZERO)?;
    // Freeing MS_SOCKS drops what its sockets hold: bytes redirected to them and not read yet.
    match accel::open_sockets(&pins) {
        Ok(0) | Err(_) => {}
        Ok(n) => tracing::warn!(
            sockets = n,
            "accelerated connections are open: bytes they have not read yet are lost with MS_SOCKS"
        ),
    }
    // Unpinned with no fd open, links detach and maps are freed.
    fs::remove_dir_all(&pins.root).with_context(|| format!("unpinning {}", pins.root.display()))?;
    // The base dir too, unless something else lives there.
    let _ = fs::remove_dir(bpffs_dir);
    info!(path = %pins.root.display(), "uninstalled");
    Ok(())
}
