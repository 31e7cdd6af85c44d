//! Thread-per-core runtime: one pinned monoio runtime per core, each with its own `SO_REUSEPORT` listeners,
//! upstream pool, session shard and metrics.
//!
//! The io_uring driver is used where the kernel offers it, epoll otherwise (logged once). Cores talk only
//! through bounded channels (`SessionMsg`); the shared `Arc<Shared>` is read-only but for two atomics (the
//! drain flag and the ready count). SIGTERM sets the drain flag: cores stop accepting, let in-flight requests
//! finish up to `drain_timeout`, and return.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::{ListenerOpts, TcpListener};
use tokio_rustls::TlsAcceptor;

use crate::config::Driver;
use crate::gateway::{Core, SessionMsg, Shared};
use crate::http::{ByteStream, Conn, Native, Polled, ReadError, ReadLimits, Response};
use crate::metrics::{inc, CoreShared};
use crate::upstream::{ClientLimits, Pool};
use portcullis_pipeline::DenyReason;

/// Session messages queued for one core; at the bound senders wait (back-pressure, never unbounded growth).
const SESSION_QUEUE_LEN: usize = 1024;

#[derive(Debug)]
pub struct CoreSetup {
    pub index: usize,
    pub cpu: Option<usize>,
    pub shared: Arc<Shared>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub peers: Vec<flume::Sender<SessionMsg>>,
    pub inbox: flume::Receiver<SessionMsg>,
    /// HTTP/3 requests from this core's QUIC thread (`None`: no HTTP/3 listener).
    pub h3: Option<flume::Receiver<crate::h3srv::H3Request>>,
    pub metrics_tx: std::sync::mpsc::Sender<Arc<CoreShared>>,
}

pub fn session_channels(
    n: usize,
) -> (
    Vec<flume::Sender<SessionMsg>>,
    Vec<flume::Receiver<SessionMsg>>,
) {
    (0..n).map(|_| flume::bounded(SESSION_QUEUE_LEN)).unzip()
}

fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(1024);
    TcpListener::bind_with_config(addr, &opts)
}

/// Run one core until it has drained. Blocks the calling thread.
pub fn run_core(setup: CoreSetup) -> std::io::Result<()> {
    if let Some(cpu) = setup.cpu {
        if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
            crate::warn!("core={} cannot pin to cpu {cpu}: {e:?}", setup.index);
        }
    }
    let uring = monoio::utils::detect_uring();
    match setup.shared.config.driver {
        Driver::Epoll => {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()?;
            rt.block_on(core_main(setup, "epoll"))
        }
        Driver::IoUring if !uring => Err(std::io::Error::other(
            "driver: io_uring requested but unavailable on this kernel",
        )),
        Driver::IoUring | Driver::Auto => {
            if !uring && setup.index == 0 {
                crate::warn!("io_uring unavailable on this kernel; cores use the epoll driver");
            }
            let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .with_entries(1024)
                .build()?;
            rt.block_on(core_main(setup, if uring { "io_uring" } else { "epoll" }))
        }
    }
}

async fn core_main(setup: CoreSetup, driver: &'static str) -> std::io::Result<()> {
    let shared = setup.shared.clone();
    let cfg = &shared.config;
    let metrics = CoreShared::new(setup.index, driver);
    let _ = setup.metrics_tx.send(metrics.clone());
    let pool = Pool::new(ClientLimits::from_config(&cfg.limits));
    let core = Rc::new(Core::new(
        setup.index as u16,
        shared.clone(),
        pool,
        setup.peers,
        metrics,
    ));
    monoio::spawn(core.clone().serve_session_messages(setup.inbox));
    if let Some(h3) = setup.h3 {
        monoio::spawn(crate::h3srv::serve_core(core.clone(), h3));
    }

    let mut accept_tasks = Vec::new();
    if let Some(addr) = cfg.listen.mcp_tls {
        let l = listener(addr)?;
        let acceptor = TlsAcceptor::from(
            setup
                .tls
                .clone()
                .ok_or_else(|| std::io::Error::other("tls config missing"))?,
        );
        accept_tasks.push(monoio::spawn(accept_loop(core.clone(), l, Some(acceptor))));
    }
    if let Some(addr) = cfg.listen.mcp_plain {
        let l = listener(addr)?;
        accept_tasks.push(monoio::spawn(accept_loop(core.clone(), l, None)));
    }
    shared.ready_cores.fetch_add(1, Ordering::SeqCst);

    // Housekeeping: publish histograms, expire sessions, watch the drain flag.
    let mut last_expire = Instant::now();
    let mut last_persist = Instant::now();
    loop {
        monoio::time::sleep(Duration::from_millis(100)).await;
        core.metrics.publish();
        core.metrics
            .shared
            .counters
            .sessions_open
            .store(core.sessions.borrow().len() as u64, Ordering::Relaxed);
        if last_expire.elapsed() >= Duration::from_secs(5) {
            last_expire = Instant::now();
            core.expire_sessions().await;
        }
        if last_persist.elapsed() >= cfg.sessions.persist_interval.0 {
            last_persist = Instant::now();
            core.persist_sessions();
        }
        if shared.draining.load(Ordering::SeqCst) {
            core.persist_sessions();
            break;
        }
    }
    // Drain: accept loops see the flag and stop; in-flight requests get until the deadline.
    let deadline = Instant::now() + cfg.limits.drain_timeout.0;
    while core.in_flight.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    core.metrics.publish();
    if core.in_flight.get() > 0 {
        crate::warn!(
            "core={} drain deadline passed with {} requests in flight",
            setup.index,
            core.in_flight.get()
        );
    }
    drop(accept_tasks);
    Ok(())
}

async fn accept_loop(core: Rc<Core>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    let max = core.shared.config.limits.connections_per_core_max;
    // The accept is never raced against a timer: an io_uring accept dropped while the kernel completes it
    // leaks the accepted socket, and its client waits for an answer that never comes. Only draining, once,
    // drops a pending accept.
    let mut drained = std::pin::pin!(drain_flag(&core));
    loop {
        let accepted = monoio::select! {
            _ = &mut drained => return,
            a = listener.accept() => a,
        };
        let accepted = match accepted {
            Ok(a) => a,
            Err(e) => {
                crate::warn!("core={} accept error={e}", core.id);
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (stream, peer) = accepted;
        let counters = &core.metrics.shared.counters;
        if core.connections.get() >= max {
            inc(&counters.connections_refused);
            drop(stream);
            continue;
        }
        inc(&counters.connections_accepted);
        let _ = stream.set_nodelay(true);
        let core = core.clone();
        match &tls {
            None => {
                monoio::spawn(serve_conn(core, Native(stream), peer, false, None));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                monoio::spawn(async move {
                    let hs = core.shared.config.limits.header_read_timeout.0;
                    // Failed or slow handshakes cost nothing further.
                    if let Some(s) = crate::tls::accept(&acceptor, stream, hs).await {
                        // The handshake verified any client certificate against identity.mtls's CAs.
                        let tls = s.get_ref().1;
                        let cert_agent = tls
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|leaf| core.shared.identity.certificate_agent(leaf));
                        if tls.alpn_protocol() == Some(b"h2") {
                            let _open = OpenConnection::new(&core);
                            crate::h2srv::serve(core.clone(), s, Some(peer), cert_agent).await;
                        } else {
                            serve_conn(core, Polled(s), peer, true, cert_agent).await;
                        }
                    }
                });
            }
        }
    }
}

/// Resolves once the process starts draining.
async fn drain_flag(core: &Core) {
    while !core.shared.draining.load(Ordering::SeqCst) {
        monoio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn read_limits(core: &Core) -> ReadLimits {
    let l = &core.shared.config.limits;
    ReadLimits::from_config(l, l.body_bytes_max)
}

/// Answer a refusal made before the request reached the gateway (framing, limits, unknown path).
async fn refuse_http<S: ByteStream>(
    core: &Core,
    conn: &mut Conn<S>,
    reason: DenyReason,
    close: bool,
) -> bool {
    core.metrics.deny(reason);
    let body = crate::gateway_refusal_body(reason);
    let resp = Response::new(reason.http_status()).header("content-type", "application/json");
    conn.write(resp.full(&body, close)).await.is_ok() && !close
}

/// Counts an open agent connection for its lifetime (the per-core bound and the gauge).
struct OpenConnection<'a>(&'a Core);

impl<'a> OpenConnection<'a> {
    fn new(core: &'a Core) -> Self {
        core.connections.set(core.connections.get() + 1);
        core.metrics
            .shared
            .counters
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        OpenConnection(core)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections.set(self.0.connections.get() - 1);
        self.0
            .metrics
            .shared
            .counters
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_conn<S: ByteStream>(
    core: Rc<Core>,
    stream: S,
    peer: SocketAddr,
    secure: bool,
    cert_agent: Option<std::sync::Arc<str>>,
) {
    let _open = OpenConnection::new(&core);
    let limits = read_limits(&core);
    let mut conn = Conn::new(stream);
    loop {
        let mut head = match conn.read_head(&limits).await {
            Ok(h) => h,
            Err(ReadError::Closed) | Err(ReadError::Io(_)) => break,
            Err(ReadError::Refused(reason)) => {
                refuse_http(&core, &mut conn, reason, true).await;
                break;
            }
            Err(ReadError::Malformed) => {
                refuse_http(&core, &mut conn, DenyReason::MalformedHttp, true).await;
                break;
            }
        };
        head.peer = Some(peer);
        head.secure = secure;
        head.cert_agent.clone_from(&cert_agent);
        let t0 = Instant::now();
        core.in_flight.set(core.in_flight.get() + 1);
        let keep = serve_request(&core, &mut conn, &head, &limits).await;
        core.in_flight.set(core.in_flight.get() - 1);
        core.metrics.record_request(t0.elapsed());
        if !keep || head.close || core.shared.draining.load(Ordering::SeqCst) {
            break;
        }
    }
}

async fn serve_request<S: ByteStream>(
    core: &Core,
    conn: &mut Conn<S>,
    head: &crate::http::RequestHead,
    limits: &ReadLimits,
) -> bool {
    let body = match conn.read_body(head, limits).await {
        Ok(b) => b,
        Err(ReadError::Refused(reason)) => return refuse_http(core, conn, reason, true).await,
        Err(ReadError::Malformed) => {
            return refuse_http(core, conn, DenyReason::MalformedHttp, true).await
        }
        Err(_) => return false,
    };
    core.route(conn, head, body).await
}
