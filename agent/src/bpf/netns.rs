//! Inbound capture's per-pod half: the pod's sk_lookup trampoline attached to its network
//! namespace through a pinned bpf_link (an agent restart adopts it; `BPF_LINK_UPDATE` swaps in
//! the new trampoline).
use std::{
    collections::BTreeSet,
    fs::{self, File},
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::Path,
};

use anyhow::{Context, Result};
use tracing::{debug, info};

use super::{pins::Pins, prog_pins::Prog};
use crate::sys::bpf::{self as bpf_sys, AttachType};

/// Attaches (or adopts and updates) the sk_lookup link of one pod. A link that runs `prog`
/// already is left as it is.
pub fn attach(prog: &Prog, netns: &Path, pin: &Path) -> Result<()> {
    let ns = File::open(netns).with_context(|| format!("opening netns {}", netns.display()))?;
    let ino = ns.metadata()?.ino();
    if pin.exists() {
        let link = bpf_sys::obj_get(pin)?;
        let (linked_ino, _) = bpf_sys::netns_link_info(link.as_fd())?;
        if linked_ino == ino {
            if bpf_sys::link_prog_id(link.as_fd())? == prog.id {
                return Ok(());
            }
            bpf_sys::link_update(link.as_fd(), prog.fd.as_fd())
                .context("BPF_LINK_UPDATE on sk_lookup link")?;
            debug!(pin = %pin.display(), "adopted sk_lookup link");
            return Ok(());
        }
        // A stale pin (namespace replaced): its link is gone with the old namespace.
        fs::remove_file(pin).ok();
    }
    let link = bpf_sys::link_create(prog.fd.as_fd(), ns.as_fd(), AttachType::SkLookup)
        .context("attaching sk_lookup to the pod's network namespace (Linux 5.9)")?;
    if let Some(dir) = pin.parent() {
        fs::create_dir_all(dir)?;
    }
    bpf_sys::obj_pin(link.as_fd(), pin).with_context(|| format!("pinning {}", pin.display()))?;
    info!(netns = %netns.display(), "inbound capture attached");
    Ok(())
}

/// Removes the pod's sk_lookup link: unpinned with no fd open, the kernel detaches it.
pub fn detach(pin: &Path) {
    if fs::remove_file(pin).is_ok() {
        info!(pin = %pin.display(), "inbound capture detached");
    }
}

/// Removes the sk_lookup links pinned in `dir` of every pod cgroup id not in `keep`: pods a
/// previous agent enrolled that went while no agent ran (their maps entries are collected
/// likewise). A live namespace's link detaches; a gone one's pin is freed.
pub fn detach_all_but(dir: &Path, keep: &BTreeSet<u64>) {
    for pin in Pins::stale(dir, keep) {
        detach(&pin);
    }
}

/// Whether the link pinned at `pin` is attached to the namespace at `netns`: the pod's inbound
/// capture is in effect there.
pub fn attached(pin: &Path, netns: &Path) -> Result<()> {
    let ino = fs::metadata(netns)
        .with_context(|| format!("netns {}", netns.display()))?
        .ino();
    let link = bpf_sys::obj_get(pin)
        .with_context(|| format!("the pod's sk_lookup link {} is gone", pin.display()))?;
    let (linked, _) = bpf_sys::netns_link_info(link.as_fd())?;
    anyhow::ensure!(
        linked == ino,
        "the pod's sk_lookup link is attached to another network namespace"
    );
    Ok(())
}

/// Is the namespace this pin's link is attached to still the one at `netns`?
pub fn alive(netns: &Path) -> bool {
    netns.exists()
}
