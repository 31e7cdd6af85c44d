//! The control plane's model: capabilities, agents and policies as registered, and the snapshot that
//! approval compiles them into.
//!
//! Pure like the rest of the crate: the caller passes the time and the approver, `storage` persists these
//! types and the appliance serves them. Approval validates every policy against a Cedar schema generated
//! from the model, so a policy that names an attribute no entity has never reaches traffic.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names;

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum CapabilityKind {
    Mcp,
    Openapi,
}

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    Medium,
    High,
    Critical,
}

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Active,
    Disabled,
}

/// How the gateway authenticates to upstreams on an agent's behalf.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialMode {
    /// One credential of the gateway's per upstream.
    Service,
    /// Act on behalf of the calling identity (token exchange).
    Delegated,
    /// A distinct credential per agent per upstream.
    AgentScoped,
}

/// An MCP server or API registered for agents to use. Its name is the namespace of its tools.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Capability {
    pub name: String,
    pub kind: CapabilityKind,
    pub owner: String,
    pub risk: Risk,
    pub environment: String,
    /// `http://` or `https://` URL of the MCP endpoint or the API's base.
    pub endpoint: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub status: Status,
    /// What the gateway does with a tool result whose `structuredContent` does not fit the tool's
    /// pinned `outputSchema`. Left out when `report` (the default), so capabilities encode as before.
    #[serde(default, skip_serializing_if = "OutputSchemaMode::is_report")]
    pub output_schema: OutputSchemaMode,
    /// An `openapi` capability's document and selection (set by `openapi import` and `openapi select`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openapi: Option<OpenApiSource>,
    /// The credentials the gateway presents to this upstream, by reference (`crate::credential`). Left
    /// out when none: the upstream is called without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<crate::credential::Binding>,
    /// Record the arguments of this capability's tool calls in the audit trail (by default only their
    /// digest is), with the named fields redacted. Left out when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_arguments: Option<ArgumentAudit>,
}

/// Which argument fields the audit trail must not keep in clear.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct ArgumentAudit {
    /// Object keys, matched case-insensitively at any depth, whose values are replaced by
    /// `"[redacted]"`.
    #[serde(default)]
    pub redact: Vec<String>,
}

/// Which OpenAPI document an `openapi` capability converts, and which of its operations become tools.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct OpenApiSource {
    /// BLAKE3 (hex) of the document as stored; the registry keeps the bytes by this hash.
    pub document: String,
    /// `crate::openapi::Selector`s as written: operationId or tool name, `METHOD /path`, `tag:T`, `*`.
    #[serde(default)]
    pub select: Vec<String>,
    /// Redirects a call follows, at most, and only within the registered base URL (same scheme, host,
    /// port, under its path); 0 (the default, left out) follows none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redirects: u8,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// Redirects an OpenAPI capability may be set to follow, at most.
pub const REDIRECTS_MAX: u8 = 10;

/// Checking tool results against their pinned output schema.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum OutputSchemaMode {
    /// Not checked.
    Off,
    /// Checked; a mismatch is logged and counted, and the result still reaches the agent.
    #[default]
    Report,
    /// Checked; a mismatch reaches the agent as an `output_schema_invalid` error instead of the result.
    Enforce,
}

impl OutputSchemaMode {
    pub fn is_report(&self) -> bool {
        *self == OutputSchemaMode::Report
    }
}

/// A registered, accountable agent: the principal of every decision.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub name: String,
    pub owner: String,
    /// The client it runs in: `claude-desktop`, `cursor`, `service`, ...
    pub surface: String,
    pub environment: String,
    pub credential_mode: CredentialMode,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub status: Status,
    /// Rate limits and quotas, each `[SCOPE=]COUNT/PERIOD` (`crate::ratelimit`): `600/1m`,
    /// `alpha__transfer=10/1d`. Left out when empty, so agents without limits encode as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<String>,
    /// The agent's own session bounds over the gateway's `[limits]`. Left out when unset, so agents
    /// without them encode as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<AgentSessions>,
}

/// An agent's session bounds as registered: durations written `30m`, `8h` (`session::parse_duration`).
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct AgentSessions {
    /// Idle time after which its sessions expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<String>,
    /// Longest life of one of its sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_max: Option<String>,
    /// Live sessions it may hold across all cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// Open streams one of its sessions may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams_max: Option<u32>,
}

impl AgentSessions {
    /// The bounds as the data plane applies them (`normalize` has checked them).
    pub fn limits(&self) -> crate::session::AgentSessionLimits {
        let d = |v: &Option<String>| {
            v.as_deref()
                .and_then(|t| crate::session::parse_duration(t).ok())
        };
        crate::session::AgentSessionLimits {
            idle: d(&self.idle),
            duration_max: d(&self.duration_max),
            max: self.max.map(|m| m as usize),
            streams_max: self.streams_max,
        }
    }

    fn normalize(&mut self) -> Result<(), FieldError> {
        for (name, v) in [
            ("sessions.idle", &mut self.idle),
            ("sessions.duration_max", &mut self.duration_max),
        ] {
            if let Some(t) = v {
                let d = crate::session::parse_duration(t).map_err(|e| field_err(name, e))?;
                *t = crate::session::format_duration(d);
            }
        }
        for (name, v) in [
            ("sessions.max", self.max),
            ("sessions.streams_max", self.streams_max),
        ] {
            if v == Some(0) || v.is_some_and(|n| n > 1_000_000) {
                return Err(field_err(name, "must be 1 to 1000000"));
            }
        }
        Ok(())
    }
}

/// One Cedar policy (a single `permit` or `forbid` statement).
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub id: String,
    #[serde(default)]
    pub description: String,
    pub text: String,
}

/// Who changed a record and when; `version` counts its edits from 1.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct RecordMeta {
    pub version: u64,
    pub created_by: String,
    /// Unix milliseconds.
    pub created_at: u64,
    pub updated_by: String,
    pub updated_at: u64,
}

impl RecordMeta {
    pub fn first(by: &str, now_ms: u64) -> Self {
        RecordMeta {
            version: 1,
            created_by: by.to_owned(),
            created_at: now_ms,
            updated_by: by.to_owned(),
            updated_at: now_ms,
        }
    }

    pub fn next(&self, by: &str, now_ms: u64) -> Self {
        RecordMeta {
            version: self.version + 1,
            created_by: self.created_by.clone(),
            created_at: self.created_at,
            updated_by: by.to_owned(),
            updated_at: now_ms,
        }
    }
}

/// A registry entry: the record as last edited, with its history counter.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Record<T> {
    pub spec: T,
    pub meta: RecordMeta,
}

/// A field that fails validation, named by its path for the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn field_err(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: message.into(),
    }
}

const TEXT_BYTES_MAX: usize = 128;
const DESCRIPTION_BYTES_MAX: usize = 4096;
const LIST_LEN_MAX: usize = 64;
/// One policy's text; a policy is one statement, so this is generous.
pub const POLICY_BYTES_MAX: usize = 64 << 10;

/// A short free-text field: owner, environment, surface. Printable, one line.
fn check_text(field: &str, v: &str) -> Result<(), FieldError> {
    if v.trim().is_empty() {
        return Err(field_err(field, "must not be empty"));
    }
    if v.len() > TEXT_BYTES_MAX {
        return Err(field_err(
            field,
            format!("longer than {TEXT_BYTES_MAX} bytes"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(field_err(field, "contains control characters"));
    }
    Ok(())
}

/// An identifier: ASCII letters, digits, `-`, `_`, `.`, starting with a letter or digit.
fn check_ident(field: &str, v: &str, max: usize) -> Result<(), FieldError> {
    let Some(first) = v.bytes().next() else {
        return Err(field_err(field, "must not be empty"));
    };
    if v.len() > max {
        return Err(field_err(field, format!("longer than {max} bytes")));
    }
    if !first.is_ascii_alphanumeric()
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(field_err(
            field,
            format!("`{v}`: use ASCII letters, digits, '-', '_' or '.', starting with a letter or digit"),
        ));
    }
    Ok(())
}

/// Sort and deduplicate a tag-like list so that equal sets encode equally.
fn normalize_list(field: &str, list: &mut Vec<String>) -> Result<(), FieldError> {
    if list.len() > LIST_LEN_MAX {
        return Err(field_err(
            field,
            format!("more than {LIST_LEN_MAX} entries"),
        ));
    }
    for (i, v) in list.iter().enumerate() {
        check_ident(&format!("{field}[{i}]"), v, 64)?;
    }
    list.sort();
    list.dedup();
    Ok(())
}

fn check_url(field: &str, v: &str) -> Result<(), FieldError> {
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or_else(|| field_err(field, "must be an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err(field_err(field, "has no host"));
    }
    if v.bytes().any(|b| b <= b' ' || b == 0x7f) || v.len() > 2048 {
        return Err(field_err(
            field,
            "contains spaces or control characters, or is too long",
        ));
    }
    Ok(())
}

impl Capability {
    /// Check every field and normalise lists; an `Err` names the first bad field.
    pub fn normalize(&mut self) -> Result<(), FieldError> {
        names::validate_upstream_name(&self.name).map_err(|e| {
            field_err(
                "name",
                format!(
                    "`{}` ({e:?}): lowercase letters, digits and '-', starting with a letter, at most {} bytes (it prefixes the capability's tool names)",
                    self.name,
                    names::UPSTREAM_NAME_BYTES_MAX
                ),
            )
        })?;
        check_text("owner", &self.owner)?;
        check_ident("environment", &self.environment, 64)?;
        check_url("endpoint", &self.endpoint)?;
        normalize_list("tags", &mut self.tags)?;
        if self.description.len() > DESCRIPTION_BYTES_MAX {
            return Err(field_err(
                "description",
                format!("longer than {DESCRIPTION_BYTES_MAX} bytes"),
            ));
        }
        if let Some(b) = &self.credential {
            b.check().map_err(|(f, m)| field_err(&f, m))?;
        }
        if let Some(a) = &mut self.audit_arguments {
            normalize_list("audit_arguments.redact", &mut a.redact)?;
        }
        if self
            .openapi
            .as_ref()
            .is_some_and(|o| o.redirects > REDIRECTS_MAX)
        {
            return Err(field_err(
                "openapi.redirects",
                format!("at most {REDIRECTS_MAX}"),
            ));
        }
        Ok(())
    }
}

impl Capability {
    /// Whether approval pins this capability's tools by listing them and the data plane serves it: an
    /// active MCP server. (OpenAPI capabilities become tools by conversion: `serves_api`.)
    pub fn serves_mcp(&self) -> bool {
        self.kind == CapabilityKind::Mcp && self.status == Status::Active
    }

    /// Whether approval converts this capability's selected operations and the data plane calls its API:
    /// an active OpenAPI capability.
    pub fn serves_api(&self) -> bool {
        self.kind == CapabilityKind::Openapi && self.status == Status::Active
    }
}

impl Agent {
    pub fn normalize(&mut self) -> Result<(), FieldError> {
        check_ident("name", &self.name, 64)?;
        check_text("owner", &self.owner)?;
        check_ident("surface", &self.surface, 64)?;
        check_ident("environment", &self.environment, 64)?;
        normalize_list("groups", &mut self.groups)?;
        if self.limits.len() > crate::ratelimit::LIMITS_PER_AGENT_MAX {
            return Err(field_err(
                "limits",
                format!(
                    "more than {} entries",
                    crate::ratelimit::LIMITS_PER_AGENT_MAX
                ),
            ));
        }
        for (i, l) in self.limits.iter_mut().enumerate() {
            let parsed = crate::ratelimit::Limit::parse(l)
                .map_err(|e| field_err(&format!("limits[{i}]"), e))?;
            *l = parsed.to_string();
        }
        self.limits.sort();
        self.limits.dedup();
        if let Some(sessions) = &mut self.sessions {
            sessions.normalize()?;
            if *sessions == AgentSessions::default() {
                self.sessions = None;
            }
        }
        Ok(())
    }
}

impl Policy {
    pub fn normalize(&mut self) -> Result<(), FieldError> {
        check_ident("id", &self.id, TEXT_BYTES_MAX)?;
        if self.text.trim().is_empty() {
            return Err(field_err("text", "must not be empty"));
        }
        if self.text.len() > POLICY_BYTES_MAX {
            return Err(field_err(
                "text",
                format!("longer than {POLICY_BYTES_MAX} bytes"),
            ));
        }
        if self.description.len() > DESCRIPTION_BYTES_MAX {
            return Err(field_err(
                "description",
                format!("longer than {DESCRIPTION_BYTES_MAX} bytes"),
            ));
        }
        Ok(())
    }
}

/// The registry as a declarative document wants it (`portcullis apply -f`): every record listed, nothing
/// else.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    #[serde(default)]
    pub agents: Vec<Agent>,
    #[serde(default)]
    pub policies: Vec<Policy>,
}

/// A tool definition as approved: what discovery shows and what calls are checked against. Everything
/// an agent (or its model) reads to decide whether and how to call the tool is pinned; `_meta` and icons
/// are not, being presentation the upstream may vary freely.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct PinnedTool {
    pub capability: String,
    /// The upstream's own name (agents see it namespaced).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default)]
    pub description: String,
    #[rkyv(with = crate::archive::JsonText)]
    pub input_schema: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[rkyv(with = rkyv::with::Map<crate::archive::JsonText>)]
    pub output_schema: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[rkyv(with = rkyv::with::Map<crate::archive::JsonText>)]
    pub annotations: Option<serde_json::Value>,
    /// For a tool converted from an OpenAPI operation: the HTTP request its calls make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<crate::openapi::CallPlan>,
}

/// Tools one capability may pin; past it approval refuses rather than pin a truncated list.
pub const TOOLS_PER_CAPABILITY_MAX: usize = 10_000;

impl PinnedTool {
    /// Read one entry of an upstream's `tools/list` result (MCP `Tool`: `name` and `inputSchema`
    /// required).
    pub fn from_listed(capability: &str, tool: &serde_json::Value) -> Result<PinnedTool, String> {
        let obj = tool.as_object().ok_or("a tool that is not an object")?;
        let name = obj
            .get("name")
            .and_then(|v| v.as_str())
            .ok_or("a tool without a string `name`")?;
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(format!(
                "tool name `{}` is empty, longer than 128 bytes or has control characters",
                name.escape_debug()
            ));
        }
        let input_schema = obj
            .get("inputSchema")
            .filter(|v| v.is_object())
            .cloned()
            .ok_or_else(|| format!("tool `{name}` has no object `inputSchema`"))?;
        let text = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        Ok(PinnedTool {
            capability: capability.to_owned(),
            name: name.to_owned(),
            title: text("title"),
            description: text("description").unwrap_or_default(),
            input_schema,
            output_schema: obj.get("outputSchema").filter(|v| v.is_object()).cloned(),
            annotations: obj.get("annotations").filter(|v| v.is_object()).cloned(),
            call: None,
        })
    }

    /// The MCP `Tool` object agents are shown, under the name they see it by.
    pub fn to_listed(&self, exposed_name: &str) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("name".into(), exposed_name.into());
        if let Some(t) = &self.title {
            m.insert("title".into(), t.as_str().into());
        }
        if !self.description.is_empty() {
            m.insert("description".into(), self.description.as_str().into());
        }
        m.insert("inputSchema".into(), self.input_schema.clone());
        if let Some(o) = &self.output_schema {
            m.insert("outputSchema".into(), o.clone());
        }
        if let Some(a) = &self.annotations {
            m.insert("annotations".into(), a.clone());
        }
        serde_json::Value::Object(m)
    }
}

/// Everything an approval decides about: the registry and the pinned tools, plus the Cedar schema the
/// policies were validated against.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct SnapshotContent {
    pub capabilities: Vec<Record<Capability>>,
    pub agents: Vec<Record<Agent>>,
    pub policies: Vec<Record<Policy>>,
    pub tools: Vec<PinnedTool>,
    pub cedar_schema: String,
}

/// Who approved what, when, and which content: the part of a snapshot shown in lists.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct SnapshotHeader {
    /// Monotonic, from 1.
    pub version: u64,
    pub approved_by: String,
    /// Unix milliseconds.
    pub approved_at: u64,
    pub note: String,
    /// The version this one was approved on top of, if any.
    pub parent: Option<u64>,
    /// BLAKE3 of the canonical encoding of `content`, hex: equal content, equal hash.
    pub content_hash: String,
    pub policy_ids: Vec<String>,
    /// `name@version` of each capability.
    pub capability_versions: Vec<String>,
}

#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub header: SnapshotHeader,
    pub content: SnapshotContent,
}

impl Snapshot {
    /// The canonical JSON encoding (`content_hash` is BLAKE3 of the content's; the stored, signed body is
    /// the rkyv archive of `crate::archive`): compact JSON of these types, whose fields
    /// serialize in declaration order, whose lists `compile` sorts by key, and whose free-form JSON
    /// (schemas) is `serde_json::Value`, an object type with sorted keys. Equal snapshots encode to equal
    /// bytes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// BLAKE3 of `bytes`, lowercase hex.
pub fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Why a draft cannot be approved. Nothing is written when approval fails.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum ApproveError {
    /// One or more policies do not parse or do not validate against the generated schema.
    PolicyInvalid { problems: Vec<PolicyProblem> },
    /// The draft equals the latest snapshot's content: no new version.
    NothingChanged { version: u64 },
    /// Two records reference each other inconsistently (e.g. a tool of an unregistered capability).
    Inconsistent { message: String },
    /// A capability's tool definitions could not be fetched for pinning, or the capability changed while
    /// they were being fetched.
    ToolsUnavailable { capability: String, message: String },
}

impl fmt::Display for ApproveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApproveError::PolicyInvalid { problems } => {
                write!(f, "{} policy problem(s)", problems.len())?;
                for p in problems {
                    write!(f, "; {p}")?;
                }
                Ok(())
            }
            ApproveError::NothingChanged { version } => write!(
                f,
                "nothing changed since snapshot {version}; no new version approved"
            ),
            ApproveError::Inconsistent { message } => f.write_str(message),
            ApproveError::ToolsUnavailable {
                capability,
                message,
            } => write!(f, "capability `{capability}`: {message}"),
        }
    }
}

/// One thing wrong with one policy, located in its text (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyProblem {
    pub policy_id: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "policy `{}` {}:{}: {}",
            self.policy_id, self.line, self.column, self.message
        )
    }
}

/// The registry as it stands, to be approved.
#[derive(Clone, Copy, Debug)]
pub struct Draft<'a> {
    pub capabilities: &'a [Record<Capability>],
    pub agents: &'a [Record<Agent>],
    pub policies: &'a [Record<Policy>],
    pub tools: &'a [PinnedTool],
}

/// Approval metadata the caller supplies (the pipeline has no clock).
#[derive(Clone, Debug)]
pub struct Approval<'a> {
    pub approved_by: &'a str,
    pub approved_at: u64,
    pub note: &'a str,
    /// The latest approved snapshot, if any: its version and content hash.
    pub latest: Option<(u64, &'a str)>,
}

/// Compile a draft into the next snapshot: validate every policy, sort everything into canonical order,
/// hash the content. Refuses when the content equals the latest snapshot's.
pub fn compile(draft: Draft<'_>, approval: &Approval<'_>) -> Result<Snapshot, ApproveError> {
    let mut capabilities = draft.capabilities.to_vec();
    capabilities.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    let mut agents = draft.agents.to_vec();
    agents.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    let mut policies = draft.policies.to_vec();
    policies.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
    let mut tools = draft.tools.to_vec();
    tools.sort_by(|a, b| (&a.capability, &a.name).cmp(&(&b.capability, &b.name)));

    let known: BTreeSet<&str> = capabilities.iter().map(|c| c.spec.name.as_str()).collect();
    if let Some(t) = tools
        .iter()
        .find(|t| !known.contains(t.capability.as_str()))
    {
        return Err(ApproveError::Inconsistent {
            message: format!(
                "tool `{}` belongs to capability `{}`, which is not registered",
                t.name, t.capability
            ),
        });
    }

    let cedar_schema = cedar::schema_text(&tools);
    let problems = cedar::validate(&policies, &cedar_schema);
    if !problems.is_empty() {
        return Err(ApproveError::PolicyInvalid { problems });
    }

    let content = SnapshotContent {
        capabilities,
        agents,
        policies,
        tools,
        cedar_schema,
    };
    let content_hash = hash_hex(&serde_json::to_vec(&content).unwrap_or_default());
    if let Some((version, hash)) = approval.latest {
        if hash == content_hash {
            return Err(ApproveError::NothingChanged { version });
        }
    }
    let header = SnapshotHeader {
        version: approval.latest.map_or(1, |(v, _)| v + 1),
        approved_by: approval.approved_by.to_owned(),
        approved_at: approval.approved_at,
        note: approval.note.to_owned(),
        parent: approval.latest.map(|(v, _)| v),
        content_hash,
        policy_ids: content.policies.iter().map(|p| p.spec.id.clone()).collect(),
        capability_versions: content
            .capabilities
            .iter()
            .map(|c| format!("{}@{}", c.spec.name, c.meta.version))
            .collect(),
    };
    Ok(Snapshot { header, content })
}

/// What changed between two snapshots, by record key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotDiff {
    pub capabilities: ListDiff,
    pub agents: ListDiff,
    pub policies: ListDiff,
    pub tools: ListDiff,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ListDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

fn diff_by<T: PartialEq>(old: &[T], new: &[T], key: impl Fn(&T) -> String) -> ListDiff {
    let mut d = ListDiff::default();
    for n in new {
        match old.iter().find(|o| key(o) == key(n)) {
            None => d.added.push(key(n)),
            Some(o) if o != n => d.changed.push(key(n)),
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|n| key(n) == key(o)) {
            d.removed.push(key(o));
        }
    }
    d
}

pub fn diff(old: &SnapshotContent, new: &SnapshotContent) -> SnapshotDiff {
    // Edits that only touched metadata (who/when) without changing the spec are not changes.
    let specs = |v: &[Record<Capability>]| v.iter().map(|r| r.spec.clone()).collect::<Vec<_>>();
    let agents = |v: &[Record<Agent>]| v.iter().map(|r| r.spec.clone()).collect::<Vec<_>>();
    let policies = |v: &[Record<Policy>]| v.iter().map(|r| r.spec.clone()).collect::<Vec<_>>();
    SnapshotDiff {
        capabilities: diff_by(&specs(&old.capabilities), &specs(&new.capabilities), |c| {
            c.name.clone()
        }),
        agents: diff_by(&agents(&old.agents), &agents(&new.agents), |a| {
            a.name.clone()
        }),
        policies: diff_by(&policies(&old.policies), &policies(&new.policies), |p| {
            p.id.clone()
        }),
        tools: diff_by(&old.tools, &new.tools, |t| {
            format!("{}{}{}", t.capability, names::NAME_SEPARATOR, t.name)
        }),
    }
}

/// The Cedar side: the generated schema and policy validation.
pub mod cedar {
    use std::str::FromStr;

    pub use cedar_policy::PolicySet;
    use cedar_policy::{PolicyId, Schema, ValidationMode, Validator};
    use miette::Diagnostic;

    use super::{PinnedTool, Policy, PolicyProblem, Record};

    /// The schema every policy is validated against. Attribute names match the registry's fields, so
    /// a policy reads like the records it is about: `principal.owner`, `resource.risk`,
    /// `principal in Group::"finance"`, `resource in Capability::"payments"`. `context.arguments` is
    /// typed from the pinned tools' input schemas (`govern::arguments_type`): every attribute optional,
    /// so policies guard with `has`. A capability's prompts and resources are decided on the capability
    /// itself (`resource == Capability::"docs"`, which `resource in Capability::"docs"` also matches);
    /// it has the tools' attributes, so a policy on either validates against both.
    pub fn schema_text(tools: &[PinnedTool]) -> String {
        let mut arguments = String::new();
        crate::govern::write_record(&mut arguments, &crate::govern::arguments_type(tools));
        let text = r#"// Generated by Portcullis from its registry model; policies are validated against it at approval.
entity Group;
entity Agent in [Group] = {
  "owner": String,
  "surface": String,
  "environment": String,
  "credential_mode": String,
  "groups": Set<String>,
};
entity Capability = {
  "name": String,
  "capability": String,
  "owner": String,
  "risk": String,
  "environment": String,
  "kind": String,
  "tags": Set<String>,
};
entity Tool in [Capability] = {
  "name": String,
  "capability": String,
  "owner": String,
  "risk": String,
  "environment": String,
  "kind": String,
  "tags": Set<String>,
};
type RequestContext = {
  "transport": String,
  "revision": String,
  "client_address": String,
  "session_age_secs": Long,
  "hour": Long,
  "weekday": Long,
  "arguments": Arguments,
};
action discover appliesTo { principal: [Agent], resource: [Tool, Capability], context: RequestContext };
action call appliesTo { principal: [Agent], resource: [Tool, Capability], context: RequestContext };
"#;
        format!("{text}type Arguments = {arguments};\n")
    }

    /// Parse a generated schema. Only attribute names Cedar can carry unescaped are generated, so a
    /// failure is a bug; it is reported as a problem of no policy rather than a panic.
    pub fn schema(text: &str) -> Result<Schema, String> {
        Schema::from_str(text).map_err(|e| format!("generated Cedar schema: {e}"))
    }

    /// 1-based line and column of a byte offset.
    fn line_col(text: &str, offset: usize) -> (usize, usize) {
        let before = &text[..offset.min(text.len())];
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn problem(id: &str, text: &str, d: &dyn Diagnostic, message: String) -> PolicyProblem {
        let offset = d
            .labels()
            .and_then(|mut l| l.next())
            .map_or(0, |l| l.offset());
        let (line, column) = line_col(text, offset);
        let message = match d.help() {
            Some(h) => format!("{message} ({h})"),
            None => message,
        };
        PolicyProblem {
            policy_id: id.to_owned(),
            line,
            column,
            message,
        }
    }

    /// Parse every policy (each must be exactly one static statement) and validate the set strictly
    /// against the schema. Returns every problem found, in policy order.
    pub fn validate(policies: &[Record<Policy>], schema_text: &str) -> Vec<PolicyProblem> {
        let set = match policy_set(policies) {
            Ok(s) => s,
            Err(problems) => return problems,
        };
        let schema = match schema(schema_text) {
            Ok(s) => s,
            Err(message) => {
                return vec![PolicyProblem {
                    policy_id: String::new(),
                    line: 1,
                    column: 1,
                    message,
                }]
            }
        };
        let validator = Validator::new(schema);
        let result = validator.validate(&set, ValidationMode::Strict);
        let mut problems = Vec::new();
        for e in result.validation_errors() {
            let id = e.policy_id().to_string();
            let text = policies
                .iter()
                .find(|p| p.spec.id == id)
                .map_or("", |p| p.spec.text.as_str());
            problems.push(problem(&id, text, e, e.to_string()));
        }
        // Warnings are refused too: an impossible policy (say, one reading an argument no tool has, so
        // `has` is always false) would be a forbid that never fires; confusable or bidi characters hide
        // what a policy says from its reviewer.
        for w in result.validation_warnings() {
            let id = w.policy_id().to_string();
            let text = policies
                .iter()
                .find(|p| p.spec.id == id)
                .map_or("", |p| p.spec.text.as_str());
            problems.push(problem(&id, text, w, w.to_string()));
        }
        problems
    }

    /// The policies as one Cedar set, each statement under its policy's id: what activation compiles
    /// once for every request to evaluate. Parse problems (never in an approved snapshot, whose
    /// policies were validated) are returned instead.
    pub fn policy_set(policies: &[Record<Policy>]) -> Result<PolicySet, Vec<PolicyProblem>> {
        let mut problems = Vec::new();
        let mut set = PolicySet::new();
        for p in policies {
            let (id, text) = (&p.spec.id, &p.spec.text);
            // Parsed once, as a set, so that a text with two statements is told apart from one with
            // a syntax error; the one statement then takes the policy's own id.
            let parsed = match PolicySet::from_str(text) {
                Err(errs) => {
                    for e in errs.iter() {
                        problems.push(problem(id, text, e, e.to_string()));
                    }
                    continue;
                }
                Ok(s) => s,
            };
            let single = match parsed.policies().next() {
                Some(pol) if parsed.num_of_policies() == 1 && parsed.num_of_templates() == 0 => pol,
                _ => {
                    problems.push(PolicyProblem {
                        policy_id: id.clone(),
                        line: 1,
                        column: 1,
                        message: format!(
                            "a policy holds exactly one permit or forbid statement without template slots; found {} statement(s) and {} template(s)",
                            parsed.num_of_policies(),
                            parsed.num_of_templates()
                        ),
                    });
                    continue;
                }
            };
            if let Err(e) = set.add(single.new_id(PolicyId::new(id))) {
                problems.push(PolicyProblem {
                    policy_id: id.clone(),
                    line: 1,
                    column: 1,
                    message: e.to_string(),
                });
            }
        }
        if problems.is_empty() {
            Ok(set)
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec<T>(spec: T) -> Record<T> {
        Record {
            spec,
            meta: RecordMeta::first("t", 1),
        }
    }

    fn policy(id: &str, text: &str) -> Record<Policy> {
        rec(Policy {
            id: id.into(),
            description: String::new(),
            text: text.into(),
        })
    }

    fn cap(name: &str) -> Record<Capability> {
        rec(Capability {
            name: name.into(),
            kind: CapabilityKind::Mcp,
            owner: "team".into(),
            risk: Risk::Low,
            environment: "prod".into(),
            endpoint: "http://127.0.0.1:1/mcp".into(),
            tags: vec![],
            description: String::new(),
            status: Status::Active,
            output_schema: Default::default(),
            openapi: None,
            credential: None,
            audit_arguments: None,
        })
    }

    fn approval<'a>(latest: Option<(u64, &'a str)>) -> Approval<'a> {
        Approval {
            approved_by: "alice",
            approved_at: 7,
            note: "n",
            latest,
        }
    }

    /// The problems approval reports for these policies alone.
    fn policy_problems(policies: &[Record<Policy>]) -> Vec<PolicyProblem> {
        let draft = Draft {
            capabilities: &[],
            agents: &[],
            policies,
            tools: &[],
        };
        match compile(draft, &approval(None)) {
            Err(ApproveError::PolicyInvalid { problems }) => problems,
            other => panic!("expected policy problems, got {other:?}"),
        }
    }

    #[test]
    fn schema_parses() {
        cedar::schema(&cedar::schema_text(&[])).unwrap();
        let odd = PinnedTool::from_listed(
            "c",
            &serde_json::json!({"name": "t", "inputSchema": {"type": "object", "properties": {
                "amount": {"type": "number"}, "tags": {"type": "array", "items": {"type": "string"}},
                "nested": {"type": "object", "properties": {"deep": {"type": ["integer", "null"]}}},
                "we\"ird": {"type": "string"}, "any": {}
            }}}),
        )
        .unwrap();
        let text = cedar::schema_text(&[odd]);
        assert!(
            text.contains(r#"type Arguments = { "amount"?: Long, "nested"?: { "deep"?: Long }, "tags"?: Set<String> };"#),
            "{text}"
        );
        cedar::schema(&text).unwrap();
    }

    #[test]
    fn valid_policies_compile_and_hash_stably() {
        let caps = [cap("b"), cap("a")];
        let pols = [policy(
            "p1",
            "permit(principal, action == Action::\"call\", resource) when { resource.risk == \"low\" && principal.owner == \"x\" };",
        )];
        let draft = Draft {
            capabilities: &caps,
            agents: &[],
            policies: &pols,
            tools: &[],
        };
        let s = compile(draft, &approval(None)).unwrap();
        assert_eq!(s.header.version, 1);
        assert_eq!(s.header.capability_versions, ["a@1", "b@1"]);
        let again = compile(draft, &approval(None)).unwrap();
        assert_eq!(s.canonical_bytes(), again.canonical_bytes());
        let err = compile(draft, &approval(Some((1, &s.header.content_hash)))).unwrap_err();
        assert_eq!(err, ApproveError::NothingChanged { version: 1 });
    }

    #[test]
    fn unknown_attribute_is_located() {
        let pols = [policy(
            "p-attr",
            "permit(principal, action, resource)\nwhen { principal.departmnet == \"x\" };",
        )];
        let problems = policy_problems(&pols);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].policy_id, "p-attr");
        assert_eq!(problems[0].line, 2, "{problems:?}");
        assert!(problems[0].message.contains("departmnet"), "{problems:?}");
    }

    #[test]
    fn syntax_errors_are_located() {
        let pols = [
            policy("ok", "forbid(principal, action, resource);"),
            policy(
                "bad",
                "permit(principal, action, resource)\n  when { principal.owner == };",
            ),
            policy(
                "two",
                "permit(principal, action, resource);forbid(principal, action, resource);",
            ),
        ];
        let problems = policy_problems(&pols);
        let bad = problems.iter().find(|p| p.policy_id == "bad").unwrap();
        assert_eq!(bad.line, 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.policy_id == "two"));
        assert!(!problems.iter().any(|p| p.policy_id == "ok"));
    }

    #[test]
    fn normalization_checks_fields() {
        let mut c = cap("Bad").spec;
        assert_eq!(c.normalize().unwrap_err().field, "name");
        let mut c = cap("ok").spec;
        c.endpoint = "ftp://x".into();
        assert_eq!(c.normalize().unwrap_err().field, "endpoint");
        let mut c = cap("ok").spec;
        c.tags = vec!["b".into(), "a".into(), "b".into()];
        c.normalize().unwrap();
        assert_eq!(c.tags, ["a", "b"]);
    }

    #[test]
    fn diff_names_changes() {
        let a = SnapshotContent {
            capabilities: vec![cap("a"), cap("b")],
            agents: vec![],
            policies: vec![policy("p", "x")],
            tools: vec![],
            cedar_schema: String::new(),
        };
        let mut b = a.clone();
        b.capabilities.remove(0);
        b.capabilities[0].spec.risk = Risk::High;
        b.capabilities[0].meta = b.capabilities[0].meta.next("bob", 9);
        b.policies[0].meta = b.policies[0].meta.next("bob", 9);
        let d = diff(&a, &b);
        assert_eq!(d.capabilities.removed, ["a"]);
        assert_eq!(d.capabilities.changed, ["b"]);
        assert!(d.policies.changed.is_empty());
    }
}
