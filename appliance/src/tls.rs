//! TLS for the MCP listener: a self-signed certificate generated into the data dir on first start, and the
//! rustls server configuration (ALPN `h2`, then `http/1.1`).
//!
//! The key never leaves the data dir (0600). The certificate's SHA-256 fingerprint is printed at start so an
//! operator can pin it in agents before a real certificate is installed.

use std::sync::Arc;

use portcullis_storage::DataDir;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub const CERT_FILE: &str = "tls-cert.pem";
pub const KEY_FILE: &str = "tls-key.pem";

#[derive(Debug)]
pub enum TlsError {
    Storage(portcullis_storage::StorageError),
    Generate(rcgen::Error),
    Pem(&'static str),
    Rustls(rustls::Error),
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Storage(e) => write!(f, "tls material: {e}"),
            TlsError::Generate(e) => write!(f, "generating self-signed certificate: {e}"),
            TlsError::Pem(what) => write!(f, "tls material: cannot read {what} PEM"),
            TlsError::Rustls(e) => write!(f, "tls config: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

pub struct TlsMaterial {
    pub config: Arc<rustls::ServerConfig>,
    pub fingerprint_sha256: String,
    pub created: bool,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("fingerprint_sha256", &self.fingerprint_sha256)
            .finish()
    }
}

/// Load the certificate and key from the data dir, generating a self-signed pair on first start.
pub fn load_or_generate(dir: &DataDir) -> Result<TlsMaterial, TlsError> {
    let mut gen_err = None;
    let ([cert_pem, key_pem], created) = dir
        .read_or_create([CERT_FILE, KEY_FILE], || {
            let names = vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ];
            match rcgen::generate_simple_self_signed(names) {
                Ok(ck) => [
                    ck.cert.pem().into_bytes(),
                    ck.signing_key.serialize_pem().into_bytes(),
                ],
                Err(e) => {
                    gen_err = Some(e);
                    [Vec::new(), Vec::new()]
                }
            }
        })
        .map_err(TlsError::Storage)?;
    if let Some(e) = gen_err {
        return Err(TlsError::Generate(e));
    }
    let cert =
        CertificateDer::from_pem_slice(&cert_pem).map_err(|_| TlsError::Pem("certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Pem("private key"))?;
    let fingerprint_sha256 = fingerprint(cert.as_ref());
    let config = server_config(&cert, &key, None)?;
    Ok(TlsMaterial {
        config,
        fingerprint_sha256,
        created,
        cert,
        key,
    })
}

impl TlsMaterial {
    /// When the certificate expires, seconds since the epoch (`None` if its DER does not say).
    pub fn not_after(&self) -> Option<u64> {
        portcullis_pipeline::authn::certificate_not_after(self.cert.as_ref())
    }

    /// The MCP listener's configuration: as `config`, and with `client_cas` set, asking for a client
    /// certificate issued by them. A connection without one is still accepted (the agent may present a
    /// bearer credential instead); one with a certificate the CAs do not verify fails its handshake.
    pub fn mcp_config(
        &self,
        client_cas: Option<rustls::RootCertStore>,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        match client_cas {
            None => Ok(self.config.clone()),
            Some(roots) => server_config(&self.cert, &self.key, Some(roots)),
        }
    }

    /// The admin listener's: ALPN http/1.1 and, with `client_cas`, a client certificate they verify
    /// required of every connection (unlike the MCP listener, where a bearer credential may stand in).
    pub fn admin_config(
        &self,
        client_cas: Option<rustls::RootCertStore>,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let base = match client_cas {
            None => self.config.clone(),
            Some(roots) => server_config_with(&self.cert, &self.key, Some(roots), true)?,
        };
        let mut config = (*base).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The HTTP/3 listener's: as `mcp_config`, ALPN `h3`, and early data only with `early_data` (0-RTT
    /// requests can be replayed; `h3srv` serves only safe methods before the handshake completes).
    pub fn h3_config(
        &self,
        client_cas: Option<rustls::RootCertStore>,
        early_data: bool,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let base = server_config(&self.cert, &self.key, client_cas)?;
        let mut config = (*base).clone();
        config.alpn_protocols = vec![b"h3".to_vec()];
        // QUIC takes all or nothing: u32::MAX enables 0-RTT, 0 disables it.
        config.max_early_data_size = if early_data { u32::MAX } else { 0 };
        Ok(Arc::new(config))
    }
}

fn server_config(
    cert: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
    client_cas: Option<rustls::RootCertStore>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_with(cert, key, client_cas, false)
}

/// `required`: a connection without a client certificate fails its handshake.
fn server_config_with(
    cert: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
    client_cas: Option<rustls::RootCertStore>,
    required: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?;
    let builder = match client_cas {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(vec![cert.clone()], key.clone_key())
        .map_err(TlsError::Rustls)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener's TLS handshake on an accepted connection, given at most `timeout`; `None` when it fails or
/// takes longer.
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: monoio::net::TcpStream,
    timeout: std::time::Duration,
) -> Option<tokio_rustls::server::TlsStream<monoio_compat::StreamWrapper<monoio::net::TcpStream>>> {
    let io = monoio_compat::StreamWrapper::new(stream);
    monoio::time::timeout(timeout, acceptor.accept(io))
        .await
        .ok()?
        .ok()
}

/// SHA-256 of a DER certificate as colon-separated upper-case hex, the form printed at start.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
