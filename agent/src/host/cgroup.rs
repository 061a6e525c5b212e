//! Where things are on this host: the cgroup v2 mount, cgroup ids, bpffs.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use meshsteer_common::maps::MAX_CGROUP_DEPTH;

use crate::sys::mount;

/// `statfs` magic of cgroup v2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The cgroup v2 mount point, from /proc/self/mountinfo (nodes mount it at /sys/fs/cgroup;
/// hybrid hosts at /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    find_cgroup2(&info).context(
        "no cgroup v2 (cgroup2) filesystem is mounted: meshsteer's socket hooks attach to \
         cgroup v2 only (mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup`)",
    )
}

/// The cgroup v1 hierarchies' mount points (hybrid hosts: /sys/fs/cgroup/memory,
/// /sys/fs/cgroup/systemd, ...); none on a pure cgroup v2 host.
pub fn cgroup1_mounts() -> Result<Vec<PathBuf>> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(mounts_of(&info, "cgroup").collect())
}

fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mounts_of(mountinfo, "cgroup2").next()
}

/// The mount points of filesystems of type `fstype`.
fn mounts_of<'a>(mountinfo: &'a str, fstype: &'a str) -> impl Iterator<Item = PathBuf> + 'a {
    mountinfo.lines().filter_map(move |line| {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> ..."
        let (pre, post) = line.split_once(" - ")?;
        let mount_point = pre.split_whitespace().nth(4)?;
        (post.split_whitespace().next()? == fstype)
            .then(|| PathBuf::from(unescape_octal(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A cgroup v2 directory's id, as `bpf_get_current_ancestor_cgroup_id` reports it.
pub fn cgroup_id(dir: &Path) -> Result<u64> {
    let md = fs::metadata(dir).with_context(|| format!("cgroup {}", dir.display()))?;
    if !md.is_dir() || !dir.join("cgroup.procs").exists() {
        bail!("{} is not a cgroup v2 directory", dir.display());
    }
    Ok(md.ino())
}

/// Why a directory cannot be a pod's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {}: the path must be absolute, without `..`", .0.display())]
    NotPlain(PathBuf),
    #[error("cgroup {}", .path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cgroup {} goes through a symlink (it is {}): give the real path",
        .path.display(),
        .real.display()
    )]
    Symlink { path: PathBuf, real: PathBuf },
    #[error("{} is not a cgroup v2 directory", .0.display())]
    NotCgroup2(PathBuf),
    #[error(
        "cgroup {} is {depth} levels deep: the datapath finds a socket's pod among its first \
         {} ancestors only, so this pod would never be captured",
        .path.display(),
        MAX_CGROUP_DEPTH - 1
    )]
    TooDeep { path: PathBuf, depth: usize },
}

/// A pod's cgroup v2 directory, checked before anything is written for it: a plain absolute
/// path with no symlink on the way (what is checked is what gets enrolled), on cgroup2, and
/// shallow enough for the datapath's ancestor walk. Returns its id.
pub fn pod_cgroup_id(dir: &Path) -> Result<u64, CgroupError> {
    let plain = dir.is_absolute()
        && dir
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        return Err(CgroupError::NotPlain(dir.to_path_buf()));
    }
    let unreadable = |source| CgroupError::Unreadable {
        path: dir.to_path_buf(),
        source,
    };
    let real = fs::canonicalize(dir).map_err(unreadable)?;
    if real != dir {
        return Err(CgroupError::Symlink {
            path: dir.to_path_buf(),
            real,
        });
    }
    let is_cgroup2 = |p: &Path| mount::fs_type(p).is_ok_and(|t| t == CGROUP2_SUPER_MAGIC);
    if !is_cgroup2(dir) {
        return Err(CgroupError::NotCgroup2(dir.to_path_buf()));
    }
    // Levels below the hierarchy's root, as bpf_get_current_ancestor_cgroup_id counts them.
    let depth = dir
        .ancestors()
        .skip(1)
        .take_while(|a| is_cgroup2(a))
        .count();
    if depth >= MAX_CGROUP_DEPTH as usize {
        return Err(CgroupError::TooDeep {
            path: dir.to_path_buf(),
            depth,
        });
    }
    let md = fs::metadata(dir).map_err(unreadable)?;
    if !md.is_dir() {
        return Err(CgroupError::NotCgroup2(dir.to_path_buf()));
    }
    Ok(md.ino())
}

/// Whether a cgroup v2 directory holds processes or child cgroups. Anything unreadable counts
/// as in use: this decides what may be removed, so doubt must keep a directory.
pub fn in_use(dir: &Path) -> bool {
    let procs = fs::read_to_string(dir.join("cgroup.procs")).map_or(true, |p| !p.trim().is_empty());
    let children = fs::read_dir(dir).map_or(true, |entries| {
        entries
            .into_iter()
            .any(|e| e.and_then(|e| e.file_type()).map_or(true, |t| t.is_dir()))
    });
    procs || children
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_is_in_use_with_processes_or_children() {
        let dir = std::env::temp_dir().join(format!("ms-cg-in-use-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        assert!(in_use(&dir), "no cgroup.procs: not known to be empty");
        fs::write(dir.join("cgroup.procs"), "").unwrap();
        assert!(!in_use(&dir));
        fs::write(dir.join("cgroup.procs"), "42\n").unwrap();
        assert!(in_use(&dir));
        fs::write(dir.join("cgroup.procs"), "").unwrap();
        fs::create_dir(dir.join("container")).unwrap();
        assert!(in_use(&dir));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finds_cgroup2_among_v1_mounts() {
        let info = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let shared =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(find_cgroup2(shared), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(find_cgroup2("1 0 0:1 / / rw - ext4 /dev/vda rw\n"), None);
        let v1: Vec<PathBuf> = mounts_of(info, "cgroup").collect();
        assert_eq!(v1, [PathBuf::from("/sys/fs/cgroup/memory")]);
        assert_eq!(unescape_octal(r"/a\040b"), "/a b");
    }

    #[test]
    fn pod_cgroups_are_plain_absolute_paths() {
        // (`.` is harmless: `Path` drops it.)
        for bad in ["relative/pod", "/sys/fs/cgroup/kubepods/../pod"] {
            assert!(
                matches!(pod_cgroup_id(Path::new(bad)), Err(CgroupError::NotPlain(_))),
                "{bad}"
            );
        }
        // A path through a symlink: refused, naming the real path.
        let tmp = std::env::temp_dir().canonicalize().unwrap();
        let (real, link) = (
            tmp.join(format!("ms-cg-real-{}", std::process::id())),
            tmp.join(format!("ms-cg-link-{}", std::process::id())),
        );
        fs::create_dir_all(&real).unwrap();
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = pod_cgroup_id(&link).unwrap_err();
        assert!(
            matches!(&e, CgroupError::Symlink { real: r, .. } if *r == real),
            "{e}"
        );
        fs::remove_file(&link).unwrap();
        fs::remove_dir(&real).unwrap();
        // A real directory that is not on cgroup2.
        let tmp = std::env::temp_dir().canonicalize().unwrap();
        assert!(matches!(
            pod_cgroup_id(&tmp),
            Err(CgroupError::NotCgroup2(_))
        ));
    }
}
