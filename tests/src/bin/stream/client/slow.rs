//! A slow reader: how much the writer gets queued while it sleeps.
use std::{
    io::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use super::Client;
use crate::payload::Pattern;
use crate::report::Report;
use crate::tcp_info::tcp_mem_pages;

impl Client {
    /// A reader that sleeps `sleep_ms` before reading `size` bytes: how much the writer got
    /// the kernel to accept meanwhile (bounded by socket buffers, or the writer never blocks),
    /// and that everything still arrives.
    /// `edge_triggered` (not 0): the server reads as [`crate::server::sink_edge_triggered`] does.
    pub fn slow(&self, r: &mut Report, size: u64, sleep_ms: u64, edge_triggered: u64) {
        let data = Arc::new(Pattern::bytes(42, size as usize));
        let written = Arc::new(AtomicU64::new(0));
        let mem_before = tcp_mem_pages();
        let sampled = Arc::new(Mutex::new((0u64, 0u64)));
        let (w, s2, d) = (
            Arc::clone(&written),
            Arc::clone(&sampled),
            Arc::clone(&data),
        );
        let start = Instant::now();
        let sampler = thread::spawn(move || {
            // Just before the reader wakes up.
            thread::sleep(Duration::from_millis(sleep_ms.saturating_sub(200)));
            *s2.lock().expect("lock") = (w.load(Ordering::SeqCst), tcp_mem_pages());
        });
        let request = match edge_triggered {
            0 => format!("sleep_sink {sleep_ms}"),
            _ => format!("sleep_sink_et {sleep_ms}"),
        };
        let res = self.sink_request(&request, &data, |s| {
            for chunk in d.chunks(64 * 1024) {
                s.write_all(chunk)?;
                written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            Ok(())
        });
        let _ = sampler.join();
        let (asleep, mem) = *sampled.lock().expect("lock");
        r.extra.insert("written_while_asleep".into(), asleep.into());
        r.extra.insert(
            "tcp_mem_growth_bytes".into(),
            (mem.saturating_sub(mem_before) * 4096).into(),
        );
        r.extra
            .insert("secs".into(), start.elapsed().as_secs_f64().into());
        r.conn("slow reader", res);
    }
}
