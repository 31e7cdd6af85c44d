//! Whole-path load generator: fixed concurrency of keep-alive HTTP/1.1 connections, each sending MCP
//! `tools/call` (2026-07-28, 1 KiB argument object) back to back; exact latency percentiles from
//! hdrhistogram. Prints one JSON object.
//!
//! Usage: loadgen --url http://127.0.0.1:PORT/mcp --tool NAME [--concurrency 32] [--seconds 10] [--warmup 2]
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use portcullis_bench::{call_body, Reader};

struct Args {
    host: String,
    port: u16,
    path: String,
    tool: String,
    concurrency: usize,
    seconds: u64,
    warmup: u64,
}

fn args() -> Args {
    let mut a = Args {
        host: String::new(),
        port: 0,
        path: String::new(),
        tool: "echo".into(),
        concurrency: 32,
        seconds: 10,
        warmup: 2,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < v.len() {
        let val = v[i + 1].clone();
        match v[i].as_str() {
            "--url" => {
                let rest = val.strip_prefix("http://").expect("http:// URL");
                let (auth, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let (h, p) = auth.rsplit_once(':').expect("host:port");
                a.host = h.into();
                a.port = p.parse().unwrap();
                a.path = if path.is_empty() {
                    "/".into()
                } else {
                    path.into()
                };
            }
            "--tool" => a.tool = val,
            "--concurrency" => a.concurrency = val.parse().unwrap(),
            "--seconds" => a.seconds = val.parse().unwrap(),
            "--warmup" => a.warmup = val.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
        i += 2;
    }
    assert!(a.port != 0, "--url is required");
    a
}

fn main() {
    let a = Arc::new(args());
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..a.concurrency {
        let (a, recording, stop) = (a.clone(), recording.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut errors = 0u64;
            let connect = || {
                let s = TcpStream::connect((a.host.as_str(), a.port)).unwrap();
                s.set_nodelay(true).unwrap();
                s
            };
            let mut s = connect();
            let mut r = Reader::default();
            let mut id = (t as u64) << 32;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let body = call_body(id, &a.tool);
                let req = format!(
                    "POST {} HTTP/1.1\r\nhost: {}:{}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: {}\r\ncontent-length: {}\r\n\r\n{}",
                    a.path, a.host, a.port, a.tool, body.len(), body
                );
                let t0 = Instant::now();
                let resp = match s.write_all(req.as_bytes()).and_then(|_| r.read(&mut s, false)) {
                    Ok(Some(resp)) => resp,
                    // The server ended the keep-alive connection (e.g. a per-connection request cap):
                    // reconnect; the interrupted request is not counted.
                    _ => {
                        s = connect();
                        r = Reader::default();
                        continue;
                    }
                };
                let closing = resp.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                let us = t0.elapsed().as_micros() as u64;
                let ok = resp.status == 200 && resp.body.windows(8).any(|w| w == b"received");
                if recording.load(Ordering::Relaxed) {
                    if ok {
                        h.record(us.max(1)).unwrap();
                    } else {
                        errors += 1;
                    }
                }
                if closing {
                    s = connect();
                    r = Reader::default();
                }
            }
            (h, errors)
        }));
    }
    std::thread::sleep(Duration::from_secs(a.warmup));
    recording.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(a.seconds));
    recording.store(false, Ordering::SeqCst);
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut errors = 0;
    for t in threads {
        let (h, e) = t.join().unwrap();
        all.add(&h).unwrap();
        errors += e;
    }
    let out = serde_json::json!({
        "requests": all.len(),
        "errors": errors,
        "seconds": elapsed.as_secs_f64(),
        "throughput_rps": all.len() as f64 / elapsed.as_secs_f64(),
        "p50_us": all.value_at_quantile(0.5),
        "p99_us": all.value_at_quantile(0.99),
        "p999_us": all.value_at_quantile(0.999),
        "max_us": all.max(),
        "concurrency": a.concurrency,
    });
    println!("{out}");
}
