//! nsfs ioctls: what kind of namespace a file is (`NS_GET_NSTYPE`) and which user namespace
//! owns it (`NS_GET_USERNS`). libc has the constants but no wrappers.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The `CLONE_NEW*` flag of the namespace `ns` refers to.
pub fn ns_type(ns: &impl AsRawFd) -> io::Result<i32> {
    // SAFETY: an ioctl without an argument on an fd the caller keeps open.
    let r = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_NSTYPE) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// `_IO(0xb7, 0x1)`.
const NS_GET_USERNS: libc::c_ulong = 0xb701;

/// The user namespace that owns the namespace `ns` refers to (`NS_GET_USERNS`, Linux 4.9).
pub fn owning_userns(ns: &impl AsRawFd) -> io::Result<OwnedFd> {
    ioctl_new_fd(ns, NS_GET_USERNS)
}

/// An ioctl without an argument that returns a new fd on success (`NS_GET_USERNS`,
/// `SIOCGSKNS`, ...).
pub(super) fn ioctl_new_fd(fd: &impl AsRawFd, request: libc::c_ulong) -> io::Result<OwnedFd> {
    // SAFETY: an ioctl without an argument on an fd the caller keeps open; on success it
    // returns a new fd that nothing else owns.
    unsafe {
        let r = libc::ioctl(fd.as_raw_fd(), request);
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(r))
    }
}
