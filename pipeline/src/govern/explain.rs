//! Asking a compiled snapshot what it would decide, without a request: `portcullis policy explain`
//! answers one question, `portcullis policy test` a table of them, so operators can check policies
//! (in CI, against a draft) before they approve them.
//!
//! The answer is the gateway's own: the same admission, Cedar decision and schema check a request
//! goes through, in the same order, with the same reason codes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Action, Env, Governor};
use crate::reason::DenyReason;

/// One question: may `agent` `action` the tool `tool` (its gateway name, `capability__tool`) with
/// `arguments`, in `context`?
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    pub agent: String,
    pub tool: String,
    /// `call` (default) or `discover`.
    #[serde(default = "call")]
    pub action: String,
    /// The call's arguments (an object; default `{}`). Ignored for `discover`.
    #[serde(default)]
    pub arguments: Option<Value>,
    #[serde(default)]
    pub context: QuestionContext,
}

fn call() -> String {
    "call".into()
}

/// The request context policies read, with the defaults of a plain HTTP/1.1 call at midday Monday.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuestionContext {
    pub transport: String,
    pub revision: String,
    pub client_address: String,
    pub session_age_secs: i64,
    pub hour: i64,
    pub weekday: i64,
}

impl Default for QuestionContext {
    fn default() -> Self {
        QuestionContext {
            transport: "h1".into(),
            revision: "2026-07-28".into(),
            client_address: "127.0.0.1".into(),
            session_age_secs: 0,
            hour: 12,
            weekday: 0,
        }
    }
}

/// What the gateway would do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub allowed: bool,
    /// The deny reason code (`agent_not_registered`, `tool_not_found`, `policy_denied`,
    /// `schema_invalid`, ...); absent when allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The determining policies: the permits that allowed, or the forbids that denied.
    pub policies: Vec<String>,
    /// More about a denial: why no policy decided, or which schema rule failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For `schema_invalid`: the JSON pointer into the arguments and the failed keyword.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
}

impl Explanation {
    fn deny(reason: DenyReason, detail: Option<String>) -> Explanation {
        Explanation {
            allowed: false,
            reason: Some(reason.code().to_owned()),
            policies: Vec::new(),
            detail,
            pointer: None,
            keyword: None,
        }
    }
}

impl Governor {
    /// Decide `q` as a request would be decided: admission, then Cedar, then (for calls) the schema.
    pub fn explain(&self, q: &Question) -> Explanation {
        let action = match q.action.as_str() {
            "call" => Action::Call,
            "discover" => Action::Discover,
            other => {
                return Explanation::deny(
                    DenyReason::InvalidParams,
                    Some(format!("action `{other}`: use call or discover")),
                )
            }
        };
        if let Err(r) = self.admit(&q.agent) {
            return Explanation::deny(r, None);
        }
        let Some((capability, name)) = q
            .tool
            .split_once("__")
            .filter(|(c, n)| self.tools.get(*c).is_some_and(|m| m.contains_key(*n)))
        else {
            return Explanation::deny(
                DenyReason::ToolNotFound,
                Some(format!("no tool `{}` in this snapshot", q.tool)),
            );
        };
        let empty = Value::Object(serde_json::Map::new());
        let arguments = q.arguments.as_ref().unwrap_or(&empty);
        let c = &q.context;
        let env = Env {
            transport: &c.transport,
            revision: &c.revision,
            client_address: &c.client_address,
            session_age_secs: c.session_age_secs,
            hour: c.hour,
            weekday: c.weekday,
        };
        let args = (action == Action::Call).then_some(arguments);
        let verdict = self.decide(&q.agent, action, capability, name, args, &env);
        if !verdict.allowed {
            let detail = verdict.detail.or_else(|| {
                verdict
                    .policies
                    .is_empty()
                    .then(|| "no policy permits it".to_owned())
            });
            return Explanation {
                policies: verdict.policies,
                ..Explanation::deny(DenyReason::PolicyDenied, detail)
            };
        }
        if action == Action::Call {
            if let Err(p) = self.validate(capability, name, arguments) {
                return Explanation {
                    policies: verdict.policies,
                    pointer: Some(p.pointer),
                    keyword: Some(p.keyword),
                    ..Explanation::deny(DenyReason::SchemaInvalid, Some(p.message))
                };
            }
        }
        Explanation {
            allowed: true,
            reason: None,
            policies: verdict.policies,
            detail: None,
            pointer: None,
            keyword: None,
        }
    }
}
