//! The control plane's REST+JSON admin API, served on the admin listener under `/admin/`.
//!
//! Every `/admin/v1/` call needs `Authorization: Bearer <admin token>` (the token is generated at first
//! start into `DATA_DIR/admin.token`, 0600) and is compared in constant time. Edits are drafts in the
//! registry; `POST /admin/v1/approve` compiles them into a signed snapshot. The actor recorded with an edit
//! is the `X-Portcullis-Actor` header (the CLI sends the operator's login), `admin` without one: with a
//! single admin token the gateway cannot tell operators apart, so the name is recorded as claimed.
//! Errors are `{"error": {"code", "message", ...}}` with stable codes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_pipeline::control::{
    self, Agent, ApproveError, Capability, CapabilityKind, OpenApiSource, Policy,
};
use portcullis_pipeline::openapi;
use portcullis_storage::registry::{FetchedTools, Kind, Put, Registry, RegistryError};
use portcullis_storage::signing::hex;
use portcullis_storage::{DataDir, StorageError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::parse_upstream_url;
use crate::follow::FollowStatus;
use crate::probe::{self, join_bounded, ProbeLimits, Target};
use crate::served::{Published, Served};
use crate::sync::{Beacon, DataPlanes};
use crate::upstream::{ClientLimits, Pool};
use portcullis_storage::registry::{Followed, Offer};

const TOKEN_FILE: &str = "admin.token";
use portcullis_pipeline::govern::{Governor, KeyEntry, Keys, Question, API_KEY_PREFIX};

/// The registry plus what authenticates its operators, and where activations are published.
#[derive(Debug)]
pub struct ControlPlane {
    /// Shared with the credential broker, which reads the embedded store's table.
    pub registry: Arc<Registry>,
    token_hash: blake3::Hash,
    /// What data planes present to pull snapshots (`listen.sync`); `None` when nothing may follow.
    sync_token_hash: Option<blake3::Hash>,
    published: Arc<Published>,
    client: ClientLimits,
    probe: ProbeLimits,
    /// Rung on every activation, for the data planes' long polls.
    pub beacon: Beacon,
    pub data_planes: DataPlanes,
    /// In hybrid mode, how following the remote control plane goes.
    following: Option<Arc<FollowStatus>>,
    /// SHA-256 of the listeners' TLS certificate, for data planes to pin.
    tls_fingerprint: Option<String>,
    /// When the MCP listener's certificate expires, seconds since the epoch.
    tls_not_after: Option<u64>,
    /// The identity providers, for `GET /admin/v1/identity`.
    identity: Arc<crate::identity::Providers>,
    broker: Option<Arc<crate::broker::Broker>>,
    /// How long an activation's answer waits for its snapshot to be checked and served.
    activation_wait: Duration,
}

/// An answer: status and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

fn answer(status: u16, v: &impl Serialize) -> Answer {
    Answer {
        status,
        body: serde_json::to_vec_pretty(v).unwrap_or_default(),
    }
}

fn error(status: u16, code: &str, message: impl Into<String>) -> Answer {
    answer(
        status,
        &json!({"error": {"code": code, "message": message.into()}}),
    )
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random_hex(n: usize) -> Result<String, String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
    Ok(hex(&b))
}

/// Load the admin token, generating it on first start. Returns the token and whether it is new.
pub fn load_or_create_token(dir: &DataDir) -> Result<(String, bool), String> {
    load_or_create_secret(dir, TOKEN_FILE, "admin token")
}

/// Load a bearer token kept in the data dir (0600), generating 256 random bits on first start.
pub fn load_or_create_secret(
    dir: &DataDir,
    file: &str,
    what: &str,
) -> Result<(String, bool), String> {
    let mut err = None;
    let ([t], created) = dir
        .read_or_create([file], || match random_hex(32) {
            Ok(t) => [format!("{t}\n").into_bytes()],
            Err(e) => {
                err = Some(e);
                [Vec::new()]
            }
        })
        .map_err(|e: StorageError| e.to_string())?;
    if let Some(e) = err {
        return Err(e);
    }
    let token = String::from_utf8_lossy(&t).trim().to_owned();
    if token.len() < 32 {
        return Err(format!(
            "{}: {what} shorter than 32 characters; delete the file to generate a new one",
            dir.file(file).display()
        ));
    }
    Ok((token, created))
}

pub fn token_path(dir: &DataDir) -> std::path::PathBuf {
    dir.file(TOKEN_FILE)
}

/// The data plane's view of stored keys: the key id, its agent, and the hash to compare against.
fn key_table(keys: &[portcullis_storage::registry::ApiKey]) -> Keys {
    Keys::new(keys.iter().filter_map(|k| {
        let hash = blake3::Hash::from_hex(&k.hash).ok()?;
        Some((
            k.id.clone(),
            KeyEntry {
                agent: k.agent.clone(),
                hash,
                revoked: k.revoked_at.is_some(),
            },
        ))
    }))
}

impl ControlPlane {
    pub fn new(
        registry: Arc<Registry>,
        admin_token: &str,
        published: Arc<Published>,
        client: ClientLimits,
        probe: ProbeLimits,
    ) -> ControlPlane {
        ControlPlane {
            registry,
            token_hash: blake3::hash(admin_token.as_bytes()),
            sync_token_hash: None,
            published,
            client,
            probe,
            beacon: Beacon::default(),
            data_planes: DataPlanes::default(),
            following: None,
            tls_fingerprint: None,
            tls_not_after: None,
            identity: Arc::default(),
            broker: None,
            activation_wait: Duration::from_secs(10),
        }
    }

    /// Each upstream's pins are checked for at most `per_upstream` before an activation is served; its
    /// answer waits a little longer than that.
    pub fn with_activation_check(mut self, per_upstream: Duration) -> ControlPlane {
        self.activation_wait = per_upstream + Duration::from_secs(5);
        self
    }

    /// The credential broker: the embedded store behind `/admin/v1/secrets`, and service credentials for
    /// listing tools at approval.
    pub fn with_broker(mut self, broker: Arc<crate::broker::Broker>) -> ControlPlane {
        self.broker = Some(broker);
        self
    }

    pub fn with_identity(mut self, identity: Arc<crate::identity::Providers>) -> ControlPlane {
        self.identity = identity;
        self
    }

    pub fn with_tls_fingerprint(mut self, fingerprint: &str) -> ControlPlane {
        self.tls_fingerprint = Some(fingerprint.to_owned());
        self
    }

    pub fn with_tls_not_after(mut self, not_after: Option<u64>) -> ControlPlane {
        self.tls_not_after = not_after;
        self
    }

    /// The MCP listener certificate's fingerprint and expiry (seconds since the epoch).
    pub fn tls(&self) -> (Option<&str>, Option<u64>) {
        (self.tls_fingerprint.as_deref(), self.tls_not_after)
    }

    /// The header of snapshot `version` as the registry keeps it (`None`: not there or unreadable).
    pub fn snapshot_info(
        &self,
        version: u64,
    ) -> Option<portcullis_storage::registry::SnapshotInfo> {
        self.registry.snapshot_info(version).ok()
    }

    /// Let data planes presenting `token` pull snapshots.
    pub fn with_sync_token(mut self, token: &str) -> ControlPlane {
        self.sync_token_hash = Some(blake3::hash(token.as_bytes()));
        self
    }

    /// Hybrid mode: this appliance follows a remote control plane, reporting through `status`.
    pub fn following(mut self, status: Arc<FollowStatus>) -> ControlPlane {
        self.following = Some(status);
        self
    }

    pub fn follow_status(&self) -> Option<&Arc<FollowStatus>> {
        self.following.as_ref()
    }

    /// Constant-time check of a data plane's sync token (see `authorized`).
    pub fn sync_authorized(&self, authorization: Option<&str>) -> bool {
        match (self.sync_token_hash, bearer(authorization)) {
            (Some(h), Some(presented)) => blake3::hash(presented.as_bytes()) == h,
            _ => false,
        }
    }

    /// Take an offer from the control plane this data plane follows and serve it when it is new.
    pub fn follow_offer(&self, offer: &Offer) -> Result<Followed, RegistryError> {
        let f = self.registry.follow(offer)?;
        if f.changed {
            if let Some(published) = self.serve(f.info.header.version) {
                // The follower's status should say what is served, not what is about to be.
                let _ = published.recv_timeout(self.activation_wait);
            }
        }
        Ok(f)
    }

    /// Take a signed key list from the control plane this data plane follows, keep it and serve it.
    pub fn follow_keys(&self, body: &[u8], signature: &[u8]) -> Result<usize, RegistryError> {
        let keys = self.registry.follow_keys(body, signature)?;
        let table = key_table(&keys);
        let n = table.len();
        self.published.publish_keys(table);
        Ok(n)
    }

    /// Serve the active snapshot, if there is one and this appliance serves snapshots. A snapshot that
    /// fails verification is not served: the data plane keeps what it had (fail closed at first start).
    /// At start: the drift watcher publishes it once its pins are checked.
    pub fn serve_active(&self) {
        match self.registry.active_version() {
            Ok(Some(v)) => {
                let _ = self.serve(v);
            }
            Ok(None) => {}
            Err(e) => crate::error!("active snapshot unreadable: {e}"),
        }
    }

    /// Compile snapshot `version` and stage it; the receiver hears once the drift watcher has checked
    /// its pins and published it. `None` when nothing will be published.
    fn serve(&self, version: u64) -> Option<flume::Receiver<()>> {
        // Followers get every activation, even one this appliance does not serve itself.
        self.beacon.ring();
        if !self.published.managed() {
            crate::warn!(
                "snapshot {version} activated but not served: the config lists static `upstreams`"
            );
            return None;
        }
        // Compiled straight from the archive in the LMDB map.
        let compiled = self
            .registry
            .read_snapshot(version, |info, archived| {
                Served::from_archived(archived, &info.hash, &self.published)
            })
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        match compiled {
            Ok(served) => Some(self.published.stage(served)),
            Err(e) => {
                crate::error!("snapshot {version} not served: {e}");
                None
            }
        }
    }

    /// Serve `version` and answer once it is served (or after `activation_wait`, when the upstreams'
    /// checks take longer than the bound on each should allow).
    async fn served(&self, version: u64) {
        if let Some(published) = self.serve(version) {
            let _ = monoio::time::timeout(self.activation_wait, published.recv_async()).await;
        }
    }

    /// Approve: list every MCP capability's tools, then compile, seal and store (and serve) in one step.
    async fn approve(&self, actor: &str, req: ApproveRequest, now: u64) -> Answer {
        let capabilities = match self.registry.list::<Capability>() {
            Ok(c) => c,
            Err(e) => return registry_error(&e),
        };
        let pool = Pool::new(self.client);
        let mcp: Vec<_> = capabilities
            .iter()
            .filter(|c| c.spec.serves_mcp())
            .collect();
        let probes = mcp
            .iter()
            .enumerate()
            .map(|(slot, c)| {
                let pool = &pool;
                let limits = self.probe;
                let broker = self.broker.clone();
                async move {
                    let url = parse_upstream_url(&c.spec.endpoint)
                        .map_err(|e| format!("endpoint: {e}"))?;
                    let credential = match &broker {
                        Some(b) => probe::service_credential(b, c.spec.credential.as_ref())
                            .await
                            .map_err(|e| format!("its service credential is unavailable: {e}"))?,
                        None => None,
                    };
                    let target = Target {
                        pool,
                        slot,
                        capability: &c.spec.name,
                        url: &url,
                        limits,
                        credential,
                    };
                    target
                        .list_tools()
                        .await
                        .map_err(|e| format!("listing its tools failed: {e}"))
                }
            })
            .collect();
        let listed = join_bounded(probes, probe::CONCURRENCY).await;
        // OpenAPI capabilities' tools come from their stored documents, converted here.
        let converted = capabilities
            .iter()
            .filter(|c| c.spec.serves_api())
            .map(|c| (c, self.converted_tools(&c.spec)));
        let mut fetched = Vec::new();
        for (c, listed) in mcp.iter().copied().zip(listed).chain(converted) {
            match listed {
                Ok(tools) => fetched.push(FetchedTools {
                    capability: c.spec.name.clone(),
                    version: c.meta.version,
                    tools,
                }),
                Err(message) => {
                    return registry_error(&RegistryError::Approve(
                        ApproveError::ToolsUnavailable {
                            capability: c.spec.name.clone(),
                            message,
                        },
                    ))
                }
            }
        }
        let activate = req.activate.unwrap_or(true);
        let r = self
            .registry
            .approve(actor, &req.note, now, activate, &fetched);
        if let Ok(info) = &r {
            if info.active {
                self.served(info.header.version).await;
            }
        }
        result(201, r)
    }

    /// An `openapi` capability's selected operations, converted from its stored document.
    fn converted_tools(&self, c: &Capability) -> Result<Vec<control::PinnedTool>, String> {
        let src = c
            .openapi
            .as_ref()
            .ok_or("no OpenAPI document imported (portcullis openapi import)")?;
        let bytes = self
            .registry
            .document(&src.document)
            .map_err(|e| e.to_string())?
            .ok_or("its document is not stored")?;
        let doc = openapi::import(&bytes).map_err(|e| e.to_string())?;
        if src.select.is_empty() {
            return Err("no operations selected (portcullis openapi select)".into());
        }
        openapi::pin(&c.name, &doc, &src.select).map_err(|e| e.to_string())
    }

    /// Decide each question as the gateway would under the chosen snapshot (`policy explain`,
    /// `policy test`). A draft is compiled as approval would compile it, so a policy approval would
    /// refuse is refused here with the same problems.
    fn explain(&self, req: ExplainRequest, now: u64) -> Answer {
        if req.questions.len() > EXPLAIN_QUESTIONS_MAX {
            return error(
                413,
                "too_many_questions",
                format!("at most {EXPLAIN_QUESTIONS_MAX} questions per request"),
            );
        }
        let r = &self.registry;
        let version = match req.snapshot.as_ref() {
            None => None,
            Some(Value::String(s)) if s == "active" => None,
            Some(Value::String(s)) if s == "draft" => Some(None),
            Some(v) => match v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            {
                Some(n) => Some(Some(n)),
                None => {
                    return error(
                        400,
                        "bad_request",
                        "snapshot: `active`, `draft` or a version number",
                    )
                }
            },
        };
        let active = match r.active_version() {
            Ok(v) => v,
            Err(e) => return registry_error(&e),
        };
        let (label, content) = match version {
            Some(None) => {
                let lists = (|| {
                    Ok::<_, RegistryError>((
                        r.list::<Capability>()?,
                        r.list::<Agent>()?,
                        r.list::<Policy>()?,
                    ))
                })();
                let (capabilities, agents, policies) = match lists {
                    Ok(l) => l,
                    Err(e) => return registry_error(&e),
                };
                // New capabilities' tools are pinned at approval; a draft has those already pinned.
                let tools = match active.map(|v| r.snapshot(v)) {
                    None => Vec::new(),
                    Some(Ok((_, s))) => s.content.tools,
                    Some(Err(e)) => return registry_error(&e),
                };
                let tools: Vec<_> = tools
                    .into_iter()
                    .filter(|t| capabilities.iter().any(|c| c.spec.name == t.capability))
                    .collect();
                let draft = control::Draft {
                    capabilities: &capabilities,
                    agents: &agents,
                    policies: &policies,
                    tools: &tools,
                };
                let approval = control::Approval {
                    approved_by: "draft",
                    approved_at: now,
                    note: "",
                    latest: None,
                };
                match control::compile(draft, &approval) {
                    Ok(s) => ("draft".to_owned(), s.content),
                    Err(e) => return registry_error(&RegistryError::Approve(e)),
                }
            }
            _ => {
                let Some(v) = version.flatten().or(active) else {
                    return error(
                        404,
                        "not_found",
                        "nothing is approved yet: ask the draft (snapshot: draft)",
                    );
                };
                match r.snapshot(v) {
                    Ok((info, s)) => (format!("v{v} blake3:{}", info.hash), s.content),
                    Err(e) => return registry_error(&e),
                }
            }
        };
        let governor = control::cedar::policy_set(&content.policies)
            .map_err(|p| format!("{} policy problem(s)", p.len()))
            .and_then(|set| Governor::new(&content, set));
        let governor = match governor {
            Ok(g) => g,
            Err(e) => return error(422, "policy_invalid", e),
        };
        let answers: Vec<_> = req.questions.iter().map(|q| governor.explain(q)).collect();
        answer(200, &json!({"snapshot": label, "answers": answers}))
    }

    /// Constant-time check of a presented bearer token: both sides are hashed and `blake3::Hash`
    /// compares in constant time, so neither the length nor the content of the token leaks.
    pub fn authorized(&self, authorization: Option<&str>) -> bool {
        bearer(authorization).is_some_and(|p| blake3::hash(p.as_bytes()) == self.token_hash)
    }

    /// Publish the registry's API keys to the cores (at start, and after every change through the
    /// admin API: issuing, revoking, removing an agent, applying a file). On a read failure the cores
    /// keep the table they had.
    pub fn publish_keys(&self) {
        // A data plane admits the keys its control plane signed, not its own (it issues none).
        let keys = if self.following.is_some() {
            self.registry.followed_keys()
        } else {
            self.registry.all_keys()
        };
        match keys {
            Ok(keys) => {
                let table = key_table(&keys);
                crate::info!("agent API keys published keys={}", table.len());
                self.published.publish_keys(table);
                if self.following.is_none() {
                    // Data planes long-polling now come back for the new key list.
                    self.beacon.ring();
                }
            }
            Err(e) => crate::error!("API keys unreadable, the previous key table stays: {e}"),
        }
    }

    /// `/admin/v1/secrets`: the embedded store's names (never values), setting and removing them, and
    /// checking that any reference resolves. A value travels only in a request body, is sealed at once,
    /// and is never answered, logged or echoed in an error.
    fn secrets(&self, method: &str, tail: &[&str], body: &[u8], actor: &str, now: u64) -> Answer {
        use portcullis_pipeline::credential::SecretRef;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Put {
            r#ref: String,
            value: portcullis_pipeline::credential::Secret,
            #[serde(default)]
            rotate: bool,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Named {
            r#ref: String,
        }
        let Some(broker) = &self.broker else {
            return error(503, "secrets_unavailable", "no credential broker");
        };
        let embedded_ref = |s: &str| -> Result<SecretRef, Answer> {
            let r = SecretRef::parse(s)
                .map_err(|e| error(400, "invalid_field", format!("ref: {e}")))?;
            if r.store != "embedded" {
                return Err(error(
                    400,
                    "invalid_field",
                    format!("ref: `{}` is managed by store `{}`, not here; only embedded/... secrets are stored by Portcullis", r, r.store),
                ));
            }
            Ok(r)
        };
        let store = || {
            broker
                .embedded()
                .map_err(|why| error(409, "embedded_store_off", why))
        };
        match (method, tail) {
            ("GET", []) => {
                let (registry, key) = match store() {
                    Ok(s) => s,
                    Err(a) => return a,
                };
                match registry.secrets() {
                    Ok(list) => {
                        let list: Vec<_> = list
                            .into_iter()
                            .map(|i| {
                                json!({
                                    "ref": format!("embedded/{}", i.name),
                                    "version": i.version,
                                    "updated_by": i.updated_by,
                                    "updated_at": i.updated_at,
                                    "sealed_with_current_key": i.key_id == key.id_hex(),
                                })
                            })
                            .collect();
                        answer(200, &list)
                    }
                    Err(e) => registry_error(&e),
                }
            }
            ("POST", []) => {
                // Not `parse_body`: a serde message may quote the offending value, and here that is the secret.
                let put: Put = match serde_json::from_slice(body) {
                    Ok(p) => p,
                    Err(_) => {
                        return error(
                            400,
                            "bad_request",
                            "body: expected {\"ref\": \"embedded/PATH#FIELD\", \"value\": \"...\", \"rotate\": false}",
                        )
                    }
                };
                let r = match embedded_ref(&put.r#ref) {
                    Ok(r) => r,
                    Err(a) => return a,
                };
                let (registry, key) = match store() {
                    Ok(s) => s,
                    Err(a) => return a,
                };
                let name = crate::broker::embedded_name(&r);
                match registry.put_secret(key, &name, put.value.expose(), put.rotate, actor, now) {
                    Ok(i) => answer(
                        if i.version == 1 { 201 } else { 200 },
                        &json!({"ref": r.to_string(), "version": i.version, "updated_by": i.updated_by, "updated_at": i.updated_at}),
                    ),
                    Err(e) => registry_error(&e),
                }
            }
            ("POST", ["remove"]) => {
                let n: Named = match parse_body(body) {
                    Ok(n) => n,
                    Err(a) => return a,
                };
                let r = match embedded_ref(&n.r#ref) {
                    Ok(r) => r,
                    Err(a) => return a,
                };
                let (registry, _) = match store() {
                    Ok(s) => s,
                    Err(a) => return a,
                };
                match registry.remove_secret(&crate::broker::embedded_name(&r)) {
                    Ok(()) => answer(200, &json!({"ref": r.to_string(), "removed": true})),
                    Err(e) => registry_error(&e),
                }
            }
            // Resolve a reference of any store, as a call would (agent-scoped ones with the agent's name
            // filled in), and say whether it worked: never the value.
            ("POST", ["check"]) => {
                let n: Named = match parse_body(body) {
                    Ok(n) => n,
                    Err(a) => return a,
                };
                let r = match SecretRef::parse(&n.r#ref) {
                    Ok(r) => r,
                    Err(e) => return error(400, "invalid_field", format!("ref: {e}")),
                };
                match broker.resolve_blocking(&crate::broker::Want::Secret(r.clone())) {
                    Ok(_) => answer(200, &json!({"ref": r.to_string(), "resolves": true})),
                    Err(e) => answer(
                        200,
                        &json!({"ref": r.to_string(), "resolves": false, "error": e}),
                    ),
                }
            }
            _ => error(
                405,
                "method_not_allowed",
                "secrets: GET, POST (set), POST remove, POST check",
            ),
        }
    }

    /// Serve one admin request (`path` without its query); `authorized`: it carried the admin token or
    /// the console's login (`console::Console::authenticate`).
    pub async fn handle(
        &self,
        method: &str,
        path: &str,
        authorized: bool,
        actor: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let answer = self
            .handle_request(method, path, authorized, actor, body)
            .await;
        // Keys change only by issuing, revoking, or removing their agent (directly or by apply).
        let touches_keys =
            path.starts_with("/admin/v1/agents") || path.starts_with("/admin/v1/apply");
        if method != "GET" && answer.status < 300 && touches_keys {
            self.publish_keys();
        }
        answer
    }

    async fn handle_request(
        &self,
        method: &str,
        path: &str,
        authorized: bool,
        actor: Option<&str>,
        body: &[u8],
    ) -> Answer {
        if path == "/admin/openapi.json" && method == "GET" {
            return Answer {
                status: 200,
                body: OPENAPI.as_bytes().to_vec(),
            };
        }
        if !authorized {
            return error(
                401,
                "unauthenticated",
                "admin API calls need `Authorization: Bearer <token>` with the token from DATA_DIR/admin.token",
            );
        }
        let actor = actor
            .filter(|a| !a.is_empty() && a.len() <= 128 && !a.chars().any(char::is_control))
            .unwrap_or("admin");
        let Some(rest) = path.strip_prefix("/admin/v1/") else {
            return error(404, "not_found", format!("no admin resource {path}"));
        };
        let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let now = now_ms();
        let r = &self.registry;
        // Secrets belong to this appliance (a data plane keeps its own), so they are edited here even
        // when snapshots come from elsewhere.
        if let ["secrets", tail @ ..] = parts.as_slice() {
            return self.secrets(method, tail, body, actor, now);
        }
        if let Some(f) = &self.following {
            if method != "GET" {
                return error(
                    409,
                    RegistryError::Follower.code(),
                    format!(
                        "this data plane follows the control plane at {}: make changes there",
                        f.control_plane()
                    ),
                );
            }
        }
        match (method, parts.as_slice()) {
            ("GET", ["sync"]) => match &self.following {
                Some(f) => answer(200, &f.snapshot()),
                None => error(
                    404,
                    "not_found",
                    "this appliance does not follow a control plane (see GET /admin/v1/data-planes)",
                ),
            },
            ("GET", ["identity"]) => answer(
                200,
                &json!({"resource": self.identity.resource, "providers": self.identity.status()}),
            ),
            ("GET", ["data-planes"]) => answer(200, &self.data_planes.list()),
            ("GET", ["tls"]) => match &self.tls_fingerprint {
                Some(fp) => answer(200, &json!({"fingerprint_sha256": fp})),
                None => error(404, "not_found", "no TLS listener is configured"),
            },
            (_, ["capabilities", name, "openapi", tail @ ..]) => {
                self.openapi(method, name, tail, body, actor, now)
            }
            ("PUT", ["capabilities", name]) => {
                // The document and selection are set by the `openapi` resource; a plain edit keeps them.
                let mut spec: Capability = match parse_body(body) {
                    Ok(s) => s,
                    Err(a) => return a,
                };
                if spec.openapi.is_none() {
                    if let Ok(old) = r.get::<Capability>(name) {
                        spec.openapi = old.spec.openapi;
                    }
                }
                let body = serde_json::to_vec(&spec).unwrap_or_default();
                self.records::<Capability>(method, &[name], &body, actor, now)
            }
            (_, ["capabilities", tail @ ..]) => {
                self.records::<Capability>(method, tail, body, actor, now)
            }
            (_, ["agents", name, "keys"]) => match method {
                "GET" => result(200, r.keys(name)),
                "POST" => self.issue_key(name, actor, now),
                _ => not_allowed("GET, POST"),
            },
            ("DELETE", ["agents", name, "keys", id]) => {
                result(200, r.revoke_key(name, id, actor, now))
            }
            (_, ["agents", tail @ ..]) => self.records::<Agent>(method, tail, body, actor, now),
            (_, ["policies", tail @ ..]) => self.records::<Policy>(method, tail, body, actor, now),
            ("POST", ["approve"]) => {
                let req: ApproveRequest = match parse_body(body) {
                    Ok(r) => r,
                    Err(a) => return a,
                };
                self.approve(actor, req, now).await
            }
            ("POST", ["explain"]) => match parse_body::<ExplainRequest>(body) {
                Ok(req) => self.explain(req, now),
                Err(a) => a,
            },
            ("POST", ["apply"]) => match parse_body::<ApplyRequest>(body) {
                Ok(req) => result(200, r.apply(req.state, actor, now, req.dry_run)),
                Err(a) => a,
            },
            ("GET", ["snapshots"]) => result(200, r.snapshots()),
            ("GET", ["snapshots", v]) => match v.parse::<u64>() {
                Ok(v) => result(
                    200,
                    r.snapshot(v)
                        .map(|(info, s)| json!({"info": info, "content": s.content})),
                ),
                Err(_) => error(400, "bad_request", "snapshot versions are numbers"),
            },
            ("POST", ["snapshots", v, "activate"]) => match v.parse::<u64>() {
                Ok(v) => {
                    let a = r.activate(v);
                    if a.is_ok() {
                        self.served(v).await;
                    }
                    result(200, a)
                }
                Err(_) => error(400, "bad_request", "snapshot versions are numbers"),
            },
            ("GET", ["snapshots", a, "diff", b]) => match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(a), Ok(b)) => result(
                    200,
                    r.snapshot(a).and_then(|(_, old)| {
                        r.snapshot(b)
                            .map(|(_, new)| control::diff(&old.content, &new.content))
                    }),
                ),
                _ => error(400, "bad_request", "snapshot versions are numbers"),
            },
            ("GET", ["signing-key"]) => answer(
                200,
                &json!({"algorithm": "ed25519", "public_key": r.public_key_hex()}),
            ),
            _ => error(
                404,
                "not_found",
                format!("no admin resource {method} {path}"),
            ),
        }
    }

    fn records<T: Kind + PartialEq>(
        &self,
        method: &str,
        tail: &[&str],
        body: &[u8],
        actor: &str,
        now: u64,
    ) -> Answer {
        let r = &self.registry;
        match (method, tail) {
            ("GET", []) => result(200, r.list::<T>()),
            ("POST", []) => match parse_body::<T>(body) {
                Ok(spec) => result(201, r.put(spec, Put::Create, actor, now)),
                Err(a) => a,
            },
            ("GET", [key]) => result(200, r.get::<T>(key)),
            ("GET", [key, "history"]) => result(200, r.history::<T>(key)),
            ("PUT", [key]) => match parse_body::<T>(body) {
                Ok(spec) if spec.key() != *key => error(
                    400,
                    "bad_request",
                    format!(
                        "the body names `{}` but the path names `{key}`; renaming is remove + add",
                        spec.key()
                    ),
                ),
                Ok(spec) => result(200, r.put(spec, Put::Upsert, actor, now)),
                Err(a) => a,
            },
            ("DELETE", [key]) => result(
                200,
                r.remove::<T>(key, actor, now)
                    .map(|()| json!({"removed": key})),
            ),
            (_, [] | [_]) => not_allowed("GET, POST, PUT, DELETE"),
            _ => error(404, "not_found", format!("no such {} resource", T::NAME)),
        }
    }

    /// An `openapi` capability's document: `POST` imports one (JSON or YAML bytes), `GET` lists its
    /// operations, `PUT …/select` chooses which become tools. Each change is a draft, like any edit.
    fn openapi(
        &self,
        method: &str,
        name: &str,
        tail: &[&str],
        body: &[u8],
        actor: &str,
        now: u64,
    ) -> Answer {
        let r = &self.registry;
        let cap = match r.get::<Capability>(name) {
            Ok(c) => c,
            Err(e) => return registry_error(&e),
        };
        if cap.spec.kind != CapabilityKind::Openapi {
            return error(
                409,
                "not_openapi",
                format!(
                    "capability `{name}` is of kind mcp; only openapi capabilities take a document"
                ),
            );
        }
        let stored = |source: &Option<OpenApiSource>| -> Result<Option<openapi::Document>, Answer> {
            let Some(src) = source else { return Ok(None) };
            let bytes = r
                .document(&src.document)
                .map_err(|e| registry_error(&e))?
                .ok_or_else(|| error(500, "internal", "the capability's document is not stored"))?;
            openapi::import(&bytes)
                .map(Some)
                .map_err(|e| error(500, "internal", format!("stored document: {e}")))
        };
        let select = cap
            .spec
            .openapi
            .as_ref()
            .map(|s| s.select.clone())
            .unwrap_or_default();
        match (method, tail) {
            ("GET", []) => match stored(&cap.spec.openapi) {
                Ok(Some(doc)) => answer(200, &operations_report(&cap.spec, &doc, &select)),
                Ok(None) => error(
                    404,
                    "no_document",
                    format!("capability `{name}` has no OpenAPI document yet (portcullis openapi import)"),
                ),
                Err(a) => a,
            },
            ("POST", []) => {
                let doc = match openapi::import(body) {
                    Ok(d) => d,
                    Err(e) => return error(400, "openapi_invalid", e.to_string()),
                };
                let before = match stored(&cap.spec.openapi) {
                    Ok(d) => d,
                    Err(a) => return a,
                };
                let hash = match r.put_document(body) {
                    Ok(h) => h,
                    Err(e) => return registry_error(&e),
                };
                let mut spec = cap.spec.clone();
                spec.openapi = Some(OpenApiSource {
                    document: hash,
                    select: select.clone(),
                    redirects: cap.spec.openapi.as_ref().map_or(0, |s| s.redirects),
                });
                if spec != cap.spec {
                    if let Err(e) = r.put(spec.clone(), Put::Update, actor, now) {
                        return registry_error(&e);
                    }
                }
                let mut report = operations_report(&spec, &doc, &select);
                report["changes"] = json!(before.map(|b| openapi::diff(&b, &doc)));
                answer(200, &report)
            }
            ("PUT", ["select"]) => {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct SelectRequest {
                    select: Vec<String>,
                    /// Redirects calls follow within the base URL; unchanged when left out.
                    #[serde(default)]
                    redirects: Option<u8>,
                }
                let req: SelectRequest = match parse_body(body) {
                    Ok(q) => q,
                    Err(a) => return a,
                };
                let doc = match stored(&cap.spec.openapi) {
                    Ok(Some(d)) => d,
                    Ok(None) => {
                        return error(
                            409,
                            "no_document",
                            format!("import a document into `{name}` before selecting operations"),
                        )
                    }
                    Err(a) => return a,
                };
                if let Err(e) = openapi::pin(name, &doc, &req.select) {
                    return error(400, "selection_invalid", e.to_string());
                }
                let mut spec = cap.spec.clone();
                if let Some(src) = spec.openapi.as_mut() {
                    src.select.clone_from(&req.select);
                    if let Some(n) = req.redirects {
                        src.redirects = n;
                    }
                }
                if let Err(e) = spec.normalize() {
                    return error(400, "invalid_field", e.to_string());
                }
                if spec != cap.spec {
                    if let Err(e) = r.put(spec.clone(), Put::Update, actor, now) {
                        return registry_error(&e);
                    }
                }
                answer(200, &operations_report(&spec, &doc, &req.select))
            }
            _ => not_allowed("GET, POST, PUT …/select"),
        }
    }

    fn issue_key(&self, agent: &str, actor: &str, now: u64) -> Answer {
        let (id, secret) = match (random_hex(8), random_hex(32)) {
            (Ok(i), Ok(s)) => (i, s),
            (Err(e), _) | (_, Err(e)) => return error(500, "internal", e),
        };
        let key = format!("{API_KEY_PREFIX}{id}_{secret}");
        let hash = blake3::hash(key.as_bytes()).to_hex().to_string();
        match self.registry.add_key(agent, &id, &hash, actor, now) {
            Ok(stored) => answer(
                201,
                &json!({
                    "id": stored.id,
                    "agent": stored.agent,
                    "key": key,
                    "note": "This key is shown once; only its hash is stored.",
                }),
            ),
            Err(e) => registry_error(&e),
        }
    }
}

/// `POST /admin/v1/explain`: questions for one snapshot (`active` by default, a version, or `draft`:
/// the registry as it stands, with the tools the active snapshot pinned).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainRequest {
    #[serde(default)]
    snapshot: Option<Value>,
    questions: Vec<Question>,
}

/// Questions one explain request may ask.
const EXPLAIN_QUESTIONS_MAX: usize = 10_000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveRequest {
    #[serde(default)]
    note: String,
    #[serde(default)]
    activate: Option<bool>,
}

/// `POST /admin/v1/apply`: the desired registry, and whether to only say what would change.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyRequest {
    state: control::DesiredState,
    #[serde(default)]
    dry_run: bool,
}

/// Decode a request body, naming the offending field's path in the error.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Answer> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." { "body".to_owned() } else { path };
        error(400, "bad_request", format!("{at}: {}", e.inner()))
    })
}

/// The token of an `Authorization: Bearer` header.
fn bearer(authorization: Option<&str>) -> Option<&str> {
    authorization
        .and_then(|a| {
            a.strip_prefix("Bearer ")
                .or_else(|| a.strip_prefix("bearer "))
        })
        .map(str::trim)
}

fn not_allowed(allow: &str) -> Answer {
    error(405, "method_not_allowed", format!("allowed: {allow}"))
}

fn result<T: Serialize>(status: u16, r: Result<T, RegistryError>) -> Answer {
    match r {
        Ok(v) => answer(status, &v),
        Err(e) => registry_error(&e),
    }
}

fn registry_error(e: &RegistryError) -> Answer {
    let status = match e {
        RegistryError::NotFound { .. } => 404,
        RegistryError::AlreadyExists { .. } => 409,
        RegistryError::Invalid(_) => 422,
        RegistryError::Approve(ApproveError::NothingChanged { .. }) => 409,
        RegistryError::Approve(ApproveError::ToolsUnavailable { .. }) => 409,
        RegistryError::Approve(_) => 422,
        RegistryError::BadSnapshot { .. }
        | RegistryError::Follower
        | RegistryError::BadActivation
        | RegistryError::StaleActivation { .. }
        | RegistryError::ActivationMismatch { .. }
        | RegistryError::SnapshotConflict { .. }
        | RegistryError::BadKeys
        | RegistryError::StaleKeys { .. } => 409,
        RegistryError::SignerMismatch { .. } => 500,
        RegistryError::MapFull { .. } => 507,
        RegistryError::Open { .. } | RegistryError::Corrupt { .. } | RegistryError::Lmdb(_) => 500,
    };
    let mut err = json!({"code": e.code(), "message": e.to_string()});
    match e {
        RegistryError::Invalid(f) => err["field"] = Value::from(f.field.clone()),
        RegistryError::Approve(ApproveError::PolicyInvalid { problems }) => {
            err["problems"] = serde_json::to_value(problems).unwrap_or_default();
        }
        RegistryError::Approve(ApproveError::ToolsUnavailable { capability, .. }) => {
            err["capability"] = Value::from(capability.clone());
        }
        _ => {}
    }
    answer(status, &json!({ "error": err }))
}

/// The admin API's own description (OpenAPI 3.1), served at `/admin/openapi.json`.
pub const OPENAPI: &str = include_str!("admin-openapi.json");

/// The operations of a document as `openapi ops` shows them: which convert, why not, which are selected.
fn operations_report(c: &Capability, doc: &openapi::Document, select: &[String]) -> Value {
    let chosen: Vec<String> = openapi::pin(&c.name, doc, select)
        .map(|t| t.into_iter().map(|t| t.name).collect())
        .unwrap_or_default();
    let ops: Vec<Value> = doc
        .operations
        .iter()
        .map(|o| {
            json!({
                "method": o.method,
                "path": o.path,
                "operation_id": o.operation_id,
                "tool": format!("{}{}{}", c.name, portcullis_pipeline::names::NAME_SEPARATOR, o.tool_name),
                "summary": o.summary,
                "tags": o.tags,
                "convertible": o.converted().is_some(),
                "reason": match &o.outcome {
                    openapi::Outcome::Unconvertible(w) => Some(w.as_str()),
                    openapi::Outcome::Converted(_) => None,
                },
                "selected": chosen.contains(&o.tool_name),
            })
        })
        .collect();
    json!({
        "capability": c.name,
        "document": c.openapi.as_ref().map(|s| s.document.as_str()),
        "openapi": doc.dialect,
        "title": doc.title,
        "version": doc.version,
        "servers": doc.servers,
        "select": select,
        "operations": ops,
    })
}
