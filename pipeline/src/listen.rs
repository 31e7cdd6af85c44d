//! `subscriptions/listen` (2026-07-28) as the gateway serves it to agents: which notifications an agent
//! asked for, which of them each upstream must be asked for, and how the agent's stream is framed.
//!
//! The spec's rules this encodes: the server MUST NOT send notification types the client did not request;
//! `notifications/subscriptions/acknowledged` is the first message carrying the subscription's id and names
//! the subset the server agreed to honour (unsupported types omitted); every message on the stream carries
//! the id (the listen request's JSON-RPC id) in `_meta["io.modelcontextprotocol/subscriptionId"]`; a stream
//! the server ends gracefully ends with a result of `resultType: "complete"` carrying the id.

use simd_json::prelude::*;
use simd_json::OwnedValue as Value;

use crate::jsonrpc::{Id, Message, Notification, Request, Response};
use crate::mcp::Naming;
use crate::reason::DenyReason;

pub const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
pub const ACKNOWLEDGED: &str = "notifications/subscriptions/acknowledged";
pub const TOOLS_CHANGED: &str = "notifications/tools/list_changed";
pub const PROMPTS_CHANGED: &str = "notifications/prompts/list_changed";
pub const RESOURCES_CHANGED: &str = "notifications/resources/list_changed";
pub const RESOURCE_UPDATED: &str = "notifications/resources/updated";

/// What an agent's `subscriptions/listen` asked for, as far as the gateway can honour it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenFilter {
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
    /// Subscribed resources the gateway can route: (upstream, the upstream's URI, the agent's URI).
    pub uris: Vec<(String, String, String)>,
}

/// What to ask one upstream for on the agent's behalf.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamWant {
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
    /// The upstream's own URIs.
    pub uris: Vec<String>,
}

impl UpstreamWant {
    /// Everything an upstream can announce outside a request, without resource subscriptions (what a
    /// 2025-11-25 session's GET stream relays).
    pub fn all_lists() -> UpstreamWant {
        UpstreamWant {
            tools: true,
            prompts: true,
            resources: true,
            uris: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.tools && !self.prompts && !self.resources && self.uris.is_empty()
    }

    /// The `notifications` filter of the gateway's own `subscriptions/listen` to the upstream.
    pub fn to_filter(&self) -> Value {
        filter_value(
            [self.tools, self.prompts, self.resources],
            self.uris.iter().map(String::as_str),
        )
    }
}

/// A `SubscriptionFilter` object: the list flags that are on (tools, prompts, resources), and the
/// resource URIs if any.
fn filter_value<'a>(lists: [bool; 3], uris: impl Iterator<Item = &'a str>) -> Value {
    let mut f = simd_json::owned::Object::new();
    for (on, key) in lists.into_iter().zip([
        "toolsListChanged",
        "promptsListChanged",
        "resourcesListChanged",
    ]) {
        if on {
            f.insert(key.into(), Value::from(true));
        }
    }
    let uris: Vec<Value> = uris.map(Value::from).collect();
    if !uris.is_empty() {
        f.insert("resourceSubscriptions".into(), Value::from(uris));
    }
    Value::from(f)
}

fn flag(filter: &Value, key: &str) -> Result<bool, DenyReason> {
    match filter.get(key) {
        None => Ok(false),
        Some(v) => v.as_bool().ok_or(DenyReason::InvalidParams),
    }
}

impl ListenFilter {
    /// Read `params.notifications` of a `subscriptions/listen` request. A missing or mistyped filter is
    /// `InvalidParams`; a subscribed URI no upstream owns is left out (and so out of the acknowledgement).
    pub fn parse(req: &Request, naming: &Naming) -> Result<ListenFilter, DenyReason> {
        let filter = req
            .params
            .as_ref()
            .and_then(|p| p.get("notifications"))
            .filter(|f| f.is_object())
            .ok_or(DenyReason::InvalidParams)?;
        let mut out = ListenFilter {
            tools: flag(filter, "toolsListChanged")?,
            prompts: flag(filter, "promptsListChanged")?,
            resources: flag(filter, "resourcesListChanged")?,
            uris: Vec::new(),
        };
        if let Some(list) = filter.get("resourceSubscriptions") {
            let list = list.as_array().ok_or(DenyReason::InvalidParams)?;
            for u in list {
                let agent_uri = u.as_str().ok_or(DenyReason::InvalidParams)?;
                if let Some((up, uri)) = naming.split_uri(agent_uri) {
                    let entry = (up.to_owned(), uri.to_owned(), agent_uri.to_owned());
                    if !out.uris.contains(&entry) {
                        out.uris.push(entry);
                    }
                }
            }
        }
        Ok(out)
    }

    /// What `upstream` must be asked for.
    pub fn for_upstream(&self, upstream: &str) -> UpstreamWant {
        UpstreamWant {
            tools: self.tools,
            prompts: self.prompts,
            resources: self.resources,
            uris: self
                .uris
                .iter()
                .filter(|(u, _, _)| u == upstream)
                .map(|(_, uri, _)| uri.clone())
                .collect(),
        }
    }

    /// Whether a notification (already in the agent's namespace) was asked for.
    pub fn accepts(&self, n: &Notification) -> bool {
        match n.method.as_str() {
            TOOLS_CHANGED => self.tools,
            PROMPTS_CHANGED => self.prompts,
            RESOURCES_CHANGED => self.resources,
            RESOURCE_UPDATED => n
                .params
                .as_ref()
                .and_then(|p| p.get("uri"))
                .and_then(|u| u.as_str())
                .is_some_and(|uri| self.uris.iter().any(|(_, _, a)| a == uri)),
            _ => false,
        }
    }

    /// The acknowledgement: the honoured subset, tagged with the subscription id.
    pub fn acknowledgement(&self, id: &Id) -> Message {
        let f = filter_value(
            [self.tools, self.prompts, self.resources],
            self.uris.iter().map(|(_, _, a)| a.as_str()),
        );
        let mut params = simd_json::owned::Object::new();
        params.insert("notifications".into(), f);
        let mut n = Notification {
            method: ACKNOWLEDGED.into(),
            params: Some(Value::from(params)),
        };
        tag(&mut n, id);
        Message::Notification(n)
    }
}

/// Put the subscription id into a notification's `params._meta`.
pub fn tag(n: &mut Notification, id: &Id) {
    let params = n.params.get_or_insert_with(Value::object);
    if !params.is_object() {
        *params = Value::object();
    }
    if params.get("_meta").is_none_or(|m| !m.is_object()) {
        params.insert("_meta", Value::object()).ok();
    }
    if let Some(meta) = params.get_mut("_meta") {
        meta.insert(SUBSCRIPTION_ID, id.to_value()).ok();
    }
}

/// A bare list_changed notification of the gateway's own, tagged.
pub fn changed(method: &str, id: &Id) -> Message {
    let mut n = Notification {
        method: method.into(),
        params: None,
    };
    tag(&mut n, id);
    Message::Notification(n)
}

/// The result that ends a listen stream the server tears down (drain, shutdown).
pub fn ended(id: &Id) -> Message {
    let mut meta = simd_json::owned::Object::new();
    meta.insert(SUBSCRIPTION_ID.into(), id.to_value());
    let mut result = simd_json::owned::Object::new();
    result.insert("resultType".into(), Value::from("complete"));
    result.insert("_meta".into(), Value::from(meta));
    Message::Response(Response {
        id: Some(id.clone()),
        outcome: Ok(Value::from(result)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc;

    fn req(body: &str) -> Request {
        let mut b = body.as_bytes().to_vec();
        match jsonrpc::parse(&mut b, &jsonrpc::ParseLimits::default()).unwrap() {
            Message::Request(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn filters_route_uris_and_drop_what_no_upstream_owns() {
        let r = req(
            r#"{"jsonrpc":"2.0","id":7,"method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":true,"resourceSubscriptions":["docs+file:///a","nowhere","docs+file:///a"]}}}"#,
        );
        let f = ListenFilter::parse(&r, &Naming::Prefixed).unwrap();
        assert!(f.tools && !f.prompts && !f.resources);
        assert_eq!(
            f.uris,
            vec![("docs".into(), "file:///a".into(), "docs+file:///a".into())]
        );
        assert_eq!(f.for_upstream("docs").uris, vec!["file:///a".to_owned()]);
        assert!(f.for_upstream("other").uris.is_empty());

        let ack = jsonrpc::encode(&f.acknowledgement(&Id::Number(7)));
        let ack = String::from_utf8(ack).unwrap();
        assert!(
            ack.contains(r#""io.modelcontextprotocol/subscriptionId":7"#),
            "{ack}"
        );
        assert!(
            ack.contains("toolsListChanged") && !ack.contains("prompts"),
            "{ack}"
        );
        assert!(!ack.contains("nowhere"), "{ack}");

        let n = |method: &str, uri: Option<&str>| Notification {
            method: method.into(),
            params: uri.map(|u| {
                let mut o = simd_json::owned::Object::new();
                o.insert("uri".into(), Value::from(u));
                Value::from(o)
            }),
        };
        assert!(f.accepts(&n(TOOLS_CHANGED, None)));
        assert!(!f.accepts(&n(PROMPTS_CHANGED, None)));
        assert!(!f.accepts(&n("notifications/message", None)));
        assert!(f.accepts(&n(RESOURCE_UPDATED, Some("docs+file:///a"))));
        assert!(!f.accepts(&n(RESOURCE_UPDATED, Some("docs+file:///b"))));
    }

    #[test]
    fn bad_filters_are_invalid_params() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":[]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":"yes"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"resourceSubscriptions":[1]}}}"#,
        ] {
            assert_eq!(
                ListenFilter::parse(&req(body), &Naming::Prefixed),
                Err(DenyReason::InvalidParams),
                "{body}"
            );
        }
    }

    #[test]
    fn tagging_keeps_other_meta_and_ending_carries_the_id() {
        let mut n = Notification {
            method: TOOLS_CHANGED.into(),
            params: None,
        };
        tag(&mut n, &Id::String("s".into()));
        let s = String::from_utf8(jsonrpc::encode(&Message::Notification(n))).unwrap();
        assert!(
            s.contains(r#""_meta":{"io.modelcontextprotocol/subscriptionId":"s"}"#),
            "{s}"
        );
        let end = String::from_utf8(jsonrpc::encode(&ended(&Id::Number(3)))).unwrap();
        assert!(
            end.contains(r#""resultType":"complete""#) && end.contains(r#""id":3"#),
            "{end}"
        );
    }
}
