//! A converted tool's call as an HTTP request, and the HTTP response as an MCP tool result.
//!
//! Arguments are the agent's: nothing they hold may change where the request goes. Path values are
//! percent-encoded as one segment (no `/`, and `.`/`..` refused), query values form-encoded, header and
//! cookie values refused if they hold control characters. The target is always the capability's base URL
//! with the operation's path appended; no argument names a host.

use serde_json::{json, Map, Value};

use super::{CallPlan, Location};

/// Longest excerpt of an error response's body carried in a tool result.
pub const ERROR_EXCERPT_BYTES_MAX: usize = 2048;

/// Why a call's arguments cannot become a request. The tool's input schema catches most of this first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    NotAnObject,
    Missing(String),
    /// A value that cannot go where the parameter goes, and why.
    Refused {
        argument: String,
        why: &'static str,
    },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotAnObject => write!(f, "arguments must be an object"),
            CallError::Missing(a) => write!(f, "argument `{a}` is required"),
            CallError::Refused { argument, why } => write!(f, "argument `{argument}` {why}"),
        }
    }
}

impl std::error::Error for CallError {}

/// The request to send: method, path and query (to append to the base URL's path), headers, body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

/// Build the request `plan` makes from `arguments`.
pub fn build(plan: &CallPlan, arguments: &Value) -> Result<HttpRequest, CallError> {
    let args = arguments.as_object().ok_or(CallError::NotAnObject)?;
    let mut path = plan.path.clone();
    let mut query: Vec<(String, String)> = Vec::new();
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut cookies: Vec<String> = Vec::new();
    for p in &plan.params {
        let Some(v) = args.get(&p.argument).filter(|v| !v.is_null()) else {
            if p.required {
                return Err(CallError::Missing(p.argument.clone()));
            }
            if p.location == Location::Path {
                return Err(CallError::Missing(p.argument.clone()));
            }
            continue;
        };
        let refuse = |why| CallError::Refused {
            argument: p.argument.clone(),
            why,
        };
        match p.location {
            Location::Path => {
                let text =
                    scalar(v).ok_or_else(|| refuse("must be a string, number or boolean"))?;
                if text.is_empty() || text == "." || text == ".." {
                    return Err(refuse(
                        "cannot be empty, `.` or `..` (it is a path segment)",
                    ));
                }
                path = path.replace(&format!("{{{}}}", p.name), &encode(&text));
            }
            Location::Query => match v {
                Value::Array(items) => {
                    let items: Vec<String> = items
                        .iter()
                        .map(|i| {
                            scalar(i).ok_or_else(|| refuse("holds a value that is not a scalar"))
                        })
                        .collect::<Result<_, _>>()?;
                    if p.explode {
                        query.extend(items.into_iter().map(|i| (p.name.clone(), i)));
                    } else {
                        query.push((p.name.clone(), items.join(",")));
                    }
                }
                Value::Object(fields) => {
                    let mut pairs = Vec::new();
                    for (k, fv) in fields {
                        let fv = scalar(fv)
                            .ok_or_else(|| refuse("holds a value that is not a scalar"))?;
                        pairs.push((k.clone(), fv));
                    }
                    if p.explode {
                        query.extend(pairs);
                    } else {
                        let joined: Vec<String> =
                            pairs.into_iter().flat_map(|(k, v)| [k, v]).collect();
                        query.push((p.name.clone(), joined.join(",")));
                    }
                }
                other => query.push((
                    p.name.clone(),
                    scalar(other).ok_or_else(|| refuse("must be a scalar"))?,
                )),
            },
            Location::Header | Location::Cookie => {
                let text = match v {
                    Value::Array(items) => items
                        .iter()
                        .map(|i| {
                            scalar(i).ok_or_else(|| refuse("holds a value that is not a scalar"))
                        })
                        .collect::<Result<Vec<_>, _>>()?
                        .join(","),
                    other => scalar(other).ok_or_else(|| refuse("must be a scalar"))?,
                };
                if text.bytes().any(|b| b < 0x20 || b == 0x7f) {
                    return Err(refuse("holds control characters (CR, LF, NUL, …)"));
                }
                if p.location == Location::Header {
                    headers.push((p.name.to_ascii_lowercase(), text));
                } else {
                    if text.contains([';', ',']) || text.contains(char::is_whitespace) {
                        return Err(refuse(
                            "cannot hold `;`, `,` or spaces (it is a cookie value)",
                        ));
                    }
                    cookies.push(format!("{}={text}", p.name));
                }
            }
        }
    }
    if !cookies.is_empty() {
        headers.push(("cookie".into(), cookies.join("; ")));
    }
    let mut path_and_query = path;
    if !query.is_empty() {
        let q: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        path_and_query.push('?');
        path_and_query.push_str(&q.join("&"));
    }
    let body = match &plan.body {
        Some(arg) => match args.get(arg) {
            Some(v) => {
                headers.push(("content-type".into(), "application/json".into()));
                Some(serde_json::to_vec(v).unwrap_or_default())
            }
            None if plan.body_required => return Err(CallError::Missing(arg.clone())),
            None => None,
        },
        None => None,
    };
    headers.push(("accept".into(), "application/json, */*;q=0.5".into()));
    Ok(HttpRequest {
        method: plan.method.clone(),
        path_and_query,
        headers,
        body,
    })
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Percent-encode everything but RFC 3986's unreserved characters: a value stays one path segment or
/// one query component, whatever it holds (`/`, `?`, `#`, `%2F`, `..` included).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a converted output schema describes an object (then a JSON result is the structured content
/// as it is); other results are wrapped as `{"result": …}`, since MCP's structured content is an object.
fn describes_object(schema: &Value) -> bool {
    if schema.get("type").and_then(Value::as_str) == Some("object") {
        return true;
    }
    // A top-level reference into its own `$defs`.
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|n| schema.get("$defs")?.get(n))
        .and_then(|d| d.get("type"))
        .and_then(Value::as_str)
        == Some("object")
}

/// How a JSON result becomes structured content.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Structured {
    /// The response is an object: it is the structured content.
    Object,
    /// Anything else: `{"result": …}`.
    Wrapped,
}

/// How results of an operation with this 2xx JSON schema are structured.
pub fn structured(schema: &Value) -> Structured {
    if describes_object(schema) {
        Structured::Object
    } else {
        Structured::Wrapped
    }
}

/// The MCP `outputSchema` for a converted operation's 2xx JSON schema (always an object schema).
pub fn output_schema(schema: &Value) -> Value {
    if describes_object(schema) {
        // MCP (and the SDKs' models) want `type: object` at the top even when a `$ref` says so.
        let mut s = schema.clone();
        if let Some(o) = s.as_object_mut() {
            o.entry("type").or_insert_with(|| "object".into());
        }
        return s;
    }
    let mut inner = schema.clone();
    let defs = inner.as_object_mut().and_then(|o| o.remove("$defs"));
    let mut wrapped = json!({
        "type": "object",
        "properties": {"result": inner},
        "required": ["result"]
    });
    if let Some(d) = defs {
        wrapped["$defs"] = d;
    }
    wrapped
}

/// Where a redirect leads, as a path and query on the API's own origin: `location` resolved against the
/// request's `current` path, refused unless it stays on the base URL's origin (`origin`: scheme,
/// host, port as registered) and under its `base` path, with no dot segments, no backslash and no
/// control characters (a redirect must not take a call anywhere a call could not go).
pub fn redirect_target(
    origin: (&str, &str, u16),
    base: &str,
    current: &str,
    location: &str,
) -> Result<String, &'static str> {
    let location = location.trim();
    if location.is_empty()
        || location
            .bytes()
            .any(|b| b < 0x20 || b == 0x7f || b == b'\\')
    {
        return Err("a malformed Location");
    }
    let path = if let Some((scheme, rest)) = location.split_once("://") {
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| "a malformed Location")?),
            None => (
                authority,
                if scheme.eq_ignore_ascii_case("https") {
                    443
                } else {
                    80
                },
            ),
        };
        if !scheme.eq_ignore_ascii_case(origin.0)
            || !host.eq_ignore_ascii_case(origin.1)
            || port != origin.2
            || authority.contains('@')
        {
            return Err("a redirect to another origin");
        }
        if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        }
    } else if location.starts_with("//") {
        return Err("a redirect to another origin");
    } else if location.starts_with('/') {
        location.to_owned()
    } else {
        let dir = current.split('?').next().unwrap_or("/");
        let dir = &dir[..dir.rfind('/').map_or(0, |i| i + 1)];
        format!("{dir}{location}")
    };
    let only_path = path.split(['?', '#']).next().unwrap_or_default();
    let decoded = only_path
        .to_ascii_lowercase()
        .replace("%2e", ".")
        .replace("%2f", "/");
    if decoded.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("a redirect with dot segments");
    }
    let base = base.trim_end_matches('/');
    let under = only_path == base || only_path.starts_with(&format!("{base}/")) || base.is_empty();
    if !under {
        return Err("a redirect outside the API's base path");
    }
    Ok(path.split('#').next().unwrap_or_default().to_owned())
}

/// The tool result for an upstream HTTP response; `structured` is the plan's.
pub fn result(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    structured: Option<Structured>,
) -> Value {
    let ct = content_type
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if !(200..300).contains(&status) {
        let cut = body.len().min(ERROR_EXCERPT_BYTES_MAX);
        let excerpt = String::from_utf8_lossy(&body[..cut]);
        let more = if body.len() > cut { " …" } else { "" };
        return json!({
            "content": [{"type": "text", "text": format!("HTTP {status}: {excerpt}{more}")}],
            "isError": true
        });
    }
    if super::is_json(&ct) {
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            let text = String::from_utf8_lossy(body).into_owned();
            let mut r = json!({"content": [{"type": "text", "text": text}], "isError": false});
            match structured {
                Some(Structured::Object) => r["structuredContent"] = v,
                Some(Structured::Wrapped) => r["structuredContent"] = json!({ "result": v }),
                None => {}
            }
            return r;
        }
    }
    if body.is_empty() {
        return json!({
            "content": [{"type": "text", "text": format!("HTTP {status}")}],
            "isError": false
        });
    }
    let textual = ct.starts_with("text/")
        || ct.is_empty()
        || super::is_json(&ct)
        || ct == "application/xml"
        || ct == "application/yaml";
    match std::str::from_utf8(body) {
        Ok(text) if textual => {
            json!({"content": [{"type": "text", "text": text}], "isError": false})
        }
        _ => {
            let mut blob = Map::new();
            blob.insert("type".into(), "resource".into());
            blob.insert(
                "resource".into(),
                json!({
                    "uri": "openapi:response",
                    "mimeType": if ct.is_empty() { "application/octet-stream" } else { ct.as_str() },
                    "blob": crate::base64::encode_standard(body)
                }),
            );
            json!({"content": [Value::Object(blob)], "isError": false})
        }
    }
}
