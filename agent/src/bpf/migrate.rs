//! Upgrading the pins of the previous layout in place, with no capture gap. A starting agent
//! that finds `<bpffs-dir>/v<LAYOUT_VERSION - 1>/`:
//!
//! 1. pins each of that layout's maps into this layout's directory, under the name
//!    [`FROM_PREVIOUS`] gives it, so that the loader reuses it (the datapath keeps every pod's
//!    config, counters and socket state); a map this layout no longer has is not carried;
//! 2. pins each of its links (cgroup programs, per-pod sk_lookup, sk_msg) at the same place in
//!    this layout's directory, so that loading swaps each link's program atomically
//!    (`BPF_LINK_UPDATE`): programs are never detached, traffic never escapes. A pod's
//!    sk_lookup link is swapped when the pod is enrolled again, moments later; until then its
//!    old program keeps reading the maps it was loaded with (layout 3's `MS_INBOUND_ADDRS`,
//!    alive while a program holds it, even unpinned);
//! 3. after the swap, removes the previous layout's directory ([`retire`]).
//!
//! Layout 5 attached the cgroup programs at the cgroup root; layout 6 attaches them to each
//! pod's cgroup. The carried root links run this agent's programs (swapped at load) until the
//! registry has enrolled every pod again, each with its own links, and are unpinned then
//! ([`crate::bpf::cgroup_links::CgroupLinks::retire_root_links`]): no pod is ever without
//! programs. Meanwhile a pod's sockets run both copies, pod's first; the programs are
//! idempotent for that (a second connect() hook sees the proxy's address and passes it).
//!
//! Layout 6 ran a whole copy of sk_lookup in each pod's namespace; layout 7 runs a trampoline
//! into one shared program. Each pod's link is swapped to its trampoline (`BPF_LINK_UPDATE`)
//! when the pod is enrolled again; until then its copy keeps reading the carried maps. (Root
//! links are still handled as above: an upgrade from 5 to 6 cut short before 6's first
//! reconcile leaves them among layout 6's pins.)
//!
//! Layout 7 gave each proxy socket a second socket storage at creation, `MS_SOCK_NETNS`, for
//! the namespace it was made in; layout 8 reads that from the socket at listen(). The map is
//! not carried: each pod's old sockops keeps it until the pod is enrolled again, and its links
//! are swapped sockops first (see `cgroup_links.rs`), so no new listener ever meets an old
//! sockops that looks for a record the new sock_create no longer makes.
//!
//! A later start releases the adopted `MS_ORIG_DST_V2` once it has drained
//! ([`release_drained`]).
//!
//! Every step is idempotent: an agent killed half-way leaves both directories, and the next
//! one finishes the job. A map whose key or value changed cannot be reused as it is: it gets a
//! new name here and the new programs read it as a fallback until it drains (as `MS_ORIG_DST`
//! from layout 2), or a copy step of its own. Maps new in this layout are created by the loader.
use std::{
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};
use meshsteer_common::maps::{LAYOUT_VERSION, OrigDst, TupleKey, names};
use tracing::info;

use super::pins::Pins;
use crate::sys::bpf as bpf_sys;

/// What becomes of one map of the previous layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carry {
    /// Same key, value, type and size: reused under its name.
    Same,
    /// Reused under another name (layout 2's LRU `MS_ORIG_DST` became layout 3's
    /// `MS_ORIG_DST_V2`, read until its connections are gone).
    #[allow(dead_code)]
    As(&'static str),
    /// Not carried: this layout has no such map. Programs of the previous layout that still
    /// run hold it until their links are swapped. (Layout 3's `MS_INBOUND_ADDRS` was, by
    /// layout 4; layout 7's `MS_SOCK_NETNS` is, by layout 8.)
    Drop,
}

/// Layout 7's maps, and how each is carried into layout 8: all as they are but
/// `MS_SOCK_NETNS`, which layout 8 no longer has. (Layout 8 adds `MS_ACCEL_PENDING_COUNT`,
/// which the loader creates at 0: a connection mid-handshake at the upgrade, whose connecting
/// side the old sockops put in `MS_ACCEL_PENDING` uncounted, stays on the normal path.)
/// `MS_SK_LOOKUP_SLOT` and `MS_SK_LOOKUP_PROG` must be carried by every later layout too: a
/// pod's trampoline names them, and the kernel empties a program array when its last pin goes.
pub const FROM_PREVIOUS: &[(&str, Carry)] = &[
    (names::PODS, Carry::Same),
    (names::PORTS, Carry::Same),
    (names::CIDR_EXCLUDE, Carry::Same),
    (names::CIDR_INCLUDE, Carry::Same),
    (names::LOCAL_ADDRS, Carry::Same),
    (names::SOCK_STATE, Carry::Same),
    (names::ORIG_DST, Carry::Same),
    (names::ORIG_DST_V2, Carry::Same),
    (names::POD_LIVE, Carry::Same),
    (names::POD_STATS, Carry::Same),
    (names::NODE_STATS, Carry::Same),
    (names::POD_NETNS, Carry::Same),
    (names::SK_LOOKUP_PODS, Carry::Same),
    (names::SK_LOOKUP_SLOT, Carry::Same),
    (names::SK_LOOKUP_PROG, Carry::Same),
    (SOCK_NETNS_V7, Carry::Drop),
    (names::LISTENERS, Carry::Same),
    (names::TRACE_CTL, Carry::Same),
    (names::TRACE, Carry::Same),
    (names::SOCKS, Carry::Same),
    (names::ACCEL_STATE, Carry::Same),
    (names::ACCEL_PENDING, Carry::Same),
    (names::ACCEL_CFG, Carry::Same),
    (names::DNS_SERVERS, Carry::Same),
    (names::DNS_SOCK, Carry::Same),
];

/// Layout 7's socket storage for the namespace a proxy socket was made in.
const SOCK_NETNS_V7: &str = "MS_SOCK_NETNS";

/// The layout this agent can upgrade from.
pub const PREVIOUS: u32 = LAYOUT_VERSION - 1;

/// The previous layout's pin directory under `bpffs_dir`.
pub fn previous_root(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join(format!("v{PREVIOUS}"))
}

/// Steps 1 and 2: the previous layout's maps and links pinned into `pins`, where the loader
/// and the link updates find them. Returns the previous directory, if there is one.
pub fn carry_over(bpffs_dir: &Path, pins: &Pins) -> Result<Option<PathBuf>> {
    let old = previous_root(bpffs_dir);
    if !old.is_dir() {
        return Ok(None);
    }
    info!(from = %old.display(), to = %pins.root.display(), "upgrading the pins of layout {PREVIOUS}");
    for (name, carry) in FROM_PREVIOUS {
        let new_name = match carry {
            Carry::Same => name,
            Carry::As(new) => new,
            Carry::Drop => continue,
        };
        repin(&old.join("maps").join(name), &pins.map(new_name))?;
    }
    let links = old.join("links");
    for file in files_under(&links)? {
        let rel = file.strip_prefix(&links).unwrap_or(&file);
        repin(&file, &pins.root.join("links").join(rel))?;
    }
    Ok(Some(old))
}

/// Step 3, once every carried link runs this agent's programs: the previous layout's pins go.
/// Its maps and links live on through this layout's pins.
pub fn retire(old: &Path) -> Result<()> {
    fs::remove_dir_all(old).with_context(|| format!("removing {}", old.display()))?;
    info!(path = %old.display(), "layout {PREVIOUS} retired");
    Ok(())
}

/// Once drained, the adopted layout-2 `MS_ORIG_DST` is unpinned before loading: the loader
/// then makes its one-entry placeholder again, and the old map's memory goes. Only layout-2
/// programs ever stored into it and none runs any more (the upgrade swapped them all), so an
/// empty one stays empty. Not in the run that upgrades: its old programs still run until the
/// swap.
pub fn release_drained(pins: &Pins) -> Result<()> {
    let path = pins.map(names::ORIG_DST_V2);
    if !path.exists() {
        return Ok(());
    }
    let info = aya::maps::MapInfo::from_pin(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    if info.max_entries() <= 1 {
        return Ok(());
    }
    let old: HashMap<MapData, TupleKey, OrigDst> = pins.open_map(names::ORIG_DST_V2)?.try_into()?;
    if old.keys().next().is_some() {
        return Ok(());
    }
    fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
    info!(
        map = names::ORIG_DST_V2,
        "the adopted layout-{PREVIOUS} map is drained: released"
    );
    Ok(())
}

/// Pins the object pinned at `from` at `to` too, unless `to` is pinned already (a previous
/// attempt) or `from` is not there (an object the previous agent never pinned).
fn repin(from: &Path, to: &Path) -> Result<()> {
    if to.exists() || !from.exists() {
        return Ok(());
    }
    let fd = bpf_sys::obj_get(from).with_context(|| format!("opening {}", from.display()))?;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    bpf_sys::obj_pin(fd.as_fd(), to)
        .with_context(|| format!("pinning {} at {}", from.display(), to.display()))
}

/// Every file below `dir` (pins: bpffs holds no other files), depth first.
pub(super) fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let path = e.path();
        if e.file_type()?.is_dir() {
            out.extend(files_under(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_of_the_previous_layout_is_carried_to_a_map_of_this_one() {
        for (name, carry) in FROM_PREVIOUS {
            let to = match carry {
                Carry::Same => name,
                Carry::As(new) => new,
                Carry::Drop => {
                    assert!(!names::PINNED.contains(name), "{name} is dropped");
                    continue;
                }
            };
            assert!(names::PINNED.contains(to), "{name} → {to}");
        }
        let carried: Vec<&str> = FROM_PREVIOUS.iter().map(|(n, _)| *n).collect();
        // The maps this layout added are the only ones without a predecessor.
        let new: Vec<&str> = names::PINNED
            .iter()
            .copied()
            .filter(|n| {
                !FROM_PREVIOUS
                    .iter()
                    .any(|(_, c)| matches!(c, Carry::As(to) if to == n))
                    && !carried.contains(n)
            })
            .collect();
        assert_eq!(new, [names::ACCEL_PENDING_COUNT]);
    }

    #[test]
    fn files_under_walks_subdirectories() {
        let dir = std::env::temp_dir().join(format!("ms-migrate-{}", std::process::id()));
        fs::create_dir_all(dir.join("netns")).unwrap();
        fs::write(dir.join("connect4"), "").unwrap();
        fs::write(dir.join("netns").join("42"), "").unwrap();
        let mut found = files_under(&dir).unwrap();
        found.sort();
        assert_eq!(found, [dir.join("connect4"), dir.join("netns").join("42")]);
        fs::remove_dir_all(&dir).unwrap();
        assert!(files_under(&dir).unwrap().is_empty());
    }
}
