//! Admin and health listener (loopback by default): `/healthz`, `/readyz`, `/metrics`, and the control
//! plane's admin API under `/admin/` (see `control`).
//!
//! Runs on its own thread and runtime so that a scrape or an approval never competes with a core's
//! requests; it reads the cores' published metrics and the shared flags, and owns the registry. The
//! control plane's sync listener (`listen.sync`, HTTPS) runs here too: data planes' long polls are
//! idle connections, and answering one is a read of the registry.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use monoio::net::TcpListener;

use crate::control::ControlPlane;
use crate::gateway::Shared;
use crate::http::{Conn, Native, Polled, ReadError, ReadLimits, Response};
use crate::metrics::{self, CoreShared};
use crate::pinwatch;
use crate::probe::ProbeLimits;
use crate::upstream::ClientLimits;

pub type CoreList = Arc<OnceLock<Vec<Arc<CoreShared>>>>;

pub fn run(
    addr: SocketAddr,
    shared: Arc<Shared>,
    cores: CoreList,
    n_cores: usize,
    control: Arc<ControlPlane>,
    sync_tls: Option<Arc<rustls::ServerConfig>>,
    bound: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
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
        let _ = bound.send(Ok(()));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            let cores = cores.clone();
            let control = control.clone();
            monoio::spawn(async move {
                let mut conn = Conn::new(Native(stream));
                let l = &shared.config.limits;
                let limits = ReadLimits {
                    header_bytes_max: l.header_bytes_max,
                    headers_count_max: l.headers_count_max,
                    body_bytes_max: l.admin_body_bytes_max,
                    idle_timeout: l.idle_timeout.0,
                    header_read_timeout: l.header_read_timeout.0,
                    request_timeout: l.request_timeout.0,
                };
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
                                .write(
                                    Response::new(r.http_status()).full(r.code().as_bytes(), true),
                                )
                                .await;
                            return;
                        }
                        Err(_) => return,
                    };
                    let path = head.path.split('?').next().unwrap_or("");
                    let resp = if path.starts_with("/admin/v1/sessions") {
                        let a = if control.authorized(head.header_str("authorization")) {
                            let actor = head
                                .header_str("x-portcullis-actor")
                                .filter(|a| {
                                    !a.is_empty() && a.len() <= 128 && !a.chars().any(char::is_control)
                                })
                                .unwrap_or("admin");
                            crate::sessions::handle(&shared, &head.method, path, actor, &body).await
                        } else {
                            crate::control::Answer {
                                status: 401,
                                body: br#"{"error":{"code":"unauthenticated","message":"admin API calls need the admin token"}}"#.to_vec(),
                            }
                        };
                        Response::new(a.status)
                            .header("content-type", "application/json")
                            .header("cache-control", "no-store")
                            .full(&a.body, false)
                    } else if path.starts_with("/admin/") {
                        let a = control
                            .handle(
                                &head.method,
                                path,
                                head.header_str("authorization"),
                                head.header_str("x-portcullis-actor"),
                                &body,
                            )
                            .await;
                        let mut r = Response::new(a.status)
                            .header("content-type", "application/json")
                            .header("cache-control", "no-store");
                        if a.status == 401 {
                            r = r.header("www-authenticate", "Bearer realm=\"portcullis-admin\"");
                        }
                        r.full(&a.body, false)
                    } else {
                        route(&head.method, path, &shared, &cores, n_cores, &control)
                    };
                    if conn.write(resp).await.is_err() || head.close {
                        return;
                    }
                }
            });
        }
    });
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
            let io = monoio_compat::StreamWrapper::new(stream);
            let Ok(Ok(s)) =
                monoio::time::timeout(l.header_read_timeout.0, acceptor.accept(io)).await
            else {
                return;
            };
            let mut conn = Conn::new(Polled(s));
            let limits = ReadLimits {
                header_bytes_max: l.header_bytes_max,
                headers_count_max: l.headers_count_max,
                body_bytes_max: 0,
                idle_timeout: l.idle_timeout.0,
                header_read_timeout: l.header_read_timeout.0,
                request_timeout: l.request_timeout.0,
            };
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
) -> Vec<u8> {
    if method != "GET" {
        return Response::new(405).header("allow", "GET").full(b"", false);
    }
    match path {
        "/healthz" => Response::new(200)
            .header("content-type", "text/plain")
            .full(b"ok\n", false),
        "/readyz" => {
            let ready = shared.ready_cores.load(Ordering::SeqCst) == n_cores
                && !shared.draining.load(Ordering::SeqCst);
            if ready {
                Response::new(200)
                    .header("content-type", "text/plain")
                    .full(b"ready\n", false)
            } else {
                Response::new(503)
                    .header("content-type", "text/plain")
                    .full(b"not ready\n", false)
            }
        }
        "/metrics" => {
            let list = cores.get().map(Vec::as_slice).unwrap_or(&[]);
            let mut text = metrics::render(list, shared.started.elapsed());
            if let Some(f) = control.follow_status() {
                text.push_str(&f.metrics());
            }
            text.push_str(&shared.identity.metrics());
            text.push_str(&shared.broker.metrics());
            text.push_str(&shared.audit.metrics());
            if shared.config.listen.h3 {
                text.push_str(&shared.h3.metrics());
            }
            Response::new(200)
                .header("content-type", "text/plain; version=0.0.4")
                .full(text.as_bytes(), false)
        }
        _ => Response::new(404).full(b"not found\n", false),
    }
}
