//! Connections that end early: half-closes either way, resets.
use std::{
    io::{self, Read, Write},
    time::Duration,
};

use socket2::Socket;

use super::Client;
use crate::payload::Pattern;
use crate::report::Report;

impl Client {
    /// `rounds` short transfers, each ended by shutdown(SHUT_WR), alternating direction: every
    /// blocking read right after the peer's half-close must give the data, then 0.
    pub fn halfclose(&self, r: &mut Report, rounds: u64, size: u64) {
        for i in 0..rounds {
            let data = Pattern::bytes(i, size as usize);
            r.conn(
                &format!("half-close send #{i}"),
                self.sink_with(&data, |s| s.write_all(&data)),
            );
            r.conn(
                &format!("half-close receive #{i}"),
                self.receive(&format!("source {size} {i} {size}"), size, i),
            );
        }
    }
    /// Resets from either side: the other side gets an error or EOF promptly (the watchdog
    /// fails a hang), never bytes that were not sent, and the server keeps serving.
    pub fn abort(&self, r: &mut Report) {
        // The server resets after 64 KiB; writing on must fail, not block.
        let outcome = (|| -> io::Result<String> {
            let mut s = self.request("abort_after 65536")?;
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..1024 {
                if let Err(e) = s.write_all(&chunk) {
                    return Ok(format!("write: {:?}", e.kind()));
                }
            }
            let mut b = [0u8; 16];
            Ok(format!("read after 64 MiB: {:?}", s.read(&mut b)))
        })();
        match outcome {
            Ok(o) if o.starts_with("write: ") => {
                r.extra.insert("server_reset".into(), o.into());
            }
            Ok(o) => r.fail(format!("server reset unnoticed: {o}")),
            Err(e) => r.fail(format!("server reset: {e}")),
        }
        // We reset mid-transfer; the server must survive it.
        let reset = (|| -> io::Result<()> {
            let mut s = self.request("sink")?;
            s.write_all(&vec![1u8; 100_000])?;
            Socket::from(s).set_linger(Some(Duration::ZERO))
        })();
        if let Err(e) = reset {
            r.fail(format!("client reset: {e}"));
        }
        let data = Pattern::bytes(5, 4096);
        r.conn(
            "after resets",
            self.sink_with(&data, |s| s.write_all(&data)),
        );
    }
}
