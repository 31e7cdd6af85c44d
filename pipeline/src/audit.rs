//! What one audit record says: who acted, through which agent, identity and session, on what, under which
//! snapshot and policies, with which credential, and what happened. `storage::audit` frames and chains
//! these on disk; the gateway fills one per request on `/mcp`.
//!
//! Secret values never appear: the credential is named by its mode and reference, tool arguments by a
//! BLAKE3 digest of their JSON.

use serde::{Deserialize, Serialize};

use crate::reason::{Blame, DenyReason};

/// One request's record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch when the request arrived.
    pub at_ms: u64,
    pub core: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// `api_key`, `jwt` or `certificate`; none when the request proved no identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client: String,
    pub transport: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The JSON-RPC request id, as JSON text (correlates the record with the agent's own logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The JSON-RPC method (`GET` and `DELETE` for the stream and session requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// BLAKE3 (hex) of the call's arguments as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_blake3: Option<String>,
    /// The arguments themselves, redacted, where the capability asks for them (`audit_arguments`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Value>,
    /// `allowed`, `denied` (the agent's request was refused) or `failed` (the gateway or upstream could
    /// not serve it).
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The determining policies: the permits that allowed, or the forbids that denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// The snapshot that decided: `v3 blake3:<hex>`, `none` or `static`.
    pub snapshot: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// Microseconds the upstream took to answer (request sent to response head), when it was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_us: Option<u64>,
    /// The HTTP status the agent got.
    pub status: u16,
    /// Microseconds from the request's arrival to its response being released.
    pub latency_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Replace the value of every object key named in `names` (case-insensitively, at any depth) with
/// `"[redacted]"`.
pub fn redact(v: &mut serde_json::Value, names: &[String]) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, inner) in m.iter_mut() {
                if names.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                    *inner = serde_json::Value::String("[redacted]".into());
                } else {
                    redact(inner, names);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| redact(x, names)),
        _ => {}
    }
}

/// The decision a refusal reason stands for.
pub fn decision_of(reason: Option<DenyReason>) -> &'static str {
    match reason.map(DenyReason::blame) {
        None => "allowed",
        Some(Blame::Agent) => "denied",
        Some(_) => "failed",
    }
}

impl Event {
    /// The record as an OCSF API Activity event (class 6003), for SIEMs that speak OCSF.
    pub fn to_ocsf(&self) -> serde_json::Value {
        let (status_id, status) = match self.decision.as_str() {
            "allowed" => (1, "Success"),
            _ => (2, "Failure"),
        };
        serde_json::json!({
            "class_uid": 6003,
            "class_name": "API Activity",
            "category_uid": 6,
            "category_name": "Application Activity",
            "activity_id": 99,
            "activity_name": self.method.clone().unwrap_or_default(),
            "type_uid": 600399,
            "time": self.at_ms,
            "severity_id": if self.decision == "allowed" { 1 } else { 3 },
            "status_id": status_id,
            "status": status,
            "status_code": self.status.to_string(),
            "status_detail": self.reason,
            "actor": {
                "user": {"name": self.agent, "uid": self.agent, "type": "Agent"},
                "session": {"uid": self.session},
                "authorizations": [{"decision": self.decision, "policy": {"uid": self.policies.join(","), "name": self.snapshot}}],
            },
            "api": {
                "operation": self.method,
                "service": {"name": self.capability},
                "request": {"uid": self.arguments_blake3},
                "response": {"code": self.upstream_status},
            },
            "resources": [{"name": self.tool, "type": "tool", "group": {"name": self.capability}}],
            "src_endpoint": {"ip": if self.client.is_empty() { None } else { Some(&self.client) }},
            "metadata": {
                "product": {"name": "Portcullis", "vendor_name": "Portcullis"},
                "version": "1.1.0",
            },
            "unmapped": {
                "transport": self.transport,
                "revision": self.revision,
                "identity": self.identity,
                "credential_mode": self.credential_mode,
                "secret_ref": self.secret_ref,
                "latency_us": self.latency_us,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "core": self.core,
            },
        })
    }
}

/// What `audit search` filters on; every set field must match.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub agent: Option<String>,
    pub tool: Option<String>,
    pub decision: Option<String>,
    pub reason: Option<String>,
}

impl Filter {
    /// Whether it lets every record through.
    pub fn is_empty(&self) -> bool {
        self.from_ms.is_none()
            && self.to_ms.is_none()
            && self.agent.is_none()
            && self.tool.is_none()
            && self.decision.is_none()
            && self.reason.is_none()
    }

    pub fn matches(&self, e: &Event) -> bool {
        self.from_ms.is_none_or(|f| e.at_ms >= f)
            && self.to_ms.is_none_or(|t| e.at_ms <= t)
            && self
                .agent
                .as_ref()
                .is_none_or(|a| e.agent.as_ref() == Some(a))
            && self
                .tool
                .as_ref()
                .is_none_or(|t| e.tool.as_ref() == Some(t))
            && self.decision.as_ref().is_none_or(|d| &e.decision == d)
            && self
                .reason
                .as_ref()
                .is_none_or(|r| e.reason.as_ref() == Some(r))
    }
}

/// A record's place in the newest-first order of a search: its arrival time, core and sequence number.
/// A page's last record is the next page's `before`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub at_ms: u64,
    pub core: u16,
    pub seq: u64,
}

impl Cursor {
    /// `AT.CORE.SEQ`, as `Display` writes it.
    pub fn parse(s: &str) -> Option<Cursor> {
        let mut it = s.split('.');
        let c = Cursor {
            at_ms: it.next()?.parse().ok()?,
            core: it.next()?.parse().ok()?,
            seq: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(c)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.at_ms, self.core, self.seq)
    }
}

/// Records on one search page, at most.
pub const PAGE_MAX: usize = 500;

/// One search of the audit trail (`GET /admin/v1/audit?…`): a filter, where the page starts, its size.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub filter: Filter,
    /// Only records before this one (newest first).
    pub before: Option<Cursor>,
    pub limit: usize,
}

impl Query {
    pub const PARAMS: &'static [&'static str] = &[
        "agent", "tool", "decision", "reason", "from", "to", "before", "limit",
    ];

    /// From a URL query: `agent`, `tool` (exact names), `decision` (`allowed|denied|failed`), `reason`
    /// (a deny reason code), `from`/`to` (ms since the epoch, inclusive), `before` (a cursor), `limit`
    /// (1..=`PAGE_MAX`, default 50). Anything else, or a value out of range, is an error that says so.
    pub fn parse(query: &str) -> Result<Query, crate::query::QueryError> {
        use crate::query::{number, parse, QueryError};
        let mut q = Query {
            limit: 50,
            ..Query::default()
        };
        let some = |v: String| (!v.is_empty()).then_some(v);
        for (name, v) in parse(query, Self::PARAMS)? {
            match name {
                "agent" => q.filter.agent = some(v),
                "tool" => q.filter.tool = some(v),
                "decision" => {
                    if !v.is_empty() && !matches!(v.as_str(), "allowed" | "denied" | "failed") {
                        return Err(QueryError(
                            "`decision` is one of allowed, denied, failed".into(),
                        ));
                    }
                    q.filter.decision = some(v);
                }
                "reason" => {
                    if !v.is_empty() && DenyReason::from_code(&v).is_none() {
                        return Err(QueryError(
                            "`reason` is not a deny reason (see the README's table)".into(),
                        ));
                    }
                    q.filter.reason = some(v);
                }
                "from" if !v.is_empty() => {
                    q.filter.from_ms = Some(number("from", &v, 0, u64::MAX)?)
                }
                "to" if !v.is_empty() => q.filter.to_ms = Some(number("to", &v, 0, u64::MAX)?),
                "before" if !v.is_empty() => {
                    q.before = Some(Cursor::parse(&v).ok_or_else(|| {
                        QueryError("`before` is a cursor from a previous page's `next`".into())
                    })?)
                }
                "limit" => q.limit = number("limit", &v, 1, PAGE_MAX as u64)? as usize,
                _ => {}
            }
        }
        if let (Some(f), Some(t)) = (q.filter.from_ms, q.filter.to_ms) {
            if f > t {
                return Err(QueryError("`from` is after `to`".into()));
            }
        }
        Ok(q)
    }

    /// Whether a record at `at` (with its event) belongs on this query's pages.
    pub fn admits(&self, at: Cursor, e: &Event) -> bool {
        self.before.is_none_or(|b| at < b) && self.filter.matches(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_queries_parse_or_say_why() {
        let q = Query::parse(
            "agent=ops-bot&decision=denied&reason=policy_denied&from=10&to=20&limit=7",
        )
        .unwrap();
        assert_eq!(q.filter.agent.as_deref(), Some("ops-bot"));
        assert_eq!(q.filter.decision.as_deref(), Some("denied"));
        assert_eq!(
            (q.filter.from_ms, q.filter.to_ms, q.limit),
            (Some(10), Some(20), 7)
        );
        let q = Query::parse("").unwrap();
        assert!(q.filter.is_empty() && q.before.is_none() && q.limit == 50);
        // Empty values are no filter (an HTML form sends them).
        assert!(Query::parse("agent=&tool=&from=&before=")
            .unwrap()
            .filter
            .is_empty());
        // A huge range is fine; an inverted one, or out of range numbers, are not.
        assert!(Query::parse(&format!("from=0&to={}", u64::MAX)).is_ok());
        for bad in [
            "from=20&to=10",
            "from=-1",
            "to=1e9",
            "limit=0",
            "limit=501",
            "decision=maybe",
            "reason=because",
            "before=1.2",
            "before=a.b.c",
            "agent=%00",
            "color=red",
        ] {
            assert!(Query::parse(bad).is_err(), "{bad}");
        }
        let c = Cursor {
            at_ms: 1_700_000_000_000,
            core: 3,
            seq: 42,
        };
        assert_eq!(Cursor::parse(&c.to_string()), Some(c));
        assert_eq!(Cursor::parse("1.2.3.4"), None);
        // Newest first: a cursor admits only what sorts before it.
        let q = Query::parse(&format!("before={c}")).unwrap();
        let e = Event::default();
        assert!(q.admits(Cursor { seq: 41, ..c }, &e));
        assert!(!q.admits(c, &e));
        assert!(!q.admits(
            Cursor {
                at_ms: c.at_ms + 1,
                core: 0,
                seq: 0
            },
            &e
        ));
    }

    #[test]
    fn redaction_reaches_every_depth() {
        let mut v =
            serde_json::json!({"user": "a", "Password": "p", "nested": [{"token": "t", "n": 1}]});
        redact(&mut v, &["password".into(), "TOKEN".into()]);
        assert_eq!(
            v,
            serde_json::json!({"user": "a", "Password": "[redacted]", "nested": [{"token": "[redacted]", "n": 1}]})
        );
    }

    #[test]
    fn decisions_follow_blame() {
        assert_eq!(decision_of(None), "allowed");
        assert_eq!(decision_of(Some(DenyReason::PolicyDenied)), "denied");
        assert_eq!(decision_of(Some(DenyReason::UpstreamTimeout)), "failed");
        assert_eq!(
            decision_of(Some(DenyReason::CredentialUnavailable)),
            "failed"
        );
    }

    #[test]
    fn filters_and_ocsf() {
        let e = Event {
            agent: Some("ops".into()),
            tool: Some("alpha__echo".into()),
            decision: "denied".into(),
            reason: Some("policy_denied".into()),
            at_ms: 10,
            ..Event::default()
        };
        assert!(Filter {
            agent: Some("ops".into()),
            decision: Some("denied".into()),
            ..Filter::default()
        }
        .matches(&e));
        assert!(!Filter {
            from_ms: Some(11),
            ..Filter::default()
        }
        .matches(&e));
        let o = e.to_ocsf();
        assert_eq!(o["class_uid"], 6003);
        assert_eq!(o["status_id"], 2);
        assert_eq!(o["actor"]["user"]["name"], "ops");
    }
}
