//! HTTP/2 for agent connections that negotiate `h2` by ALPN: each stream becomes one request through the
//! same gateway path as HTTP/1.1.
//!
//! The `h2` crate drives the protocol over the TLS stream (tokio-rustls over `monoio-compat`'s adapter of
//! the monoio socket; that adapter is only ever asked to move raw TCP bytes, where reads and writes are
//! independent). The connection task accepts streams and keeps the connection's I/O moving; each
//! stream is handled by a task of its own on the same core. Bounds: concurrent streams per connection, header
//! list size, body size, the idle timeout when no stream is open, and send flow control (a slow reader is
//! never buffered for without bound: data waits for window capacity).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use portcullis_pipeline::DenyReason;

use crate::gateway::Core;
use crate::http::{Reply, RequestHead, Response};

/// Serve one HTTP/2 connection until it closes, idles out, or the core drains.
pub async fn serve<S>(
    core: Rc<Core>,
    io: S,
    peer: Option<std::net::SocketAddr>,
    cert_agent: Option<std::sync::Arc<str>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let l = &core.shared.config.limits;
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(l.h2_streams_per_connection_max)
        .max_header_list_size(l.header_bytes_max as u32)
        .max_send_buffer_size(64 << 10);
    let mut conn =
        match monoio::time::timeout(l.header_read_timeout.0, builder.handshake::<_, Bytes>(io))
            .await
        {
            Ok(Ok(c)) => c,
            _ => return,
        };
    let open = Rc::new(Cell::new(0usize));
    let mut shutting_down = false;
    loop {
        let wait = if open.get() > 0 {
            Duration::from_secs(1)
        } else {
            l.idle_timeout.0
        };
        match monoio::time::timeout(wait, conn.accept()).await {
            Ok(Some(Ok((req, respond)))) => {
                open.set(open.get() + 1);
                let (core, open, cert_agent) = (core.clone(), open.clone(), cert_agent.clone());
                monoio::spawn(async move {
                    handle_stream(&core, req, respond, peer, cert_agent).await;
                    open.set(open.get() - 1);
                });
            }
            Ok(Some(Err(_))) | Ok(None) => return,
            // Idle with no open stream: say goodbye. With streams open, keep driving the connection.
            Err(_) if open.get() == 0 => {
                if shutting_down {
                    return;
                }
                conn.graceful_shutdown();
                shutting_down = true;
            }
            Err(_) => {}
        }
        if !shutting_down && core.shared.draining.load(Ordering::SeqCst) {
            conn.graceful_shutdown();
            shutting_down = true;
        }
    }
}

async fn handle_stream(
    core: &Core,
    req: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
    peer: Option<std::net::SocketAddr>,
    cert_agent: Option<std::sync::Arc<str>>,
) {
    let t0 = Instant::now();
    core.request_started();
    let (parts, mut body) = req.into_parts();
    let head = RequestHead::from_parts(&parts, peer, "h2", cert_agent);
    let mut reply = H2Reply {
        respond,
        stream: None,
    };
    let l = &core.shared.config.limits;
    match read_body(&mut body, l.body_bytes_max, l.request_timeout.0).await {
        Ok(bytes) => {
            core.route(&mut reply, &head, bytes).await;
        }
        Err(reason) => refuse(core, &mut reply, reason).await,
    }
    core.request_finished();
    core.metrics.record_request(t0.elapsed());
}

async fn refuse(core: &Core, reply: &mut H2Reply, reason: DenyReason) {
    core.metrics.deny(reason);
    let body = crate::gateway_refusal_body(reason);
    let resp = Response::new(reason.http_status()).header("content-type", "application/json");
    reply.full(resp, &body, false).await;
}

async fn read_body(
    body: &mut RecvStream,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, DenyReason> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = match monoio::time::timeout(left, body.data()).await {
            Err(_) => return Err(DenyReason::RequestTimeout),
            Ok(None) => return Ok(out),
            Ok(Some(Err(_))) => return Err(DenyReason::InvalidRequest),
            Ok(Some(Ok(b))) => b,
        };
        let _ = body.flow_control().release_capacity(next.len());
        if out.len() + next.len() > max {
            return Err(DenyReason::PayloadTooLarge);
        }
        out.extend_from_slice(&next);
    }
}

struct H2Reply {
    respond: SendResponse<Bytes>,
    stream: Option<SendStream<Bytes>>,
}

pub(crate) fn to_http(
    resp: &Response,
    content_length: Option<usize>,
) -> Option<http::Response<()>> {
    let mut b = http::Response::builder().status(resp.status);
    for (n, v) in &resp.headers {
        b = b.header(*n, v.as_str());
    }
    if let Some(len) = content_length {
        b = b.header("content-length", len);
    }
    b.body(()).ok()
}

/// Send `data`, waiting for flow-control window as needed.
async fn send_all(stream: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> bool {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(0)) => continue,
            Some(Ok(n)) => {
                let piece = data.split_to(n.min(data.len()));
                if stream.send_data(piece, false).is_err() {
                    return false;
                }
            }
            _ => return false,
        }
    }
    !end || stream.send_data(Bytes::new(), true).is_ok()
}

impl Reply for H2Reply {
    async fn full(&mut self, resp: Response, body: &[u8], _close: bool) -> bool {
        let Some(r) = to_http(&resp, Some(body.len())) else {
            return false;
        };
        let Ok(mut stream) = self.respond.send_response(r, body.is_empty()) else {
            return false;
        };
        body.is_empty() || send_all(&mut stream, Bytes::copy_from_slice(body), true).await
    }

    async fn stream_start(&mut self, resp: Response) -> bool {
        let Some(r) = to_http(&resp, None) else {
            return false;
        };
        match self.respond.send_response(r, false) {
            Ok(s) => {
                self.stream = Some(s);
                true
            }
            Err(_) => false,
        }
    }

    async fn stream_data(&mut self, data: Vec<u8>) -> bool {
        match self.stream.as_mut() {
            Some(s) => send_all(s, Bytes::from(data), false).await,
            None => false,
        }
    }

    async fn stream_end(&mut self) -> bool {
        match self.stream.as_mut() {
            Some(s) => s.send_data(Bytes::new(), true).is_ok(),
            None => false,
        }
    }
}
