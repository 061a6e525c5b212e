//! `/metrics`: one scrape, in the Prometheus text format (0.0.4), encoded with
//! prometheus-client. Counters are read from the BPF maps at scrape time, through handles of
//! the server's own; pods and their states come from the agent loop's published view.
use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, prometheus_text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::Registry,
};
use tokio::sync::watch;

use meshsteer_common::maps::{LAYOUT_VERSION, PodCounters, node_counter};

use super::{
    catalog::{self, CounterInfo, POD_FAMILIES},
    reporter::AgentView,
    status::PodState,
};
use crate::bpf::counters::Counters;
use crate::spec::budget::{Budget, Usage};

/// The `Content-Type` of [`scrape`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The text of one scrape. Blocking: each map read is a syscall (one per pod, plus a walk of
/// `MS_ORIG_DST`), so call it off the runtime's worker threads.
pub fn scrape(
    counters: &Counters,
    view: &watch::Receiver<AgentView>,
) -> Result<String, fmt::Error> {
    render(Scrape::take(counters, view))
}

/// Everything one scrape exposes, read at once.
#[derive(Debug, Default)]
struct Scrape {
    /// (pod name, its counters), enrolled pods only.
    pods: Vec<(String, PodCounters)>,
    ready_pods: u64,
    error_pods: u64,
    fail_closed_pods: u64,
    /// The node's per-pod budgets, and what each pod's capture takes of them.
    budget: Option<Budget>,
    usage: Vec<(String, Usage)>,
    /// (pod name, its live redirected connections).
    orig_dst_live: Vec<(String, u64)>,
    orig_dst_entries: u64,
    owner_from_task: u64,
    trace_dropped: u64,
}

impl Scrape {
    fn take(counters: &Counters, view: &watch::Receiver<AgentView>) -> Self {
        // Copied out first: the view stays borrowed (the agent loop kept from publishing)
        // for no map read.
        let (pods, usage, fail_closed_pods, budget) = {
            let v = view.borrow();
            let pods: Vec<(String, Option<u64>, bool)> = v
                .pods
                .iter()
                .map(|p| (p.name.clone(), p.cgroup_id, p.state == PodState::Ready))
                .collect();
            let usage: Vec<(String, Usage)> = v
                .pods
                .iter()
                .filter_map(|p| Some((p.name.clone(), p.usage?)))
                .collect();
            let fail_closed = v.pods.iter().filter(|p| p.fail_closed).count() as u64;
            (pods, usage, fail_closed, v.budget)
        };
        let c = counters;
        let ready_pods = pods.iter().filter(|p| p.2).count() as u64;
        Self {
            ready_pods,
            error_pods: pods.len() as u64 - ready_pods,
            fail_closed_pods,
            budget,
            usage,
            orig_dst_live: pods
                .iter()
                .filter_map(|(name, id, _)| {
                    let live = c.live((*id)?)?.orig_dst;
                    Some((name.clone(), u64::try_from(live).unwrap_or(0)))
                })
                .collect(),
            pods: pods
                .into_iter()
                .filter_map(|(name, id, _)| Some((name, c.pod(id?)?)))
                .collect(),
            orig_dst_entries: c.orig_dst_entries() as u64,
            owner_from_task: c.node(node_counter::OWNER_FROM_TASK),
            trace_dropped: c.node(node_counter::TRACE_DROPPED),
        }
    }

    fn encode_pod_families(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let catalog = catalog::catalog();
        for family in POD_FAMILIES {
            let mut metric =
                encoder.encode_descriptor(family.name, family.help, None, MetricType::Counter)?;
            for info in catalog.iter().filter(|i| i.family == family) {
                for (pod, values) in &self.pods {
                    let labels = pod_labels(pod, info);
                    ConstCounter::new(values.0[info.index])
                        .encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }

    fn encode_node(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let mut pods = encoder.encode_descriptor(
            "meshsteer_pods",
            "Pods the agent knows of, by state (error: not enrolled, or an update refused)",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in [("ready", self.ready_pods), ("error", self.error_pods)] {
            ConstGauge::new(n).encode(pods.encode_family(&[("state", state)])?)?;
        }
        gauge(
            encoder,
            "meshsteer_pods_fail_closed",
            "Pods enrolled refused: their connections fail rather than go uncaptured",
            self.fail_closed_pods,
        )?;
        self.encode_budgets(encoder)?;
        gauge(
            encoder,
            "meshsteer_orig_dst_entries",
            "Live original destinations of redirected connections (MS_ORIG_DST)",
            self.orig_dst_entries,
        )?;
        counter(
            encoder,
            "meshsteer_owner_from_task",
            "connect()s on sockets created before the agent ran: owner taken from the \
             connecting task instead of the socket's creator",
            self.owner_from_task,
        )?;
        counter(
            encoder,
            "meshsteer_trace_events_dropped",
            "meshsteer trace records lost to a full ring buffer",
            self.trace_dropped,
        )
    }
}

impl Scrape {
    /// Each pod's share of the maps (`--max-pods`), and what each pod's capture takes.
    fn encode_budgets(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let Some(b) = self.budget else {
            return Ok(());
        };
        gauge(
            encoder,
            "meshsteer_max_pods",
            "Pods that may be enrolled with capture (--max-pods)",
            u64::from(b.max_pods),
        )?;
        let mut limit = encoder.encode_descriptor(
            "meshsteer_pod_budget",
            "Entries one pod may hold in each node-wide map: its capacity / --max-pods",
            None,
            MetricType::Gauge,
        )?;
        let limits = [
            ("ports", b.ports),
            ("cidr_exclude", b.cidrs),
            ("cidr_include", b.cidrs),
            ("local_addrs", b.local_addrs),
            ("orig_dst", b.orig_dst),
        ];
        for (resource, n) in limits {
            ConstGauge::new(u64::from(n))
                .encode(limit.encode_family(&[("resource", resource)])?)?;
        }
        let mut used = encoder.encode_descriptor(
            "meshsteer_pod_budget_used",
            "Entries the pod's capture holds in each node-wide map (see meshsteer_pod_budget)",
            None,
            MetricType::Gauge,
        )?;
        for (pod, u) in &self.usage {
            for (resource, n) in [
                ("ports", u.ports),
                ("cidr_exclude", u.cidr_exclude),
                ("cidr_include", u.cidr_include),
                ("local_addrs", u.local_addrs),
            ] {
                let labels = [("pod", pod.as_str()), ("resource", resource)];
                ConstGauge::new(u64::from(n)).encode(used.encode_family(&labels)?)?;
            }
        }
        for (pod, n) in &self.orig_dst_live {
            let labels = [("pod", pod.as_str()), ("resource", "orig_dst")];
            ConstGauge::new(*n).encode(used.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.encode_pod_families(&mut encoder)?;
        self.encode_node(&mut encoder)
    }
}

fn pod_labels<'a>(pod: &'a str, info: &CounterInfo) -> Vec<(&'static str, &'a str)> {
    std::iter::once(("pod", pod))
        .chain(info.labels.iter().copied())
        .collect()
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

fn render(scrape: Scrape) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register(
        "meshsteer_build",
        "The agent's version and pin layout",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("layout", LAYOUT_VERSION.to_string()),
        ]),
    );
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use meshsteer_common::{maps::counter, outbound::Rule};

    use super::*;

    #[test]
    fn exposition() {
        let mut c = PodCounters::default();
        c.0[counter::outbound(Rule::IncludedCidr)] = 3;
        c.0[counter::outbound(Rule::ProxyOwner)] = 2;
        c.0[counter::ORIG_DST_HIT] = 1;
        let text = render(Scrape {
            pods: vec![("default/web-0".into(), c)],
            ready_pods: 1,
            error_pods: 2,
            fail_closed_pods: 1,
            budget: Some(Budget::new(128).unwrap()),
            usage: vec![(
                "default/web-0".into(),
                Usage {
                    ports: 3,
                    ..Default::default()
                },
            )],
            orig_dst_live: vec![("default/web-0".into(), 5)],
            orig_dst_entries: 4,
            ..Default::default()
        })
        .unwrap();
        for line in [
            "# TYPE meshsteer_outbound_connections_total counter",
            r#"meshsteer_outbound_connections_total{pod="default/web-0",rule="included_cidr",action="redirected"} 3"#,
            r#"meshsteer_outbound_connections_total{pod="default/web-0",rule="proxy_owner",action="passed"} 2"#,
            r#"meshsteer_inbound_connections_total{pod="default/web-0",rule="captured",action="steered"} 0"#,
            r#"meshsteer_original_dst_lookups_total{pod="default/web-0",result="hit"} 1"#,
            r#"meshsteer_original_dst_map_full_total{pod="default/web-0"} 0"#,
            r#"meshsteer_inbound_no_listener_total{pod="default/web-0"} 0"#,
            r#"meshsteer_pods{state="ready"} 1"#,
            r#"meshsteer_pods{state="error"} 2"#,
            "meshsteer_pods_fail_closed 1",
            "meshsteer_max_pods 128",
            r#"meshsteer_pod_budget{resource="ports"} 512"#,
            r#"meshsteer_pod_budget_used{pod="default/web-0",resource="ports"} 3"#,
            r#"meshsteer_pod_budget{resource="orig_dst"} 1024"#,
            r#"meshsteer_pod_budget_used{pod="default/web-0",resource="orig_dst"} 5"#,
            r#"meshsteer_refused_pod_connections_total{pod="default/web-0",direction="outbound"} 0"#,
            "meshsteer_orig_dst_entries 4",
            "meshsteer_trace_events_dropped_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from:\n{text}"
            );
        }
        let build = format!(
            r#"meshsteer_build_info{{version="{}",layout="{LAYOUT_VERSION}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.lines().any(|l| l == build), "{build:?} missing");
    }
}
