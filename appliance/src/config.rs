//! The appliance's configuration: YAML file, embedded defaults, and validation with key paths.
//!
//! Every limit lives here with its safe default and the reason for it. Unknown keys are errors, so a typo
//! never silently falls back to a default; a bad file fails at start naming the key path and the problem.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use portcullis_pipeline::names;

#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The YAML does not fit the schema: the key path and what serde said.
    Invalid { path: String, message: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, error } => {
                write!(f, "cannot read config {}: {error}", path.display())
            }
            ConfigError::Invalid { path, message } => write!(f, "config key `{path}`: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// A duration in the file: `200us`, `250ms`, `5s`, `2m`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Dur).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration (use e.g. 200us, 250ms, 5s, 2m, 1h)"
            ))
        })
    }
}

/// The longest `idle_poll` accepted.
const IDLE_POLL_MAX: Duration = Duration::from_millis(10);

pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where LMDB, audit segments and the generated TLS material live. Created 0700.
    pub data_dir: PathBuf,
    /// Runtime threads, one per core; 0 = every core the process may run on.
    pub cores: usize,
    pub listen: Listen,
    pub upstreams: Vec<UpstreamConfig>,
    /// How upstream names appear to agents: `prefixed` (`UPSTREAM__tool`, `UPSTREAM+uri`) or
    /// `passthrough` (unchanged; only with exactly one upstream, since two could share a name).
    pub naming: NamingMode,
    pub limits: Limits,
    pub storage: Storage,
    pub pinning: Pinning,
    /// Identifies this appliance in session ids of a fleet (0..=65535).
    pub node_id: u16,
    /// I/O driver of the cores and the admin thread: `auto` (io_uring where the kernel offers it, else
    /// epoll), or force one.
    pub driver: Driver,
    /// After a request starts or ends, a core keeps polling its driver this long before it sleeps in the
    /// kernel (`crate::runtime::IdlePoll`): fewer wakeups, lower latency at low load, for CPU spent while
    /// traffic comes. `0ms` turns it off.
    pub idle_poll: Dur,
    /// Hybrid mode: follow a remote control plane's snapshots instead of approving locally.
    pub follow: Option<Follow>,
    /// How agents prove who they are besides the control plane's API keys: JWTs from identity providers.
    pub identity: Identity,
    /// Where the credentials the gateway presents to upstreams come from (`crate::broker`).
    pub secrets: Secrets,
    /// The audit trail under `DATA_DIR/audit` (`crate::audit`).
    pub audit: Audit,
    /// TLS to `https://` capability endpoints.
    pub upstream_tls: UpstreamTls,
    /// Keeping sessions across restarts (`crate::persist`).
    pub sessions: Sessions,
    /// The operators' web console on the admin listener (`crate::console`).
    pub console: Console,
    /// Active checks of the upstreams for the health document (`crate::health`).
    pub health: Health,
    /// What `/metrics` breaks counts down by (`crate::metrics`).
    pub metrics: MetricsConfig,
}

/// The web console, loaded from `console:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Console {
    /// Serve the console at `/console/` on the admin listener.
    pub enabled: bool,
    /// A console login ends after this long without a request…
    pub session_idle: Dur,
    /// …and after this long in any case.
    pub session_max: Dur,
    /// Console logins held at once; past it the oldest is ended.
    pub logins_max: usize,
    /// Where the benchmark result files are read from (`bench/results` of a checkout). Default:
    /// `DATA_DIR/bench`, else `bench/results` under the working directory if it exists.
    pub bench_dir: Option<PathBuf>,
}

impl Default for Console {
    fn default() -> Self {
        Console {
            enabled: true,
            session_idle: Dur(Duration::from_secs(30 * 60)),
            session_max: Dur(Duration::from_secs(12 * 3600)),
            logins_max: 64,
            bench_dir: None,
        }
    }
}

/// Upstream health checks, loaded from `health:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// How often each upstream is checked while it answers.
    pub check_interval: Dur,
    /// How long one check may take.
    pub check_timeout: Dur,
    /// Failed checks back off (doubling from `check_interval`) up to this.
    pub backoff_max: Dur,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            check_interval: Dur(Duration::from_secs(10)),
            check_timeout: Dur(Duration::from_secs(2)),
            backoff_max: Dur(Duration::from_secs(300)),
        }
    }
}

/// Metric cardinality bounds, loaded from `metrics:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Agents counted by name in `portcullis_agent_requests_total`; later ones count as `other`.
    pub agents_max: usize,
    /// Tools counted by name in `portcullis_tool_calls_total`; later ones count as `other`.
    pub tools_max: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            agents_max: 64,
            tools_max: 256,
        }
    }
}

/// Session persistence, loaded from `sessions:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sessions {
    /// Keep session records (and revocation holds) in `DATA_DIR/sessions/` so that sessions survive a
    /// restart; their upstream sessions are opened again on the next request.
    pub persist: bool,
    /// How often each core writes the sessions that changed. A crash loses at most this much of
    /// session activity; revocations and holds are written before the operator is answered.
    pub persist_interval: Dur,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            persist: true,
            persist_interval: Dur(Duration::from_secs(1)),
        }
    }
}

/// How `https://` upstreams are trusted, loaded from `upstream_tls:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTls {
    /// PEM file of the CA certificates that issue upstreams' certificates (default: the system's
    /// bundle). Their names are checked against the endpoint's host.
    pub ca_file: Option<PathBuf>,
}

/// The audit trail, loaded from `audit:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    /// `durable`: a response is released only once its record is on disk (group commit with
    /// `fdatasync`). `async`: records are written at once and synced within `flush_interval`; a crash
    /// loses at most that much.
    pub mode: AuditMode,
    /// A segment is closed (with a signed checkpoint) and a new one begun past this size.
    pub segment_bytes: u64,
    /// The disk budget of the whole trail; at it, calls are refused with `audit_unavailable` (fail
    /// closed) until space is freed.
    pub max_bytes: u64,
    /// A signed checkpoint every this many records (and at every segment end and shutdown).
    pub checkpoint_every: u64,
    /// `async` mode: the bound on how long a written record waits for `fdatasync`.
    pub flush_interval: Dur,
    /// `async` mode: after each write the writer lets records gather this long (at most
    /// `flush_interval`) before it writes again, so a busy core does not wake it once per record. `0s`
    /// writes each record at once.
    pub async_gather: Dur,
    /// Records written (and synced) together at most.
    pub batch_max: usize,
    /// Stream every record to a syslog collector (RFC 5424 over TCP or TLS, octet-counted).
    pub syslog: Option<SyslogConfig>,
    /// At the disk budget: `fail_closed` (calls get `audit_unavailable`), or `drop_oldest_exported`
    /// (delete the oldest segments already delivered to syslog or marked by `audit export --mark`, and
    /// fail closed only when none are).
    pub at_budget: AtBudget,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AtBudget {
    #[default]
    FailClosed,
    DropOldestExported,
}

/// The SIEM's syslog collector, loaded from `audit.syslog`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `host:port`.
    pub address: String,
    /// TLS (RFC 5425), verified by `tls_ca_file` (default: the system bundle) or a pinned fingerprint.
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
    /// Send OCSF API Activity events instead of Portcullis records.
    #[serde(default)]
    pub ocsf: bool,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuditMode {
    #[default]
    Durable,
    Async,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            mode: AuditMode::Durable,
            segment_bytes: 64 << 20,
            max_bytes: 16 << 30,
            checkpoint_every: 1000,
            flush_interval: Dur(Duration::from_millis(200)),
            async_gather: Dur(Duration::from_millis(1)),
            batch_max: 1024,
            syslog: None,
            at_budget: AtBudget::FailClosed,
        }
    }
}

/// The credential broker's stores and caching, loaded from `secrets:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Secrets {
    /// The embedded store's key: a file of 64 hex digits, mode 600, kept outside the data dir (a copied
    /// data dir must not carry its own key). Without it (and without `PORTCULLIS_SECRETS_KEY` in the
    /// environment) the embedded store is off.
    pub key_file: Option<PathBuf>,
    /// How long a resolved secret is reused before its store is asked again: the bound on how long a
    /// rotated secret keeps being presented.
    pub cache_ttl: Dur,
    /// Bound on one store lookup or token exchange; past it the call gets `credential_unavailable`.
    pub timeout: Dur,
    /// Exchanged tokens are dropped this long before they expire, so none is presented on its last breath.
    pub expiry_margin: Dur,
    /// TLS trust for token endpoints (`delegated`): CA certificates (default: the system's bundle) or a
    /// pinned certificate fingerprint.
    pub exchange_tls_ca_file: Option<PathBuf>,
    pub exchange_tls_fingerprint: Option<String>,
    /// Named external stores; references name them as `NAME/path#field`. `embedded` is built in.
    pub stores: Vec<StoreConfig>,
}

impl Default for Secrets {
    fn default() -> Self {
        Secrets {
            key_file: None,
            cache_ttl: Dur(Duration::from_secs(60)),
            timeout: Dur(Duration::from_secs(5)),
            expiry_margin: Dur(Duration::from_secs(30)),
            exchange_tls_ca_file: None,
            exchange_tls_fingerprint: None,
            stores: Vec::new(),
        }
    }
}

/// One external secret store, loaded from `secrets.stores[]`. (No `deny_unknown_fields` here: serde
/// cannot combine it with `flatten`; `StoreKind` refuses unknown keys instead.)
#[derive(Clone, Debug, Deserialize)]
pub struct StoreConfig {
    pub name: String,
    #[serde(flatten)]
    pub kind: StoreKind,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreKind {
    /// `NAME/VAR` reads the environment variable `PREFIX` + `VAR`. The prefix is required, so a
    /// capability cannot name any variable of the process (such as the embedded store's key).
    Env { prefix: String },
    /// `NAME/path` reads the file `dir/path` (trailing newline dropped); `NAME/path#field` reads the file
    /// as a JSON object and takes its string `field`. For systemd and container credentials.
    File { dir: PathBuf },
    /// OpenBao or HashiCorp Vault, KV version 2: `NAME/path#field` is field `field` of the secret at
    /// `path` under `mount`.
    Openbao(OpenbaoConfig),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenbaoConfig {
    /// `https://host:port` of the server.
    pub address: String,
    /// The KV v2 mount (default `secret`).
    #[serde(default = "default_kv_mount")]
    pub mount: String,
    /// TLS trust: CA certificates (default: the system's bundle) or a pinned certificate fingerprint.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
    /// How the gateway logs in: a token from a file or an environment variable, or AppRole.
    pub auth: OpenbaoAuth,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OpenbaoAuth {
    TokenFile(PathBuf),
    TokenEnv(String),
    /// AppRole login; the secret id is read from a file (mode 600). The token it yields is renewed at
    /// half its lease and the login repeated when renewal fails.
    Approle {
        role_id: String,
        secret_id_file: PathBuf,
        #[serde(default = "default_approle_mount")]
        mount: String,
    },
}

fn default_kv_mount() -> String {
    "secret".into()
}

fn default_approle_mount() -> String {
    "approle".into()
}

/// Agent identity, loaded from `identity:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Identity {
    /// This gateway's resource URI(s) (RFC 8707), e.g. `https://gateway.example/mcp`: a JWT must name one
    /// of them in `aud`, and the first is the `resource` of the protected-resource metadata. Required
    /// with `jwt`; not derived from the request's `Host`, which the agent chooses.
    pub resource: Vec<String>,
    /// Identity providers whose JWT access tokens identify agents.
    pub jwt: Vec<JwtIssuer>,
    /// Client certificates on the TLS listener, verified against these CAs, name agents.
    pub mtls: Option<Mtls>,
}

/// Agent identity by TLS client certificate, loaded from `identity.mtls`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mtls {
    /// PEM file of the CA certificates that issue agents' client certificates.
    pub ca_file: PathBuf,
    /// Which name of the certificate is the agent's: `common_name` (default), `uri_san` (the first URI
    /// SAN starting with `uri_prefix`, without it; e.g. SPIFFE IDs) or `dns_san`.
    #[serde(default)]
    pub agent_from: CertAgentFrom,
    #[serde(default)]
    pub uri_prefix: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CertAgentFrom {
    #[default]
    CommonName,
    UriSan,
    DnsSan,
}

/// One identity provider, loaded from `identity.jwt[]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuer {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// `https://` URL of its JSON Web Key Set.
    pub jwks_url: String,
    /// PEM file of CA certificates that verify the JWKS endpoint (default: the system's bundle).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Or pin the JWKS endpoint's certificate by SHA-256 fingerprint.
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
    /// Signature algorithms accepted: any of RS256, ES256, EdDSA (default all three). HMAC and `none`
    /// are never accepted.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The claim whose value is the registered agent's name.
    #[serde(default = "default_agent_claim")]
    pub agent_claim: String,
    /// Clock skew tolerated on `exp`/`nbf`/`iat`; at most 5m.
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// How often the JWKS is fetched again on its own.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Dur,
    /// How long fetched keys stay usable while the JWKS endpoint cannot be reached; past it this issuer's
    /// tokens are refused (fail closed).
    #[serde(default = "default_jwks_max_age")]
    pub jwks_max_age: Dur,
    /// Least time between fetches a token with an unknown `kid` can cause, so a storm of made-up kids
    /// costs the identity provider one request per interval.
    #[serde(default = "default_unknown_kid_interval")]
    pub unknown_kid_refresh_min: Dur,
}

/// Where the system's CA bundle is on Debian and its derivatives (and the appliance image).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}

fn default_agent_claim() -> String {
    "sub".into()
}

fn default_leeway() -> Dur {
    Dur(Duration::from_secs(60))
}

fn default_jwks_refresh() -> Dur {
    Dur(Duration::from_secs(300))
}

fn default_jwks_max_age() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}

fn default_unknown_kid_interval() -> Dur {
    Dur(Duration::from_secs(30))
}

/// Hybrid mode, loaded from `follow:` (or `up --control-plane URL --trust-key KEY ...`): this appliance is
/// a data plane that serves what a remote control plane activates, and nothing approved locally.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Follow {
    /// `https://host:port` of the control plane's sync listener (its `listen.sync`).
    pub control_plane: String,
    /// The control plane's snapshot signing key (`portcullis signing-key` there): 64 hex digits. Only
    /// snapshots and activations signed with it are taken.
    pub trust_key: String,
    /// File holding the control plane's sync token (its `DATA_DIR/sync.token`); read at start.
    pub token_file: PathBuf,
    /// SHA-256 fingerprint of the control plane's TLS certificate, as it prints at start: pins that
    /// certificate (for the self-signed one it generates).
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
    /// PEM file of CA certificates that verify the control plane's certificate (and its name), instead.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Longest a poll waits for the next activation before asking again. Shorter costs more requests;
    /// longer delays noticing a silently dropped connection.
    #[serde(default = "default_poll_wait")]
    pub poll_wait: Dur,
}

fn default_poll_wait() -> Dur {
    Dur(Duration::from_secs(25))
}

/// On-disk stores, loaded from `storage:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Address space reserved for the LMDB registry (not disk used). A write past it fails cleanly with
    /// `registry_full`; raising it takes a restart.
    pub lmdb_map_bytes: usize,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            lmdb_map_bytes: portcullis_storage::registry::DEFAULT_MAP_BYTES,
        }
    }
}

/// How the data plane watches approved tool definitions, loaded from `pinning:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pinning {
    /// How often every served capability's tools are listed and compared with the pinned definitions
    /// (also done at activation and when an upstream says its tool list changed). A changed tool is
    /// withheld from the next check on; one minute bounds how long a silent change goes unnoticed
    /// without listing every upstream constantly.
    pub recheck_interval: Dur,
    /// How long an activation (a rollback, a restart, a followed snapshot) waits for each upstream's
    /// tool list before its snapshot is served. Pins are checked before anything is served from them;
    /// an upstream that does not answer in time keeps its pins, and its calls fail on their own.
    pub activation_check_timeout: Dur,
}

impl Default for Pinning {
    fn default() -> Self {
        Pinning {
            recheck_interval: Dur(Duration::from_secs(60)),
            activation_check_timeout: Dur(Duration::from_secs(5)),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NamingMode {
    #[default]
    Prefixed,
    Passthrough,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    #[default]
    Auto,
    IoUring,
    Epoll,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("portcullis-data"),
            cores: 0,
            listen: Listen::default(),
            upstreams: Vec::new(),
            naming: NamingMode::Prefixed,
            limits: Limits::default(),
            storage: Storage::default(),
            pinning: Pinning::default(),
            node_id: 0,
            driver: Driver::Auto,
            idle_poll: Dur(Duration::from_micros(200)),
            follow: None,
            identity: Identity::default(),
            secrets: Secrets::default(),
            audit: Audit::default(),
            upstream_tls: UpstreamTls::default(),
            sessions: Sessions::default(),
            console: Console::default(),
            health: Health::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// MCP over HTTPS (TLS; ALPN http/1.1). `https://ADDR/mcp`.
    pub mcp_tls: Option<SocketAddr>,
    /// MCP over plain HTTP. Off by default; meant for loopback.
    pub mcp_plain: Option<SocketAddr>,
    /// MCP over HTTP/3 on `mcp_tls`'s port (UDP), advertised by `Alt-Svc` on the TCP listeners.
    pub h3: bool,
    /// JSON-RPC methods an HTTP/3 client may send in 0-RTT early data (e.g. `tools/list`, `ping`); empty
    /// (the default) leaves 0-RTT off. Early requests for other methods wait for the handshake.
    pub h3_early_data_methods: Vec<String>,
    /// Admin and health: `/healthz`, `/readyz`, `/metrics`. Loopback by default.
    pub admin: SocketAddr,
    /// Origins allowed in an `Origin` header (DNS-rebinding defence); loopback origins always pass.
    pub allowed_origins: Vec<String>,
    /// Control plane in hybrid deployments: where data planes pull signed snapshots (HTTPS with the MCP
    /// listener's certificate, `DATA_DIR/sync.token` as bearer). Off by default.
    pub sync: Option<SocketAddr>,
    /// Serve the admin listener (API, console, health, metrics) over HTTPS with the appliance's
    /// certificate instead of plain HTTP. Off by default: it listens on loopback.
    pub admin_tls: bool,
    /// With `admin_tls`: PEM file of the CAs whose client certificates the admin listener requires
    /// (mutual TLS). A connection without one, or with one they do not verify, fails its handshake; the
    /// admin token is still required on top.
    pub admin_client_ca: Option<PathBuf>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            mcp_tls: Some(SocketAddr::from(([127, 0, 0, 1], 8443))),
            mcp_plain: None,
            h3: true,
            h3_early_data_methods: Vec::new(),
            admin: SocketAddr::from(([127, 0, 0, 1], 8444)),
            allowed_origins: Vec::new(),
            sync: None,
            admin_tls: false,
            admin_client_ca: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `[a-z0-9-]`, starting with a letter: the prefix of its tool names (`NAME__tool`).
    pub name: String,
    /// `http://host:port/path` of the upstream's MCP endpoint.
    pub url: String,
}

/// Per-request and per-core bounds, loaded from `limits:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Request body bytes; past it the request is refused with 413 `payload_too_large` before parsing.
    /// 4 MiB: tool arguments are JSON, and larger payloads belong in resources.
    pub body_bytes_max: usize,
    /// JSON nesting depth; deeper bodies get `json_too_deep`. 64 covers real schemas with room.
    pub json_depth_max: u32,
    /// Request line plus headers, bytes; past it 431 `headers_too_large`. 16 KiB, like common proxies' default.
    pub header_bytes_max: usize,
    /// Headers per request; past it 431.
    pub headers_count_max: usize,
    /// Time for a request's headers to arrive once its first byte has (slowloris defence).
    pub header_read_timeout: Dur,
    /// Time for a request's body to arrive once its headers have.
    pub request_timeout: Dur,
    /// Idle time on a keep-alive connection before the gateway closes it.
    pub idle_timeout: Dur,
    /// Connecting to an upstream.
    pub upstream_connect_timeout: Dur,
    /// From sending a request upstream until its response headers (and each further SSE event) arrive.
    pub upstream_response_timeout: Dur,
    /// An upstream JSON body or one SSE event, bytes; larger is `upstream_protocol_error`.
    pub upstream_body_bytes_max: usize,
    /// Open agent connections per core; at the bound new connections are closed at once.
    pub connections_per_core_max: usize,
    /// Concurrent HTTP/2 streams per agent connection (SETTINGS_MAX_CONCURRENT_STREAMS); 100 is the
    /// RFC 9113 recommended minimum, enough for an agent's parallel calls.
    pub h2_streams_per_connection_max: u32,
    /// Concurrent HTTP/3 request streams per QUIC connection (the peer's initial_max_streams_bidi).
    pub h3_streams_per_connection_max: u32,
    /// Handshakes in progress on one core past which a new client must first prove its address with a
    /// QUIC Retry (a round trip more for it, no crypto work for the gateway under a flood); 0: always.
    pub h3_handshakes_before_retry: usize,
    /// Idle pooled connections per upstream per core.
    pub upstream_idle_per_core_max: usize,
    /// Live sessions per core; at the bound `initialize` gets 503 `overloaded`.
    pub sessions_per_core_max: usize,
    /// Live sessions of one agent across all cores; past it `initialize` gets 429 `session_limit` (a
    /// flood of `initialize` calls from one agent cannot crowd out the others).
    pub sessions_per_agent_max: usize,
    /// Session idle time before it expires (404 `session_expired`, the client re-initializes).
    pub session_idle: Dur,
    /// Longest session life, however active.
    pub session_duration_max: Dur,
    /// Open streams of one session (a 2025-11-25 GET stream, 2026-07-28 `subscriptions/listen`); past
    /// it a new stream gets 429 `stream_limit`.
    pub streams_per_session_max: u32,
    /// How long revoking an agent or an API key refuses it afterwards (403 `access_revoked`), so that a
    /// revoked client cannot simply start over; 0s holds nothing. Disabling the agent or revoking the
    /// key in the control plane is what lasts.
    pub revocation_hold: Dur,
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub drain_timeout: Dur,
    /// An admin API request body, bytes (one record or policy per request).
    pub admin_body_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes_max: 4 << 20,
            json_depth_max: 64,
            header_bytes_max: 16 << 10,
            headers_count_max: 64,
            header_read_timeout: Dur(Duration::from_secs(10)),
            request_timeout: Dur(Duration::from_secs(30)),
            idle_timeout: Dur(Duration::from_secs(120)),
            upstream_connect_timeout: Dur(Duration::from_secs(5)),
            upstream_response_timeout: Dur(Duration::from_secs(60)),
            upstream_body_bytes_max: 16 << 20,
            connections_per_core_max: 10_000,
            h2_streams_per_connection_max: 100,
            h3_streams_per_connection_max: 100,
            h3_handshakes_before_retry: 64,
            upstream_idle_per_core_max: 64,
            sessions_per_core_max: 10_000,
            sessions_per_agent_max: 256,
            session_idle: Dur(Duration::from_secs(30 * 60)),
            session_duration_max: Dur(Duration::from_secs(24 * 3600)),
            streams_per_session_max: 8,
            revocation_hold: Dur(Duration::from_secs(3600)),
            drain_timeout: Dur(Duration::from_secs(10)),
            admin_body_bytes_max: 1 << 20,
        }
    }
}

/// An upstream's endpoint, parsed once at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
    /// `https://`: the upstream pool speaks TLS to it (`upstream_tls`).
    pub secure: bool,
}

pub fn parse_http_url(url: &str) -> Result<UpstreamUrl, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "must be an http:// URL".to_owned())?;
    parse_authority_path(rest, 80, false)
}

/// An `https://host[:port][/path]` URL (port 443 when left out).
pub fn parse_https_url(url: &str) -> Result<UpstreamUrl, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| "must be an https:// URL".to_owned())?;
    parse_authority_path(rest, 443, true)
}

/// An upstream endpoint: `http://` or `https://`.
pub fn parse_upstream_url(url: &str) -> Result<UpstreamUrl, String> {
    if url.starts_with("https://") {
        parse_https_url(url)
    } else {
        parse_http_url(url).map_err(|_| "must be an http:// or https:// URL".to_owned())
    }
}

fn parse_authority_path(
    rest: &str,
    default_port: u16,
    secure: bool,
) -> Result<UpstreamUrl, String> {
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.to_owned(),
            p.parse::<u16>().map_err(|_| format!("bad port `{p}`"))?,
        ),
        _ => (authority.to_owned(), default_port),
    };
    if host.is_empty() {
        return Err("missing host".to_owned());
    }
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("path contains spaces or control characters".to_owned());
    }
    Ok(UpstreamUrl {
        host,
        port,
        path: path.to_owned(),
        secure,
    })
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            let c = Config::default();
            c.validate()?;
            return Ok(c);
        };
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::from_yaml(&text)
    }

    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let c: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            invalid(&path, e.into_inner().to_string())
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Check the whole configuration (done by `load`; again after command-line flags change it).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.mcp_tls.is_none() && self.listen.mcp_plain.is_none() {
            return Err(invalid(
                "listen",
                "at least one of mcp_tls and mcp_plain must be set",
            ));
        }
        if self.idle_poll.0 > IDLE_POLL_MAX {
            // Past a few milliseconds polling buys no latency (a request that far apart pays one
            // wakeup either way) and only burns the core.
            return Err(invalid(
                "idle_poll",
                format!("at most {}ms", IDLE_POLL_MAX.as_millis()),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            names::validate_upstream_name(&u.name).map_err(|e| {
                invalid(
                    &format!("upstreams[{i}].name"),
                    format!("`{}`: {e:?}", u.name),
                )
            })?;
            if !seen.insert(u.name.as_str()) {
                return Err(invalid(
                    &format!("upstreams[{i}].name"),
                    format!("`{}` is used twice", u.name),
                ));
            }
            parse_http_url(&u.url).map_err(|e| invalid(&format!("upstreams[{i}].url"), e))?;
        }
        if !self.upstreams.is_empty() {
            // Static upstreams are served ungoverned (no identity, policy or approval): a lab mode, so
            // it may only listen where nothing but this machine can reach it.
            let exposed = [
                ("listen.mcp_tls", self.listen.mcp_tls),
                ("listen.mcp_plain", self.listen.mcp_plain),
            ]
            .into_iter()
            .find(|(_, a)| a.is_some_and(|a| !a.ip().is_loopback()));
            if let Some((key, addr)) = exposed {
                return Err(invalid(
                    key,
                    format!(
                        "static `upstreams` are served ungoverned, so only on loopback ({} is not); register them as capabilities and approve a snapshot to serve them elsewhere",
                        addr.map(|a| a.to_string()).unwrap_or_default()
                    ),
                ));
            }
        }
        if self.naming == NamingMode::Passthrough && self.upstreams.len() != 1 {
            return Err(invalid(
                "naming",
                format!(
                    "`passthrough` needs exactly one upstream (there are {}); names of two could collide",
                    self.upstreams.len()
                ),
            ));
        }
        let l = &self.limits;
        let positive: [(&str, usize); 14] = [
            ("console.logins_max", self.console.logins_max),
            ("limits.admin_body_bytes_max", l.admin_body_bytes_max),
            ("storage.lmdb_map_bytes", self.storage.lmdb_map_bytes),
            ("limits.body_bytes_max", l.body_bytes_max),
            ("limits.header_bytes_max", l.header_bytes_max),
            ("limits.headers_count_max", l.headers_count_max),
            ("limits.upstream_body_bytes_max", l.upstream_body_bytes_max),
            (
                "limits.connections_per_core_max",
                l.connections_per_core_max,
            ),
            ("limits.sessions_per_core_max", l.sessions_per_core_max),
            ("limits.sessions_per_agent_max", l.sessions_per_agent_max),
            ("limits.json_depth_max", l.json_depth_max as usize),
            (
                "limits.h2_streams_per_connection_max",
                l.h2_streams_per_connection_max as usize,
            ),
            (
                "limits.streams_per_session_max",
                l.streams_per_session_max as usize,
            ),
            (
                "limits.h3_streams_per_connection_max",
                l.h3_streams_per_connection_max as usize,
            ),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(invalid(k, "must be greater than 0"));
            }
        }
        if l.header_bytes_max < 1024 {
            return Err(invalid("limits.header_bytes_max", "must be at least 1024"));
        }
        let durations = [
            ("limits.header_read_timeout", l.header_read_timeout),
            ("limits.request_timeout", l.request_timeout),
            ("limits.idle_timeout", l.idle_timeout),
            (
                "limits.upstream_connect_timeout",
                l.upstream_connect_timeout,
            ),
            (
                "limits.upstream_response_timeout",
                l.upstream_response_timeout,
            ),
            ("limits.session_idle", l.session_idle),
            ("limits.session_duration_max", l.session_duration_max),
            ("pinning.recheck_interval", self.pinning.recheck_interval),
            (
                "pinning.activation_check_timeout",
                self.pinning.activation_check_timeout,
            ),
            ("secrets.cache_ttl", self.secrets.cache_ttl),
            ("secrets.timeout", self.secrets.timeout),
            ("audit.flush_interval", self.audit.flush_interval),
            ("sessions.persist_interval", self.sessions.persist_interval),
            ("console.session_idle", self.console.session_idle),
            ("console.session_max", self.console.session_max),
            ("health.check_interval", self.health.check_interval),
            ("health.check_timeout", self.health.check_timeout),
            ("health.backoff_max", self.health.backoff_max),
        ];
        for (k, v) in durations {
            if v.0.is_zero() {
                return Err(invalid(k, "must be greater than 0"));
            }
        }
        if let Some(f) = &self.follow {
            self.validate_follow(f)?;
        }
        self.validate_secrets()?;
        if self.audit.segment_bytes < 4096 || self.audit.max_bytes < self.audit.segment_bytes {
            return Err(invalid(
                "audit",
                "segment_bytes must be at least 4096 and max_bytes at least segment_bytes",
            ));
        }
        if self.audit.batch_max == 0 || self.audit.checkpoint_every == 0 {
            return Err(invalid(
                "audit",
                "batch_max and checkpoint_every must be greater than 0",
            ));
        }
        self.validate_identity()
    }

    fn validate_secrets(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::from(["embedded"]);
        for (i, st) in self.secrets.stores.iter().enumerate() {
            let key = |k: &str| format!("secrets.stores[{i}].{k}");
            let name_ok = st.name.starts_with(|c: char| c.is_ascii_lowercase())
                && st
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !name_ok {
                return Err(invalid(
                    &key("name"),
                    "lowercase letters, digits, '-' and '_', starting with a letter",
                ));
            }
            if !seen.insert(st.name.as_str()) {
                return Err(invalid(
                    &key("name"),
                    format!("`{}` is taken (`embedded` is built in)", st.name),
                ));
            }
            match &st.kind {
                StoreKind::Env { prefix } => {
                    if prefix.is_empty() {
                        return Err(invalid(&key("prefix"), "must not be empty"));
                    }
                }
                StoreKind::File { dir } => {
                    if !dir.is_absolute() {
                        return Err(invalid(&key("dir"), "must be an absolute path"));
                    }
                }
                StoreKind::Openbao(b) => {
                    parse_https_url(&b.address).map_err(|e| invalid(&key("address"), e))?;
                    if b.mount.is_empty() || b.mount.contains(['/', '?', '#', ' ']) {
                        return Err(invalid(&key("mount"), "one path segment"));
                    }
                }
            }
        }
        Ok(())
    }

    fn validate_identity(&self) -> Result<(), ConfigError> {
        if self.listen.admin_client_ca.is_some() && !self.listen.admin_tls {
            return Err(invalid(
                "listen.admin_client_ca",
                "client certificates need TLS on the admin listener (listen.admin_tls: true)",
            ));
        }
        let id = &self.identity;
        if id.mtls.is_some() && self.listen.mcp_tls.is_none() {
            return Err(invalid(
                "identity.mtls",
                "client certificates need the TLS listener (listen.mcp_tls)",
            ));
        }
        for (i, r) in id.resource.iter().enumerate() {
            if !(r.starts_with("https://") || r.starts_with("http://")) || r.contains('#') {
                return Err(invalid(
                    &format!("identity.resource[{i}]"),
                    "must be an absolute http(s) URI without a fragment (RFC 8707)",
                ));
            }
        }
        if !id.jwt.is_empty() && id.resource.is_empty() {
            return Err(invalid(
                "identity.resource",
                "required with identity.jwt: the audience tokens must name (e.g. https://gateway.example/mcp)",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, j) in id.jwt.iter().enumerate() {
            let key = |k: &str| format!("identity.jwt[{i}].{k}");
            if j.issuer.is_empty() || !seen.insert(j.issuer.as_str()) {
                return Err(invalid(
                    &key("issuer"),
                    "must be set and differ from the other issuers",
                ));
            }
            parse_https_url(&j.jwks_url).map_err(|e| invalid(&key("jwks_url"), e))?;
            if j.tls_ca_file.is_some() && j.tls_fingerprint.is_some() {
                return Err(invalid(
                    &key("tls_fingerprint"),
                    "set tls_fingerprint or tls_ca_file, not both",
                ));
            }
            if let Some(fp) = &j.tls_fingerprint {
                if parse_fingerprint(fp).is_none() {
                    return Err(invalid(
                        &key("tls_fingerprint"),
                        "must be a SHA-256 fingerprint: 64 hex digits, colons allowed",
                    ));
                }
            }
            if j.algorithms.is_empty() {
                return Err(invalid(
                    &key("algorithms"),
                    "list at least one of RS256, ES256, EdDSA",
                ));
            }
            for a in &j.algorithms {
                if portcullis_pipeline::authn::Alg::parse(a).is_none() {
                    return Err(invalid(
                        &key("algorithms"),
                        format!("`{a}` is not accepted: use RS256, ES256 or EdDSA"),
                    ));
                }
            }
            if j.agent_claim.is_empty() {
                return Err(invalid(&key("agent_claim"), "must name a claim"));
            }
            if j.leeway.0 > Duration::from_secs(portcullis_pipeline::authn::LEEWAY_MAX_S) {
                return Err(invalid(&key("leeway"), "at most 5m"));
            }
            for (k, d) in [
                ("jwks_refresh", j.jwks_refresh),
                ("jwks_max_age", j.jwks_max_age),
                ("unknown_kid_refresh_min", j.unknown_kid_refresh_min),
            ] {
                if d.0.is_zero() {
                    return Err(invalid(&key(k), "must be greater than 0"));
                }
            }
            if j.jwks_max_age.0 < j.jwks_refresh.0 {
                return Err(invalid(
                    &key("jwks_max_age"),
                    "must be at least jwks_refresh",
                ));
            }
        }
        Ok(())
    }

    fn validate_follow(&self, f: &Follow) -> Result<(), ConfigError> {
        parse_https_url(&f.control_plane).map_err(|e| invalid("follow.control_plane", e))?;
        if portcullis_storage::signing::parse_public_key(&f.trust_key).is_none() {
            return Err(invalid(
                "follow.trust_key",
                "must be 64 hex digits (`portcullis signing-key` on the control plane)",
            ));
        }
        match (&f.tls_fingerprint, &f.tls_ca_file) {
            (Some(fp), None) if parse_fingerprint(fp).is_none() => {
                return Err(invalid(
                    "follow.tls_fingerprint",
                    "must be a SHA-256 fingerprint: 64 hex digits, colons allowed",
                ))
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err(invalid(
                    "follow",
                    "set exactly one of tls_fingerprint (pin the control plane's certificate) and tls_ca_file",
                ))
            }
        }
        let wait = f.poll_wait.0;
        if wait < Duration::from_secs(1) || wait > Duration::from_secs(300) {
            return Err(invalid("follow.poll_wait", "must be between 1s and 300s"));
        }
        if !self.upstreams.is_empty() {
            return Err(invalid(
                "upstreams",
                "a data plane following a control plane serves its snapshots, not static upstreams",
            ));
        }
        if self.listen.sync.is_some() {
            return Err(invalid(
                "listen.sync",
                "a data plane following a control plane cannot itself be followed",
            ));
        }
        Ok(())
    }
}

/// A SHA-256 certificate fingerprint: 64 hex digits, optionally separated by colons.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    portcullis_storage::signing::parse_hex(&hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        Config::from_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn idle_poll_parses_and_is_bounded() {
        let base = "listen: {mcp_plain: 127.0.0.1:8080}\n";
        assert_eq!(Config::default().idle_poll.0, Duration::from_micros(200));
        let c = Config::from_yaml(&format!("{base}idle_poll: 0ms\n")).unwrap();
        assert!(c.idle_poll.0.is_zero());
        let c = Config::from_yaml(&format!("{base}idle_poll: 50us\n")).unwrap();
        assert_eq!(c.idle_poll.0, Duration::from_micros(50));
        assert!(err(&format!("{base}idle_poll: 1s\n")).contains("idle_poll"));
        assert!(err(&format!("{base}idle_poll: fast\n")).contains("idle_poll"));
    }

    #[test]
    fn secret_stores_parse_and_refuse_typos() {
        let c = Config::from_yaml(
            "secrets:\n  stores:\n    - {name: env, kind: env, prefix: P_}\n    - {name: files, kind: file, dir: /run/credentials}\n    - name: bao\n      kind: openbao\n      address: https://127.0.0.1:8200\n      auth: {token_env: BAO_TOKEN}\n",
        )
        .unwrap();
        assert_eq!(c.secrets.stores.len(), 3);
        assert!(matches!(c.secrets.stores[2].kind, StoreKind::Openbao(_)));
        assert!(
            err("secrets:\n  stores:\n    - {name: env, kind: env, prefix: P_, prefx: Q}\n")
                .contains("prefx")
        );
        assert!(
            err("secrets:\n  stores:\n    - {name: env, kind: env, prefix: ''}\n")
                .contains("prefix")
        );
        assert!(
            err("secrets:\n  stores:\n    - {name: embedded, kind: env, prefix: P_}\n")
                .contains("taken")
        );
        assert!(
            err("secrets:\n  stores:\n    - {name: f, kind: file, dir: rel}\n")
                .contains("absolute")
        );
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_yaml("{}").unwrap();
        assert_eq!(c.limits.body_bytes_max, 4 << 20);
        assert_eq!(c.listen.mcp_tls, Some("127.0.0.1:8443".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_key_path() {
        assert!(
            err("limits:\n  body_bytes_mux: 3\n").contains("limits"),
            "{}",
            err("limits:\n  body_bytes_mux: 3\n")
        );
        assert!(err("limits:\n  body_bytes_mux: 3\n").contains("body_bytes_mux"));
        assert!(err("limits:\n  idle_timeout: soon\n").contains("limits.idle_timeout"));
        assert!(
            err("upstreams:\n  - name: Bad_Name\n    url: http://127.0.0.1:1/mcp\n")
                .contains("upstreams[0].name")
        );
        assert!(err("upstreams:\n  - name: a\n    url: ftp://x\n").contains("upstreams[0].url"));
        assert!(err("naming: passthrough\n").contains("naming"));
        let exposed = "listen:\n  mcp_plain: 0.0.0.0:8080\nupstreams:\n  - {name: a, url: 'http://127.0.0.1:1/mcp'}\n";
        assert!(
            err(exposed).contains("listen.mcp_plain"),
            "{}",
            err(exposed)
        );
        assert!(err(exposed).contains("only on loopback"));
        let tls = "listen:\n  mcp_tls: '[::]:8443'\nupstreams:\n  - {name: a, url: 'http://127.0.0.1:1/mcp'}\n";
        assert!(err(tls).contains("listen.mcp_tls"));
        assert!(err("naming: sideways\n").contains("naming"));
        assert!(err("limits:\n  body_bytes_max: 0\n").contains("limits.body_bytes_max"));
        let twice =
            "upstreams:\n  - {name: a, url: 'http://h:1/'}\n  - {name: a, url: 'http://h:2/'}\n";
        assert!(err(twice).contains("used twice"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("200us"), Some(Duration::from_micros(200)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5d"), None);
    }

    #[test]
    fn urls() {
        let u = parse_http_url("http://127.0.0.1:9000/mcp").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 9000, "/mcp")
        );
        assert_eq!(parse_http_url("http://example").unwrap().port, 80);
        assert!(parse_http_url("http://h:1/a b").is_err());
        assert_eq!(parse_https_url("https://cp.example").unwrap().port, 443);
        assert!(parse_https_url("http://cp.example").is_err());
    }

    #[test]
    fn jwt_issuers_need_a_resource_and_sound_settings() {
        let ok = "identity:\n  resource: ['https://gw.example/mcp']\n  jwt:\n    - issuer: https://idp\n      jwks_url: https://idp/jwks\n";
        let c = Config::from_yaml(ok).unwrap();
        let j = &c.identity.jwt[0];
        assert_eq!(
            (j.agent_claim.as_str(), j.leeway.0),
            ("sub", Duration::from_secs(60))
        );
        assert_eq!(j.algorithms, ["RS256", "ES256", "EdDSA"]);
        assert!(
            err(&ok.replace("  resource: ['https://gw.example/mcp']\n", ""))
                .contains("identity.resource")
        );
        assert!(err(&ok.replace("https://gw", "gw")).contains("identity.resource[0]"));
        assert!(err(&ok.replace("https://idp/jwks", "http://idp/jwks")).contains("jwks_url"));
        assert!(err(&format!("{ok}      algorithms: [HS256]\n")).contains("HS256"));
        assert!(err(&format!("{ok}      leeway: 10m\n")).contains("leeway"));
        assert!(err(&format!("{ok}      jwks_max_age: 1m\n")).contains("jwks_max_age"));
        assert!(err(&format!(
            "{ok}    - issuer: https://idp\n      jwks_url: https://idp/k\n"
        ))
        .contains("issuer"));
    }

    #[test]
    fn follow_needs_a_key_a_pin_and_no_static_upstreams() {
        let key = "ab".repeat(32);
        let fp = ["AB"; 32].join(":");
        let ok = format!(
            "follow:\n  control_plane: https://cp:8445\n  trust_key: {key}\n  token_file: /t\n  tls_fingerprint: '{fp}'\n"
        );
        let c = Config::from_yaml(&ok).unwrap();
        assert_eq!(c.follow.unwrap().poll_wait.0, Duration::from_secs(25));
        assert!(err(&ok.replace(&key, "abc")).contains("follow.trust_key"));
        assert!(err(&ok.replace("https://", "http://")).contains("follow.control_plane"));
        assert!(err(&ok.replace(&fp, "AB:CD")).contains("follow.tls_fingerprint"));
        assert!(err(&format!("{ok}  tls_ca_file: /ca.pem\n")).contains("exactly one"));
        assert!(err(&format!(
            "{ok}upstreams:\n  - {{name: a, url: 'http://h:1/'}}\n"
        ))
        .contains("upstreams"));
        assert!(err(&format!("{ok}listen:\n  sync: 127.0.0.1:1\n")).contains("listen.sync"));
    }
}
