//! Where pods come from: the pod-spec directory, or the Kubernetes API server
//! ([`crate::kube_source`]).
//!
//! The directory is watched with inotify, so a file added, changed or deleted takes effect at
//! once (about a millisecond), and polled every 50 ms as well: the poll never misses a change
//! (inotify queue overflow, an editor's rename dance, a directory replaced under us) and
//! costs a readdir and a stat per file. Either way the same scan decides what changed.
use std::{
    collections::BTreeMap,
    ffi::CString,
    fs,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;

use crate::{kube_source::KubePods, podspec::PodSpec};

pub const POLL: Duration = Duration::from_millis(50);

/// What identifies a version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

/// A pod its source knows of but cannot give a spec for (unreadable, invalid, or not ready
/// yet), with the name `meshsteer status` shows it under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub name: String,
    pub reason: String,
}

/// One pod of a source appeared, changed or went away. Pods are keyed by where they come from:
/// a spec file's path, or `k8s://<namespace>/<name>` for the Kubernetes source.
pub enum Change {
    Upsert(PathBuf, Box<Result<PodSpec, Rejected>>),
    Remove(PathBuf),
}

/// Changes from one look at a source.
pub struct Batch {
    pub changes: Vec<Change>,
    /// The source listed all its pods: every pod it did not name is gone, so what a previous
    /// agent enrolled for pods that no longer exist can be forgotten.
    pub complete: bool,
}

/// The agent's pod source.
pub enum Source {
    Dir(PodDir),
    Kubernetes(KubePods),
}

impl Source {
    /// What polling finds, every [`POLL`]: the directory's changes (always a complete
    /// listing), or the Kubernetes pods whose resolution is worth retrying.
    pub fn poll(&mut self) -> Batch {
        match self {
            Self::Dir(dir) => Batch {
                changes: dir.scan(),
                complete: true,
            },
            Self::Kubernetes(kube) => Batch {
                changes: kube.poll(),
                complete: false,
            },
        }
    }

    /// Changes the source reports by itself: inotify events on the directory, Kubernetes
    /// watch events. Cancel-safe.
    pub async fn pushed(&mut self) -> Result<Batch> {
        match self {
            Self::Dir(dir) => {
                dir.notified().await;
                Ok(Batch {
                    changes: dir.scan(),
                    complete: true,
                })
            }
            Self::Kubernetes(kube) => kube.recv().await,
        }
    }
}

pub struct PodDir {
    dir: PathBuf,
    seen: BTreeMap<PathBuf, Stamp>,
    /// inotify on the directory (None: polling only, e.g. inotify instances exhausted).
    events: Option<AsyncFd<OwnedFd>>,
}

impl PodDir {
    /// Must run inside the tokio runtime (the inotify fd is registered with it).
    pub fn new(dir: &Path) -> Self {
        let events = watch(dir)
            .inspect_err(|e| warn!(dir = %dir.display(), error = %e, "no inotify; polling only"))
            .ok();
        Self {
            dir: dir.to_path_buf(),
            seen: BTreeMap::new(),
            events,
        }
    }

    /// Waits for inotify to report something in the directory, and drains its events (what
    /// changed is decided by the scan that follows). Never returns without inotify.
    async fn notified(&mut self) {
        let Some(fd) = &self.events else {
            return std::future::pending().await;
        };
        let Ok(mut guard) = fd.readable().await else {
            return std::future::pending().await;
        };
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into our own buffer from our own non-blocking inotify fd.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
        }
        guard.clear_ready();
    }

    /// Changes since the last scan.
    pub fn scan(&mut self) -> Vec<Change> {
        let mut now = BTreeMap::new();
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let path = e.path();
                let spec_like = path
                    .extension()
                    .is_some_and(|x| x == "yaml" || x == "yml" || x == "json");
                let hidden = e.file_name().to_string_lossy().starts_with('.');
                if !spec_like || hidden {
                    continue;
                }
                if let Ok(md) = fs::metadata(&path)
                    && md.is_file()
                {
                    let mtime_ns =
                        i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec());
                    now.insert(
                        path,
                        Stamp {
                            ino: md.ino(),
                            len: md.len(),
                            mtime_ns,
                        },
                    );
                }
            }
        }
        let mut changes = Vec::new();
        for (path, stamp) in &now {
            if self.seen.get(path) != Some(stamp) {
                let spec = fs::read_to_string(path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))
                    .and_then(|t| PodSpec::parse(&t, path).map_err(|e| e.to_string()))
                    .map_err(|reason| Rejected {
                        name: path
                            .file_stem()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        reason,
                    });
                changes.push(Change::Upsert(path.clone(), Box::new(spec)));
            }
        }
        for path in self.seen.keys() {
            if !now.contains_key(path) {
                changes.push(Change::Remove(path.clone()));
            }
        }
        self.seen = now;
        changes
    }
}

/// An inotify instance watching `dir` for entries created, written, moved or removed.
fn watch(dir: &Path) -> std::io::Result<AsyncFd<OwnedFd>> {
    let path = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mask = libc::IN_CLOSE_WRITE
        | libc::IN_MOVED_TO
        | libc::IN_MOVED_FROM
        | libc::IN_DELETE
        | libc::IN_CREATE
        | libc::IN_ATTRIB
        | libc::IN_DELETE_SELF
        | libc::IN_MOVE_SELF;
    // SAFETY: plain syscalls; the fd is owned from here on.
    let fd = unsafe {
        let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        if libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        fd
    };
    // SAFETY: the AsyncFd owns the fd, which stays open until it is dropped.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}
