//! Whole-path load generator: fixed concurrency of keep-alive HTTP/1.1 connections, each sending MCP
//! `tools/call` (2026-07-28, 1 KiB argument object) back to back; exact latency percentiles from
//! hdrhistogram. Prints one JSON object.
//!
//! Usage: loadgen --url http://127.0.0.1:PORT/mcp --tool NAME [--concurrency 32] [--seconds 10] [--warmup 2]
//!                [--bearer TOKEN]   (an agent API key, for a governed gateway)
//!                [--wrap body]      (the arguments under one name: a converted REST operation's body)
//!                [--cpu-of PID,...] (also report the CPU those processes spent per request while recording)
//!        loadgen --proto h2|h3 --url https://127.0.0.1:PORT/mcp --cacert CERT.pem --tool NAME [--connections 4]
//!
//! h1: one OS thread per connection, blocking keep-alive. h2: `--concurrency` streams in flight, spread over
//! `--connections` TLS connections, driven by one monoio runtime per connection group (`--threads`, default 2).
//! h3: the same over QUIC connections (quinn + h3, one tokio current-thread runtime per group).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use portcullis_bench::{call_body_under, Reader};

struct Args {
    proto: String,
    cacert: Option<String>,
    connections: usize,
    threads: usize,
    host: String,
    port: u16,
    path: String,
    tool: String,
    concurrency: usize,
    seconds: u64,
    warmup: u64,
    /// `authorization: Bearer …` line (with CRLF), or empty.
    auth: String,
    /// Put the arguments under this name (`--wrap body`: a converted REST operation's JSON body).
    wrap: Option<String>,
    /// Processes whose CPU time (every thread, user and system) is measured over the recording window.
    cpu_of: Vec<u32>,
}

fn args() -> Args {
    let mut a = Args {
        proto: "h1".into(),
        cacert: None,
        connections: 4,
        threads: 2,
        host: String::new(),
        port: 0,
        path: String::new(),
        tool: "echo".into(),
        concurrency: 32,
        seconds: 10,
        warmup: 2,
        auth: String::new(),
        wrap: None,
        cpu_of: Vec::new(),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < v.len() {
        let val = v[i + 1].clone();
        match v[i].as_str() {
            "--url" => {
                let rest = val
                    .strip_prefix("http://")
                    .or_else(|| val.strip_prefix("https://"))
                    .expect("http(s):// URL");
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
            "--proto" => a.proto = val,
            "--cacert" => a.cacert = Some(val),
            "--connections" => a.connections = val.parse().unwrap(),
            "--threads" => a.threads = val.parse().unwrap(),
            "--concurrency" => a.concurrency = val.parse().unwrap(),
            "--seconds" => a.seconds = val.parse().unwrap(),
            "--warmup" => a.warmup = val.parse().unwrap(),
            "--bearer" => a.auth = format!("authorization: Bearer {val}\r\n"),
            "--wrap" => a.wrap = Some(val),
            "--cpu-of" => a.cpu_of = val.split(',').map(|p| p.parse().unwrap()).collect(),
            other => panic!("unknown flag {other}"),
        }
        i += 2;
    }
    assert!(a.port != 0, "--url is required");
    a
}

fn main() {
    let a = Arc::new(args());
    if a.proto == "h2" {
        return h2load::run(a);
    }
    if a.proto == "h3" {
        return h3load::run(a);
    }
    assert_eq!(a.proto, "h1", "--proto is h1, h2 or h3");
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
                let body = call_body_under(id, &a.tool, a.wrap.as_deref());
                let req = format!(
                    "POST {} HTTP/1.1\r\nhost: {}:{}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: {}\r\n{}content-length: {}\r\n\r\n{}",
                    a.path, a.host, a.port, a.tool, a.auth, body.len(), body
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
    measure(&a, &recording, &stop, threads);
}

/// Let the workers warm up, record for `--seconds`, stop them, and report their merged histograms.
fn measure(
    a: &Args,
    recording: &AtomicBool,
    stop: &AtomicBool,
    workers: Vec<std::thread::JoinHandle<(Histogram<u64>, u64)>>,
) {
    std::thread::sleep(Duration::from_secs(a.warmup));
    recording.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    let cpu0 = cpu_seconds(&a.cpu_of);
    std::thread::sleep(Duration::from_secs(a.seconds));
    let cpu = cpu_seconds(&a.cpu_of) - cpu0;
    recording.store(false, Ordering::SeqCst);
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut errors = 0;
    for w in workers {
        let (h, e) = w.join().unwrap();
        all.add(&h).unwrap();
        errors += e;
    }
    report(a, &all, errors, elapsed, cpu);
}

/// CPU seconds (user + system, every thread) the processes have used so far, from `/proc`.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // Clock ticks per second: 100 on every Linux this runs on (USER_HZ is fixed by the kernel ABI).
    const TICKS: f64 = 100.0;
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_else(|e| panic!("--cpu-of {pid}: {e}"));
        // Fields after the parenthesised command name: utime is the 12th, stime the 13th (cutime and
        // cstime, for waited-for children, are not this process's own work).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    }
    ticks as f64 / TICKS
}

fn report(a: &Args, all: &Histogram<u64>, errors: u64, elapsed: Duration, cpu: f64) {
    let per_request =
        (!a.cpu_of.is_empty() && !all.is_empty()).then(|| cpu * 1e6 / all.len() as f64);
    let out = serde_json::json!({
        "proto": a.proto,
        "requests": all.len(),
        "errors": errors,
        "seconds": elapsed.as_secs_f64(),
        "throughput_rps": all.len() as f64 / elapsed.as_secs_f64(),
        "p50_us": all.value_at_quantile(0.5),
        "p99_us": all.value_at_quantile(0.99),
        "p999_us": all.value_at_quantile(0.999),
        "max_us": all.max(),
        "concurrency": a.concurrency,
        "cpu_us_per_request": per_request,
    });
    println!("{out}");
}

mod h2load {
    //! The HTTP/2 side: streams multiplexed over a few TLS connections.
    use super::*;
    use bytes::Bytes;
    use std::cell::RefCell;
    use std::rc::Rc;

    pub fn tls_config(cacert: &str, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(cacert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(c)
    }

    type Tally = Rc<RefCell<(Histogram<u64>, u64)>>;

    async fn worker(
        a: Arc<Args>,
        mut send: h2::client::SendRequest<Bytes>,
        id0: u64,
        rec: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
        tally: Tally,
    ) {
        let mut id = id0;
        let uri = format!("https://{}:{}{}", a.host, a.port, a.path);
        while !stop.load(Ordering::Relaxed) {
            id += 1;
            let body = Bytes::from(call_body_under(id, &a.tool, a.wrap.as_deref()));
            let mut req = http::Request::post(uri.as_str());
            if let Some(token) = a.auth.strip_prefix("authorization: ") {
                req = req.header("authorization", token.trim_end());
            }
            let req = req
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "tools/call")
                .header("mcp-name", a.tool.as_str())
                .body(())
                .unwrap();
            let t0 = Instant::now();
            send = match send.ready().await {
                Ok(s) => s,
                Err(_) => return,
            };
            let Ok((resp, mut stream)) = send.send_request(req, false) else {
                return;
            };
            if stream.send_data(body, true).is_err() {
                return;
            }
            let ok = match resp.await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let mut b = r.into_body();
                    let mut got = Vec::new();
                    while let Some(Ok(d)) = b.data().await {
                        let _ = b.flow_control().release_capacity(d.len());
                        got.extend_from_slice(&d);
                    }
                    status == 200 && got.windows(8).any(|w| w == b"received")
                }
                Err(_) => false,
            };
            let us = t0.elapsed().as_micros() as u64;
            if rec.load(Ordering::Relaxed) {
                let mut t = tally.borrow_mut();
                if ok {
                    t.0.record(us.max(1)).unwrap();
                } else {
                    t.1 += 1;
                }
            }
        }
    }

    pub fn run(a: Arc<Args>) {
        let cfg = tls_config(
            a.cacert.as_deref().expect("--cacert is required for h2"),
            b"h2",
        );
        let recording = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = a.threads.max(1).min(a.connections.max(1));
        let mut handles = Vec::new();
        for t in 0..threads {
            let (a, cfg, recording, stop) =
                (a.clone(), cfg.clone(), recording.clone(), stop.clone());
            handles.push(std::thread::spawn(move || {
                let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let tally: Tally = Rc::new(RefCell::new((
                        Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
                        0,
                    )));
                    let conns: Vec<usize> =
                        (0..a.connections).filter(|c| c % threads == t).collect();
                    let mut tasks = Vec::new();
                    for c in conns {
                        let tcp = monoio::net::TcpStream::connect((a.host.as_str(), a.port))
                            .await
                            .unwrap();
                        tcp.set_nodelay(true).unwrap();
                        let connector = tokio_rustls::TlsConnector::from(cfg.clone());
                        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                        let io = connector
                            .connect(name, monoio_compat::StreamWrapper::new(tcp))
                            .await
                            .unwrap();
                        let (send, conn) = h2::client::handshake(io).await.unwrap();
                        monoio::spawn(async move {
                            let _ = conn.await;
                        });
                        // This connection's share of the streams.
                        let streams = (a.concurrency / a.connections)
                            + usize::from(c < a.concurrency % a.connections);
                        for s in 0..streams {
                            let id0 = ((c * 1000 + s) as u64) << 32;
                            tasks.push(monoio::spawn(worker(
                                a.clone(),
                                send.clone(),
                                id0,
                                recording.clone(),
                                stop.clone(),
                                tally.clone(),
                            )));
                        }
                    }
                    for task in tasks {
                        task.await;
                    }
                    let t = tally.borrow();
                    (t.0.clone(), t.1)
                })
            }));
        }
        measure(&a, &recording, &stop, handles);
    }
}

mod h3load {
    //! The HTTP/3 side: streams multiplexed over a few QUIC connections.
    use super::*;
    use bytes::{Buf, Bytes};
    use std::cell::RefCell;
    use std::rc::Rc;

    type Tally = Rc<RefCell<(Histogram<u64>, u64)>>;
    type Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

    async fn call(a: &Args, send: &mut Send, id: u64) -> Option<bool> {
        let body = Bytes::from(call_body_under(id, &a.tool, a.wrap.as_deref()));
        let mut req = http::Request::post(format!("https://{}:{}{}", a.host, a.port, a.path));
        if let Some(token) = a.auth.strip_prefix("authorization: ") {
            req = req.header("authorization", token.trim_end());
        }
        let req = req
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", a.tool.as_str())
            .header("content-length", body.len())
            .body(())
            .unwrap();
        let mut stream = send.send_request(req).await.ok()?;
        stream.send_data(body).await.ok()?;
        stream.finish().await.ok()?;
        let status = stream.recv_response().await.ok()?.status().as_u16();
        let mut got = Vec::new();
        while let Ok(Some(mut chunk)) = stream.recv_data().await {
            while chunk.has_remaining() {
                let piece = chunk.chunk();
                got.extend_from_slice(piece);
                let n = piece.len();
                chunk.advance(n);
            }
        }
        Some(status == 200 && got.windows(8).any(|w| w == b"received"))
    }

    async fn worker(
        a: Arc<Args>,
        mut send: Send,
        id0: u64,
        rec: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
        tally: Tally,
    ) {
        let mut id = id0;
        while !stop.load(Ordering::Relaxed) {
            id += 1;
            let t0 = Instant::now();
            let Some(ok) = call(&a, &mut send, id).await else {
                return;
            };
            let us = t0.elapsed().as_micros() as u64;
            if rec.load(Ordering::Relaxed) {
                let mut t = tally.borrow_mut();
                if ok {
                    t.0.record(us.max(1)).unwrap();
                } else {
                    t.1 += 1;
                }
            }
        }
    }

    pub fn run(a: Arc<Args>) {
        let tls = crate::h2load::tls_config(
            a.cacert.as_deref().expect("--cacert is required for h3"),
            b"h3",
        );
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let client = quinn::ClientConfig::new(Arc::new(quic));
        let recording = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = a.threads.max(1).min(a.connections.max(1));
        let mut handles = Vec::new();
        for t in 0..threads {
            let (a, client, recording, stop) =
                (a.clone(), client.clone(), recording.clone(), stop.clone());
            handles.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let tally: Tally = Rc::new(RefCell::new((
                        Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
                        0,
                    )));
                    let mut endpoint =
                        quinn::Endpoint::client("0.0.0.0:0".parse().unwrap()).unwrap();
                    endpoint.set_default_client_config(client);
                    let addr: std::net::SocketAddr =
                        format!("{}:{}", a.host, a.port).parse().unwrap();
                    let mut tasks = Vec::new();
                    for c in (0..a.connections).filter(|c| c % threads == t) {
                        let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
                        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
                            .await
                            .unwrap();
                        tokio::task::spawn_local(async move {
                            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
                        });
                        let streams = (a.concurrency / a.connections)
                            + usize::from(c < a.concurrency % a.connections);
                        for s in 0..streams {
                            let id0 = ((c * 1000 + s) as u64) << 32;
                            tasks.push(tokio::task::spawn_local(worker(
                                a.clone(),
                                send.clone(),
                                id0,
                                recording.clone(),
                                stop.clone(),
                                tally.clone(),
                            )));
                        }
                    }
                    for task in tasks {
                        let _ = task.await;
                    }
                    let t = tally.borrow();
                    (t.0.clone(), t.1)
                })
            }));
        }
        measure(&a, &recording, &stop, handles);
    }
}
