//! A small blocking HTTPS client for what the appliance fetches off the request path: a remote control
//! plane's snapshots (hybrid mode), identity providers' JSON Web Key Sets, secret stores and token
//! endpoints (the credential broker's threads).
//!
//! One request per connection (`connection: close`), on a plain thread, with bounded heads and bodies.
//! The peer is trusted either by pinning its certificate's SHA-256 fingerprint (for the self-signed
//! certificate a Portcullis control plane generates) or by CA certificates from a PEM file.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

use portcullis_pipeline::chunked::ChunkedDecoder;

use crate::config::{parse_fingerprint, UpstreamUrl};

/// Header bytes of a response, at most.
const HEAD_MAX: usize = 16 << 10;

/// One GET: what to ask and how long to wait.
#[derive(Debug)]
pub struct Get<'a> {
    /// Path and query.
    pub target: &'a str,
    /// Extra header lines, each ending in CRLF.
    pub headers: &'a str,
    pub connect_timeout: Duration,
    /// Bound on each read and write.
    pub io_timeout: Duration,
    /// Largest body accepted.
    pub body_max: usize,
    /// A response header whose value is returned beside the body.
    pub header: &'a str,
}

/// GET `req.target` from `url`'s host: status, the value of `req.header`, body.
pub fn get(
    url: &UpstreamUrl,
    tls: &Arc<ClientConfig>,
    req: &Get<'_>,
) -> Result<(u16, Option<String>, Vec<u8>), String> {
    request(url, tls, "GET", req, None)
}

/// POST `body` (of `content_type`) to `req.target` on `url`'s host: status, the value of `req.header`,
/// body.
pub fn post(
    url: &UpstreamUrl,
    tls: &Arc<ClientConfig>,
    req: &Get<'_>,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, Option<String>, Vec<u8>), String> {
    request(url, tls, "POST", req, Some((content_type, body)))
}

/// Any method, with an optional (content type, body): status, the value of `req.header`, body.
pub fn request(
    url: &UpstreamUrl,
    tls: &Arc<ClientConfig>,
    method: &str,
    req: &Get<'_>,
    body: Option<(&str, &[u8])>,
) -> Result<(u16, Option<String>, Vec<u8>), String> {
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", url.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", url.host))?;
    let tcp = TcpStream::connect_timeout(&addr, req.connect_timeout)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    tcp.set_read_timeout(Some(req.io_timeout)).ok();
    tcp.set_write_timeout(Some(req.io_timeout)).ok();
    let name =
        ServerName::try_from(url.host.clone()).map_err(|e| format!("host {}: {e}", url.host))?;
    let conn = ClientConnection::new(tls.clone(), name).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    let framing = match body {
        Some((ct, b)) => format!("content-type: {ct}\r\ncontent-length: {}\r\n", b.len()),
        None => String::new(),
    };
    // The head may carry credentials (a store token, a client secret): it is built, sent and dropped
    // here, and no error below includes it.
    let mut head = zeroize::Zeroizing::new(Vec::with_capacity(512));
    write!(
        head,
        "{method} {} HTTP/1.1\r\nhost: {}:{}\r\n{}{framing}user-agent: portcullis/{}\r\nconnection: close\r\n\r\n",
        req.target,
        url.host,
        url.port,
        req.headers,
        crate::gateway::VERSION
    )
    .map_err(|e| e.to_string())?;
    if let Some((_, b)) = body {
        head.extend_from_slice(b);
    }
    tls.write_all(&head)
        .and_then(|()| tls.flush())
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    read_response(&mut tls, req.body_max, req.header)
        .map_err(|e| format!("reading from {addr}: {e}"))
}

/// How a response body is delimited.
enum Framing {
    Length(usize),
    Chunked,
    /// Neither: the body runs to the end of the connection (`connection: close`).
    Close,
}

/// Read one HTTP/1.1 response: status, the value of `header`, and the body (at most `body_max` bytes),
/// delimited by `content-length`, chunked coding, or the end of the connection.
pub fn read_response(
    s: &mut impl Read,
    body_max: usize,
    header: &str,
) -> io::Result<(u16, Option<String>, Vec<u8>)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let too_big = || bad(&format!("body exceeds {body_max} bytes"));
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 << 10];
    let (status, value, framing, head_len) = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed before the response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf).map_err(|e| bad(&e.to_string()))? {
            httparse::Status::Partial if buf.len() > HEAD_MAX => {
                return Err(bad("response head too large"))
            }
            httparse::Status::Partial => continue,
            httparse::Status::Complete(head_len) => {
                let get = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .map(str::to_owned)
                };
                let status = resp.code.unwrap_or(0);
                let chunked = get("transfer-encoding")
                    .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
                let framing = match (chunked, get("content-length")) {
                    (true, _) => Framing::Chunked,
                    (false, Some(l)) => Framing::Length(
                        l.trim()
                            .parse::<usize>()
                            .map_err(|_| bad("bad content-length"))?,
                    ),
                    // No body by definition (RFC 9110 §6.4.1).
                    (false, None) if status == 204 || status == 304 => Framing::Length(0),
                    (false, None) => Framing::Close,
                };
                break (status, get(header), framing, head_len);
            }
        }
    };
    let rest = buf.split_off(head_len);
    let body = match framing {
        Framing::Length(length) => {
            if length > body_max {
                return Err(too_big());
            }
            let mut body = rest;
            body.truncate(length);
            let have = body.len();
            body.resize(length, 0);
            s.read_exact(&mut body[have..])?;
            body
        }
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::default();
            let mut body = Vec::new();
            let mut input = rest;
            loop {
                dec.decode(&input, &mut body)
                    .map_err(|_| bad("malformed chunked body"))?;
                if body.len() > body_max {
                    return Err(too_big());
                }
                if dec.is_done() {
                    break body;
                }
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(bad("connection closed inside a chunked body"));
                }
                input = chunk[..n].to_vec();
            }
        }
        Framing::Close => {
            let mut body = rest;
            loop {
                if body.len() > body_max {
                    return Err(too_big());
                }
                match s.read(&mut chunk) {
                    Ok(0) => break body,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                    // A TLS peer that closes without close_notify still ended the body.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break body,
                    Err(e) => return Err(e),
                }
            }
        }
    };
    Ok((status, value, body))
}

/// TLS to a peer: its certificate pinned by fingerprint, or verified (with its name) by the given CAs.
/// `what` names the config block in errors.
pub fn client_config(
    fingerprint: Option<&str>,
    ca_file: Option<&Path>,
    what: &str,
) -> Result<Arc<ClientConfig>, String> {
    client_config_with(fingerprint, ca_file, None, what)
}

/// As `client_config`, presenting the client certificate chain and key in `client` (PEM files) when
/// given.
pub fn client_config_with(
    fingerprint: Option<&str>,
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
    what: &str,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match (fingerprint, ca_file) {
        (Some(fp), _) => {
            let pin = parse_fingerprint(fp)
                .ok_or_else(|| format!("{what}.tls_fingerprint: not a fingerprint"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { pin, provider }))
        }
        (None, Some(path)) => builder.with_root_certificates(roots(path, what)?),
        (None, None) => return Err(format!("{what}: set tls_fingerprint or tls_ca_file")),
    };
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let err = |p: &Path, e: &dyn std::fmt::Display| format!("{what} {}: {e}", p.display());
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| err(cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(cert, &e))?;
            let key =
                rustls::pki_types::PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{what}: client certificate: {e}"))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// CA certificates from a PEM file.
pub fn roots(path: &Path, what: &str) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    let what = |e: &dyn std::fmt::Display| format!("{what} {}: {e}", path.display());
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| what(&e))? {
        store
            .add(cert.map_err(|e| what(&e))?)
            .map_err(|e| what(&e))?;
    }
    if store.is_empty() {
        return Err(what(&"no certificates"));
    }
    Ok(store)
}

/// Accepts exactly the certificate with the pinned SHA-256 fingerprint (the control plane's self-signed
/// one), and still checks that the handshake is signed by that certificate's key.
#[derive(Debug)]
struct Pinned {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if digest.as_ref() == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "portcullis-activation";

    #[test]
    fn responses_are_read_by_length_and_bounded() {
        let raw =
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nportcullis-activation: seq=1\r\n\r\nhello";
        let (status, act, body) = read_response(&mut &raw[..], 100, H).unwrap();
        assert_eq!(
            (status, act.as_deref(), body.as_slice()),
            (200, Some("seq=1"), &b"hello"[..])
        );
        assert!(
            read_response(&mut &raw[..], 4, H).is_err(),
            "over the bound"
        );
        let short = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nhello";
        assert!(read_response(&mut &short[..], 100, H).is_err(), "truncated");
        let empty = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(read_response(&mut &empty[..], 100, H).unwrap().0, 204);
    }

    #[test]
    fn responses_are_read_chunked_or_to_the_end() {
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n";
        let (_, _, body) = read_response(&mut &chunked[..], 100, H).unwrap();
        assert_eq!(body, b"hello");
        assert!(read_response(&mut &chunked[..], 4, H).is_err());
        let open = b"HTTP/1.0 200 OK\r\n\r\nhello";
        let (_, _, body) = read_response(&mut &open[..], 100, H).unwrap();
        assert_eq!(body, b"hello");
        assert!(read_response(&mut &open[..], 4, H).is_err());
    }
}
