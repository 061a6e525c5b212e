//! What /proc says of a pod's processes: their network namespace, and the proxy listeners
//! that existed before the agent, fetched with `pidfd_getfd` so steering works for them too.
use std::{
    fs::{self, File},
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::Result;
use tracing::debug;

use crate::sys::pidfd::pidfd_getfd;

/// A listening socket found among a pod's processes.
#[derive(Debug)]
pub struct FoundListener {
    /// Duplicated into this process with `pidfd_getfd`.
    pub socket: OwnedFd,
    /// `AF_INET` or `AF_INET6`.
    pub family: u32,
    /// The socket's owner as iptables' owner match sees it: the creator's fsuid/fsgid, which
    /// the kernel gives the socket's inode.
    pub uid: u32,
    pub gid: u32,
    /// Whether the process holding it runs in `netns` (the pod's).
    pub in_netns: bool,
}

/// Listening TCP sockets on `port` held by processes of the cgroup subtree `cgroup`, whatever
/// network namespace they run in (`in_netns` tells whether it is `netns`).
pub fn existing_listeners(cgroup: &Path, netns: &Path, port: u16) -> Result<Vec<FoundListener>> {
    let pod_netns = fs::metadata(netns).map(|m| (m.dev(), m.ino())).ok();
    let mut found = Vec::new();
    for pid in cgroup_pids(cgroup) {
        let in_netns = fs::metadata(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|m| Some((m.dev(), m.ino())) == pod_netns);
        let listening = listening_inodes(pid, port);
        if listening.is_empty() {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(ino) = socket_inode(&target) else {
                continue;
            };
            let Some(family) = listening.iter().find(|(i, _)| *i == ino).map(|(_, f)| *f) else {
                continue;
            };
            let Some(num) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let socket = match pidfd_getfd(pid, num) {
                Ok(dup) => dup,
                Err(e) => {
                    debug!(pid, fd = num, error = %e, "pidfd_getfd failed");
                    continue;
                }
            };
            // fstat of the socket: its inode carries the creator's fsuid/fsgid.
            let Ok(md) = socket
                .try_clone()
                .map(File::from)
                .and_then(|f| f.metadata())
            else {
                continue;
            };
            found.push(FoundListener {
                socket,
                family,
                uid: md.uid(),
                gid: md.gid(),
                in_netns,
            });
        }
    }
    Ok(found)
}

/// The network namespace the processes of the cgroup subtree `cgroup` run in, as a path that
/// stays valid while the namespace lives: its name under `named` (where container runtimes
/// bind-mount pod namespaces, `/run/netns`) if it has one there, else `/proc/<pid>/ns/net` of
/// the subtree's oldest process (the pod sandbox's, which lives as long as the pod). `None`
/// while the subtree has no process.
pub fn of_cgroup(cgroup: &Path, named: &Path) -> Option<PathBuf> {
    let pid = cgroup_pids(cgroup)
        .into_iter()
        .filter_map(|pid| Some((start_time(pid)?, pid)))
        .min()?
        .1;
    let by_pid = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let ns = fs::metadata(&by_pid).ok()?;
    let same = |p: &Path| fs::metadata(p).is_ok_and(|m| (m.dev(), m.ino()) == (ns.dev(), ns.ino()));
    let by_name = fs::read_dir(named)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| same(p));
    Some(by_name.unwrap_or(by_pid))
}

/// When a process started (clock ticks after boot): field 22 of `/proc/<pid>/stat`.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Pids of every process in the cgroup subtree.
pub fn cgroup_pids(cgroup: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut dirs: Vec<PathBuf> = vec![cgroup.to_path_buf()];
    // Bounded: pod cgroups are a few levels deep.
    while let Some(d) = dirs.pop() {
        if let Ok(text) = fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&d) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

/// Inodes (and AF_INET/AF_INET6) of sockets listening on `port` in `pid`'s network namespace.
fn listening_inodes(pid: i32, port: u16) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    for (file, family) in [
        ("tcp", libc::AF_INET as u32),
        ("tcp6", libc::AF_INET6 as u32),
    ] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        out.extend(
            parse_listeners(&text, port)
                .into_iter()
                .map(|ino| (ino, family)),
        );
    }
    out
}

/// `/proc/net/tcp` lines: "sl local_address rem_address st ... inode": LISTEN is st 0A.
fn parse_listeners(text: &str, port: u16) -> Vec<u64> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            let listening = *f.get(3)? == "0A";
            let matches = u16::from_str_radix(local_port, 16).ok()? == port;
            (listening && matches)
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

fn socket_inode(link: &Path) -> Option<u64> {
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listening_sockets_by_port() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 4242 1 0 100 0 0 10 0\n\
   1: 0100007F:3A9E 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1337        0 4343 1 0 100 0 0 10 0\n";
        assert_eq!(parse_listeners(text, 15006), vec![4242]);
        assert!(parse_listeners(text, 80).is_empty());
        assert_eq!(socket_inode(Path::new("socket:[4242]")), Some(4242));
    }

    #[test]
    fn reads_process_start_times() {
        let me = std::process::id() as i32;
        let (mine, init) = (start_time(me).unwrap(), start_time(1).unwrap());
        assert!(init <= mine);
    }
}
