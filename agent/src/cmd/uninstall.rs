//! `meshsteer uninstall`: detach everything and remove the pins.
use std::{fs, path::Path, thread, time::Duration, time::Instant};

use anyhow::{Context, Result, bail};
use tracing::info;

use crate::{
    bpf::{
        accel,
        lock::{LockError, PinLock},
        migrate,
        pins::Pins,
    },
    cmd::args::UninstallArgs,
    host::locks,
    sys::signal,
};

/// How long `--live` waits for the live agent to have removed its pins.
const LIVE_WAIT: Duration = Duration::from_secs(30);

/// `meshsteer uninstall`: the CNI plugin first when its directories are given (a node with
/// the plugin and without capture would fail every pod's ADD), then the pins.
pub fn run(args: &UninstallArgs) -> Result<()> {
    if let (Some(conf), Some(bin)) = (&args.cni_conf_dir, &args.cni_bin_dir) {
        super::install_cni::uninstall(conf, bin)?;
    }
    uninstall(&args.pins.bpffs_dir, args.live)
}

/// Detaches everything and removes the pins: capture stops for every pod on the node. With
/// `live`, a live agent holding the pins is asked to do it (SIGUSR1) instead of refused.
pub fn uninstall(bpffs_dir: &Path, live: bool) -> Result<()> {
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
    match PinLock::acquire(bpffs_dir, Duration::ZERO) {
        Ok(lock) => remove(bpffs_dir, &pins, lock),
        Err(LockError::Busy { .. }) if live => through_agent(bpffs_dir, &pins),
        Err(e @ LockError::Busy { .. }) => Err(e).context(
            "a live agent holds the pins: `meshsteer uninstall --live` (for example through \
             `kubectl exec` in its pod) has it detach everything and remove them",
        ),
        Err(e) => Err(e.into()),
    }
}

/// Removes the pins under the pin lock `_lock`.
pub fn remove(bpffs_dir: &Path, pins: &Pins, _lock: PinLock) -> Result<()> {
    // Freeing MS_SOCKS drops what its sockets hold: bytes redirected to them and not read yet.
    match accel::open_sockets(pins) {
        Ok(0) | Err(_) => {}
        Ok(n) => tracing::warn!(
            sockets = n,
            "accelerated connections are open: bytes they have not read yet are lost with MS_SOCKS"
        ),
    }
    // Unpinned with no fd open, links detach and maps are freed. Links first: the kernel
    // empties MS_SK_LOOKUP_PROG as its last pin goes, and a trampoline still attached would
    // then drop every connection into its pod.
    let links = pins.root.join("links");
    if links.exists() {
        fs::remove_dir_all(&links).with_context(|| format!("unpinning {}", links.display()))?;
    }
    fs::remove_dir_all(&pins.root).with_context(|| format!("unpinning {}", pins.root.display()))?;
    // The base dir too, unless something else lives there.
    let _ = fs::remove_dir(bpffs_dir);
    info!(path = %pins.root.display(), "uninstalled");
    Ok(())
}

/// Asks the agent holding the pin lock to uninstall, and waits until it has.
fn through_agent(bpffs_dir: &Path, pins: &Pins) -> Result<()> {
    let pid = locks::flock_holder(bpffs_dir)
        .with_context(|| format!("finding who holds {}", bpffs_dir.display()))?
        .with_context(|| {
            format!(
                "{} is locked by a process outside this pid namespace: run this where the \
                 agent runs",
                bpffs_dir.display()
            )
        })?;
    signal::send(pid, libc::SIGUSR1)
        .with_context(|| format!("asking the agent (pid {pid}) to uninstall"))?;
    let start = Instant::now();
    while pins.root.exists() {
        if start.elapsed() > LIVE_WAIT {
            bail!(
                "the agent (pid {pid}) has not removed {} after {LIVE_WAIT:?}; see its log",
                pins.root.display()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    info!(pid, path = %pins.root.display(), "uninstalled by the live agent");
    Ok(())
}
