//! The few bpf(2) commands aya does not expose in the form we need: creating, pinning and
//! atomically updating cgroup links (an agent restart swaps programs under a pinned link with
//! BPF_LINK_UPDATE, so capture never lapses), and reading a link's target cgroup.
use std::{
    ffi::{CStr, CString},
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

const BPF_PROG_ATTACH: u32 = 8;
const BPF_OBJ_PIN: u32 = 6;
const BPF_OBJ_GET: u32 = 7;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_PROG_LOAD: u32 = 5;
const BPF_LINK_CREATE: u32 = 28;
const BPF_LINK_UPDATE: u32 = 29;

/// Attach types (include/uapi/linux/bpf.h), a stable ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum AttachType {
    SockCreate = 2,
    SockOps = 3,
    SkMsgVerdict = 7,
    Connect4 = 10,
    Connect6 = 11,
    UdpSendmsg4 = 14,
    UdpSendmsg6 = 15,
    UdpRecvmsg4 = 19,
    UdpRecvmsg6 = 20,
    GetSockopt = 21,
    GetPeername4 = 29,
    GetPeername6 = 30,
    SkLookup = 36,
}

impl AttachType {
    const ALL: [Self; 13] = [
        Self::SockCreate,
        Self::SockOps,
        Self::SkMsgVerdict,
        Self::Connect4,
        Self::Connect6,
        Self::UdpSendmsg4,
        Self::UdpSendmsg6,
        Self::UdpRecvmsg4,
        Self::UdpRecvmsg6,
        Self::GetSockopt,
        Self::GetPeername4,
        Self::GetPeername6,
        Self::SkLookup,
    ];

    /// The attach type the kernel reports (a link's info), if it is one of ours.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u32 == raw)
    }
}

/// Program types (include/uapi/linux/bpf.h) of the programs loaded here rather than by aya.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ProgType {
    SkLookup = 30,
}

/// One eBPF instruction, `struct bpf_insn`: opcode, destination and source registers (low and
/// high nibble), offset, immediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// `union bpf_attr`, as plain words: every command we use fits in its first 32 bytes and the
/// kernel requires the rest to be zero.
#[repr(C, align(8))]
struct Attr([u32; 32]);

impl Attr {
    /// Sets the 64-bit field (a user pointer, `__aligned_u64`) at 32-bit word `at`.
    fn set_ptr(&mut self, at: usize, ptr: *const u8) {
        let ptr = ptr as u64;
        self.0[at] = ptr as u32;
        self.0[at + 1] = (ptr >> 32) as u32;
    }
}

fn bpf(cmd: u32, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr of the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            size_of::<Attr>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_result(r: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(r as i32) }
}

fn path_cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// Loads a program of hand-written instructions (aya loads programs only from an object
/// file), named `name` (at most 15 bytes). On failure the error carries the verifier's log.
pub fn prog_load(
    ty: ProgType,
    attach: AttachType,
    name: &str,
    insns: &[Insn],
) -> io::Result<OwnedFd> {
    match load_with_log(ty, attach, name, insns, &mut []) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            // Again, for the verifier's reasons (only when it refused: the log costs).
            let mut log = vec![0u8; 1 << 16];
            match load_with_log(ty, attach, name, insns, &mut log) {
                Ok(fd) => Ok(fd),
                Err(_) => {
                    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                    let log = String::from_utf8_lossy(&log[..end]);
                    Err(io::Error::new(e.kind(), format!("{e}: {}", log.trim_end())))
                }
            }
        }
    }
}

fn load_with_log(
    ty: ProgType,
    attach: AttachType,
    name: &str,
    insns: &[Insn],
    log: &mut [u8],
) -> io::Result<OwnedFd> {
    const LICENSE: &[u8] = b"GPL\0";
    // union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level, log_size,
    // log_buf, kern_version, prog_flags, prog_name[16] (words 12 to 15), prog_ifindex,
    // expected_attach_type.
    let mut a = Attr([0; 32]);
    a.0[0] = ty as u32;
    a.0[1] = u32::try_from(insns.len()).map_err(io::Error::other)?;
    a.set_ptr(2, insns.as_ptr().cast());
    a.set_ptr(4, LICENSE.as_ptr());
    if !log.is_empty() {
        a.0[6] = 1;
        a.0[7] = u32::try_from(log.len()).map_err(io::Error::other)?;
        a.set_ptr(8, log.as_mut_ptr());
    }
    let mut prog_name = [0u8; 16];
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    for (i, word) in prog_name.chunks_exact(4).enumerate() {
        a.0[12 + i] = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
    }
    a.0[17] = attach as u32;
    bpf(BPF_PROG_LOAD, &mut a).map(fd_result)
}

/// Attaches `prog` to `target` (a cgroup fd) through a new bpf_link.
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    ty: AttachType,
) -> io::Result<OwnedFd> {
    let mut a = Attr([0; 32]);
    a.0[0] = prog.as_raw_fd() as u32;
    a.0[1] = target.as_raw_fd() as u32;
    a.0[2] = ty as u32;
    bpf(BPF_LINK_CREATE, &mut a).map(fd_result)
}

/// Swaps the program behind a link atomically: no packet or connect() sees neither.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut a = Attr([0; 32]);
    a.0[0] = link.as_raw_fd() as u32;
    a.0[1] = prog.as_raw_fd() as u32;
    bpf(BPF_LINK_UPDATE, &mut a).map(drop)
}

/// Attaches `prog` to `target` without a link (sk_msg to a sockmap on kernels before 6.10):
/// the attachment lasts as long as the target.
pub fn prog_attach(prog: BorrowedFd<'_>, target: BorrowedFd<'_>, ty: AttachType) -> io::Result<()> {
    let mut a = Attr([0; 32]);
    a.0[0] = target.as_raw_fd() as u32;
    a.0[1] = prog.as_raw_fd() as u32;
    a.0[2] = ty as u32;
    bpf(BPF_PROG_ATTACH, &mut a).map(drop)
}

pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let p = path_cstring(path)?;
    let mut a = Attr([0; 32]);
    a.set_ptr(0, p.as_ptr().cast());
    a.0[2] = fd.as_raw_fd() as u32;
    bpf(BPF_OBJ_PIN, &mut a).map(drop)
}

pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    obj_get_at(&path_cstring(path)?, None)
}

/// `BPF_OBJ_GET` of `path`, relative to `dir` when given (`BPF_F_PATH_FD`).
fn obj_get_at(path: &CStr, dir: Option<BorrowedFd<'_>>) -> io::Result<OwnedFd> {
    let mut a = Attr([0; 32]);
    a.set_ptr(0, path.as_ptr().cast());
    if let Some(dir) = dir {
        a.0[3] = BPF_F_PATH_FD;
        a.0[4] = dir.as_raw_fd() as u32;
    }
    bpf(BPF_OBJ_GET, &mut a).map(fd_result)
}

/// `BPF_F_PATH_FD` (Linux 6.5): `pathname` is relative to `path_fd`.
const BPF_F_PATH_FD: u32 = 1 << 14;

/// Set once a kernel refused `BPF_F_PATH_FD`: from then on paths are walked whole.
static NO_PATH_FD: AtomicBool = AtomicBool::new(false);

/// The object pinned at `name` in the directory `dir` (open at `dir_path`). Looked up from
/// `dir` where the kernel can (Linux 6.5): a restart opens a dozen pins a pod, and walking
/// each deep bpffs path from `/` was a tenth of it at 1,000 pods. Older kernels walk
/// `dir_path/name`.
pub fn obj_get_in(dir: BorrowedFd<'_>, dir_path: &Path, name: &str) -> io::Result<OwnedFd> {
    if !NO_PATH_FD.load(Ordering::Relaxed) {
        let p = CString::new(name).map_err(io::Error::other)?;
        match obj_get_at(&p, Some(dir)) {
            // An unknown flag: this kernel predates it.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                NO_PATH_FD.store(true, Ordering::Relaxed)
            }
            r => return r,
        }
    }
    obj_get(&dir_path.join(name))
}

/// What a cgroup link is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLinkInfo {
    pub prog_id: u32,
    pub cgroup_id: u64,
    pub attach_type: u32,
}

/// The id of the program a link of any type runs (`struct bpf_link_info`: type, id, prog_id).
pub fn link_prog_id(link: BorrowedFd<'_>) -> io::Result<u32> {
    Ok((link_info(link)?[1] & 0xffff_ffff) as u32)
}

pub fn cgroup_link_info(link: BorrowedFd<'_>) -> io::Result<CgroupLinkInfo> {
    // struct bpf_link_info: type, id, prog_id, then (8-aligned) cgroup_id, attach_type.
    let info = link_info(link)?;
    Ok(CgroupLinkInfo {
        prog_id: (info[1] & 0xffff_ffff) as u32,
        cgroup_id: info[2],
        attach_type: (info[3] & 0xffff_ffff) as u32,
    })
}

/// `struct bpf_link_info` as raw words (large enough for every link type we read).
fn link_info(link: BorrowedFd<'_>) -> io::Result<[u64; 8]> {
    obj_info(link)
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `N` raw words (`bpf_link_info`, `bpf_map_info`, ...).
fn obj_info<const N: usize>(fd: BorrowedFd<'_>) -> io::Result<[u64; N]> {
    let mut info = [0u64; N];
    obj_info_into(fd, &mut info)?;
    Ok(info)
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `info`, whose pointer fields (if any) the caller has set to
/// buffers that outlive the call.
fn obj_info_into(fd: BorrowedFd<'_>, info: &mut [u64]) -> io::Result<()> {
    let mut a = Attr([0; 32]);
    a.0[0] = fd.as_raw_fd() as u32;
    a.0[1] = size_of_val(info) as u32;
    a.set_ptr(2, info.as_mut_ptr().cast());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    Ok(())
}

/// A map's id (`struct bpf_map_info`: type, then id).
pub fn map_id(map: BorrowedFd<'_>) -> io::Result<u32> {
    Ok((obj_info::<8>(map)?[0] >> 32) as u32)
}

const BPF_PROG_GET_FD_BY_ID: u32 = 13;
const BPF_ENABLE_STATS: u32 = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// Turns on the kernel's per-program run statistics (`run_cnt`, `run_time_ns`) for as long as
/// the returned fd is open: the `kernel.bpf_stats_enabled` sysctl without changing it for
/// everyone else, and off again however the holder exits.
pub fn enable_run_stats() -> io::Result<OwnedFd> {
    let mut a = Attr([0; 32]);
    a.0[0] = BPF_STATS_RUN_TIME;
    bpf(BPF_ENABLE_STATS, &mut a).map(fd_result)
}

/// How often a program ran, and for how long, since it was loaded (counted only while run
/// statistics are on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgRuns {
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// A program by id (the one a pinned link runs, say), held open.
pub fn prog_by_id(prog_id: u32) -> io::Result<OwnedFd> {
    let mut a = Attr([0; 32]);
    a.0[0] = prog_id;
    bpf(BPF_PROG_GET_FD_BY_ID, &mut a).map(fd_result)
}

/// The name (as the kernel keeps it: at most 15 bytes) and run statistics of the program with
/// id `prog_id`.
pub fn prog_name_runs(prog_id: u32) -> io::Result<(String, ProgRuns)> {
    let fd = prog_by_id(prog_id)?;
    // struct bpf_prog_info: the NUL-padded name is its 9th and 10th 8-byte words (offset 64),
    // run_time_ns and run_cnt its 25th and 26th.
    let info = obj_info::<28>(fd.as_fd())?;
    Ok((
        info_name(&info[8..10]),
        ProgRuns {
            run_time_ns: info[24],
            run_cnt: info[25],
        },
    ))
}

/// The map a sockmap link is attached to, and its attach type.
pub fn sockmap_link_info(link: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    // struct bpf_link_info: type, id, prog_id, then (8-aligned) map_id, attach_type.
    let info = link_info(link)?;
    Ok(((info[2] & 0xffff_ffff) as u32, (info[2] >> 32) as u32))
}

/// The network namespace (inode) a netns link is attached to, and its attach type.
pub fn netns_link_info(link: BorrowedFd<'_>) -> io::Result<(u64, u32)> {
    // struct bpf_link_info: type, id, prog_id, then (8-aligned) netns_ino, attach_type.
    let info = link_info(link)?;
    Ok((info[2] & 0xffff_ffff, (info[2] >> 32) as u32))
}

const BPF_LINK_GET_FD_BY_ID: u32 = 30;
const BPF_LINK_GET_NEXT_ID: u32 = 31;
const BPF_LINK_TYPE_CGROUP: u32 = 3;
const BPF_LINK_TYPE_NETNS: u32 = 5;

/// Ids of every netns link in the kernel attached to the namespace with inode `netns_ino`: the
/// kernel's own view, independent of our pins.
pub fn netns_links(netns_ino: u64) -> io::Result<Vec<u32>> {
    links_where(|info| {
        (info[0] & 0xffff_ffff) as u32 == BPF_LINK_TYPE_NETNS && info[2] & 0xffff_ffff == netns_ino
    })
}

/// Ids of every cgroup link in the kernel attached to the cgroup with id `cgroup_id` (the
/// kernel's view, as for [`netns_links`]).
pub fn cgroup_links(cgroup_id: u64) -> io::Result<Vec<u32>> {
    links_where(|info| {
        (info[0] & 0xffff_ffff) as u32 == BPF_LINK_TYPE_CGROUP && info[2] == cgroup_id
    })
}

/// Ids of the kernel's links whose raw `bpf_link_info` satisfies `wanted`.
fn links_where(wanted: impl Fn(&[u64; 8]) -> bool) -> io::Result<Vec<u32>> {
    let mut found = Vec::new();
    let mut id = 0u32;
    loop {
        let mut a = Attr([0; 32]);
        a.0[0] = id;
        match bpf(BPF_LINK_GET_NEXT_ID, &mut a) {
            Ok(_) => id = a.0[1],
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(found),
            Err(e) => return Err(e),
        }
        let mut g = Attr([0; 32]);
        g.0[0] = id;
        let Ok(fd) = bpf(BPF_LINK_GET_FD_BY_ID, &mut g).map(fd_result) else {
            continue;
        };
        if link_info(fd.as_fd()).is_ok_and(|info| wanted(&info)) {
            found.push(id);
        }
    }
}

/// An object's NUL-padded `char name[16]` (`BPF_OBJ_NAME_LEN`), from the info words that hold it.
fn info_name(words: &[u64]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let name = bytes.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(name).into_owned()
}

const BPF_MAP_LOOKUP_ELEM: u32 = 1;

/// The id of the program at `index` of a program array (the kernel answers user space with
/// ids, not fds); None where the entry is empty.
pub fn prog_array_entry(map: BorrowedFd<'_>, index: u32) -> io::Result<Option<u32>> {
    let mut id = 0u32;
    let mut a = Attr([0; 32]);
    a.0[0] = map.as_raw_fd() as u32;
    a.set_ptr(2, (&raw const index).cast());
    a.set_ptr(4, (&raw mut id).cast());
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
        Ok(_) => Ok(Some(id)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A program's id (`struct bpf_prog_info`: type, then id).
pub fn prog_id(prog: BorrowedFd<'_>) -> io::Result<u32> {
    Ok((obj_info::<8>(prog)?[0] >> 32) as u32)
}

const BPF_MAP_UPDATE_ELEM: u32 = 2;

/// Puts `prog` at `index` of a program array, replacing what was there in one step (aya's
/// `ProgramArray::set` takes only programs aya loaded itself, not one reopened from a pin).
pub fn prog_array_set(map: BorrowedFd<'_>, index: u32, prog: BorrowedFd<'_>) -> io::Result<()> {
    let fd = prog.as_raw_fd() as u32;
    let mut a = Attr([0; 32]);
    a.0[0] = map.as_raw_fd() as u32;
    a.set_ptr(2, (&raw const index).cast());
    a.set_ptr(4, (&raw const fd).cast());
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}
