//! The credential broker: turns a capability's credential binding (`pipeline::credential`) into the secret
//! the gateway presents upstream, from the embedded store, the environment, files, OpenBao/Vault, or an
//! OAuth 2.0 token exchange.
//!
//! Lookups block (LMDB, files, HTTPS), so they run on the broker's own threads; a core asks through a
//! bounded queue and waits at most `secrets.timeout`. Each core keeps what it resolved for
//! `secrets.cache_ttl` (an exchanged token: until shortly before it expires), so the request path asks the
//! broker only on a miss. Every failure is reported as text that names the store and the reference,
//! never a value: callers log it and refuse the call with `credential_unavailable`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use zeroize::Zeroizing;

use portcullis_pipeline::credential::{self, Exchange, Secret, SecretRef};
use portcullis_storage::secrets::SealKey;
use portcullis_storage::Registry;

use crate::config::{self, OpenbaoAuth, OpenbaoConfig, Secrets, StoreKind, UpstreamUrl};
use crate::https;

/// The environment variable holding the embedded store's key when `secrets.key_file` is not set.
pub const KEY_ENV: &str = "PORTCULLIS_SECRETS_KEY";
/// Lookups waiting for a broker thread, at most; past it a call is refused rather than queued.
const QUEUE_MAX: usize = 1024;
/// Threads resolving lookups: enough that one slow store does not stall every other.
const THREADS: usize = 4;
/// Bytes of a store's or token endpoint's answer, at most.
const ANSWER_BYTES_MAX: usize = 256 << 10;
/// Bytes of a file secret, at most.
const FILE_BYTES_MAX: u64 = 64 << 10;

/// What a core asks the broker for.
#[derive(Debug)]
pub enum Want {
    Secret(SecretRef),
    /// Exchange `subject` (the agent's verified inbound token) for a token for `resource`.
    Exchange {
        exchange: Exchange,
        resource: String,
        subject: Secret,
    },
}

/// A resolved credential and how long it may be reused.
#[derive(Debug)]
pub struct Resolved {
    pub secret: Secret,
    pub valid_for: Duration,
}

struct Job {
    want: Want,
    reply: flume::Sender<Result<Resolved, String>>,
}

/// The broker: its stores, the queue its threads serve, and what it has counted.
pub struct Broker {
    cfg: Secrets,
    embedded: Result<(Arc<Registry>, SealKey), String>,
    stores: HashMap<String, Store>,
    exchange_tls: OnceLock<Result<Arc<ClientConfig>, String>>,
    jobs: flume::Sender<Job>,
    queue: flume::Receiver<Job>,
    /// Per store (or `exchange`): lookups made, and lookups that failed.
    counts: Mutex<HashMap<String, (u64, u64)>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("stores", &self.stores.keys().collect::<Vec<_>>())
            .field("embedded", &self.embedded.is_ok())
            .finish()
    }
}

enum Store {
    Env { prefix: String },
    File { dir: PathBuf },
    Openbao(Box<Bao>),
}

struct Bao {
    base: UpstreamUrl,
    mount: String,
    tls: Arc<ClientConfig>,
    auth: OpenbaoAuth,
    token: Mutex<Option<BaoToken>>,
}

struct BaoToken {
    token: Secret,
    /// When to renew it (AppRole tokens with a lease); `None`: it does not expire.
    renew_at: Option<Instant>,
    /// Whether the server lets it be renewed; one that cannot be is replaced by a fresh login instead.
    renewable: bool,
}

impl Broker {
    /// The broker for `cfg`. The embedded store is on when a key is configured (`key_file`, or
    /// `PORTCULLIS_SECRETS_KEY`); a key that is configured but unreadable is an error, not "off".
    pub fn new(cfg: &Secrets, registry: Arc<Registry>) -> Result<Broker, String> {
        let embedded = match (&cfg.key_file, std::env::var(KEY_ENV)) {
            (Some(path), _) => Ok((
                registry,
                SealKey::from_file(path).map_err(|e| e.to_string())?,
            )),
            (None, Ok(hex)) => {
                let hex = Zeroizing::new(hex);
                Ok((
                    registry,
                    SealKey::from_hex(&hex).map_err(|e| format!("{KEY_ENV}: {e}"))?,
                ))
            }
            (None, Err(_)) => Err(format!(
                "the embedded secret store is off: set secrets.key_file (or {KEY_ENV}) to a key made by `portcullis secret keygen`"
            )),
        };
        let mut stores = HashMap::new();
        for s in &cfg.stores {
            let store = match &s.kind {
                StoreKind::Env { prefix } => Store::Env {
                    prefix: prefix.clone(),
                },
                StoreKind::File { dir } => Store::File { dir: dir.clone() },
                StoreKind::Openbao(b) => Store::Openbao(Box::new(Bao::new(&s.name, b)?)),
            };
            stores.insert(s.name.clone(), store);
        }
        let (jobs, queue) = flume::bounded(QUEUE_MAX);
        Ok(Broker {
            cfg: cfg.clone(),
            embedded,
            stores,
            exchange_tls: OnceLock::new(),
            jobs,
            queue,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Start the broker's threads.
    pub fn start(self: &Arc<Self>) -> Result<(), String> {
        for i in 0..THREADS {
            let me = self.clone();
            std::thread::Builder::new()
                .name(format!("portcullis-broker-{i}"))
                .spawn(move || {
                    while let Ok(job) = me.queue.recv() {
                        let r = me.resolve_blocking(&job.want);
                        let _ = job.reply.send(r);
                    }
                })
                .map_err(|e| format!("broker thread: {e}"))?;
        }
        Ok(())
    }

    /// How long a resolved secret is reused.
    pub fn cache_ttl(&self) -> Duration {
        self.cfg.cache_ttl.0
    }

    /// The embedded store, for the admin API's `secret` commands.
    pub fn embedded(&self) -> Result<(&Registry, &SealKey), &str> {
        match &self.embedded {
            Ok((r, k)) => Ok((r, k)),
            Err(e) => Err(e),
        }
    }

    /// Resolve on a broker thread, waiting at most `secrets.timeout`.
    pub async fn resolve(&self, want: Want) -> Result<Resolved, String> {
        let (reply, rx) = flume::bounded(1);
        let what = describe(&want);
        self.jobs
            .try_send(Job { want, reply })
            .map_err(|_| format!("{what}: the broker's queue is full"))?;
        match monoio::time::timeout(self.cfg.timeout.0, rx.recv_async()).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(format!("{what}: the broker dropped the lookup")),
            Err(_) => Err(format!("{what}: no answer within {:?}", self.cfg.timeout.0)),
        }
    }

    /// Resolve on this thread (the broker's own, or the admin thread's at approval).
    pub fn resolve_blocking(&self, want: &Want) -> Result<Resolved, String> {
        let (counter, r) = match want {
            Want::Secret(r) => (
                r.store.clone(),
                self.secret(r).map(|secret| Resolved {
                    secret,
                    valid_for: self.cfg.cache_ttl.0,
                }),
            ),
            Want::Exchange {
                exchange,
                resource,
                subject,
            } => (
                "exchange".to_owned(),
                self.exchange(exchange, resource, subject),
            ),
        };
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let c = counts.entry(counter).or_default();
        c.0 += 1;
        if r.is_err() {
            c.1 += 1;
        }
        r
    }

    fn secret(&self, r: &SecretRef) -> Result<Secret, String> {
        let what = |m: &dyn std::fmt::Display| format!("secret {r}: {m}");
        if r.store == "embedded" {
            let (registry, key) = self.embedded().map_err(|e| what(&e))?;
            let name = embedded_name(r);
            return registry
                .secret(key, &name)
                .map_err(|e| what(&e))?
                .ok_or_else(|| what(&"no such secret in the embedded store"));
        }
        match self.stores.get(&r.store) {
            None => Err(what(&"no such store (secrets.stores)")),
            Some(Store::Env { prefix }) => {
                if r.field.is_some()
                    || !r
                        .path
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(what(
                        &"environment references are NAME/VARIABLE, without #field",
                    ));
                }
                let var = format!("{prefix}{}", r.path);
                if var == KEY_ENV {
                    return Err(what(&"names the embedded store's key"));
                }
                std::env::var(&var)
                    .map(Secret::new)
                    .map_err(|_| what(&format_args!("environment variable {var} is not set")))
            }
            Some(Store::File { dir }) => file_secret(dir, r).map_err(|e| what(&e)),
            Some(Store::Openbao(b)) => b.read(r, &self.cfg).map_err(|e| what(&e)),
        }
    }

    fn exchange(&self, x: &Exchange, resource: &str, subject: &Secret) -> Result<Resolved, String> {
        let what =
            |m: &dyn std::fmt::Display| format!("token exchange at {}: {m}", x.token_endpoint);
        let url = config::parse_https_url(&x.token_endpoint).map_err(|e| what(&e))?;
        let tls = self
            .exchange_tls
            .get_or_init(|| {
                let ca = self
                    .cfg
                    .exchange_tls_ca_file
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(config::SYSTEM_CA_BUNDLE));
                https::client_config(
                    self.cfg.exchange_tls_fingerprint.as_deref(),
                    Some(&ca),
                    "secrets.exchange_tls",
                )
            })
            .clone()
            .map_err(|e| what(&e))?;
        let mut headers = Zeroizing::new(String::from("accept: application/json\r\n"));
        if let Some(r) = &x.client_secret {
            let r = SecretRef::parse(r).map_err(|e| what(&e))?;
            let client_secret = self.secret(&r).map_err(|e| what(&e))?;
            let _ = write!(
                headers,
                "authorization: {}\r\n",
                Zeroizing::new(credential::client_basic(
                    &x.client_id,
                    client_secret.expose()
                ))
                .as_str()
            );
        }
        let mut form = Zeroizing::new(credential::exchange_form(x, resource, subject.expose()));
        if x.client_secret.is_none() {
            let _ = write!(
                form,
                "&client_id={}",
                portcullis_pipeline::openapi::call::encode(&x.client_id)
            );
        }
        let (status, _, body) = https::post(
            &url,
            &tls,
            &https::Get {
                target: &url.path,
                headers: &headers,
                connect_timeout: self.cfg.timeout.0,
                io_timeout: self.cfg.timeout.0,
                body_max: ANSWER_BYTES_MAX,
                header: "",
            },
            "application/x-www-form-urlencoded",
            form.as_bytes(),
        )
        .map_err(|e| what(&e))?;
        let body = Zeroizing::new(body);
        let issued = credential::exchange_result(status, &body).map_err(|e| what(&e))?;
        let margin = self.cfg.expiry_margin.0;
        let valid_for = match issued.expires_in {
            Some(s) => Duration::from_secs(s).saturating_sub(margin),
            None => self.cfg.cache_ttl.0,
        };
        Ok(Resolved {
            secret: Secret::new(issued.access_token),
            valid_for,
        })
    }

    /// Prometheus text for `/metrics`: lookups and failures per store (values never appear).
    pub fn metrics(&self) -> String {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        if counts.is_empty() {
            return out;
        }
        let mut rows: Vec<_> = counts.iter().collect();
        rows.sort();
        out.push_str("# HELP portcullis_credential_lookups_total Credential lookups the broker made (cache misses), by store.\n# TYPE portcullis_credential_lookups_total counter\n");
        for (store, (n, _)) in &rows {
            let _ = writeln!(
                out,
                "portcullis_credential_lookups_total{{store=\"{store}\"}} {n}"
            );
        }
        out.push_str("# HELP portcullis_credential_failures_total Credential lookups that failed (the call got credential_unavailable), by store.\n# TYPE portcullis_credential_failures_total counter\n");
        for (store, (_, f)) in &rows {
            let _ = writeln!(
                out,
                "portcullis_credential_failures_total{{store=\"{store}\"}} {f}"
            );
        }
        out
    }
}

/// An embedded reference's name in the store: `path#field` (or `path`).
pub fn embedded_name(r: &SecretRef) -> String {
    match &r.field {
        Some(f) => format!("{}#{f}", r.path),
        None => r.path.clone(),
    }
}

fn describe(w: &Want) -> String {
    match w {
        Want::Secret(r) => format!("secret {r}"),
        Want::Exchange { exchange, .. } => format!("token exchange at {}", exchange.token_endpoint),
    }
}

/// A file store's secret: the file under `dir` (symlinks allowed only where they stay inside it, as
/// Kubernetes secret volumes use them), whole or one string field of its JSON.
fn file_secret(dir: &Path, r: &SecretRef) -> Result<Secret, String> {
    let root = dir
        .canonicalize()
        .map_err(|e| format!("store directory {}: {e}", dir.display()))?;
    let path = root
        .join(&r.path)
        .canonicalize()
        .map_err(|e| format!("{}: {e}", r.path))?;
    if !path.starts_with(&root) {
        return Err(format!("{} leads outside the store's directory", r.path));
    }
    let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", r.path))?;
    if !meta.is_file() || meta.len() > FILE_BYTES_MAX {
        return Err(format!("{} is not a file of at most 64 KiB", r.path));
    }
    let text =
        Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", r.path))?);
    match &r.field {
        None => Ok(Secret::new(
            text.strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text)
                .to_owned(),
        )),
        Some(f) => {
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|_| format!("{} is not JSON (a #field needs a JSON object)", r.path))?;
            v.get(f)
                .and_then(|v| v.as_str())
                .map(|s| Secret::new(s.to_owned()))
                .ok_or_else(|| format!("{} has no string field `{f}`", r.path))
        }
    }
}

impl Bao {
    fn new(name: &str, c: &OpenbaoConfig) -> Result<Bao, String> {
        let what = format!("secrets.stores[{name}]");
        let base =
            config::parse_https_url(&c.address).map_err(|e| format!("{what}.address: {e}"))?;
        let ca = c
            .tls_ca_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::SYSTEM_CA_BUNDLE));
        let tls = https::client_config(c.tls_fingerprint.as_deref(), Some(&ca), &what)?;
        Ok(Bao {
            base,
            mount: c.mount.clone(),
            tls,
            auth: c.auth.clone(),
            token: Mutex::new(None),
        })
    }

    fn req<'a>(&self, target: &'a str, headers: &'a str, cfg: &Secrets) -> https::Get<'a> {
        https::Get {
            target,
            headers,
            connect_timeout: cfg.timeout.0,
            io_timeout: cfg.timeout.0,
            body_max: ANSWER_BYTES_MAX,
            header: "",
        }
    }

    /// Field `#field` of the KV v2 secret at `path`. A token the server no longer accepts (403) is
    /// dropped and the login repeated once.
    fn read(&self, r: &SecretRef, cfg: &Secrets) -> Result<Secret, String> {
        let field = r
            .field
            .as_deref()
            .ok_or("OpenBao references need #field (the key inside the secret)")?;
        let target = format!(
            "{}/v1/{}/data/{}",
            self.base.path.trim_end_matches('/'),
            self.mount,
            r.path
        );
        for attempt in 0..2 {
            let token = self.token(cfg)?;
            let headers = Zeroizing::new(format!("x-vault-token: {}\r\n", token.expose()));
            let (status, _, body) =
                https::get(&self.base, &self.tls, &self.req(&target, &headers, cfg))?;
            let body = Zeroizing::new(body);
            match status {
                200 => {
                    let v: serde_json::Value = serde_json::from_slice(&body)
                        .map_err(|_| "the server's answer is not JSON".to_owned())?;
                    return v
                        .pointer("/data/data")
                        .and_then(|d| d.get(field))
                        .and_then(|s| s.as_str())
                        .map(|s| Secret::new(s.to_owned()))
                        .ok_or_else(|| format!("the secret has no string field `{field}`"));
                }
                404 => return Err("no such secret".into()),
                403 if attempt == 0 => {
                    *self.token.lock().unwrap_or_else(PoisonError::into_inner) = None;
                }
                s => return Err(format!("the server answered HTTP {s}")),
            }
        }
        Err("the server refuses the gateway's token (HTTP 403)".into())
    }

    /// The token to present: held, renewed at half its lease, or obtained anew.
    fn token(&self, cfg: &Secrets) -> Result<Secret, String> {
        let mut held = self.token.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = held.as_ref() {
            match t.renew_at {
                Some(at) if Instant::now() >= at => {
                    let renewed = if t.renewable {
                        self.renew(&t.token, cfg).ok()
                    } else {
                        None
                    };
                    *held = renewed;
                }
                _ => return Ok(t.token.clone()),
            }
            if let Some(t) = held.as_ref() {
                return Ok(t.token.clone());
            }
        }
        let fresh = self.login(cfg)?;
        let token = fresh.token.clone();
        *held = Some(fresh);
        Ok(token)
    }

    fn login(&self, cfg: &Secrets) -> Result<BaoToken, String> {
        match &self.auth {
            OpenbaoAuth::TokenFile(path) => {
                let t = Zeroizing::new(
                    std::fs::read_to_string(path)
                        .map_err(|e| format!("token file {}: {e}", path.display()))?,
                );
                Ok(BaoToken {
                    token: Secret::new(t.trim().to_owned()),
                    renew_at: None,
                    renewable: false,
                })
            }
            OpenbaoAuth::TokenEnv(var) => std::env::var(var)
                .map(|t| BaoToken {
                    token: Secret::new(t.trim().to_owned()),
                    renew_at: None,
                    renewable: false,
                })
                .map_err(|_| format!("environment variable {var} is not set")),
            OpenbaoAuth::Approle {
                role_id,
                secret_id_file,
                mount,
            } => {
                let secret_id =
                    Zeroizing::new(std::fs::read_to_string(secret_id_file).map_err(|e| {
                        format!("secret id file {}: {e}", secret_id_file.display())
                    })?);
                let body = Zeroizing::new(
                    serde_json::json!({"role_id": role_id, "secret_id": secret_id.trim()})
                        .to_string(),
                );
                let target = format!(
                    "{}/v1/auth/{mount}/login",
                    self.base.path.trim_end_matches('/')
                );
                let (status, _, answer) = https::post(
                    &self.base,
                    &self.tls,
                    &self.req(&target, "", cfg),
                    "application/json",
                    body.as_bytes(),
                )?;
                if status != 200 {
                    return Err(format!("AppRole login refused (HTTP {status})"));
                }
                lease_token(&Zeroizing::new(answer))
            }
        }
    }

    fn renew(&self, token: &Secret, cfg: &Secrets) -> Result<BaoToken, String> {
        let target = format!(
            "{}/v1/auth/token/renew-self",
            self.base.path.trim_end_matches('/')
        );
        let headers = Zeroizing::new(format!("x-vault-token: {}\r\n", token.expose()));
        let (status, _, answer) = https::post(
            &self.base,
            &self.tls,
            &self.req(&target, &headers, cfg),
            "application/json",
            b"{}",
        )?;
        if status != 200 {
            return Err(format!("token renewal refused (HTTP {status})"));
        }
        lease_token(&Zeroizing::new(answer))
    }
}

/// `auth.client_token` and its lease from a login or renewal answer.
fn lease_token(answer: &[u8]) -> Result<BaoToken, String> {
    let v: serde_json::Value =
        serde_json::from_slice(answer).map_err(|_| "the login answer is not JSON".to_owned())?;
    let token = v
        .pointer("/auth/client_token")
        .and_then(|t| t.as_str())
        .ok_or("the login answer has no auth.client_token")?;
    let lease = v
        .pointer("/auth/lease_duration")
        .and_then(|l| l.as_u64())
        .unwrap_or(0);
    let renewable = v
        .pointer("/auth/renewable")
        .and_then(|r| r.as_bool())
        .unwrap_or(false);
    Ok(BaoToken {
        token: Secret::new(token.to_owned()),
        renew_at: (lease > 0).then(|| Instant::now() + Duration::from_secs(lease / 2)),
        renewable,
    })
}

/// What one core has resolved, until each entry's lifetime ends.
#[derive(Debug, Default)]
pub struct CoreCache {
    entries: HashMap<String, (Secret, Instant)>,
}

/// Entries one core keeps, at most; a full cache drops what expired, then everything.
const CACHE_MAX: usize = 4096;

impl CoreCache {
    pub fn get(&self, key: &str, now: Instant) -> Option<Secret> {
        self.entries
            .get(key)
            .filter(|(_, until)| now < *until)
            .map(|(s, _)| s.clone())
    }

    pub fn put(&mut self, key: String, secret: Secret, until: Instant, now: Instant) {
        if self.entries.len() >= CACHE_MAX {
            self.entries.retain(|_, (_, u)| now < *u);
            if self.entries.len() >= CACHE_MAX {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (secret, until));
    }
}
