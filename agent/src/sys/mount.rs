//! statfs and mount, for the bpffs.
use std::{ffi::CString, io, path::Path};

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(io::Error::other)
}

/// The filesystem type (`f_type` magic) of the filesystem holding `p`.
pub fn fs_type(p: &Path) -> io::Result<i64> {
    let c = c_path(p)?;
    // SAFETY: zeroed statfs is a valid out-buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` a valid out-buffer, both outliving the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// Mounts a new bpffs at `at`.
pub fn mount_bpffs(at: &Path) -> io::Result<()> {
    let target = c_path(at)?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let r = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
