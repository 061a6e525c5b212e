//! Zero disruption through the agent's lifecycle on a real node: while the client's app makes
//! requests in a loop (each on a new connection, so each one is captured anew), the agent pod
//! is deleted (the DaemonSet recreates it), the DaemonSet is rolled to a new image tag, and the
//! agent's container is killed with SIGKILL (the kubelet restarts it). Every request goes
//! through both sidecars, and none fails.
use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use meshsteer_tests::node_box::NodeBox;

use super::{
    AGENT_NS, AgentPod, AppNs, THROUGH_BOTH, agent_pods, client, deploy_agent, node, ready_agent,
    server,
};

const NS: &str = "mesh-load";
/// The second tag of the same agent image the DaemonSet is rolled to.
const ROLLED: &str = "meshsteer:rolled";
/// Requests per second, each on its own connection.
const RATE: u32 = 20;

#[test]
fn requests_survive_agent_delete_roll_and_sigkill() -> Result<()> {
    let mut node = node()?;
    let t = Instant::now();
    // The same image under a second name: what a new release looks like to the DaemonSet.
    // containerd knows it by its normalised name, taken from the imported one.
    let listed = meshsteer_tests::node_box::checked(node.ctr().args(["image", "ls", "-q"]))?;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let dev = listed
        .lines()
        .find(|l| l.ends_with("/meshsteer:dev"))
        .with_context(|| format!("no meshsteer:dev image in {listed:?}"))?;
    let rolled = format!("{}{ROLLED}", dev.trim_end_matches("meshsteer:dev"));
    let _ = meshsteer_tests::node_box::checked(node.ctr().args(["image", "rm", &rolled]));
    meshsteer_tests::node_box::checked(node.ctr().args(["image", "tag", dev, &rolled]))?;
    let result = scenario(&mut node, &rolled);
    if result.is_err() {
        node.dump(AGENT_NS);
    }
    eprintln!("node::agent_lifecycle: {:.1?}", t.elapsed());
    result
}

fn scenario(node: &mut NodeBox, rolled: &str) -> Result<()> {
    let first = deploy_agent(node)?;
    let ns = AppNs::create(node, NS)?;
    ns.run(vec![server(NS, "web"), client(NS, "client")])?;
    ns.request_through_both("client", "web")?;
    let before = (
        ns.sessions("client", "outbound")?,
        ns.sessions("web", "inbound")?,
    );

    let mut load = Load::start(node, &ns.ip("web")?)?;
    load.wait_for_more(RATE as usize)?;

    // (a) The agent pod deleted: the DaemonSet makes a new one.
    node.kc(&["-n", AGENT_NS, "delete", "pod", &first.name, "--wait=false"])?;
    let second = NodeBox::wait_for("a new agent pod Ready", Duration::from_secs(120), || {
        Ok(ready_agent(node)?.filter(|p| p.uid != first.uid))
    })?;
    load.wait_for_more(RATE as usize)?;

    // (b) Rolled to a new tag (init container and agent alike).
    node.kc(&[
        "-n",
        AGENT_NS,
        "set",
        "image",
        "daemonset/meshsteer",
        &format!("agent={rolled}"),
        &format!("bpffs={rolled}"),
    ])?;
    let third = NodeBox::wait_for(
        "the rolled agent pod Ready",
        Duration::from_secs(120),
        || Ok(ready_agent(node)?.filter(|p| p.uid != second.uid && p.image == rolled)),
    )?;
    load.wait_for_more(RATE as usize)?;

    // (c) The agent killed outright: the kubelet restarts the container in the same pod.
    let pid = node.container_pid(AGENT_NS, &third.name, "agent")?;
    // SAFETY: kill() takes plain integers; the pid is the agent container's process.
    let killed = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    ensure!(
        killed == 0,
        "kill {pid}: {}",
        std::io::Error::last_os_error()
    );
    NodeBox::wait_for(
        "the killed agent restarted and Ready",
        Duration::from_secs(120),
        || Ok(restarted(&agent_pods(node)?, &third)),
    )?;
    load.wait_for_more(RATE as usize)?;

    let lines = load.stop()?;
    ensure!(
        lines.len() >= 4 * RATE as usize,
        "only {} requests made",
        lines.len()
    );
    if let Some(bad) = lines.iter().find(|l| *l != THROUGH_BOTH) {
        bail!("a request did not go through both sidecars: {bad:?}");
    }
    // HAProxy's counters: each request was a session of the client's outbound listener and of
    // the server's inbound listener.
    let after = (
        ns.sessions("client", "outbound")?,
        ns.sessions("web", "inbound")?,
    );
    let n = lines.len() as u64;
    ensure!(
        after.0 - before.0 >= n && after.1 - before.1 >= n,
        "{n} requests, but the sidecars counted {} outbound and {} inbound sessions",
        after.0 - before.0,
        after.1 - before.1
    );
    eprintln!("{n} requests through agent delete, roll and SIGKILL, none failed");
    Ok(())
}

fn restarted(pods: &[AgentPod], before: &AgentPod) -> Option<()> {
    match pods {
        [p] if p.uid == before.uid && p.restarts > before.restarts && p.ready => Some(()),
        _ => None,
    }
}

/// curl in the client's app: `RATE` requests a second, each on a new connection (the
/// request says `Connection: close`), one output line per answer. A failed request writes to
/// stderr, and any stderr output fails the test.
struct Load {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Load {
    fn start(node: &NodeBox, ip: &str) -> Result<Self> {
        let url = format!("http://{ip}/both?n=[1-20000]");
        let mut child = node
            .kubectl()
            .args(["-n", NS, "exec", "client", "-c", "app", "--"])
            .args(["/usr/bin/curl", "-sS", "--fail", "--max-time", "5"])
            .args(["--rate", &format!("{RATE}/s")])
            .args(["-H", "Connection: close", &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the client's request loop")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().context("curl's stdout")?;
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let mut err = child.stderr.take().context("curl's stderr")?;
        let e = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                e.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Ok(Self {
            child,
            lines,
            stderr,
        })
    }

    /// Waits until `n` more answers came, failing as soon as a request failed.
    fn wait_for_more(&mut self, n: usize) -> Result<()> {
        let target = self.lines.lock().unwrap().len() + n;
        let start = Instant::now();
        loop {
            self.check()?;
            if self.lines.lock().unwrap().len() >= target {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the request loop ended early ({status})");
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("no {n} answers in 60 s: the request loop is stuck");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn check(&self) -> Result<()> {
        let err = self.stderr.lock().unwrap();
        ensure!(err.trim().is_empty(), "a request failed: {}", err.trim());
        Ok(())
    }

    /// Stops the loop; the complete answers.
    fn stop(mut self) -> Result<Vec<String>> {
        self.check()?;
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A line cut by the kill is not an answer.
        let mut lines = std::mem::take(&mut *self.lines.lock().unwrap());
        if lines.last().is_some_and(|l| l != THROUGH_BOTH) {
            lines.pop();
        }
        Ok(lines)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
