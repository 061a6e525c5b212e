//! `meshsteer run`: attach, enrol, follow the pod source, stop cleanly.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use super::{
    args::{KubeArgs, RunArgs},
    cni,
};
use crate::{
    bpf::{
        features,
        load::{Datapath, EbpfLogger},
        maps::PodMaps,
        sk_lookup::SkLookups,
    },
    host::cgroup as host,
    registry::{Kernel, Registry},
    source::{
        POLL, Pushed, Source,
        change::{Batch, EnrolledBy, SourceKey},
        dir::PodDir,
        kube::{self, KubePods, PodRef},
    },
    spec::budget::Budget,
    sys::async_fd,
    telemetry::{http::Endpoints, reporter::Reporter, status::AgentStatus},
};

pub async fn run(args: RunArgs) -> Result<()> {
    features::check()?;
    let cgroup_root = match args.cgroup_root {
        Some(r) => r,
        None => host::cgroup2_mount()?,
    };
    // Checked before anything is attached: an agent that cannot read its pods must leave the
    // node as it found it, not capture at the cgroup root and then exit.
    let source = SourceConfig::check(&args.kube, &args.pods_dir).await?;
    // Bound before anything is attached: a taken port stops the agent before it changes
    // anything; served once the datapath is attached.
    let endpoints = Endpoints::bind(args.metrics.addr.0).await?;
    // In range: checked by the argument parser.
    let budget = Budget::new(args.max_pods)?;
    // Read before this agent's first publish replaces it.
    let cni_enrolled = cni_enrolled_before(&args.status.status_file);
    let reporter = Reporter::new(&args.status.status_file, endpoints.addr()).with_budget(budget);
    let mut datapath = Datapath::load(&args.pins.bpffs_dir, &cgroup_root)?;
    if let Some(logger) = datapath.take_logger() {
        tokio::spawn(forward_ebpf_logs(logger));
    }
    endpoints.serve(&datapath.pins, reporter.subscribe())?;
    let maps = PodMaps::take(&mut datapath.bpf)?.with_orig_dst_limit(budget.orig_dst);
    let sk_lookups = SkLookups::new(&datapath.pins, datapath.progs.clone(), budget.max_pods)?;
    let mut source = source.open(&cgroup_root, cni_enrolled);
    // Pods whose network namespace's addresses may have changed, by cgroup id.
    let (addr_tx, mut addr_changes) = tokio::sync::mpsc::unbounded_channel();
    let dataplane = Kernel::new(
        maps,
        datapath.pins.clone(),
        sk_lookups,
        datapath.take_cgroup_links()?,
        addr_tx,
    );
    let mut registry = Registry::new(dataplane, cgroup_root)
        .with_acceleration(args.accelerate.on(), datapath.accel.clone())
        .with_budget(budget);
    // Set once the source has listed every pod (at once for a directory; after the first
    // list for Kubernetes): only then can a previous agent's enrolments be reconciled.
    let mut reconciled = false;
    apply(&mut registry, source.poll().await, &mut reconciled);
    reporter.publish(registry.status())?;
    info!("running");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // `meshsteer uninstall --live`: the one way to stop capture while this agent runs.
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut tick = tokio::time::interval(POLL);
    let mut uninstall = false;
    // CNI ADDs waiting for their pod's capture.
    let mut waiting = cni::Waiting::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let batch = source.poll().await;
                let had_changes = !batch.changes.is_empty();
                apply(&mut registry, batch, &mut reconciled);
                reporter.heartbeat(reconciled);
                let retried = registry.retry_failed();
                if registry.check_namespaces() || had_changes || retried {
                    publish(&reporter, &registry);
                }
                cni::settle(&registry, &mut waiting);
            }
            pushed = source.pushed() => {
                match pushed? {
                    Pushed::Changes(batch) => apply(&mut registry, batch, &mut reconciled),
                    Pushed::Cni(call) => {
                        if let Some(kube) = source.kube_mut() {
                            cni::take(call, kube, &mut registry, &mut waiting);
                        }
                    }
                }
                publish(&reporter, &registry);
                cni::settle(&registry, &mut waiting);
            }
            Some(cgroup_id) = addr_changes.recv() => {
                if registry.refresh_local_addrs(cgroup_id) {
                    publish(&reporter, &registry);
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr1.recv() => {
                uninstall = true;
                break;
            }
        }
    }
    if uninstall {
        // Every fd of maps, programs and links closed (the pin lock with them), so that
        // unpinning detaches and frees everything.
        drop(source);
        drop(registry);
        drop(datapath);
        super::uninstall::uninstall(&args.pins.bpffs_dir, false)?;
        reporter.publish(Vec::new())?;
        warn!(
            "uninstalled on request: capture is off on this node; idling until stopped (a \
             restarted agent captures again)"
        );
        return idle(&reporter, &mut term, &mut int).await;
    }
    // Programs stay attached through their pinned links and maps keep every pod's config:
    // stopping (or crashing) the agent never lets traffic escape capture.
    info!("stopping; capture stays in effect until `meshsteer uninstall`");
    Ok(())
}

/// After an uninstall: alive (the probes keep answering, so the kubelet does not restart the
/// agent, which would capture again) and doing nothing until stopped.
async fn idle(
    reporter: &Reporter,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> Result<()> {
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => reporter.heartbeat(true),
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

/// The pod source, checked but not started: the pod-spec directory, or with `--kubernetes`
/// this node's pods on the API server.
enum SourceConfig {
    Dir(PathBuf),
    Kubernetes(Box<kube::Prepared>),
}

impl SourceConfig {
    async fn check(kube: &KubeArgs, pods_dir: &Path) -> Result<Self> {
        if kube.kubernetes {
            let settings = kube::Settings {
                node_name: kube.node_name.clone(),
                kubeconfig: kube.kubeconfig.clone(),
                netns_path_template: kube.netns_path_template.clone(),
                cni_socket: kube.cni_socket.clone(),
                cluster_dns: kube.cluster_dns.clone(),
                node_resolv_conf: kube.node_resolv_conf.clone(),
            };
            let prepared = settings
                .prepare()
                .await
                .context("--kubernetes: the pod source is not usable (nothing was attached)")?;
            return Ok(Self::Kubernetes(Box::new(prepared)));
        }
        fs::create_dir_all(pods_dir)
            .with_context(|| format!("creating pods dir {}", pods_dir.display()))?;
        Ok(Self::Dir(pods_dir.to_path_buf()))
    }

    fn open(self, cgroup_root: &Path, cni_enrolled: Vec<(PodRef, PathBuf)>) -> Source {
        match self {
            Self::Kubernetes(prepared) => Source::Kubernetes(Box::new(
                KubePods::start(*prepared, cgroup_root).with_cni_enrolled(cni_enrolled),
            )),
            Self::Dir(dir) => {
                info!(pods_dir = %dir.display(), "reading pod specs");
                Source::Dir(PodDir::new(&dir))
            }
        }
    }
}

/// The pods a previous agent on this node enrolled at their CNI ADD, from its status file
/// (none when there is none: a first start, or another `--status-file`).
fn cni_enrolled_before(status_file: &Path) -> Vec<(PodRef, PathBuf)> {
    let Ok(earlier) = AgentStatus::read(status_file) else {
        return Vec::new();
    };
    earlier
        .pods
        .into_iter()
        .filter(|p| p.enrolled_by == Some(EnrolledBy::Cni))
        .filter_map(|p| match (p.source, p.cgroup) {
            (SourceKey::Kube { namespace, name }, Some(cgroup)) => {
                Some((PodRef { namespace, name }, cgroup))
            }
            _ => None,
        })
        .collect()
}

fn apply(registry: &mut Registry, batch: Batch, reconciled: &mut bool) {
    registry.apply(batch.changes);
    if batch.complete && !*reconciled {
        registry.reconcile_adopted();
        *reconciled = true;
    }
}

fn publish(reporter: &Reporter, registry: &Registry) {
    if let Err(e) = reporter.publish(registry.status()) {
        warn!(error = %format!("{e:#}"), "could not publish status");
    }
}

/// Drains the eBPF log ring into `tracing` (through the `log` bridge) whenever it has data.
async fn forward_ebpf_logs(logger: EbpfLogger) {
    let Ok(mut fd) = async_fd::readable(logger) else {
        warn!("cannot poll the eBPF log ring; eBPF logs are dropped");
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
