//! One exchange with the agent: connect (waiting for it if asked), send the request, read the
//! reply, all within a deadline.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::proto::{self, ProtoError, Reply, Request};

/// How long to wait between connection attempts while the agent is not there.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// How to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    /// Keep trying until the deadline: the agent may be starting (ADD).
    UntilDeadline,
    /// One attempt, bounded by this (DEL, CHECK, STATUS: an absent agent is an answer).
    Once(Duration),
}

/// The exchange did not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `waited` is the timeout when the connection was retried, none for a single attempt.
    #[error("meshsteer agent not reachable at {}{}: {source}", socket.display(),
            waited.map(|w| format!(" for {}", secs(w))).unwrap_or_default())]
    Unreachable {
        socket: PathBuf,
        waited: Option<Duration>,
        source: io::Error,
    },
    #[error("meshsteer agent at {} gave no answer within {}", socket.display(), secs(*waited))]
    NoAnswer { socket: PathBuf, waited: Duration },
    #[error("meshsteer agent at {}: {source}", socket.display())]
    Exchange { socket: PathBuf, source: ProtoError },
}

/// Sends `request` to the agent at `socket` and returns its reply, all within `timeout`.
pub fn ask(
    socket: &Path,
    request: &Request,
    connect: Connect,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let deadline = Instant::now() + timeout;
    let (stream, waited) = match connect {
        Connect::UntilDeadline => (connect_until(socket, deadline), Some(timeout)),
        Connect::Once(limit) => (connect_within(socket, limit.min(timeout)), None),
    };
    let stream = stream.map_err(|source| ClientError::Unreachable {
        socket: socket.to_path_buf(),
        waited,
        source,
    })?;
    let mut stream = Deadline {
        stream,
        until: deadline,
    };
    let result =
        proto::write_message(&mut stream, request).and_then(|()| proto::read_message(&mut stream));
    result.map_err(|source| match source {
        ProtoError::Io(e) if is_timeout(&e) => ClientError::NoAnswer {
            socket: socket.to_path_buf(),
            waited: timeout,
        },
        source => ClientError::Exchange {
            socket: socket.to_path_buf(),
            source,
        },
    })
}

/// Whether the agent accepts connections (STATUS). It sees a connection closed without a
/// request.
pub fn probe(socket: &Path, limit: Duration) -> Result<(), ClientError> {
    connect_within(socket, limit)
        .map(drop)
        .map_err(|source| ClientError::Unreachable {
            socket: socket.to_path_buf(),
            waited: None,
            source,
        })
}

/// Connects, retrying until `deadline`; the error is the last attempt's.
fn connect_until(socket: &Path, deadline: Instant) -> io::Result<UnixStream> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let err = match connect_within(socket, left) {
            Ok(stream) => return Ok(stream),
            // A path too long for a socket address does not get better with time.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => return Err(e),
            Err(e) => e,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(err);
        }
        thread::sleep(RETRY_EVERY.min(left));
        if Instant::now() >= deadline {
            return Err(err);
        }
    }
}

/// One connection attempt that gives up after `limit`. A unix-socket connect returns at once,
/// except when the agent's accept backlog is full: then it blocks, so it runs on its own
/// thread, which is left behind on timeout (the plugin exits right after).
fn connect_within(socket: &Path, limit: Duration) -> io::Result<UnixStream> {
    if limit.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    let (tx, rx) = mpsc::channel();
    let path = socket.to_path_buf();
    thread::spawn(move || {
        let _ = tx.send(UnixStream::connect(path));
    });
    match rx.recv_timeout(limit) {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connect did not complete (the agent is not accepting)",
        )),
    }
}

/// The stream, with every read and write bounded by what is left until `until`, so a peer that
/// sends slowly cannot stretch the exchange past the deadline.
struct Deadline {
    stream: UnixStream,
    until: Instant,
}

impl Deadline {
    fn left(&self) -> io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::ErrorKind::TimedOut.into())
        } else {
            Ok(left)
        }
    }
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        self.stream.read(buf)
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// A socket timeout shows as EAGAIN (WouldBlock) on Linux; ours as TimedOut.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// `30s`, or `1.5s`, for messages.
pub fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::proto::{Command, PodRef};
    use crate::testdir::TestDir;

    fn request() -> Request {
        Request {
            command: Command::Add,
            pod: PodRef {
                namespace: "n".into(),
                name: "p".into(),
                uid: "u".into(),
            },
            container_id: "c".into(),
            netns: Some("/n".into()),
            ifname: "eth0".into(),
            ips: vec![],
        }
    }

    #[test]
    fn an_exchange() {
        let dir = TestDir::new("client-exchange");
        let socket = dir.path().join("a.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let agent = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let req: Request = proto::read_message(&stream).unwrap();
            proto::write_message(&stream, &Reply::Captured).unwrap();
            req
        });
        let reply = ask(
            &socket,
            &request(),
            Connect::UntilDeadline,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(reply, Reply::Captured);
        assert_eq!(agent.join().unwrap(), request());
    }

    #[test]
    fn an_agent_that_appears_late_is_waited_for() {
        let dir = TestDir::new("client-late");
        let socket = dir.path().join("a.sock");
        let path = socket.clone();
        let agent = thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            let listener = UnixListener::bind(&path).unwrap();
            let (stream, _) = listener.accept().unwrap();
            let _: Request = proto::read_message(&stream).unwrap();
            proto::write_message(&stream, &Reply::Removed).unwrap();
        });
        let reply = ask(
            &socket,
            &request(),
            Connect::UntilDeadline,
            Duration::from_secs(10),
        );
        assert_eq!(reply.unwrap(), Reply::Removed);
        agent.join().unwrap();
    }

    #[test]
    fn no_agent_and_a_silent_agent() {
        let dir = TestDir::new("client-none");
        let socket = dir.path().join("missing.sock");
        let err = ask(
            &socket,
            &request(),
            Connect::Once(Duration::from_secs(1)),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "meshsteer agent not reachable at {}: No such file or directory (os error 2)",
                socket.display()
            )
        );
        let err = ask(
            &socket,
            &request(),
            Connect::UntilDeadline,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "meshsteer agent not reachable at {} for 1s: ",
                socket.display()
            )),
            "{err}"
        );

        // Accepted (by the backlog) but never answered: bounded by the timeout.
        let silent = dir.path().join("silent.sock");
        let _listener = UnixListener::bind(&silent).unwrap();
        let err = ask(
            &silent,
            &request(),
            Connect::UntilDeadline,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::NoAnswer { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "meshsteer agent at {} gave no answer within 1s",
                silent.display()
            )
        );
    }

    #[test]
    fn a_garbled_answer_is_an_exchange_error() {
        let dir = TestDir::new("client-garbled");
        let socket = dir.path().join("a.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let agent = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let _: Request = proto::read_message(&stream).unwrap();
            stream.write_all(b"{\"reply\":\"sure\"}\n").unwrap();
        });
        let err = ask(
            &socket,
            &request(),
            Connect::UntilDeadline,
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::Exchange { .. }), "{err}");
        agent.join().unwrap();
    }

    #[test]
    fn durations_in_messages() {
        assert_eq!(secs(Duration::from_secs(30)), "30s");
        assert_eq!(secs(Duration::from_millis(1500)), "1.5s");
    }
}
