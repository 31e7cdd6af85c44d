//! Which protocol era a POST belongs to, and the 2026-07-28 header/body agreement rules.
//!
//! One endpoint serves both revisions. Following the 2026-07-28 versioning page, a request that carries
//! modern `_meta` (`io.modelcontextprotocol/protocolVersion`) is served statelessly; an `initialize` opens
//! a 2025-11-25 session; anything else must name a live session. Modern requests must mirror their
//! method, name and version into `Mcp-Method`, `Mcp-Name` and `MCP-Protocol-Version`; a disagreement is
//! refused here, before routing, because intermediaries route on those headers.

use simd_json::prelude::*;
use simd_json::OwnedValue as Value;

use crate::jsonrpc::Message;
use crate::reason::DenyReason;
use crate::revision::Revision;
use crate::session::SessionId;

pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// The MCP headers of one POST, as received (already decoded from bytes as UTF-8).
#[derive(Clone, Copy, Debug, Default)]
pub struct McpHeaders<'a> {
    pub protocol_version: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub method: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// The era of one POST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Era {
    /// 2026-07-28: stateless, everything in `_meta`.
    Modern(Revision),
    /// 2025-11-25 `initialize`: opens a session.
    Initialize,
    /// 2025-11-25 traffic of an existing session.
    Session(SessionId),
}

/// A refusal with what the error body should add to `data` (`requested` for a bad version).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: DenyReason,
    /// The version the request named, for `-32022`'s `data.requested`.
    pub requested_version: Option<String>,
    /// Which header failed, for the error message.
    pub header: Option<&'static str>,
}

impl Refusal {
    fn new(reason: DenyReason) -> Self {
        Refusal {
            reason,
            requested_version: None,
            header: None,
        }
    }
    fn header(reason: DenyReason, header: &'static str) -> Self {
        Refusal {
            reason,
            requested_version: None,
            header: Some(header),
        }
    }
}

impl From<DenyReason> for Refusal {
    fn from(r: DenyReason) -> Self {
        Refusal::new(r)
    }
}

fn params(msg: &Message) -> Option<&Value> {
    match msg {
        Message::Request(r) => r.params.as_ref(),
        Message::Notification(n) => n.params.as_ref(),
        Message::Response(_) => None,
    }
}

/// The `_meta` object of a request or notification.
pub fn meta(msg: &Message) -> Option<&Value> {
    params(msg).and_then(|p| p.get("_meta"))
}

/// Methods whose `Mcp-Name` mirrors `params.name` / `params.uri`.
fn name_field(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

/// Decode a header value that may use the `=?base64?...?=` sentinel for non-ASCII text.
pub fn decode_header_value(v: &str) -> Option<String> {
    match v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(b64) => String::from_utf8(crate::base64::standard(b64)?).ok(),
        None => Some(v.to_owned()),
    }
}

/// Classify a POST and, for modern requests, check that headers and body agree.
pub fn classify_post(h: &McpHeaders<'_>, msg: &Message) -> Result<Era, Refusal> {
    if let Some(meta_version) = meta(msg).and_then(|m| m.get(META_PROTOCOL_VERSION)) {
        let Some(meta_version) = meta_version.as_str() else {
            return Err(Refusal::new(DenyReason::MissingMeta));
        };
        // Header and body disagreeing is the request's first fault, whatever either version names: the
        // spec answers it with HeaderMismatch before looking at whether the version is supported.
        if h.protocol_version.is_some_and(|v| v != meta_version) {
            return Err(Refusal::header(
                DenyReason::HeaderMismatch,
                "MCP-Protocol-Version",
            ));
        }
        let revision = match Revision::parse(meta_version) {
            Some(r) if r.is_stateless() => r,
            _ => {
                return Err(Refusal {
                    reason: DenyReason::UnsupportedProtocolVersion,
                    requested_version: Some(meta_version.to_owned()),
                    header: None,
                })
            }
        };
        check_modern_headers(h, msg, meta_version)?;
        let has_caps = meta(msg)
            .and_then(|m| m.get(META_CLIENT_CAPABILITIES))
            .is_some_and(|c| c.is_object());
        if !has_caps {
            return Err(Refusal::new(DenyReason::MissingMeta));
        }
        return Ok(Era::Modern(revision));
    }
    if let Some(v) = h.protocol_version {
        match Revision::parse(v) {
            // A modern version header without modern `_meta`: the body is malformed for its revision.
            Some(r) if r.is_stateless() => {
                if matches!(msg, Message::Request(_)) {
                    return Err(Refusal::new(DenyReason::MissingMeta));
                }
                // Notifications have no header or `_meta` requirements in 2026-07-28; nothing to route.
                return Ok(Era::Modern(r));
            }
            Some(_) => {}
            None if Revision::is_legacy_session_revision(v) => {}
            None => {
                return Err(Refusal {
                    reason: DenyReason::UnsupportedProtocolVersion,
                    requested_version: Some(v.to_owned()),
                    header: None,
                })
            }
        }
    }
    if msg.method() == Some("initialize") {
        return Ok(Era::Initialize);
    }
    let sid = h
        .session_id
        .ok_or(Refusal::new(DenyReason::SessionRequired))?;
    let sid = SessionId::parse(sid).ok_or(Refusal::new(DenyReason::SessionNotFound))?;
    Ok(Era::Session(sid))
}

fn check_modern_headers(
    h: &McpHeaders<'_>,
    msg: &Message,
    meta_version: &str,
) -> Result<(), Refusal> {
    match h.protocol_version {
        None => {
            return Err(Refusal::header(
                DenyReason::MissingHeader,
                "MCP-Protocol-Version",
            ))
        }
        Some(v) if v != meta_version => {
            return Err(Refusal::header(
                DenyReason::HeaderMismatch,
                "MCP-Protocol-Version",
            ))
        }
        Some(_) => {}
    }
    let Some(method) = msg.method() else {
        // Responses are not part of the 2026-07-28 revision.
        return Err(Refusal::new(DenyReason::InvalidRequest));
    };
    let is_request = matches!(msg, Message::Request(_));
    match h.method {
        None if is_request => return Err(Refusal::header(DenyReason::MissingHeader, "Mcp-Method")),
        Some(m) if m != method => {
            return Err(Refusal::header(DenyReason::HeaderMismatch, "Mcp-Method"))
        }
        _ => {}
    }
    if let (true, Some(field)) = (is_request, name_field(method)) {
        let body = params(msg)
            .and_then(|p| p.get(field))
            .and_then(|v| v.as_str());
        let header = h
            .name
            .ok_or(Refusal::header(DenyReason::MissingHeader, "Mcp-Name"))?;
        let header = decode_header_value(header)
            .ok_or(Refusal::header(DenyReason::HeaderMismatch, "Mcp-Name"))?;
        if body != Some(header.as_str()) {
            return Err(Refusal::header(DenyReason::HeaderMismatch, "Mcp-Name"));
        }
    }
    Ok(())
}

/// Encode a value for `Mcp-Name` when forwarding: plain if it is safe ASCII, else the base64 sentinel.
pub fn encode_header_value(v: &str) -> String {
    let plain = !v.is_empty()
        && v.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !v.starts_with(' ')
        && !v.ends_with(' ')
        && !v.starts_with("=?base64?");
    if plain {
        return v.to_owned();
    }
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::from("=?base64?");
    for chunk in v.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out.push_str("?=");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::{self, ParseLimits};

    fn msg(body: &str) -> Message {
        let mut b = body.as_bytes().to_vec();
        jsonrpc::parse(&mut b, &ParseLimits::default()).unwrap()
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__echo","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;

    fn modern<'a>(name: Option<&'a str>) -> McpHeaders<'a> {
        McpHeaders {
            protocol_version: Some("2026-07-28"),
            session_id: None,
            method: Some("tools/call"),
            name,
        }
    }

    #[test]
    fn modern_request_passes_when_headers_agree() {
        assert_eq!(
            classify_post(&modern(Some("a__echo")), &msg(CALL)),
            Ok(Era::Modern(Revision::V2026_07_28))
        );
        let enc = encode_header_value("a__echo");
        assert_eq!(
            classify_post(&modern(Some(&enc)), &msg(CALL)),
            Ok(Era::Modern(Revision::V2026_07_28))
        );
    }

    #[test]
    fn modern_header_failures() {
        let m = msg(CALL);
        let reason = |h: McpHeaders<'_>| classify_post(&h, &m).unwrap_err().reason;
        assert_eq!(reason(modern(None)), DenyReason::MissingHeader);
        assert_eq!(reason(modern(Some("a__other"))), DenyReason::HeaderMismatch);
        assert_eq!(
            reason(McpHeaders {
                method: Some("tools/list"),
                ..modern(Some("a__echo"))
            }),
            DenyReason::HeaderMismatch
        );
        assert_eq!(
            reason(McpHeaders {
                method: None,
                ..modern(Some("a__echo"))
            }),
            DenyReason::MissingHeader
        );
        assert_eq!(
            reason(McpHeaders {
                protocol_version: None,
                ..modern(Some("a__echo"))
            }),
            DenyReason::MissingHeader
        );
        assert_eq!(
            reason(McpHeaders {
                protocol_version: Some("2025-11-25"),
                ..modern(Some("a__echo"))
            }),
            DenyReason::HeaderMismatch
        );
    }

    #[test]
    fn a_version_mismatch_is_reported_before_an_unsupported_version() {
        let body = CALL.replace("2026-07-28", "v999.0.0");
        let r = classify_post(&modern(Some("a__echo")), &msg(&body)).unwrap_err();
        assert_eq!(r.reason, DenyReason::HeaderMismatch);
    }

    #[test]
    fn unsupported_versions_name_what_was_asked() {
        let body = CALL.replace("2026-07-28", "2031-01-01");
        let h = McpHeaders {
            protocol_version: Some("2031-01-01"),
            ..modern(Some("a__echo"))
        };
        let r = classify_post(&h, &msg(&body)).unwrap_err();
        assert_eq!(r.reason, DenyReason::UnsupportedProtocolVersion);
        assert_eq!(r.requested_version.as_deref(), Some("2031-01-01"));
        let legacy = McpHeaders {
            protocol_version: Some("1999-01-01"),
            session_id: Some("x"),
            ..Default::default()
        };
        let r = classify_post(
            &legacy,
            &msg(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
        )
        .unwrap_err();
        assert_eq!(r.reason, DenyReason::UnsupportedProtocolVersion);
    }

    #[test]
    fn missing_meta_fields() {
        let no_caps = CALL.replace(r#","io.modelcontextprotocol/clientCapabilities":{}"#, "");
        assert_eq!(
            classify_post(&modern(Some("a__echo")), &msg(&no_caps))
                .unwrap_err()
                .reason,
            DenyReason::MissingMeta
        );
        let h = McpHeaders {
            protocol_version: Some("2026-07-28"),
            method: Some("tools/list"),
            ..Default::default()
        };
        let bare = msg(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        assert_eq!(
            classify_post(&h, &bare).unwrap_err().reason,
            DenyReason::MissingMeta
        );
    }

    #[test]
    fn legacy_eras() {
        let init = msg(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}"#,
        );
        assert_eq!(
            classify_post(&McpHeaders::default(), &init),
            Ok(Era::Initialize)
        );
        let list = msg(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        assert_eq!(
            classify_post(&McpHeaders::default(), &list)
                .unwrap_err()
                .reason,
            DenyReason::SessionRequired
        );
        let h = McpHeaders {
            session_id: Some("nope"),
            ..Default::default()
        };
        assert_eq!(
            classify_post(&h, &list).unwrap_err().reason,
            DenyReason::SessionNotFound
        );
        let sid = SessionId {
            node: 0,
            core: 1,
            random: [9; 16],
        }
        .to_string();
        let h = McpHeaders {
            session_id: Some(&sid),
            protocol_version: Some("2025-11-25"),
            ..Default::default()
        };
        assert!(matches!(classify_post(&h, &list), Ok(Era::Session(_))));
    }

    #[test]
    fn header_value_codec() {
        for v in ["plain", "héllo", " padded ", "=?base64?x?=", ""] {
            assert_eq!(
                decode_header_value(&encode_header_value(v)).as_deref(),
                Some(v),
                "{v}"
            );
        }
        assert_eq!(encode_header_value("tool"), "tool");
        assert_eq!(
            decode_header_value("=?base64?SGVsbG8=?=").as_deref(),
            Some("Hello")
        );
        assert_eq!(decode_header_value("=?base64?***?="), None);
    }
}
