//! Why the gateway refused or failed a request, as stable codes for the wire, metrics and audit.
//!
//! Every refusal names who is to blame; blame picks the HTTP status class, the metric label and the audit
//! outcome. `code()` is the machine-readable `data.reason` an agent sees: codes are added, never renamed or
//! reused, and `tests::wire_table_is_stable` pins the whole table.

/// Who caused a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The agent sent something we refuse (4xx).
    Agent,
    /// An upstream failed or misbehaved (JSON-RPC error, HTTP 200/502/504 by transport rules).
    Upstream,
    /// The gateway itself could not serve (5xx).
    Gateway,
}

impl Blame {
    pub const fn label(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Upstream => "upstream",
            Self::Gateway => "gateway",
        }
    }
}

/// Why a request was refused or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// Body is not JSON.
    ParseError,
    /// JSON but not a JSON-RPC 2.0 message MCP accepts.
    InvalidRequest,
    /// Body bytes are not UTF-8.
    InvalidUtf8,
    /// A JSON array at the top level: JSON-RPC batches are not part of MCP since 2025-06-18.
    BatchUnsupported,
    /// Nesting deeper than `limits.json_depth_max`.
    JsonTooDeep,
    /// Body larger than `limits.body_bytes_max`.
    PayloadTooLarge,
    /// Request headers larger than `limits.header_bytes_max`.
    HeadersTooLarge,
    /// POST without `Content-Type: application/json`.
    UnsupportedMediaType,
    /// `Accept` does not list what the transport requires.
    NotAcceptable,
    /// HTTP method the endpoint does not serve.
    MethodNotAllowed,
    /// No such path on this listener.
    NotFound,
    /// `MCP-Protocol-Version` (or `_meta` version) names a revision the gateway does not speak.
    UnsupportedProtocolVersion,
    /// A 2026-07-28 request without the required `_meta` fields (protocol version, client capabilities).
    MissingMeta,
    /// An `Origin` header that is neither loopback nor configured (DNS-rebinding defence).
    OriginNotAllowed,
    /// Bytes that are not an HTTP/1.1 request (bad request line, conflicting lengths, bad chunking).
    MalformedHttp,
    /// A 2026-07-28 routing header is missing.
    MissingHeader,
    /// A 2026-07-28 routing header disagrees with the body.
    HeaderMismatch,
    /// 2025-11-25 request without `Mcp-Session-Id` where one is required.
    SessionRequired,
    /// Unknown or already terminated session id.
    SessionNotFound,
    /// Session passed its idle or duration limit.
    SessionExpired,
    /// An operator revoked the session (`portcullis session revoke`).
    SessionRevoked,
    /// The agent already holds `limits.sessions_per_agent_max` sessions.
    SessionLimit,
    /// An operator revoked this agent or its API key (`portcullis session revoke --agent|--key`) and the
    /// hold (`limits.revocation_hold`) has not ended.
    AccessRevoked,
    /// The session holds `limits.streams_per_session_max` open streams (or its agent's own bound).
    StreamLimit,
    /// `Last-Event-ID` names events the session's replay buffer no longer holds (or never sent): the
    /// client re-syncs (lists again) and opens the stream without it.
    ResumeUnavailable,
    /// JSON-RPC method the gateway does not serve.
    MethodNotFound,
    /// Params missing or of the wrong shape.
    InvalidParams,
    /// No registered upstream exposes this tool/prompt/resource name.
    ToolNotFound,
    /// The upstream could not be reached or refused the connection.
    UpstreamUnavailable,
    /// The upstream did not answer within `limits.upstream_response_timeout`.
    UpstreamTimeout,
    /// The upstream answered with something that is not MCP.
    UpstreamProtocolError,
    /// Too many connections or sessions on this core.
    Overloaded,
    /// Headers or body did not arrive within their deadline.
    RequestTimeout,
    /// The gateway is draining for shutdown.
    ShuttingDown,
    /// The upstream now describes this tool differently from the approved snapshot: withheld until a new
    /// snapshot approves the change.
    ToolDefinitionChanged,
    /// No credential, or one the gateway does not accept (unknown, revoked or malformed API key).
    Unauthenticated,
    /// The credential is valid but names no agent of the active snapshot.
    AgentNotRegistered,
    /// The agent is registered but disabled in the active snapshot.
    AgentDisabled,
    /// The active snapshot's policies do not permit this (default deny, or a forbid).
    PolicyDenied,
    /// The call's arguments do not fit the tool's pinned input schema; nothing went upstream.
    SchemaInvalid,
    /// A 2025-11-25 session used with another agent's credential.
    SessionAgentMismatch,
    /// The agent is over one of its rate limits or quotas; `Retry-After` says when to try again.
    RateLimited,
    /// The upstream's tool result does not fit the tool's pinned output schema (capability mode
    /// `enforce`); the result was withheld.
    OutputSchemaInvalid,
    /// The upstream needs a credential the gateway could not obtain (secret store down or missing the
    /// secret, token exchange refused, no credential bound for the agent's mode); nothing went upstream.
    CredentialUnavailable,
    /// The call's audit record could not be made durable (disk full or read-only, the disk budget
    /// reached): the gateway fails closed rather than answer without a record.
    AuditUnavailable,
}

impl DenyReason {
    /// The reason whose wire code is `code`.
    pub fn from_code(code: &str) -> Option<DenyReason> {
        Self::ALL.iter().copied().find(|r| r.code() == code)
    }

    /// Every variant, in the order of the wire table.
    pub const ALL: [DenyReason; 45] = [
        Self::ParseError,
        Self::InvalidRequest,
        Self::InvalidUtf8,
        Self::BatchUnsupported,
        Self::JsonTooDeep,
        Self::PayloadTooLarge,
        Self::HeadersTooLarge,
        Self::UnsupportedMediaType,
        Self::NotAcceptable,
        Self::MethodNotAllowed,
        Self::NotFound,
        Self::UnsupportedProtocolVersion,
        Self::MissingHeader,
        Self::HeaderMismatch,
        Self::SessionRequired,
        Self::SessionNotFound,
        Self::SessionExpired,
        Self::MethodNotFound,
        Self::InvalidParams,
        Self::ToolNotFound,
        Self::UpstreamUnavailable,
        Self::UpstreamTimeout,
        Self::UpstreamProtocolError,
        Self::Overloaded,
        Self::RequestTimeout,
        Self::ShuttingDown,
        Self::MissingMeta,
        Self::OriginNotAllowed,
        Self::MalformedHttp,
        Self::ToolDefinitionChanged,
        Self::Unauthenticated,
        Self::AgentNotRegistered,
        Self::AgentDisabled,
        Self::PolicyDenied,
        Self::SchemaInvalid,
        Self::SessionAgentMismatch,
        Self::RateLimited,
        Self::OutputSchemaInvalid,
        Self::CredentialUnavailable,
        Self::AuditUnavailable,
        Self::SessionRevoked,
        Self::SessionLimit,
        Self::ResumeUnavailable,
        Self::AccessRevoked,
        Self::StreamLimit,
    ];

    /// The stable `data.reason` string.
    pub const fn code(self) -> &'static str {
        match self {
            Self::ParseError => "parse_error",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::BatchUnsupported => "batch_unsupported",
            Self::JsonTooDeep => "json_too_deep",
            Self::PayloadTooLarge => "payload_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::NotAcceptable => "not_acceptable",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NotFound => "not_found",
            Self::UnsupportedProtocolVersion => "unsupported_protocol_version",
            Self::MissingHeader => "missing_header",
            Self::HeaderMismatch => "header_mismatch",
            Self::SessionRequired => "session_required",
            Self::SessionNotFound => "session_not_found",
            Self::SessionExpired => "session_expired",
            Self::MethodNotFound => "method_not_found",
            Self::InvalidParams => "invalid_params",
            Self::ToolNotFound => "tool_not_found",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamProtocolError => "upstream_protocol_error",
            Self::Overloaded => "overloaded",
            Self::RequestTimeout => "request_timeout",
            Self::ShuttingDown => "shutting_down",
            Self::MissingMeta => "missing_meta",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::MalformedHttp => "malformed_http",
            Self::ToolDefinitionChanged => "tool_definition_changed",
            Self::Unauthenticated => "unauthenticated",
            Self::AgentNotRegistered => "agent_not_registered",
            Self::AgentDisabled => "agent_disabled",
            Self::AccessRevoked => "access_revoked",
            Self::StreamLimit => "stream_limit",
            Self::PolicyDenied => "policy_denied",
            Self::SchemaInvalid => "schema_invalid",
            Self::SessionAgentMismatch => "session_agent_mismatch",
            Self::RateLimited => "rate_limited",
            Self::OutputSchemaInvalid => "output_schema_invalid",
            Self::CredentialUnavailable => "credential_unavailable",
            Self::AuditUnavailable => "audit_unavailable",
            Self::SessionRevoked => "session_revoked",
            Self::SessionLimit => "session_limit",
            Self::ResumeUnavailable => "resume_unavailable",
        }
    }

    pub const fn blame(self) -> Blame {
        match self {
            Self::ParseError
            | Self::InvalidRequest
            | Self::InvalidUtf8
            | Self::BatchUnsupported
            | Self::JsonTooDeep
            | Self::PayloadTooLarge
            | Self::HeadersTooLarge
            | Self::UnsupportedMediaType
            | Self::NotAcceptable
            | Self::MethodNotAllowed
            | Self::NotFound
            | Self::UnsupportedProtocolVersion
            | Self::MissingHeader
            | Self::HeaderMismatch
            | Self::SessionRequired
            | Self::SessionNotFound
            | Self::SessionExpired
            | Self::SessionRevoked
            | Self::MethodNotFound
            | Self::InvalidParams
            | Self::ToolNotFound
            | Self::MissingMeta
            | Self::OriginNotAllowed
            | Self::MalformedHttp
            | Self::RequestTimeout
            | Self::Unauthenticated
            | Self::AgentNotRegistered
            | Self::AgentDisabled
            | Self::AccessRevoked
            | Self::StreamLimit
            | Self::PolicyDenied
            | Self::SchemaInvalid
            | Self::SessionAgentMismatch
            | Self::RateLimited
            | Self::SessionLimit
            | Self::ResumeUnavailable => Blame::Agent,
            Self::UpstreamUnavailable
            | Self::UpstreamTimeout
            | Self::UpstreamProtocolError
            | Self::ToolDefinitionChanged
            | Self::OutputSchemaInvalid => Blame::Upstream,
            Self::Overloaded
            | Self::ShuttingDown
            | Self::CredentialUnavailable
            | Self::AuditUnavailable => Blame::Gateway,
        }
    }

    /// The JSON-RPC error code carried beside `data.reason`.
    pub const fn jsonrpc_code(self) -> i64 {
        match self {
            Self::ParseError | Self::InvalidUtf8 | Self::JsonTooDeep => -32700,
            Self::InvalidRequest
            | Self::BatchUnsupported
            | Self::PayloadTooLarge
            | Self::HeadersTooLarge
            | Self::UnsupportedMediaType
            | Self::NotAcceptable
            | Self::MethodNotAllowed
            | Self::NotFound
            | Self::OriginNotAllowed
            | Self::MalformedHttp
            | Self::SessionRequired
            | Self::SessionNotFound
            | Self::SessionExpired
            | Self::SessionRevoked
            | Self::ResumeUnavailable
            | Self::RequestTimeout => -32600,
            Self::MethodNotFound => -32601,
            Self::InvalidParams | Self::ToolNotFound | Self::MissingMeta | Self::SchemaInvalid => {
                -32602
            }
            // Implementation-defined server errors (JSON-RPC reserves -32000..-32099).
            Self::Unauthenticated => -32001,
            Self::RateLimited | Self::SessionLimit | Self::StreamLimit => -32005,
            Self::AgentNotRegistered
            | Self::AgentDisabled
            | Self::AccessRevoked
            | Self::PolicyDenied
            | Self::SessionAgentMismatch => -32003,
            // The 2026-07-28 registry: -32020 HeaderMismatch, -32022 UnsupportedProtocolVersion.
            Self::MissingHeader | Self::HeaderMismatch => -32020,
            Self::UnsupportedProtocolVersion => -32022,
            Self::UpstreamUnavailable
            | Self::UpstreamTimeout
            | Self::UpstreamProtocolError
            | Self::ToolDefinitionChanged
            | Self::OutputSchemaInvalid
            | Self::CredentialUnavailable
            | Self::AuditUnavailable
            | Self::Overloaded
            | Self::ShuttingDown => -32603,
        }
    }

    /// HTTP status when the refusal is answered at the HTTP layer (before or instead of a JSON-RPC
    /// response on a 200). Upstream failures of a request that was accepted travel as a JSON-RPC error
    /// on 200, so they map to 502/504 only when no JSON-RPC id is known.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::ParseError
            | Self::InvalidRequest
            | Self::MalformedHttp
            | Self::InvalidUtf8
            | Self::BatchUnsupported
            | Self::JsonTooDeep
            | Self::UnsupportedProtocolVersion
            | Self::MissingHeader
            | Self::HeaderMismatch
            | Self::SessionRequired
            | Self::MethodNotFound
            | Self::InvalidParams
            | Self::MissingMeta
            | Self::SchemaInvalid
            | Self::ToolNotFound => 400,
            Self::Unauthenticated => 401,
            Self::OriginNotAllowed
            | Self::AgentNotRegistered
            | Self::AgentDisabled
            | Self::AccessRevoked
            | Self::PolicyDenied => 403,
            Self::SessionAgentMismatch => 404,
            Self::NotFound
            | Self::SessionNotFound
            | Self::SessionExpired
            | Self::SessionRevoked => 404,
            Self::MethodNotAllowed => 405,
            Self::ToolDefinitionChanged => 409,
            Self::NotAcceptable => 406,
            Self::RequestTimeout => 408,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::HeadersTooLarge => 431,
            Self::RateLimited | Self::SessionLimit | Self::StreamLimit => 429,
            Self::ResumeUnavailable => 409,
            Self::UpstreamUnavailable | Self::UpstreamProtocolError | Self::OutputSchemaInvalid => {
                502
            }
            Self::Overloaded
            | Self::ShuttingDown
            | Self::CredentialUnavailable
            | Self::AuditUnavailable => 503,
            Self::UpstreamTimeout => 504,
        }
    }

    /// Whether the refusal concerns one JSON-RPC request that was well-formed at the transport level: such
    /// refusals travel as a JSON-RPC error on HTTP 200 (2025-11-25 clients treat 404 as a lost session), except
    /// where the 2026-07-28 transport mandates a status (`status_for`).
    pub const fn is_jsonrpc_level(self) -> bool {
        matches!(
            self,
            Self::MethodNotFound
                | Self::InvalidParams
                | Self::ToolNotFound
                | Self::UpstreamUnavailable
                | Self::UpstreamTimeout
                | Self::UpstreamProtocolError
                | Self::ToolDefinitionChanged
                | Self::PolicyDenied
                | Self::SchemaInvalid
                | Self::OutputSchemaInvalid
                | Self::CredentialUnavailable
        )
    }

    /// Human-readable sentence for `error.message`.
    pub const fn message(self) -> &'static str {
        match self {
            Self::ParseError => "Parse error: body is not valid JSON",
            Self::InvalidRequest => "Invalid Request: not a JSON-RPC 2.0 message",
            Self::InvalidUtf8 => "Parse error: body is not valid UTF-8",
            Self::BatchUnsupported => "Invalid Request: JSON-RPC batches are not supported by MCP",
            Self::JsonTooDeep => "Parse error: JSON nesting exceeds the gateway's depth limit",
            Self::PayloadTooLarge => "Request body exceeds the gateway's size limit",
            Self::HeadersTooLarge => "Request headers exceed the gateway's size limit",
            Self::UnsupportedMediaType => "Content-Type must be application/json",
            Self::NotAcceptable => "Accept must list both application/json and text/event-stream",
            Self::MethodNotAllowed => "HTTP method not allowed on this endpoint",
            Self::NotFound => "No such endpoint",
            Self::UnsupportedProtocolVersion => "Unsupported MCP protocol version",
            Self::MissingHeader => "A required MCP header is missing",
            Self::HeaderMismatch => "An MCP header does not match the request body",
            Self::SessionRequired => "Mcp-Session-Id header is required",
            Self::SessionNotFound => "Session not found",
            Self::SessionExpired => "Session expired",
            Self::SessionRevoked => "Session revoked by an operator",
            Self::SessionLimit => "The agent holds as many sessions as it may; end one first",
            Self::ResumeUnavailable => {
                "The stream cannot resume from that event; list again and reopen it without Last-Event-ID"
            }
            Self::MethodNotFound => "Method not found",
            Self::InvalidParams => "Invalid params",
            Self::ToolNotFound => "Unknown tool, prompt or resource",
            Self::UpstreamUnavailable => "Upstream unavailable",
            Self::UpstreamTimeout => "Upstream did not answer in time",
            Self::UpstreamProtocolError => "Upstream answered with an invalid MCP message",
            Self::Overloaded => "Gateway overloaded",
            Self::RequestTimeout => "Request not received in time",
            Self::ShuttingDown => "Gateway is shutting down",
            Self::ToolDefinitionChanged => {
                "The upstream changed this tool's definition since it was approved; it is withheld until a new snapshot approves the change"
            }
            Self::OriginNotAllowed => "Origin not allowed",
            Self::Unauthenticated => "Authentication required: present a valid agent credential",
            Self::AgentNotRegistered => {
                "The credential names no agent registered in the active snapshot"
            }
            Self::AgentDisabled => "The agent is disabled",
            Self::AccessRevoked => "An operator revoked this agent's access for now",
            Self::StreamLimit => "The session holds as many open streams as it may; close one first",
            Self::PolicyDenied => "Denied by policy",
            Self::SchemaInvalid => "Arguments do not match the tool's input schema",
            Self::SessionAgentMismatch => "Session not found for this agent",
            Self::RateLimited => "Rate limit exceeded for this agent",
            Self::OutputSchemaInvalid => "The tool's result does not fit its declared output schema",
            Self::CredentialUnavailable => {
                "The gateway could not obtain the upstream credential for this call"
            }
            Self::AuditUnavailable => {
                "The gateway could not record this request in its audit trail, so it was not served"
            }
            Self::MalformedHttp => "Malformed HTTP request",
            Self::MissingMeta => {
                "Request _meta lacks io.modelcontextprotocol/protocolVersion or clientCapabilities"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_table_is_stable() {
        let table: Vec<(&str, i64, u16, &str)> = DenyReason::ALL
            .iter()
            .map(|r| {
                (
                    r.code(),
                    r.jsonrpc_code(),
                    r.http_status(),
                    r.blame().label(),
                )
            })
            .collect();
        let expected: Vec<(&str, i64, u16, &str)> = vec![
            ("parse_error", -32700, 400, "agent"),
            ("invalid_request", -32600, 400, "agent"),
            ("invalid_utf8", -32700, 400, "agent"),
            ("batch_unsupported", -32600, 400, "agent"),
            ("json_too_deep", -32700, 400, "agent"),
            ("payload_too_large", -32600, 413, "agent"),
            ("headers_too_large", -32600, 431, "agent"),
            ("unsupported_media_type", -32600, 415, "agent"),
            ("not_acceptable", -32600, 406, "agent"),
            ("method_not_allowed", -32600, 405, "agent"),
            ("not_found", -32600, 404, "agent"),
            ("unsupported_protocol_version", -32022, 400, "agent"),
            ("missing_header", -32020, 400, "agent"),
            ("header_mismatch", -32020, 400, "agent"),
            ("session_required", -32600, 400, "agent"),
            ("session_not_found", -32600, 404, "agent"),
            ("session_expired", -32600, 404, "agent"),
            ("method_not_found", -32601, 400, "agent"),
            ("invalid_params", -32602, 400, "agent"),
            ("tool_not_found", -32602, 400, "agent"),
            ("upstream_unavailable", -32603, 502, "upstream"),
            ("upstream_timeout", -32603, 504, "upstream"),
            ("upstream_protocol_error", -32603, 502, "upstream"),
            ("overloaded", -32603, 503, "gateway"),
            ("request_timeout", -32600, 408, "agent"),
            ("shutting_down", -32603, 503, "gateway"),
            ("missing_meta", -32602, 400, "agent"),
            ("origin_not_allowed", -32600, 403, "agent"),
            ("malformed_http", -32600, 400, "agent"),
            ("tool_definition_changed", -32603, 409, "upstream"),
            ("unauthenticated", -32001, 401, "agent"),
            ("agent_not_registered", -32003, 403, "agent"),
            ("agent_disabled", -32003, 403, "agent"),
            ("policy_denied", -32003, 403, "agent"),
            ("schema_invalid", -32602, 400, "agent"),
            ("session_agent_mismatch", -32003, 404, "agent"),
            ("rate_limited", -32005, 429, "agent"),
            ("output_schema_invalid", -32603, 502, "upstream"),
            ("credential_unavailable", -32603, 503, "gateway"),
            ("audit_unavailable", -32603, 503, "gateway"),
            ("session_revoked", -32600, 404, "agent"),
            ("session_limit", -32005, 429, "agent"),
            ("resume_unavailable", -32600, 409, "agent"),
            ("access_revoked", -32003, 403, "agent"),
            ("stream_limit", -32005, 429, "agent"),
        ];
        assert_eq!(table, expected);
    }

    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<&str> = DenyReason::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), DenyReason::ALL.len());
    }
}
