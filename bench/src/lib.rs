//! Benchmark tooling: a minimal HTTP/1.1 client and server for the load generator and the fast upstream.
//!
//! The whole-path benchmark (`bench/run`) needs an upstream that is never the bottleneck and a load generator
//! with exact percentiles; both are deliberately simple blocking code, one thread per connection, so what they
//! cost is the same for every contender (direct, nginx, Portcullis).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// One HTTP/1.1 message read from a stream: head fields and body (by content-length or chunked).
#[derive(Debug, Default)]
pub struct Message {
    pub status: u16,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads messages off one keep-alive connection.
#[derive(Debug)]
pub struct Reader {
    buf: Vec<u8>,
}

impl Default for Reader {
    fn default() -> Self {
        Reader {
            buf: Vec::with_capacity(16 << 10),
        }
    }
}

impl Reader {
    /// Read one request (`is_request`) or response. `Ok(None)` on a clean close between messages.
    pub fn read(&mut self, s: &mut TcpStream, is_request: bool) -> io::Result<Option<Message>> {
        let mut chunk = [0u8; 16 << 10];
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let parsed = if is_request {
                let mut r = httparse::Request::new(&mut hs);
                match r.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => Some((
                        n,
                        Message {
                            method: r.method.unwrap_or("").to_owned(),
                            path: r.path.unwrap_or("").to_owned(),
                            headers: r
                                .headers
                                .iter()
                                .map(|h| {
                                    (
                                        h.name.to_owned(),
                                        String::from_utf8_lossy(h.value).into_owned(),
                                    )
                                })
                                .collect(),
                            ..Message::default()
                        },
                    )),
                    Ok(httparse::Status::Partial) => None,
                    Err(e) => {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
                    }
                }
            } else {
                let mut r = httparse::Response::new(&mut hs);
                match r.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => Some((
                        n,
                        Message {
                            status: r.code.unwrap_or(0),
                            headers: r
                                .headers
                                .iter()
                                .map(|h| {
                                    (
                                        h.name.to_owned(),
                                        String::from_utf8_lossy(h.value).into_owned(),
                                    )
                                })
                                .collect(),
                            ..Message::default()
                        },
                    )),
                    Ok(httparse::Status::Partial) => None,
                    Err(e) => {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
                    }
                }
            };
            if let Some((n, mut msg)) = parsed {
                self.buf.drain(..n);
                let chunked = msg
                    .header("transfer-encoding")
                    .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
                if chunked {
                    let mut dec = portcullis_pipeline::chunked::ChunkedDecoder::default();
                    loop {
                        let used = dec.decode(&self.buf, &mut msg.body).map_err(|_| {
                            io::Error::new(io::ErrorKind::InvalidData, "bad chunking")
                        })?;
                        self.buf.drain(..used);
                        if dec.is_done() {
                            break;
                        }
                        let k = s.read(&mut chunk)?;
                        if k == 0 {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        self.buf.extend_from_slice(&chunk[..k]);
                    }
                } else {
                    let len: usize = msg
                        .header("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while self.buf.len() < len {
                        let k = s.read(&mut chunk)?;
                        if k == 0 {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        self.buf.extend_from_slice(&chunk[..k]);
                    }
                    msg.body = self.buf.drain(..len).collect();
                }
                return Ok(Some(msg));
            }
            let k = s.read(&mut chunk)?;
            if k == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..k]);
        }
    }
}

pub fn write_response(
    s: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(
        format!("HTTP/1.1 {status} OK\r\ncontent-length: {}\r\n", body.len()).as_bytes(),
    );
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    s.write_all(&out)
}

/// The `tools/call` body the load generator sends: `arguments` is a 1 KiB object.
pub fn call_body(id: u64, tool: &str) -> String {
    call_body_under(id, tool, None)
}

/// `call_body` with the arguments object under `wrap` (a converted REST operation takes its JSON body
/// as the argument `body`).
pub fn call_body_under(id: u64, tool: &str, wrap: Option<&str>) -> String {
    let filler = "x".repeat(1024 - 64);
    let args = serde_json::json!({"text": filler, "n": 42, "flag": true});
    let args = match wrap {
        Some(name) => serde_json::json!({ name: args }),
        None => args,
    };
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {
            "name": tool,
            "arguments": args,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "portcullis-loadgen", "version": "0"}
            }
        }
    })
    .to_string()
}
