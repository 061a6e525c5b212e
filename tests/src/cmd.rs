//! Running commands inside a simulated pod: network namespace, cgroup and identity are set in
//! the child between fork and exec, with fds opened beforehand (nothing allocates after fork).
use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::{Child, Command, Output, Stdio},
};

use anyhow::{Context, Result, bail};

/// Where and as whom a command runs.
#[derive(Clone, Debug, Default)]
pub struct Place<'a> {
    pub netns: Option<&'a Path>,
    pub cgroup: Option<&'a Path>,
    pub uid: u32,
    pub gid: u32,
}

pub fn command(place: &Place<'_>, program: &str, args: &[&str]) -> Result<Command> {
    let netns = place
        .netns
        .map(File::open)
        .transpose()
        .context("opening netns")?;
    let procs = place
        .cgroup
        .map(|c| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(c.join("cgroup.procs"))
        })
        .transpose()
        .context("opening cgroup.procs")?;
    let (uid, gid) = (place.uid, place.gid);
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: only async-signal-safe syscalls run in the child, on fds opened above.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(ns) = &netns
                && libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(p) = &procs {
                let mut buf = [0u8; 12];
                let s = itoa(libc::getpid() as u32, &mut buf);
                if libc::write(p.as_raw_fd(), s.as_ptr().cast(), s.len()) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if (uid, gid) != (0, 0)
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Decimal digits of `n` into `buf`, without allocating (we are between fork and exec).
fn itoa(mut n: u32, buf: &mut [u8; 12]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Runs to completion; a failure carries its stderr.
pub fn run(place: &Place<'_>, program: &str, args: &[&str]) -> Result<Output> {
    let out = command(place, program, args)?
        .output()
        .with_context(|| format!("running {program} {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `bash SCRIPT VERB` on the host, its output passed through (the test boxes' start/stop).
pub fn script(script: &Path, verb: &str) -> Result<()> {
    let status = Command::new("bash")
        .arg(script)
        .arg(verb)
        .status()
        .with_context(|| format!("running {} {verb}", script.display()))?;
    if !status.success() {
        bail!("{} {verb} failed ({status})", script.display());
    }
    Ok(())
}

/// Host-side command (no namespace change).
pub fn host(program: &str, args: &[&str]) -> Result<Output> {
    run(&Place::default(), program, args)
}

/// A background process, killed and reaped on drop.
pub struct Proc {
    child: Child,
    pub name: String,
}

impl Proc {
    /// Starts a process that prints `ready` once it is serving, and waits for that line.
    pub fn spawn_ready(place: &Place<'_>, program: &str, args: &[&str]) -> Result<Self> {
        let mut child = command(place, program, args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {program}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{program} {args:?} did not start (said {line:?})");
        }
        Ok(Self {
            child,
            name: program.into(),
        })
    }

    pub fn spawn(place: &Place<'_>, program: &str, args: &[&str]) -> Result<Self> {
        let child = command(place, program, args)?
            .spawn()
            .with_context(|| format!("spawning {program}"))?;
        Ok(Self {
            child,
            name: program.into(),
        })
    }

    /// Like [`Proc::spawn`], with stdout and stderr appended to `log`.
    pub fn spawn_logged(
        place: &Place<'_>,
        program: &str,
        args: &[&str],
        log: &Path,
    ) -> Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = command(place, program, args)?
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {program}"))?;
        Ok(Self {
            child,
            name: program.into(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.wait().ok()
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn itoa_writes_decimal() {
        let mut b = [0u8; 12];
        assert_eq!(super::itoa(0, &mut b), b"0");
        assert_eq!(super::itoa(4294967295, &mut b), b"4294967295");
    }
}
