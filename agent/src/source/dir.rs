//! The pod-spec directory (`--pods-dir`).
//!
//! The directory is watched with inotify, so a file added, changed or deleted takes effect at
//! once (about a millisecond), and scanned in full every second as well, for what inotify does
//! not report (a file rewritten in place and never closed). A watch that ends (the directory
//! removed or moved) is made again at the next poll; until then, and wherever inotify is not
//! available, the directory is scanned at every poll (50 ms). A scan costs a readdir and a
//! stat per file, so scanning 1,000 specs every 50 ms would cost the agent a sixth of a CPU at
//! rest. Either way the same scan decides what changed.
use std::{
    collections::BTreeMap,
    fs,
    io::{self, Read},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use tokio::task::{JoinHandle, spawn_blocking};
use tracing::{error, info, warn};

use super::change::{Change, Rejected, SourceKey};
use crate::{
    spec::pod::{PodSpec, SpecError},
    sys::inotify::DirWatch,
};

/// With a watch, polls between full scans (a second at 50 ms).
const RESCAN_POLLS: u32 = 20;

/// The largest spec file read: real specs are a few hundred bytes, and one excluding 10,000
/// CIDRs (the benchmark's largest) about 200 KiB.
const MAX_SPEC_BYTES: u64 = 1024 * 1024;

/// Why a spec file gives no pod spec (its pod is refused until the file changes).
#[derive(Debug, thiserror::Error)]
enum FileError {
    #[error("reading {}: {error}", .path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error(
        "{} is not a regular file (a symlink, FIFO, device, …): spec files must be regular \
         files in the pods directory",
        .0.display()
    )]
    NotRegular(PathBuf),
    #[error("{} is larger than {MAX_SPEC_BYTES} bytes: not a pod spec", .0.display())]
    TooLarge(PathBuf),
    #[error(transparent)]
    Spec(#[from] SpecError),
}

/// What identifies a version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

pub struct PodDir {
    dir: PathBuf,
    /// What the last scan saw; taken while a scan runs on the blocking pool.
    scanner: Option<Scanner>,
    /// The scan under way, if a caller stopped waiting for it (kept: scans are cancel-safe).
    running: Option<JoinHandle<(Scanner, Vec<Change>)>>,
    /// inotify on the directory (None: polling only, e.g. inotify instances exhausted, or the
    /// watch ended and could not be made again yet).
    events: Option<DirWatch>,
    /// Polls since the last scan started.
    polls_since_scan: u32,
}

impl PodDir {
    /// Must run inside the tokio runtime (the inotify fd is registered with it).
    pub fn new(dir: &Path) -> Self {
        let events = DirWatch::new(dir)
            .inspect_err(|e| warn!(dir = %dir.display(), error = %e, "no inotify; polling only"))
            .ok();
        Self {
            dir: dir.to_path_buf(),
            scanner: Some(Scanner::new(dir)),
            running: None,
            events,
            // The first poll scans.
            polls_since_scan: RESCAN_POLLS,
        }
    }

    /// Whether this poll should scan: every poll without a watch (one is tried for first),
    /// else once every [`RESCAN_POLLS`], and whenever a scan a caller gave up on waits.
    pub fn poll_due(&mut self) -> bool {
        if self.events.is_none() {
            self.events = DirWatch::new(&self.dir).ok();
            if self.events.is_some() {
                info!(dir = %self.dir.display(), "watching the pods directory again");
            }
            return true;
        }
        self.polls_since_scan += 1;
        self.running.is_some() || self.polls_since_scan >= RESCAN_POLLS
    }

    /// Changes since the last scan. The directory is read on tokio's blocking pool: a spec on
    /// a slow or stuck filesystem never stalls the agent's loop (its endpoints, the other
    /// pods, the Kubernetes watch). Cancel-safe: a scan whose caller stopped waiting is
    /// picked up by the next call.
    pub async fn scan(&mut self) -> Vec<Change> {
        if self.running.is_none() {
            self.polls_since_scan = 0;
            let mut scanner = self
                .scanner
                .take()
                .unwrap_or_else(|| Scanner::new(&self.dir));
            self.running = Some(spawn_blocking(move || {
                let changes = scanner.scan();
                (scanner, changes)
            }));
        }
        let Some(running) = self.running.as_mut() else {
            return Vec::new();
        };
        let done = running.await;
        self.running = None;
        match done {
            Ok((scanner, changes)) => {
                self.scanner = Some(scanner);
                changes
            }
            Err(e) => {
                // The next scan starts afresh and reports every file again.
                error!(dir = %self.dir.display(), error = %e, "scanning the pods directory failed");
                Vec::new()
            }
        }
    }

    /// Waits for inotify to report something in the directory, and drains its events (what
    /// changed is decided by the scan that follows). Never returns without inotify. A watch
    /// that ended is dropped: the polls scan (and try for a new one) until there is one.
    pub(super) async fn notified(&mut self) {
        let Some(events) = &self.events else {
            return std::future::pending().await;
        };
        match events.changed().await {
            Ok(drained) if !drained.watch_lost => {}
            ended => {
                warn!(
                    dir = %self.dir.display(),
                    error = ?ended.err(),
                    "the pods directory's watch ended; scanning at every poll until it is \
                     watched again"
                );
                self.events = None;
            }
        }
    }
}

/// The directory's listing as last seen, and the scan that compares it with now.
struct Scanner {
    dir: PathBuf,
    seen: BTreeMap<PathBuf, Stamp>,
    /// The thread the last scan ran on (tests check it is not the caller's).
    #[cfg(test)]
    ran_on: Option<std::thread::ThreadId>,
}

impl Scanner {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            seen: BTreeMap::new(),
            #[cfg(test)]
            ran_on: None,
        }
    }

    /// Changes since the last scan.
    fn scan(&mut self) -> Vec<Change> {
        #[cfg(test)]
        {
            self.ran_on = Some(std::thread::current().id());
        }
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
                // lstat: a symlink is listed (and refused), never followed.
                if let Ok(md) = fs::symlink_metadata(&path) {
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
                let spec = read(path).map_err(|e| {
                    let name = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    Rejected::refused(name, e.to_string())
                });
                changes.push(Change::Upsert(
                    SourceKey::File(path.clone()),
                    Box::new(spec),
                ));
            }
        }
        for path in self.seen.keys() {
            if !now.contains_key(path) {
                changes.push(Change::Remove(SourceKey::File(path.clone())));
            }
        }
        self.seen = now;
        changes
    }
}

/// The pod spec in `path`: a regular file of at most [`MAX_SPEC_BYTES`], opened without
/// following a symlink or blocking on a FIFO (the agent loop must never hang on a file).
fn read(path: &Path) -> Result<PodSpec, FileError> {
    let failed = |error| FileError::Read {
        path: path.to_path_buf(),
        error,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(FileError::NotRegular(path.to_path_buf()));
        }
        other => other.map_err(failed)?,
    };
    if !file.metadata().map_err(failed)?.is_file() {
        return Err(FileError::NotRegular(path.to_path_buf()));
    }
    let mut text = String::new();
    file.take(MAX_SPEC_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(failed)?;
    if text.len() as u64 > MAX_SPEC_BYTES {
        return Err(FileError::TooLarge(path.to_path_buf()));
    }
    Ok(PodSpec::parse(&text, path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::change::Unready;

    #[tokio::test]
    async fn an_invalid_file_is_refused_under_its_stem_and_its_removal_reported() {
        let dir = std::env::temp_dir().join(format!("ms-pod-dir-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.yaml");
        fs::write(&file, "name: a\ncgroup: /x\nextra: 1\n").unwrap();
        fs::write(dir.join("notes.txt"), "not a spec").unwrap();
        let mut pods = PodDir::new(&dir);

        let changes = pods.scan().await;
        let [Change::Upsert(SourceKey::File(path), spec)] = &changes[..] else {
            panic!("one upsert expected");
        };
        assert_eq!(path, &file);
        let rejected = spec.as_ref().clone().unwrap_err();
        assert_eq!(rejected.name, "bad");
        assert!(
            matches!(&rejected.why, Unready::Refused(r) if r.starts_with("not a valid pod spec: unknown field `extra`")),
            "{rejected:?}"
        );
        assert!(
            pods.scan().await.is_empty(),
            "unchanged files are not read again"
        );

        fs::remove_file(&file).unwrap();
        let changes = pods.scan().await;
        assert!(matches!(&changes[..], [Change::Remove(SourceKey::File(p))] if *p == file));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// With a watch the polls scan once a second, not every 50 ms (a readdir and a stat per
    /// spec each time: a sixth of a CPU at 1,000 pods); changes still arrive at once through
    /// the watch. Without one, every poll scans.
    #[tokio::test]
    async fn with_a_watch_polls_scan_once_a_second() {
        let dir = std::env::temp_dir().join(format!("ms-pod-dir-due-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut pods = PodDir::new(&dir);
        assert!(pods.events.is_some());
        assert!(pods.poll_due(), "the first poll scans");
        pods.scan().await;
        let due: Vec<bool> = (0..RESCAN_POLLS).map(|_| pods.poll_due()).collect();
        assert_eq!(due.iter().filter(|d| **d).count(), 1, "{due:?}");
        assert_eq!(due.last(), Some(&true));

        // A watch that ends (the directory removed) is dropped; until a new one is made, every
        // poll scans, and the new directory's files are found.
        fs::remove_dir_all(&dir).unwrap();
        pods.notified().await;
        assert!(pods.events.is_none());
        assert!(pods.poll_due());
        pods.scan().await;
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a.yaml"), "name: a\ncgroup: /x\n").unwrap();
        assert!(pods.poll_due(), "no watch yet at this poll: it scans");
        assert!(pods.events.is_some(), "and watches again");
        assert_eq!(pods.scan().await.len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Files are read off the loop's thread, and a scan a caller stopped waiting for still
    /// delivers its changes.
    #[tokio::test(flavor = "current_thread")]
    async fn scans_run_on_the_blocking_pool_and_survive_cancellation() {
        let dir = std::env::temp_dir().join(format!("ms-pod-dir-pool-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a.yaml"), "name: a\ncgroup: /x\n").unwrap();
        let mut pods = PodDir::new(&dir);
        // Given up on at once (unless the pool was faster): the scan goes on, and the next
        // call delivers its changes.
        let first = tokio::time::timeout(std::time::Duration::ZERO, pods.scan()).await;
        let changes = match first {
            Ok(changes) => changes,
            Err(_) => pods.scan().await,
        };
        assert!(
            matches!(&changes[..], [Change::Upsert(SourceKey::File(p), _)] if p.ends_with("a.yaml")),
            "{} changes",
            changes.len()
        );
        let ran_on = pods.scanner.as_ref().and_then(|s| s.ran_on);
        assert!(ran_on.is_some_and(|t| t != std::thread::current().id()));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Symlinks, FIFOs and oversized files are refused by name, each with a clear reason,
    /// and never followed, blocked on or read whole.
    #[tokio::test]
    async fn files_that_are_not_plain_specs_are_refused() {
        let dir = std::env::temp_dir().join(format!("ms-pod-dir-odd-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let secret = dir.join(".secret");
        fs::write(&secret, "name: a\ncgroup: /x\n").unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("link.yaml")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(dir.join("fifo.yaml"))
            .status()
            .unwrap();
        assert!(made.success());
        fs::write(dir.join("huge.yaml"), vec![b'#'; 1024 * 1024 + 1]).unwrap();

        let mut pods = PodDir::new(&dir);
        let mut reasons: Vec<(String, String)> = pods
            .scan()
            .await
            .into_iter()
            .map(|c| match c {
                Change::Upsert(_, spec) => match *spec {
                    Err(Rejected {
                        name,
                        why: Unready::Refused(r),
                        ..
                    }) => (name, r),
                    other => panic!("refused expected: {other:?}"),
                },
                Change::Remove(_)
                | Change::Pending(..)
                | Change::Origin(..)
                | Change::EnrolledBy(..)
                | Change::Refresh(..) => {
                    panic!("no removal expected")
                }
            })
            .collect();
        reasons.sort();
        let names: Vec<&str> = reasons.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["fifo", "huge", "link"]);
        assert!(
            reasons[0].1.contains("is not a regular file"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].1.contains("larger than 1048576 bytes"),
            "{reasons:?}"
        );
        assert!(
            reasons[2].1.contains("is not a regular file"),
            "{reasons:?}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
