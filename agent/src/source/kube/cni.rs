//! The CNI plugin's way in (`meshsteer-cni`, chained after the node's network plugin): a unix
//! socket on which the runtime's ADD, DEL and CHECK for a pod sandbox arrive before any of the
//! pod's containers runs. Each connection carries one request and one reply
//! (`meshsteer_cni::proto`). The pod is taken from the watch, which has it by the time its
//! sandbox is set up, unless the watch has not delivered it yet: then it is read from the API
//! server here, off the agent's loop ([`CniServer::fetch`]). The loop decides and answers
//! ([`CniCall::answer`]) once the pod's capture is in effect, refused, or given up on.
use std::{
    io,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
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
    /// When the plugin's connection was accepted (for the debug timings of an ADD).
    pub accepted: Instant,
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

/// A request as the socket delivered it, its pod not looked up yet (`found`: read already).
#[derive(Debug)]
pub(super) struct Arrived {
    request: Request,
    found: Option<Found>,
    accepted: Instant,
    reply: oneshot::Sender<Reply>,
}

impl Arrived {
    /// The call for the agent's loop, if the pod needs no reading or `cached` (the watch's)
    /// has it; else the request back, for [`CniServer::fetch`].
    pub(super) fn call(
        self,
        cached: impl FnOnce(&Request) -> Option<Found>,
    ) -> Result<CniCall, Box<Self>> {
        let found = match (self.found, self.request.command) {
            (Some(found), _) => found,
            // DEL needs nothing from the API server: the pod may be gone from it already.
            (None, Command::Del) => Found::Missing(String::new()),
            (None, Command::Add | Command::Check) => match cached(&self.request) {
                Some(found) => found,
                None => {
                    return Err(Box::new(Self {
                        found: None,
                        ..self
                    }));
                }
            },
        };
        Ok(CniCall {
            request: self.request,
            found,
            accepted: self.accepted,
            reply: self.reply,
        })
    }
}

/// Reads pods the watch lacks from the API server.
struct ApiReader {
    client: Client,
    /// Requests whose pod was read come back this way.
    requeue: mpsc::Sender<Arrived>,
}

/// The socket, served by a task of its own.
pub struct CniServer {
    calls: mpsc::Receiver<Arrived>,
    api: Box<ApiReader>,
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
        let task = tokio::spawn(accept(listener, tx.clone()));
        Ok(Self {
            calls,
            api: Box::new(ApiReader {
                client,
                requeue: tx,
            }),
            task,
            path: path.to_path_buf(),
        })
    }

    /// The next request for the agent's loop. Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<Arrived> {
        self.calls.recv().await
    }

    /// Reads the request's pod from the API server (a pod the watch has not delivered yet),
    /// off the agent's loop; the request then comes back through [`CniServer::next`].
    pub(super) fn fetch(&self, mut arrived: Box<Arrived>) {
        let (client, requeue) = (self.api.client.clone(), self.api.requeue.clone());
        let pod = &arrived.request.pod;
        let span = info_span!("pod", pod = %format!("{}/{}", pod.namespace, pod.name));
        tokio::spawn(
            async move {
                let started = Instant::now();
                arrived.found = Some(fetch(client, &arrived.request).await);
                debug!(
                    micros = started.elapsed().as_micros(),
                    "read the pod from the API server"
                );
                // A send fails only when the agent stops: the plugin is told it dropped the
                // request.
                let _ = requeue.send(*arrived).await;
            }
            .instrument(span),
        );
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

async fn accept(listener: UnixListener, tx: mpsc::Sender<Arrived>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Err(e) = exchange(stream, tx).await {
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
async fn exchange(stream: UnixStream, tx: mpsc::Sender<Arrived>) -> Result<()> {
    let accepted = Instant::now();
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
    let read_us = accepted.elapsed().as_micros();
    let (reply_tx, reply_rx) = oneshot::channel();
    let arrived = Arrived {
        request,
        found: None,
        accepted,
        reply: reply_tx,
    };
    tx.send(arrived).await.context("the agent is stopping")?;
    // The loop answers every call, at the latest when its wait is up.
    let reply = reply_rx.await.context("the agent dropped the request")?;
    let answered_us = accepted.elapsed().as_micros();
    write.write_all(&proto::encode(&reply)).await?;
    write.shutdown().await?;
    span.in_scope(|| {
        debug!(
            ?reply,
            read_us,
            answered_us,
            written_us = accepted.elapsed().as_micros(),
            "answered the CNI plugin"
        )
    });
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

#[cfg(test)]
mod tests {
    use meshsteer_cni::proto::PodRef;

    use super::*;

    fn arrived(command: Command) -> (Arrived, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        let request = Request {
            command,
            pod: PodRef {
                namespace: "ns".into(),
                name: "a".into(),
                uid: "u1".into(),
            },
            container_id: "c".into(),
            netns: None,
            ifname: "eth0".into(),
            ips: vec![],
        };
        let a = Arrived {
            request,
            found: None,
            accepted: Instant::now(),
            reply,
        };
        (a, rx)
    }

    /// ADD and CHECK take the pod from the watch when it has it, and are sent on to the API
    /// server when not; DEL asks for nothing.
    #[test]
    fn a_request_reads_the_api_server_only_when_the_watch_lacks_its_pod() {
        let cached = |_: &Request| Some(Found::NotMeshed("from the watch".into()));
        for command in [Command::Add, Command::Check] {
            let (a, _rx) = arrived(command);
            let call = a.call(cached).expect("the watch's pod");
            assert!(matches!(call.found, Found::NotMeshed(w) if w == "from the watch"));

            let (a, _rx) = arrived(command);
            let mut back = a.call(|_| None).expect_err("sent on to the API server");
            back.found = Some(Found::Missing("read".into()));
            let call = back.call(|_| panic!("read already")).unwrap();
            assert!(matches!(call.found, Found::Missing(w) if w == "read"));
        }
        let (a, _rx) = arrived(Command::Del);
        let call = a.call(|_| panic!("DEL looks nothing up")).unwrap();
        assert!(matches!(call.found, Found::Missing(_)));
    }
}
