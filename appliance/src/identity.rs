//! Agent identity from identity providers' JWTs: each provider's JSON Web Key Set, fetched over HTTPS
//! on a plain thread of its own, cached for every core, refreshed on a schedule and, rate-limited, when a
//! token names a key the cache does not hold (a rotation).
//!
//! Cores verify tokens against the cached set with `pipeline::authn` and no I/O; only a token with an
//! unknown `kid` waits (bounded) for one refetch. A provider that cannot be reached keeps its last keys
//! until `jwks_max_age` after the last good fetch; then its tokens are refused (fail closed) until it
//! answers again.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use serde::Serialize;

use portcullis_pipeline::authn::{self, Alg, CertName, Issuer, Jwks, JwtError};

use crate::config::{self, parse_https_url, UpstreamUrl};
use crate::control::now_ms;
use crate::https;

/// Largest JWKS document accepted.
const JWKS_BYTES_MAX: usize = 256 << 10;
/// Longest a token with an unknown `kid` waits for the refetch it asked for.
pub const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(3);
/// Longest one JWKS request may take to connect, and each read or write.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Waiters queued for a refetch, at most; more are refused at once rather than queued.
const WAITERS_MAX: usize = 4096;

/// Every configured identity provider, and the resource URIs their tokens must name.
#[derive(Debug, Default)]
pub struct Providers {
    pub resource: Vec<String>,
    /// Which name of a verified client certificate is the agent's (`identity.mtls`), if certificates
    /// identify agents.
    pub cert_rule: Option<CertName>,
    providers: Vec<Arc<Provider>>,
    /// Tokens refused, by `JwtError::code` (and `unknown_issuer`).
    refused: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

/// One identity provider: its token rules and its cached keys.
#[derive(Debug)]
pub struct Provider {
    pub spec: Issuer,
    jwks_url: String,
    url: UpstreamUrl,
    tls: Arc<ClientConfig>,
    refresh: Duration,
    max_age: Duration,
    kid_min: Duration,
    keys: RwLock<Arc<Jwks>>,
    waiters_tx: flume::Sender<flume::Sender<()>>,
    waiters_rx: flume::Receiver<flume::Sender<()>>,
    status: Mutex<ProviderStatus>,
}

/// What `GET /admin/v1/identity` shows of one provider.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProviderStatus {
    pub issuer: String,
    pub jwks_url: String,
    /// Usable keys held now (0 before the first fetch and after `jwks_max_age` without one).
    pub keys: usize,
    pub kids: Vec<String>,
    pub last_fetch_ms: Option<u64>,
    pub last_error: Option<String>,
    pub fetches_total: u64,
    pub fetch_failures_total: u64,
    /// Fetches caused by tokens with an unknown `kid`.
    pub unknown_kid_fetches_total: u64,
    /// Unknown-`kid` refetches not made because one was made less than `unknown_kid_refresh_min` ago.
    pub unknown_kid_throttled_total: u64,
    /// True while the held keys are past `jwks_max_age` (this issuer's tokens are refused).
    pub expired: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Providers {
    pub fn from_config(id: &config::Identity) -> Result<Providers, String> {
        let mut providers = Vec::new();
        for (i, j) in id.jwt.iter().enumerate() {
            let what = format!("identity.jwt[{i}]");
            let ca = match (&j.tls_fingerprint, &j.tls_ca_file) {
                (Some(_), _) => None,
                (None, Some(p)) => Some(p.clone()),
                (None, None) => Some(config::SYSTEM_CA_BUNDLE.into()),
            };
            let tls = https::client_config(j.tls_fingerprint.as_deref(), ca.as_deref(), &what)?;
            let (waiters_tx, waiters_rx) = flume::bounded(WAITERS_MAX);
            providers.push(Arc::new(Provider {
                spec: Issuer {
                    issuer: j.issuer.clone(),
                    audiences: id.resource.clone(),
                    algorithms: j.algorithms.iter().filter_map(|a| Alg::parse(a)).collect(),
                    leeway_s: j.leeway.0.as_secs(),
                    agent_claim: j.agent_claim.clone(),
                },
                jwks_url: j.jwks_url.clone(),
                url: parse_https_url(&j.jwks_url).map_err(|e| format!("{what}.jwks_url: {e}"))?,
                tls,
                refresh: j.jwks_refresh.0,
                max_age: j.jwks_max_age.0,
                kid_min: j.unknown_kid_refresh_min.0,
                keys: RwLock::new(Arc::new(Jwks::default())),
                waiters_tx,
                waiters_rx,
                status: Mutex::new(ProviderStatus {
                    issuer: j.issuer.clone(),
                    jwks_url: j.jwks_url.clone(),
                    ..ProviderStatus::default()
                }),
            }));
        }
        let cert_rule = id.mtls.as_ref().map(|m| match m.agent_from {
            config::CertAgentFrom::CommonName => CertName::CommonName,
            config::CertAgentFrom::UriSan => CertName::UriSan {
                prefix: m.uri_prefix.clone(),
            },
            config::CertAgentFrom::DnsSan => CertName::DnsSan,
        });
        Ok(Providers {
            resource: id.resource.clone(),
            cert_rule,
            providers,
            refused: Mutex::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Start each provider's fetcher thread.
    pub fn start(&self) -> Result<(), String> {
        for p in &self.providers {
            let p = p.clone();
            std::thread::Builder::new()
                .name("portcullis-jwks".into())
                .spawn(move || p.run())
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The agent a verified client certificate (DER) names, when certificates identify agents.
    pub fn certificate_agent(&self, der: &[u8]) -> Option<std::sync::Arc<str>> {
        let rule = self.cert_rule.as_ref()?;
        authn::certificate_agent(der, rule).map(std::sync::Arc::from)
    }

    /// The issuers, for the protected-resource metadata's `authorization_servers`.
    pub fn issuers(&self) -> Vec<String> {
        self.providers
            .iter()
            .map(|p| p.spec.issuer.clone())
            .collect()
    }

    /// The provider whose tokens claim `iss`.
    pub fn find(&self, iss: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.spec.issuer == iss)
    }

    /// The agent a JWT speaks for. A token naming a key the cache lacks waits for one refetch (bounded,
    /// rate-limited) and is checked again.
    pub async fn verify(&self, token: &str) -> Result<String, JwtError> {
        let outcome = self.verify_once(token).await;
        if let Err(e) = &outcome {
            *lock(&self.refused).entry(e.code()).or_default() += 1;
        }
        outcome
    }

    async fn verify_once(&self, token: &str) -> Result<String, JwtError> {
        let iss = authn::claimed_issuer(token)?;
        let p = self.find(&iss).ok_or(JwtError::WrongIssuer)?;
        match authn::verify(token, &p.spec, &p.keys(), unix_now()) {
            Err(JwtError::UnknownKey) => {
                if let Some(done) = p.ask_refetch() {
                    let _ = monoio::time::timeout(UNKNOWN_KID_WAIT, done.recv_async()).await;
                }
                authn::verify(token, &p.spec, &p.keys(), unix_now())
            }
            other => other,
        }
    }

    pub fn status(&self) -> Vec<ProviderStatus> {
        self.providers
            .iter()
            .map(|p| lock(&p.status).clone())
            .collect()
    }

    /// Prometheus text for `/metrics`.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        if self.providers.is_empty() {
            return out;
        }
        let status = self.status();
        out.push_str("# HELP portcullis_jwks_keys Usable keys held per identity provider.\n# TYPE portcullis_jwks_keys gauge\n");
        for s in &status {
            let _ = writeln!(
                out,
                "portcullis_jwks_keys{{issuer=\"{}\"}} {}",
                esc(&s.issuer),
                s.keys
            );
        }
        out.push_str("# HELP portcullis_jwks_fetch_failures_total JWKS fetches that failed.\n# TYPE portcullis_jwks_fetch_failures_total counter\n");
        for s in &status {
            let _ = writeln!(
                out,
                "portcullis_jwks_fetch_failures_total{{issuer=\"{}\"}} {}",
                esc(&s.issuer),
                s.fetch_failures_total
            );
        }
        out.push_str("# HELP portcullis_jwt_refused_total JWT bearer tokens refused, by why.\n# TYPE portcullis_jwt_refused_total counter\n");
        for (code, n) in lock(&self.refused).iter() {
            let _ = writeln!(out, "portcullis_jwt_refused_total{{reason=\"{code}\"}} {n}");
        }
        out
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unix_now() -> u64 {
    now_ms() / 1000
}

impl Provider {
    pub fn keys(&self) -> Arc<Jwks> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Ask the fetcher for a refetch; the receiver disconnects once it has been made (or refused as too
    /// soon). `None` when too many already wait.
    fn ask_refetch(&self) -> Option<flume::Receiver<()>> {
        let (tx, rx) = flume::bounded(1);
        self.waiters_tx.try_send(tx).ok().map(|()| rx)
    }

    fn publish(&self, jwks: Jwks) {
        let mut s = lock(&self.status);
        s.keys = jwks.len();
        s.kids = jwks.kids().map(str::to_owned).collect();
        drop(s);
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(jwks);
    }

    fn fetch(&self) -> Result<Jwks, String> {
        let (status, _, body) = https::get(
            &self.url,
            &self.tls,
            &https::Get {
                target: &self.url.path,
                headers: "accept: application/jwk-set+json, application/json\r\n",
                connect_timeout: FETCH_TIMEOUT,
                io_timeout: FETCH_TIMEOUT,
                body_max: JWKS_BYTES_MAX,
                header: "content-type",
            },
        )?;
        if status != 200 {
            return Err(format!("HTTP {status}"));
        }
        Jwks::parse(&body).map_err(|e| e.to_string())
    }

    /// The fetcher: fetch now, then on schedule and when asked, forever.
    fn run(&self) {
        let mut last_attempt: Option<Instant> = None;
        let mut last_ok: Option<Instant> = None;
        let mut failures = 0u32;
        let mut next = Instant::now();
        loop {
            let first = match self
                .waiters_rx
                .recv_timeout(next.saturating_duration_since(Instant::now()))
            {
                Ok(w) => Some(w),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => return,
            };
            let waiters: Vec<_> = first
                .into_iter()
                .chain(self.waiters_rx.try_iter())
                .collect();
            if !waiters.is_empty() {
                if last_attempt.is_some_and(|t| t.elapsed() < self.kid_min) {
                    // Too soon: the waiters are answered with the keys held (dropping them wakes them).
                    lock(&self.status).unknown_kid_throttled_total += waiters.len() as u64;
                    continue;
                }
                lock(&self.status).unknown_kid_fetches_total += 1;
            }
            let outcome = self.fetch();
            last_attempt = Some(Instant::now());
            let mut s = lock(&self.status);
            s.fetches_total += 1;
            match outcome {
                Ok(jwks) => {
                    if s.last_error.is_some() || last_ok.is_none() {
                        crate::info!(
                            "identity provider {}: {} signing keys from {} ({} skipped)",
                            self.spec.issuer,
                            jwks.len(),
                            self.jwks_url,
                            jwks.skipped
                        );
                    }
                    s.last_fetch_ms = Some(now_ms());
                    s.last_error = None;
                    s.expired = false;
                    drop(s);
                    self.publish(jwks);
                    last_ok = Some(Instant::now());
                    failures = 0;
                    next = Instant::now() + self.refresh;
                }
                Err(e) => {
                    s.fetch_failures_total += 1;
                    if s.last_error.is_none() {
                        crate::warn!(
                            "identity provider {}: JWKS {} not fetched: {e}; keeping the keys held",
                            self.spec.issuer,
                            self.jwks_url
                        );
                    }
                    s.last_error = Some(e);
                    let stale = last_ok.is_none_or(|t| t.elapsed() >= self.max_age);
                    let expire = stale && !s.expired && s.keys > 0;
                    s.expired = stale;
                    drop(s);
                    if expire {
                        crate::error!(
                            "identity provider {}: keys older than jwks_max_age; refusing its tokens until the JWKS answers",
                            self.spec.issuer
                        );
                        self.publish(Jwks::default());
                    }
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_secs(1u64 << failures.min(6));
                    next = Instant::now() + backoff.min(self.refresh);
                }
            }
            drop(waiters);
        }
    }
}
