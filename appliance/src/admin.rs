//! Admin and health listener (loopback by default): `/healthz`, `/readyz`, `/metrics`, the control
//! plane's admin API under `/admin/` (see `control`, `sessions`, `ops`), and the operators' console at
//! `/console/` (see `console`).
//!
//! Runs on its own thread and runtime so that a scrape or an approval never competes with a core's
//! requests; it reads the cores' published metrics and the shared flags, and owns the registry. The
//! control plane's sync listener (`listen.sync`, HTTPS) runs here too: data planes' long polls are
//! idle connections, and answering one is a read of the registry.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use monoio::net::TcpListener;

use crate::console::{Auth, Console};
use crate::control::ControlPlane;
use crate::gateway::Shared;
use crate::http::{
    encode_chunk, ByteStream, Conn, Native, Polled, ReadError, ReadLimits, Response, LAST_CHUNK,
};
use crate::metrics::{self, CoreShared};
use crate::ops::{Ops, Out};
use crate::pinwatch;
use crate::probe::ProbeLimits;
use crate::upstream::ClientLimits;

pub type CoreList = Arc<OnceLock<Vec<Arc<CoreShared>>>>;

/// What the admin thread's connections share.
struct State {
    console: Console,
    ops: Ops,
}

/// The TLS configurations of the admin thread's listeners.
#[derive(Debug, Default)]
pub struct Listeners {
    /// `listen.sync`, for data planes (the MCP listener's certificate).
    pub sync: Option<Arc<rustls::ServerConfig>>,
    /// The admin listener itself with `listen.admin_tls` (`None`: plain HTTP).
    pub admin: Option<Arc<rustls::ServerConfig>>,
}

pub fn run(
    addr: SocketAddr,
    shared: Arc<Shared>,
    cores: CoreList,
    n_cores: usize,
    control: Arc<ControlPlane>,
    tls: Listeners,
    bound: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    // The admin thread follows the cores' `driver` setting, so `driver: epoll` takes io_uring out of
    // the whole process (valgrind, for one, does not release its lock while a thread waits in
    // io_uring_enter, which stalls every other thread).
    let main = serve(
        addr,
        shared.clone(),
        cores,
        n_cores,
        control,
        tls,
        bound.clone(),
    );
    let built = match shared.config.driver {
        crate::config::Driver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(main)),
        _ => monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(main)),
    };
    if let Err(e) = built {
        let _ = bound.send(Err(e));
    }
}

/// The admin thread's listeners and tasks, on whichever runtime `run` built.
async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    cores: CoreList,
    n_cores: usize,
    control: Arc<ControlPlane>,
    tls: Listeners,
    bound: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    let Listeners {
        sync: sync_tls,
        admin: admin_tls,
    } = tls;
    if shared.served.managed() {
        let l = &shared.config.limits;
        monoio::spawn(pinwatch::run(
            shared.clone(),
            ClientLimits::from_config(l),
            ProbeLimits::from_config(l),
        ));
    }
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    if let (Some(sync_addr), Some(tls)) = (shared.config.listen.sync, sync_tls) {
        match TcpListener::bind(sync_addr) {
            Ok(l) => {
                monoio::spawn(serve_sync(l, tls, shared.clone(), control.clone()));
            }
            Err(e) => {
                let _ = bound.send(Err(std::io::Error::new(
                    e.kind(),
                    format!("sync listener {sync_addr}: {e}"),
                )));
                return;
            }
        }
    }
    let checks = Arc::new(crate::health::Checks::default());
    let live = Arc::new(crate::traffic::Live::default());
    monoio::spawn(crate::health::run(shared.clone(), checks.clone()));
    monoio::spawn(crate::traffic::run(
        cores.clone(),
        live.clone(),
        shared.config.metrics.clone(),
    ));
    let state = std::rc::Rc::new(State {
        console: Console::new(&shared.config.console),
        ops: Ops {
            shared: shared.clone(),
            cores: cores.clone(),
            n_cores,
            control: control.clone(),
            checks,
            live,
        },
    });
    let _ = bound.send(Ok(()));
    let acceptor = admin_tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let cores = cores.clone();
        let control = control.clone();
        let ops = state.clone();
        let acceptor = acceptor.clone();
        monoio::spawn(async move {
            let Some(acceptor) = acceptor else {
                let conn = Conn::new(Native(stream));
                return serve_conn(conn, &shared, &cores, n_cores, &control, &ops).await;
            };
            // A handshake that fails (no client certificate, one the CAs do not verify, plain HTTP)
            // ends the connection before a byte of HTTP is read.
            let timeout = shared.config.limits.header_read_timeout.0;
            let Some(s) = crate::tls::accept(&acceptor, stream, timeout).await else {
                return;
            };
            let conn = Conn::new(Polled(s));
            serve_conn(conn, &shared, &cores, n_cores, &control, &ops).await;
        });
    }
}

/// One admin connection, plain or TLS: requests until it closes or asks to.
async fn serve_conn<S: ByteStream>(
    mut conn: Conn<S>,
    shared: &Arc<Shared>,
    cores: &CoreList,
    n_cores: usize,
    control: &Arc<ControlPlane>,
    ops: &std::rc::Rc<State>,
) {
    let l = &shared.config.limits;
    let limits = ReadLimits::from_config(l, l.admin_body_bytes_max);
    loop {
        let read = async {
            let head = conn.read_head(&limits).await?;
            let body = conn.read_body(&head, &limits).await?;
            Ok::<_, ReadError>((head, body))
        }
        .await;
        let (head, body) = match read {
            Ok(hb) => hb,
            Err(ReadError::Refused(r)) => {
                let _ = conn
                    .write(Response::new(r.http_status()).full(r.code().as_bytes(), true))
                    .await;
                return;
            }
            Err(_) => return,
        };
        let (path, query) = head.path.split_once('?').unwrap_or((&head.path, ""));
        let resp = if path == "/console" || path.starts_with("/console/") {
            if !shared.config.console.enabled {
                Response::new(404).full(b"the console is off (console.enabled)\n", false)
            } else {
                ops.console.serve(control, &head, path, &body)
            }
        } else if path.starts_with("/admin/") {
            match admin_api(ops, control, &head, path, query, &body).await {
                Out::Answer(a) => json_response(&a),
                Out::Stream {
                    content_type,
                    filename,
                    chunks,
                } => {
                    // A streamed export ends its connection (chunked, then close).
                    let head_bytes = Response::new(200)
                        .header("content-type", content_type)
                        .header("cache-control", "no-store")
                        .header("x-content-type-options", "nosniff")
                        .header(
                            "content-disposition",
                            format!("attachment; filename=\"{filename}\""),
                        )
                        .streaming_head(true);
                    if conn.write(head_bytes).await.is_err() {
                        return;
                    }
                    while let Ok(chunk) = chunks.recv_async().await {
                        let mut framed = Vec::with_capacity(chunk.len() + 16);
                        encode_chunk(&chunk, &mut framed);
                        if conn.write(framed).await.is_err() {
                            return;
                        }
                    }
                    let _ = conn.write(LAST_CHUNK.to_vec()).await;
                    return;
                }
            }
        } else {
            route(&head.method, path, shared, cores, n_cores, control, ops)
        };
        if conn.write(resp).await.is_err() || head.close {
            return;
        }
    }
}

/// One admin API request: authenticated by the bearer token or the console's login, then served by
/// the module that owns its resource.
async fn admin_api(
    ops: &State,
    control: &ControlPlane,
    head: &crate::http::RequestHead,
    path: &str,
    query: &str,
    body: &[u8],
) -> Out {
    if path == "/admin/openapi.json" {
        return Out::Answer(control.handle(&head.method, path, false, None, body).await);
    }
    let actor = match ops.console.authenticate(control, head) {
        Auth::Token => head
            .header_str("x-portcullis-actor")
            .filter(|a| !a.is_empty() && a.len() <= 128 && !a.chars().any(char::is_control))
            .unwrap_or("admin"),
        Auth::Console => crate::console::ACTOR,
        Auth::Forged(why) => {
            crate::warn!("admin request refused: {why}");
            return Out::Answer(crate::control::Answer {
                status: 403,
                body: crate::console::forged(why).to_string().into_bytes(),
            });
        }
        Auth::None => {
            return Out::Answer(control.handle(&head.method, path, false, None, body).await)
        }
    };
    if path.starts_with("/admin/v1/sessions") {
        Out::Answer(
            crate::sessions::handle(&ops.ops.shared, &head.method, path, query, actor, body).await,
        )
    } else if Ops::serves(path) {
        ops.ops.handle(&head.method, path, query).await
    } else {
        Out::Answer(
            control
                .handle(&head.method, path, true, Some(actor), body)
                .await,
        )
    }
}

fn json_response(a: &crate::control::Answer) -> Vec<u8> {
    let mut r = Response::new(a.status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff");
    if a.status == 401 {
        r = r.header("www-authenticate", "Bearer realm=\"portcullis-admin\"");
    }
    r.full(&a.body, false)
}

/// The sync listener: TLS (http/1.1 only), one long poll per request (see `sync`).
async fn serve_sync(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    control: Arc<ControlPlane>,
) {
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    // Long polls are held open: bound them like a core bounds its agent connections.
    let open = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let max = shared.config.limits.connections_per_core_max;
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            monoio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        if open.get() >= max {
            drop(stream);
            continue;
        }
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let control = control.clone();
        let open = open.clone();
        open.set(open.get() + 1);
        monoio::spawn(async move {
            struct Release(std::rc::Rc<std::cell::Cell<usize>>);
            impl Drop for Release {
                fn drop(&mut self) {
                    self.0.set(self.0.get() - 1);
                }
            }
            let _release = Release(open);
            let l = &shared.config.limits;
            let Some(s) = crate::tls::accept(&acceptor, stream, l.header_read_timeout.0).await
            else {
                return;
            };
            let mut conn = Conn::new(Polled(s));
            let limits = ReadLimits::from_config(l, 0);
            loop {
                let head = match conn.read_head(&limits).await {
                    Ok(h) => h,
                    Err(ReadError::Refused(r)) => {
                        let _ = conn
                            .write(Response::new(r.http_status()).full(r.code().as_bytes(), true))
                            .await;
                        return;
                    }
                    Err(_) => return,
                };
                if head.content_length.unwrap_or(0) > 0 || head.chunked {
                    let _ = conn
                        .write(Response::new(413).full(b"sync requests have no body\n", true))
                        .await;
                    return;
                }
                let a = crate::sync::answer(
                    &control,
                    crate::sync::SyncRequest {
                        method: &head.method,
                        target: &head.path,
                        authorization: head.header_str("authorization"),
                        node: head.header_str(crate::sync::NODE_HEADER),
                        refused_code: head.header_str(crate::sync::REFUSED_HEADER),
                        peer: peer.to_string(),
                    },
                )
                .await;
                let mut r = Response::new(a.status).header("cache-control", "no-store");
                for (k, v) in a.headers {
                    r = r.header(k, v);
                }
                if a.status == 401 {
                    r = r.header("www-authenticate", "Bearer realm=\"portcullis-sync\"");
                }
                if conn.write(r.full(&a.body, head.close)).await.is_err() || head.close {
                    return;
                }
            }
        });
    }
}

fn route(
    method: &str,
    path: &str,
    shared: &Shared,
    cores: &CoreList,
    n_cores: usize,
    control: &ControlPlane,
    state: &State,
) -> Vec<u8> {
    if method != "GET" {
        return Response::new(405).header("allow", "GET").full(b"", false);
    }
    match path {
        "/healthz" => Response::new(200)
            .header("content-type", "text/plain")
            .full(b"ok\n", false),
        "/readyz" => {
            let (ready, text) =
                crate::health::readiness_text(&crate::health::readiness(shared, n_cores));
            Response::new(if ready { 200 } else { 503 })
                .header("content-type", "text/plain")
                .header("cache-control", "no-store")
                .full(text.as_bytes(), false)
        }
        "/metrics" => {
            let list = cores.get().map(Vec::as_slice).unwrap_or(&[]);
            let mut text = metrics::render(list, shared.started.elapsed(), &shared.config.metrics);
            if let Some(f) = control.follow_status() {
                text.push_str(&f.metrics());
            }
            text.push_str(&shared.identity.metrics());
            text.push_str(&shared.broker.metrics());
            text.push_str(&shared.audit.metrics());
            if shared.config.listen.h3 {
                text.push_str(&shared.h3.metrics());
            }
            text.push_str(&state.ops.checks.metrics());
            let sv = shared.served.current();
            text.push_str(&format!(
                "# HELP portcullis_snapshot_version The active snapshot's version (0: none; static upstreams too).\n# TYPE portcullis_snapshot_version gauge\nportcullis_snapshot_version {}\n",
                sv.version.unwrap_or(0)
            ));
            Response::new(200)
                .header("content-type", "text/plain; version=0.0.4")
                .full(text.as_bytes(), false)
        }
        _ => Response::new(404).full(b"not found\n", false),
    }
}
