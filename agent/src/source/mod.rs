//! Where pods come from: the pod-spec directory ([`dir`]), or this node's pods on the
//! Kubernetes API server ([`kube`]). Both report [`change::Change`]s keyed by
//! [`change::SourceKey`], so the registry treats them alike.
pub mod change;
pub mod dir;
pub mod kube;

use std::time::Duration;

use anyhow::Result;

use self::{change::Batch, dir::PodDir, kube::KubePods};

/// How often sources are polled besides what they push.
pub const POLL: Duration = Duration::from_millis(50);

/// The agent's pod source.
pub enum Source {
    Dir(PodDir),
    Kubernetes(KubePods),
}

impl Source {
    /// What polling finds, every [`POLL`]: the directory's changes (always a complete
    /// listing), or the Kubernetes pods whose resolution is worth retrying.
    pub async fn poll(&mut self) -> Batch {
        match self {
            Self::Dir(dir) => Batch {
                changes: dir.scan().await,
                complete: true,
            },
            Self::Kubernetes(kube) => Batch {
                changes: kube.poll(),
                complete: false,
            },
        }
    }

    /// Changes the source reports by itself: inotify events on the directory, Kubernetes
    /// watch events. Cancel-safe.
    pub async fn pushed(&mut self) -> Result<Batch> {
        match self {
            Self::Dir(dir) => {
                dir.notified().await;
                Ok(Batch {
                    changes: dir.scan().await,
                    complete: true,
                })
            }
            Self::Kubernetes(kube) => kube.recv().await,
        }
    }
}
