//! Checking that a pod's network namespace file is one: a network namespace, and not the
//! node's own (inbound capture attached there would steer the node's traffic, not the pod's).
use std::{
    fs::{self, File},
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::sys::ns::ns_type;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {}", .path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("{} is not a network namespace", .0.display())]
    NotNetns(PathBuf),
    #[error(
        "{} is the node's own network namespace (the agent's, or init's), not a pod's",
        .0.display()
    )]
    NodeNetns(PathBuf),
}

/// Checks `path` names a network namespace other than the node's.
pub fn check_pod_netns(path: &Path) -> Result<(), NetnsError> {
    let unreadable = |source| NetnsError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let ns = File::open(path).map_err(unreadable)?;
    if ns_type(&ns).ok() != Some(libc::CLONE_NEWNET) {
        return Err(NetnsError::NotNetns(path.to_path_buf()));
    }
    let ino = ns.metadata().map_err(unreadable)?.ino();
    let node = ["/proc/self/ns/net", "/proc/1/ns/net"]
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .any(|md| md.ino() == ino);
    if node {
        return Err(NetnsError::NodeNetns(path.to_path_buf()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_own_namespace_and_other_files_are_refused() {
        let own = Path::new("/proc/self/ns/net");
        assert!(matches!(
            check_pod_netns(own),
            Err(NetnsError::NodeNetns(_))
        ));
        let mnt = Path::new("/proc/self/ns/mnt");
        assert!(matches!(check_pod_netns(mnt), Err(NetnsError::NotNetns(_))));
        let file = Path::new("/proc/self/status");
        assert!(matches!(
            check_pod_netns(file),
            Err(NetnsError::NotNetns(_))
        ));
    }
}
