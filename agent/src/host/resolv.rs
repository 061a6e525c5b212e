//! Reading resolv.conf files: one a pod spec names (`resolvConf`), and a pod's own, through
//! one of its processes (`/proc/<pid>/root/etc/resolv.conf`: the file its mount namespace
//! shows, which the runtime bind-mounts into every container).
use std::{
    fs,
    io::Read,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use super::proc::{cgroup_pids, start_time};

/// Larger is not a resolv.conf (glibc reads far less); refused rather than read whole.
const MAX_BYTES: u64 = 64 * 1024;

/// Symlinks followed inside a process's root before giving up.
const MAX_HOPS: usize = 8;

/// The text of `path`: a regular file of at most [`MAX_BYTES`], opened without blocking on a
/// FIFO (the agent's loop must never hang on a file). Errors name the path.
pub fn read(path: &Path) -> Result<String> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let md = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !md.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut text = String::new();
    file.take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    if text.len() as u64 > MAX_BYTES {
        bail!("{} is larger than {MAX_BYTES} bytes", path.display());
    }
    Ok(text)
}

/// The pod's own resolv.conf: that of the oldest process of the cgroup subtree `cgroup` that
/// has one (the sandbox's first; a pause image without the file is passed over for the
/// containers'), with the pid it was read through. `None` while no process has one.
pub fn of_cgroup(cgroup: &Path) -> Option<(i32, String)> {
    let mut pids: Vec<(u64, i32)> = cgroup_pids(cgroup)
        .into_iter()
        .filter_map(|pid| Some((start_time(pid)?, pid)))
        .collect();
    pids.sort_unstable();
    pids.into_iter().find_map(|(_, pid)| {
        Some((
            pid,
            read(&in_root(pid, Path::new("/etc/resolv.conf"))?).ok()?,
        ))
    })
}

/// `path` as process `pid` sees it, through `/proc/<pid>/root`. A symlink at the end
/// (`/etc/resolv.conf -> /run/...`, as systemd-resolved makes it) is followed inside that
/// root, not the agent's, as the process would. `None` if it does not resolve.
fn in_root(pid: i32, path: &Path) -> Option<PathBuf> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut inside = path.to_path_buf();
    for _ in 0..MAX_HOPS {
        let outside = root.join(inside.strip_prefix("/").ok()?);
        let Ok(target) = fs::read_link(&outside) else {
            return Some(outside);
        };
        inside = if target.is_absolute() {
            target
        } else {
            inside.parent()?.join(target)
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_regular_files_only_naming_the_path() {
        let dir = std::env::temp_dir().join(format!("ms-resolv-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("resolv.conf");
        fs::write(&file, "nameserver 10.0.0.1\n").unwrap();
        assert_eq!(read(&file).unwrap(), "nameserver 10.0.0.1\n");
        let missing = dir.join("missing");
        let e = format!("{:#}", read(&missing).unwrap_err());
        assert!(e.contains(&missing.display().to_string()), "{e}");
        let e = format!("{:#}", read(&dir).unwrap_err());
        assert!(e.contains("not a regular file"), "{e}");
        fs::write(&file, vec![b'#'; MAX_BYTES as usize + 1]).unwrap();
        assert!(format!("{:#}", read(&file).unwrap_err()).contains("larger than"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn paths_resolve_inside_the_processes_root() {
        let me = std::process::id() as i32;
        // This process's root is the agent's: a plain path stays under /proc/<pid>/root.
        let p = in_root(me, Path::new("/nonexistent/resolv.conf")).unwrap();
        assert_eq!(
            p,
            PathBuf::from(format!("/proc/{me}/root/nonexistent/resolv.conf"))
        );
    }
}
