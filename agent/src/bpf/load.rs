//! Loading the eBPF object and attaching it at the cgroup root, with maps and links pinned
//! under `<bpffs-dir>/v<LAYOUT_VERSION>/` so that a restarted agent adopts them: maps keep
//! their contents, and each pinned link has its program swapped atomically (BPF_LINK_UPDATE).
use std::{
    fs::{self, File},
    os::fd::AsFd,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupSock, CgroupSockAddr, CgroupSockopt, Program, SockOps},
};
use meshsteer_common::{globals, maps::names};
use tracing::{debug, info};

use super::{
    accel, lock::PinLock, migrate, netns_offsets, object::OBJECT, owner, pins::Pins,
    sk_lookup::SkLookupLoader,
};
use crate::{
    host::{bpffs, cgroup},
    sys::bpf::{self as bpf_sys, AttachType},
};

/// The eBPF log ring's reader (aya-log), drained by the agent loop into `tracing`.
pub type EbpfLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// How long a starting agent waits for the previous one (being replaced) to exit.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// (program, attach type, what a failure to attach most likely means). In update order: on
/// an upgrade each link swaps its program on its own, so the readers of `MS_ORIG_DST`
/// (getsockopt, which also reads the previous layout's map) go before its writer (sockops):
/// an entry the new sockops stores is never asked of the old getsockopt. Likewise the readers
/// of `MS_DNS_SOCK` (getpeername, recvmsg) go before its writers (connect, sendmsg): no DNS
/// is redirected before its replies can be translated.
const CGROUP_PROGRAMS: &[(&str, AttachType, &str)] = &[
    (
        "sock_create",
        AttachType::SockCreate,
        "cgroup/sock_create (Linux 4.10)",
    ),
    (
        "getsockopt",
        AttachType::GetSockopt,
        "cgroup/getsockopt (Linux 5.3)",
    ),
    (
        "getpeername4",
        AttachType::GetPeername4,
        "cgroup/getpeername4 (Linux 5.8)",
    ),
    (
        "getpeername6",
        AttachType::GetPeername6,
        "cgroup/getpeername6 (Linux 5.8)",
    ),
    (
        "recvmsg4",
        AttachType::UdpRecvmsg4,
        "cgroup/recvmsg4 (Linux 5.2)",
    ),
    (
        "recvmsg6",
        AttachType::UdpRecvmsg6,
        "cgroup/recvmsg6 (Linux 5.2)",
    ),
    (
        "connect4",
        AttachType::Connect4,
        "cgroup/connect4 (Linux 4.17)",
    ),
    (
        "connect6",
        AttachType::Connect6,
        "cgroup/connect6 (Linux 4.17)",
    ),
    (
        "sendmsg4",
        AttachType::UdpSendmsg4,
        "cgroup/sendmsg4 (Linux 4.18)",
    ),
    (
        "sendmsg6",
        AttachType::UdpSendmsg6,
        "cgroup/sendmsg6 (Linux 4.18)",
    ),
    ("ms_sockops", AttachType::SockOps, "sockops (Linux 4.13)"),
];

/// The loaded object; its programs stay attached through their pinned links.
pub struct Datapath {
    /// This agent's hold on `--bpffs-dir`: no other agent or `uninstall` while it lives.
    _lock: PinLock,
    pub bpf: Ebpf,
    pub pins: Pins,
    /// Each pod's copy of the sk_lookup program, attached to its network namespace at
    /// enrolment.
    pub sk_lookup: SkLookupLoader,
    /// Whether sockets can be accelerated on this kernel.
    pub accel: accel::Support,
    /// Must outlive the programs' use of the log ring: dropping it closes the ring.
    logger: Option<EbpfLogger>,
}

impl Datapath {
    /// Loads (adopting existing pinned maps) and attaches every program at `cgroup_root`.
    pub fn load(bpffs_dir: &Path, cgroup_root: &Path) -> Result<Self> {
        bpffs::ensure_bpffs(bpffs_dir)?;
        let lock = PinLock::acquire(bpffs_dir, LOCK_WAIT)?;
        Pins::check_layout(bpffs_dir, migrate::PREVIOUS)?;
        let pins = Pins::new(bpffs_dir);
        for sub in ["maps", "links"] {
            fs::create_dir_all(pins.root.join(sub))
                .with_context(|| format!("creating {}", pins.root.join(sub).display()))?;
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
        let cgroup = File::open(cgroup_root)
            .with_context(|| format!("opening cgroup root {}", cgroup_root.display()))?;
        let cgroup_id = cgroup::cgroup_id(cgroup_root)?;
        // Before sockops: a socket must never enter MS_SOCKS before its program is attached.
        let accel = accel::attach(&mut bpf, &pins)?;
        for (name, attach, what) in CGROUP_PROGRAMS {
            let program = bpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?;
            load_program(program).with_context(|| format!("loading {what}"))?;
            let prog_fd = program.fd().with_context(|| format!("{name} has no fd"))?;
            attach_or_update(
                &pins.link(name),
                prog_fd.as_fd(),
                &cgroup,
                cgroup_id,
                *attach,
            )
            .with_context(|| format!("attaching {what} at {}", cgroup_root.display()))?;
        }
        let sk_lookup = SkLookupLoader::new(&pins, owner_offsets, netns_offsets)?;
        // Every carried cgroup and sk_msg link runs our programs now (per-pod sk_lookup links
        // are swapped as their pods are enrolled): the previous layout's pins can go.
        if let Some(old) = previous {
            migrate::retire(&old)?;
        }
        info!(pins = %pins.root.display(), cgroup = %cgroup_root.display(), "datapath attached");
        Ok(Self {
            _lock: lock,
            bpf,
            pins,
            sk_lookup,
            accel,
            logger,
        })
    }

    /// The eBPF log ring, for the caller to drain (see `cmd::run`).
    pub fn take_logger(&mut self) -> Option<EbpfLogger> {
        self.logger.take()
    }
}

fn load_program(p: &mut Program) -> Result<()> {
    match p {
        Program::CgroupSock(p) => CgroupSock::load(p)?,
        Program::CgroupSockAddr(p) => CgroupSockAddr::load(p)?,
        Program::CgroupSockopt(p) => CgroupSockopt::load(p)?,
        Program::SockOps(p) => SockOps::load(p)?,
        other => bail!("unexpected program type {:?}", other.prog_type()),
    }
    Ok(())
}

/// A pinned link of ours swaps its program; otherwise a new link is created and pinned.
fn attach_or_update(
    pin: &Path,
    prog: std::os::fd::BorrowedFd<'_>,
    cgroup: &File,
    cgroup_id: u64,
    attach: AttachType,
) -> Result<()> {
    if pin.exists() {
        let link = bpf_sys::obj_get(pin)
            .with_context(|| format!("opening pinned link {}", pin.display()))?;
        let info = bpf_sys::cgroup_link_info(link.as_fd())?;
        if info.cgroup_id != cgroup_id || info.attach_type != attach as u32 {
            bail!(
                "pinned link {} is attached to cgroup id {} (type {}), not to this cgroup root \
                 (id {cgroup_id}): another agent instance uses this --bpffs-dir",
                pin.display(),
                info.cgroup_id,
                info.attach_type
            );
        }
        bpf_sys::link_update(link.as_fd(), prog).context("BPF_LINK_UPDATE")?;
        debug!(pin = %pin.display(), "adopted link, program replaced");
        return Ok(());
    }
    let link = bpf_sys::link_create(prog, cgroup.as_fd(), attach).context("BPF_LINK_CREATE")?;
    bpf_sys::obj_pin(link.as_fd(), pin).with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}
