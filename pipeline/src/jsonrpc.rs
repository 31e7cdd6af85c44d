//! JSON-RPC 2.0 messages as MCP uses them: parsing (simd-json) and encoding.
//!
//! Parsing is bounded before it starts: the body length is checked by the caller and the nesting depth is
//! measured by a linear pre-scan, so a depth bomb never reaches the recursive parser. MCP has no batches
//! since 2025-06-18; a top-level array is refused with its own reason. Ids are strings or integers (MCP
//! forbids `null` ids on requests).

use crate::reason::DenyReason;
use simd_json::prelude::*;
use simd_json::OwnedValue as Value;

/// A request id: MCP allows strings and integers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Id {
    Number(i64),
    String(String),
}

impl Id {
    pub fn to_value(&self) -> Value {
        match self {
            Id::Number(n) => Value::from(*n),
            Id::String(s) => Value::from(s.as_str()),
        }
    }

    fn from_value(v: &Value) -> Option<Id> {
        if let Some(s) = v.as_str() {
            return Some(Id::String(s.to_owned()));
        }
        if let Some(n) = v.as_i64() {
            return Some(Id::Number(n));
        }
        None
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub id: Id,
    pub method: String,
    pub params: Option<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub method: String,
    pub params: Option<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ErrorObject {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub id: Option<Id>,
    pub outcome: Result<Value, ErrorObject>,
}

/// One JSON-RPC message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Request(Request),
    Notification(Notification),
    Response(Response),
}

impl Message {
    pub fn method(&self) -> Option<&str> {
        match self {
            Message::Request(r) => Some(&r.method),
            Message::Notification(n) => Some(&n.method),
            Message::Response(_) => None,
        }
    }
}

/// Parse bounds; the appliance fills these from `[limits]`.
#[derive(Clone, Copy, Debug)]
pub struct ParseLimits {
    /// Deepest allowed nesting of arrays and objects; deeper bodies are refused with `json_too_deep`.
    pub json_depth_max: u32,
}

impl Default for ParseLimits {
    fn default() -> Self {
        // 64 levels: MCP payloads nest a tool's JSON Schema inside a result inside an envelope; real schemas stay
        // well under 20, and 64 keeps the recursive parser's stack use small.
        ParseLimits { json_depth_max: 64 }
    }
}

/// Nesting depth of a JSON text, counted without parsing (strings and escapes are skipped). Returns early
/// with `max + 1` once the bound is passed, so the cost is linear and bounded. String contents, most of a
/// typical body, are skipped eight bytes at a time.
pub fn nesting_depth(bytes: &[u8], max: u32) -> u32 {
    let mut depth: u32 = 0;
    let mut deepest: u32 = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                loop {
                    // An escape as the last byte leaves `i` past the end: an unterminated string.
                    let Some(rest) = bytes.get(i..) else {
                        return deepest;
                    };
                    match find_quote_or_backslash(rest) {
                        None => return deepest, // unterminated string: the parser reports it
                        Some(k) => {
                            i += k;
                            if bytes[i] == b'\\' {
                                i += 2;
                            } else {
                                i += 1;
                                break;
                            }
                        }
                    }
                }
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > deepest {
                    deepest = depth;
                    if deepest > max {
                        return deepest;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// Position of the first `"` or `\\` in `b`, comparing a word at a time (SWAR zero-byte test: for the lowest
/// matching byte the test is exact; false positives only appear above a true match, so the lowest set bit
/// is always a real one).
fn find_quote_or_backslash(b: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const QUOTE: u64 = LO * b'"' as u64;
    const BACKSLASH: u64 = LO * b'\\' as u64;
    let mut i = 0;
    while i + 8 <= b.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i..i + 8]);
        let w = u64::from_le_bytes(w);
        let x = w ^ QUOTE;
        let y = w ^ BACKSLASH;
        let hits = (x.wrapping_sub(LO) & !x & HI) | (y.wrapping_sub(LO) & !y & HI);
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|k| i + k)
}

/// Parse one JSON-RPC message. `body` is scratch space: simd-json parses in place.
pub fn parse(body: &mut [u8], limits: &ParseLimits) -> Result<Message, DenyReason> {
    message_from_value(parse_value_with(body, limits, None)?)
}

/// `parse` with the parser's working buffers kept by the caller between messages.
pub fn parse_in(
    body: &mut [u8],
    limits: &ParseLimits,
    scratch: &mut Scratch,
) -> Result<Message, DenyReason> {
    message_from_value(parse_value_with(body, limits, Some(scratch))?)
}

/// The working buffers of simd-json's two stages (structural indexes, string buffer, an aligned copy
/// of the input), kept between messages: making them afresh is half a dozen allocations and
/// reallocations per message, which on a small request is a good part of parsing it.
pub struct Scratch {
    buffers: simd_json::Buffers,
}

impl Scratch {
    /// Bodies up to this size parse in the kept buffers; a larger one gets buffers of its own, dropped
    /// after it, so one 4 MiB request does not leave a core holding several times that for good.
    pub const KEEP_BYTES: usize = 64 * 1024;
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            buffers: simd_json::Buffers::new(4096),
        }
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch")
    }
}

/// Parse a JSON document under the same bounds as a message, without interpreting it.
pub fn parse_value(body: &mut [u8], limits: &ParseLimits) -> Result<Value, DenyReason> {
    parse_value_with(body, limits, None)
}

/// `parse_value` with the parser's working buffers kept by the caller.
pub fn parse_value_in(
    body: &mut [u8],
    limits: &ParseLimits,
    scratch: &mut Scratch,
) -> Result<Value, DenyReason> {
    parse_value_with(body, limits, Some(scratch))
}

/// The one parse behind the four entry points: bounded depth, then simd-json in the kept buffers where
/// there are some and the body is small enough to keep them at, in buffers sized to the body otherwise.
fn parse_value_with(
    body: &mut [u8],
    limits: &ParseLimits,
    scratch: Option<&mut Scratch>,
) -> Result<Value, DenyReason> {
    if nesting_depth(body, limits.json_depth_max) > limits.json_depth_max {
        return Err(DenyReason::JsonTooDeep);
    }
    let parsed = match scratch {
        Some(s) if body.len() <= Scratch::KEEP_BYTES => {
            simd_json::to_owned_value_with_buffers(body, &mut s.buffers)
        }
        _ => simd_json::to_owned_value(body),
    };
    // simd-json validates UTF-8 itself; tell the two failures apart only when parsing failed.
    parsed.map_err(|_| {
        if std::str::from_utf8(body).is_err() {
            DenyReason::InvalidUtf8
        } else {
            DenyReason::ParseError
        }
    })
}

/// Interpret a parsed JSON value as a JSON-RPC message.
pub fn message_from_value(value: Value) -> Result<Message, DenyReason> {
    let mut obj = match value {
        Value::Object(o) => o,
        Value::Array(_) => return Err(DenyReason::BatchUnsupported),
        _ => return Err(DenyReason::InvalidRequest),
    };
    match obj.get("jsonrpc").and_then(|v| v.as_str()) {
        Some("2.0") => {}
        _ => return Err(DenyReason::InvalidRequest),
    }
    let params = obj.remove("params");
    if let Some(p) = &params {
        if !(p.is_object() || p.is_array()) {
            return Err(DenyReason::InvalidRequest);
        }
    }
    let id = match obj.get("id") {
        None => None,
        Some(v) => Some(Id::from_value(v).ok_or(DenyReason::InvalidRequest)?),
    };
    if let Some(method) = obj.get("method") {
        let method = method
            .as_str()
            .ok_or(DenyReason::InvalidRequest)?
            .to_owned();
        return Ok(match id {
            Some(id) => Message::Request(Request { id, method, params }),
            None => Message::Notification(Notification { method, params }),
        });
    }
    // A response: exactly one of result / error.
    let result = obj.remove("result");
    let error = obj.remove("error");
    let outcome = match (result, error) {
        (Some(r), None) => Ok(r),
        (None, Some(e)) => Err(error_from_value(e).ok_or(DenyReason::InvalidRequest)?),
        _ => return Err(DenyReason::InvalidRequest),
    };
    if id.is_none() && outcome.is_ok() {
        return Err(DenyReason::InvalidRequest);
    }
    Ok(Message::Response(Response { id, outcome }))
}

fn error_from_value(v: Value) -> Option<ErrorObject> {
    let mut o = match v {
        Value::Object(o) => o,
        _ => return None,
    };
    let code = o.get("code")?.as_i64()?;
    let message = o.get("message")?.as_str()?.to_owned();
    let data = o.remove("data");
    Some(ErrorObject {
        code,
        message,
        data,
    })
}

/// Encode a message as compact JSON, written straight from the message (no copy of its params or result
/// into a new value tree first; the tests hold it to the bytes of that tree).
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(br#"{"jsonrpc":"2.0""#);
    match msg {
        Message::Request(r) => {
            out.extend_from_slice(br#","id":"#);
            write_id(&r.id, &mut out);
            write_method_params(&r.method, r.params.as_ref(), &mut out);
        }
        Message::Notification(n) => write_method_params(&n.method, n.params.as_ref(), &mut out),
        Message::Response(r) => {
            out.extend_from_slice(br#","id":"#);
            match &r.id {
                Some(id) => write_id(id, &mut out),
                None => out.extend_from_slice(b"null"),
            }
            match &r.outcome {
                Ok(v) => {
                    out.extend_from_slice(br#","result":"#);
                    write_value(v, &mut out);
                }
                Err(e) => {
                    out.extend_from_slice(br#","error":{"code":"#);
                    write_value(&Value::from(e.code), &mut out);
                    out.extend_from_slice(br#","message":"#);
                    write_str(&e.message, &mut out);
                    if let Some(d) = &e.data {
                        out.extend_from_slice(br#","data":"#);
                        write_value(d, &mut out);
                    }
                    out.push(b'}');
                }
            }
        }
    }
    out.push(b'}');
    out
}

fn write_method_params(method: &str, params: Option<&Value>, out: &mut Vec<u8>) {
    out.extend_from_slice(br#","method":"#);
    write_str(method, out);
    if let Some(p) = params {
        out.extend_from_slice(br#","params":"#);
        write_value(p, out);
    }
}

// Writing into a Vec cannot fail: `Write for Vec` is infallible.
fn write_value(v: &Value, out: &mut Vec<u8>) {
    let _ = v.write(out);
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    // A borrowed value: the string is escaped as simd-json escapes every other one, without a copy.
    let _ = simd_json::BorrowedValue::from(s).write(out);
}

fn write_id(id: &Id, out: &mut Vec<u8>) {
    match id {
        Id::Number(n) => write_value(&Value::from(*n), out),
        Id::String(s) => write_str(s, out),
    }
}

/// A JSON-RPC error response for a refusal, with `data.reason` and any extra data fields.
pub fn deny_response(id: Option<Id>, reason: DenyReason, extra: &[(&str, Value)]) -> Message {
    let mut data = simd_json::owned::Object::with_capacity(1 + extra.len());
    data.insert("reason".into(), Value::from(reason.code()));
    for (k, v) in extra {
        data.insert((*k).into(), v.clone());
    }
    Message::Response(Response {
        id,
        outcome: Err(ErrorObject {
            code: reason.jsonrpc_code(),
            message: reason.message().to_owned(),
            data: Some(Value::from(data)),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str) -> Result<Message, DenyReason> {
        let mut b = body.as_bytes().to_vec();
        parse(&mut b, &ParseLimits::default())
    }

    /// One kept `Scratch` across bodies of every kind (small, failing, larger than it keeps, escaped)
    /// parses each exactly as fresh buffers do: nothing of one message leaks into the next.
    #[test]
    fn kept_buffers_parse_like_fresh_ones() {
        let big = format!(
            r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"t","arguments":{{"s":"{}"}}}}}}"#,
            "y".repeat(Scratch::KEEP_BYTES + 10)
        );
        let bodies = [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"text":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","n":42}}}"#,
            r#"{"jsonrpc":"2.0","id":"s","method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"x","params":{"#,
            big.as_str(),
            r#"{"jsonrpc":"2.0","id":3,"result":{"k":"\u00e9\n\"q\"","v":[1,2.5,-3,true,null]}}"#,
            r#"[{"jsonrpc":"2.0","id":4,"method":"ping"}]"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ];
        let limits = ParseLimits::default();
        let mut kept = Scratch::default();
        for _ in 0..2 {
            for body in bodies {
                let mut a = body.as_bytes().to_vec();
                let mut b = body.as_bytes().to_vec();
                assert_eq!(
                    parse_in(&mut a, &limits, &mut kept),
                    parse(&mut b, &limits),
                    "{}",
                    &body[..body.len().min(80)]
                );
            }
        }
        let mut b = bodies[4].as_bytes().to_vec();
        let Ok(Message::Response(r)) = parse_in(&mut b, &limits, &mut kept) else {
            panic!("a response");
        };
        assert_eq!(r.outcome.unwrap()["k"].as_str(), Some("é\n\"q\""));
    }

    #[test]
    fn request_notification_response() {
        let m = check(r#"{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{}}"#).unwrap();
        assert!(matches!(
            m,
            Message::Request(Request {
                id: Id::Number(7),
                ..
            })
        ));
        let m = check(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert!(matches!(m, Message::Notification(_)));
        let m = check(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap();
        assert!(matches!(
            m,
            Message::Response(Response { outcome: Ok(_), .. })
        ));
        let m = check(r#"{"jsonrpc":"2.0","id":"a","error":{"code":-1,"message":"x"}}"#).unwrap();
        assert!(matches!(
            m,
            Message::Response(Response {
                outcome: Err(_),
                ..
            })
        ));
    }

    #[test]
    fn refusals() {
        assert_eq!(check("{"), Err(DenyReason::ParseError));
        assert_eq!(check("[]"), Err(DenyReason::BatchUnsupported));
        assert_eq!(check("3"), Err(DenyReason::InvalidRequest));
        assert_eq!(
            check(r#"{"id":1,"method":"x"}"#),
            Err(DenyReason::InvalidRequest)
        );
        assert_eq!(
            check(r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#),
            Err(DenyReason::InvalidRequest)
        );
        assert_eq!(
            check(r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#),
            Err(DenyReason::InvalidRequest)
        );
        assert_eq!(
            check(r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#),
            Err(DenyReason::InvalidRequest)
        );
        assert_eq!(
            check(r#"{"jsonrpc":"2.0","id":1,"method":3}"#),
            Err(DenyReason::InvalidRequest)
        );
        assert_eq!(
            check(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#),
            Err(DenyReason::InvalidRequest)
        );
        assert_eq!(
            check(r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{}}"#),
            Err(DenyReason::InvalidRequest)
        );
        let mut bad = b"{\"jsonrpc\":\"2.0\",\"method\":\"\xff\"}".to_vec();
        assert_eq!(
            parse(&mut bad, &ParseLimits::default()),
            Err(DenyReason::InvalidUtf8)
        );
    }

    #[test]
    fn depth_bound_both_sides() {
        let limits = ParseLimits { json_depth_max: 8 };
        // The envelope object is depth 1, params depth 2; nest arrays inside params.
        let body = |extra: usize| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"a":{}{}}}}}"#,
                "[".repeat(extra),
                "]".repeat(extra)
            )
        };
        let mut at = body(6).into_bytes();
        assert!(parse(&mut at, &limits).is_ok());
        let mut over = body(7).into_bytes();
        assert_eq!(parse(&mut over, &limits), Err(DenyReason::JsonTooDeep));
    }

    /// The byte-at-a-time scan the fast one must agree with.
    fn depth_reference(bytes: &[u8]) -> u32 {
        let (mut depth, mut deepest, mut in_string, mut escaped) = (0u32, 0u32, false, false);
        for &b in bytes {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        deepest
    }

    #[test]
    fn depth_scan_agrees_with_the_reference_on_random_input() {
        // xorshift: deterministic, no dependency.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"[]{}\"\\ax:,";
        for len in 0..400 {
            for _ in 0..20 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        alphabet[(state % alphabet.len() as u64) as usize]
                    })
                    .collect();
                let (fast, slow) = (nesting_depth(&bytes, u32::MAX), depth_reference(&bytes));
                // An unterminated string ends the fast scan early; it can only report less, never more.
                assert!(fast <= slow, "{:?}", String::from_utf8_lossy(&bytes));
                let terminated = {
                    let mut b = bytes.clone();
                    b.extend_from_slice(b"\"");
                    depth_reference(&b) == slow
                };
                if terminated && bytes.iter().filter(|&&c| c == b'"').count() % 2 == 0 {
                    assert_eq!(fast, slow, "{:?}", String::from_utf8_lossy(&bytes));
                }
            }
        }
    }

    #[test]
    fn depth_scan_ignores_brackets_in_strings() {
        assert_eq!(nesting_depth(br#"{"a":"[[[[\"{{{{"}"#, 64), 1);
    }

    #[test]
    fn encode_round_trip() {
        for body in [
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x","arguments":{"a":[1,2,{"b":null}]}}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#,
            r#"{"jsonrpc":"2.0","id":"q","error":{"code":-32601,"message":"no","data":{"reason":"method_not_found"}}}"#,
        ] {
            let m = check(body).unwrap();
            let mut again = encode(&m);
            let back = parse(&mut again, &ParseLimits::default()).unwrap();
            assert_eq!(m, back);
        }
    }

    /// The reference for `encode`: the message as a value tree, serialised by `to_vec`.
    fn to_value(msg: &Message) -> Value {
        let mut o = simd_json::owned::Object::with_capacity(4);
        o.insert("jsonrpc".into(), Value::from("2.0"));
        match msg {
            Message::Request(r) => {
                o.insert("id".into(), r.id.to_value());
                o.insert("method".into(), Value::from(r.method.as_str()));
                if let Some(p) = &r.params {
                    o.insert("params".into(), p.clone());
                }
            }
            Message::Notification(n) => {
                o.insert("method".into(), Value::from(n.method.as_str()));
                if let Some(p) = &n.params {
                    o.insert("params".into(), p.clone());
                }
            }
            Message::Response(r) => {
                o.insert(
                    "id".into(),
                    r.id.as_ref().map_or(Value::null(), Id::to_value),
                );
                match &r.outcome {
                    Ok(v) => {
                        o.insert("result".into(), v.clone());
                    }
                    Err(e) => {
                        let mut eo = simd_json::owned::Object::with_capacity(3);
                        eo.insert("code".into(), Value::from(e.code));
                        eo.insert("message".into(), Value::from(e.message.as_str()));
                        if let Some(d) = &e.data {
                            eo.insert("data".into(), d.clone());
                        }
                        o.insert("error".into(), Value::from(eo));
                    }
                }
            }
        }
        Value::from(o)
    }

    fn to_vec(v: &Value) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        // Writing into a Vec cannot fail: `Write for Vec` is infallible.
        let _ = v.write(&mut out);
        out
    }

    #[test]
    fn encode_writes_the_bytes_of_the_value_tree() {
        // Every message shape, ids of both kinds, strings that need escaping, error data and none.
        for body in [
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x","arguments":{"a":[1,2.5,{"b":null}],"t":true}}}"#,
            r#"{"jsonrpc":"2.0","id":"q\"\\\u0001é","method":"m\n\"x\"","params":[1,"two"]}"#,
            r#"{"jsonrpc":"2.0","id":-3,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":"q","error":{"code":-32601,"message":"no \"such\"\tmethod","data":{"reason":"method_not_found"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"plain"}}"#,
            r#"{"jsonrpc":"2.0","id":9,"result":{"content":[{"type":"text","text":"ü\u2028"}],"isError":false}}"#,
        ] {
            let m = check(body).unwrap();
            assert_eq!(
                String::from_utf8(encode(&m)).unwrap(),
                String::from_utf8(to_vec(&to_value(&m))).unwrap(),
                "{body}"
            );
        }
        let orphan = Message::Response(Response {
            id: None,
            outcome: Err(ErrorObject {
                code: -32700,
                message: "parse error".into(),
                data: None,
            }),
        });
        assert_eq!(encode(&orphan), to_vec(&to_value(&orphan)));
    }

    #[test]
    fn deny_response_carries_reason() {
        let m = deny_response(Some(Id::Number(1)), DenyReason::ToolNotFound, &[]);
        let s = String::from_utf8(encode(&m)).unwrap();
        assert!(s.contains(r#""reason":"tool_not_found""#), "{s}");
        assert!(s.contains(r#""code":-32602"#), "{s}");
    }
}
