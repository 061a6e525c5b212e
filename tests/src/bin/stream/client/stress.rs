//! Random sizes, directions, echoes, early closes and resets on many threads.
use std::{
    io::Write,
    thread,
    time::{Duration, Instant},
};

use socket2::Socket;

use super::Client;
use crate::payload::Pattern;
use crate::report::Report;

impl Client {
    /// `secs` seconds of random work on `threads` threads: transfers of random sizes both
    /// ways and echoes, checked byte for byte, and connections closed or reset midway.
    pub fn stress(&self, r: &mut Report, secs: u64, seed: u64, threads: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let c = *self;
                thread::spawn(move || c.stress_worker(seed * 1000 + t, deadline))
            })
            .collect();
        let mut ops = 0;
        for w in workers {
            match w.join() {
                Ok((rep, n)) => {
                    r.merge(rep);
                    ops += n;
                }
                Err(_) => r.fail("stress worker panicked"),
            }
        }
        r.extra.insert("ops".into(), ops.into());
    }
    pub fn stress_worker(&self, seed: u64, deadline: Instant) -> (Report, u64) {
        let mut rng = Pattern::new(seed);
        let mut r = Report::default();
        let mut ops = 0;
        while Instant::now() < deadline {
            ops += 1;
            // Log-uniform sizes: 1 B to 4 MiB.
            let size = (1u64 << (rng.next() % 23)) + rng.next() % 1024;
            let s = rng.next();
            match rng.next() % 5 {
                0 => {
                    let data = Pattern::bytes(s, size as usize);
                    r.conn("stress send", self.sink_with(&data, |c| c.write_all(&data)));
                }
                1 => r.conn(
                    "stress receive",
                    self.receive(&format!("source {size} {s} {}", 1 + s % 300_000), size, s),
                ),
                2 => r.conn("stress echo", self.echo(s, size.min(1 << 20))),
                3 => {
                    // Close midway without reading: the server sees EOF early.
                    if let Ok(mut c) = self.request("sink") {
                        let _ = c.write_all(&vec![3u8; size as usize / 2]);
                    }
                }
                _ => {
                    // Reset midway.
                    if let Ok(mut c) = self.request("sink") {
                        let _ = c.write_all(&vec![4u8; size as usize / 2]);
                        let _ = Socket::from(c).set_linger(Some(Duration::ZERO));
                    }
                }
            }
        }
        (r, ops)
    }
}
