//! The CNI plugin's way in (`meshsteer-cni`, chained after the node's network plugin): a unix
//! socket on which the runtime's ADD, DEL and CHECK for a pod sandbox arrive before any of the
//! pod's containers runs. Each connection carries one request and one reply
//! (`meshsteer_cni::proto`). The pod itself is read from the API server here, off the agent's
//! loop; the loop decides and answers ([`CniCall::answer`]) once the pod's capture is in
//! effect, refused, or given up on.
use std::{
    io,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use meshsteer_cni::proto::{self, Command, MAX_MESSAGE, Reply, Request};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{Instrument, debug, info, info_span, warn};

use super::view::{PodRef, PodView};

/// How long one connection may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Calls queued for the agent's loop.
const QUEUE: usize = 64;

/// The pod a request names, as the API server has it.
#[derive(Debug)]
pub enum Found {
    /// A pod with an Istio sidecar (whether istio-init would have captured it, its view says).
    Meshed(Box<PodView>),
    /// A pod meshsteer never captures: no sidecar, host network, finished.
    NotMeshed(String),
    /// Not read: not on the API server under that UID, or the API server failed.
    Missing(String),
}

/// One request from the plugin, waiting for the agent's loop to answer it.
#[derive(Debug)]
pub struct CniCall {
    pub request: Request,
    pub found: Found,
    reply: oneshot::Sender<Reply>,
}

impl CniCall {
    pub fn pod(&self) -> PodRef {
        PodRef {
            namespace: self.request.pod.namespace.clone(),
            name: self.request.pod.name.clone(),
        }
    }

    /// Sends the reply (the plugin may have given up waiting already: nothing to do then).
    pub fn answer(self, reply: Reply) {
        let _ = self.reply.send(reply);
    }
}

/// The socket, served by a task of its own.
pub struct CniServer {
    calls: mpsc::Receiver<CniCall>,
    task: JoinHandle<()>,
    path: PathBuf,
}

impl CniServer {
    /// Binds `path` (a stale socket file of a previous agent is replaced; its directory is
    /// made owner-only) and serves it.
    pub fn bind(path: &Path, client: Client) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => debug!(path = %path.display(), "replaced a previous agent's CNI socket"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding the CNI socket {}", path.display()))?;
        // Only root (the runtime running the plugin) may ask.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
        info!(path = %path.display(), "serving the CNI plugin");
        let (tx, calls) = mpsc::channel(QUEUE);
        let task = tokio::spawn(accept(listener, client, tx));
        Ok(Self {
            calls,
            task,
            path: path.to_path_buf(),
        })
    }

    /// The next call for the agent's loop. Cancel-safe.
    pub async fn next(&mut self) -> Option<CniCall> {
        self.calls.recv().await
    }
}

impl Drop for CniServer {
    fn drop(&mut self) {
        self.task.abort();
        // A plugin finding no socket is told the agent is down, rather than waiting on a
        // socket nobody accepts on.
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept(listener: UnixListener, client: Client, tx: mpsc::Sender<CniCall>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (client, tx) = (client.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Err(e) = exchange(stream, client, tx).await {
                        warn!(error = %format!("{e:#}"), "CNI request not answered");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting on the CNI socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One request and its reply.
async fn exchange(stream: UnixStream, client: Client, tx: mpsc::Sender<CniCall>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    // One byte over the cap tells an overlong line from one that just fits.
    let mut reader = BufReader::new(read.take(MAX_MESSAGE as u64 + 1));
    tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line))
        .await
        .context("the plugin sent no request in time")??;
    if line.is_empty() {
        // The plugin's STATUS only checks that the agent accepts connections.
        return Ok(());
    }
    let request: Request = match proto::decode(&line) {
        Ok(r) => r,
        Err(e) => {
            let reply = Reply::Failed {
                reason: format!("unreadable request: {e}"),
            };
            write.write_all(&proto::encode(&reply)).await?;
            return Ok(());
        }
    };
    let pod = &request.pod;
    let span = info_span!("pod", pod = %format!("{}/{}", pod.namespace, pod.name));
    let found = match request.command {
        // DEL needs nothing from the API server: the pod may be gone from it already.
        Command::Del => Found::Missing(String::new()),
        Command::Add | Command::Check => fetch(client, &request).instrument(span.clone()).await,
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    let call = CniCall {
        request,
        found,
        reply: reply_tx,
    };
    tx.send(call).await.context("the agent is stopping")?;
    // The loop answers every call, at the latest when its wait is up.
    let reply = reply_rx.await.context("the agent dropped the request")?;
    span.in_scope(|| debug!(?reply, "answered the CNI plugin"));
    write.write_all(&proto::encode(&reply)).await?;
    write.shutdown().await?;
    Ok(())
}

/// The pod from the API server: a GET, so a pod the watch has not delivered yet is found.
async fn fetch(client: Client, request: &Request) -> Found {
    let pod = &request.pod;
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
    let object = match api.get_opt(&pod.name).await {
        Ok(Some(o)) => o,
        Ok(None) => {
            return Found::Missing(format!(
                "pod {}/{} is not on the API server",
                pod.namespace, pod.name
            ));
        }
        Err(e) => {
            return Found::Missing(format!(
                "reading pod {}/{} from the API server: {e}",
                pod.namespace, pod.name
            ));
        }
    };
    match PodView::of(&object) {
        Ok(Some(view)) if view.uid == pod.uid => Found::Meshed(Box::new(view)),
        Ok(Some(view)) => Found::Missing(format!(
            "pod {}/{} on the API server has UID {}, not the sandbox's {}",
            pod.namespace, pod.name, view.uid, pod.uid
        )),
        Ok(None) => Found::NotMeshed("no Istio sidecar (or host network, or finished)".into()),
        Err(e) => Found::Missing(format!("pod {}/{}: {e}", pod.namespace, pod.name)),
    }
}
