//! HTTP-level checks on an MCP request before its body is parsed: method, media types, body size.
//!
//! Input is header values as the listener read them; output is what the transport needs to know, or
//! the reason to refuse. Header names are matched case-insensitively by the caller.

use crate::reason::DenyReason;

/// `Content-Type` of a POST must be `application/json` (parameters such as charset allowed).
pub fn check_content_type(value: Option<&[u8]>) -> Result<(), DenyReason> {
    let v = value.ok_or(DenyReason::UnsupportedMediaType)?;
    let essence = v.split(|&b| b == b';').next().unwrap_or(v);
    if essence
        .trim_ascii()
        .eq_ignore_ascii_case(b"application/json")
    {
        Ok(())
    } else {
        Err(DenyReason::UnsupportedMediaType)
    }
}

/// What an `Accept` header admits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accepts {
    pub json: bool,
    pub event_stream: bool,
}

pub fn parse_accept(value: Option<&[u8]>) -> Accepts {
    let mut a = Accepts::default();
    let Some(v) = value else { return a };
    for item in v.split(|&b| b == b',') {
        let media = item
            .split(|&b| b == b';')
            .next()
            .unwrap_or(item)
            .trim_ascii();
        if media.eq_ignore_ascii_case(b"application/json") {
            a.json = true;
        } else if media.eq_ignore_ascii_case(b"text/event-stream") {
            a.event_stream = true;
        } else if media == b"*/*" {
            a.json = true;
            a.event_stream = true;
        }
    }
    a
}

/// A POST must accept both JSON and SSE (the server picks per response); a GET must accept SSE.
pub fn check_accept_post(value: Option<&[u8]>) -> Result<Accepts, DenyReason> {
    let a = parse_accept(value);
    if a.json && a.event_stream {
        Ok(a)
    } else {
        Err(DenyReason::NotAcceptable)
    }
}

pub fn check_accept_get(value: Option<&[u8]>) -> Result<(), DenyReason> {
    if parse_accept(value).event_stream {
        Ok(())
    } else {
        Err(DenyReason::NotAcceptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert!(check_content_type(Some(b"application/json")).is_ok());
        assert!(check_content_type(Some(b"Application/JSON; charset=utf-8")).is_ok());
        assert_eq!(
            check_content_type(Some(b"text/plain")),
            Err(DenyReason::UnsupportedMediaType)
        );
        assert_eq!(
            check_content_type(None),
            Err(DenyReason::UnsupportedMediaType)
        );
    }

    #[test]
    fn accepts() {
        assert!(check_accept_post(Some(b"application/json, text/event-stream")).is_ok());
        assert!(check_accept_post(Some(b"text/event-stream;q=0.9,application/json")).is_ok());
        assert!(check_accept_post(Some(b"*/*")).is_ok());
        assert_eq!(
            check_accept_post(Some(b"application/json")),
            Err(DenyReason::NotAcceptable)
        );
        assert_eq!(check_accept_post(None), Err(DenyReason::NotAcceptable));
        assert!(check_accept_get(Some(b"text/event-stream")).is_ok());
        assert_eq!(
            check_accept_get(Some(b"application/json")),
            Err(DenyReason::NotAcceptable)
        );
    }
}
