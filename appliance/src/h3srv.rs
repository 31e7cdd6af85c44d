//! HTTP/3 for agents: a QUIC endpoint per core on the MCP TLS port (UDP), each request through the same
//! gateway path as HTTP/1.1 and HTTP/2.
//!
//! quinn's runtime interface is readiness-based and monoio's io_uring driver completion-based, so every
//! core has a QUIC thread beside it, pinned to the same CPU, running quinn and h3 on a tokio
//! current-thread runtime. A request is read whole there (bounded like any other) and handed to its core
//! over a channel (`H3Request`); the core answers through a bounded channel of its own, so a slow reader
//! holds the response back instead of having it buffered.
//!
//! **Datagrams reach the core that owns their connection.** The cores' UDP sockets form one
//! `SO_REUSEPORT` group, bound in core order, with a classic BPF program (`attach_cid_steering`) that
//! picks the socket by the first byte of the packet's destination connection id modulo the core count,
//! and every connection id a core issues starts with a byte that names it (`CoreCids`). An Initial packet
//! carries the client's own random id, so a new connection lands on some core, always the same one for
//! its retransmissions; from then on the client addresses the server's ids, which lead to that core
//! whatever address or port the client sends from (connection migration, NAT rebinding). Where the
//! program cannot be attached (not Linux, or refused) the kernel's 4-tuple hash spreads datagrams and a
//! migrating connection may be lost; that is logged once.
//!
//! **Safety.** 0-RTT is off unless `listen.h3_early_data_methods` names methods: then resumed clients may
//! send requests in early data, and before the handshake completes only those methods are served (an
//! early request for anything else waits for the handshake, which a replayed flight never completes, so
//! a replay can repeat at most a method the operator called safe).
//! Address validation: while more than `limits.h3_handshakes_before_retry` handshakes are in progress on
//! a core, a client that has not proved its address gets a Retry first. Per connection: at most
//! `limits.h3_streams_per_connection_max` concurrent request streams and `limits.idle_timeout` of
//! silence; per core, `limits.connections_per_core_max` connections (past it new ones are refused).
//! Datagrams that are not QUIC are dropped by quinn without reply.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use portcullis_pipeline::DenyReason;

use crate::gateway::{Core, Shared};
use crate::http::{Reply, RequestHead, Response};

/// What the QUIC threads count, for `/metrics`.
#[derive(Debug, Default)]
pub struct H3Stats {
    pub connections: AtomicUsize,
    pub refused: std::sync::atomic::AtomicU64,
    pub retries: std::sync::atomic::AtomicU64,
    /// Requests that arrived before the handshake completed: served at once (a safe method) or held.
    pub early_served: std::sync::atomic::AtomicU64,
    pub early_held: std::sync::atomic::AtomicU64,
}

impl H3Stats {
    pub fn metrics(&self) -> String {
        let r = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "# HELP portcullis_h3_connections_open HTTP/3 connections open now.\n# TYPE portcullis_h3_connections_open gauge\nportcullis_h3_connections_open {}\n\
             # HELP portcullis_h3_connections_refused_total HTTP/3 connections refused at connections_per_core_max.\n# TYPE portcullis_h3_connections_refused_total counter\nportcullis_h3_connections_refused_total {}\n\
             # HELP portcullis_h3_retries_total QUIC Retry packets sent to clients that had not proved their address.\n# TYPE portcullis_h3_retries_total counter\nportcullis_h3_retries_total {}\n\
             # HELP portcullis_h3_early_requests_total HTTP/3 requests that arrived in 0-RTT, by what became of them.\n# TYPE portcullis_h3_early_requests_total counter\nportcullis_h3_early_requests_total{{outcome=\"served\"}} {}\nportcullis_h3_early_requests_total{{outcome=\"held\"}} {}\n",
            self.connections.load(Ordering::Relaxed),
            r(&self.refused),
            r(&self.retries),
            r(&self.early_served),
            r(&self.early_held),
        )
    }
}

/// Whether a connection's handshake has completed, for requests that arrived in early data.
#[derive(Debug, Default)]
struct Handshake {
    done: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Handshake {
    fn complete(&self) {
        self.done.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Wait for the handshake, at most `limit`; whether it completed.
    async fn wait(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.notify.notified();
            if self.done.load(Ordering::SeqCst) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.done.load(Ordering::SeqCst);
            }
        }
    }
}

/// One HTTP/3 request, read whole, on its way to its core.
#[derive(Debug)]
pub struct H3Request {
    pub head: RequestHead,
    pub body: Vec<u8>,
    /// The answer, in pieces; bounded, so the core waits for a slow reader.
    pub out: flume::Sender<H3Out>,
}

/// A piece of an answer, from the core to the QUIC thread.
#[derive(Debug)]
pub enum H3Out {
    Full(Response, Vec<u8>),
    Head(Response),
    Data(Vec<u8>),
    End,
}

/// Answer pieces queued per request before the core waits.
const OUT_QUEUE_LEN: usize = 16;

/// How long a draining endpoint lets connections finish.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The cores' UDP sockets on `addr`, bound in core order so that socket `i` of the reuseport group is
/// core `i`'s, with the connection-id steering program attached.
pub fn bind_sockets(addr: SocketAddr, cores: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out = Vec::with_capacity(cores);
    for _ in 0..cores {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&addr.into())?;
        s.set_nonblocking(true)?;
        out.push(std::net::UdpSocket::from(s));
    }
    if cores > 1 {
        if let Some(first) = out.first() {
            if let Err(e) = attach_cid_steering(first, cores) {
                crate::warn!(
                    "http/3: connection-id steering unavailable ({e}); datagrams spread by address"
                );
            }
        }
    }
    Ok(out)
}

/// The classic BPF program that steers a datagram to socket `dcid[0] % cores` of the reuseport group.
/// Long header (first bit set): the DCID starts at byte 6 (flags, 4 version bytes, DCID length); short
/// header: at byte 1. A datagram too short to read traps the program, which returns socket 0.
fn steering_program(cores: usize) -> [libc::sock_filter; 7] {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    [
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 0),
        op(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K, 0, 2, 0x80),
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 6),
        op(libc::BPF_JMP | libc::BPF_JA, 0, 0, 1),
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 1),
        op(
            libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
            0,
            0,
            cores as u32,
        ),
        op(libc::BPF_RET | libc::BPF_A, 0, 0, 0),
    ]
}

/// The one unsafe call of this crate: neither std nor socket2 offers `SO_ATTACH_REUSEPORT_CBPF`.
#[allow(unsafe_code)]
fn attach_cid_steering(socket: &std::net::UdpSocket, cores: usize) -> std::io::Result<()> {
    let mut program = steering_program(cores);
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(socket);
    // SAFETY: setsockopt reads `fprog` and the program it points to for the duration of the call; both
    // outlive it, and `fd` is an open socket borrowed from `socket`.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::from_ref(&fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Connection ids of one core: 8 bytes, the first naming the core (`byte % cores == core`, the
/// steering program's choice), the rest from the CSPRNG. The first byte's other bits are random too,
/// so ids do not all start alike.
#[derive(Debug)]
pub struct CoreCids {
    core: u8,
    cores: u8,
}

impl CoreCids {
    pub fn new(core: usize, cores: usize) -> CoreCids {
        CoreCids {
            core: core as u8,
            cores: cores.clamp(1, 255) as u8,
        }
    }

    /// The first byte for random `r`: the largest value `<= r` that names this core, else the
    /// smallest.
    fn lead(&self, r: u8) -> u8 {
        let (r, n, core) = (u16::from(r), u16::from(self.cores), u16::from(self.core));
        let base = r - r % n + core % n;
        let lead = if base > r {
            base.checked_sub(n)
        } else {
            Some(base)
        };
        lead.and_then(|b| u8::try_from(b).ok())
            .unwrap_or(self.core % self.cores)
    }
}

impl quinn::ConnectionIdGenerator for CoreCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut b = [0u8; 8];
        // A failing CSPRNG leaves zeros after the core byte: still valid ids, only guessable, and the
        // QUIC handshake does not rely on their secrecy.
        let _ = getrandom::fill(&mut b);
        b[0] = self.lead(b[0]);
        quinn::ConnectionId::new(&b)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Everything one core's QUIC thread needs.
#[derive(Debug)]
pub struct H3Setup {
    pub core: usize,
    pub cores: usize,
    pub cpu: Option<usize>,
    pub socket: std::net::UdpSocket,
    pub tls: Arc<rustls::ServerConfig>,
    pub to_core: flume::Sender<H3Request>,
    pub shared: Arc<Shared>,
}

/// Start core `setup.core`'s QUIC thread.
pub fn spawn(setup: H3Setup) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("portcullis-h3-{}", setup.core))
        .spawn(move || {
            if let Some(cpu) = setup.cpu {
                if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
                    crate::warn!("h3 core={} cannot pin to cpu {cpu}: {e:?}", setup.core);
                }
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    crate::error!("h3 core={}: no runtime: {e}", setup.core);
                    return;
                }
            };
            let core = setup.core;
            if let Err(e) = rt.block_on(serve(setup)) {
                crate::error!("h3 core={core}: {e}");
            }
        })
}

/// The transport parameters every connection gets.
fn transport(shared: &Shared) -> Result<quinn::TransportConfig, String> {
    let l = &shared.config.limits;
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(l.h3_streams_per_connection_max))
        // The peer's control stream and its two QPACK streams, with room for a grease stream.
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(8))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(l.idle_timeout.0).map_err(|e| e.to_string())?,
        ))
        // Keep quiet connections with open streams (SSE) alive from our side.
        .keep_alive_interval(Some(Duration::from_secs(15)));
    Ok(t)
}

async fn serve(setup: H3Setup) -> Result<(), String> {
    let shared = setup.shared.clone();
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(setup.tls.clone())
        .map_err(|e| format!("tls for quic: {e}"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport(&shared)?));
    let mut endpoint_config = quinn::EndpointConfig::default();
    let (core, cores) = (setup.core, setup.cores);
    endpoint_config.cid_generator(move || Box::new(CoreCids::new(core, cores)));
    let endpoint = quinn::Endpoint::new(
        endpoint_config,
        Some(server),
        setup.socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| e.to_string())?;
    let connections = Arc::new(AtomicUsize::new(0));
    let handshaking = Arc::new(AtomicUsize::new(0));
    let early = !shared.config.listen.h3_early_data_methods.is_empty();
    let l = &shared.config.limits;
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if shared.draining.load(Ordering::SeqCst) {
                    break;
                }
                continue;
            }
        };
        if connections.load(Ordering::Relaxed) >= l.connections_per_core_max {
            shared.h3.refused.fetch_add(1, Ordering::Relaxed);
            incoming.refuse();
            continue;
        }
        // Under a handshake flood, clients prove their address before the gateway does any crypto work.
        if !incoming.remote_address_validated()
            && incoming.may_retry()
            && handshaking.load(Ordering::Relaxed) >= l.h3_handshakes_before_retry
        {
            shared.h3.retries.fetch_add(1, Ordering::Relaxed);
            let _ = incoming.retry();
            continue;
        }
        let (shared, to_core, connections, handshaking) = (
            shared.clone(),
            setup.to_core.clone(),
            connections.clone(),
            handshaking.clone(),
        );
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            handshaking.fetch_add(1, Ordering::Relaxed);
            let hs = shared.config.limits.header_read_timeout.0;
            let Ok(connecting) = incoming.accept() else {
                handshaking.fetch_sub(1, Ordering::Relaxed);
                return;
            };
            let handshake = Arc::new(Handshake::default());
            let conn = if early {
                // Requests may come before the handshake completes; `handle_request` decides which wait.
                match connecting.into_0rtt() {
                    Ok((conn, accepted)) => {
                        let (h, handshaking) = (handshake.clone(), handshaking.clone());
                        tokio::spawn(async move {
                            if tokio::time::timeout(hs, accepted).await.is_ok() {
                                h.complete();
                            }
                            handshaking.fetch_sub(1, Ordering::Relaxed);
                        });
                        Some(conn)
                    }
                    Err(c) => {
                        let conn = tokio::time::timeout(hs, c).await.ok().and_then(Result::ok);
                        handshake.complete();
                        handshaking.fetch_sub(1, Ordering::Relaxed);
                        conn
                    }
                }
            } else {
                let conn = tokio::time::timeout(hs, connecting)
                    .await
                    .ok()
                    .and_then(Result::ok);
                handshake.complete();
                handshaking.fetch_sub(1, Ordering::Relaxed);
                conn
            };
            let Some(conn) = conn else {
                return;
            };
            connections.fetch_add(1, Ordering::Relaxed);
            shared.h3.connections.fetch_add(1, Ordering::Relaxed);
            serve_connection(&shared, conn, peer, &to_core, handshake).await;
            shared.h3.connections.fetch_sub(1, Ordering::Relaxed);
            connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
    endpoint.close(quinn::VarInt::from_u32(0x100), b"shutting down");
    let _ = tokio::time::timeout(DRAIN_GRACE, endpoint.wait_idle()).await;
    Ok(())
}

async fn serve_connection(
    shared: &Arc<Shared>,
    conn: quinn::Connection,
    peer: SocketAddr,
    to_core: &flume::Sender<H3Request>,
    handshake: Arc<Handshake>,
) {
    let cert_agent = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| {
            chain
                .first()
                .and_then(|leaf| shared.identity.certificate_agent(leaf))
        });
    let l = &shared.config.limits;
    let mut h3conn = match h3::server::builder()
        .max_field_section_size(l.header_bytes_max as u64)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await
    {
        Ok(c) => c,
        Err(_) => return,
    };
    let draining = Arc::new(AtomicBool::new(false));
    loop {
        let accepted = tokio::select! {
            a = h3conn.accept() => a,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if shared.draining.load(Ordering::SeqCst) && !draining.swap(true, Ordering::SeqCst) {
                    let _ = h3conn.shutdown(0).await;
                }
                continue;
            }
        };
        match accepted {
            Ok(Some(resolver)) => {
                let (shared, to_core, cert_agent, handshake) = (
                    shared.clone(),
                    to_core.clone(),
                    cert_agent.clone(),
                    handshake.clone(),
                );
                tokio::spawn(async move {
                    if let Ok((req, stream)) = resolver.resolve_request().await {
                        let from = Arrival {
                            peer,
                            cert_agent,
                            handshake,
                        };
                        handle_request(&shared, req, stream, from, &to_core).await;
                    }
                });
            }
            Ok(None) | Err(_) => return,
        }
    }
}

type Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Where a request came from.
struct Arrival {
    peer: SocketAddr,
    cert_agent: Option<Arc<str>>,
    handshake: Arc<Handshake>,
}

/// The JSON-RPC method of a body, for the early-data check (nothing else is read here).
fn method_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Method {
        method: Option<String>,
    }
    serde_json::from_slice::<Method>(body).ok()?.method
}

async fn handle_request(
    shared: &Shared,
    req: http::Request<()>,
    mut stream: Stream,
    from: Arrival,
    to_core: &flume::Sender<H3Request>,
) {
    let Arrival {
        peer,
        cert_agent,
        handshake,
    } = from;
    let (parts, ()) = req.into_parts();
    let head = RequestHead::from_parts(&parts, Some(peer), "h3", cert_agent);
    let l = &shared.config.limits;
    let body = match read_body(&mut stream, l.body_bytes_max, l.request_timeout.0).await {
        Ok(b) => b,
        Err(reason) => {
            let body = crate::gateway_refusal_body(reason);
            let resp =
                Response::new(reason.http_status()).header("content-type", "application/json");
            send(&mut stream, H3Out::Full(resp, body)).await;
            return;
        }
    };
    if !handshake.done.load(Ordering::SeqCst) {
        // Early data: replayable. Only a method the operator called safe goes on before the handshake.
        let safe = method_of(&body)
            .is_some_and(|m| shared.config.listen.h3_early_data_methods.contains(&m));
        if safe {
            shared.h3.early_served.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.h3.early_held.fetch_add(1, Ordering::Relaxed);
            if !handshake.wait(l.header_read_timeout.0).await {
                return;
            }
        }
    }
    let (out, answers) = flume::bounded(OUT_QUEUE_LEN);
    if to_core
        .send_async(H3Request { head, body, out })
        .await
        .is_err()
    {
        let body = crate::gateway_refusal_body(DenyReason::ShuttingDown);
        let resp = Response::new(503).header("content-type", "application/json");
        send(&mut stream, H3Out::Full(resp, body)).await;
        return;
    }
    while let Ok(piece) = answers.recv_async().await {
        let last = matches!(piece, H3Out::Full(..) | H3Out::End);
        if !send(&mut stream, piece).await || last {
            // Dropping `answers` tells the core the agent is gone.
            return;
        }
    }
}

async fn read_body(
    stream: &mut Stream,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, DenyReason> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, stream.recv_data()).await {
            Err(_) => return Err(DenyReason::RequestTimeout),
            Ok(Err(_)) => return Err(DenyReason::InvalidRequest),
            Ok(Ok(None)) => return Ok(out),
            Ok(Ok(Some(mut chunk))) => {
                if out.len() + chunk.remaining() > max {
                    return Err(DenyReason::PayloadTooLarge);
                }
                while chunk.has_remaining() {
                    let piece = chunk.chunk();
                    out.extend_from_slice(piece);
                    let n = piece.len();
                    chunk.advance(n);
                }
            }
        }
    }
}

/// Put one piece of an answer on the wire; `false` when the agent is gone.
async fn send(stream: &mut Stream, piece: H3Out) -> bool {
    match piece {
        H3Out::Full(resp, body) => {
            let Some(r) = crate::h2srv::to_http(&resp, Some(body.len())) else {
                return false;
            };
            stream.send_response(r).await.is_ok()
                && (body.is_empty() || stream.send_data(Bytes::from(body)).await.is_ok())
                && stream.finish().await.is_ok()
        }
        H3Out::Head(resp) => match crate::h2srv::to_http(&resp, None) {
            Some(r) => stream.send_response(r).await.is_ok(),
            None => false,
        },
        H3Out::Data(d) => d.is_empty() || stream.send_data(Bytes::from(d)).await.is_ok(),
        H3Out::End => stream.finish().await.is_ok(),
    }
}

/// The core's end of a request: what the gateway answers goes to the QUIC thread.
struct H3Reply {
    out: flume::Sender<H3Out>,
}

impl Reply for H3Reply {
    async fn full(&mut self, resp: Response, body: &[u8], _close: bool) -> bool {
        self.out
            .send_async(H3Out::Full(resp, body.to_vec()))
            .await
            .is_ok()
    }
    async fn stream_start(&mut self, resp: Response) -> bool {
        self.out.send_async(H3Out::Head(resp)).await.is_ok()
    }
    async fn stream_data(&mut self, data: Vec<u8>) -> bool {
        self.out.send_async(H3Out::Data(data)).await.is_ok()
    }
    async fn stream_end(&mut self) -> bool {
        self.out.send_async(H3Out::End).await.is_ok()
    }
}

/// Serve the HTTP/3 requests this core's QUIC thread hands over, each in a task of its own.
pub async fn serve_core(core: Rc<Core>, rx: flume::Receiver<H3Request>) {
    while let Ok(req) = rx.recv_async().await {
        let core = core.clone();
        monoio::spawn(async move {
            let t0 = Instant::now();
            core.request_started();
            let mut reply = H3Reply { out: req.out };
            core.route(&mut reply, &req.head, req.body).await;
            core.request_finished();
            core.metrics.record_request(t0.elapsed());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_id_names_its_core() {
        for cores in [1usize, 2, 3, 7, 16, 255] {
            for core in 0..cores {
                let g = CoreCids::new(core, cores);
                for r in 0..=255u8 {
                    assert_eq!(
                        usize::from(g.lead(r)) % cores,
                        core,
                        "cores={cores} core={core} r={r}"
                    );
                }
            }
        }
    }
}
