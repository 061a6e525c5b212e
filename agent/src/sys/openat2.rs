//! Opening a file inside another root (`openat2` with `RESOLVE_IN_ROOT`, Linux 5.6): a pod's
//! files read through `/proc/<pid>/root`, with every symlink on the way resolved inside the
//! pod's root, never the agent's (a pod's `/etc -> /` cannot point the agent at the node's
//! files). libc has no wrapper for this syscall.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

/// The kernel's `struct open_how` (libc's cannot be built outside it).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `path` (relative to `root`), resolved as if `root` were `/`, as an `O_PATH` fd: the file
/// is found, not opened (a device's open has effects), so that its type can be checked
/// first. Magic links (`/proc/self/...`) are refused.
pub fn path_in_root(root: BorrowedFd<'_>, path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: a raw syscall with an fd we borrow, a NUL-terminated path and an `open_how` of
    // the size passed, all living across the call; a non-negative result is a new fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
