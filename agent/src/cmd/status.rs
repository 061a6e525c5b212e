//! `meshsteer status`: the agent's status file plus live counters from the pinned maps, under
//! the same names as in `status --json` since the first release (`outbound_<rule>`, …).
use std::path::Path;

use anyhow::Result;

use crate::{
    bpf::{counters::Counters, maps, pins::Pins},
    telemetry::{catalog, status::AgentStatus},
};

pub fn show(status_file: &Path, bpffs_dir: &Path, json: bool) -> Result<()> {
    let mut doc = AgentStatus::read(status_file)?;
    let pins = Pins::new(bpffs_dir);
    let counters = if maps::pinned(&pins) {
        Some(Counters::from_pins(&pins)?)
    } else {
        None
    };
    let catalog = catalog::catalog();
    for pod in &mut doc.pods {
        if let (Some(counters), Some(id)) = (&counters, pod.cgroup_id)
            && let Some(c) = counters.pod(id)
        {
            pod.counters = Some(
                catalog
                    .iter()
                    .map(|i| (i.key.clone(), c.0[i.index]))
                    .collect(),
            );
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
        println!("{}\t{}", pod.name, pod.state);
        let nonzero: Vec<String> = pod
            .counters
            .iter()
            .flatten()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !nonzero.is_empty() {
            println!("\t{}", nonzero.join(" "));
        }
    }
    Ok(())
}
