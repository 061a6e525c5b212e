//! Publishes the agent's state: the status file on every change, and the live view behind
//! `/healthz`, `/readyz` and `/metrics` on every change and every turn of the agent loop.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Result;
use tokio::sync::watch;

use super::status::{AgentStatus, PodStatus};
use crate::spec::budget::Budget;

/// The agent loop's state, as the HTTP endpoints see it.
#[derive(Clone, Debug, Default)]
pub struct AgentView {
    pub pods: Vec<PodStatus>,
    /// The pod source was listed in full once and what a previous agent left was reconciled.
    pub reconciled: bool,
    /// The node's per-pod budgets.
    pub budget: Option<Budget>,
    /// The agent loop's last turn (None: not started yet).
    pub heartbeat: Option<Instant>,
}

pub struct Reporter {
    status_file: PathBuf,
    metrics_addr: Option<SocketAddr>,
    budget: Option<Budget>,
    view: watch::Sender<AgentView>,
}

impl Reporter {
    pub fn new(status_file: &Path, metrics_addr: Option<SocketAddr>) -> Self {
        Self {
            status_file: status_file.to_path_buf(),
            metrics_addr,
            budget: None,
            view: watch::Sender::new(AgentView::default()),
        }
    }

    /// The per-pod budgets the status file reports.
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The live view, for the HTTP endpoints.
    pub fn subscribe(&self) -> watch::Receiver<AgentView> {
        self.view.subscribe()
    }

    /// The pods changed: the endpoints see them, and the status file is replaced.
    pub fn publish(&self, pods: Vec<PodStatus>) -> Result<()> {
        let doc = AgentStatus {
            pid: std::process::id(),
            metrics_addr: self.metrics_addr,
            budget: self.budget,
            pods,
        };
        let written = doc.write(&self.status_file);
        self.view.send_modify(|v| {
            v.pods = doc.pods;
            v.budget = doc.budget;
        });
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
