//! What the running agent reports: the status file (read by `meshsteer status` and `trace`)
//! and the live view behind `/healthz`, `/readyz` and `/metrics`.
use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    counters::{self, Counters},
    datapath::Pins,
    podmaps,
    pods::PodStatus,
};

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub pid: u32,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (the bound address: with port 0
    /// in `--metrics-addr`, the port the kernel picked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,
    pub pods: Vec<serde_json::Value>,
}

/// The agent loop's state, as the HTTP endpoints see it.
#[derive(Clone, Debug, Default)]
pub struct AgentView {
    pub pods: Vec<PodStatus>,
    /// The pod source was listed in full once and what a previous agent left was reconciled.
    pub reconciled: bool,
    /// The agent loop's last turn (None: not started yet).
    pub heartbeat: Option<Instant>,
}

/// Publishes the agent's state: the status file on every change, the endpoints' view on
/// every change and every turn of the agent loop.
pub struct Reporter {
    status_file: PathBuf,
    metrics_addr: Option<SocketAddr>,
    view: watch::Sender<AgentView>,
}

impl Reporter {
    pub fn new(status_file: &Path, metrics_addr: Option<SocketAddr>) -> Self {
        Self {
            status_file: status_file.to_path_buf(),
            metrics_addr,
            view: watch::Sender::new(AgentView::default()),
        }
    }

    /// The live view, for the HTTP endpoints.
    pub fn subscribe(&self) -> watch::Receiver<AgentView> {
        self.view.subscribe()
    }

    /// The pods changed: the endpoints see them, and the status file is replaced.
    pub fn publish(&self, pods: Vec<PodStatus>) -> Result<()> {
        let written = write_status(&self.status_file, &pods, self.metrics_addr);
        self.view.send_modify(|v| v.pods = pods);
        written
    }

    /// One turn of the agent loop: it is alive, and whether the source is reconciled.
    pub fn heartbeat(&self, reconciled: bool) {
        self.view.send_modify(|v| {
            v.heartbeat = Some(Instant::now());
            v.reconciled = reconciled;
        });
    }
}

/// Atomically replaces the status file (readers never see half a file).
fn write_status(path: &Path, pods: &[PodStatus], metrics_addr: Option<SocketAddr>) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let doc = AgentStatus {
        pid: std::process::id(),
        metrics_addr,
        pods: pods
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?,
    };
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// The running agent's status file.
pub fn read(status_file: &Path) -> Result<AgentStatus> {
    let text = fs::read_to_string(status_file).with_context(|| {
        format!(
            "reading {} (is `meshsteer run` running?)",
            status_file.display()
        )
    })?;
    serde_json::from_str(&text).context("parsing the status file")
}

/// `meshsteer status`: the agent's view plus live counters from the pinned maps, under the
/// same names as in `status --json` since the first release (`outbound_<rule>`, …).
pub fn show(status_file: &Path, bpffs_dir: &Path, json: bool) -> Result<()> {
    let mut doc = read(status_file)?;
    let pins = Pins::new(bpffs_dir);
    let counters = if podmaps::pinned(&pins) {
        Some(Counters::from_pins(&pins)?)
    } else {
        None
    };
    let catalog = counters::catalog();
    for pod in &mut doc.pods {
        let id = pod.get("cgroupId").and_then(serde_json::Value::as_u64);
        if let (Some(counters), Some(id)) = (&counters, id)
            && let Some(c) = counters.pod(id)
        {
            let values: serde_json::Map<String, serde_json::Value> = catalog
                .iter()
                .map(|i| (i.key.clone(), c.0[i.index].into()))
                .collect();
            pod["counters"] = values.into();
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("agent pid {}", doc.pid);
    if let Some(addr) = doc.metrics_addr {
        println!("metrics http://{addr}/metrics");
    }
    for pod in &doc.pods {
        let name = pod["name"].as_str().unwrap_or("?");
        let state = pod["state"].as_str().unwrap_or("?");
        println!("{name}\t{state}");
        if let Some(c) = pod.get("counters").and_then(|c| c.as_object()) {
            let nonzero: Vec<String> = c
                .iter()
                .filter(|(_, v)| v.as_u64().is_some_and(|v| v > 0))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if !nonzero.is_empty() {
                println!("\t{}", nonzero.join(" "));
            }
        }
    }
    Ok(())
}
