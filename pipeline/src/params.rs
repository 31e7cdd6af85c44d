//! `Mcp-Param-*` headers (2026-07-28, SEP-2243): tool arguments a client mirrors into HTTP headers
//! because the tool's input schema marks their properties with `x-mcp-header`, so intermediaries can
//! act on them without reading the body. A server that acts on the body must check that the two agree.
//!
//! Rules, from the transport specification: only properties reachable through `properties` keys count
//! (an annotation elsewhere, or on a property that is not a string, integer, number or boolean, or a
//! name that is not an HTTP token, or one used twice, is not enforced); an argument that is absent or
//! null needs no header; an argument that is present needs its header; a value in the
//! `=?base64?…?=` wrapper is decoded before comparing; numbers compare numerically.

use serde_json::Value;

use crate::transport::decode_header_value;

/// Header name prefix, lowercase.
pub const PREFIX: &str = "mcp-param-";
/// Declarations one tool may carry, at most; past it none are enforced.
const BINDINGS_MAX: usize = 64;
/// How deep through nested `properties` a declaration is looked for.
const DEPTH_MAX: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    String,
    Integer,
    Number,
    Boolean,
}

/// One enforced declaration: the header (lowercase, with the prefix) and where its argument is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub header: String,
    path: Vec<String>,
    kind: Kind,
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The declarations of an input schema that are enforced.
pub fn bindings(schema: &Value) -> Vec<Binding> {
    fn walk(schema: &Value, path: &mut Vec<String>, out: &mut Vec<Binding>, bad: &mut bool) {
        let Some(Value::Object(props)) = schema.get("properties") else {
            return;
        };
        for (k, v) in props {
            path.push(k.clone());
            if let Some(name) = v.get("x-mcp-header") {
                let kind = match v.get("type").and_then(Value::as_str) {
                    Some("string") => Some(Kind::String),
                    Some("integer") => Some(Kind::Integer),
                    Some("number") => Some(Kind::Number),
                    Some("boolean") => Some(Kind::Boolean),
                    _ => None,
                };
                match (name.as_str().filter(|n| is_token(n)), kind) {
                    (Some(n), Some(kind)) => out.push(Binding {
                        header: format!("{PREFIX}{}", n.to_ascii_lowercase()),
                        path: path.clone(),
                        kind,
                    }),
                    _ => *bad = true,
                }
            } else if path.len() < DEPTH_MAX {
                walk(v, path, out, bad);
            }
            path.pop();
        }
    }
    let mut out = Vec::new();
    let mut bad = false;
    walk(schema, &mut Vec::new(), &mut out, &mut bad);
    let mut names: Vec<&str> = out.iter().map(|b| b.header.as_str()).collect();
    names.sort_unstable();
    let duplicated = names.windows(2).any(|w| w[0] == w[1]);
    // A schema with an invalid declaration is an invalid tool definition: nothing of it is enforced.
    if bad || duplicated || out.len() > BINDINGS_MAX {
        return Vec::new();
    }
    out
}

/// Why the headers and the arguments disagree: the header concerned, and whether it was missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub header: String,
    pub missing: bool,
}

fn agrees(kind: Kind, arg: &Value, header: &str) -> bool {
    match (kind, arg) {
        (Kind::String, Value::String(s)) => s == header,
        (Kind::Boolean, Value::Bool(b)) => header == if *b { "true" } else { "false" },
        (Kind::Integer | Kind::Number, Value::Number(n)) => {
            match (n.as_f64(), header.trim().parse::<f64>()) {
                (Some(a), Ok(h)) => a == h,
                _ => false,
            }
        }
        // The argument has another type than its schema says: the schema check refuses the call.
        _ => true,
    }
}

/// Check a call's `Mcp-Param-*` headers (lowercase names) against its arguments.
pub fn check(
    bindings: &[Binding],
    arguments: &Value,
    headers: &[(String, String)],
) -> Result<(), Mismatch> {
    for b in bindings {
        let mut arg = Some(arguments);
        for k in &b.path {
            arg = arg.and_then(|a| a.get(k));
        }
        let Some(arg) = arg.filter(|a| !a.is_null()) else {
            continue;
        };
        let Some((_, raw)) = headers.iter().find(|(n, _)| *n == b.header) else {
            return Err(Mismatch {
                header: b.header.clone(),
                missing: true,
            });
        };
        let ok = decode_header_value(raw).is_some_and(|v| agrees(b.kind, arg, &v));
        if !ok {
            return Err(Mismatch {
                header: b.header.clone(),
                missing: false,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "count": {"type": "integer", "x-mcp-header": "Count"},
            "dry": {"type": "boolean", "x-mcp-header": "Dry-Run"},
            "where": {"type": "object", "properties": {"zone": {"type": "string", "x-mcp-header": "Zone"}}},
            "query": {"type": "string"}
        }})
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn declarations_are_found_and_bad_ones_disable_the_tool() {
        let b = bindings(&schema());
        let mut names: Vec<&str> = b.iter().map(|b| b.header.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "mcp-param-count",
                "mcp-param-dry-run",
                "mcp-param-region",
                "mcp-param-zone"
            ]
        );
        for bad in [
            json!({"properties": {"a": {"type": "array", "x-mcp-header": "A"}}}),
            json!({"properties": {"a": {"type": "string", "x-mcp-header": "bad name"}}}),
            json!({"properties": {"a": {"type": "string", "x-mcp-header": "A"}, "b": {"type": "string", "x-mcp-header": "a"}}}),
        ] {
            assert!(bindings(&bad).is_empty(), "{bad}");
        }
        assert!(bindings(&json!({"type": "object"})).is_empty());
    }

    #[test]
    fn headers_must_agree_with_the_arguments() {
        let b = bindings(&schema());
        let args = json!({"region": "us-west1", "count": 42, "dry": false, "where": {"zone": "b"}, "query": "q"});
        let good = h(&[
            ("mcp-param-region", "us-west1"),
            ("mcp-param-count", "42.0"),
            ("mcp-param-dry-run", "false"),
            ("mcp-param-zone", "=?base64?Yg==?="),
        ]);
        assert_eq!(check(&b, &args, &good), Ok(()));
        let mut wrong = good.clone();
        wrong[0].1 = "eu-west1".into();
        assert_eq!(
            check(&b, &args, &wrong),
            Err(Mismatch {
                header: "mcp-param-region".into(),
                missing: false
            })
        );
        let missing = good[1..].to_vec();
        assert_eq!(
            check(&b, &args, &missing),
            Err(Mismatch {
                header: "mcp-param-region".into(),
                missing: true
            })
        );
        let mut bad_b64 = good.clone();
        bad_b64[3].1 = "=?base64?!!!?=".into();
        assert!(check(&b, &args, &bad_b64).is_err());
        // Absent or null arguments need no header.
        assert_eq!(check(&b, &json!({"region": null}), &[]), Ok(()));
    }
}
