//! Namespacing of tool, prompt and resource names across aggregated upstreams.
//!
//! Several upstreams sit behind one endpoint, so their names are prefixed with the upstream's name:
//! tools and prompts become `UPSTREAM__name`, resource URIs become `UPSTREAM+uri` (a valid URI scheme
//! prefix, so `file:///a` from `docs` reads `docs+file:///a`). Upstream names are restricted to
//! `[a-z0-9-]` starting with a letter, so they contain neither `_` nor `+`: the first separator in a
//! namespaced name is always ours, which makes the mapping injective and collisions impossible.

/// Separator between upstream name and tool/prompt name.
pub const NAME_SEPARATOR: &str = "__";
/// Separator between upstream name and resource URI.
pub const URI_SEPARATOR: char = '+';
/// Longest upstream name; keeps namespaced tool names within the 128 characters MCP recommends.
pub const UPSTREAM_NAME_BYTES_MAX: usize = 32;

/// Why an upstream name is not acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamNameError {
    Empty,
    TooLong,
    MustStartWithLetter,
    /// Only lowercase ASCII letters, digits and `-`.
    InvalidCharacter,
}

pub fn validate_upstream_name(name: &str) -> Result<(), UpstreamNameError> {
    let first = name.bytes().next().ok_or(UpstreamNameError::Empty)?;
    if name.len() > UPSTREAM_NAME_BYTES_MAX {
        return Err(UpstreamNameError::TooLong);
    }
    if !first.is_ascii_lowercase() {
        return Err(UpstreamNameError::MustStartWithLetter);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(UpstreamNameError::InvalidCharacter);
    }
    Ok(())
}

pub fn namespace_name(upstream: &str, name: &str) -> String {
    let mut s = String::with_capacity(upstream.len() + NAME_SEPARATOR.len() + name.len());
    s.push_str(upstream);
    s.push_str(NAME_SEPARATOR);
    s.push_str(name);
    s
}

/// Split `UPSTREAM__name` into its parts; `None` when there is no separator or either side is empty.
pub fn split_name(namespaced: &str) -> Option<(&str, &str)> {
    let (upstream, name) = namespaced.split_once(NAME_SEPARATOR)?;
    if upstream.is_empty() || name.is_empty() {
        return None;
    }
    Some((upstream, name))
}

pub fn namespace_uri(upstream: &str, uri: &str) -> String {
    let mut s = String::with_capacity(upstream.len() + 1 + uri.len());
    s.push_str(upstream);
    s.push(URI_SEPARATOR);
    s.push_str(uri);
    s
}

pub fn split_uri(namespaced: &str) -> Option<(&str, &str)> {
    let (upstream, uri) = namespaced.split_once(URI_SEPARATOR)?;
    if upstream.is_empty() || uri.is_empty() {
        return None;
    }
    Some((upstream, uri))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_even_with_separators_inside() {
        for (u, n) in [
            ("a", "b"),
            ("docs", "read__file"),
            ("x-1", "__"),
            ("q", "+a+"),
        ] {
            validate_upstream_name(u).unwrap();
            assert_eq!(split_name(&namespace_name(u, n)), Some((u, n)));
            assert_eq!(split_uri(&namespace_uri(u, n)), Some((u, n)));
        }
    }

    #[test]
    fn upstream_names() {
        assert_eq!(validate_upstream_name(""), Err(UpstreamNameError::Empty));
        assert_eq!(
            validate_upstream_name("1a"),
            Err(UpstreamNameError::MustStartWithLetter)
        );
        assert_eq!(
            validate_upstream_name("a_b"),
            Err(UpstreamNameError::InvalidCharacter)
        );
        assert_eq!(
            validate_upstream_name("a+b"),
            Err(UpstreamNameError::InvalidCharacter)
        );
        assert_eq!(validate_upstream_name(&"a".repeat(32)), Ok(()));
        assert_eq!(
            validate_upstream_name(&"a".repeat(33)),
            Err(UpstreamNameError::TooLong)
        );
    }

    #[test]
    fn unnamespaced_names_do_not_split() {
        assert_eq!(split_name("plain"), None);
        assert_eq!(split_name("__x"), None);
        assert_eq!(split_uri("file:///a"), None);
    }
}
