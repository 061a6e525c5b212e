//! `mst-stream`: byte-stream checks for socket-level acceleration, run inside test pods.
//!
//! - `mst-stream serve ADDR...`: serves every address (IPv6 ones dual-stack, so IPv4-mapped
//!   peers land there too). Each connection starts with one request line:
//!   - `sink`: read to EOF, answer `<bytes> <fnv64 hex> <eagain>`, close;
//!   - `sleep_sink MS`: the same after not reading for MS milliseconds (a slow reader);
//!   - `sleep_sink_et MS`: the same, read as edge-triggered event loops read;
//!   - `source N SEED CHUNK [PAUSE_MS]`: send N pattern bytes in writes of CHUNK (PAUSE_MS
//!     apart), shut down writing, read to EOF;
//!   - `sendfile N SEED` / `splice N SEED`: the same through sendfile(2) / splice(2);
//!   - `echo`: send back everything until EOF, then shut down writing;
//!   - `abort_after N`: read N bytes, then reset the connection (SO_LINGER 0);
//!   - `stats`: answer the EAGAIN count of every read so far that came before the server's
//!     own shutdown;
//!   - `discard`: read to EOF, answer the byte count (bulk throughput, no checksum cost).
//!
//!   Reads are blocking: a read that fails with EAGAIN is a broken blocking contract and is
//!   counted (`eagain`), then retried. EAGAIN on reads after our own shutdown(SHUT_WR) is
//!   counted apart (`eagain_after_shutdown`): see the README's acceleration section.
//! - `mst-stream run SCENARIO DST [--bind IP] [--v6] [--timeout S] [ARGS]`: runs one
//!   scenario against a server and prints one JSON line: `failures` (empty when every byte
//!   arrived exactly), `eagain` seen by either side, and per connection whether its payload
//!   skipped TCP (`bypass_conns`), went all through it (`tcp_conns`) or partly (`mixed_conns`),
//!   from `tcpi_bytes_acked + tcpi_bytes_received` beyond the SYN and FINs.

mod blocking;
mod client;
mod opts;
mod payload;
mod report;
mod server;
mod syscalls;
mod tcp_info;

use std::{thread, time::Duration};

use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => server::serve(&args[1..]),
        Some("run") if args.len() >= 3 => {
            let opts = opts::Opts::parse(&args[3..]);
            watchdog(opts.timeout);
            let dst = args[2].parse().expect("destination IP:PORT");
            println!("{}", client::run(&args[1], dst, &opts));
        }
        _ => {
            eprintln!("usage: mst-stream serve ADDR... | run SCENARIO DST [options]");
            std::process::exit(2);
        }
    }
}

/// Ends the process with a failure report if the scenario outlives its time: a stalled or
/// deadlocked transfer fails the test instead of hanging it.
fn watchdog(secs: u64) {
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(secs));
        println!(
            "{}",
            json!({ "failures": [format!("timed out after {secs} s")] })
        );
        std::process::exit(3);
    });
}
