//! Where things are on this host: the cgroup v2 mount, cgroup ids, bpffs.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

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

fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> ..."
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        let mount_point = pre.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_octal(mount_point)))
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(unescape_octal(r"/a\040b"), "/a b");
    }
}
