//! `--metrics-addr`: `/metrics` ([`metrics`]), `/healthz` and `/readyz` ([`probes`]) over
//! HTTP/1.x, served by hyper on the agent's runtime: GET and HEAD, one request per connection.
//!
//! The endpoints never touch the agent loop's state: they read the counter maps through
//! handles of their own, at scrape time, and the agent loop publishes the rest (pods, whether
//! the source is reconciled, its heartbeat) through a [`watch`] channel ([`Reporter`]).
//!
//! A client that connects and says nothing must not keep the kubelet's probes out, so:
//! - the request head must arrive within [`Limits::head_timeout`] and fit in
//!   [`Limits::max_head`] (hyper answers 431 past that);
//! - a connection has [`Limits::connection_timeout`] from accept to the end of its response;
//! - at most [`Limits::max_connections`] are served at once. At the limit, a new connection
//!   takes the place of the oldest one still waiting for its request head, else of the oldest
//!   one whose answer has not drained for [`Limits::slow_reader`] (a client that asks and never
//!   reads); only when every one is answering briskly is the new one closed (scrapers and
//!   probes retry).
//!
//! [`Reporter`]: super::reporter::Reporter
use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

use super::{
    metrics,
    probes::{self, Unwell},
    reporter::AgentView,
};
use crate::bpf::{counters::Counters, pins::Pins};

/// A whole response, its body in one buffer.
type Reply = Response<Full<Bytes>>;

const TEXT: &str = "text/plain; charset=utf-8";

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
        let routes = Arc::new(Routes { counters, view });
        info!(%addr, "serving /metrics, /healthz and /readyz");
        tokio::spawn(accept_loop(listener, Limits::DEFAULT, move |req| {
            routes.clone().answer(req)
        }));
        Ok(())
    }
}

/// What each path answers.
struct Routes {
    counters: Counters,
    view: watch::Receiver<AgentView>,
}

impl Routes {
    async fn answer(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        // hyper leaves the body out of a HEAD response, and keeps its length.
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            let mut reply = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are served\n",
            );
            reply
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return reply;
        }
        match req.uri().path() {
            "/metrics" => self.metrics().await,
            "/healthz" => probe(probes::health(&self.view.borrow(), Instant::now())),
            "/readyz" => probe(probes::readiness(&self.view.borrow(), Instant::now())),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz or /readyz\n",
            ),
        }
    }

    async fn metrics(self: Arc<Self>) -> Reply {
        // Map reads are syscalls: off the runtime's worker threads.
        let read = move || metrics::scrape(&self.counters, &self.view);
        match tokio::task::spawn_blocking(read).await {
            Ok(Ok(body)) => reply(StatusCode::OK, metrics::CONTENT_TYPE, body),
            Ok(Err(e)) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding metrics: {e}\n"),
            ),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading metrics: {e}\n"),
            ),
        }
    }
}

fn probe(result: Result<(), Unwell>) -> Reply {
    match result {
        Ok(()) => text(StatusCode::OK, "ok\n"),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    reply(status, TEXT, body.into())
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply
}

/// What one client may hold of the server.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_connections: usize,
    /// From accept to the end of the request head.
    head_timeout: Duration,
    /// From accept to the end of the response.
    connection_timeout: Duration,
    /// Request line and headers, in bytes.
    max_head: usize,
    /// An answer still being written after this long is a slow reader's, which a new
    /// connection may take the place of at the limit.
    slow_reader: Duration,
}

impl Limits {
    const DEFAULT: Self = Self {
        max_connections: 16,
        // A probe or a scrape sends its head in one packet; this is for the ones that don't.
        head_timeout: Duration::from_secs(5),
        connection_timeout: Duration::from_secs(10),
        max_head: 8 * 1024,
        // Probes and scrapes take milliseconds; this is for the clients that never read.
        slow_reader: Duration::from_secs(1),
    };
}

/// Accepts until the runtime stops, each connection's one request answered by `answer`.
async fn accept_loop<A, F>(listener: TcpListener, limits: Limits, answer: A)
where
    A: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_header_size(limits.max_head)
        // One request per connection: hyper then answers with `Connection: close` and closes.
        .keep_alive(false);
    let mut live = Live::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of fds, most likely: back off instead of spinning.
                warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !live.make_room(limits.max_connections, limits.slow_reader) {
            debug!(%peer, "metrics listener: every connection is answering, closing a new one");
            continue;
        }
        let answering = Arc::new(OnceLock::new());
        let service = {
            let (answering, answer) = (answering.clone(), answer.clone());
            service_fn(move |req| {
                let _ = answering.set(Instant::now());
                let reply = answer(req);
                async move { Ok::<_, Infallible>(reply.await) }
            })
        };
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let task = tokio::spawn(async move {
            match tokio::time::timeout(limits.connection_timeout, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection"),
                Err(_) => debug!(%peer, "metrics connection timed out"),
            }
        });
        live.conns.push_back(Conn { task, answering });
    }
}

/// The connections being served, oldest first.
#[derive(Default)]
struct Live {
    conns: VecDeque<Conn>,
}

struct Conn {
    task: JoinHandle<()>,
    /// When its request head was in: from then on it is answering, not idling.
    answering: Arc<OnceLock<Instant>>,
}

impl Live {
    /// Whether there is room for one more connection: at the limit, the oldest one still
    /// waiting for its request head is closed to make it.
    fn make_room(&mut self, max: usize, slow_reader: Duration) -> bool {
        self.conns.retain(|c| !c.task.is_finished());
        if self.conns.len() < max {
            return true;
        }
        let idle = self.conns.iter().position(|c| c.answering.get().is_none());
        let slow = || {
            self.conns.iter().position(|c| {
                c.answering
                    .get()
                    .is_some_and(|t| t.elapsed() >= slow_reader)
            })
        };
        match idle.or_else(slow).and_then(|i| self.conns.remove(i)) {
            Some(oldest) => {
                debug!("metrics listener: at the limit, closing an idle or slow connection");
                oldest.task.abort();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;

    /// A server on loopback whose every answer is the request's path.
    async fn server(limits: Limits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(accept_loop(listener, limits, |req: Request<Incoming>| {
            let path = req.uri().path().to_string();
            async move { text(StatusCode::OK, path) }
        }));
        addr
    }

    /// Everything the server sends on `stream` until it closes it, after `request`.
    async fn exchange(stream: &mut TcpStream, request: &str) -> String {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
            .await
            .expect("the server closes the connection after its answer")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    /// How long `f` took.
    async fn timed(f: impl Future) -> Duration {
        let start = Instant::now();
        f.await;
        start.elapsed()
    }

    #[tokio::test]
    async fn one_request_per_connection() {
        let addr = server(Limits::DEFAULT).await;

        let mut c = TcpStream::connect(addr).await.unwrap();
        let got = exchange(&mut c, "GET /healthz?x=1 HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.contains("connection: close\r\n"), "{got}");
        assert!(got.contains("content-length: 8\r\n"), "{got}");
        assert!(got.contains("cache-control: no-store\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\n/healthz"), "{got}");

        let mut c = TcpStream::connect(addr).await.unwrap();
        let got = exchange(&mut c, "HEAD /metrics HTTP/1.0\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got}");
        assert!(got.contains("content-length: 8\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\n"), "no body for HEAD: {got}");

        let mut c = TcpStream::connect(addr).await.unwrap();
        let max = Limits::DEFAULT.max_head;
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(max));
        let got = exchange(&mut c, &long).await;
        assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
    }

    #[tokio::test]
    async fn idle_connections_make_way() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::DEFAULT
        };
        let addr = server(limits).await;
        // Idlers fill the server; the next connection still gets its answer, and the oldest
        // idler is closed for it (long before its head times out).
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let _idle = TcpStream::connect(addr).await.unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let got = exchange(&mut c, "GET /healthz HTTP/1.0\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got}");
        let waited = timed(async { assert_eq!(exchange(&mut idle, "").await, "") }).await;
        assert!(waited < limits.head_timeout / 2, "{waited:?}");
    }

    #[tokio::test]
    async fn late_heads_time_out() {
        let limits = Limits {
            head_timeout: Duration::from_millis(200),
            ..Limits::DEFAULT
        };
        let addr = server(limits).await;
        let mut late = TcpStream::connect(addr).await.unwrap();
        let waited = timed(async { assert_eq!(exchange(&mut late, "GET /heal").await, "") }).await;
        assert!(waited >= limits.head_timeout, "{waited:?}");
        assert!(waited < limits.connection_timeout / 2, "{waited:?}");
    }

    /// Clients that ask for a large answer and never read it hold their connections while
    /// the kernel's buffers are full; past `slow_reader`, a probe takes one's place.
    #[tokio::test]
    async fn slow_readers_make_way() {
        let limits = Limits {
            max_connections: 2,
            slow_reader: Duration::from_millis(200),
            ..Limits::DEFAULT
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(accept_loop(listener, limits, |req: Request<Incoming>| {
            // Far more than a socket's buffers hold: writing it blocks on a reader.
            let big = req.uri().path() == "/metrics";
            async move {
                text(
                    StatusCode::OK,
                    if big {
                        "m".repeat(64 << 20)
                    } else {
                        "ok".into()
                    },
                )
            }
        }));
        let mut hogs = Vec::new();
        for _ in 0..limits.max_connections {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
            hogs.push(c);
        }
        tokio::time::sleep(limits.slow_reader * 2).await;
        let mut probe = TcpStream::connect(addr).await.unwrap();
        let got = exchange(&mut probe, "GET /healthz HTTP/1.0\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got}");
    }
}
