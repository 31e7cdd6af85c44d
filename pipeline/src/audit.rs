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

#[cfg(test)]
mod tests {
    use super::*;

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
