//! This build's programs, pinned under `progs/<build key>/` so that a restart of the same build
//! reuses them instead of loading them again: no verifier run at start, and every pod's links
//! already run them, so nothing is swapped (a full node's restart otherwise spent most of its
//! time in 12 `BPF_LINK_UPDATE`s a pod). Each pod's sk_lookup trampoline is pinned too, by slot.
//!
//! The key covers everything a loaded program depends on: the object's bytes, the values the
//! agent sets at load (kernel offsets), and the ids of the pinned maps the programs reference (a
//! map replaced under its pin makes a new key). Any other key's directory is another build's:
//! removed at start, while its programs live on in the links that run them until they are
//! swapped.
use std::{
    collections::BTreeSet,
    fs,
    hash::{DefaultHasher, Hash, Hasher},
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
};

use anyhow::{Context, Result};
use meshsteer_common::maps::names;
use tracing::{debug, info};

use super::pins::Pins;
use crate::sys::bpf as bpf_sys;

/// The subdirectory of the trampolines.
const TRAMPOLINES: &str = "sk_lookup";

/// Where this build's programs are pinned.
#[derive(Clone, Debug)]
pub struct ProgPins {
    dir: PathBuf,
}

/// A program, and its id (what a link reports it runs).
pub struct Prog {
    pub fd: OwnedFd,
    pub id: u32,
}

impl ProgPins {
    /// This build's directory, with `settings` the load-time values (their `Debug` form). Other
    /// builds' directories go.
    pub fn open(pins: &Pins, object: &[u8], settings: &[&dyn std::fmt::Debug]) -> Result<Self> {
        let mut h = DefaultHasher::new();
        object.hash(&mut h);
        for s in settings {
            format!("{s:?}").hash(&mut h);
        }
        for name in names::PINNED {
            let map = bpf_sys::obj_get(&pins.map(name))
                .with_context(|| format!("opening {}", pins.map(name).display()))?;
            bpf_sys::map_id(map.as_fd())?.hash(&mut h);
        }
        let key = format!("{:016x}", h.finish());
        let base = pins.programs();
        if let Ok(entries) = fs::read_dir(&base) {
            for e in entries.flatten() {
                if e.file_name() != key.as_str() {
                    let _ = fs::remove_dir_all(e.path());
                    info!(build = ?e.file_name(), "another build's pinned programs removed");
                }
            }
        }
        let dir = base.join(key);
        let progs = Self { dir };
        fs::create_dir_all(progs.trampolines())
            .with_context(|| format!("creating {}", progs.dir.display()))?;
        Ok(progs)
    }

    /// The program pinned as `name` by an agent of this build, else `load`'s, pinned now.
    pub fn get_or_load(&self, name: &str, load: impl FnOnce() -> Result<OwnedFd>) -> Result<Prog> {
        let pin = self.dir.join(name);
        let fd = match bpf_sys::obj_get(&pin) {
            Ok(fd) => {
                debug!(program = name, "reusing this build's pinned program");
                fd
            }
            Err(_) => {
                let fd = load()?;
                match bpf_sys::obj_pin(fd.as_fd(), &pin) {
                    Ok(()) => fd,
                    // Pinned meanwhile by the other thread that loads trampolines: the same
                    // program; the pinned one is the one every later lookup finds.
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => bpf_sys::obj_get(&pin)
                        .with_context(|| format!("opening {}", pin.display()))?,
                    Err(e) => {
                        return Err(e).with_context(|| format!("pinning {}", pin.display()));
                    }
                }
            }
        };
        let id = bpf_sys::prog_id(fd.as_fd())?;
        Ok(Prog { fd, id })
    }

    /// The trampoline of sk_lookup slot `slot`, as [`ProgPins::get_or_load`].
    pub fn trampoline(&self, slot: u32, load: impl FnOnce() -> Result<OwnedFd>) -> Result<Prog> {
        self.get_or_load(&format!("{TRAMPOLINES}/{slot}"), load)
    }

    /// Unpins slot `slot`'s trampoline: a deleted pod leaves nothing behind (beyond the
    /// slots kept loaded, [`super::preload`]).
    pub fn forget_trampoline(&self, slot: u32) {
        let _ = fs::remove_file(self.trampolines().join(slot.to_string()));
    }

    /// The slots whose trampolines this build has pinned.
    pub fn pinned_trampolines(&self) -> BTreeSet<u32> {
        let Ok(entries) = fs::read_dir(self.trampolines()) else {
            return BTreeSet::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// Unpins the trampolines of every slot `owned` rejects.
    pub fn forget_trampolines(&self, owned: impl Fn(u32) -> bool) {
        let Ok(entries) = fs::read_dir(self.trampolines()) else {
            return;
        };
        for e in entries.flatten() {
            let slot = e.file_name().to_str().and_then(|s| s.parse().ok());
            if slot.is_none_or(|s| !owned(s)) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Where the trampolines are pinned, by slot.
    fn trampolines(&self) -> PathBuf {
        self.dir.join(TRAMPOLINES)
    }
}
