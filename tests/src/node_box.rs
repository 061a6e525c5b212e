//! A real Kubernetes node for the tests: `tests/node-box/node-box.sh` runs an API server,
//! kube-scheduler, kube-controller-manager and a kubelet on containerd, with a CNI bridge
//! (`cni-box0`, 10.244.0.0/24, no route out). Images come from `cargo xtask image`
//! (`$MESHSTEER_IMAGES`), imported into containerd's `k8s.io` namespace.
//!
//! [`NodeBox::start`] stops any node a killed run left, starts one, and stops it again when
//! dropped (panics included): stop leaves nothing of the node on the host.
//!
//! The `node` area's tests share one node ([`shared`]): each holds it alone while it runs, and
//! the last one out stops it, so the node's start and stop (about 35 s together) are paid once
//! per run of consecutive tests rather than once per test. A test that finds the node idle
//! (between runs, or after a test left it) simply starts a new one.
use std::{
    collections::BTreeSet,
    fs,
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{area, kube::repo_root};

/// The node's name, as the kubelet registers it.
pub const NODE_NAME: &str = "box-node";

pub struct NodeBox {
    dir: PathBuf,
    ctr_dir: PathBuf,
    imported: BTreeSet<PathBuf>,
}

/// The `node` area's node, while some test of the area holds or awaits it.
static SHARED: Mutex<Option<NodeBox>> = Mutex::new(None);
/// Tests holding or awaiting [`SHARED`]: the last one out stops the node.
static WANTED: AtomicUsize = AtomicUsize::new(0);

/// The shared node, held alone by one test (the others wait): see the module's doc.
pub struct Shared {
    node: MutexGuard<'static, Option<NodeBox>>,
    _area: area::AreaGuard,
}

/// Enters the calling test's area and takes the shared node, starting it if none runs. A test
/// that failed half-way may have left the node in any state: each test makes sure of what it
/// needs (the agent deployed, its own namespace) rather than trusting the previous one.
pub fn shared() -> Result<Shared> {
    let area = area::enter();
    WANTED.fetch_add(1, Ordering::SeqCst);
    let mut node = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if node.is_none() {
        match NodeBox::start() {
            Ok(n) => *node = Some(n),
            Err(e) => {
                WANTED.fetch_sub(1, Ordering::SeqCst);
                return Err(e);
            }
        }
    }
    Ok(Shared { node, _area: area })
}

impl Deref for Shared {
    type Target = NodeBox;
    fn deref(&self) -> &NodeBox {
        self.node.as_ref().expect("a started node")
    }
}

impl DerefMut for Shared {
    fn deref_mut(&mut self) -> &mut NodeBox {
        self.node.as_mut().expect("a started node")
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Decided under the lock: a test that comes later starts a node of its own.
        if WANTED.fetch_sub(1, Ordering::SeqCst) == 1
            && let Some(node) = self.node.take()
        {
            drop(node);
            // The agent's pins outlive the node by design: with the node gone, nothing else
            // may capture the machine's traffic (the next area's tests run on it).
            if let Some(agent) = std::env::var_os("MESHSTEER_BIN")
                && let Err(e) = checked(Command::new(agent).arg("uninstall"))
            {
                eprintln!("warning: meshsteer uninstall after the node stopped: {e:#}");
            }
        }
    }
}

fn script() -> PathBuf {
    repo_root().join("tests/node-box/node-box.sh")
}

fn run_script(verb: &str) -> Result<()> {
    crate::cmd::script(&script(), verb)
}

/// The image archives `cargo xtask image` built (`$MESHSTEER_IMAGES`): a missing one is a
/// failure, never a skip.
pub fn image_archive(file: &str) -> Result<PathBuf> {
    let dir = std::env::var_os("MESHSTEER_IMAGES").context(
        "MESHSTEER_IMAGES is not set: run the tests through `cargo xtask test`, which builds \
         the images (`cargo xtask image`)",
    )?;
    let path = PathBuf::from(dir).join(file);
    if !path.is_file() {
        bail!("{} is missing: run `cargo xtask image`", path.display());
    }
    Ok(path)
}

impl NodeBox {
    pub fn start() -> Result<Self> {
        crate::require_root();
        enough_disk(Path::new("/var/lib"))?;
        // A node a killed run left would hold the ports and mounts.
        run_script("stop")?;
        let t = Instant::now();
        run_script("start")?;
        eprintln!("node-box: node Ready in {:.1?}", t.elapsed());
        let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
        Ok(Self {
            dir: std::env::var_os("NB_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache/node-box")),
            ctr_dir: std::env::var_os("CTR_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/run/node-box/containerd".into()),
            imported: BTreeSet::new(),
        })
    }

    /// The runtime's CNI directories: configurations and plugin binaries.
    pub fn cni_dirs(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("cni/net.d"), self.dir.join("cni/bin"))
    }

    /// The kubelet's static pod directory (`staticPodPath`).
    pub fn static_pod_dir(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", self.dir.join("kubeconfig"));
        cmd
    }

    /// `kubectl args…`, which must succeed: its stdout.
    pub fn kc(&self, args: &[&str]) -> Result<String> {
        let out = checked(self.kubectl().args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a")
            .arg(self.ctr_dir.join("containerd.sock"))
            .args(["-n", "k8s.io"]);
        cmd
    }

    /// Imports an image archive into the node's containerd, once per node.
    pub fn import(&mut self, archive: &Path) -> Result<()> {
        if self.imported.contains(archive) {
            return Ok(());
        }
        checked(self.ctr().args(["image", "import"]).arg(archive))?;
        self.imported.insert(archive.to_path_buf());
        Ok(())
    }

    /// The host pid of a pod's container (from its containerd task).
    pub fn container_pid(&self, namespace: &str, pod: &str, container: &str) -> Result<u32> {
        let id = self.kc(&[
            "-n",
            namespace,
            "get",
            "pod",
            pod,
            "-o",
            &format!(
                "jsonpath={{.status.containerStatuses[?(@.name==\"{container}\")].containerID}}"
            ),
        ])?;
        let id = id.trim().strip_prefix("containerd://").with_context(|| {
            format!("{namespace}/{pod}: no containerd ID for {container}: {id:?}")
        })?;
        let out = checked(self.ctr().args(["task", "ls"]))?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(id)).then(|| f.next()?.parse().ok())?
            })
            .with_context(|| format!("no running task for {namespace}/{pod}/{container} ({id})"))
    }

    /// Polls `check` every half second until it gives `Some`, for at most `limit`; on timeout
    /// the error says what was awaited and what `check` last saw.
    pub fn wait_for<T>(
        what: &str,
        limit: Duration,
        mut check: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        let start = Instant::now();
        let mut last = String::from("(nothing yet)");
        loop {
            match check() {
                Ok(Some(v)) => {
                    eprintln!("node-box: {what} after {:.1?}", start.elapsed());
                    return Ok(v);
                }
                Ok(None) => {}
                Err(e) => last = format!("{e:#}"),
            }
            if start.elapsed() > limit {
                bail!("no {what} after {limit:?}; last: {last}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Everything that explains a failure: the pods, their events, the kubelet's, containerd's
    /// and the agent's logs.
    pub fn dump(&self, agent_namespace: &str) {
        let section = |title: &str, text: String| eprintln!("===== {title}\n{text}");
        let kc = |args: &[&str]| {
            self.kubectl()
                .args(args)
                .output()
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_else(|e| e.to_string())
        };
        section("pods", kc(&["get", "pods", "-A", "-o", "wide"]));
        section(
            "events",
            kc(&["get", "events", "-A", "--sort-by=.lastTimestamp"]),
        );
        section(
            "agent log",
            kc(&[
                "-n",
                agent_namespace,
                "logs",
                "-l",
                "app.kubernetes.io/name=meshsteer",
                "--tail=80",
            ]),
        );
        section(
            "agent log (previous container)",
            kc(&[
                "-n",
                agent_namespace,
                "logs",
                "-l",
                "app.kubernetes.io/name=meshsteer",
                "--previous",
                "--tail=40",
            ]),
        );
        for log in ["kubelet", "containerd", "apiserver", "kcm"] {
            let path = self.dir.join("run").join(format!("{log}.log"));
            let text =
                fs::read_to_string(&path).unwrap_or_else(|e| format!("{}: {e}", path.display()));
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            section(
                &format!("{log} log (last 60 lines)"),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            );
        }
    }
}

impl Drop for NodeBox {
    fn drop(&mut self) {
        let t = Instant::now();
        match run_script("stop") {
            Ok(()) => eprintln!("node-box: stopped in {:.1?}", t.elapsed()),
            Err(e) => eprintln!("warning: {e:#}"),
        }
    }
}

/// Output of a command that must succeed; a failure carries its stderr.
pub fn checked(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// The kubelet evicts every pod under disk pressure (the node's threshold is 1% free): a test
/// that ran into it would fail far from its cause, so say it up front.
fn enough_disk(path: &Path) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: zeroed statvfs is a valid out-buffer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` a valid out-buffer, both outliving the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", path.display()));
    }
    let (avail, size) = (
        st.f_bavail as u64 * st.f_frsize as u64,
        st.f_blocks as u64 * st.f_frsize as u64,
    );
    const GIB: u64 = 1 << 30;
    anyhow::ensure!(
        avail >= 3 * GIB && avail * 100 >= size * 3,
        "only {} MiB of {} GiB free on {}: the test node's kubelet evicts pods under disk \
         pressure; free some disk (old target/ directories) first",
        avail >> 20,
        size / GIB,
        path.display()
    );
    Ok(())
}
