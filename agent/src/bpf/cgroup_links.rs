//! The capture programs on each enrolled pod's cgroup: one bpf_link per program, pinned under
//! `links/cgroup/<pod cgroup id>/<program>`. Attached at the pod, not at the cgroup root, they
//! run for the pod's sockets only: other pods and the host pay nothing, and (child programs run
//! before their ancestors') they come first next to another agent's programs at the root. A
//! restarted agent swaps each link's program atomically (`BPF_LINK_UPDATE`); a link outlives
//! its pod's cgroup only as long as its pin.
use std::{
    collections::BTreeSet,
    fs::{self, File},
    io,
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    programs::{CgroupSock, CgroupSockAddr, CgroupSockopt, Program as AyaProgram, SockOps},
};
use tracing::{debug, info};

use super::{
    pins::Pins,
    prog_pins::{Prog, ProgPins},
};
use crate::sys::bpf::{self as bpf_sys, AttachType};

/// (program, attach type, what a failure to attach most likely means). In update order: on
/// an upgrade each link swaps its program on its own, so the readers of `MS_ORIG_DST`
/// (getsockopt, which also reads the previous layout's map) go before its writer (sockops):
/// an entry the new sockops stores is never asked of the old getsockopt. Likewise the readers
/// of `MS_DNS_SOCK` (getpeername, recvmsg) go before its writers (connect, sendmsg): no DNS
/// is redirected before its replies can be translated. And sock_create goes after sockops:
/// layout 7's sockops looked for a listener's namespace where its sock_create recorded it,
/// which this sock_create no longer does. (For a new pod the order is moot: its programs pass
/// everything until its config is written, after every link.)
const CGROUP_PROGRAMS: &[(&str, AttachType, &str)] = &[
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
    (
        "sock_create",
        AttachType::SockCreate,
        "cgroup/sock_create (Linux 4.10)",
    ),
];

/// One loaded program, ready to be attached to pods.
struct Program {
    name: &'static str,
    attach: AttachType,
    what: &'static str,
    prog: Prog,
}

/// The loaded cgroup programs and the pods' links to them.
pub struct CgroupLinks {
    /// `links/cgroup`: one directory of links per pod cgroup id.
    dir: PathBuf,
    /// `links`: where layout 5 pinned its links at the cgroup root.
    root_dir: PathBuf,
    programs: Vec<Program>,
    /// Pods whose links run this agent's programs (made or swapped by it): enrolling them again
    /// has nothing to do.
    current: BTreeSet<u64>,
}

impl CgroupLinks {
    /// Loads each of [`CGROUP_PROGRAMS`] from `bpf` (into the kernel: nothing is attached),
    /// or takes this build's from `progs`.
    pub fn load(bpf: &mut Ebpf, pins: &Pins, progs: &ProgPins) -> Result<Self> {
        let mut loaded = Vec::with_capacity(CGROUP_PROGRAMS.len());
        for (name, attach, what) in CGROUP_PROGRAMS {
            let prog = progs.get_or_load(name, || {
                let program = bpf
                    .program_mut(name)
                    .with_context(|| format!("program {name} missing from the object"))?;
                load_program(program).with_context(|| format!("loading {what}"))?;
                let fd = program.fd().with_context(|| format!("{name} has no fd"))?;
                Ok(fd.as_fd().try_clone_to_owned()?)
            })?;
            loaded.push(Program {
                name,
                attach: *attach,
                what,
                prog,
            });
        }
        Ok(Self {
            dir: pins.cgroup_links(),
            root_dir: pins.root.join("links"),
            programs: loaded,
            current: BTreeSet::new(),
        })
    }

    /// Attaches every program to the pod's cgroup `dir` (id `cgroup_id`), or swaps this
    /// agent's programs into the links a previous agent pinned for it. Until the pod's config
    /// is written the programs pass everything. All or nothing: links this call made are
    /// removed again when a later one fails.
    pub fn attach(&mut self, cgroup_id: u64, dir: &Path) -> Result<()> {
        if self.current.contains(&cgroup_id) {
            return Ok(());
        }
        let cgroup = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        // The directory the registry checked may have been replaced since (a pod's cgroup
        // removed and made again): programs must go where the pod's config is keyed.
        let id = cgroup.metadata()?.ino();
        if id != cgroup_id {
            bail!(
                "cgroup {} is another cgroup now (id {id}, enrolled as {cgroup_id})",
                dir.display()
            );
        }
        let pod_dir = self.dir.join(cgroup_id.to_string());
        let links = open_or_create_dir(&pod_dir)?;
        let mut made = Vec::new();
        for p in &self.programs {
            match attach_one(p, &links, &pod_dir, &cgroup, cgroup_id) {
                Ok(Some(pin)) => made.push(pin),
                Ok(None) => {}
                Err(e) => {
                    for pin in made {
                        let _ = fs::remove_file(pin);
                    }
                    let _ = fs::remove_dir(&pod_dir);
                    return Err(e).with_context(|| {
                        format!("attaching {} to the pod's cgroup {}", p.what, dir.display())
                    });
                }
            }
        }
        self.current.insert(cgroup_id);
        debug!(cgroup_id, "capture programs attached to the pod's cgroup");
        Ok(())
    }

    /// Detaches the pod's programs: unpinned with no fd open, the kernel detaches a link.
    pub fn detach(&mut self, cgroup_id: u64) {
        self.current.remove(&cgroup_id);
        let pod_dir = self.dir.join(cgroup_id.to_string());
        if fs::remove_dir_all(&pod_dir).is_ok() {
            debug!(cgroup_id, "capture programs detached from the pod's cgroup");
        }
    }

    /// Detaches the programs of every pod cgroup id not in `keep`: pods a previous agent
    /// enrolled that went while no agent ran. A gone cgroup's links are freed with their pins.
    pub fn detach_all_but(&mut self, keep: &BTreeSet<u64>) {
        self.current.retain(|c| keep.contains(c));
        for pod_dir in Pins::stale(&self.dir, keep) {
            let _ = fs::remove_dir_all(pod_dir);
        }
    }

    /// Whether each of the pod's links is pinned and attached to its cgroup.
    pub fn attached(&self, cgroup_id: u64) -> Result<()> {
        let pod_dir = self.dir.join(cgroup_id.to_string());
        for p in &self.programs {
            let pin = pod_dir.join(p.name);
            let link = bpf_sys::obj_get(&pin)
                .with_context(|| format!("the pod's {} link {} is gone", p.what, pin.display()))?;
            check_target(&link, &pin, cgroup_id, p.attach)?;
        }
        Ok(())
    }

    /// Swaps this agent's programs into the root links an agent of layout 5 pinned (carried
    /// by [`super::migrate`]), so that until they go every socket runs this build's code.
    /// `root_id`: the cgroup they must be attached to.
    pub fn update_root_links(&self, root_id: u64) -> Result<usize> {
        let mut n = 0;
        for p in &self.programs {
            let pin = self.root_dir.join(p.name);
            if !pin.exists() {
                continue;
            }
            swap(p, &pin, root_id)?;
            n += 1;
        }
        Ok(n)
    }

    /// Unpins the root links of layout 5, once every pod the registry enrolled has links of
    /// its own: from now on the programs run for enrolled pods only.
    pub fn retire_root_links(&self) {
        let mut n = 0;
        for p in &self.programs {
            if fs::remove_file(self.root_dir.join(p.name)).is_ok() {
                n += 1;
            }
        }
        if n > 0 {
            info!(
                links = n,
                "the cgroup root's links (layout 5) are gone: programs run in enrolled pods only"
            );
        }
    }
}

/// One program on one pod's cgroup: a pinned link of ours swaps its program, else a new link
/// is made and pinned. The pin of a link it made. The pin is opened without a look first: a
/// restart adopts 11 links a pod, and each path walk of bpffs counts at 1,000 pods.
fn attach_one(
    p: &Program,
    links: &File,
    pod_dir: &Path,
    cgroup: &File,
    cgroup_id: u64,
) -> Result<Option<PathBuf>> {
    let pin = pod_dir.join(p.name);
    match bpf_sys::obj_get_in(links.as_fd(), pod_dir, p.name) {
        Ok(link) => {
            swap_link(p, &link, &pin, cgroup_id)?;
            return Ok(None);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("opening pinned link {}", pin.display()));
        }
    }
    let link = bpf_sys::link_create(p.prog.fd.as_fd(), cgroup.as_fd(), p.attach)
        .context("BPF_LINK_CREATE")?;
    bpf_sys::obj_pin(link.as_fd(), &pin).with_context(|| format!("pinning {}", pin.display()))?;
    Ok(Some(pin))
}

/// The pod's directory of links, made if missing (a restart finds it there).
fn open_or_create_dir(dir: &Path) -> Result<File> {
    match File::open(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            File::open(dir)
        }
        r => r,
    }
    .with_context(|| format!("opening {}", dir.display()))
}

/// Swaps `p` into the link pinned at `pin`, which must be attached to `cgroup_id`.
fn swap(p: &Program, pin: &Path, cgroup_id: u64) -> Result<()> {
    let link =
        bpf_sys::obj_get(pin).with_context(|| format!("opening pinned link {}", pin.display()))?;
    swap_link(p, &link, pin, cgroup_id)
}

/// Swaps `p` into `link` (pinned at `pin`). Nothing to do where it runs `p` already (an agent
/// of this build pinned both).
fn swap_link(p: &Program, link: &OwnedFd, pin: &Path, cgroup_id: u64) -> Result<()> {
    if check_target(link, pin, cgroup_id, p.attach)? == p.prog.id {
        return Ok(());
    }
    bpf_sys::link_update(link.as_fd(), p.prog.fd.as_fd())
        .with_context(|| format!("BPF_LINK_UPDATE on {}", pin.display()))
}

fn load_program(p: &mut AyaProgram) -> Result<()> {
    match p {
        AyaProgram::CgroupSock(p) => CgroupSock::load(p)?,
        AyaProgram::CgroupSockAddr(p) => CgroupSockAddr::load(p)?,
        AyaProgram::CgroupSockopt(p) => CgroupSockopt::load(p)?,
        AyaProgram::SockOps(p) => SockOps::load(p)?,
        other => bail!("unexpected program type {:?}", other.prog_type()),
    }
    Ok(())
}

/// A pinned link must be ours for this cgroup and hook: anything else means another agent
/// instance shares the pin directory. The id of the program it runs.
fn check_target(link: &OwnedFd, pin: &Path, cgroup_id: u64, attach: AttachType) -> Result<u32> {
    let info = bpf_sys::cgroup_link_info(link.as_fd())?;
    if info.cgroup_id != cgroup_id || info.attach_type != attach as u32 {
        bail!(
            "pinned link {} is attached to cgroup id {} (type {}), not to cgroup id {cgroup_id} \
             (type {}): another agent instance uses this --bpffs-dir",
            pin.display(),
            info.cgroup_id,
            info.attach_type,
            attach as u32
        );
    }
    Ok(info.prog_id)
}
