//! The previous pin layout's agent, for the upgrade test: the release agent of the newest commit
//! whose `LAYOUT_VERSION` is one below the working tree's. The commit is found in git history,
//! exported with `git archive` (no second worktree), built with its own target dir under
//! `target/previous-layout/`, and only its binary is kept there, named by layout and stamped
//! with the commit: a rerun with the same history builds nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use crate::process::run;
use crate::workspace::host_target_dir;

/// The file that says the layout version.
const LAYOUT_FILE: &str = "common/src/maps/mod.rs";
const LAYOUT_DECL: &str = "pub const LAYOUT_VERSION: u32 = ";

/// Builds (or finds cached) the previous layout's agent and returns its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let current = layout_version(
        &fs::read_to_string(root.join(LAYOUT_FILE))
            .with_context(|| format!("reading {LAYOUT_FILE}"))?,
    )?;
    ensure!(current > 1, "layout {current} has no previous layout");
    let want = current - 1;
    let commit = last_commit_with(root, want)?;
    let dir = host_target_dir(root).join("previous-layout");
    let bin = dir.join(format!("meshsteer-v{want}"));
    let stamp = dir.join(format!("meshsteer-v{want}.commit"));
    if bin.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == commit) {
        return Ok(bin);
    }
    eprintln!(
        "building the layout-{want} agent of commit {commit} (once; cached in {})",
        dir.display()
    );
    let started = Instant::now();
    let src = dir.join("src");
    let target = dir.join("target");
    let _ = fs::remove_dir_all(&src);
    fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    export(root, &commit, &src)?;
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&src)
        .args([
            "build",
            "--release",
            "--package",
            "meshsteer",
            "--target-dir",
        ])
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR");
    run(&mut cargo).with_context(|| format!("building the layout-{want} agent ({commit})"))?;
    fs::copy(target.join("release/meshsteer"), &bin)
        .with_context(|| format!("copying the layout-{want} agent to {}", bin.display()))?;
    fs::write(&stamp, &commit)?;
    // One build's worth of disk: the source (with its eBPF target dir) goes; the host target
    // dir stays so that the next layout's build reuses its dependencies.
    let _ = fs::remove_dir_all(&src);
    eprintln!(
        "built the layout-{want} agent in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(bin)
}

/// The version in the text of [`LAYOUT_FILE`].
fn layout_version(text: &str) -> Result<u32> {
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(LAYOUT_DECL))
        .with_context(|| format!("no `{LAYOUT_DECL}…` in {LAYOUT_FILE}"))?;
    line.trim_end_matches(';')
        .trim()
        .parse()
        .with_context(|| format!("LAYOUT_VERSION {line:?}"))
}

/// The newest commit of HEAD's history with layout `want`: the parent of the commit that moved
/// past it, or HEAD if none has yet (the bump is not committed).
fn last_commit_with(root: &Path, want: u32) -> Result<String> {
    let commits = git(
        root,
        &["rev-list", "--first-parent", "HEAD", "--", LAYOUT_FILE],
    )?;
    let mut newer: Option<&str> = None;
    for commit in commits.lines() {
        let text = git(root, &["show", &format!("{commit}:{LAYOUT_FILE}")])?;
        let version = layout_version(&text)?;
        if version == want {
            let last = match newer {
                Some(bump) => git(root, &["rev-parse", &format!("{bump}^")])?,
                None => git(root, &["rev-parse", "HEAD"])?,
            };
            return Ok(last.trim().to_string());
        }
        ensure!(
            version > want,
            "git history goes from layout {version} to a newer one without layout {want}"
        );
        newer = Some(commit);
    }
    bail!(
        "no commit with LAYOUT_VERSION {want} in git history (a shallow clone? fetch the full \
         history, e.g. `git fetch --unshallow`): the upgrade test needs that layout's agent"
    )
}

fn git(root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(root)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .context("running git")?;
    ensure!(out.status.success(), "`git {}` failed", args.join(" "));
    Ok(String::from_utf8(out.stdout)?)
}

/// `git archive COMMIT | tar -x -C DIR`.
fn export(root: &Path, commit: &str, dir: &Path) -> Result<()> {
    let mut archive = Command::new("git")
        .current_dir(root)
        .args(["archive", "--format=tar", commit])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let stdout = archive.stdout.take().context("git archive's stdout")?;
    let status = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dir)
        .stdin(stdout)
        .status()
        .context("running tar")?;
    ensure!(status.success(), "tar -x failed ({status})");
    ensure!(archive.wait()?.success(), "git archive {commit} failed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_layout_version() {
        let text = "/// doc\npub const LAYOUT_VERSION: u32 = 3;\n";
        assert_eq!(layout_version(text).unwrap(), 3);
        assert!(layout_version("const X: u32 = 3;").is_err());
    }

    #[test]
    fn the_workspace_history_has_the_previous_layout() {
        let root = crate::workspace::root().unwrap();
        let current = layout_version(&fs::read_to_string(root.join(LAYOUT_FILE)).unwrap()).unwrap();
        let commit = last_commit_with(&root, current - 1).unwrap();
        let text = git(&root, &["show", &format!("{commit}:{LAYOUT_FILE}")]).unwrap();
        assert_eq!(layout_version(&text).unwrap(), current - 1);
    }
}
