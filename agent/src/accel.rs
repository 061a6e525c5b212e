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

use crate::{bpf_sys, datapath::Pins};

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
    let path = "/sys/kernel/btf/vmlinux";
    let data = fs::read(path).with_context(|| format!("reading {path}"))?;
    let btf = btf::Btf::parse(&data).with_context(|| format!("parsing {path}"))?;
    let field = |s: &str, m: &str| {
        btf.member_offset(s, m)
            .with_context(|| format!("the kernel has no struct {s}::{m}"))
    };
    Ok(Offsets {
        sk_msg_sk_redir: field("sk_msg", "sk_redir")?,
        sock_user_data: field("sock", "sk_user_data")?,
        psock_msg_tot_len: field("sk_psock", "msg_tot_len")?,
    })
}

/// Just enough of the BTF format (Documentation/bpf/btf.rst) to find struct member offsets.
mod btf {
    use anyhow::{Context, Result, bail, ensure};

    pub struct Btf<'a> {
        types: &'a [u8],
        strings: &'a [u8],
    }

    const MAGIC: u16 = 0xeb9f;
    const KIND_STRUCT: u32 = 4;

    fn u32_at(b: &[u8], at: usize) -> Result<u32> {
        let bytes = b.get(at..at + 4).context("truncated BTF")?;
        Ok(u32::from_le_bytes(bytes.try_into()?))
    }

    impl<'a> Btf<'a> {
        pub fn parse(data: &'a [u8]) -> Result<Self> {
            ensure!(
                data.len() >= 24 && u16::from_le_bytes([data[0], data[1]]) == MAGIC,
                "not little-endian BTF"
            );
            let hdr_len = u32_at(data, 4)? as usize;
            let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
            let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
            let section = |off: usize, len: usize| {
                data.get(hdr_len + off..hdr_len + off + len)
                    .context("BTF section out of bounds")
            };
            Ok(Self {
                types: section(type_off, type_len)?,
                strings: section(str_off, str_len)?,
            })
        }

        fn name(&self, off: u32) -> &'a [u8] {
            let rest = self.strings.get(off as usize..).unwrap_or_default();
            &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
        }

        /// Byte offset of `member` in the first struct named `strukt`.
        pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32> {
            let mut at = 0;
            while at < self.types.len() {
                let name = u32_at(self.types, at)?;
                let info = u32_at(self.types, at + 4)?;
                let (kind, vlen, kflag) = ((info >> 24) & 0x1f, info & 0xffff, info >> 31);
                let body = at + 12;
                if kind == KIND_STRUCT && self.name(name) == strukt.as_bytes() {
                    for i in 0..vlen as usize {
                        let m = body + 12 * i;
                        if self.name(u32_at(self.types, m)?) == member.as_bytes() {
                            let raw = u32_at(self.types, m + 8)?;
                            // With kind_flag: bitfield size in the top 8 bits, offset below.
                            let (bitfield, bits) = if kflag == 1 {
                                (raw >> 24, raw & 0xff_ffff)
                            } else {
                                (0, raw)
                            };
                            ensure!(
                                bitfield == 0 && bits % 8 == 0,
                                "{strukt}::{member} is a bitfield"
                            );
                            return Ok(bits / 8);
                        }
                    }
                    bail!("struct {strukt} has no member {member}");
                }
                at = body + extra_len(kind, vlen)?;
            }
            bail!("no struct {strukt}")
        }
    }

    /// Bytes that follow a type's 12-byte header, by kind.
    fn extra_len(kind: u32, vlen: u32) -> Result<usize> {
        let vlen = vlen as usize;
        Ok(match kind {
            // INT, VAR, DECL_TAG
            1 | 14 | 17 => 4,
            // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
            2 | 7..=12 | 16 | 18 => 0,
            // ARRAY
            3 => 12,
            // STRUCT, UNION, DATASEC, ENUM64
            4 | 5 | 15 | 19 => 12 * vlen,
            // ENUM, FUNC_PROTO
            6 | 13 => 8 * vlen,
            other => bail!("unknown BTF kind {other}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::btf::Btf;

    /// A BTF blob: `int`, `struct sk_psock { int a; int msg_tot_len @12; }` and, with kind_flag
    /// set, `struct bits { int c @8; int b:3 @ bit 40; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0sk_psock\0a\0msg_tot_len\0bits\0b\0c\0";
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            (strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .expect("name")
                + 1) as u32
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        push(&[name("int"), 1 << 24, 4, 32]);
        push(&[name("sk_psock"), (4 << 24) | 2, 16]);
        push(&[name("a"), 1, 0, name("msg_tot_len"), 1, 96]);
        push(&[name("bits"), (1 << 31) | (4 << 24) | 2, 16]);
        push(&[name("c"), 1, 64, name("b"), 1, (3 << 24) | 40]);
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn finds_member_offsets() {
        let data = blob();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.member_offset("sk_psock", "msg_tot_len").unwrap(), 12);
        assert_eq!(btf.member_offset("sk_psock", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("bits", "c").unwrap(), 8);
        let e = |s, m| format!("{:#}", btf.member_offset(s, m).unwrap_err());
        assert!(e("bits", "b").contains("bitfield"));
        assert!(e("sk_psock", "nope").contains("no member nope"));
        assert!(e("sock", "sk_user_data").contains("no struct sock"));
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
        let mut data = blob();
        data.truncate(30);
        assert!(Btf::parse(&data).is_err());
    }
}
