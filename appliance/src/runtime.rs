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
    monoio::spawn(idle_poll(core.clone()));
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

/// Keeps a core polling its driver for `idle_poll` after each request starts or ends, instead of sleeping
/// in the kernel as soon as it has nothing to run.
///
/// A sleeping core pays a wakeup (an IPI and a context switch; tens of microseconds on a VM) each time
/// data arrives, and a proxied call arrives twice: the agent's request and the upstream's response. At low
/// concurrency those two wakeups are most of the latency a proxy adds. Polling for a short window after
/// activity removes them, the way Seastar's idle poll and glommio's `spin_before_park` do; a core with no
/// traffic still sleeps, so it costs CPU only while requests are coming. Between polls the thread offers
/// its CPU to the scheduler (`sched_yield`), so a process sharing the core is not starved by it.
pub struct IdlePoll {
    window: Duration,
    touched: std::cell::Cell<bool>,
    parked: std::cell::Cell<Option<std::task::Waker>>,
}

impl std::fmt::Debug for IdlePoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdlePoll")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl IdlePoll {
    pub fn new(window: Duration) -> Self {
        IdlePoll {
            window,
            touched: std::cell::Cell::new(false),
            parked: std::cell::Cell::new(None),
        }
    }

    /// Something happened on this core: poll for another window. No clock read here; the poller reads it.
    pub fn touch(&self) {
        if self.window.is_zero() {
            return;
        }
        self.touched.set(true);
        if let Some(w) = self.parked.take() {
            w.wake();
        }
    }
}

async fn idle_poll(core: Rc<Core>) {
    run_idle_poll(&core.idle_poll).await
}

/// How often a polling core lets its runtime park for no time at all. monoio fires timers only when it
/// parks, so a core that polled without pause under steady traffic would never time out a slow client or
/// a slow upstream; the timer wheel counts in milliseconds, so this costs timers no precision.
const TIMER_TURN: Duration = Duration::from_millis(1);

async fn run_idle_poll(poll: &IdlePoll) {
    if poll.window.is_zero() {
        return;
    }
    // A task that wakes itself while running goes to the front of monoio's run queue (`yield_now`), so it
    // would run again before the tasks its own polling woke. The relay wakes it from outside instead,
    // which queues it behind them.
    let relay = Rc::new(Relay::default());
    let _relay = monoio::spawn(relay.clone().run());
    loop {
        // Asleep until a request starts; the driver parks as usual meanwhile.
        std::future::poll_fn(|cx| {
            if poll.touched.replace(false) {
                std::task::Poll::Ready(())
            } else {
                poll.parked.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            }
        })
        .await;
        let mut now = Instant::now();
        let mut until = now + poll.window;
        let mut turn = now + TIMER_TURN;
        loop {
            // Being runnable keeps the runtime from parking: each round it submits and reaps without
            // waiting, then runs whatever completed, then this again.
            relay.pass().await;
            now = Instant::now();
            if now >= turn {
                // A timer already due: the runtime parks with a zero timeout, fires what is due, and
                // wakes this at once.
                let due = now.checked_sub(TIMER_TURN).unwrap_or(now);
                monoio::time::sleep_until(monoio::time::Instant::from_std(due)).await;
                turn = Instant::now() + TIMER_TURN;
            }
            if poll.touched.replace(false) {
                until = now + poll.window;
            } else if now >= until {
                break;
            }
            std::thread::yield_now();
        }
    }
}

/// Wakes the idle poller from another task, so that it is queued behind the tasks already runnable.
#[derive(Default)]
struct Relay {
    /// The poller, waiting to be woken.
    poller: std::cell::Cell<Option<std::task::Waker>>,
    /// The relay task, waiting for a poller to wake.
    relay: std::cell::Cell<Option<std::task::Waker>>,
}

impl Relay {
    /// Pending until the relay task has run once: every task queued before it has run too.
    async fn pass(&self) {
        let mut passed = false;
        std::future::poll_fn(|cx| {
            if passed {
                return std::task::Poll::Ready(());
            }
            passed = true;
            self.poller.set(Some(cx.waker().clone()));
            if let Some(r) = self.relay.take() {
                r.wake();
            }
            std::task::Poll::Pending
        })
        .await
    }

    async fn run(self: Rc<Self>) {
        std::future::poll_fn(|cx| {
            if let Some(p) = self.poller.take() {
                p.wake();
            }
            self.relay.set(Some(cx.waker().clone()));
            std::task::Poll::<()>::Pending
        })
        .await
    }
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
        core.request_started();
        let keep = serve_request(&core, &mut conn, &head, &limits).await;
        core.request_finished();
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

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

    impl IdlePoll {
        fn is_polling(&self) -> bool {
            let parked = self.parked.take();
            let polling = parked.is_none();
            self.parked.set(parked);
            polling
        }
    }

    /// While a core polls, the connection tasks its polling wakes still run, and its timers still fire:
    /// either failing would stall the runtime until the window ended (here an hour), so the thread
    /// running it would not answer.
    async fn woken_tasks_and_timers_run_while_polling() {
        let poll = Rc::new(IdlePoll::new(Duration::from_secs(3600)));
        let p = poll.clone();
        monoio::spawn(async move { run_idle_poll(&p).await });
        poll.touch();
        monoio::time::sleep(Duration::from_millis(5)).await;
        assert!(poll.is_polling());

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = monoio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let (n, buf) = s.read(vec![0u8; 4]).await;
            assert_eq!(n.unwrap(), 4);
            let (w, _) = s.write_all(buf).await;
            w.unwrap();
        });
        let mut c = monoio::net::TcpStream::connect(addr).await.unwrap();
        for _ in 0..3 {
            poll.touch();
            monoio::time::sleep(Duration::from_millis(2)).await;
        }
        let (w, _) = c.write_all(b"ping".to_vec()).await;
        w.unwrap();
        let (n, buf) = c.read(vec![0u8; 4]).await;
        assert_eq!((n.unwrap(), &buf[..]), (4, &b"ping"[..]));
        echo.await;
        assert!(
            poll.is_polling(),
            "the poller stopped before its window ended"
        );
    }

    /// The poller's pass lets every task queued before it run first: a self-wake would put the poller at
    /// the front of the queue, ahead of the connection tasks its own polling just woke.
    async fn relay_pass_comes_after_queued_tasks() {
        let relay = Rc::new(Relay::default());
        let _relay = monoio::spawn(relay.clone().run());
        let ran = Rc::new(std::cell::Cell::new(0));
        for i in 1..=5 {
            let r = ran.clone();
            let _queued = monoio::spawn(async move { r.set(r.get() + 1) });
            relay.pass().await;
            assert_eq!(
                ran.get(),
                i,
                "pass returned before a task queued ahead of it ran"
            );
        }
    }

    #[test]
    fn relay_pass_queues_behind_runnable_tasks() {
        on_thread(|| {
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .build()
                .unwrap()
                // In a task of its own: the runtime polls its main future outside the run queue.
                .block_on(async { monoio::spawn(relay_pass_comes_after_queued_tasks()).await })
        });
    }

    fn on_thread(run: fn()) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            run();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the runtime stalled while its idle poll was on");
    }

    #[test]
    fn idle_poll_on_epoll_runs_io_and_timers() {
        on_thread(|| {
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .unwrap()
                .block_on(woken_tasks_and_timers_run_while_polling())
        });
    }

    #[test]
    fn idle_poll_on_io_uring_runs_io_and_timers() {
        on_thread(|| {
            monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()
                .unwrap()
                .block_on(woken_tasks_and_timers_run_while_polling())
        });
    }

    #[test]
    fn idle_poll_off_never_polls() {
        on_thread(|| {
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .unwrap()
                .block_on(async {
                    let poll = Rc::new(IdlePoll::new(Duration::ZERO));
                    let p = poll.clone();
                    let done = monoio::spawn(async move { run_idle_poll(&p).await });
                    poll.touch();
                    done.await;
                    assert!(!poll.touched.get());
                })
        });
    }
}
