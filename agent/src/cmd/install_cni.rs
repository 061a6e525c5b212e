//! `meshsteer install-cni`: installs the CNI plugin as istio-cni's install-cni does. It copies
//! `meshsteer-cni` into the CNI bin dir, puts its entry last in the primary conflist, and keeps
//! it there: a primary plugin that rewrites its file (its own agent restarting, an upgrade)
//! drops the entry, and inotify on the conf dir (with a slow poll behind it) has it put back.
//! On SIGTERM or SIGINT it leaves everything in place: while the agent is away, ADD fails
//! closed, so no meshed pod starts uncaptured. Only `--uninstall` (or `meshsteer uninstall
//! --cni-conf-dir …`) removes it; a running install-cni is asked to (SIGUSR1), and then idles
//! so that it does not put the entry back.
use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    cmd::args::InstallCniArgs,
    host::{
        cni_conf::{self, ConfDirLock, InstallError, Installed},
        conflist::{Entry, PLUGIN_TYPE},
        locks,
    },
    sys::{inotify::DirWatch, signal as sys_signal},
};

/// The poll behind inotify: it catches what inotify cannot report (an overflowed queue, the
/// directory replaced, the binary removed from the bin dir, which is not watched).
const POLL: Duration = Duration::from_secs(5);
/// How long a second install-cni waits for the first (a rolling update) to let go.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// How long an uninstall waits for a running install-cni to have removed everything.
const UNINSTALL_WAIT: Duration = Duration::from_secs(30);

/// What install-cni keeps in place.
#[derive(Debug, Clone)]
pub struct Installer {
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// The binary copied into `bin_dir`.
    pub plugin_bin: PathBuf,
    /// The file to put the entry in (None: the primary one).
    pub conflist: Option<String>,
    pub entry: Entry,
}

/// Why [`watch`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// SIGTERM or SIGINT: everything stays.
    Stopped,
    /// SIGUSR1 from an uninstall.
    Uninstall,
}

impl Installer {
    pub fn from_args(a: &InstallCniArgs) -> Result<Self> {
        let socket = a.cni_socket.to_str().filter(|s| s.starts_with('/'));
        let Some(socket) = socket else {
            bail!(
                "--cni-socket {}: must be an absolute path in UTF-8 (meshsteer-cni refuses others)",
                a.cni_socket.display()
            );
        };
        if let Some(name) = &a.conflist
            && (name.contains('/') || name.starts_with('.'))
        {
            bail!("--conflist {name}: a file name in --cni-conf-dir, without a directory");
        }
        let plugin_bin = match &a.plugin_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("finding this executable, next to which meshsteer-cni is")?
                .with_file_name(PLUGIN_TYPE),
        };
        Ok(Self {
            conf_dir: a.dirs.cni_conf_dir.clone(),
            bin_dir: a.dirs.cni_bin_dir.clone(),
            plugin_bin,
            conflist: a.conflist.clone(),
            entry: Entry {
                agent_socket: socket.to_string(),
            },
        })
    }

    /// The binary (compared byte for byte) and the entry, now.
    pub fn install(&self) -> Result<Installed, InstallError> {
        if cni_conf::install_binary(&self.plugin_bin, &self.bin_dir)? {
            info!(dir = %self.bin_dir.display(), "copied {PLUGIN_TYPE}");
        }
        cni_conf::install(&self.conf_dir, self.conflist.as_deref(), &self.entry)
    }

    /// Puts back what is missing; what it did, if anything.
    pub fn reconcile(&self) -> Result<Option<Installed>, InstallError> {
        if !cni_conf::binary_present(&self.plugin_bin, &self.bin_dir) {
            cni_conf::install_binary(&self.plugin_bin, &self.bin_dir)?;
            warn!(dir = %self.bin_dir.display(), "{PLUGIN_TYPE} was gone from the bin dir: copied again");
        }
        match cni_conf::install(&self.conf_dir, self.conflist.as_deref(), &self.entry)? {
            Installed::Unchanged(_) => Ok(None),
            done => Ok(Some(done)),
        }
    }
}

fn log_installed(done: &Installed) {
    match done {
        Installed::Unchanged(p) => info!(file = %p.display(), "{PLUGIN_TYPE} entry in place"),
        Installed::Written(p) => info!(file = %p.display(), "{PLUGIN_TYPE} entry written"),
        Installed::Converted { from, to } => info!(
            from = %from.display(),
            to = %to.display(),
            "single-plugin configuration converted to a conflist with the {PLUGIN_TYPE} entry"
        ),
    }
}

pub async fn run(args: InstallCniArgs) -> Result<()> {
    if args.uninstall {
        return uninstall(&args.dirs.cni_conf_dir, &args.dirs.cni_bin_dir);
    }
    let inst = Installer::from_args(&args)?;
    if args.once {
        let done = inst.install()?;
        log_installed(&done);
        return Ok(());
    }
    let _lock = lock(&inst.conf_dir).await?;
    // Signals first: one arriving during the first install is not lost.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    match inst.install() {
        Ok(done) => log_installed(&done),
        // A new node: the primary plugin writes its configuration later.
        Err(InstallError::NoConfig(dir)) => {
            warn!(dir = %dir.display(), "no CNI network configuration yet; waiting for one")
        }
        // Wrong input from the operator or the primary plugin: said at once, loudly.
        Err(e) => return Err(e.into()),
    }
    let ended = watch(&inst, async {
        tokio::select! {
            _ = term.recv() => Ended::Stopped,
            _ = int.recv() => Ended::Stopped,
            _ = usr1.recv() => Ended::Uninstall,
        }
    })
    .await?;
    match ended {
        Ended::Stopped => {
            info!(
                "stopping; the {PLUGIN_TYPE} entry stays (ADD fails closed while the agent is away) until `install-cni --uninstall`"
            );
            Ok(())
        }
        Ended::Uninstall => {
            // Idle even when it failed: exiting would have the kubelet restart this container,
            // which would install again. The uninstall that asked reports what is left.
            match remove(&inst.conf_dir, &inst.bin_dir) {
                Ok(()) => warn!(
                    "uninstalled on request; idling until stopped (a restarted install-cni \
                     installs again)"
                ),
                Err(e) => error!(
                    error = %format!("{e:#}"),
                    "uninstalling on request failed; idling until stopped"
                ),
            }
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            Ok(())
        }
    }
}

/// Waits for the conf dir's lock: one install-cni per directory.
async fn lock(conf_dir: &Path) -> Result<ConfDirLock> {
    let start = Instant::now();
    loop {
        if let Some(lock) = ConfDirLock::try_acquire(conf_dir)? {
            return Ok(lock);
        }
        if start.elapsed() > LOCK_WAIT {
            bail!(
                "another `meshsteer install-cni` is watching {} (waited {LOCK_WAIT:?}): one per \
                 node",
                conf_dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Keeps the binary and the entry in place until `until` says otherwise: after every change
/// in the conf dir, and every [`POLL`]. A file it cannot use (half-written by its plugin,
/// broken by hand) is reported once and tried again at the next change.
pub async fn watch(inst: &Installer, until: impl Future<Output = Ended>) -> Result<Ended> {
    let events = DirWatch::new(&inst.conf_dir)
        .with_context(|| format!("watching {}", inst.conf_dir.display()))?;
    tokio::pin!(until);
    let mut reported: Option<String> = None;
    loop {
        match inst.reconcile() {
            Ok(done) => {
                if let Some(done) = done {
                    log_installed(&done);
                }
                reported = None;
            }
            Err(e) => {
                let text = e.to_string();
                if reported.as_ref() != Some(&text) {
                    error!(error = %text, "cannot put the {PLUGIN_TYPE} entry back");
                    reported = Some(text);
                }
            }
        }
        tokio::select! {
            ended = &mut until => return Ok(ended),
            changed = events.changed() => {
                changed.with_context(|| format!("watching {}", inst.conf_dir.display()))?;
            }
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Removes the entry and the binary: here, or through the install-cni that holds the conf
/// dir's lock (which would otherwise put them back).
pub fn uninstall(conf_dir: &Path, bin_dir: &Path) -> Result<()> {
    match ConfDirLock::try_acquire(conf_dir)? {
        Some(_lock) => remove(conf_dir, bin_dir),
        None => through_installer(conf_dir, bin_dir),
    }
}

/// Removes the entry from every conflist of `conf_dir` and the binary from `bin_dir`.
pub fn remove(conf_dir: &Path, bin_dir: &Path) -> Result<()> {
    for file in cni_conf::uninstall(conf_dir)? {
        info!(file = %file.display(), "{PLUGIN_TYPE} entry removed");
    }
    if cni_conf::remove_binary(bin_dir)? {
        info!(dir = %bin_dir.display(), "{PLUGIN_TYPE} removed");
    }
    Ok(())
}

fn through_installer(conf_dir: &Path, bin_dir: &Path) -> Result<()> {
    let pid = locks::flock_holder(conf_dir)
        .with_context(|| format!("finding who holds {}", conf_dir.display()))?
        .with_context(|| {
            format!(
                "{} is locked by a process outside this pid namespace: run this where \
                 install-cni runs (its pod has hostPID)",
                conf_dir.display()
            )
        })?;
    // Never signal a stranger: SIGUSR1 kills a process that does not handle it.
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "meshsteer" {
        bail!(
            "{} is locked by pid {pid} ({}), not by `meshsteer install-cni`",
            conf_dir.display(),
            comm.trim()
        );
    }
    sys_signal::send(pid, libc::SIGUSR1)
        .with_context(|| format!("asking install-cni (pid {pid}) to uninstall"))?;
    let start = Instant::now();
    loop {
        let left = cni_conf::leftovers(conf_dir)?;
        if left.is_empty() && !bin_dir.join(PLUGIN_TYPE).exists() {
            info!(pid, "uninstalled by the running install-cni");
            return Ok(());
        }
        if start.elapsed() > UNINSTALL_WAIT {
            bail!(
                "install-cni (pid {pid}) has not removed {PLUGIN_TYPE} after {UNINSTALL_WAIT:?} \
                 (still in {left:?}); see its log"
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Scene {
        root: PathBuf,
        inst: Installer,
    }

    impl Scene {
        fn new(tag: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("ms-instcni-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            let (conf_dir, bin_dir) = (root.join("net.d"), root.join("bin"));
            fs::create_dir_all(&conf_dir).unwrap();
            fs::create_dir_all(&bin_dir).unwrap();
            let plugin_bin = root.join("plugin");
            fs::write(&plugin_bin, b"\x7fELF not really").unwrap();
            Self {
                inst: Installer {
                    conf_dir,
                    bin_dir,
                    plugin_bin,
                    conflist: None,
                    entry: Entry {
                        agent_socket: "/run/meshsteer/cni.sock".into(),
                    },
                },
                root,
            }
        }

        fn conflist(&self) -> PathBuf {
            self.inst.conf_dir.join("10-pods.conflist")
        }

        /// As a primary plugin's agent writes its file: a temporary file renamed over it.
        fn rewrite(&self, text: &str) {
            let tmp = self.inst.conf_dir.join(".10-pods.tmp");
            fs::write(&tmp, text).unwrap();
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
            fs::rename(&tmp, self.conflist()).unwrap();
        }

        fn has_entry(&self) -> bool {
            fs::read_to_string(self.conflist()).is_ok_and(|t| t.contains(PLUGIN_TYPE))
        }

        async fn wait_for(&self, what: &str, f: impl Fn(&Self) -> bool) {
            // Well under POLL: only inotify can make it in time.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !f(self) {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    impl Drop for Scene {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    const LIST: &str =
        "{\"cniVersion\":\"1.0.0\",\"name\":\"pods\",\"plugins\":[{\"type\":\"bridge\"}]}\n";

    #[tokio::test]
    async fn the_entry_comes_back_after_the_primary_rewrites_its_file() {
        let s = Scene::new("rewrite");
        s.rewrite(LIST);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let inst = s.inst.clone();
        let watcher = tokio::spawn(async move {
            watch(&inst, async {
                let _ = stopped.await;
                Ended::Stopped
            })
            .await
        });
        s.wait_for("the first install", Scene::has_entry).await;
        assert!(s.inst.bin_dir.join(PLUGIN_TYPE).exists());
        for _ in 0..3 {
            s.rewrite(LIST);
            s.wait_for("the entry to come back", Scene::has_entry).await;
        }
        // A file its plugin broke is left alone, and fixed once the plugin fixes it.
        s.rewrite("{\"plugins\": [");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fs::read_to_string(s.conflist()).unwrap(), "{\"plugins\": [");
        s.rewrite(LIST);
        s.wait_for("the entry after the fix", Scene::has_entry)
            .await;
        // The binary, removed behind its back, comes back at the next look.
        fs::remove_file(s.inst.bin_dir.join(PLUGIN_TYPE)).unwrap();
        s.rewrite(LIST);
        s.wait_for("the binary", |s| s.inst.bin_dir.join(PLUGIN_TYPE).exists())
            .await;
        stop.send(()).unwrap();
        assert_eq!(watcher.await.unwrap().unwrap(), Ended::Stopped);
        // Stopping leaves everything in place.
        assert!(s.has_entry());
        remove(&s.inst.conf_dir, &s.inst.bin_dir).unwrap();
        assert_eq!(fs::read_to_string(s.conflist()).unwrap(), LIST);
        assert!(!s.inst.bin_dir.join(PLUGIN_TYPE).exists());
    }

    #[tokio::test]
    async fn uninstall_under_no_installer_removes_here() {
        let s = Scene::new("uninstall");
        s.rewrite(LIST);
        s.inst.install().unwrap();
        assert!(s.has_entry());
        uninstall(&s.inst.conf_dir, &s.inst.bin_dir).unwrap();
        assert_eq!(fs::read_to_string(s.conflist()).unwrap(), LIST);
        assert!(cni_conf::leftovers(&s.inst.conf_dir).unwrap().is_empty());
    }

    #[test]
    fn flags() {
        use crate::cmd::args::{Cli, Command};
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut argv = vec!["meshsteer", "install-cni"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::InstallCni(a)) => Ok(a),
                Ok(other) => panic!("parsed as {other:?}"),
                Err(e) => Err(e),
            }
        };
        let a = parse(&[]).unwrap();
        assert_eq!(a.dirs.cni_bin_dir, Path::new("/opt/cni/bin"));
        assert_eq!(a.dirs.cni_conf_dir, Path::new("/etc/cni/net.d"));
        assert_eq!(a.cni_socket, Path::new("/run/meshsteer/cni.sock"));
        let inst = Installer::from_args(&a).unwrap();
        assert_eq!(inst.plugin_bin.file_name().unwrap(), PLUGIN_TYPE);
        assert!(parse(&["--once", "--uninstall"]).is_err());
        let rel = parse(&["--cni-socket", "cni.sock"]).unwrap();
        assert!(Installer::from_args(&rel).is_err());
        let dir = parse(&["--conflist", "../x.conflist"]).unwrap();
        assert!(Installer::from_args(&dir).is_err());
        let un = |extra: &[&str]| {
            let mut argv = vec!["meshsteer", "uninstall"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|_| ())
        };
        assert!(un(&[]).is_ok());
        assert!(
            un(&["--cni-conf-dir", "/c"]).is_err(),
            "needs --cni-bin-dir"
        );
        assert!(un(&["--cni-conf-dir", "/c", "--cni-bin-dir", "/b"]).is_ok());
    }
}
