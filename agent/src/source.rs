//! The pod-spec directory: polled every 50 ms, so a file added, changed or deleted takes
//! effect within 100 ms. Polling (rather than inotify) never misses an event across an agent
//! restart or an editor's rename dance, and costs a readdir and a stat per file.
use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::podspec::PodSpec;

pub const POLL: Duration = Duration::from_millis(50);

/// What identifies a version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

pub enum Change {
    Upsert(PathBuf, Box<Result<PodSpec, String>>),
    Remove(PathBuf),
}

#[derive(Default)]
pub struct PodDir {
    dir: PathBuf,
    seen: BTreeMap<PathBuf, Stamp>,
}

impl PodDir {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            seen: BTreeMap::new(),
        }
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
                    .and_then(|t| PodSpec::parse(&t, path).map_err(|e| e.to_string()));
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
