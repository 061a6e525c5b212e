//! `meshsteer run`: attach, enrol, follow the pod source, stop cleanly.
use std::fs;

use anyhow::{Context, Result};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};
use tracing::{info, warn};

pub type EbpfLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

use crate::{
    cli::RunArgs,
    datapath::Datapath,
    features, host,
    podmaps::PodMaps,
    pods::Registry,
    source::{Change, POLL, PodDir},
    status,
};

pub async fn run(args: RunArgs) -> Result<()> {
    features::check()?;
    let cgroup_root = match args.cgroup_root {
        Some(r) => r,
        None => host::cgroup2_mount()?,
    };
    let mut datapath = Datapath::load(&args.pins.bpffs_dir, &cgroup_root)?;
    if let Some(logger) = datapath.take_logger() {
        tokio::spawn(forward_ebpf_logs(logger));
    }
    let maps = PodMaps::take(&mut datapath.bpf)?;
    let sk_lookup = datapath.sk_lookup.try_clone()?;
    let mut registry = Registry::new(maps, cgroup_root, datapath.pins.clone(), sk_lookup);
    fs::create_dir_all(&args.pods_dir)
        .with_context(|| format!("creating pods dir {}", args.pods_dir.display()))?;
    let mut pod_dir = PodDir::new(&args.pods_dir);
    apply(&mut registry, pod_dir.scan());
    registry.reconcile_adopted();
    status::publish(&args.status.status_file, &registry.status())?;
    info!(pods_dir = %args.pods_dir.display(), "running");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let changes = pod_dir.scan();
                let had_changes = !changes.is_empty();
                apply(&mut registry, changes);
                if (registry.check_namespaces() || had_changes)
                    && let Err(e) = status::publish(&args.status.status_file, &registry.status())
                {
                    warn!(error = %format!("{e:#}"), "could not publish status");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Programs stay attached through their pinned links and maps keep every pod's config:
    // stopping (or crashing) the agent never lets traffic escape capture.
    info!("stopping; capture stays in effect until `meshsteer uninstall`");
    Ok(())
}

fn apply(registry: &mut Registry, changes: Vec<Change>) {
    for c in changes {
        match c {
            Change::Upsert(file, spec) => registry.upsert(&file, *spec),
            Change::Remove(file) => registry.remove(&file),
        }
    }
}

/// Drains the eBPF log ring into `tracing` (through the `log` bridge) whenever it has data.
async fn forward_ebpf_logs(logger: EbpfLogger) {
    // SAFETY: the fd is the logger's own ring buffer fd, which the logger keeps open until it
    // is dropped together with the AsyncFd.
    let Ok(mut fd) = (unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) })
    else {
        warn!("cannot poll the eBPF log ring; eBPF logs are dropped");
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
