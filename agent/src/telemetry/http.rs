//! `--metrics-addr`: `/metrics` (Prometheus text format 0.0.4), `/healthz` and `/readyz`, from a
//! minimal HTTP/1.x server on the agent's runtime (GET and HEAD, one request per connection).
//!
//! The endpoints never touch the agent loop's state: they read the counter maps through
//! handles of their own, at scrape time, and the agent loop publishes the rest (pods, whether
//! the source is reconciled, its heartbeat) through a [`watch`] channel ([`Reporter`]).
//!
//! [`Reporter`]: super::reporter::Reporter
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};
use tracing::{debug, info, warn};

use super::{
    metrics,
    probes::{self, Unwell},
    reporter::AgentView,
};
use crate::bpf::{counters::Counters, pins::Pins};

/// Connections served at once; more are closed at once (scrapers and probes retry).
const MAX_CONNECTIONS: usize = 16;
/// A request head larger than this is refused.
const MAX_HEAD: usize = 8 * 1024;
/// Time for one connection, request to response.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoints' listener, bound before the datapath is loaded (a taken port fails the agent
/// before it changes anything), or nothing with `--metrics-addr off`.
pub struct Endpoints {
    bound: Option<(TcpListener, SocketAddr)>,
}

impl Endpoints {
    pub async fn bind(addr: Option<SocketAddr>) -> Result<Self> {
        let Some(addr) = addr else {
            return Ok(Self { bound: None });
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        let local = listener.local_addr().context("metrics listener address")?;
        Ok(Self {
            bound: Some((listener, local)),
        })
    }

    /// The address bound (with port 0, the port the kernel picked).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.bound.as_ref().map(|(_, a)| *a)
    }

    /// Serves until the runtime stops, reading counters through handles of its own on the
    /// agent's pins. Called once the datapath is loaded and attached.
    pub fn serve(self, pins: &Pins, view: watch::Receiver<AgentView>) -> Result<()> {
        let Some((listener, addr)) = self.bound else {
            return Ok(());
        };
        let counters = Counters::from_pins(pins).context("opening counters for /metrics")?;
        info!(%addr, "serving /metrics, /healthz and /readyz");
        tokio::spawn(accept_loop(listener, Arc::new(Service { counters, view })));
        Ok(())
    }
}

struct Service {
    counters: Counters,
    view: watch::Receiver<AgentView>,
}

async fn accept_loop(listener: TcpListener, service: Arc<Service>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of fds, most likely: back off instead of spinning.
                warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!("metrics listener: too many connections, closing one");
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(IO_TIMEOUT, handle(stream, service)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %format!("{e:#}"), "metrics connection"),
                Err(_) => debug!("metrics connection timed out"),
            }
        });
    }
}

async fn handle(mut stream: TcpStream, service: Arc<Service>) -> Result<()> {
    let head = read_head(&mut stream).await?;
    let response = match parse_request_line(&head) {
        Some((method @ ("GET" | "HEAD"), path)) => {
            let mut r = route(path, service).await;
            r.head_only = method == "HEAD";
            r
        }
        Some(_) => Response::text(405, "only GET and HEAD are served\n"),
        None => Response::text(400, "malformed request\n"),
    };
    stream.write_all(&response.to_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Reads up to the end of the request head (the only part these endpoints need).
async fn read_head(stream: &mut TcpStream) -> Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head_complete(&buf) {
        anyhow::ensure!(buf.len() < MAX_HEAD, "request head over {MAX_HEAD} bytes");
        let n = stream.read(&mut chunk).await.context("reading request")?;
        anyhow::ensure!(n > 0, "connection closed before the request head ended");
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn head_complete(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n")
}

/// `("GET", "/metrics")` from `GET /metrics?x=y HTTP/1.1`.
fn parse_request_line(head: &str) -> Option<(&str, &str)> {
    let line = head.lines().next()?;
    let mut parts = line.split_ascii_whitespace();
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Some((method, path))
}

async fn route(path: &str, service: Arc<Service>) -> Response {
    match path {
        "/metrics" => {
            // Map reads are syscalls (one per pod, plus a walk of MS_ORIG_DST): off the
            // runtime's worker threads.
            let read = move || metrics::scrape(&service.counters, &service.view);
            match tokio::task::spawn_blocking(read).await {
                Ok(Ok(body)) => Response {
                    status: 200,
                    content_type: metrics::CONTENT_TYPE,
                    body,
                    head_only: false,
                },
                Ok(Err(e)) => Response::text(500, &format!("encoding metrics: {e}\n")),
                Err(e) => Response::text(500, &format!("reading metrics: {e}\n")),
            }
        }
        "/healthz" => probe(probes::health(&service.view.borrow(), Instant::now())),
        "/readyz" => probe(probes::readiness(&service.view.borrow(), Instant::now())),
        _ => Response::text(404, "not found: try /metrics, /healthz or /readyz\n"),
    }
}

fn probe(result: Result<(), Unwell>) -> Response {
    match result {
        Ok(()) => Response::text(200, "ok\n"),
        Err(why) => Response::text(503, &format!("{why}\n")),
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    head_only: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            head_only: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            503 => "Service Unavailable",
            _ => "Internal Server Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_request_line("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            parse_request_line("HEAD /readyz?verbose=1 HTTP/1.0\r\n\r\n"),
            Some(("HEAD", "/readyz"))
        );
        assert_eq!(parse_request_line("GET /metrics\r\n\r\n"), None);
        assert_eq!(parse_request_line("GET / SPDY/3\r\n\r\n"), None);
        assert_eq!(parse_request_line(""), None);
        assert!(head_complete(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(head_complete(b"GET / HTTP/1.0\n\n"));
        assert!(!head_complete(b"GET / HTTP/1.0\r\nHost: x\r\n"));
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = Response::text(503, "no\n").to_bytes();
        let text = String::from_utf8(r).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Length: 3\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nno\n"), "{text}");
        let mut head = Response::text(200, "ok\n");
        head.head_only = true;
        assert!(
            String::from_utf8(head.to_bytes())
                .unwrap()
                .ends_with("\r\n\r\n")
        );
    }
}
