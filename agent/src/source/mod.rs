//! Where pods come from: the pod-spec directory ([`dir`]), or this node's pods on the
//! Kubernetes API server ([`kube`]). Both report [`change::Change`]s keyed by
//! [`change::SourceKey`], so the registry treats them alike.
pub mod change;
pub mod dir;
pub mod kube;
pub mod rotation;

use std::time::Duration;

use anyhow::Result;

use self::{change::Batch, dir::PodDir, kube::KubePods};

/// How often sources are polled besides what they push.
pub const POLL: Duration = Duration::from_millis(50);

/// What a source reports by itself.
pub enum Pushed {
    Changes(Batch),
    /// A request of the CNI plugin, for the agent's loop to answer.
    Cni(kube::CniCall),
}

/// The agent's pod source.
pub enum Source {
    Dir(PodDir),
    Kubernetes(Box<KubePods>),
}

impl Source {
    /// What polling finds, every [`POLL`]: the directory's changes when a scan is due (a
    /// complete listing), or the Kubernetes pods whose resolution is worth retrying.
    pub async fn poll(&mut self) -> Batch {
        match self {
            Self::Dir(dir) => {
                if !dir.poll_due() {
                    return Batch {
                        changes: Vec::new(),
                        complete: false,
                    };
                }
                Batch {
                    changes: dir.scan().await,
                    complete: true,
                }
            }
            Self::Kubernetes(kube) => Batch {
                changes: kube.poll(),
                complete: false,
            },
        }
    }

    /// The Kubernetes source, if that is the one.
    pub fn kube_mut(&mut self) -> Option<&mut KubePods> {
        match self {
            Self::Kubernetes(kube) => Some(kube.as_mut()),
            Self::Dir(_) => None,
        }
    }

    /// What the source reports by itself: inotify events on the directory, Kubernetes watch
    /// events, the CNI plugin's requests. Cancel-safe.
    pub async fn pushed(&mut self) -> Result<Pushed> {
        match self {
            Self::Dir(dir) => {
                dir.notified().await;
                Ok(Pushed::Changes(Batch {
                    changes: dir.scan().await,
                    complete: true,
                }))
            }
            Self::Kubernetes(kube) => Ok(match kube.recv().await? {
                kube::Event::Changes(batch) => Pushed::Changes(batch),
                kube::Event::Cni(call) => Pushed::Cni(call),
            }),
        }
    }
}
