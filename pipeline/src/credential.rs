//! Credential bindings: which credential the gateway presents to a capability's upstream for which agent,
//! and how it goes on the wire.
//!
//! A binding names secrets by reference (`store/path#field`), never by value: it travels in the signed
//! snapshot, and the appliance's broker resolves references at call time. The agent's registered
//! `credential_mode` picks the binding's section (`service`, `agent_scoped` or `delegated`); a capability
//! without that section refuses the call (`credential_unavailable`) rather than falling back to another
//! mode's credential, which would let an agent act with authority it was not registered for.
//!
//! [`apply`] puts a resolved secret on a request, after removing whatever the request already carried under
//! the same name: an argument must never be able to stand in for, or sit beside, the brokered credential.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::base64;
use crate::control::CredentialMode;

/// Bytes of a secret reference, at most.
pub const REF_BYTES_MAX: usize = 256;
/// What `agent_scoped` references contain where the agent's name goes.
pub const AGENT_PLACEHOLDER: &str = "{agent}";

/// A capability's credentials, one section per credential mode it serves.
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
pub struct Binding {
    /// The gateway's own credential for this upstream, for agents in mode `service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// A reference containing `{agent}`: each agent in mode `agent-scoped` gets the secret under its own
    /// name, e.g. `embedded/github/{agent}#token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_scoped: Option<String>,
    /// OAuth 2.0 token exchange (RFC 8693) for agents in mode `delegated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegated: Option<Exchange>,
    /// How the credential travels. Not set: as the OpenAPI operation's security scheme says, else a
    /// bearer token in `Authorization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject: Option<Inject>,
}

/// Where a token exchange happens and what it asks for.
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
pub struct Exchange {
    /// The authorization server's token endpoint (`https://`).
    pub token_endpoint: String,
    /// The gateway's client id at that server.
    pub client_id: String,
    /// Reference to the client secret (HTTP Basic client authentication); none for a public client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// `audience` of the exchange; left out when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// `resource` (RFC 8707); the capability's endpoint when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// How a secret is presented to the upstream.
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
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Inject {
    /// `Authorization: Bearer SECRET`.
    Bearer,
    /// `NAME: [PREFIX]SECRET`.
    Header {
        name: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        prefix: String,
    },
    /// `?NAME=SECRET` on the request target.
    Query { name: String },
    /// `Cookie: NAME=SECRET`.
    Cookie { name: String },
    /// `Authorization: Basic base64(USERNAME:SECRET)`.
    Basic { username: String },
}

impl Inject {
    /// Check names and values; an `Err` is (field, problem).
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, m: &str| Err((f.to_owned(), m.to_owned()));
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 128
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        match self {
            Inject::Bearer => Ok(()),
            Inject::Header { name, prefix } => {
                let lower = name.to_ascii_lowercase();
                if !name_ok(name) || RESERVED_HEADERS.contains(&lower.as_str()) {
                    return Err((
                        "name".into(),
                        format!("`{name}` is not a header the gateway may set"),
                    ));
                }
                if prefix.chars().any(char::is_control) {
                    return bad("prefix", "control characters");
                }
                Ok(())
            }
            Inject::Query { name } | Inject::Cookie { name } => {
                if !name_ok(name) {
                    return bad("name", "letters, digits, '-', '_' and '.'");
                }
                Ok(())
            }
            Inject::Basic { username } => {
                if username.contains(':') || username.chars().any(char::is_control) {
                    return bad("username", "no ':' or control characters");
                }
                Ok(())
            }
        }
    }
}

/// A secret's value: never printed (its `Debug` says only how long it is), wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(zeroize::Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(zeroize::Zeroizing::new(value))
    }

    /// The value, for the one place it is needed: the upstream request being built.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A secret arrives in a request body (the admin API's `secret put`); it is never serialised back out.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// A parsed secret reference: `STORE/PATH[#FIELD]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SecretRef {
    pub store: String,
    pub path: String,
    pub field: Option<String>,
}

impl SecretRef {
    /// Parse and check a reference: a store name (lowercase ident), a path of `[A-Za-z0-9._-]` segments
    /// joined by `/` (no empty, `.` or `..` segment), and an optional field of the same characters.
    pub fn parse(s: &str) -> Result<SecretRef, String> {
        if s.len() > REF_BYTES_MAX {
            return Err(format!("longer than {REF_BYTES_MAX} bytes"));
        }
        let (body, field) = match s.split_once('#') {
            Some((b, f)) => (b, Some(f)),
            None => (s, None),
        };
        let (store, path) = body
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not STORE/PATH[#FIELD]"))?;
        let store_ok = store.starts_with(|c: char| c.is_ascii_lowercase())
            && store
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !store_ok {
            return Err(format!(
                "store `{store}`: lowercase letters, digits, '-' and '_', starting with a letter"
            ));
        }
        for seg in path.split('/') {
            if !segment_ok(seg) {
                return Err(format!(
                    "path `{path}`: segments of letters, digits, '.', '_' and '-', joined by '/' (no empty, `.` or `..` segment)"
                ));
            }
        }
        if let Some(f) = field {
            if !segment_ok(f) {
                return Err(format!("field `{f}`: letters, digits, '.', '_' and '-'"));
            }
        }
        Ok(SecretRef {
            store: store.to_owned(),
            path: path.to_owned(),
            field: field.map(str::to_owned),
        })
    }
}

fn segment_ok(seg: &str) -> bool {
    !seg.is_empty()
        && seg != "."
        && seg != ".."
        && seg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.store, self.path)?;
        if let Some(field) = &self.field {
            write!(f, "#{field}")?;
        }
        Ok(())
    }
}

/// What a binding asks of the broker for one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need<'a> {
    /// Resolve this reference.
    Secret(SecretRef),
    /// Exchange the agent's inbound token.
    Exchange(&'a Exchange),
}

/// Why a binding yields no credential for an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindingError {
    /// The capability binds nothing for this mode.
    NoSection(CredentialMode),
    /// A reference that does not parse (approval checks them, so only a hand-edited snapshot has one).
    BadRef(String),
}

impl fmt::Display for BindingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindingError::NoSection(m) => {
                let m = match m {
                    CredentialMode::Service => "service",
                    CredentialMode::AgentScoped => "agent_scoped",
                    CredentialMode::Delegated => "delegated",
                };
                write!(f, "the capability binds no `{m}` credential")
            }
            BindingError::BadRef(e) => write!(f, "bad secret reference: {e}"),
        }
    }
}

impl Binding {
    /// Check every reference and the injection; an `Err` names the field and the problem.
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, e: String| (format!("credential.{field}"), e);
        if let Some(r) = &self.service {
            SecretRef::parse(r).map_err(|e| bad("service", e))?;
        }
        if let Some(r) = &self.agent_scoped {
            if !r.contains(AGENT_PLACEHOLDER) {
                return Err(bad(
                    "agent_scoped",
                    format!("must contain `{AGENT_PLACEHOLDER}` (one secret per agent)"),
                ));
            }
            SecretRef::parse(&r.replace(AGENT_PLACEHOLDER, "agent"))
                .map_err(|e| bad("agent_scoped", e))?;
        }
        if let Some(x) = &self.delegated {
            if !x.token_endpoint.starts_with("https://") {
                return Err(bad(
                    "delegated.token_endpoint",
                    "must be an https:// URL".into(),
                ));
            }
            if x.client_id.is_empty() || x.client_id.chars().any(char::is_control) {
                return Err(bad(
                    "delegated.client_id",
                    "must be set, without control characters".into(),
                ));
            }
            if let Some(r) = &x.client_secret {
                SecretRef::parse(r).map_err(|e| bad("delegated.client_secret", e))?;
            }
            for (f, v) in [
                ("audience", &x.audience),
                ("resource", &x.resource),
                ("scope", &x.scope),
            ] {
                if v.as_deref()
                    .is_some_and(|v| v.chars().any(char::is_control))
                {
                    return Err(bad(&format!("delegated.{f}"), "control characters".into()));
                }
            }
        }
        if let Some(i) = &self.inject {
            i.check().map_err(|(f, m)| bad(&format!("inject.{f}"), m))?;
        }
        Ok(())
    }

    /// How the credential travels: the binding's `inject`, else what the operation's OpenAPI security
    /// scheme says (`document`, checked like a binding's), else a bearer token.
    pub fn injection(&self, document: Option<&Inject>) -> Result<Inject, String> {
        match (&self.inject, document) {
            (Some(i), _) => Ok(i.clone()),
            (None, Some(d)) => d
                .check()
                .map(|()| d.clone())
                .map_err(|(f, m)| format!("the document's security scheme ({f}): {m}")),
            (None, None) => Ok(Inject::Bearer),
        }
    }

    /// What the broker must do for an agent registered in `mode` under `agent`.
    pub fn need(&self, mode: CredentialMode, agent: &str) -> Result<Need<'_>, BindingError> {
        let parse = |r: &str| SecretRef::parse(r).map_err(BindingError::BadRef);
        match mode {
            CredentialMode::Service => match &self.service {
                Some(r) => parse(r).map(Need::Secret),
                None => Err(BindingError::NoSection(mode)),
            },
            CredentialMode::AgentScoped => match &self.agent_scoped {
                Some(r) => parse(&r.replace(AGENT_PLACEHOLDER, agent)).map(Need::Secret),
                None => Err(BindingError::NoSection(mode)),
            },
            CredentialMode::Delegated => match &self.delegated {
                Some(x) => Ok(Need::Exchange(x)),
                None => Err(BindingError::NoSection(mode)),
            },
        }
    }
}

/// Headers the gateway owns on an upstream request; a binding may not inject a credential under them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
];

/// A request's credential-bearing parts, as `apply` edits them.
#[derive(Debug)]
pub struct Target<'a> {
    /// Header name (any case) and value pairs.
    pub headers: &'a mut Vec<(String, String)>,
    /// Path and query of the request target.
    pub path_and_query: &'a mut String,
}

/// Put `secret` on the request as `inject` says, first removing every header, query parameter or cookie
/// of the same name, and any `Authorization` (only the brokered credential authenticates upstream).
/// Secrets holding CR, LF or NUL are refused: they would split the request.
pub fn apply(inject: &Inject, secret: &str, t: Target<'_>) -> Result<(), &'static str> {
    if secret.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err("the secret holds a line break or NUL");
    }
    t.headers
        .retain(|(n, _)| !n.eq_ignore_ascii_case("authorization"));
    match inject {
        Inject::Bearer => t
            .headers
            .push(("authorization".into(), format!("Bearer {secret}"))),
        Inject::Basic { username } => {
            let pair = format!("{username}:{secret}");
            t.headers.push((
                "authorization".into(),
                format!("Basic {}", base64::encode_standard(pair.as_bytes())),
            ));
        }
        Inject::Header { name, prefix } => {
            t.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            t.headers.push((name.clone(), format!("{prefix}{secret}")));
        }
        Inject::Cookie { name } => {
            let mut kept: Vec<String> = Vec::new();
            for (_, v) in t
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            {
                kept.extend(
                    v.split(';')
                        .map(str::trim)
                        .filter(|c| !c.is_empty() && c.split('=').next() != Some(name.as_str()))
                        .map(str::to_owned),
                );
            }
            t.headers.retain(|(n, _)| !n.eq_ignore_ascii_case("cookie"));
            kept.push(format!("{name}={}", crate::openapi::call::encode(secret)));
            t.headers.push(("cookie".into(), kept.join("; ")));
        }
        Inject::Query { name } => {
            let (path, query) = match t.path_and_query.split_once('?') {
                Some((p, q)) => (p.to_owned(), q.to_owned()),
                None => (t.path_and_query.clone(), String::new()),
            };
            let mut pairs: Vec<&str> = query
                .split('&')
                .filter(|p| !p.is_empty() && p.split('=').next() != Some(name.as_str()))
                .collect();
            let ours = format!("{name}={}", crate::openapi::call::encode(secret));
            pairs.push(&ours);
            *t.path_and_query = format!("{path}?{}", pairs.join("&"));
        }
    }
    Ok(())
}

/// The forms a secret takes on the wire under `inject` (as given, percent-encoded, inside Basic's base64),
/// for `scrub` to find them in what an upstream answers.
pub fn wire_forms(inject: &Inject, secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_owned()];
    let encoded = crate::openapi::call::encode(secret);
    if encoded != secret {
        forms.push(encoded);
    }
    if let Inject::Basic { username } = inject {
        forms.push(base64::encode_standard(
            format!("{username}:{secret}").as_bytes(),
        ));
    }
    forms
}

/// Forms shorter than this are not scrubbed: they would shred ordinary text, and a credential that short
/// protects nothing anyway.
pub const SCRUB_BYTES_MIN: usize = 6;

/// Replace every occurrence of each form in `bytes` with `[redacted]`: an upstream that echoes the
/// credential it was sent (an error page listing the request's headers) must not hand it to the agent.
/// Returns how many were replaced.
pub fn scrub(bytes: &mut Vec<u8>, forms: &[String]) -> usize {
    const MARK: &[u8] = b"[redacted]";
    let mut replaced = 0;
    for form in forms.iter().map(String::as_bytes) {
        if form.len() < SCRUB_BYTES_MIN || bytes.len() < form.len() {
            continue;
        }
        let finder = memchr::memmem::Finder::new(form);
        // The common case, no echo, costs one SIMD scan and no allocation.
        let Some(first) = finder.find(bytes) else {
            continue;
        };
        let mut out = Vec::with_capacity(bytes.len());
        let mut copied = 0;
        let mut at = Some(first);
        while let Some(i) = at {
            out.extend_from_slice(&bytes[copied..i]);
            out.extend_from_slice(MARK);
            copied = i + form.len();
            replaced += 1;
            at = finder.find(&bytes[copied..]).map(|j| copied + j);
        }
        out.extend_from_slice(&bytes[copied..]);
        zeroize::Zeroize::zeroize(bytes);
        *bytes = out;
    }
    replaced
}

/// The `application/x-www-form-urlencoded` body of an RFC 8693 token exchange for `subject_token`.
pub fn exchange_form(x: &Exchange, default_resource: &str, subject_token: &str) -> String {
    let mut fields: Vec<(&str, &str)> = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", subject_token),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        (
            "resource",
            x.resource.as_deref().unwrap_or(default_resource),
        ),
    ];
    if let Some(a) = &x.audience {
        fields.push(("audience", a));
    }
    if let Some(s) = &x.scope {
        fields.push(("scope", s));
    }
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::openapi::call::encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The HTTP Basic client authentication of RFC 6749 §2.3.1: id and secret form-encoded, then joined.
pub fn client_basic(client_id: &str, client_secret: &str) -> String {
    let pair = format!(
        "{}:{}",
        crate::openapi::call::encode(client_id),
        crate::openapi::call::encode(client_secret)
    );
    format!("Basic {}", base64::encode_standard(pair.as_bytes()))
}

/// A token endpoint's successful answer, as far as the gateway uses it.
#[derive(Debug, PartialEq, Eq)]
pub struct Issued {
    pub access_token: String,
    /// Seconds; `None` when the server did not say.
    pub expires_in: Option<u64>,
}

/// Read a token endpoint's answer: 200 with `access_token` and `token_type` Bearer (or N_A, which RFC 8693
/// allows for tokens that are not OAuth access tokens) is a token; anything else is a refusal, reported by
/// its `error` code only (an `error_description` may echo what was sent).
pub fn exchange_result(status: u16, body: &[u8]) -> Result<Issued, String> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| format!("token endpoint answered {status} with a body that is not JSON"))?;
    if status != 200 {
        let code = v
            .get("error")
            .and_then(|e| e.as_str())
            .filter(|e| e.bytes().all(|b| b.is_ascii_graphic()) && e.len() <= 64)
            .unwrap_or("unknown");
        return Err(format!("token endpoint refused ({status}, error {code})"));
    }
    let token = v
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or("token endpoint answered without access_token")?;
    let kind = v.get("token_type").and_then(|t| t.as_str()).unwrap_or("");
    if !kind.eq_ignore_ascii_case("bearer") && !kind.eq_ignore_ascii_case("n_a") {
        return Err(format!(
            "token endpoint issued token_type `{}`, not Bearer",
            kind.chars().take(32).collect::<String>()
        ));
    }
    Ok(Issued {
        access_token: token.to_owned(),
        expires_in: v.get("expires_in").and_then(|e| e.as_u64()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(headers: &[(&str, &str)], pq: &str) -> (Vec<(String, String)>, String) {
        (
            headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            pq.to_owned(),
        )
    }

    fn applied(
        inject: &Inject,
        headers: &[(&str, &str)],
        pq: &str,
    ) -> (Vec<(String, String)>, String) {
        let (mut h, mut p) = target(headers, pq);
        apply(
            inject,
            "s3cr et",
            Target {
                headers: &mut h,
                path_and_query: &mut p,
            },
        )
        .expect("applies");
        (h, p)
    }

    #[test]
    fn refs_parse_and_refuse_traversal() {
        let r = SecretRef::parse("embedded/github/alice#token").expect("parses");
        assert_eq!(
            (r.store.as_str(), r.path.as_str(), r.field.as_deref()),
            ("embedded", "github/alice", Some("token"))
        );
        assert_eq!(r.to_string(), "embedded/github/alice#token");
        assert!(SecretRef::parse("env/GITHUB_TOKEN").is_ok());
        for bad in [
            "nostore",
            "Embedded/x",
            "file/../etc/passwd",
            "file/a//b",
            "file/./a",
            "file/a#b#c",
            "file/a b",
            "/x",
            "file/",
        ] {
            assert!(SecretRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn modes_pick_their_own_section_and_never_another() {
        let b = Binding {
            service: Some("embedded/svc#token".into()),
            agent_scoped: Some("embedded/per/{agent}#token".into()),
            delegated: None,
            inject: None,
        };
        b.check().expect("valid");
        assert_eq!(
            b.need(CredentialMode::AgentScoped, "alice"),
            Ok(Need::Secret(
                SecretRef::parse("embedded/per/alice#token").expect("ref")
            ))
        );
        assert_eq!(
            b.need(CredentialMode::Delegated, "alice"),
            Err(BindingError::NoSection(CredentialMode::Delegated))
        );
        let only_service = Binding {
            agent_scoped: None,
            ..b.clone()
        };
        assert!(only_service
            .need(CredentialMode::AgentScoped, "alice")
            .is_err());
        let shared = Binding {
            agent_scoped: Some("embedded/same#token".into()),
            ..b
        };
        assert!(shared.check().is_err(), "agent_scoped without {{agent}}");
    }

    #[test]
    fn injection_replaces_what_the_request_carried() {
        let (h, _) = applied(
            &Inject::Bearer,
            &[("Authorization", "Bearer agent-token"), ("x-a", "1")],
            "/p",
        );
        assert_eq!(
            h,
            vec![
                ("x-a".to_owned(), "1".to_owned()),
                ("authorization".to_owned(), "Bearer s3cr et".to_owned())
            ]
        );
        let (h, _) = applied(
            &Inject::Header {
                name: "X-Api-Key".into(),
                prefix: String::new(),
            },
            &[("x-api-key", "from-args"), ("authorization", "x")],
            "/p",
        );
        assert_eq!(h, vec![("X-Api-Key".to_owned(), "s3cr et".to_owned())]);
        let (_, p) = applied(
            &Inject::Query { name: "key".into() },
            &[],
            "/p?a=1&key=agent&b=2",
        );
        assert_eq!(p, "/p?a=1&b=2&key=s3cr%20et");
        let (_, p) = applied(&Inject::Query { name: "key".into() }, &[], "/p");
        assert_eq!(p, "/p?key=s3cr%20et");
        let (h, _) = applied(
            &Inject::Cookie { name: "sid".into() },
            &[("cookie", "a=1; sid=agent")],
            "/p",
        );
        assert_eq!(
            h,
            vec![("cookie".to_owned(), "a=1; sid=s3cr%20et".to_owned())]
        );
        let (h, _) = applied(
            &Inject::Basic {
                username: "svc".into(),
            },
            &[],
            "/p",
        );
        assert_eq!(
            h[0].1,
            format!("Basic {}", base64::encode_standard(b"svc:s3cr et"))
        );
    }

    #[test]
    fn echoed_credentials_are_scrubbed_in_every_wire_form() {
        let inject = Inject::Basic {
            username: "svc".into(),
        };
        let forms = wire_forms(&inject, "canary secret");
        let b64 = base64::encode_standard(b"svc:canary secret");
        let mut body = format!(
            "401: you sent Authorization: Basic {b64} and key=canary%20secret (canary secret)"
        )
        .into_bytes();
        assert_eq!(scrub(&mut body, &forms), 3);
        let text = String::from_utf8(body).expect("utf-8");
        assert!(!text.contains("canary") && !text.contains(&b64), "{text}");
        let mut short = b"ab ab".to_vec();
        assert_eq!(scrub(&mut short, &["ab".to_owned()]), 0);
    }

    #[test]
    fn secrets_that_would_split_a_request_are_refused() {
        let (mut h, mut p) = target(&[], "/");
        let t = Target {
            headers: &mut h,
            path_and_query: &mut p,
        };
        assert!(apply(&Inject::Bearer, "a\r\nx-evil: 1", t).is_err());
    }

    #[test]
    fn reserved_headers_cannot_carry_credentials() {
        let b = Binding {
            service: Some("env/X".into()),
            inject: Some(Inject::Header {
                name: "Mcp-Session-Id".into(),
                prefix: String::new(),
            }),
            ..Binding::default()
        };
        assert!(b.check().is_err());
        let open = Binding {
            service: Some("env/X".into()),
            ..Binding::default()
        };
        let from_doc = Inject::Query {
            name: "api_key".into(),
        };
        assert_eq!(open.injection(Some(&from_doc)), Ok(from_doc));
        assert_eq!(open.injection(None), Ok(Inject::Bearer));
        let reserved = Inject::Header {
            name: "Host".into(),
            prefix: String::new(),
        };
        assert!(open.injection(Some(&reserved)).is_err());
    }

    #[test]
    fn exchange_answers() {
        let ok = br#"{"access_token":"t","token_type":"Bearer","expires_in":60,"issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#;
        assert_eq!(
            exchange_result(200, ok),
            Ok(Issued {
                access_token: "t".into(),
                expires_in: Some(60)
            })
        );
        let refused = br#"{"error":"invalid_grant","error_description":"token abc.def expired"}"#;
        let e = exchange_result(400, refused).expect_err("refused");
        assert!(e.contains("invalid_grant") && !e.contains("abc.def"), "{e}");
        assert!(exchange_result(200, br#"{"access_token":"t","token_type":"mac"}"#).is_err());
        let x = Exchange {
            token_endpoint: "https://idp/token".into(),
            client_id: "gw".into(),
            client_secret: None,
            audience: Some("api".into()),
            resource: None,
            scope: None,
        };
        let form = exchange_form(&x, "https://api/mcp", "a+b");
        assert!(form.contains("subject_token=a%2Bb"), "{form}");
        assert!(form.contains("resource=https%3A%2F%2Fapi%2Fmcp"), "{form}");
        assert!(form.contains("audience=api"), "{form}");
    }
}
