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
    orig_dst_entries: u64,
    owner_from_task: u64,
    trace_dropped: u64,
}

impl Scrape {
    fn take(counters: &Counters, view: &watch::Receiver<AgentView>) -> Self {
        // Copied out first: the view stays borrowed (the agent loop kept from publishing)
        // for no map read.
        let pods: Vec<(String, Option<u64>, bool)> = view
            .borrow()
            .pods
            .iter()
            .map(|p| (p.name.clone(), p.cgroup_id, p.state == PodState::Ready))
            .collect();
        let c = counters;
        let ready_pods = pods.iter().filter(|p| p.2).count() as u64;
        Self {
            ready_pods,
            error_pods: pods.len() as u64 - ready_pods,
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
