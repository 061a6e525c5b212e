//! DNS helpers for the tests of DNS capture: dnsmasq as a DNS server (the cluster's, or a
//! pod's DNS proxy on 15053), and `mst-dnsq`, a strict client of our own.
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{
    Pod,
    cmd::{self, Place, Proc},
};

const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// dnsmasq in the foreground with nothing of the host's (no resolv.conf, no hosts file, no
/// pid file), bound to exactly the addresses given.
pub fn dnsmasq(place: &Place<'_>, args: &[&str]) -> anyhow::Result<Proc> {
    let mut all = vec![
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--pid-file",
        "--log-facility=/dev/null",
        "--user=root",
        "--group=root",
        "--conf-file=/dev/null",
    ];
    // Started as root it would switch to --user; as another uid it stays that uid.
    if place.uid != 0 {
        all.retain(|a| !a.starts_with("--user") && !a.starts_with("--group"));
    }
    all.extend(args);
    Proc::spawn(place, DNSMASQ, &all)
}

pub fn dnsq(
    pod: &Pod,
    uid: u32,
    server: &str,
    name: &str,
    flags: &[&str],
) -> anyhow::Result<Value> {
    let mut args = vec![server, name];
    args.extend(flags);
    let out = cmd::command(&pod.place(uid, uid), &dnsq_bin(), &args)?
        .output()
        .context("running mst-dnsq")?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "mst-dnsq said {:?} {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The `mst-dnsq` binary beside the probe.
fn dnsq_bin() -> String {
    crate::topology::probe_bin().replace("mst-probe", "mst-dnsq")
}

/// Polls until `server` answers `svc.mesh.test` with `want` (the server just started).
pub fn wait_answers(pod: &Pod, uid: u32, server: &str, want: &str) -> anyhow::Result<()> {
    let mut last = Value::Null;
    for _ in 0..50 {
        last = dnsq(pod, uid, server, "svc.mesh.test", &[])?;
        if last["answer"] == want {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{server} in pod {} does not answer: {last}", pod.name)
}
