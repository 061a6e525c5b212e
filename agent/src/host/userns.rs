//! The user namespace a pod's network namespace belongs to, and its id maps. iptables' owner
//! match reads a rule's `--uid-owner`/`--gid-owner` in the user namespace that owns the
//! rule's network namespace (xt_owner maps them with `make_kuid(net->user_ns, …)`), so in a
//! user-namespaced pod (`hostUsers: false`) istio-init's 1337 is whatever host id the pod's
//! 1337 maps to. The datapath compares host ids, so the agent writes the mapped ones.
use std::{
    fs::{self, File},
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::proc::cgroup_pids;
use crate::sys::ns::owning_userns;

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("finding the user namespace of network namespace {}", .path.display())]
    Netns { path: PathBuf, source: io::Error },
    #[error(
        "network namespace {} belongs to a user namespace that no process of cgroup {} \
         runs in, so its id maps cannot be read",
        .netns.display(),
        .cgroup.display()
    )]
    NoProcess { netns: PathBuf, cgroup: PathBuf },
    #[error("reading {}", .path.display())]
    Map { path: PathBuf, source: io::Error },
}

/// One of `/proc/<pid>/uid_map` or `gid_map`: ranges of (inside, outside, count), with the
/// outside ids as this (the initial) user namespace sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap(Vec<(u32, u32, u32)>);

impl IdMap {
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace().map(|x| x.parse::<u32>().ok());
                    Some((f.next()??, f.next()??, f.next()??))
                })
                .collect(),
        )
    }

    /// The host id `id` of the namespace maps to, if it is mapped.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        self.0.iter().find_map(|&(inside, outside, count)| {
            let off = id.checked_sub(inside)?;
            (off < count).then(|| outside.checked_add(off)).flatten()
        })
    }
}

/// A user namespace's uid and gid maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMaps {
    pub uid: IdMap,
    pub gid: IdMap,
}

/// The id maps of the user namespace owning `netns`, read through a process of `cgroup` that
/// runs in it (the pod sandbox's). `None` when it is the agent's own (the host's): ids are
/// then the host's.
pub fn of_netns(netns: &Path, cgroup: &Path) -> Result<Option<IdMaps>, UsernsError> {
    let err = |source| UsernsError::Netns {
        path: netns.to_path_buf(),
        source,
    };
    let ns = File::open(netns).map_err(err)?;
    let userns = File::from(owning_userns(&ns).map_err(err)?);
    let id = |md: fs::Metadata| (md.dev(), md.ino());
    let theirs = id(userns.metadata().map_err(err)?);
    if fs::metadata("/proc/self/ns/user").is_ok_and(|m| id(m) == theirs) {
        return Ok(None);
    }
    let pid = cgroup_pids(cgroup)
        .into_iter()
        .find(|pid| fs::metadata(format!("/proc/{pid}/ns/user")).is_ok_and(|m| id(m) == theirs))
        .ok_or_else(|| UsernsError::NoProcess {
            netns: netns.to_path_buf(),
            cgroup: cgroup.to_path_buf(),
        })?;
    let read = |file: &str| {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        fs::read_to_string(&path)
            .map(|t| IdMap::parse(&t))
            .map_err(|source| UsernsError::Map { path, source })
    };
    Ok(Some(IdMaps {
        uid: read("uid_map")?,
        gid: read("gid_map")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_ids_through_ranges() {
        let m =
            IdMap::parse("         0     100000      65536\n     70000     300000          1\n");
        assert_eq!(m.to_host(0), Some(100000));
        assert_eq!(m.to_host(1337), Some(101337));
        assert_eq!(m.to_host(65535), Some(165535));
        assert_eq!(m.to_host(65536), None);
        assert_eq!(m.to_host(70000), Some(300000));
        assert_eq!(IdMap::default().to_host(0), None);
        // Never wraps.
        assert_eq!(IdMap::parse("0 4294967295 10").to_host(5), None);
    }

    #[test]
    fn the_agents_own_namespace_maps_nothing() {
        let own = Path::new("/proc/self/ns/net");
        assert_eq!(of_netns(own, Path::new("/nonexistent")).unwrap(), None);
    }
}
