//! Stale pod cgroups. On hybrid hosts (cgroup v1 controllers, cgroup2 beside them at
//! `…/unified`) the kubelet removes a pod's cgroups from the v1 hierarchies only; runc removes
//! the container leaves from cgroup2 but not the pod level, so an empty `pod<uid>` directory
//! stays behind there for every deleted pod. The agent removes the ones it enrolled, once the
//! pod is deleted from the API and the directory holds no process and no child: `rmdir` only
//! (the kernel refuses a cgroup in use anyway), only cgroupfs-driver pod directories under the
//! cgroup root (systemd owns its `.slice` units and removes them itself), and never one a
//! pod the agent tracks resolves to.
use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tracing::{debug, info, info_span, warn};

use crate::host::cgroup::in_use;

/// How long a deleted pod's directory is watched for becoming empty (its containers may take
/// their grace period to stop, or the pod was force-deleted while still running).
const KEEP_TRYING: Duration = Duration::from_secs(300);
/// How often each directory is looked at.
const EVERY: Duration = Duration::from_secs(1);

struct Pending {
    pod: String,
    dir: PathBuf,
    until: Instant,
    next: Instant,
}

pub(super) struct Reaper {
    pending: Vec<Pending>,
    remove: fn(&Path) -> io::Result<()>,
}

impl Reaper {
    pub fn new() -> Self {
        Self {
            pending: Vec::new(),
            remove: |dir| std::fs::remove_dir(dir),
        }
    }

    /// With another way to remove a directory (the unit tests' plain directories are not
    /// cgroups, whose interface files go with them).
    #[cfg(test)]
    pub fn with_remove(remove: fn(&Path) -> io::Result<()>) -> Self {
        Self {
            pending: Vec::new(),
            remove,
        }
    }

    /// The pod-level cgroup `dir` of deleted pod `pod` (checked by the caller to be a kubelet
    /// cgroupfs pod directory under the root), to be removed once empty.
    pub fn deleted(&mut self, pod: String, dir: PathBuf, now: Instant) {
        self.pending.retain(|p| p.dir != dir);
        self.pending.push(Pending {
            pod,
            dir,
            until: now + KEEP_TRYING,
            next: now,
        });
    }

    /// Directories still watched.
    #[cfg(test)]
    pub fn pending(&self) -> Vec<&Path> {
        self.pending.iter().map(|p| p.dir.as_path()).collect()
    }

    /// Looks at each directory that is due; `tracked` says which a tracked pod resolves to.
    pub fn poll(&mut self, now: Instant, tracked: impl Fn(&Path) -> bool) {
        let remove = self.remove;
        self.pending.retain_mut(|p| {
            if now < p.next {
                return true;
            }
            p.next = now + EVERY;
            let _g = info_span!("pod", pod = %p.pod).entered();
            if !p.dir.exists() {
                return false; // the kubelet or the runtime removed it
            }
            if tracked(&p.dir) {
                // A pod with the same UID (a static pod's config hash) is back: it is its.
                debug!(cgroup = %p.dir.display(), "cgroup of a deleted pod reused; kept");
                return false;
            }
            if in_use(&p.dir) {
                if now >= p.until {
                    warn!(cgroup = %p.dir.display(), "cgroup of a deleted pod still in use; left");
                    return false;
                }
                return true;
            }
            match remove(&p.dir) {
                Ok(()) => {
                    info!(cgroup = %p.dir.display(), "removed the empty cgroup of a deleted pod");
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                // EBUSY/ENOTEMPTY: something moved in since the look; tried again later.
                Err(e) if now < p.until => {
                    debug!(cgroup = %p.dir.display(), error = %e, "not removed yet");
                    true
                }
                Err(e) => {
                    warn!(cgroup = %p.dir.display(), error = %e, "could not remove the cgroup of a deleted pod");
                    false
                }
            }
        });
    }
}
