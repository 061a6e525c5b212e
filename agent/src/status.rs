//! The status file the agent publishes, and `meshsteer status`.
use std::{fs, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::Pins,
    podmaps::{self, PodMaps},
    pods::PodStatus,
};

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub pid: u32,
    pub pods: Vec<serde_json::Value>,
}

/// Atomically replaces the status file (readers never see half a file).
pub fn publish(path: &Path, pods: &[PodStatus]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let doc = AgentStatus {
        pid: std::process::id(),
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

/// `meshsteer status`: the agent's view plus live counters from the pinned maps.
pub fn show(status_file: &Path, bpffs_dir: &Path, json: bool) -> Result<()> {
    let text = fs::read_to_string(status_file).with_context(|| {
        format!(
            "reading {} (is `meshsteer run` running?)",
            status_file.display()
        )
    })?;
    let mut doc: AgentStatus = serde_json::from_str(&text).context("parsing the status file")?;
    let pins = Pins::new(bpffs_dir);
    let maps = if podmaps::pinned(&pins) {
        Some(PodMaps::from_pins(&pins)?)
    } else {
        None
    };
    let names = podmaps::counter_names();
    for pod in &mut doc.pods {
        let id = pod.get("cgroupId").and_then(serde_json::Value::as_u64);
        if let (Some(maps), Some(id)) = (&maps, id)
            && let Some(c) = maps.counters(id)
        {
            let counters: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .map(|(i, n)| (n.clone(), c.0[*i].into()))
                .collect();
            pod["counters"] = counters.into();
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("agent pid {}", doc.pid);
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
