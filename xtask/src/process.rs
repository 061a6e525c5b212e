//! Running commands, finding programs, and who we run as.

use anyhow::{Context, Result, bail, ensure};
use meshsteer_build::describe;
use std::env;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Set on the `sudo` re-run so a sudo that doesn't make us root can't loop.
const REEXEC_MARKER: &str = "MESHSTEER_XTASK_SUDO";

/// Runs `cmd`, failing with the command line if it can't start or exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    ensure!(status.success(), "`{}` failed ({status})", describe(cmd));
    Ok(())
}

/// Runs `cmd` and returns its stdout, or `None` if it can't start or exits non-zero (for probes).
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first executable file called `name` on `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether we run with effective uid 0.
pub fn is_root() -> Result<bool> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = parse_euid(&status).context("no Uid line in /proc/self/status")?;
    Ok(euid == 0)
}

/// The effective uid from `/proc/<pid>/status` (`Uid: real effective saved fs`).
pub fn parse_euid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn home_subdir(var: &str, default: &str) -> Result<PathBuf> {
    if let Some(dir) = env::var_os(var) {
        return Ok(PathBuf::from(dir));
    }
    let home = env::var_os("HOME").with_context(|| format!("neither {var} nor HOME is set"))?;
    Ok(Path::new(&home).join(default))
}

/// Cargo's home (`$CARGO_HOME`, else `~/.cargo`).
pub fn cargo_home() -> Result<PathBuf> {
    home_subdir("CARGO_HOME", ".cargo")
}

/// Rustup's home (`$RUSTUP_HOME`, else `~/.rustup`).
pub fn rustup_home() -> Result<PathBuf> {
    home_subdir("RUSTUP_HOME", ".rustup")
}

/// Returns if we are root; otherwise replaces this process with the same xtask invocation run
/// through `sudo -E`, keeping the toolchain reachable (sudo resets PATH, and HOME may change).
pub fn ensure_root_or_reexec(why: &str) -> Result<()> {
    if is_root()? {
        return Ok(());
    }
    ensure!(
        env::var_os(REEXEC_MARKER).is_none(),
        "{why} needs root, and running through sudo did not make us root"
    );
    let Some(sudo) = find_in_path("sudo") else {
        bail!("{why} needs root and sudo is not installed: run it as root");
    };
    let exe = env::current_exe().context("locating the xtask binary")?;
    let mut cmd = Command::new(sudo);
    cmd.args(["-E", "--", "env"]);
    for (name, value) in [
        ("PATH", env::var_os("PATH")),
        ("CARGO_HOME", Some(cargo_home()?.into_os_string())),
        ("RUSTUP_HOME", Some(rustup_home()?.into_os_string())),
        ("CARGO_MANIFEST_DIR", env::var_os("CARGO_MANIFEST_DIR")),
        ("CARGO", env::var_os("CARGO")),
        (REEXEC_MARKER, Some("1".into())),
    ] {
        if let Some(value) = value {
            cmd.arg(assignment(name, &value));
        }
    }
    cmd.arg(exe).args(env::args_os().skip(1));
    eprintln!("{why} needs root: re-running through sudo");
    Err(cmd.exec()).with_context(|| format!("could not exec `{}`", describe(&cmd)))
}

fn assignment(name: &str, value: &OsStr) -> OsString {
    let mut pair = OsString::from(name);
    pair.push("=");
    pair.push(value);
    pair
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_the_second_field() {
        let status =
            "Name:\tcargo\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(parse_euid(status), Some(0));
        assert_eq!(parse_euid("Uid:\t1000\t1000\t1000\t1000\n"), Some(1000));
        assert_eq!(parse_euid("Name:\tx\n"), None);
    }

    #[test]
    fn finds_sh_on_path() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("surely-not-a-program-meshsteer").is_none());
    }

    #[test]
    fn probe_reports_failure_as_none() {
        assert_eq!(
            probe(Command::new("sh").args(["-c", "echo hi"])).as_deref(),
            Some("hi\n")
        );
        assert_eq!(probe(Command::new("sh").args(["-c", "exit 3"])), None);
    }

    #[test]
    fn env_assignment() {
        assert_eq!(assignment("A", OsStr::new("b=c")), OsString::from("A=b=c"));
    }
}
