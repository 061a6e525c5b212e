//! The real `meshsteer` binary, run against a simulated node.
use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    cmd::{self, Place, Proc},
    topology::{Node, Pod},
};

/// The agent binary: `MESHSTEER_BIN` (set by `cargo xtask test`), else the debug build.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("MESHSTEER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/meshsteer"))
}

/// A script under `dir` that runs the agent binary without the capability `cap` (as `setpriv`
/// names it, e.g. `sys_admin`): an agent short of one capability, for [`Agent::start_bin`].
pub fn agent_without(cap: &str, dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir)?;
    let script = dir.join(format!("meshsteer-without-{cap}"));
    let text = format!(
        "#!/bin/sh\nexec setpriv --bounding-set=-{cap} --inh-caps=-{cap} -- {} \"$@\"\n",
        agent_bin().display()
    );
    fs::write(&script, text).with_context(|| format!("writing {}", script.display()))?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    Ok(script)
}

/// The previous pin layout's agent (`MESHSTEER_PREVIOUS_BIN`, built by `cargo xtask test` or
/// `cargo xtask previous-agent` from git history), for the upgrade test.
pub fn previous_agent_bin() -> Result<PathBuf> {
    let bin = std::env::var_os("MESHSTEER_PREVIOUS_BIN").context(
        "MESHSTEER_PREVIOUS_BIN is not set: run through `cargo xtask test`, which builds the \
         previous layout's agent (or set it to `cargo xtask previous-agent`'s output)",
    )?;
    let bin = PathBuf::from(bin);
    anyhow::ensure!(bin.is_file(), "{} is not a file", bin.display());
    Ok(bin)
}

pub struct Agent {
    proc: Option<Proc>,
    /// The binary `run` starts (the one under test unless an upgrade test says otherwise).
    bin: PathBuf,
    pub bpffs_dir: PathBuf,
    pub pods_dir: PathBuf,
    pub status_file: PathBuf,
    work: PathBuf,
    cgroup_root: PathBuf,
    /// Appended to `meshsteer run`'s arguments.
    extra_args: Vec<String>,
}

impl Agent {
    pub fn start(node: &Node) -> Result<Self> {
        Self::start_with(node, &[])
    }

    /// Starts the agent with more `run` arguments (e.g. `--kubernetes …`).
    pub fn start_with(node: &Node, extra_args: &[&str]) -> Result<Self> {
        Self::start_bin(node, &agent_bin(), extra_args)
    }

    /// Starts `bin` as the agent (an upgrade test's previous agent).
    pub fn start_bin(node: &Node, bin: &Path, extra_args: &[&str]) -> Result<Self> {
        let work = std::env::temp_dir().join("meshsteer-tests").join(&node.id);
        let agent = Self {
            proc: None,
            bin: bin.to_path_buf(),
            bpffs_dir: Path::new("/sys/fs/bpf").join(format!("meshsteer-{}", node.id)),
            pods_dir: work.join("pods"),
            status_file: work.join("status.json"),
            work,
            cgroup_root: node.cgroup_root.clone(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        fs::create_dir_all(&agent.pods_dir)?;
        let mut agent = agent;
        agent.launch()?;
        Ok(agent)
    }

    fn launch(&mut self) -> Result<()> {
        let _ = fs::remove_file(&self.status_file);
        let bin = self.bin.clone();
        let mut args = vec![
            "run",
            "--cgroup-root",
            path_str(&self.cgroup_root),
            "--bpffs-dir",
            path_str(&self.bpffs_dir),
            "--pods-dir",
            path_str(&self.pods_dir),
            "--status-file",
            path_str(&self.status_file),
            // Parallel tests' agents never collide: the port is published in the status file.
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        args.extend(self.extra_args.iter().map(String::as_str));
        let proc = Proc::spawn_logged(&Place::default(), path_str(&bin), &args, &self.log_file())?;
        self.proc = Some(proc);
        self.wait_until(
            Duration::from_secs(20),
            "the agent to publish its status",
            |a| a.status_file.exists(),
        )?;
        Ok(())
    }

    /// The agent's output (shown when a test fails).
    pub fn log_file(&self) -> PathBuf {
        self.work.join("agent.log")
    }

    /// Stops the agent with `signal` (its pins stay) and starts a new one.
    pub fn restart(&mut self, signal: i32) -> Result<()> {
        self.stop(signal);
        self.launch()
    }

    /// Stops the agent with `signal` and starts the agent under test on its pins (an upgrade).
    pub fn upgrade(&mut self, signal: i32) -> Result<()> {
        self.stop(signal);
        self.bin = agent_bin();
        self.launch()
    }

    /// Sends `signal` and reaps the agent process.
    pub fn stop(&mut self, signal: i32) -> Option<std::process::ExitStatus> {
        let mut p = self.proc.take()?;
        p.kill(signal);
        p.wait()
    }

    /// Pods in the datapath's maps (`MS_PODS`), read from the pins.
    pub fn enrolled_pods(&self) -> Result<usize> {
        let pins = meshsteer::inspect::Pins::new(&self.bpffs_dir);
        Ok(meshsteer::inspect::PodMaps::from_pins(&pins)?
            .enrolled()
            .len())
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Writes the pod's spec and waits until the agent reports it `ready`.
    pub fn enrol(&self, pod: &Pod, args: &str) -> Result<()> {
        self.write_spec(&pod.name, &pod.spec(args))?;
        self.wait_state(&format!("test/{}", pod.name), |s| s == "ready")
    }

    pub fn write_spec(&self, file_stem: &str, text: &str) -> Result<()> {
        // Write then rename: the agent never reads half a file.
        let tmp = self.pods_dir.join(format!(".{file_stem}.tmp"));
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.pods_dir.join(format!("{file_stem}.yaml")))?;
        Ok(())
    }

    pub fn remove_spec(&self, file_stem: &str) -> Result<()> {
        fs::remove_file(self.pods_dir.join(format!("{file_stem}.yaml")))?;
        Ok(())
    }

    /// `meshsteer status --json`.
    pub fn status(&self) -> Result<Value> {
        let out = self.cli(&["status", "--json"])?;
        serde_json::from_slice(&out).context("status output")
    }

    /// Runs the agent binary with these arguments plus this agent's locations.
    pub fn cli(&self, args: &[&str]) -> Result<Vec<u8>> {
        Ok(cmd::host(path_str(&agent_bin()), &self.located(args))?.stdout)
    }

    /// `args` plus the locations of this agent the subcommand needs.
    fn located<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut full: Vec<&str> = args.to_vec();
        let sub = args.first().copied().unwrap_or_default();
        if matches!(sub, "status" | "trace" | "explain") {
            full.extend(["--status-file", path_str(&self.status_file)]);
        }
        if matches!(sub, "status" | "uninstall" | "trace") {
            full.extend(["--bpffs-dir", path_str(&self.bpffs_dir)]);
        }
        if sub == "explain" {
            full.extend(["--pods-dir", path_str(&self.pods_dir)]);
        }
        full
    }

    /// Starts `meshsteer trace <args>` in the background, its output going to `out`.
    pub fn trace(&self, args: &[&str], out: &Path) -> Result<Proc> {
        let mut full = vec!["trace"];
        full.extend_from_slice(args);
        Proc::spawn_logged(
            &Place::default(),
            path_str(&agent_bin()),
            &self.located(&full),
            out,
        )
    }

    /// Where the agent serves /metrics, /healthz and /readyz (from its status file).
    pub fn metrics_addr(&self) -> Result<SocketAddr> {
        let status: Value = serde_json::from_slice(&fs::read(&self.status_file)?)?;
        let addr = status["metricsAddr"]
            .as_str()
            .context("no metricsAddr in the status file")?;
        Ok(addr.parse()?)
    }

    /// `GET path` from the agent's endpoints: (status code, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.metrics_addr()?, path)
    }

    /// The state string of pod `name` (`ready`, `error: …`), if listed.
    pub fn state(&self, name: &str) -> Option<String> {
        let status = self.status().ok()?;
        status["pods"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["state"].as_str().map(String::from))
    }

    /// The state of pod `name` as the agent last published it, read straight from the status
    /// file (no CLI process: for timing enrolment).
    pub fn published_state(&self, name: &str) -> Option<String> {
        let doc: Value = serde_json::from_slice(&fs::read(&self.status_file).ok()?).ok()?;
        doc["pods"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["state"].as_str().map(String::from))
    }

    /// Pod `name`'s entry in `status --json`, if listed.
    pub fn pod_status(&self, name: &str) -> Option<Value> {
        let status = self.status().ok()?;
        status["pods"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
    }

    /// Waits until pod `name`'s status entry satisfies `ok` (e.g. a changed spec took effect:
    /// a pod that was ready before is "ready" at once, before the agent read the change).
    pub fn wait_pod(&self, name: &str, ok: impl Fn(&Value) -> bool) -> Result<()> {
        self.wait_until(Duration::from_secs(5), &format!("pod {name}"), |a| {
            a.pod_status(name).is_some_and(|p| ok(&p))
        })
        .with_context(|| format!("last status of {name}: {:?}", self.pod_status(name)))
    }

    pub fn wait_state(&self, name: &str, ok: impl Fn(&str) -> bool) -> Result<()> {
        self.wait_until(Duration::from_secs(5), &format!("pod {name}"), |a| {
            a.state(name).is_some_and(|s| ok(&s))
        })
        .with_context(|| format!("last state of {name}: {:?}", self.state(name)))
    }

    /// The sk_lookup slots whose trampolines are pinned (this agent's build), in order: the
    /// pool it loads ahead, and any slot past it that a pod holds.
    pub fn trampoline_slots(&self) -> Vec<u32> {
        let programs = meshsteer::inspect::Pins::new(&self.bpffs_dir).programs();
        let mut slots: Vec<u32> = fs::read_dir(programs)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|build| {
                fs::read_dir(build.path().join("sk_lookup"))
                    .into_iter()
                    .flatten()
            })
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        slots.sort_unstable();
        slots
    }

    pub fn wait_until(&self, limit: Duration, what: &str, f: impl Fn(&Self) -> bool) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if f(self) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("timed out after {limit:?} waiting for {what}")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop(libc::SIGTERM);
        if std::thread::panicking()
            && let Ok(log) = fs::read_to_string(self.log_file())
        {
            eprintln!("--- meshsteer agent log ---\n{log}--- end of agent log ---");
        }
        // Unpin everything: the test's programs leave with it (a previous agent's pins too,
        // if an upgrade test failed before the upgrade).
        let _ = self.cli(&["uninstall"]);
        if self.bin != agent_bin() {
            let _ = cmd::host(
                path_str(&self.bin),
                &["uninstall", "--bpffs-dir", path_str(&self.bpffs_dir)],
            );
        }
        let _ = fs::remove_dir(&self.bpffs_dir);
        let _ = fs::remove_dir_all(&self.work);
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// A plain HTTP/1.0 GET (the agent closes the connection after its response).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no header end in {response:?}"))?;
    let code = head
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status code in {head:?}"))?;
    Ok((code, body.to_string()))
}
