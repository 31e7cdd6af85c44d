//! MCP method routing and the rewrites aggregation needs.
//!
//! `route` says what a request asks of the gateway: answer it itself (initialize, ping, discover), fan
//! it out to every upstream and merge (the list methods), or forward it to the one upstream that owns a
//! namespaced name. The rewrite helpers restore an upstream's own names on the way in and namespace them
//! on the way out; ids of upstream-to-agent requests are mapped so two upstreams can never collide.
//! A gateway in front of exactly one upstream may instead pass names through unchanged (`Naming`).

use simd_json::prelude::*;
use simd_json::OwnedValue as Value;

use crate::jsonrpc::{Id, Request};
use crate::names;
use crate::reason::DenyReason;
use crate::revision::Revision;

/// A list method the gateway answers by merging every upstream's list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl ListKind {
    pub const ALL: [ListKind; 4] = [
        ListKind::Tools,
        ListKind::Prompts,
        ListKind::Resources,
        ListKind::ResourceTemplates,
    ];

    pub const fn method(self) -> &'static str {
        match self {
            ListKind::Tools => "tools/list",
            ListKind::Prompts => "prompts/list",
            ListKind::Resources => "resources/list",
            ListKind::ResourceTemplates => "resources/templates/list",
        }
    }

    /// The array field of the result.
    pub const fn field(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::ResourceTemplates => "resourceTemplates",
        }
    }

    /// The capability an upstream must announce for the list to exist there.
    pub const fn capability(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources | ListKind::ResourceTemplates => "resources",
        }
    }
}

/// How upstream names appear to agents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Naming {
    /// `UPSTREAM__name` and `UPSTREAM+uri` (see `names`): any number of upstreams, no collisions.
    Prefixed,
    /// The one upstream's names unchanged. Only sound with a single upstream, which config enforces:
    /// with two, the same name could mean either.
    Passthrough { upstream: String },
}

impl Naming {
    fn split_name<'a>(&'a self, name: &'a str) -> Option<(&'a str, &'a str)> {
        match self {
            Naming::Prefixed => names::split_name(name),
            Naming::Passthrough { upstream } => (!name.is_empty()).then_some((upstream, name)),
        }
    }

    pub(crate) fn split_uri<'a>(&'a self, uri: &'a str) -> Option<(&'a str, &'a str)> {
        match self {
            Naming::Prefixed => names::split_uri(uri),
            Naming::Passthrough { upstream } => (!uri.is_empty()).then_some((upstream, uri)),
        }
    }

    /// The name an agent sees for `upstream`'s tool or prompt `name`.
    pub fn name(&self, upstream: &str, name: &str) -> String {
        match self {
            Naming::Prefixed => names::namespace_name(upstream, name),
            Naming::Passthrough { .. } => name.to_owned(),
        }
    }

    /// The URI an agent sees for `upstream`'s resource `uri`.
    pub fn uri(&self, upstream: &str, uri: &str) -> String {
        match self {
            Naming::Prefixed => names::namespace_uri(upstream, uri),
            Naming::Passthrough { .. } => uri.to_owned(),
        }
    }

    /// What the gateway tells agents about names, in `initialize` and `server/discover` results.
    pub fn instructions(&self) -> &'static str {
        match self {
            Naming::Prefixed => "Tools, prompts and resources from several upstream MCP servers; names are prefixed with their upstream's name and '__' (URIs with the name and '+').",
            Naming::Passthrough { .. } => "Tools, prompts and resources of one upstream MCP server, governed by the Portcullis gateway.",
        }
    }
}

/// What a request asks of the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// 2025-11-25 lifecycle: the gateway answers and opens a session.
    Initialize,
    Ping,
    /// 2026-07-28: the gateway describes itself.
    Discover,
    /// Fan out to every upstream and merge.
    List(ListKind),
    /// Forward to the upstream owning a namespaced tool or prompt name.
    ByName {
        upstream: String,
        name: String,
    },
    /// Forward to the upstream owning a namespaced resource URI.
    ByUri {
        upstream: String,
        uri: String,
    },
    /// Forward to every upstream (logging/setLevel); the gateway answers `{}`.
    Broadcast,
}

fn param_str<'a>(req: &'a Request, key: &str) -> Result<&'a str, DenyReason> {
    req.params
        .as_ref()
        .and_then(|p| p.get(key))
        .and_then(|v| v.as_str())
        .ok_or(DenyReason::InvalidParams)
}

/// Methods of the 2025-11-25 session lifecycle that 2026-07-28 removed: a stateless agent asking for one
/// gets `MethodNotFound` (HTTP 404), whatever its parameters.
pub fn removed_in_stateless(method: &str) -> bool {
    matches!(
        method,
        "initialize"
            | "ping"
            | "logging/setLevel"
            | "resources/subscribe"
            | "resources/unsubscribe"
    )
}

/// Decide where a request goes. Unknown methods are `MethodNotFound`.
pub fn route(req: &Request, naming: &Naming) -> Result<Route, DenyReason> {
    Ok(match req.method.as_str() {
        "initialize" => Route::Initialize,
        "ping" => Route::Ping,
        "server/discover" => Route::Discover,
        "tools/list" => Route::List(ListKind::Tools),
        "prompts/list" => Route::List(ListKind::Prompts),
        "resources/list" => Route::List(ListKind::Resources),
        "resources/templates/list" => Route::List(ListKind::ResourceTemplates),
        "tools/call" | "prompts/get" => {
            let (u, n) = naming
                .split_name(param_str(req, "name")?)
                .ok_or(DenyReason::ToolNotFound)?;
            Route::ByName {
                upstream: u.to_owned(),
                name: n.to_owned(),
            }
        }
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            let (u, n) = naming
                .split_uri(param_str(req, "uri")?)
                .ok_or(DenyReason::ToolNotFound)?;
            Route::ByUri {
                upstream: u.to_owned(),
                uri: n.to_owned(),
            }
        }
        "completion/complete" => {
            let r = req
                .params
                .as_ref()
                .and_then(|p| p.get("ref"))
                .ok_or(DenyReason::InvalidParams)?;
            match r.get("type").and_then(|t| t.as_str()) {
                Some("ref/prompt") => {
                    let n = r
                        .get("name")
                        .and_then(|v| v.as_str())
                        .ok_or(DenyReason::InvalidParams)?;
                    let (u, n) = naming.split_name(n).ok_or(DenyReason::ToolNotFound)?;
                    Route::ByName {
                        upstream: u.to_owned(),
                        name: n.to_owned(),
                    }
                }
                Some("ref/resource") => {
                    let n = r
                        .get("uri")
                        .and_then(|v| v.as_str())
                        .ok_or(DenyReason::InvalidParams)?;
                    let (u, n) = naming.split_uri(n).ok_or(DenyReason::ToolNotFound)?;
                    Route::ByUri {
                        upstream: u.to_owned(),
                        uri: n.to_owned(),
                    }
                }
                _ => return Err(DenyReason::InvalidParams),
            }
        }
        "logging/setLevel" => Route::Broadcast,
        _ => return Err(DenyReason::MethodNotFound),
    })
}

/// The request as the owning upstream must see it: its own name or URI restored.
pub fn rewrite_for_upstream(mut out: Request, route: &Route) -> Request {
    let method = std::mem::take(&mut out.method);
    let Some(params) = out.params.as_mut() else {
        out.method = method;
        return out;
    };
    strip_gateway_meta(params);
    match (method.as_str(), route) {
        ("completion/complete", Route::ByName { name, .. }) => {
            if let Some(r) = params.get_mut("ref") {
                r.insert("name", name.as_str()).ok();
            }
        }
        ("completion/complete", Route::ByUri { uri, .. }) => {
            if let Some(r) = params.get_mut("ref") {
                r.insert("uri", uri.as_str()).ok();
            }
        }
        (_, Route::ByName { name, .. }) => {
            params.insert("name", name.as_str()).ok();
        }
        (_, Route::ByUri { uri, .. }) => {
            params.insert("uri", uri.as_str()).ok();
        }
        _ => {}
    }
    out.method = method;
    out
}

/// The `_meta` key prefix the gateway owns (MCP reserves reverse-DNS prefixes for their owners).
pub const GATEWAY_META_PREFIX: &str = "dev.portcullis/";

/// Drop the `_meta` entries under the gateway's prefix: whatever an agent puts there is addressed to the
/// gateway, never to an upstream.
pub fn strip_gateway_meta(params: &mut Value) {
    if let Some(meta) = params.get_mut("_meta") {
        strip_gateway_keys(meta);
    }
}

/// The same on a `_meta` object itself.
pub fn strip_gateway_keys(meta: &mut Value) {
    if let Some(meta) = meta.as_object_mut() {
        meta.retain(|k, _| !k.starts_with(GATEWAY_META_PREFIX));
    }
}

/// Namespace the names in one upstream's list result and append them to `into`.
pub fn collect_list(
    naming: &Naming,
    kind: ListKind,
    upstream: &str,
    result: &Value,
    into: &mut Vec<Value>,
) {
    let Some(items) = result.get(kind.field()).and_then(|v| v.as_array()) else {
        return;
    };
    for item in items {
        let mut item = item.clone();
        let key = match kind {
            ListKind::Tools | ListKind::Prompts => "name",
            ListKind::Resources => "uri",
            ListKind::ResourceTemplates => "uriTemplate",
        };
        let Some(original) = item.get(key).and_then(|v| v.as_str()) else {
            continue;
        };
        let renamed = match kind {
            ListKind::Tools | ListKind::Prompts => naming.name(upstream, original),
            ListKind::Resources | ListKind::ResourceTemplates => naming.uri(upstream, original),
        };
        item.insert(key, renamed).ok();
        into.push(item);
    }
}

/// The merged list result.
pub fn list_result(kind: ListKind, items: Vec<Value>) -> Value {
    let mut o = simd_json::owned::Object::with_capacity(1);
    o.insert(kind.field().into(), Value::Array(Box::new(items)));
    Value::from(o)
}

/// Namespace resource URIs inside a `resources/read` result so they match what the agent listed.
pub fn rewrite_read_result(naming: &Naming, upstream: &str, result: &mut Value) {
    if let Some(contents) = result.get_mut("contents").and_then(|c| c.as_array_mut()) {
        for c in contents.iter_mut() {
            if let Some(uri) = c.get("uri").and_then(|u| u.as_str()).map(str::to_owned) {
                c.insert("uri", naming.uri(upstream, &uri)).ok();
            }
        }
    }
}

/// Namespace the name or URI in an upstream notification so the agent can act on it
/// (`notifications/resources/updated` names a URI).
pub fn rewrite_notification_params(
    naming: &Naming,
    method: &str,
    upstream: &str,
    params: &mut Value,
) {
    if method == "notifications/resources/updated" {
        if let Some(uri) = params
            .get("uri")
            .and_then(|u| u.as_str())
            .map(str::to_owned)
        {
            params.insert("uri", naming.uri(upstream, &uri)).ok();
        }
    }
}

/// Id under which an upstream's request to the agent (sampling, elicitation, roots) is sent to the agent.
/// Upstream names contain no `:`, so the first `:` splits; the type tag keeps numbers and strings apart.
pub fn map_upstream_request_id(upstream: &str, id: &Id) -> Id {
    Id::String(match id {
        Id::Number(n) => format!("{upstream}:n:{n}"),
        Id::String(s) => format!("{upstream}:s:{s}"),
    })
}

/// The upstream and original id behind an id made by `map_upstream_request_id`.
pub fn unmap_upstream_request_id(id: &Id) -> Option<(&str, Id)> {
    let Id::String(s) = id else { return None };
    let (upstream, rest) = s.split_once(':')?;
    let (tag, orig) = rest.split_once(':')?;
    let orig = match tag {
        "n" => Id::Number(orig.parse().ok()?),
        "s" => Id::String(orig.to_owned()),
        _ => return None,
    };
    Some((upstream, orig))
}

/// Capabilities the gateway announces: the union of what aggregation can offer.
pub fn gateway_capabilities() -> Value {
    let mut caps = simd_json::owned::Object::new();
    let flag = |pairs: &[(&str, bool)]| {
        let mut o = simd_json::owned::Object::new();
        for (k, v) in pairs {
            o.insert((*k).into(), Value::from(*v));
        }
        Value::from(o)
    };
    caps.insert("tools".into(), flag(&[("listChanged", true)]));
    caps.insert("prompts".into(), flag(&[("listChanged", true)]));
    caps.insert(
        "resources".into(),
        flag(&[("listChanged", true), ("subscribe", true)]),
    );
    caps.insert("logging".into(), flag(&[]));
    caps.insert("completions".into(), flag(&[]));
    Value::from(caps)
}

fn server_info(version: &str) -> Value {
    let mut info = simd_json::owned::Object::new();
    info.insert("name".into(), Value::from("portcullis"));
    info.insert("title".into(), Value::from("Portcullis MCP gateway"));
    info.insert("version".into(), Value::from(version));
    Value::from(info)
}

/// The revision the gateway answers an `initialize` with: the client's if the gateway speaks it as a
/// session revision, otherwise the gateway's own session revision (the client then decides).
pub fn negotiate_initialize(requested: Option<&str>) -> Revision {
    match requested.and_then(Revision::parse) {
        Some(r) if !r.is_stateless() => r,
        _ => Revision::V2025_11_25,
    }
}

/// The gateway's own `initialize` result.
pub fn initialize_result(naming: &Naming, revision: Revision, version: &str) -> Value {
    let mut o = simd_json::owned::Object::new();
    o.insert("protocolVersion".into(), Value::from(revision.as_str()));
    o.insert("capabilities".into(), gateway_capabilities());
    o.insert("serverInfo".into(), server_info(version));
    o.insert("instructions".into(), Value::from(naming.instructions()));
    Value::from(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::{self, Message, ParseLimits};

    fn req(body: &str) -> Request {
        let mut b = body.as_bytes().to_vec();
        match jsonrpc::parse(&mut b, &ParseLimits::default()).unwrap() {
            Message::Request(r) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn the_gateways_meta_never_goes_upstream() {
        let r = req(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"docs__read","arguments":{},"_meta":{"dev.portcullis/session":"s","progressToken":7}}}"#,
        );
        let rt = route(&r, &Naming::Prefixed).unwrap();
        let fwd = rewrite_for_upstream(r, &rt);
        let meta = fwd.params.as_ref().unwrap().get("_meta").unwrap();
        assert!(meta.get("dev.portcullis/session").is_none());
        assert_eq!(meta.get("progressToken").and_then(|v| v.as_i64()), Some(7));
    }

    #[test]
    fn routes() {
        let r = req(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"docs__read__x","arguments":{}}}"#,
        );
        let rt = route(&r, &Naming::Prefixed).unwrap();
        assert_eq!(
            rt,
            Route::ByName {
                upstream: "docs".into(),
                name: "read__x".into()
            }
        );
        let fwd = rewrite_for_upstream(r.clone(), &rt);
        assert_eq!(
            fwd.params.as_ref().unwrap().get("name").unwrap().as_str(),
            Some("read__x")
        );

        let r = req(
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"docs+file:///a"}}"#,
        );
        assert_eq!(
            route(&r, &Naming::Prefixed).unwrap(),
            Route::ByUri {
                upstream: "docs".into(),
                uri: "file:///a".into()
            }
        );
        let r = req(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"plain"}}"#);
        assert_eq!(route(&r, &Naming::Prefixed), Err(DenyReason::ToolNotFound));
        let r = req(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#);
        assert_eq!(route(&r, &Naming::Prefixed), Err(DenyReason::InvalidParams));
        let r = req(r#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#);
        assert_eq!(
            route(&r, &Naming::Prefixed),
            Err(DenyReason::MethodNotFound)
        );
        let r = req(
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"a__p"},"argument":{"name":"x","value":"y"}}}"#,
        );
        let rt = route(&r, &Naming::Prefixed).unwrap();
        let fwd = rewrite_for_upstream(r.clone(), &rt);
        assert_eq!(
            fwd.params
                .unwrap()
                .get("ref")
                .unwrap()
                .get("name")
                .unwrap()
                .as_str(),
            Some("p")
        );
    }

    #[test]
    fn lists_merge_with_namespaces() {
        let mut a =
            br#"{"tools":[{"name":"echo","inputSchema":{"type":"object"}}],"nextCursor":null}"#
                .to_vec();
        let mut b =
            br#"{"tools":[{"name":"echo","inputSchema":{"type":"object"}},{"nameless":1}]}"#
                .to_vec();
        let a = jsonrpc::parse_value(&mut a, &ParseLimits::default()).unwrap();
        let b = jsonrpc::parse_value(&mut b, &ParseLimits::default()).unwrap();
        let mut items = Vec::new();
        collect_list(&Naming::Prefixed, ListKind::Tools, "one", &a, &mut items);
        collect_list(&Naming::Prefixed, ListKind::Tools, "two", &b, &mut items);
        let names: Vec<&str> = items
            .iter()
            .filter_map(|t| t.get("name").and_then(|n| n.as_str()))
            .collect();
        assert_eq!(names, ["one__echo", "two__echo"]);
    }

    #[test]
    fn passthrough_keeps_names_and_routes_to_the_one_upstream() {
        let naming = Naming::Passthrough {
            upstream: "only".into(),
        };
        let r = req(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","arguments":{}}}"#,
        );
        let rt = route(&r, &naming).unwrap();
        assert_eq!(
            rt,
            Route::ByName {
                upstream: "only".into(),
                name: "a__b".into()
            }
        );
        let r = req(
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"x+file:///a"}}"#,
        );
        assert_eq!(
            route(&r, &naming).unwrap(),
            Route::ByUri {
                upstream: "only".into(),
                uri: "x+file:///a".into()
            }
        );
        let r = req(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":""}}"#);
        assert_eq!(route(&r, &naming), Err(DenyReason::ToolNotFound));

        let mut a = br#"{"resources":[{"uri":"file:///a","name":"a"}]}"#.to_vec();
        let a = jsonrpc::parse_value(&mut a, &ParseLimits::default()).unwrap();
        let mut items = Vec::new();
        collect_list(&naming, ListKind::Resources, "only", &a, &mut items);
        assert_eq!(items[0].get("uri").unwrap().as_str(), Some("file:///a"));
    }

    #[test]
    fn upstream_request_ids_round_trip() {
        for id in [
            Id::Number(-3),
            Id::String("a:b".into()),
            Id::String(String::new()),
        ] {
            let m = map_upstream_request_id("up-1", &id);
            assert_eq!(unmap_upstream_request_id(&m), Some(("up-1", id)));
        }
        assert_eq!(unmap_upstream_request_id(&Id::Number(1)), None);
        assert_eq!(unmap_upstream_request_id(&Id::String("x:q:1".into())), None);
    }
}
