//! URL query strings of the admin API's list and search endpoints (`/admin/v1/audit?agent=…`,
//! `/admin/v1/sessions?limit=…`): decoded strictly, so an odd character is a clear 400, never a
//! surprise match.

use std::fmt;

/// What is wrong with a query, for a 400's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryError(pub String);

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QueryError {}

/// The longest query string accepted.
pub const QUERY_BYTES_MAX: usize = 4096;
/// The longest value of one parameter, decoded.
pub const VALUE_BYTES_MAX: usize = 256;

/// The `name=value` pairs of a query string, percent-decoded (`+` as space), in order. Refused: a
/// query over `QUERY_BYTES_MAX`, a name outside `allowed`, a name given twice, a bad `%` escape, a
/// value that is not UTF-8, over `VALUE_BYTES_MAX`, or holds a control character.
pub fn parse<'a>(query: &str, allowed: &[&'a str]) -> Result<Vec<(&'a str, String)>, QueryError> {
    if query.len() > QUERY_BYTES_MAX {
        return Err(QueryError(format!(
            "the query is longer than {QUERY_BYTES_MAX} bytes"
        )));
    }
    let mut out: Vec<(&'a str, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name)?;
        let Some(known) = allowed.iter().find(|a| **a == name) else {
            let shown: String = name.chars().take(40).collect();
            return Err(QueryError(format!(
                "unknown parameter `{}` (known: {})",
                shown.escape_debug(),
                allowed.join(", ")
            )));
        };
        if out.iter().any(|(n, _)| n == known) {
            return Err(QueryError(format!("parameter `{known}` given twice")));
        }
        let value = decode(value)?;
        if value.len() > VALUE_BYTES_MAX {
            return Err(QueryError(format!(
                "`{known}` is longer than {VALUE_BYTES_MAX} bytes"
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(QueryError(format!("`{known}` holds a control character")));
        }
        out.push((known, value));
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, QueryError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| QueryError("a `%` escape is not two hex digits".into()))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| QueryError("a value is not UTF-8".into()))
}

/// A non-negative integer parameter within `min..=max`.
pub fn number(name: &str, v: &str, min: u64, max: u64) -> Result<u64, QueryError> {
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(QueryError(format!(
            "`{name}` must be a whole number from {min} to {max}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_decode_strictly() {
        let q = parse(
            "agent=billing%2Dbot&tool=a+b&limit=5",
            &["agent", "tool", "limit"],
        )
        .unwrap();
        assert_eq!(
            q,
            vec![
                ("agent", "billing-bot".to_owned()),
                ("tool", "a b".to_owned()),
                ("limit", "5".to_owned())
            ]
        );
        assert_eq!(parse("", &["agent"]).unwrap(), vec![]);
        assert_eq!(
            parse("&&agent=&", &["agent"]).unwrap(),
            vec![("agent", String::new())]
        );
        let err = |q: &str| parse(q, &["agent"]).unwrap_err().0;
        assert!(err("who=x").contains("unknown parameter `who`"));
        assert!(err("agent=a&agent=b").contains("twice"));
        assert!(err("agent=%zz").contains("hex"));
        assert!(err("agent=%4").contains("hex"));
        assert!(err("agent=%ff%fe").contains("UTF-8"));
        assert!(err("agent=a%0Ab").contains("control"));
        assert!(err("agent=a%00").contains("control"));
        assert!(err(&format!("agent={}", "x".repeat(300))).contains("longer"));
        assert!(err(&"a".repeat(5000)).contains("longer"));
        // Unicode that is not a control character is a value like any other.
        assert_eq!(
            parse("agent=%E2%9C%93%27%22%3C", &["agent"]).unwrap()[0].1,
            "✓'\"<"
        );
    }

    #[test]
    fn numbers_are_bounded() {
        assert_eq!(number("limit", "50", 1, 500), Ok(50));
        assert!(number("limit", "0", 1, 500).is_err());
        assert!(number("limit", "501", 1, 500).is_err());
        assert!(number("limit", "-1", 1, 500).is_err());
        assert!(number("limit", "99999999999999999999999", 1, 500).is_err());
    }
}
