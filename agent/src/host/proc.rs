//! What /proc says of a pod's processes: their network namespace, and the proxy listeners
//! that existed before the agent, fetched with `pidfd_getfd` so steering works for them too.
use std::{
    fs::{self, File},
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::Result;
use tracing::debug;

use crate::sys::{
    pidfd::Pidfd,
    socket::{netns_of, tcp_listening},
};

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
/// network namespace they run in (`in_netns` tells whether it is `netns`), each made in the
/// namespace of the process holding it.
///
/// Each of the processes' sockets is asked what it is. `/proc/<pid>/net/tcp` would say it too,
/// but reading it walks the whole host's TCP hash table, every namespace's connections
/// included: milliseconds per read on a busy node, on the way of every enrolment.
pub fn existing_listeners(cgroup: &Path, netns: &Path, port: u16) -> Result<Vec<FoundListener>> {
    let id = |m: fs::Metadata| (m.dev(), m.ino());
    let pod_netns = fs::metadata(netns).map(id).ok();
    let mut found = Vec::new();
    for pid in cgroup_pids(cgroup) {
        let Ok(own_netns) = fs::metadata(format!("/proc/{pid}/ns/net")).map(id) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut process = None;
        for fd in fds.flatten() {
            let is_socket = fs::read_link(fd.path())
                .ok()
                .and_then(|t| socket_inode(&t))
                .is_some();
            let Some(num) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if !is_socket {
                continue;
            }
            if process.is_none() {
                match Pidfd::open(pid) {
                    Ok(p) => process = Some(p),
                    Err(e) => {
                        debug!(pid, error = %e, "pidfd_open failed");
                        break;
                    }
                }
            }
            let Some(p) = &process else { break };
            let socket = match p.getfd(num) {
                Ok(dup) => dup,
                Err(e) => {
                    debug!(pid, fd = num, error = %e, "pidfd_getfd failed");
                    continue;
                }
            };
            let family = match tcp_listening(&socket) {
                Ok(Some((family, p))) if p == port => family,
                _ => continue,
            };
            // Only the process's own namespace's sockets, as its /proc/<pid>/net/tcp lists.
            let socket_netns = netns_of(&socket)
                .map(File::from)
                .and_then(|f| f.metadata())
                .map(id);
            if socket_netns.ok() != Some(own_netns) {
                continue;
            }
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
                in_netns: Some(own_netns) == pod_netns,
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
pub fn start_time(pid: i32) -> Option<u64> {
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
            // The entry's own type (no stat of each of the many interface files).
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

fn socket_inode(link: &Path) -> Option<u64> {
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_socket_inodes_from_fd_links() {
        assert_eq!(socket_inode(Path::new("socket:[4242]")), Some(4242));
        assert_eq!(socket_inode(Path::new("pipe:[4242]")), None);
    }

    #[test]
    fn reads_process_start_times() {
        let me = std::process::id() as i32;
        let (mine, init) = (start_time(me).unwrap(), start_time(1).unwrap());
        assert!(init <= mine);
    }
}
