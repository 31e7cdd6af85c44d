//! The operator's CLI for the control plane: each command is one or two calls to the admin API.
//!
//! `portcullis capability|agent|policy add|list|show|edit|remove|history`, `agent key issue|list|revoke`,
//! `approve`, `snapshot list|show|diff|activate`, `signing-key`. Record fields are given as `--field value`
//! (`--tag`/`--group` repeat or take commas); `edit` fetches the record, changes the given fields and puts
//! it back. Tables for people by default, `--json` for scripts. The CLI speaks plain HTTP to the admin
//! listener, which is loopback by default.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use serde_json::{json, Map, Value};

use crate::config::UpstreamUrl;

pub const USAGE: &str = "\
CONTROL PLANE (talks to the admin API of a running `portcullis up`):
    portcullis capability add NAME --kind mcp|openapi --owner O --risk low|medium|high|critical
                               --environment E --endpoint URL [--tag T]... [--description D] [--status S]
    portcullis agent add NAME --owner O --surface S --environment E
                              --credential-mode service|delegated|agent-scoped [--group G]... [--status S]
                              [--limit [SCOPE=]COUNT/PERIOD]...   (600/1m, alpha=100/1h, alpha__add=10/1d)
                              [--session-idle 15m] [--session-duration-max 8h] [--session-max N]
                              [--session-streams-max N]   (the agent's own session bounds)
    portcullis policy add ID (--file F | --text T) [--description D]
    portcullis policy explain --agent A --tool CAP__TOOL [--action call|discover] [--args JSON]
                              [--context JSON] [--snapshot active|draft|N]
                               (the decision, the deciding policies and the reason, as a request gets it)
    portcullis policy test FILE [--snapshot active|draft|N]
                               (a table of expected decisions; exits 1 on any mismatch)
    portcullis capability|agent|policy list | show NAME | edit NAME --field V... | remove NAME | history NAME
    portcullis agent key issue|list AGENT    portcullis agent key revoke AGENT KEY_ID
    portcullis apply -f FILE [--dry-run] [--approve [--note N]]
                               (YAML desired state: capabilities, agents, policies; records not in
                               the file are removed; a policy may give `file:` instead of `text:`)
    portcullis openapi import CAP FILE|-|URL  (an openapi capability's document, JSON or YAML; shows its
                                               operations and what changed since the last import; an
                                               https:// URL is fetched, verified by --ca-file F (default
                                               the system bundle) or --fingerprint SHA256)
    portcullis openapi ops CAP                (operations: convertible or why not, selected or not)
    portcullis openapi select CAP SELECTOR... (operationId, 'METHOD /path', tag:T or *; tags and * pick
                                               only GET/HEAD: writes must be named) [--redirects N]
                                               (follow up to N redirects within the base URL; 0)
    portcullis secret put|rotate embedded/PATH[#FIELD]   (the value is read from stdin; rotate needs it to exist)
    portcullis secret list | remove embedded/PATH[#FIELD]  (names and versions; values are never shown)
    portcullis secret check STORE/PATH[#FIELD]   (whether a reference of any store resolves, not its value)
    portcullis secret keygen FILE                (a new embedded-store key, mode 600; keep it outside the
                                                 data dir and name it in secrets.key_file)
SESSIONS (of a running `portcullis up`, every core):
    portcullis session list | show ID
    portcullis session revoke ID | revoke --agent A | revoke --key KEY_ID   [--hold 30m]
                               (an agent or key stays refused for the hold: limits.revocation_hold)
    portcullis session holds | lift --agent A | lift --key KEY_ID
                               (at once: the next request gets session_revoked, open streams end,
                                upstream sessions are ended, the audit trail names you)
AUDIT TRAIL (reads DATA_DIR/audit directly; works with the appliance running or stopped):
    portcullis audit verify [--public-key HEX]   (CRCs, chains, checkpoint signatures; exits 1 on a break)
    portcullis audit tail [--n N] [--follow]      (the newest records, all cores merged by time)
    portcullis audit search [--since 1h] [--from MS] [--to MS] [--agent A] [--tool T] [--decision D]
                            [--reason R]
    portcullis audit export [--format jsonl|ocsf] [--out FILE] [search filters] [--mark]
                            (progress on stderr; --mark: a complete export, its segments may be dropped
                             at the disk budget under audit.at_budget: drop_oldest_exported)

    portcullis approve [--note N] [--no-activate]
    portcullis snapshot list | show V | diff A B | activate V
    portcullis signing-key | tls-fingerprint    (what a data plane needs to follow this control plane)
    portcullis data-planes                      (data planes following this control plane)
    portcullis sync                             (on a data plane: how following its control plane goes)
    portcullis identity                         (identity providers: JWKS keys held, fetches, failures)

    Common options: --admin URL (default http://127.0.0.1:8444), --token-file F (default
    DATA_DIR/admin.token; or PORTCULLIS_ADMIN_TOKEN), --data-dir D (default ./portcullis-data),
    --as NAME (recorded as the actor; default $USER), --json.
    An https:// admin URL (listen.admin_tls) is trusted by --admin-fingerprint FP, --admin-ca F, or
    else DATA_DIR's own certificate; --client-cert F --client-key F (or PORTCULLIS_ADMIN_CERT and
    PORTCULLIS_ADMIN_KEY) present a client certificate (listen.admin_client_ca).
";

/// Parsed common options plus positional words and `--field value` pairs, in order.
#[derive(Debug, Default)]
struct Args {
    admin: Option<String>,
    /// With an `https://` admin URL: how the listener's certificate is trusted, and the client
    /// certificate to present when it asks for one.
    admin_ca: Option<PathBuf>,
    admin_fingerprint: Option<String>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    token_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    actor: Option<String>,
    json: bool,
    words: Vec<String>,
    fields: Vec<(String, String)>,
    flags: Vec<String>,
}

/// Flags that take no value.
const BARE_FLAGS: &[&str] = &["no-activate", "dry-run", "approve", "follow", "mark"];

fn parse(argv: Vec<String>) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        if arg == "-f" {
            let v = it.next().ok_or("-f needs a file")?;
            a.fields.push(("file".into(), v));
            continue;
        }
        let Some(name) = arg.strip_prefix("--") else {
            a.words.push(arg);
            continue;
        };
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (name.to_owned(), None),
        };
        if name == "json" {
            a.json = true;
            continue;
        }
        if BARE_FLAGS.contains(&name.as_str()) {
            a.flags.push(name);
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("--{name} needs a value"))?,
        };
        match name.as_str() {
            "admin" => a.admin = Some(value),
            "admin-ca" => a.admin_ca = Some(value.into()),
            "admin-fingerprint" => a.admin_fingerprint = Some(value),
            "client-cert" => a.client_cert = Some(value.into()),
            "client-key" => a.client_key = Some(value.into()),
            "token-file" => a.token_file = Some(value.into()),
            "data-dir" => a.data_dir = Some(value.into()),
            "as" => a.actor = Some(value),
            _ => a.fields.push((name, value)),
        }
    }
    Ok(a)
}

/// Largest admin answer the CLI reads over TLS (an audit export is read whole, as over plain HTTP).
const ADMIN_BODY_MAX: usize = 1 << 32;

struct Client {
    host: String,
    token: String,
    actor: String,
    /// An `https://` admin listener: its URL and how to speak TLS to it.
    tls: Option<(UpstreamUrl, Arc<rustls::ClientConfig>)>,
}

/// How the CLI trusts an `https://` admin listener: `--admin-fingerprint`, else `--admin-ca`, else the
/// certificate the appliance generated in its data dir (pinned by fingerprint); with `--client-cert` and
/// `--client-key` (or `PORTCULLIS_ADMIN_CERT`/`PORTCULLIS_ADMIN_KEY`) it presents a client certificate.
fn admin_tls(a: &Args) -> Result<Arc<rustls::ClientConfig>, String> {
    let env = |k: &str| std::env::var(k).ok().map(PathBuf::from);
    let cert = a
        .client_cert
        .clone()
        .or_else(|| env("PORTCULLIS_ADMIN_CERT"));
    let key = a.client_key.clone().or_else(|| env("PORTCULLIS_ADMIN_KEY"));
    let client = match (&cert, &key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => return Err("--client-cert and --client-key go together".into()),
    };
    let fingerprint = match (&a.admin_fingerprint, &a.admin_ca) {
        (Some(fp), _) => Some(fp.clone()),
        (None, Some(_)) => None,
        (None, None) => {
            let path = a
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("portcullis-data"))
                .join(crate::tls::CERT_FILE);
            let pem = std::fs::read(&path).map_err(|e| {
                format!(
                    "admin certificate {}: {e} (pass --admin-fingerprint, --admin-ca or --data-dir)",
                    path.display()
                )
            })?;
            let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem)
                .map_err(|e| format!("admin certificate {}: {e}", path.display()))?;
            Some(crate::tls::fingerprint(der.as_ref()))
        }
    };
    crate::https::client_config_with(
        fingerprint.as_deref(),
        a.admin_ca.as_deref(),
        client,
        "admin listener",
    )
}

impl Client {
    fn new(a: &Args) -> Result<Client, String> {
        let admin = a
            .admin
            .clone()
            .or_else(|| std::env::var("PORTCULLIS_ADMIN").ok())
            .unwrap_or_else(|| "http://127.0.0.1:8444".into());
        let (host, tls) = if admin.starts_with("https://") {
            let url = crate::config::parse_https_url(admin.trim_end_matches('/'))
                .map_err(|e| format!("--admin {admin}: {e}"))?;
            (
                format!("{}:{}", url.host, url.port),
                Some((url, admin_tls(a)?)),
            )
        } else {
            let host = admin
                .strip_prefix("http://")
                .ok_or("--admin must be an http:// or https:// URL")?
                .trim_end_matches('/')
                .to_owned();
            (host, None)
        };
        let token = match std::env::var("PORTCULLIS_ADMIN_TOKEN") {
            Ok(t) if a.token_file.is_none() => t,
            _ => {
                let path = a.token_file.clone().unwrap_or_else(|| {
                    a.data_dir
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("portcullis-data"))
                        .join("admin.token")
                });
                std::fs::read_to_string(&path).map_err(|e| {
                    format!(
                        "admin token {}: {e} (pass --token-file or --data-dir)",
                        path.display()
                    )
                })?
            }
        };
        let actor = a
            .actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "admin".into());
        Ok(Client {
            host,
            token: token.trim().to_owned(),
            actor,
            tls,
        })
    }

    /// One request; returns the status and the JSON body.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.call_bytes(method, path, body.as_bytes())
    }

    /// A call with a raw body (an OpenAPI document, JSON or YAML as written).
    fn call_bytes(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Value), String> {
        if let Some((url, tls)) = &self.tls {
            let headers = zeroize::Zeroizing::new(format!(
                "authorization: Bearer {}\r\nx-portcullis-actor: {}\r\n",
                self.token, self.actor
            ));
            let req = crate::https::Get {
                target: path,
                headers: &headers,
                connect_timeout: Duration::from_secs(10),
                io_timeout: Duration::from_secs(60),
                body_max: ADMIN_BODY_MAX,
                header: "",
            };
            let (status, _, raw) =
                crate::https::request(url, tls, method, &req, Some(("application/json", body)))
                    .map_err(|e| {
                        format!(
                            "admin API at {}: {e} (is `portcullis up` running?)",
                            self.host
                        )
                    })?;
            let text = String::from_utf8_lossy(&raw);
            let v = serde_json::from_str(&text).unwrap_or(Value::String(text.into_owned()));
            return Ok((status, v));
        }
        let mut s = TcpStream::connect(&self.host).map_err(|e| {
            format!(
                "admin API at {}: {e} (is `portcullis up` running?)",
                self.host
            )
        })?;
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\nx-portcullis-actor: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.host,
            self.token,
            self.actor,
            body.len()
        );
        s.write_all(head.as_bytes())
            .and_then(|()| s.write_all(body))
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or("truncated admin response")?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("malformed admin response")?;
        let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
        Ok((status, v))
    }

    /// A call whose non-2xx answer becomes the error message.
    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let (status, v) = self.call(method, path, body)?;
        Self::checked(status, v)
    }

    fn checked(status: u16, v: Value) -> Result<Value, String> {
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let e = &v["error"];
        let mut msg = format!(
            "{} ({status} {})",
            e["message"].as_str().unwrap_or("admin API error"),
            e["code"].as_str().unwrap_or("")
        );
        if let Some(problems) = e["problems"].as_array() {
            for p in problems {
                msg.push_str(&format!(
                    "\n  policy `{}` {}:{}: {}",
                    p["policy_id"].as_str().unwrap_or(""),
                    p["line"],
                    p["column"],
                    p["message"].as_str().unwrap_or("")
                ));
            }
        }
        Err(msg)
    }
}

/// The record kinds: path segment, key field, list fields and table columns.
struct KindInfo {
    plural: &'static str,
    key: &'static str,
    lists: &'static [(&'static str, &'static str)],
    columns: &'static [&'static str],
}

const KINDS: &[(&str, KindInfo)] = &[
    (
        "capability",
        KindInfo {
            plural: "capabilities",
            key: "name",
            lists: &[("tag", "tags"), ("tags", "tags")],
            columns: &[
                "name",
                "kind",
                "owner",
                "risk",
                "environment",
                "status",
                "endpoint",
            ],
        },
    ),
    (
        "agent",
        KindInfo {
            plural: "agents",
            key: "name",
            lists: &[
                ("group", "groups"),
                ("groups", "groups"),
                ("limit", "limits"),
                ("limits", "limits"),
            ],
            columns: &[
                "name",
                "owner",
                "surface",
                "environment",
                "credential_mode",
                "status",
            ],
        },
    ),
    (
        "policy",
        KindInfo {
            plural: "policies",
            key: "id",
            lists: &[],
            columns: &["id", "description"],
        },
    ),
];

/// Run a control-plane command. `Ok(false)` when `cmd` is not one.
pub fn run(cmd: &str, argv: Vec<String>) -> Result<bool, String> {
    let is_cli = KINDS.iter().any(|(k, _)| *k == cmd)
        || matches!(
            cmd,
            "approve"
                | "apply"
                | "snapshot"
                | "signing-key"
                | "tls-fingerprint"
                | "data-planes"
                | "sync"
                | "identity"
                | "openapi"
                | "secret"
                | "audit"
                | "session"
        );
    if !is_cli {
        return Ok(false);
    }
    let a = parse(argv)?;
    if cmd == "secret" && a.words.first().map(String::as_str) == Some("keygen") {
        return keygen(&a).map(|()| true);
    }
    if cmd == "audit" {
        return crate::auditcli::run(&a.words, &a.fields, &a.flags, a.json, a.data_dir.clone())
            .map(|()| true);
    }
    let c = Client::new(&a)?;
    let out = match cmd {
        "approve" => {
            let note = field(&a, "note").unwrap_or_default();
            let activate = !a.flags.iter().any(|f| f == "no-activate");
            let v = c.ok(
                "POST",
                "/admin/v1/approve",
                Some(&json!({"note": note, "activate": activate})),
            )?;
            (v, Shape::Snapshot)
        }
        "apply" => apply(&c, &a)?,
        "openapi" => openapi(&c, &a)?,
        "secret" => secret(&c, &a)?,
        "session" => session(&c, &a)?,
        "snapshot" => snapshot(&c, &a)?,
        "signing-key" => (c.ok("GET", "/admin/v1/signing-key", None)?, Shape::Record),
        "tls-fingerprint" => (c.ok("GET", "/admin/v1/tls", None)?, Shape::Record),
        "sync" => (c.ok("GET", "/admin/v1/sync", None)?, Shape::Record),
        "identity" => (c.ok("GET", "/admin/v1/identity", None)?, Shape::Record),
        "data-planes" => (
            c.ok("GET", "/admin/v1/data-planes", None)?,
            Shape::Table(&["node", "address", "last_seen_ms", "serving_seq", "refused"]),
        ),
        _ => records(&c, cmd, &a)?,
    };
    print(&out, a.json);
    Ok(true)
}

/// `openapi import CAP FILE` (`-` reads stdin), `openapi ops CAP`, `openapi select CAP SELECTOR...`.
fn openapi(c: &Client, a: &Args) -> Result<Output, String> {
    const COLUMNS: &[&str] = &[
        "method",
        "path",
        "tool",
        "convertible",
        "selected",
        "reason",
    ];
    let sub = word(a, 0, "openapi import|ops|select")?;
    let cap = word(a, 1, "capability name")?;
    let path = format!("/admin/v1/capabilities/{cap}/openapi");
    let v = match sub.as_str() {
        "import" => {
            let file = word(a, 2, "document file (or - for stdin, or an https:// URL)")?;
            let mut bytes = Vec::new();
            if file.starts_with("https://") {
                bytes = fetch_document(&file, field(a, "ca-file"), field(a, "fingerprint"))?;
            } else if file == "-" {
                std::io::stdin()
                    .read_to_end(&mut bytes)
                    .map_err(|e| format!("stdin: {e}"))?;
            } else {
                bytes = std::fs::read(&file).map_err(|e| format!("{file}: {e}"))?;
            }
            let (status, v) = c.call_bytes("POST", &path, &bytes)?;
            Client::checked(status, v)?
        }
        "ops" => c.ok("GET", &path, None)?,
        "select" => {
            let select: Vec<&String> = a.words.iter().skip(2).collect();
            if select.is_empty() {
                return Err(format!(
                    "openapi select {cap}: name operations (operationId, 'METHOD /path', tag:T, *)"
                ));
            }
            let mut body = json!({ "select": select });
            if let Some(n) = field(a, "redirects") {
                body["redirects"] = json!(n
                    .parse::<u8>()
                    .map_err(|_| format!("--redirects {n}: a number 0 to 10"))?);
            }
            c.ok("PUT", &format!("{path}/select"), Some(&body))?
        }
        other => return Err(format!("openapi {other}: not a subcommand\n{USAGE}")),
    };
    if a.json {
        return Ok((v, Shape::Record));
    }
    Ok((v["operations"].clone(), Shape::Table(COLUMNS)))
}

/// `secret put|rotate REF` (value on stdin), `secret list`, `secret remove REF`, `secret check REF`.
fn secret(c: &Client, a: &Args) -> Result<Output, String> {
    let sub = word(a, 0, "secret put|rotate|list|remove|check|keygen")?;
    let v = match sub.as_str() {
        "list" => {
            return Ok((
                c.ok("GET", "/admin/v1/secrets", None)?,
                Shape::Table(&[
                    "ref",
                    "version",
                    "updated_by",
                    "updated_at",
                    "sealed_with_current_key",
                ]),
            ))
        }
        "put" | "rotate" => {
            let r = word(a, 1, "secret reference (embedded/PATH#FIELD)")?;
            let mut value = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut value)
                .map_err(|e| format!("stdin: {e}"))?;
            // One trailing newline is how `echo` and editors end a value, not part of it.
            let trimmed = value
                .strip_suffix('\n')
                .map(|v| v.strip_suffix('\r').unwrap_or(v))
                .unwrap_or(&value);
            if trimmed.is_empty() {
                return Err("secret: the value read from stdin is empty".into());
            }
            let body = zeroize::Zeroizing::new(
                json!({"ref": r, "value": trimmed, "rotate": sub == "rotate"}).to_string(),
            );
            let (status, v) = c.call_bytes("POST", "/admin/v1/secrets", body.as_bytes())?;
            Client::checked(status, v)?
        }
        "remove" => {
            let r = word(a, 1, "secret reference")?;
            c.ok("POST", "/admin/v1/secrets/remove", Some(&json!({"ref": r})))?
        }
        "check" => {
            let r = word(a, 1, "secret reference")?;
            let v = c.ok("POST", "/admin/v1/secrets/check", Some(&json!({"ref": r})))?;
            if v["resolves"] != json!(true) {
                return Err(format!(
                    "{r} does not resolve: {}",
                    v["error"].as_str().unwrap_or("unknown")
                ));
            }
            v
        }
        other => return Err(format!("secret {other}: not a subcommand\n{USAGE}")),
    };
    Ok((v, Shape::Record))
}

/// `session list | show ID | revoke ID | revoke --agent A | revoke --key K`.
fn session(c: &Client, a: &Args) -> Result<Output, String> {
    const COLUMNS: &[&str] = &[
        "id",
        "core",
        "agent",
        "identity",
        "revision",
        "transport",
        "client",
        "age_s",
        "idle_s",
        "requests",
    ];
    match word(a, 0, "session list|show|revoke|holds|lift")?.as_str() {
        "list" => Ok((
            c.ok("GET", "/admin/v1/sessions", None)?,
            Shape::Table(COLUMNS),
        )),
        "show" => {
            let id = word(a, 1, "session id")?;
            Ok((
                c.ok("GET", &format!("/admin/v1/sessions/{id}"), None)?,
                Shape::Record,
            ))
        }
        "revoke" => {
            let mut body = match (a.words.get(1), field(a, "agent"), field(a, "key")) {
                (Some(id), None, None) => json!({ "id": id }),
                (None, Some(agent), None) => json!({ "agent": agent }),
                (None, None, Some(key)) => json!({ "key": key }),
                _ => {
                    return Err(format!(
                        "session revoke ID | --agent A | --key KEY_ID\n{USAGE}"
                    ))
                }
            };
            if let Some(hold) = field(a, "hold") {
                body["hold"] = json!(hold);
            }
            let v = c.ok("POST", "/admin/v1/sessions/revoke", Some(&body))?;
            if a.json {
                return Ok((v, Shape::Record));
            }
            Ok((v["revoked"].clone(), Shape::Table(COLUMNS)))
        }
        "holds" => Ok((
            c.ok("GET", "/admin/v1/sessions/holds", None)?,
            Shape::Table(&["kind", "name", "left_s"]),
        )),
        "lift" => {
            let body = match (field(a, "agent"), field(a, "key")) {
                (Some(agent), None) => json!({ "agent": agent }),
                (None, Some(key)) => json!({ "key": key }),
                _ => return Err(format!("session lift --agent A | --key KEY_ID\n{USAGE}")),
            };
            Ok((
                c.ok("POST", "/admin/v1/sessions/lift", Some(&body))?,
                Shape::Record,
            ))
        }
        other => Err(format!("session {other}: not a subcommand\n{USAGE}")),
    }
}

/// `secret keygen FILE`: a fresh key, written only if FILE does not exist yet, readable by its owner only.
fn keygen(a: &Args) -> Result<(), String> {
    use std::io::Write;
    let path = PathBuf::from(word(a, 1, "key file")?);
    let hex = portcullis_storage::secrets::SealKey::generate_hex().map_err(|e| e.to_string())?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(format!("{}\n", &*hex).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!(
        "secrets key written to {} (name it in secrets.key_file; losing it loses the embedded secrets)",
        path.display()
    );
    Ok(())
}

/// Largest OpenAPI document fetched from a URL (the converter takes up to 16 MiB).
const DOCUMENT_BYTES_MAX: usize = 16 << 20;

/// GET an OpenAPI document over HTTPS, verified by `ca_file` (default: the system's CA bundle) or a
/// pinned certificate fingerprint; redirects are not followed (a document that moved says so).
fn fetch_document(
    url: &str,
    ca_file: Option<String>,
    fingerprint: Option<String>,
) -> Result<Vec<u8>, String> {
    let u = crate::config::parse_https_url(url).map_err(|e| format!("{url}: {e}"))?;
    let ca = std::path::PathBuf::from(
        ca_file.unwrap_or_else(|| crate::config::SYSTEM_CA_BUNDLE.to_owned()),
    );
    let tls = crate::https::client_config(fingerprint.as_deref(), Some(&ca), "--ca-file")?;
    let (status, location, body) = crate::https::get(
        &u,
        &tls,
        &crate::https::Get {
            target: &u.path,
            headers: "accept: application/json, application/yaml, text/yaml, */*\r\n",
            connect_timeout: std::time::Duration::from_secs(10),
            io_timeout: std::time::Duration::from_secs(30),
            body_max: DOCUMENT_BYTES_MAX,
            header: "location",
        },
    )
    .map_err(|e| format!("{url}: {e}"))?;
    match status {
        200 => Ok(body),
        300..=399 => Err(format!(
            "{url}: HTTP {status} to {} (redirects are not followed; import from there if you trust it)",
            location.unwrap_or_default()
        )),
        s => Err(format!("{url}: HTTP {s}")),
    }
}

fn field(a: &Args, name: &str) -> Option<String> {
    a.fields
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

fn word(a: &Args, i: usize, what: &str) -> Result<String, String> {
    a.words
        .get(i)
        .cloned()
        .ok_or_else(|| format!("missing {what}\n{USAGE}"))
}

enum Shape {
    Table(&'static [&'static str]),
    Record,
    Snapshot,
    /// `apply`: what changed (or would), kind by kind, then the snapshot if one was approved.
    Plan,
}

/// What a command prints: the API's answer and how to lay it out.
type Output = (Value, Shape);

fn records(c: &Client, kind: &str, a: &Args) -> Result<Output, String> {
    let Some((_, k)) = KINDS.iter().find(|(n, _)| *n == kind) else {
        return Err(format!("unknown command `{kind}`"));
    };
    let verb = word(a, 0, "a verb (add, list, show, edit, remove, history)")?;
    let base = format!("/admin/v1/{}", k.plural);
    Ok(match verb.as_str() {
        "list" => (c.ok("GET", &base, None)?, Shape::Table(k.columns)),
        "show" => {
            let key = word(a, 1, "a name")?;
            (c.ok("GET", &format!("{base}/{key}"), None)?, Shape::Record)
        }
        "history" => {
            let key = word(a, 1, "a name")?;
            (
                c.ok("GET", &format!("{base}/{key}/history"), None)?,
                Shape::Record,
            )
        }
        "remove" => {
            let key = word(a, 1, "a name")?;
            (
                c.ok("DELETE", &format!("{base}/{key}"), None)?,
                Shape::Record,
            )
        }
        "add" => {
            let key = word(a, 1, "a name")?;
            let mut rec = Map::new();
            rec.insert(k.key.into(), Value::from(key));
            apply_fields(&mut rec, k, a)?;
            (
                c.ok("POST", &base, Some(&Value::Object(rec)))?,
                Shape::Record,
            )
        }
        "edit" => {
            let key = word(a, 1, "a name")?;
            let current = c.ok("GET", &format!("{base}/{key}"), None)?;
            let Some(mut rec) = current["spec"].as_object().cloned() else {
                return Err("the admin API answered without a record".into());
            };
            // Lists given on the command line replace the stored list.
            for (flag, list) in k.lists {
                if a.fields.iter().any(|(n, _)| n == flag) {
                    rec.insert((*list).into(), Value::Array(vec![]));
                }
            }
            apply_fields(&mut rec, k, a)?;
            (
                c.ok("PUT", &format!("{base}/{key}"), Some(&Value::Object(rec)))?,
                Shape::Record,
            )
        }
        "explain" if kind == "policy" => (policy_explain(c, a)?, Shape::Record),
        "test" if kind == "policy" => {
            let (out, failed) = policy_test(c, a)?;
            if failed > 0 {
                print(&out, a.json);
                return Err(format!(
                    "policy test: {failed} case(s) did not decide as expected"
                ));
            }
            out
        }
        "key" if kind == "agent" => {
            let sub = word(a, 1, "issue, list or revoke")?;
            let agent = word(a, 2, "an agent name")?;
            let path = format!("/admin/v1/agents/{agent}/keys");
            match sub.as_str() {
                "issue" => (c.ok("POST", &path, None)?, Shape::Record),
                "list" => (
                    c.ok("GET", &path, None)?,
                    Shape::Table(&["id", "agent", "created_by", "created_at", "revoked_at"]),
                ),
                "revoke" => {
                    let id = word(a, 3, "a key id")?;
                    (
                        c.ok("DELETE", &format!("{path}/{id}"), None)?,
                        Shape::Record,
                    )
                }
                other => return Err(format!("unknown key command `{other}`")),
            }
        }
        other => return Err(format!("unknown {kind} command `{other}`\n{USAGE}")),
    })
}

/// `--snapshot active|draft|N` for explain and test (default active).
fn snapshot_choice(a: &Args, file: Option<&Value>) -> Value {
    field(a, "snapshot")
        .map(Value::from)
        .or_else(|| file.cloned())
        .unwrap_or_else(|| Value::from("active"))
}

/// `policy explain --agent A --tool T [--action call|discover] [--args JSON] [--snapshot S]`.
fn policy_explain(c: &Client, a: &Args) -> Result<Value, String> {
    let agent = field(a, "agent").ok_or("policy explain needs --agent AGENT")?;
    let tool = field(a, "tool").ok_or("policy explain needs --tool CAPABILITY__TOOL")?;
    let mut q = json!({"agent": agent, "tool": tool});
    if let Some(action) = field(a, "action") {
        q["action"] = Value::from(action);
    }
    if let Some(args) = field(a, "args") {
        q["arguments"] =
            serde_json::from_str(&args).map_err(|e| format!("--args is not JSON: {e}"))?;
    }
    if let Some(ctx) = field(a, "context") {
        q["context"] =
            serde_json::from_str(&ctx).map_err(|e| format!("--context is not JSON: {e}"))?;
    }
    let body = json!({"snapshot": snapshot_choice(a, None), "questions": [q]});
    let v = c.ok("POST", "/admin/v1/explain", Some(&body))?;
    let mut answer = v["answers"][0].clone();
    answer["snapshot"] = v["snapshot"].clone();
    Ok(answer)
}

/// `policy test FILE`: a YAML (or JSON) table of questions with the decisions expected,
/// `{snapshot?, cases: [{agent, tool, action?, arguments?, context?, expect: allow|deny, reason?,
/// policies?}]}`. Returns the per-case results and how many did not match.
fn policy_test(c: &Client, a: &Args) -> Result<(Output, usize), String> {
    let path = word(a, 1, "a test file")?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let doc: Value = serde_yaml::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    let cases = doc["cases"]
        .as_array()
        .ok_or_else(|| format!("{path}: no `cases` list"))?;
    let mut questions = Vec::new();
    let mut expected = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let Some(obj) = case.as_object() else {
            return Err(format!("{path}: case {i} is not a mapping"));
        };
        let mut q = obj.clone();
        let expect = match q.remove("expect").as_ref().and_then(Value::as_str) {
            Some("allow") => true,
            Some("deny") => false,
            _ => {
                return Err(format!(
                    "{path}: case {i}: `expect: allow` or `expect: deny`"
                ))
            }
        };
        let reason = q.remove("reason");
        let mut policies: Option<Vec<String>> = match q.remove("policies") {
            None => None,
            Some(v) => Some(
                serde_json::from_value(v)
                    .map_err(|_| format!("{path}: case {i}: `policies` is a list of ids"))?,
            ),
        };
        if let Some(p) = policies.as_mut() {
            p.sort();
        }
        q.remove("name");
        expected.push((expect, reason, policies));
        questions.push(Value::Object(q));
    }
    let body = json!({"snapshot": snapshot_choice(a, doc.get("snapshot")), "questions": questions});
    let v = c.ok("POST", "/admin/v1/explain", Some(&body))?;
    let answers = v["answers"].as_array().cloned().unwrap_or_default();
    let mut rows = Vec::new();
    let mut failed = 0;
    for (i, ((case, (expect, reason, policies)), got)) in
        cases.iter().zip(&expected).zip(&answers).enumerate()
    {
        let allowed = got["allowed"].as_bool() == Some(true);
        let mut got_policies: Vec<String> =
            serde_json::from_value(got["policies"].clone()).unwrap_or_default();
        got_policies.sort();
        let mut why = Vec::new();
        if allowed != *expect {
            why.push(format!(
                "expected {}",
                if *expect { "allow" } else { "deny" }
            ));
        }
        if let Some(r) = reason {
            if got.get("reason") != Some(r) {
                why.push(format!("expected reason {r}"));
            }
        }
        if let Some(p) = policies {
            if *p != got_policies {
                why.push(format!("expected policies {}", p.join(",")));
            }
        }
        if !why.is_empty() {
            failed += 1;
        }
        let decision = if allowed {
            "allow".to_owned()
        } else {
            format!("deny {}", got["reason"].as_str().unwrap_or(""))
        };
        rows.push(json!({
            "case": case.get("name").cloned().unwrap_or_else(|| Value::from(i + 1)),
            "agent": case["agent"],
            "tool": case["tool"],
            "got": decision,
            "policies": got_policies.join(","),
            "result": if why.is_empty() { "ok".to_owned() } else { format!("FAIL: {}", why.join("; ")) },
        }));
    }
    let shape = Shape::Table(&["case", "agent", "tool", "got", "policies", "result"]);
    Ok(((Value::Array(rows), shape), failed))
}

fn apply_fields(rec: &mut Map<String, Value>, k: &KindInfo, a: &Args) -> Result<(), String> {
    for (name, value) in &a.fields {
        if name == "file" {
            let text = if value == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| e.to_string())?;
                s
            } else {
                std::fs::read_to_string(value).map_err(|e| format!("{value}: {e}"))?
            };
            rec.insert("text".into(), Value::from(text));
            continue;
        }
        if let Some((_, list)) = k.lists.iter().find(|(f, _)| f == name) {
            let arr = rec.entry(*list).or_insert_with(|| Value::Array(vec![]));
            if let Some(arr) = arr.as_array_mut() {
                for v in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                    arr.push(Value::from(v));
                }
            }
            continue;
        }
        // An agent's session bounds nest: `--session-idle 5m`, `--session-max 4`.
        if let Some(key) = name.strip_prefix("session-") {
            let v = match value.parse::<u64>() {
                Ok(n) => Value::from(n),
                Err(_) => Value::from(value.as_str()),
            };
            let nested = rec.entry("sessions").or_insert_with(|| json!({}));
            if let Some(o) = nested.as_object_mut() {
                o.insert(key.replace('-', "_"), v);
            }
            continue;
        }
        rec.insert(name.replace('-', "_"), Value::from(value.as_str()));
    }
    Ok(())
}

/// `apply -f FILE`: send the desired state (policies' `file:` read relative to FILE), print the plan,
/// and approve afterwards with `--approve`.
fn apply(c: &Client, a: &Args) -> Result<Output, String> {
    let path = PathBuf::from(field(a, "file").ok_or("apply needs -f FILE")?);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut state: Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: not YAML: {e}", path.display()))?;
    if state.is_null() {
        state = json!({});
    }
    let base = path.parent().map(PathBuf::from).unwrap_or_default();
    if let Some(policies) = state.get_mut("policies").and_then(Value::as_array_mut) {
        for (i, p) in policies.iter_mut().enumerate() {
            let Some(obj) = p.as_object_mut() else {
                continue;
            };
            if let Some(file) = obj.remove("file") {
                let f = base.join(
                    file.as_str()
                        .ok_or(format!("policies[{i}].file: not a path"))?,
                );
                let t = std::fs::read_to_string(&f)
                    .map_err(|e| format!("policies[{i}].file {}: {e}", f.display()))?;
                obj.insert("text".into(), Value::from(t));
            }
        }
    }
    let dry_run = a.flags.iter().any(|f| f == "dry-run");
    let plan = c.ok(
        "POST",
        "/admin/v1/apply",
        Some(&json!({"state": state, "dry_run": dry_run})),
    )?;
    if a.flags.iter().any(|f| f == "approve") && !dry_run {
        let note = field(a, "note").unwrap_or_default();
        let snapshot = c.ok(
            "POST",
            "/admin/v1/approve",
            Some(&json!({"note": note, "activate": true})),
        )?;
        return Ok((json!({"plan": plan, "snapshot": snapshot}), Shape::Plan));
    }
    Ok((json!({ "plan": plan }), Shape::Plan))
}

fn snapshot(c: &Client, a: &Args) -> Result<Output, String> {
    let verb = word(a, 0, "a verb (list, show, diff, activate)")?;
    Ok(match verb.as_str() {
        "list" => (
            c.ok("GET", "/admin/v1/snapshots", None)?,
            Shape::Table(&[
                "version",
                "active",
                "approved_by",
                "approved_at",
                "note",
                "hash",
            ]),
        ),
        "show" => {
            let v = word(a, 1, "a version")?;
            (
                c.ok("GET", &format!("/admin/v1/snapshots/{v}"), None)?,
                Shape::Record,
            )
        }
        "diff" => {
            let (x, y) = (word(a, 1, "a version")?, word(a, 2, "a second version")?);
            (
                c.ok("GET", &format!("/admin/v1/snapshots/{x}/diff/{y}"), None)?,
                Shape::Record,
            )
        }
        "activate" => {
            let v = word(a, 1, "a version")?;
            (
                c.ok("POST", &format!("/admin/v1/snapshots/{v}/activate"), None)?,
                Shape::Snapshot,
            )
        }
        other => return Err(format!("unknown snapshot command `{other}`\n{USAGE}")),
    })
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

#[allow(clippy::print_stdout)]
fn print(out: &Output, as_json: bool) {
    let (v, shape) = out;
    if as_json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    match shape {
        Shape::Table(cols) => {
            let rows: Vec<Vec<String>> = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| {
                            // Records nest their fields under `spec`; keys and snapshots are flat.
                            let src = if r.get("spec").is_some() {
                                &r["spec"]
                            } else {
                                r
                            };
                            cols.iter().map(|c| cell(&src[*c])).collect()
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut width: Vec<usize> = cols.iter().map(|c| c.len()).collect();
            for r in &rows {
                for (w, c) in width.iter_mut().zip(r) {
                    *w = (*w).max(c.chars().count().min(48));
                }
            }
            let line = |cells: Vec<String>| {
                cells
                    .iter()
                    .zip(&width)
                    .map(|(c, w)| {
                        let c: String = c.chars().take(48).collect();
                        format!("{c:<w$}")
                    })
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned()
            };
            println!("{}", line(cols.iter().map(|c| c.to_uppercase()).collect()));
            for r in rows {
                println!("{}", line(r));
            }
        }
        Shape::Snapshot => {
            println!(
                "snapshot {} {} hash={} approved_by={} note={:?}",
                v["version"],
                if v["active"] == true { "(active)" } else { "" },
                cell(&v["hash"]),
                cell(&v["approved_by"]),
                cell(&v["note"])
            );
        }
        Shape::Record => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Shape::Plan => {
            let plan = &v["plan"];
            let verb = if plan["applied"] == true {
                ""
            } else {
                "(dry run) would be "
            };
            for kind in ["capabilities", "agents", "policies"] {
                let k = &plan[kind];
                for (mark, what) in [("+", "created"), ("~", "updated"), ("-", "removed")] {
                    for name in k[what].as_array().into_iter().flatten() {
                        println!("{mark} {kind} {} {verb}{what}", cell(name));
                    }
                }
                println!("  {kind}: {} unchanged", k["unchanged"]);
            }
            if v["snapshot"].is_object() {
                let s = &v["snapshot"];
                println!(
                    "approved snapshot {} hash={}",
                    s["version"],
                    cell(&s["hash"])
                );
            }
        }
    }
}
