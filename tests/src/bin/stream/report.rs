//! What a scenario found, as one JSON line.
use std::io::{self};

use serde_json::{Value, json};

use crate::blocking::Eagain;

/// What a scenario found, summed over its connections.
#[derive(Default)]
pub struct Report {
    pub failures: Vec<String>,
    /// EAGAIN on blocking reads, both sides, except ...
    pub eagain: u64,
    /// ... on our reads after our own shutdown(SHUT_WR) (see [`Eagain`]): counted, reads
    /// retried, not a failure by itself.
    pub eagain_after_shutdown: u64,
    pub conns: u64,
    /// Connections whose payload went all through TCP, all around it, or partly (a backlog
    /// past the limit sent the rest through TCP).
    pub tcp_conns: u64,
    pub bypass_conns: u64,
    pub mixed_conns: u64,
    pub extra: serde_json::Map<String, Value>,
}

impl Report {
    pub fn fail(&mut self, what: impl std::fmt::Display) {
        if self.failures.len() < 20 {
            self.failures.push(what.to_string());
        }
    }

    /// Records a connection's outcome; `Err` is a failure named `what`.
    pub fn conn(&mut self, what: &str, r: io::Result<Conn>) {
        self.conns += 1;
        match r {
            Ok(c) => {
                self.eagain += c.eagain.before_shutdown + c.server_eagain;
                self.eagain_after_shutdown += c.eagain.after_shutdown;
                if c.eagain.before_shutdown + c.server_eagain > 0 {
                    self.fail(format!(
                        "{what}: EAGAIN on blocking reads: {} ours, {} the server's",
                        c.eagain.before_shutdown, c.server_eagain
                    ));
                }
                // A connection all through TCP has carried its payload plus 2 or 3 of control.
                if c.via_tcp <= CONTROL_ONLY {
                    self.bypass_conns += 1;
                } else if c.via_tcp >= c.payload {
                    self.tcp_conns += 1;
                } else {
                    self.mixed_conns += 1;
                }
            }
            Err(e) => self.fail(format!("{what}: {e}")),
        }
    }

    pub fn merge(&mut self, other: Report) {
        for f in other.failures {
            self.fail(f);
        }
        self.eagain += other.eagain;
        self.eagain_after_shutdown += other.eagain_after_shutdown;
        self.conns += other.conns;
        self.tcp_conns += other.tcp_conns;
        self.bypass_conns += other.bypass_conns;
        self.mixed_conns += other.mixed_conns;
    }

    pub fn json(self) -> Value {
        let mut v = json!({
            "failures": self.failures,
            "eagain": self.eagain,
            "eagain_after_shutdown": self.eagain_after_shutdown,
            "conns": self.conns,
            "tcp_conns": self.tcp_conns,
            "bypass_conns": self.bypass_conns,
            "mixed_conns": self.mixed_conns,
        });
        v.as_object_mut().expect("object").extend(self.extra);
        v
    }
}

/// One connection's outcome: EAGAIN seen by our reads and by the server's (before its own
/// shutdown), and the bytes TCP carried.
pub struct Conn {
    pub eagain: Eagain,
    pub server_eagain: u64,
    pub via_tcp: u64,
    /// Bytes the connection carried, both ways (request line included).
    pub payload: u64,
}

/// `via_tcp` of a connection whose payload skipped TCP: sequence space taken by the SYN and
/// the two FINs. Every request line is at least 5 bytes, so a connection that sent anything
/// through TCP is above it.
pub const CONTROL_ONLY: u64 = 3;
