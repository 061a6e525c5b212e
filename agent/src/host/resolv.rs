//! Reading resolv.conf files: one a pod spec names (`resolvConf`), and a pod's own, through
//! one of its processes (`/proc/<pid>/root/etc/resolv.conf`: the file its mount namespace
//! shows, which the runtime bind-mounts into every container).
use std::{
    fs::{self, File},
    io::Read,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::OpenOptionsExt,
    },
    path::Path,
};

use anyhow::{Context, Result, bail};

use super::proc::{cgroup_pids, start_time};
use crate::sys::openat2::path_in_root;

/// Larger is not a resolv.conf (glibc reads far less); refused rather than read whole.
const MAX_BYTES: u64 = 64 * 1024;

/// The text of `path` on the agent's filesystem: a regular file of at most [`MAX_BYTES`],
/// opened without blocking on a FIFO (the agent's loop must never hang on a file). Errors
/// name the path.
pub fn read(path: &Path) -> Result<String> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("reading {}", path.display()))?;
    read_file(file, path)
}

/// The text of an opened resolv.conf (`name` for errors).
fn read_file(file: File, name: &Path) -> Result<String> {
    let md = file
        .metadata()
        .with_context(|| format!("reading {}", name.display()))?;
    if !md.is_file() {
        bail!("{} is not a regular file", name.display());
    }
    let mut text = String::new();
    file.take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", name.display()))?;
    if text.len() as u64 > MAX_BYTES {
        bail!("{} is larger than {MAX_BYTES} bytes", name.display());
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
        let text = of_process(pid, Path::new("/etc/resolv.conf")).ok()?;
        Some((pid, text))
    })
}

/// The text of `path` as process `pid` sees it: through `/proc/<pid>/root`, every symlink
/// resolved inside that root, as the process would (`/etc/resolv.conf -> /run/...`, as
/// systemd-resolved makes it), never outside it. Also the node's own files, through its init
/// process, from an agent in a container with the host's pid namespace.
pub fn of_process(pid: i32, path: &Path) -> Result<String> {
    let root_path = format!("/proc/{pid}/root");
    let shown = Path::new(&root_path).join(path.strip_prefix("/").unwrap_or(path));
    let root = File::open(&root_path).with_context(|| format!("reading {}", shown.display()))?;
    let inside = path.strip_prefix("/").unwrap_or(path);
    let found = path_in_root(root.as_fd(), inside)
        .map(File::from)
        .with_context(|| format!("reading {}", shown.display()))?;
    let is_file = found
        .metadata()
        .with_context(|| format!("reading {}", shown.display()))?
        .is_file();
    if !is_file {
        bail!("{} is not a regular file", shown.display());
    }
    // Reopened through its fd: the very file found, now known to be a regular one.
    let reopen = format!("/proc/self/fd/{}", found.as_raw_fd());
    read(Path::new(&reopen)).with_context(|| format!("reading {}", shown.display()))
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

    /// Symlinks resolve inside the root: an absolute one names a file of the root, and
    /// `..` stops at it.
    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = std::env::temp_dir().join(format!("ms-resolv-root-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::create_dir_all(dir.join("run")).unwrap();
        fs::write(dir.join("run/real.conf"), "nameserver 10.0.0.2\n").unwrap();
        std::os::unix::fs::symlink("/run/real.conf", dir.join("etc/resolv.conf")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/hostname", dir.join("etc/up")).unwrap();
        let root = File::open(&dir).unwrap();
        let f = path_in_root(root.as_fd(), Path::new("etc/resolv.conf")).unwrap();
        let text = read(Path::new(&format!("/proc/self/fd/{}", f.as_raw_fd()))).unwrap();
        assert_eq!(text, "nameserver 10.0.0.2\n");
        // `..` cannot leave the root: the node's /etc/hostname is not reached.
        assert!(path_in_root(root.as_fd(), Path::new("etc/up")).is_err());
        // Found, a directory is not opened for reading.
        let me = std::process::id() as i32;
        let e = format!("{:#}", of_process(me, &dir.join("etc")).unwrap_err());
        assert!(e.contains("not a regular file"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
        // Through this process's own root, the agent's own file.
        let e = format!(
            "{:#}",
            of_process(me, Path::new("/nonexistent/resolv.conf")).unwrap_err()
        );
        assert!(
            e.contains(&format!("/proc/{me}/root/nonexistent/resolv.conf")),
            "{e}"
        );
    }
}
