//! HTTP/1.1 server side of one agent connection: bounded reads of request heads and bodies, and writes of
//! whole or streamed (chunked) responses.
//!
//! Works over any `ByteStream`: a monoio socket used directly (plain TCP, owned buffers lent to io_uring), or a
//! poll-based stream such as TLS (tokio-rustls over `monoio-compat`). Every read has a deadline: the first
//! byte of a request waits at most `idle_timeout`, the rest of the head `header_read_timeout` (slowloris), the
//! body `request_timeout`.

use std::io;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use portcullis_pipeline::chunked::{self, ChunkedDecoder};
use portcullis_pipeline::DenyReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    pub headers: HeaderList,
    /// HTTP/1.0 without keep-alive, or `Connection: close`.
    pub close: bool,
    pub content_length: Option<usize>,
    pub chunked: bool,
    /// Who connected (the policies' `context.client_address`).
    pub peer: Option<std::net::SocketAddr>,
    /// `h1` or `h2` (the policies' `context.transport`).
    pub transport: &'static str,
    /// Arrived over TLS.
    pub secure: bool,
    /// The agent the connection's verified client certificate names (`identity.mtls`).
    pub cert_agent: Option<std::sync::Arc<str>>,
}

/// A request's header fields in arrival order, names as sent. All names share one buffer and all values
/// another, so a head costs three allocations however many fields it has (a `String` and a `Vec` per
/// field was most of the allocations of reading a request).
#[derive(Debug, Default)]
pub struct HeaderList {
    names: String,
    values: Vec<u8>,
    /// Per field: where its name ends in `names` and its value ends in `values` (each starts where the
    /// previous field's ends).
    ends: Vec<(u32, u32)>,
}

impl HeaderList {
    pub fn with_capacity(fields: usize) -> Self {
        HeaderList {
            names: String::with_capacity(fields * 16),
            values: Vec::with_capacity(fields * 32),
            ends: Vec::with_capacity(fields),
        }
    }

    /// Append a field. Heads are bounded by `header_bytes_max` long before offsets could overflow.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        self.names.push_str(name);
        self.values.extend_from_slice(value);
        self.ends
            .push((self.names.len() as u32, self.values.len() as u32));
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let mut start = (0usize, 0usize);
        self.ends.iter().map(move |&(n, v)| {
            let (n, v) = (n as usize, v as usize);
            let field = (&self.names[start.0..n], &self.values[start.1..v]);
            start = (n, v);
            field
        })
    }
}

impl RequestHead {
    /// The head of an HTTP/2 or HTTP/3 request (the `http` crate's parts); both only ever arrive over TLS.
    pub fn from_parts(
        parts: &http::request::Parts,
        peer: Option<std::net::SocketAddr>,
        transport: &'static str,
        cert_agent: Option<std::sync::Arc<str>>,
    ) -> RequestHead {
        RequestHead {
            method: parts.method.as_str().to_owned(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            headers: {
                let mut list = HeaderList::with_capacity(parts.headers.len());
                for (n, v) in parts.headers.iter() {
                    list.push(n.as_str(), v.as_bytes());
                }
                list
            },
            close: false,
            content_length: None,
            chunked: false,
            peer,
            transport,
            secure: true,
            cert_agent,
        }
    }

    /// First value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Why reading a request failed.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed (or idled out) between requests: not an error worth answering.
    Closed,
    /// A limit or deadline refused the request; answer with this reason, then close.
    Refused(DenyReason),
    /// Bytes that are not HTTP/1.1; answer 400 and close.
    Malformed,
    Io(io::Error),
}

/// Bounds for reading one request.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    pub header_bytes_max: usize,
    pub headers_count_max: usize,
    pub body_bytes_max: usize,
    pub idle_timeout: Duration,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
}

impl ReadLimits {
    /// The config's head and timeout limits, with the body bound of the listener at hand.
    pub fn from_config(l: &crate::config::Limits, body_bytes_max: usize) -> ReadLimits {
        ReadLimits {
            header_bytes_max: l.header_bytes_max,
            headers_count_max: l.headers_count_max,
            body_bytes_max,
            idle_timeout: l.idle_timeout.0,
            header_read_timeout: l.header_read_timeout.0,
            request_timeout: l.request_timeout.0,
        }
    }
}

/// A connection with its read-ahead buffer.
pub struct Conn<S> {
    pub stream: S,
    buf: Vec<u8>,
}

impl<S> std::fmt::Debug for Conn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("buffered", &self.buf.len())
            .finish()
    }
}

/// A byte stream the HTTP/1.1 code reads and writes: appends to an owned buffer, writes a whole buffer.
#[allow(async_fn_in_trait)] // static dispatch only
pub trait ByteStream {
    /// Append what is available to `buf` (at most `reserve` more bytes). `Ok(0)` is end of stream.
    async fn read_append(&mut self, buf: Vec<u8>, reserve: usize) -> (io::Result<usize>, Vec<u8>);
    /// Write all of `buf` and hand it back, whether or not the write succeeded.
    async fn write_lent(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);
    async fn write_vec(&mut self, buf: Vec<u8>) -> io::Result<()> {
        self.write_lent(buf).await.0
    }
}

/// A monoio socket used directly: buffers are lent to the kernel (io_uring) and handed back.
#[derive(Debug)]
pub struct Native<S>(pub S);

impl<S: AsyncReadRent + AsyncWriteRent> ByteStream for Native<S> {
    async fn read_append(
        &mut self,
        mut buf: Vec<u8>,
        reserve: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        if buf.capacity() - buf.len() < reserve {
            buf.reserve(reserve);
        }
        let len = buf.len();
        let cap = buf.capacity();
        let (res, slice) = self.0.read(buf.slice_mut(len..cap)).await;
        (res, slice.into_inner())
    }
    async fn write_lent(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let (res, buf) = self.0.write_all(buf).await;
        (res.map(|_| ()), buf)
    }
}

/// A poll-based stream (TLS from tokio-rustls over monoio-compat).
#[derive(Debug)]
pub struct Polled<T>(pub T);

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> ByteStream for Polled<T> {
    async fn read_append(
        &mut self,
        mut buf: Vec<u8>,
        reserve: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        let len = buf.len();
        buf.resize(len + reserve, 0);
        let res = self.0.read(&mut buf[len..]).await;
        buf.truncate(len + *res.as_ref().unwrap_or(&0));
        (res, buf)
    }
    async fn write_lent(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let res = match self.0.write_all(&buf).await {
            Ok(()) => self.0.flush().await,
            Err(e) => Err(e),
        };
        (res, buf)
    }
}

/// Read more bytes into `buf` within `deadline`.
pub async fn read_more<S: ByteStream>(
    stream: &mut S,
    buf: Vec<u8>,
    reserve: usize,
    deadline: Instant,
) -> (Result<usize, ReadError>, Vec<u8>) {
    let left = deadline.saturating_duration_since(Instant::now());
    match monoio::time::timeout(left, stream.read_append(buf, reserve)).await {
        Ok((Ok(n), buf)) => (Ok(n), buf),
        Ok((Err(e), buf)) => (Err(ReadError::Io(e)), buf),
        // A cancelled read keeps its buffer until the kernel lets go; we start a fresh one.
        Err(_) => (
            Err(ReadError::Refused(DenyReason::RequestTimeout)),
            Vec::new(),
        ),
    }
}

impl<S: ByteStream> Conn<S> {
    pub fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(8192),
        }
    }

    pub async fn read_head(&mut self, limits: &ReadLimits) -> Result<RequestHead, ReadError> {
        let mut deadline = Instant::now() + limits.idle_timeout;
        let mut started = !self.buf.is_empty();
        if started {
            deadline = Instant::now() + limits.header_read_timeout;
        }
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = self.try_parse_head(limits)? {
                    return Ok(head);
                }
                if self.buf.len() >= limits.header_bytes_max {
                    return Err(ReadError::Refused(DenyReason::HeadersTooLarge));
                }
            }
            let buf = std::mem::take(&mut self.buf);
            let (res, buf) = read_more(&mut self.stream, buf, 4096, deadline).await;
            self.buf = buf;
            match res {
                Ok(0) if !started => return Err(ReadError::Closed),
                Ok(0) => return Err(ReadError::Malformed),
                Ok(_) => {
                    if !started {
                        started = true;
                        deadline = Instant::now() + limits.header_read_timeout;
                    }
                }
                Err(ReadError::Refused(DenyReason::RequestTimeout)) if !started => {
                    return Err(ReadError::Closed)
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn try_parse_head(&mut self, limits: &ReadLimits) -> Result<Option<RequestHead>, ReadError> {
        // On the stack for the usual limit; a larger configured one gets a heap array.
        let mut stack = [httparse::EMPTY_HEADER; 64];
        let mut heap;
        let headers = if limits.headers_count_max <= stack.len() {
            &mut stack[..limits.headers_count_max]
        } else {
            heap = vec![httparse::EMPTY_HEADER; limits.headers_count_max];
            &mut heap[..]
        };
        let mut req = httparse::Request::new(headers);
        let window = &self.buf[..self.buf.len().min(limits.header_bytes_max)];
        let n = match req.parse(window) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ReadError::Refused(DenyReason::HeadersTooLarge))
            }
            Err(_) => return Err(ReadError::Malformed),
        };
        let version = req.version.unwrap_or(1);
        let mut head = RequestHead {
            method: req.method.unwrap_or("").to_owned(),
            path: req.path.unwrap_or("").to_owned(),
            headers: HeaderList::with_capacity(req.headers.len()),
            close: version == 0,
            content_length: None,
            chunked: false,
            peer: None,
            transport: "h1",
            secure: false,
            cert_agent: None,
        };
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok());
                match (v, head.content_length) {
                    (None, _) => return Err(ReadError::Malformed),
                    // Differing duplicate lengths are a request-smuggling vector.
                    (Some(a), Some(b)) if a != b => return Err(ReadError::Malformed),
                    (Some(a), _) => head.content_length = Some(a),
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                if h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    head.chunked = true;
                } else {
                    return Err(ReadError::Malformed);
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                let v = h.value.to_ascii_lowercase();
                if v.windows(5).any(|w| w == b"close") {
                    head.close = true;
                } else if v.windows(10).any(|w| w == b"keep-alive") {
                    head.close = false;
                }
            }
            head.headers.push(h.name, h.value);
        }
        if head.chunked && head.content_length.is_some() {
            return Err(ReadError::Malformed);
        }
        self.buf.drain(..n);
        Ok(Some(head))
    }

    /// Read the whole body (bounded by `body_bytes_max`).
    pub async fn read_body(
        &mut self,
        head: &RequestHead,
        limits: &ReadLimits,
    ) -> Result<Vec<u8>, ReadError> {
        let deadline = Instant::now() + limits.request_timeout;
        if let Some(len) = head.content_length {
            if len > limits.body_bytes_max {
                return Err(ReadError::Refused(DenyReason::PayloadTooLarge));
            }
            while self.buf.len() < len {
                let buf = std::mem::take(&mut self.buf);
                let want = (len - buf.len()).min(1 << 20);
                let (res, buf) = read_more(&mut self.stream, buf, want, deadline).await;
                self.buf = buf;
                if res? == 0 {
                    return Err(ReadError::Malformed);
                }
            }
            let rest = self.buf.split_off(len);
            return Ok(std::mem::replace(&mut self.buf, rest));
        }
        if !head.chunked {
            return Ok(Vec::new());
        }
        let mut dec = ChunkedDecoder::default();
        let mut body = Vec::new();
        loop {
            let used = dec
                .decode(&self.buf, &mut body)
                .map_err(|_| ReadError::Malformed)?;
            self.buf.drain(..used);
            if body.len() > limits.body_bytes_max {
                return Err(ReadError::Refused(DenyReason::PayloadTooLarge));
            }
            if dec.is_done() {
                return Ok(body);
            }
            let buf = std::mem::take(&mut self.buf);
            let (res, buf) = read_more(&mut self.stream, buf, 8192, deadline).await;
            self.buf = buf;
            if res? == 0 {
                return Err(ReadError::Malformed);
            }
        }
    }

    pub async fn write(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        self.stream.write_vec(bytes).await
    }
}

/// A response header list being built.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn head_bytes(&self, close: bool, framing: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\n",
                self.status,
                reason_phrase(self.status)
            )
            .as_bytes(),
        );
        for (n, v) in &self.headers {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(framing.as_bytes());
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The whole response with a body and `content-length`.
    pub fn full(&self, body: &[u8], close: bool) -> Vec<u8> {
        let mut out = self.head_bytes(close, &format!("content-length: {}\r\n", body.len()));
        out.extend_from_slice(body);
        out
    }

    /// The head of a streamed (chunked) response; follow with `chunked::encode_chunk` and `LAST_CHUNK`.
    pub fn streaming_head(&self, close: bool) -> Vec<u8> {
        self.head_bytes(close, "transfer-encoding: chunked\r\n")
    }
}

pub use chunked::{encode_chunk, LAST_CHUNK};

/// Where the gateway writes one response: HTTP/1.1 bytes on a connection, or an HTTP/2 stream. The gateway
/// speaks in whole responses or streamed bodies and never sees the framing.
#[allow(async_fn_in_trait)] // used only with static dispatch inside this crate
pub trait Reply {
    /// A whole response. Returns whether the connection can serve another request.
    async fn full(&mut self, resp: Response, body: &[u8], close: bool) -> bool;
    /// Start a streamed response (SSE).
    async fn stream_start(&mut self, resp: Response) -> bool;
    /// One piece of a streamed body; `false` when the agent is gone.
    async fn stream_data(&mut self, data: Vec<u8>) -> bool;
    async fn stream_end(&mut self) -> bool;
    /// The audit record of the request being answered, for the handler to fill in; `None` where the
    /// reply is not audited (the raw connection: the gateway's `Stamped` wrapper audits).
    fn audit(&mut self) -> Option<&mut portcullis_pipeline::audit::Event> {
        None
    }
    /// Name the request's 2026-07-28 gateway session in the response (the gateway's `Stamped` does).
    fn name_session(&mut self, _id: portcullis_pipeline::session::SessionId) {}
}

impl<S: ByteStream> Reply for Conn<S> {
    async fn full(&mut self, resp: Response, body: &[u8], close: bool) -> bool {
        self.write(resp.full(body, close)).await.is_ok()
    }
    async fn stream_start(&mut self, resp: Response) -> bool {
        self.write(resp.streaming_head(false)).await.is_ok()
    }
    async fn stream_data(&mut self, data: Vec<u8>) -> bool {
        let mut out = Vec::with_capacity(data.len() + 16);
        encode_chunk(&data, &mut out);
        out.is_empty() || self.write(out).await.is_ok()
    }
    async fn stream_end(&mut self) -> bool {
        self.write(LAST_CHUNK.to_vec()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_list_keeps_fields_in_order_and_apart() {
        let mut h = HeaderList::with_capacity(1);
        assert!(h.is_empty());
        let fields: [(&str, &[u8]); 5] = [
            ("Content-Type", b"application/json"),
            ("x-empty", b""),
            ("Mcp-Param-Region", b"eu-west"),
            ("x-bytes", b"\xff\x00 tail"),
            ("content-type", b"text/plain"),
        ];
        for (n, v) in fields {
            h.push(n, v);
        }
        assert_eq!(h.len(), 5);
        assert_eq!(h.iter().collect::<Vec<_>>(), fields.to_vec());
        let head = RequestHead {
            method: "POST".into(),
            path: "/mcp".into(),
            headers: h,
            close: false,
            content_length: None,
            chunked: false,
            peer: None,
            transport: "h1",
            secure: false,
            cert_agent: None,
        };
        // The first of repeated names, matched without regard to case.
        assert_eq!(head.header("CONTENT-TYPE"), Some(&b"application/json"[..]));
        assert_eq!(head.header("x-empty"), Some(&b""[..]));
        assert_eq!(head.header_str("x-bytes"), None);
        assert_eq!(head.header("absent"), None);
    }
}
