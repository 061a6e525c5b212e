//! One agent per pin directory. Two agents on the same pins would each garbage-collect the
//! other's pods, and an `uninstall` under a live agent would pull its maps away, so `run`
//! holds an exclusive lock on `--bpffs-dir` for its whole life and `uninstall` takes the same
//! lock. It is a flock on the directory itself (bpffs holds no regular files): the kernel
//! drops it when the holder exits, however it exits, so a crashed agent never blocks the next.
//! Readers (`status`, `trace`) take no lock: they only read, and fail cleanly if the pins go.
use std::{
    fs::{File, TryLockError},
    io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

/// Held while it lives; released on drop (or when the process exits).
#[derive(Debug)]
pub struct PinLock {
    _dir: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another meshsteer agent (or `meshsteer uninstall`) is using {} (waited {waited:?}): \
         one agent per pin directory; stop the other one first",
        .dir.display()
    )]
    Busy { dir: PathBuf, waited: Duration },
    #[error("locking {}: {source}", .dir.display())]
    Io { dir: PathBuf, source: io::Error },
}

impl PinLock {
    /// Takes the lock on the existing directory `bpffs_dir`, waiting up to `wait` for a
    /// previous holder to exit (an agent being replaced may still be shutting down).
    pub fn acquire(bpffs_dir: &Path, wait: Duration) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            dir: bpffs_dir.to_path_buf(),
            source,
        };
        let dir = File::open(bpffs_dir).map_err(io)?;
        let start = Instant::now();
        loop {
            match dir.try_lock() {
                Ok(()) => return Ok(Self { _dir: dir }),
                Err(TryLockError::Error(e)) => return Err(io(e)),
                Err(TryLockError::WouldBlock) if start.elapsed() >= wait => {
                    return Err(LockError::Busy {
                        dir: bpffs_dir.to_path_buf(),
                        waited: wait,
                    });
                }
                Err(TryLockError::WouldBlock) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = std::env::temp_dir().join(format!("ms-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let held = PinLock::acquire(&dir, Duration::ZERO).unwrap();
        let e = PinLock::acquire(&dir, Duration::from_millis(120)).unwrap_err();
        assert!(matches!(e, LockError::Busy { .. }), "{e}");
        assert!(e.to_string().contains("one agent per pin directory"), "{e}");
        drop(held);
        PinLock::acquire(&dir, Duration::ZERO).unwrap();
        std::fs::remove_dir(&dir).unwrap();
    }
}
