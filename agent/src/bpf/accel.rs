//! Socket-level acceleration, agent side: whether this kernel lets the datapath bound what it
//! redirects (the struct offsets the sk_msg program reads, from the kernel's BTF), the
//! node-wide settings in `MS_ACCEL_CFG`, and the sk_msg program's attachment to `MS_SOCKS`.
//!
//! **Attachment and restarts.** sk_msg programs attach to a map, not to a cgroup. On kernels
//! with sockmap links (Linux 6.10) the attachment is a bpf_link pinned at
//! `links/sockmap/ms_sk_msg`: a restarted agent swaps its program atomically
//! (`BPF_LINK_UPDATE`), as for the cgroup programs. Older kernels attach with
//! `BPF_PROG_ATTACH`, which lives as long as the map: `MS_SOCKS` is pinned, so the attachment
//! outlives the agent, and a restarted agent's attach replaces the program. Either way a
//! socket keeps the program it was inserted with (the kernel copies it into the socket's
//! psock), so connections accelerated before a restart stay accelerated, unchanged.
use std::{
    fs,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::Path,
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, SockHash},
    programs::SkMsg,
};
use meshsteer_common::maps::{
    TupleKey,
    accel::{AccelConfig, cfg_flags},
    names,
};
use tracing::{debug, info, warn};

use super::{btf, pins::Pins};
use crate::sys::bpf as bpf_sys;

/// The sk_msg program's name in the object.
const PROGRAM: &str = "ms_sk_msg";

/// Whether sockets can be accelerated on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    Available,
    /// Why not (shown in logs and in the status of pods that ask for acceleration).
    Unavailable(String),
}

impl Support {
    pub fn available(&self) -> bool {
        *self == Self::Available
    }
}

/// Writes `MS_ACCEL_CFG` and attaches the sk_msg program to `MS_SOCKS`. Runs before sockops
/// is attached: a socket inserted before its map has the program would never be redirected.
/// A kernel without what acceleration needs is not an error: sockets stay on the normal path.
pub fn attach(bpf: &mut Ebpf, pins: &Pins) -> Result<Support> {
    let support = match kernel_offsets() {
        Ok(off) => match attach_sk_msg(bpf, pins) {
            Ok(()) => {
                write_config(bpf, Some(&off))?;
                Support::Available
            }
            Err(e) => Support::Unavailable(format!("sk_msg: {e:#}")),
        },
        Err(e) => Support::Unavailable(format!("{e:#}")),
    };
    match &support {
        Support::Available => info!("socket-level acceleration available"),
        Support::Unavailable(why) => {
            write_config(bpf, None)?;
            warn!(reason = %why, "socket-level acceleration unavailable: every socket stays on the normal path");
        }
    }
    Ok(support)
}

fn write_config(bpf: &mut Ebpf, off: Option<&Offsets>) -> Result<()> {
    let cfg = match off {
        Some(o) => AccelConfig {
            flags: cfg_flags::CAPABLE,
            max_backlog: max_backlog(),
            off_msg_sk_redir: o.sk_msg_sk_redir,
            off_sock_user_data: o.sock_user_data,
            off_psock_msg_tot_len: o.psock_msg_tot_len,
            _pad: 0,
        },
        None => AccelConfig::default(),
    };
    let mut map: Array<_, AccelConfig> = bpf
        .map_mut(names::ACCEL_CFG)
        .context("map MS_ACCEL_CFG missing from the object")?
        .try_into()?;
    map.set(0, cfg, 0).context("writing MS_ACCEL_CFG")?;
    debug!(?cfg, "acceleration settings");
    Ok(())
}

/// The most redirected bytes a peer may hold unread: the largest receive buffer TCP would
/// give it (`net.ipv4.tcp_rmem`'s maximum) less [`BACKLOG_SLACK`]. Past it the writer takes
/// the normal path, where at most its send buffer and the peer's initial receive buffer
/// queue up: all together within `tcp_wmem` max + `tcp_rmem` max, the most a normal
/// connection can hold.
pub fn max_backlog() -> u32 {
    let rmem_max: u32 = fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(6 << 20);
    rmem_max.saturating_sub(BACKLOG_SLACK).max(1 << 20)
}

/// Room for the send that crosses the limit (one sk_msg: at most a few hundred KiB) and the
/// peer's initial TCP receive buffer (`tcp_rmem` default, 128 KiB).
pub const BACKLOG_SLACK: u32 = 2 << 20;

fn attach_sk_msg(bpf: &mut Ebpf, pins: &Pins) -> Result<()> {
    let map_fd = {
        let socks: SockHash<_, TupleKey> = bpf
            .map(names::SOCKS)
            .context("map MS_SOCKS missing from the object")?
            .try_into()?;
        socks.fd().as_fd().try_clone_to_owned()?
    };
    let program: &mut SkMsg = bpf
        .program_mut(PROGRAM)
        .with_context(|| format!("program {PROGRAM} missing from the object"))?
        .try_into()?;
    program.load().context("loading sk_msg")?;
    let prog_fd = program.fd()?.as_fd().try_clone_to_owned()?;
    let pin = pins.root.join("links").join("sockmap").join(PROGRAM);
    attach_to_map(&pin, prog_fd.as_fd(), map_fd.as_fd())
}

/// A pinned link is updated in place; else a new link is made and pinned, or, on kernels
/// without sockmap links, the program is attached to the map itself.
fn attach_to_map(pin: &Path, prog: BorrowedFd<'_>, map: BorrowedFd<'_>) -> Result<()> {
    if pin.exists() {
        let link = bpf_sys::obj_get(pin)
            .with_context(|| format!("opening pinned link {}", pin.display()))?;
        let (map_id, attach_type) = bpf_sys::sockmap_link_info(link.as_fd())?;
        let ours = bpf_sys::map_id(map)?;
        if map_id != ours || attach_type != bpf_sys::AttachType::SkMsgVerdict as u32 {
            bail!(
                "pinned link {} is attached to map id {map_id} (type {attach_type}), not to \
                 MS_SOCKS (id {ours})",
                pin.display()
            );
        }
        bpf_sys::link_update(link.as_fd(), prog).context("BPF_LINK_UPDATE")?;
        debug!(pin = %pin.display(), "adopted sk_msg link, program replaced");
        return Ok(());
    }
    match bpf_sys::link_create(prog, map, bpf_sys::AttachType::SkMsgVerdict) {
        Ok(link) => {
            let dir = pin.parent().context("link pin has no parent")?;
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            bpf_sys::obj_pin(link.as_fd(), pin)
                .with_context(|| format!("pinning {}", pin.display()))?;
        }
        // Before Linux 6.10 sockmaps have no links.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            debug!(
                fd = map.as_raw_fd(),
                "no sockmap links: attaching to the map itself"
            );
            bpf_sys::prog_attach(prog, map, bpf_sys::AttachType::SkMsgVerdict)
                .context("BPF_PROG_ATTACH sk_msg to MS_SOCKS")?;
        }
        Err(e) => return Err(e).context("BPF_LINK_CREATE sk_msg → MS_SOCKS"),
    }
    Ok(())
}

/// Sockets in the pinned `MS_SOCKS` now (its idle size is 0).
pub fn open_sockets(pins: &Pins) -> Result<usize> {
    let socks: SockHash<_, TupleKey> = pins.open_map(names::SOCKS)?.try_into()?;
    Ok(socks.keys().count())
}

/// The pinned `MS_ACCEL_PENDING_COUNT`: connecting sides waiting for their accepting side (0
/// when idle; it errs high only where the LRU map evicted).
pub fn pending_count(pins: &Pins) -> Result<i64> {
    let count: Array<_, i64> = pins.open_map(names::ACCEL_PENDING_COUNT)?.try_into()?;
    Ok(count.get(&0, 0)?)
}

/// Offsets (bytes) of the kernel fields the sk_msg program reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub sk_msg_sk_redir: u32,
    pub sock_user_data: u32,
    pub psock_msg_tot_len: u32,
}

/// From `/sys/kernel/btf/vmlinux`. `sk_psock::msg_tot_len` (the bytes queued on a socket's
/// redirected-receive queue) is what bounding needs; a kernel without it cannot be bounded.
pub fn kernel_offsets() -> Result<Offsets> {
    let [sk_msg_sk_redir, sock_user_data, psock_msg_tot_len] = btf::kernel_offsets([
        ("sk_msg", "sk_redir"),
        ("sock", "sk_user_data"),
        ("sk_psock", "msg_tot_len"),
    ])?;
    Ok(Offsets {
        sk_msg_sk_redir,
        sock_user_data,
        psock_msg_tot_len,
    })
}
