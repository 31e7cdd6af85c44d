//! HTTP/1.1 client for upstream MCP servers, with a per-core pool of keep-alive connections.
//!
//! Each core owns its pool (`Rc`, no lock). A request on a pooled connection that dies before any response
//! byte is retried once on a fresh connection: the upstream closed an idle keep-alive connection, which is
//! routine, and the request never reached it. Response bodies are read by length, by chunks, or to close,
//! always under `upstream_response_timeout` per read and `upstream_body_bytes_max` in all.

use std::cell::RefCell;
use std::io;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use portcullis_pipeline::chunked::ChunkedDecoder;
use portcullis_pipeline::DenyReason;

use portcullis_pipeline::credential::{self, Inject, Secret};

use crate::config::UpstreamUrl;
use crate::http::{read_more, ByteStream, Native, ReadError};

#[derive(Debug)]
pub enum UpstreamError {
    Connect(io::Error),
    ConnectTimeout,
    Io(io::Error),
    Timeout,
    /// Not HTTP/1.1, bad framing, or a body past the bound.
    Protocol(&'static str),
    /// The credential to present cannot go on a request (`credential::apply`); nothing was sent.
    Credential(&'static str),
}

impl UpstreamError {
    pub fn reason(&self) -> DenyReason {
        match self {
            UpstreamError::Connect(_) | UpstreamError::ConnectTimeout | UpstreamError::Io(_) => {
                DenyReason::UpstreamUnavailable
            }
            UpstreamError::Timeout => DenyReason::UpstreamTimeout,
            UpstreamError::Protocol(_) => DenyReason::UpstreamProtocolError,
            UpstreamError::Credential(_) => DenyReason::CredentialUnavailable,
        }
    }
}

impl From<ReadError> for UpstreamError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Refused(DenyReason::RequestTimeout) => UpstreamError::Timeout,
            ReadError::Io(e) => UpstreamError::Io(e),
            _ => UpstreamError::Protocol("malformed response"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub body_bytes_max: usize,
    pub idle_per_upstream_max: usize,
}

impl ClientLimits {
    pub fn from_config(l: &crate::config::Limits) -> ClientLimits {
        ClientLimits {
            connect_timeout: l.upstream_connect_timeout.0,
            response_timeout: l.upstream_response_timeout.0,
            body_bytes_max: l.upstream_body_bytes_max,
            idle_per_upstream_max: l.upstream_idle_per_core_max,
        }
    }
}

/// The rustls client config for `https://` upstreams, set once at start from `upstream_tls`.
pub static TLS: std::sync::OnceLock<Result<std::sync::Arc<rustls::ClientConfig>, String>> =
    std::sync::OnceLock::new();

type TlsStream = tokio_rustls::client::TlsStream<monoio_compat::StreamWrapper<TcpStream>>;

/// A connection to an upstream: plain TCP on monoio's owned buffers, or TLS (tokio-rustls over
/// monoio-compat, as the TLS listener does).
enum UpStream {
    Plain(Native<TcpStream>),
    Tls(Box<crate::http::Polled<TlsStream>>),
}

impl std::fmt::Debug for UpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpStream::Plain(_) => "UpStream::Plain",
            UpStream::Tls(_) => "UpStream::Tls",
        })
    }
}

impl ByteStream for UpStream {
    async fn read_append(&mut self, buf: Vec<u8>, reserve: usize) -> (io::Result<usize>, Vec<u8>) {
        match self {
            UpStream::Plain(s) => s.read_append(buf, reserve).await,
            UpStream::Tls(s) => s.read_append(buf, reserve).await,
        }
    }
    async fn write_lent(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            UpStream::Plain(s) => s.write_lent(buf).await,
            UpStream::Tls(s) => s.write_lent(buf).await,
        }
    }
}

#[derive(Debug)]
pub struct UpstreamConn {
    stream: UpStream,
    buf: Vec<u8>,
}

/// One upstream's pooled connections on this core.
#[derive(Debug)]
pub struct Pool {
    idle: RefCell<Vec<Vec<UpstreamConn>>>,
    limits: ClientLimits,
}

#[derive(Debug)]
enum Framing {
    Length(usize),
    Chunked(ChunkedDecoder),
    UntilClose,
    Empty,
}

fn framing_done(f: &Framing) -> bool {
    match f {
        Framing::Length(n) => *n == 0,
        Framing::Chunked(d) => d.is_done(),
        Framing::UntilClose => false,
        Framing::Empty => true,
    }
}

/// A response whose body is still on the wire.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: crate::http::HeaderList,
    conn: Option<UpstreamConn>,
    framing: Framing,
    keep_alive: bool,
    upstream: usize,
    read_total: usize,
    /// Overrides `response_timeout` between reads (long-lived streams the agent holds open).
    read_timeout: Option<Duration>,
    /// The wire forms of the credential this request carried (`credential::wire_forms`), to scrub from
    /// what reaches the agent; empty when it carried none.
    pub presented: Vec<String>,
    /// The upstream's `Mcp-Session-Id` the request was sent on (2025-11-25), for resuming its stream.
    pub session_id: Option<String>,
    /// From sending the request to reading the response head (set by the gateway).
    pub elapsed: Duration,
}

impl UpstreamResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    pub fn is_event_stream(&self) -> bool {
        const SSE: &[u8] = b"text/event-stream";
        self.header("content-type").is_some_and(|v| {
            v.trim_start()
                .as_bytes()
                .get(..SSE.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(SSE))
        })
    }

    /// Wait up to `d` between reads of this response instead of `upstream_response_timeout`.
    pub fn set_read_timeout(&mut self, d: Duration) {
        self.read_timeout = Some(d);
    }

    pub fn is_json(&self) -> bool {
        self.header("content-type").is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        })
    }

    fn done(&self) -> bool {
        framing_done(&self.framing)
    }

    /// Next piece of the body; `None` at its end. Each read waits at most `response_timeout`.
    pub async fn next_chunk(&mut self, pool: &Pool) -> Result<Option<Vec<u8>>, UpstreamError> {
        // SSE streams are bounded per event by the parser, not in total: they may run for a long time.
        let streaming = self.is_event_stream();
        loop {
            if self.done() {
                self.release(pool);
                return Ok(None);
            }
            let Some(conn) = self.conn.as_mut() else {
                return Ok(None);
            };
            if !conn.buf.is_empty() {
                let out = match &mut self.framing {
                    Framing::Length(n) => {
                        let take = (*n).min(conn.buf.len());
                        *n -= take;
                        let rest = conn.buf.split_off(take);
                        std::mem::replace(&mut conn.buf, rest)
                    }
                    Framing::Chunked(d) => {
                        let mut out = Vec::new();
                        let used = d
                            .decode(&conn.buf, &mut out)
                            .map_err(|_| UpstreamError::Protocol("bad chunking"))?;
                        conn.buf.drain(..used);
                        out
                    }
                    Framing::UntilClose => std::mem::take(&mut conn.buf),
                    Framing::Empty => Vec::new(),
                };
                self.read_total += out.len();
                if self.read_total > pool.limits.body_bytes_max && !streaming {
                    return Err(UpstreamError::Protocol(
                        "response body exceeds upstream_body_bytes_max",
                    ));
                }
                if !out.is_empty() {
                    return Ok(Some(out));
                }
                if framing_done(&self.framing) {
                    continue;
                }
            }
            let deadline =
                Instant::now() + self.read_timeout.unwrap_or(pool.limits.response_timeout);
            let buf = std::mem::take(&mut conn.buf);
            let (res, buf) = read_more(&mut conn.stream, buf, 16 << 10, deadline).await;
            conn.buf = buf;
            match res {
                Ok(0) => {
                    self.conn = None;
                    return match self.framing {
                        Framing::UntilClose => Ok(None),
                        _ => Err(UpstreamError::Protocol("upstream closed mid-body")),
                    };
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Err(e.into());
                }
            }
        }
    }

    /// The whole body, bounded.
    pub async fn read_all(&mut self, pool: &Pool) -> Result<Vec<u8>, UpstreamError> {
        let mut body = Vec::new();
        while let Some(c) = self.next_chunk(pool).await? {
            body.extend_from_slice(&c);
            if body.len() > pool.limits.body_bytes_max {
                return Err(UpstreamError::Protocol(
                    "response body exceeds upstream_body_bytes_max",
                ));
            }
        }
        Ok(body)
    }

    fn release(&mut self, pool: &Pool) {
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && conn.buf.is_empty() {
                pool.put(self.upstream, conn);
            }
        }
    }
}

impl Pool {
    pub fn new(limits: ClientLimits) -> Self {
        Pool {
            idle: RefCell::new(Vec::new()),
            limits,
        }
    }

    fn put(&self, upstream: usize, conn: UpstreamConn) {
        let mut idle = self.idle.borrow_mut();
        // Slots are added as snapshots name new upstreams.
        if idle.len() <= upstream {
            idle.resize_with(upstream + 1, Vec::new);
        }
        if let Some(list) = idle.get_mut(upstream) {
            if list.len() < self.limits.idle_per_upstream_max {
                list.push(conn);
            }
        }
    }

    fn take(&self, upstream: usize) -> Option<UpstreamConn> {
        self.idle.borrow_mut().get_mut(upstream).and_then(Vec::pop)
    }

    async fn connect(&self, url: &UpstreamUrl) -> Result<UpstreamConn, UpstreamError> {
        let addr = (url.host.as_str(), url.port);
        let stream = match monoio::time::timeout(
            self.limits.connect_timeout,
            TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
            Err(_) => return Err(UpstreamError::ConnectTimeout),
        };
        // Small request/response exchanges: do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let stream = if url.secure {
            let config = match TLS.get() {
                Some(Ok(c)) => c.clone(),
                Some(Err(e)) => return Err(UpstreamError::Connect(io::Error::other(e.clone()))),
                None => {
                    return Err(UpstreamError::Connect(io::Error::other(
                        "no TLS configuration for https upstreams",
                    )))
                }
            };
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| UpstreamError::Connect(io::Error::other(e.to_string())))?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let io = monoio_compat::StreamWrapper::new(stream);
            match monoio::time::timeout(self.limits.connect_timeout, connector.connect(name, io))
                .await
            {
                Ok(Ok(s)) => UpStream::Tls(Box::new(crate::http::Polled(s))),
                // A handshake refused (untrusted or mismatched certificate) is the upstream
                // being unavailable to us, not a protocol error of the agent's.
                Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
                Err(_) => return Err(UpstreamError::ConnectTimeout),
            }
        } else {
            UpStream::Plain(Native(stream))
        };
        Ok(UpstreamConn {
            stream,
            buf: Vec::with_capacity(16 << 10),
        })
    }

    /// `send`, presenting `credential` as its injection says (after removing whatever the request
    /// carried under the same name). The response notes the credential's wire forms for scrubbing, and
    /// the header copies that held it are wiped once sent.
    pub async fn send_with_credential(
        &self,
        upstream: usize,
        url: &UpstreamUrl,
        method: &str,
        headers: &[(&str, String)],
        body: &[u8],
        credential: Option<(&Inject, &Secret)>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let Some((inject, secret)) = credential else {
            return self.send(upstream, url, method, headers, body).await;
        };
        let mut owned: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect();
        let mut url = url.clone();
        credential::apply(
            inject,
            secret.expose(),
            credential::Target {
                headers: &mut owned,
                path_and_query: &mut url.path,
            },
        )
        .map_err(UpstreamError::Credential)?;
        let mut borrowed: Vec<(&str, String)> =
            owned.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
        let r = self
            .send(upstream, &url, method, &borrowed, body)
            .await
            .map(|mut resp| {
                resp.presented = credential::wire_forms(inject, secret.expose());
                resp
            });
        // The copies holding the secret go now rather than whenever the allocator reuses them.
        for (_, v) in borrowed.iter_mut() {
            zeroize::Zeroize::zeroize(v);
        }
        drop(borrowed);
        for (_, v) in owned.iter_mut() {
            zeroize::Zeroize::zeroize(v);
        }
        r
    }

    /// Send one request and read the response head.
    pub async fn send(
        &self,
        upstream: usize,
        url: &UpstreamUrl,
        method: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<UpstreamResponse, UpstreamError> {
        use std::io::Write as _;
        let mut req = Vec::with_capacity(256 + body.len());
        let _ = write!(
            req,
            "{method} {} HTTP/1.1\r\nhost: {}:{}\r\n",
            url.path, url.host, url.port
        );
        for (n, v) in headers {
            req.extend_from_slice(n.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(v.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        if method != "GET" || !body.is_empty() {
            let _ = write!(req, "content-length: {}\r\n", body.len());
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);

        if let Some(conn) = self.take(upstream) {
            let (sent, back) = self.exchange(upstream, conn, req).await;
            match sent {
                Ok(r) => return Ok(r),
                // Nothing came back on a reused connection: it was closed while idle. Retry on a fresh one.
                Err((UpstreamError::Io(_), false)) | Err((UpstreamError::Protocol(_), false)) => {}
                Err((e, _)) => return Err(e),
            }
            req = back;
        }
        let conn = self.connect(url).await?;
        self.exchange(upstream, conn, req)
            .await
            .0
            .map_err(|(e, _)| e)
    }

    /// Write `req` and read the response head. An error comes with whether any response byte had
    /// arrived; the request comes back either way (the socket lends it to the kernel and returns it), so a
    /// retry needs no copy of it.
    async fn exchange(
        &self,
        upstream: usize,
        mut conn: UpstreamConn,
        req: Vec<u8>,
    ) -> (Result<UpstreamResponse, (UpstreamError, bool)>, Vec<u8>) {
        let (written, req) = conn.stream.write_lent(req).await;
        if let Err(e) = written {
            return (Err((UpstreamError::Io(e), false)), req);
        }
        (self.read_head(upstream, conn).await, req)
    }

    async fn read_head(
        &self,
        upstream: usize,
        mut conn: UpstreamConn,
    ) -> Result<UpstreamResponse, (UpstreamError, bool)> {
        let deadline = Instant::now() + self.limits.response_timeout;
        loop {
            if !conn.buf.is_empty() {
                let mut hs = [httparse::EMPTY_HEADER; 64];
                let mut resp = httparse::Response::new(&mut hs);
                match resp.parse(&conn.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = resp.code.unwrap_or(0);
                        let mut headers =
                            crate::http::HeaderList::with_capacity(resp.headers.len());
                        let mut framing = Framing::UntilClose;
                        let mut keep_alive = resp.version == Some(1);
                        for h in resp.headers.iter() {
                            if h.name.eq_ignore_ascii_case("content-length") {
                                let n = std::str::from_utf8(h.value)
                                    .ok()
                                    .and_then(|s| s.trim().parse().ok());
                                framing = Framing::Length(n.ok_or((
                                    UpstreamError::Protocol("bad content-length"),
                                    true,
                                ))?);
                            } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                                && h.value.to_ascii_lowercase().ends_with(b"chunked")
                            {
                                framing = Framing::Chunked(ChunkedDecoder::default());
                            } else if h.name.eq_ignore_ascii_case("connection")
                                && h.value
                                    .to_ascii_lowercase()
                                    .windows(5)
                                    .any(|w| w == b"close")
                            {
                                keep_alive = false;
                            }
                            headers.push(h.name, h.value);
                        }
                        if status == 204 || status == 304 || (100..200).contains(&status) {
                            framing = Framing::Empty;
                        }
                        if matches!(framing, Framing::UntilClose) {
                            keep_alive = false;
                        }
                        conn.buf.drain(..n);
                        let mut r = UpstreamResponse {
                            status,
                            headers,
                            conn: Some(conn),
                            framing,
                            keep_alive,
                            upstream,
                            read_total: 0,
                            read_timeout: None,
                            presented: Vec::new(),
                            elapsed: Duration::ZERO,
                            session_id: None,
                        };
                        if r.done() {
                            r.release(self);
                        }
                        return Ok(r);
                    }
                    Ok(httparse::Status::Partial) if conn.buf.len() < 64 << 10 => {}
                    _ => return Err((UpstreamError::Protocol("malformed response head"), true)),
                }
            }
            let had = !conn.buf.is_empty();
            let buf = std::mem::take(&mut conn.buf);
            let (res, buf) = read_more(&mut conn.stream, buf, 16 << 10, deadline).await;
            conn.buf = buf;
            match res {
                Ok(0) => {
                    return Err((
                        UpstreamError::Protocol("upstream closed before responding"),
                        had,
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err((e.into(), had)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Read one request (head and `content-length` body) off a blocking socket; returns its body.
    fn read_request(s: &mut std::net::TcpStream) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return buf[end + 4..end + 4 + len].to_vec();
                }
            }
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "the gateway closed before sending a whole request");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The upstream answers each connection's first request as if keeping it alive, then closes it. The
    /// pooled connection is dead when the next request takes it, so that request must go again, whole, on
    /// a fresh connection (the request buffer comes back from the failed write for it).
    #[test]
    fn a_request_on_a_pooled_connection_closed_while_idle_goes_again_on_a_fresh_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut bodies = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                bodies.push(read_request(&mut s));
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .unwrap();
                // Closed right after the answer: the gateway has already pooled the connection.
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            bodies
        });
        let url = UpstreamUrl {
            host: "127.0.0.1".into(),
            port,
            path: "/mcp".into(),
            secure: false,
        };
        let statuses = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(async {
                let pool = Pool::new(ClientLimits {
                    connect_timeout: Duration::from_secs(5),
                    response_timeout: Duration::from_secs(5),
                    body_bytes_max: 1 << 20,
                    idle_per_upstream_max: 4,
                });
                let mut statuses = Vec::new();
                for body in [&b"first"[..], &b"second, after the close"[..]] {
                    let r = pool.send(0, &url, "POST", &[], body).await.unwrap();
                    statuses.push(r.status);
                    drop(r);
                    // Let the upstream's close arrive before the next request takes the connection.
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
                statuses
            });
        assert_eq!(statuses, [200, 200]);
        assert_eq!(
            server.join().unwrap(),
            [b"first".to_vec(), b"second, after the close".to_vec()]
        );
    }
}
