//! Loading the eBPF object, with maps and links pinned under `<bpffs-dir>/v<LAYOUT_VERSION>/`
//! so that a restarted agent adopts them: maps keep their contents, and each pinned link has
//! its program swapped atomically (BPF_LINK_UPDATE). The cgroup programs are attached to each
//! pod's cgroup at enrolment ([`super::cgroup_links`]); sk_lookup is loaded once here and
//! tail-called by each pod's trampoline ([`super::sk_lookup`]).
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use aya::{Ebpf, EbpfLoader};
use meshsteer_common::{globals, maps::names};
use tracing::{debug, info};

use super::{
    accel, cgroup_links::CgroupLinks, lock::PinLock, migrate, netns_offsets, object::OBJECT, owner,
    pins::Pins, prog_pins::ProgPins, sk_lookup,
};
use crate::host::{bpffs, cgroup};

/// The eBPF log ring's reader (aya-log), drained by the agent loop into `tracing`.
pub type EbpfLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// How long a starting agent waits for the previous one (being replaced) to exit.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The loaded object; its programs stay attached through their pinned links.
pub struct Datapath {
    /// This agent's hold on `--bpffs-dir`: no other agent or `uninstall` while it lives.
    _lock: PinLock,
    pub bpf: Ebpf,
    pub pins: Pins,
    /// This build's pinned programs (each pod's sk_lookup trampoline among them).
    pub progs: ProgPins,
    /// The cgroup programs, attached to each pod's cgroup at enrolment (taken by the
    /// registry's dataplane: [`Datapath::take_cgroup_links`]).
    cgroup_links: Option<CgroupLinks>,
    /// Whether sockets can be accelerated on this kernel.
    pub accel: accel::Support,
    /// Must outlive the programs' use of the log ring: dropping it closes the ring.
    logger: Option<EbpfLogger>,
}

impl Datapath {
    /// Loads the programs (adopting existing pinned maps). `cgroup_root`: where layout 5 attached
    /// the cgroup programs; its carried links run the new programs until they are retired.
    pub fn load(bpffs_dir: &Path, cgroup_root: &Path) -> Result<Self> {
        bpffs::ensure_bpffs(bpffs_dir)?;
        let lock = PinLock::acquire(bpffs_dir, LOCK_WAIT)?;
        Pins::check_layout(bpffs_dir, migrate::PREVIOUS)?;
        let pins = Pins::new(bpffs_dir);
        // The pin tree's shape does not depend on which pods came and went.
        for dir in [
            pins.root.join("maps"),
            pins.cgroup_links(),
            pins.netns_links(),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // The previous layout's maps and links, pinned here too: reused and swapped below.
        let previous = migrate::carry_over(bpffs_dir, &pins)?;
        if previous.is_none() {
            migrate::release_drained(&pins)?;
        }
        let map_paths: Vec<(&str, PathBuf)> =
            names::PINNED.iter().map(|n| (*n, pins.map(n))).collect();
        let owner_offsets = owner::kernel_offsets()?;
        let netns_offsets = netns_offsets::kernel_offsets()?;
        let mut loader = EbpfLoader::new();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        loader
            .override_global(globals::OWNER_OFFSETS, &owner_offsets, true)
            .override_global(globals::NETNS_OFFSETS, &netns_offsets, true);
        let mut bpf = loader.load(OBJECT).context("loading the eBPF object")?;
        let logger = match aya_log::EbpfLogger::init(&mut bpf) {
            Ok(l) => Some(l),
            Err(e) => {
                debug!(error = %e, "no eBPF log ring in this object");
                None
            }
        };
        // Before sockops: a socket must never enter MS_SOCKS before its program is attached.
        let accel = accel::attach(&mut bpf, &pins)?;
        // After the loader: its first run pins the maps the key names.
        let progs = ProgPins::open(&pins, OBJECT, &[&owner_offsets, &netns_offsets])?;
        let cgroup_links = CgroupLinks::load(&mut bpf, &pins, &progs)?;
        let root_id = cgroup::cgroup_id(cgroup_root)?;
        let carried = cgroup_links
            .update_root_links(root_id)
            .with_context(|| format!("updating the links at {}", cgroup_root.display()))?;
        if carried > 0 {
            info!(
                links = carried,
                "the cgroup root's links (layout 5) run this agent's programs until every pod \
                 has its own"
            );
        }
        sk_lookup::load_shared(&mut bpf, &progs)?;
        // Every carried root and sk_msg link runs our programs now (per-pod sk_lookup links
        // are swapped as their pods are enrolled): the previous layout's pins can go.
        if let Some(old) = previous {
            migrate::retire(&old)?;
        }
        info!(pins = %pins.root.display(), "datapath loaded");
        Ok(Self {
            _lock: lock,
            bpf,
            pins,
            progs,
            cgroup_links: Some(cgroup_links),
            accel,
            logger,
        })
    }

    /// The cgroup programs, for the one owner of the pods' links.
    pub fn take_cgroup_links(&mut self) -> Result<CgroupLinks> {
        self.cgroup_links
            .take()
            .context("the cgroup programs were taken already")
    }

    /// The eBPF log ring, for the caller to drain (see `cmd::run`).
    pub fn take_logger(&mut self) -> Option<EbpfLogger> {
        self.logger.take()
    }
}
