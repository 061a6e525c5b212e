//! `meshsteer status`: the agent's status file plus live counters from the pinned maps, under
//! the same names as in `status --json` since the first release (`outbound_<rule>`, …).
use std::path::Path;

use anyhow::Result;

use crate::{
    bpf::{counters::Counters, maps, pins::Pins},
    spec::resolv::NameserversFrom,
    telemetry::{
        catalog,
        status::{AgentStatus, EnrolledBy, PodStatus},
    },
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
            let mut shown: std::collections::BTreeMap<String, u64> = catalog
                .iter()
                .map(|i| (i.key.clone(), c.0[i.index]))
                .collect();
            // Not a counter but a count: its live redirected connections, against its budget.
            if let Some(l) = counters.live(id) {
                shown.insert(
                    "orig_dst_live".into(),
                    u64::try_from(l.orig_dst).unwrap_or(0),
                );
            }
            pod.counters = Some(shown);
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
    if let Some(b) = doc.budget {
        println!(
            "budget per pod (--max-pods {}): {} ports, {} CIDRs per list, {} addresses, {} live \
             redirected connections",
            b.max_pods, b.ports, b.cidrs, b.local_addrs, b.orig_dst
        );
    }
    for pod in &doc.pods {
        println!("{}\t{}", pod.name, pod.state);
        if pod.fail_closed {
            println!("\tfail closed: its connect()s fail (EPERM), inbound connections refused");
        }
        if pod.enrolled_by == Some(EnrolledBy::Watch) {
            println!(
                "\tenrolled by the watch, not at its sandbox's CNI ADD: connections it made \
                 before that were not captured"
            );
        }
        if let Some(line) = nameservers_line(pod) {
            println!("\t{line}");
        }
        for w in &pod.warnings {
            println!("\twarning: {w}");
        }
        if let Some(u) = pod.usage {
            println!(
                "\tuses {} ports, {}+{} CIDRs (-x, -i), {} addresses",
                u.ports, u.cidr_exclude, u.cidr_include, u.local_addrs
            );
        }
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

/// The nameservers DNS capture redirects, and which source gave them (docs/dns.md).
fn nameservers_line(pod: &PodStatus) -> Option<String> {
    let from = pod.nameservers_from?;
    let from = match from {
        NameserversFrom::Spec => "the spec's nameservers",
        NameserversFrom::ResolvConf => "the spec's resolvConf",
        NameserversFrom::Pod => "the pod's resolv.conf",
        NameserversFrom::Kubernetes => "the pod's dnsPolicy",
    };
    let list: Vec<String> = pod.nameservers.iter().map(ToString::to_string).collect();
    let list = if list.is_empty() {
        "none".to_string()
    } else {
        list.join(" ")
    };
    Some(format!("nameservers {list} (from {from})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{source::change::SourceKey, telemetry::status::PodState};

    #[test]
    fn shows_the_nameservers_and_their_source() {
        let mut pod = PodStatus {
            name: "a".into(),
            source: SourceKey::File("/p/a.yaml".into()),
            state: PodState::Ready,
            cgroup: None,
            cgroup_id: None,
            pod_id: None,
            capture: None,
            ips: vec![],
            local_addrs: vec![],
            nameservers: vec!["10.96.0.10".parse().unwrap(), "fd00::a".parse().unwrap()],
            nameservers_from: None,
            usage: None,
            fail_closed: false,
            accelerate: None,
            warnings: vec![],
            enrolled_by: None,
            options: None,
            counters: None,
        };
        assert_eq!(nameservers_line(&pod), None);
        pod.nameservers_from = Some(NameserversFrom::Pod);
        assert_eq!(
            nameservers_line(&pod).unwrap(),
            "nameservers 10.96.0.10 fd00::a (from the pod's resolv.conf)"
        );
    }
}
