//! Who holds a flock on a file: /proc/locks names the holder's pid (in our pid namespace) and
//! the file by device and inode.
use std::{fs, io, os::unix::fs::MetadataExt, path::Path};

/// The pid holding a flock on `path`, if some process does.
pub fn flock_holder(path: &Path) -> io::Result<Option<i32>> {
    let dev = fs::metadata(path)?;
    let locks = fs::read_to_string("/proc/locks")?;
    Ok(holder_in(&locks, dev.dev(), dev.ino()))
}

/// The holder of a FLOCK on (`dev`, `ino`) in the text of /proc/locks. Waiters (`->` lines)
/// hold nothing.
fn holder_in(locks: &str, dev: u64, ino: u64) -> Option<i32> {
    let (major, minor) = split_dev(dev);
    let file = format!("{major:02x}:{minor:02x}:{ino}");
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "5: FLOCK ADVISORY WRITE 29001 00:28:21164270 0 EOF"
        match f.as_slice() {
            [_, "FLOCK", _, _, pid, id, ..] if *id == file => pid.parse().ok(),
            _ => None,
        }
    })
}

/// A device number's major and minor (glibc's encoding).
fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_not_a_waiter_nor_another_file() {
        let locks = "1: OFDLCK ADVISORY  READ -1 00:06:3 0 EOF\n\
                     5: FLOCK  ADVISORY  WRITE 29001 00:28:21164270 0 EOF\n\
                     5: -> FLOCK  ADVISORY  WRITE 31000 00:28:21164270 0 EOF\n\
                     6: FLOCK  ADVISORY  WRITE 4242 fe:00:21164270 0 EOF\n";
        // 0x28 as a device number: major 0, minor 0x28.
        assert_eq!(holder_in(locks, 0x28, 21164270), Some(29001));
        assert_eq!(holder_in(locks, 0xfe00, 21164270), Some(4242));
        assert_eq!(holder_in(locks, 0x28, 1), None);
    }

    #[test]
    fn our_own_lock_is_found() {
        let dir = std::env::temp_dir().join(format!("ms-locks-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = fs::File::open(&dir).unwrap();
        assert_eq!(flock_holder(&dir).unwrap(), None);
        f.lock().unwrap();
        assert_eq!(flock_holder(&dir).unwrap(), Some(std::process::id() as i32));
        drop(f);
        fs::remove_dir(&dir).unwrap();
    }
}
