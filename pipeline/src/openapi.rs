//! OpenAPI 3.0 and 3.1 documents turned into MCP tools: each operation read into one input JSON Schema
//! (path, query, header and cookie parameters, and the JSON request body), an output schema from its 2xx
//! JSON response, a stable tool name, and the plan a call follows to build its HTTP request
//! (`openapi::call`). Operations that cannot be converted say why, one by one; one odd operation never
//! fails the import. Only local `$ref`s are followed; schemas are kept self-contained with `$defs`, so
//! recursive ones need no expansion.
//!
//! Pure: the appliance fetches documents and sends requests.

pub mod call;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Largest document accepted, in bytes (a 1,000-operation document is a few MB).
pub const DOCUMENT_BYTES_MAX: usize = 16 << 20;
/// Deepest `$ref` chain followed through parameters, bodies and responses before it counts as a cycle.
const REF_DEPTH_MAX: usize = 32;
/// Longest tool name: MCP's 128 characters less the capability prefix (`names::UPSTREAM_NAME_BYTES_MAX`
/// and the `__` separator).
pub const TOOL_NAME_BYTES_MAX: usize = 128 - crate::names::UPSTREAM_NAME_BYTES_MAX - 2;

/// Why a document cannot be imported at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportError {
    TooLarge,
    /// Neither JSON nor YAML; the parser's message.
    Syntax(String),
    /// Parsed, but no `openapi` (or `swagger`) version field at the top.
    NotOpenApi,
    /// A Swagger 2.0 document.
    Swagger2,
    /// An `openapi` version other than 3.0.x or 3.1.x.
    Version(String),
    /// `paths` is missing or not an object.
    NoPaths,
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportError::TooLarge => write!(f, "document larger than {DOCUMENT_BYTES_MAX} bytes"),
            ImportError::Syntax(e) => write!(f, "neither JSON nor YAML: {e}"),
            ImportError::NotOpenApi => write!(f, "not an OpenAPI document (no `openapi` field)"),
            ImportError::Swagger2 => write!(
                f,
                "a Swagger 2.0 document: convert it to OpenAPI 3.x first (e.g. with swagger2openapi)"
            ),
            ImportError::Version(v) => {
                write!(f, "OpenAPI {v} is not supported (3.0.x and 3.1.x are)")
            }
            ImportError::NoPaths => write!(f, "the document has no `paths` object"),
        }
    }
}

impl std::error::Error for ImportError {}

/// The two schema dialects: 3.0's extended subset of JSON Schema draft 4 (`nullable`, boolean
/// `exclusiveMinimum`), and 3.1's JSON Schema 2020-12.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dialect {
    #[serde(rename = "3.0")]
    V30,
    #[serde(rename = "3.1")]
    V31,
}

/// Where a parameter goes.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    Path,
    Query,
    Header,
    Cookie,
}

/// One parameter of a call plan: which argument feeds it and how it is serialised.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct ParamPlan {
    /// The parameter's name on the wire.
    pub name: String,
    /// The argument (top-level property of the input schema) that holds its value.
    pub argument: String,
    #[serde(rename = "in")]
    pub location: Location,
    pub required: bool,
    /// Query arrays and objects: repeat the name per item (`true`, the default) or join with commas.
    pub explode: bool,
}

/// How a call of a converted tool becomes an HTTP request (`call::build`).
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct CallPlan {
    pub method: String,
    /// The path template, relative to the capability's base URL (`/users/{id}`).
    pub path: String,
    pub params: Vec<ParamPlan>,
    /// The argument holding the JSON request body, if the operation takes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default)]
    pub body_required: bool,
    /// How a 2xx JSON response becomes `structuredContent`; `None` where the operation describes no JSON
    /// response (the result is text only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<call::Structured>,
    /// How the operation's security scheme (its own `security`, else the document's) says a credential
    /// travels; a capability binding without `inject` uses it. `None`: no scheme the gateway can fill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<crate::credential::Inject>,
}

/// One operation as converted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Converted {
    pub input_schema: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    pub plan: CallPlan,
}

/// One operation of the document, converted or with the reason it could not be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// Upper case: `GET`, `POST`, …
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub deprecated: bool,
    /// The tool name it becomes: from `operationId` (else method and path), sanitised, unique in the
    /// document.
    pub tool_name: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Converted, or why not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Converted(Box<Converted>),
    Unconvertible(String),
}

impl Operation {
    pub fn converted(&self) -> Option<&Converted> {
        match &self.outcome {
            Outcome::Converted(c) => Some(c),
            Outcome::Unconvertible(_) => None,
        }
    }

    /// Reads only: what may be selected by tag or wildcard. Anything else must be named.
    pub fn is_safe_method(&self) -> bool {
        matches!(self.method.as_str(), "GET" | "HEAD")
    }

    /// The description its tool carries: the summary, then the description.
    pub fn tool_description(&self) -> String {
        match (self.summary.trim(), self.description.trim()) {
            ("", d) => d.to_owned(),
            (s, "") => s.to_owned(),
            (s, d) if d.starts_with(s) => d.to_owned(),
            (s, d) => format!("{s}\n\n{d}"),
        }
    }
}

/// An imported document: its dialect, servers (variables substituted by their defaults), and every
/// operation in path order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub dialect: Dialect,
    pub title: String,
    pub version: String,
    pub servers: Vec<String>,
    pub operations: Vec<Operation>,
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Parse and convert a document (JSON or YAML).
pub fn import(bytes: &[u8]) -> Result<Document, ImportError> {
    if bytes.len() > DOCUMENT_BYTES_MAX {
        return Err(ImportError::TooLarge);
    }
    let doc: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(json_err) => {
            let text =
                std::str::from_utf8(bytes).map_err(|_| ImportError::Syntax("not UTF-8".into()))?;
            // JSON is YAML, so a JSON document with a syntax error reports the JSON parser's message.
            let trimmed = text.trim_start();
            if trimmed.starts_with('{') || trimmed.starts_with('[') {
                return Err(ImportError::Syntax(json_err.to_string()));
            }
            serde_yaml::from_str(text).map_err(|e| ImportError::Syntax(e.to_string()))?
        }
    };
    convert(&doc)
}

/// Convert a parsed document.
pub fn convert(doc: &Value) -> Result<Document, ImportError> {
    let obj = doc.as_object().ok_or(ImportError::NotOpenApi)?;
    if obj.contains_key("swagger") {
        return Err(ImportError::Swagger2);
    }
    let version = match obj.get("openapi") {
        Some(Value::String(v)) => v.clone(),
        Some(other) => other.to_string(),
        None => return Err(ImportError::NotOpenApi),
    };
    let dialect = if version.starts_with("3.0.") || version == "3.0" {
        Dialect::V30
    } else if version.starts_with("3.1.") || version == "3.1" {
        Dialect::V31
    } else {
        return Err(ImportError::Version(version));
    };
    let paths = obj
        .get("paths")
        .and_then(Value::as_object)
        .ok_or(ImportError::NoPaths)?;
    let info = obj.get("info");
    let text_of = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    let cx = Cx { doc, dialect };

    let mut operations = Vec::new();
    let mut paths_sorted: Vec<(&String, &Value)> = paths.iter().collect();
    paths_sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (path, item) in paths_sorted {
        let item = match cx.deref(item, 0) {
            Ok(i) => i,
            Err(e) => {
                operations.push(broken(path, "*", e));
                continue;
            }
        };
        let Some(item) = item.as_object() else {
            continue;
        };
        let shared_params = item.get("parameters");
        for method in METHODS {
            let Some(op) = item.get(method) else {
                continue;
            };
            operations.push(cx.operation(path, method, op, shared_params));
        }
    }
    name_tools(&mut operations);
    Ok(Document {
        dialect,
        title: text_of(info.and_then(|i| i.get("title"))),
        version: text_of(info.and_then(|i| i.get("version"))),
        servers: servers(obj.get("servers")),
        operations,
    })
}

fn broken(path: &str, method: &str, why: String) -> Operation {
    Operation {
        method: method.to_uppercase(),
        path: path.to_owned(),
        operation_id: None,
        summary: String::new(),
        description: String::new(),
        tags: Vec::new(),
        deprecated: false,
        tool_name: String::new(),
        outcome: Outcome::Unconvertible(why),
    }
}

/// Server URLs with their variables set to their defaults.
fn servers(v: Option<&Value>) -> Vec<String> {
    let Some(list) = v.and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|s| {
            let mut url = s.get("url")?.as_str()?.to_owned();
            if let Some(vars) = s.get("variables").and_then(Value::as_object) {
                for (name, var) in vars {
                    let default = var.get("default").and_then(Value::as_str).unwrap_or("");
                    url = url.replace(&format!("{{{name}}}"), default);
                }
            }
            Some(url)
        })
        .collect()
}

/// The document being converted.
struct Cx<'a> {
    doc: &'a Value,
    dialect: Dialect,
}

/// The schemas a tool's schema names, collected into its `$defs`.
#[derive(Default)]
struct Defs {
    /// Component name → its converted schema (`None` while being converted: a cycle).
    done: BTreeMap<String, Option<Value>>,
    problem: Option<String>,
}

impl Cx<'_> {
    /// Follow `$ref`s (local only) until a non-reference object.
    fn deref<'v>(&'v self, v: &'v Value, depth: usize) -> Result<&'v Value, String> {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            return Ok(v);
        };
        if depth >= REF_DEPTH_MAX {
            return Err(format!("`$ref` {r} goes round in a cycle"));
        }
        let target = self.pointer(r)?;
        self.deref(target, depth + 1)
    }

    fn pointer(&self, r: &str) -> Result<&Value, String> {
        let Some(p) = r.strip_prefix('#') else {
            return Err(format!(
                "external `$ref` {r}: only references inside the document are followed"
            ));
        };
        self.doc
            .pointer(p)
            .ok_or_else(|| format!("`$ref` {r} names nothing in the document"))
    }

    fn operation(&self, path: &str, method: &str, op: &Value, shared: Option<&Value>) -> Operation {
        let text = |k: &str| {
            op.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let mut o = Operation {
            method: method.to_uppercase(),
            path: path.to_owned(),
            operation_id: op
                .get("operationId")
                .and_then(Value::as_str)
                .map(str::to_owned),
            summary: text("summary"),
            description: text("description"),
            tags: op
                .get("tags")
                .and_then(Value::as_array)
                .map(|t| {
                    t.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            deprecated: op.get("deprecated").and_then(Value::as_bool) == Some(true),
            tool_name: String::new(),
            outcome: Outcome::Unconvertible(String::new()),
        };
        o.outcome = match self.convert_operation(path, method, op, shared) {
            Ok(c) => Outcome::Converted(Box::new(c)),
            Err(why) => Outcome::Unconvertible(why),
        };
        o
    }

    fn convert_operation(
        &self,
        path: &str,
        method: &str,
        op: &Value,
        shared: Option<&Value>,
    ) -> Result<Converted, String> {
        // Operation-level parameters override path-level ones of the same name and location.
        let mut params: Vec<(String, Location, &Value)> = Vec::new();
        for list in [shared, op.get("parameters")].into_iter().flatten() {
            let list = list.as_array().ok_or("`parameters` is not a list")?;
            for p in list {
                let p = self.deref(p, 0)?;
                let name = p
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or("a parameter without a name")?;
                let location = match p.get("in").and_then(Value::as_str) {
                    Some("path") => Location::Path,
                    Some("query") => Location::Query,
                    Some("header") => Location::Header,
                    Some("cookie") => Location::Cookie,
                    other => {
                        return Err(format!(
                            "parameter `{name}` is in {}, which OpenAPI 3 does not have",
                            other.unwrap_or("no location")
                        ))
                    }
                };
                params.retain(|(n, l, _)| !(n == name && *l == location));
                params.push((name.to_owned(), location, p));
            }
        }
        // Path template variables must all be parameters.
        for var in template_vars(path)? {
            if !params
                .iter()
                .any(|(n, l, _)| *l == Location::Path && *n == var)
            {
                return Err(format!("path variable `{{{var}}}` has no path parameter"));
            }
        }

        let mut defs = Defs::default();
        let mut properties = Map::new();
        let mut required = Vec::new();
        let mut plans = Vec::new();
        let mut taken: BTreeSet<String> = BTreeSet::new();
        let names: HashMap<&str, usize> = params.iter().fold(HashMap::new(), |mut m, (n, _, _)| {
            *m.entry(n.as_str()).or_insert(0) += 1;
            m
        });
        for (name, location, p) in &params {
            // The spec says these three header parameters are ignored: the transport owns them.
            if *location == Location::Header
                && ["accept", "content-type", "authorization"]
                    .contains(&name.to_lowercase().as_str())
            {
                continue;
            }
            let style = p.get("style").and_then(Value::as_str);
            let default_style = match location {
                Location::Path | Location::Header => "simple",
                Location::Query | Location::Cookie => "form",
            };
            if style.is_some_and(|s| s != default_style) {
                return Err(format!(
                    "parameter `{name}` uses style {}, which is not converted (only {default_style})",
                    style.unwrap_or_default()
                ));
            }
            let schema = match (p.get("schema"), p.get("content")) {
                (Some(s), _) => s,
                (None, Some(_)) => {
                    return Err(format!(
                        "parameter `{name}` is described by `content`, which is not converted"
                    ))
                }
                (None, None) => return Err(format!("parameter `{name}` has no schema")),
            };
            let mut schema = self.schema(schema, &mut defs);
            if let Some(d) = p.get("description").and_then(Value::as_str) {
                if let Some(obj) = schema.as_object_mut() {
                    obj.entry("description").or_insert_with(|| d.into());
                }
            }
            let argument = if names.get(name.as_str()).copied().unwrap_or(0) > 1 {
                format!("{}_{name}", location_word(*location))
            } else {
                name.clone()
            };
            if !taken.insert(argument.clone()) {
                return Err(format!("parameter `{name}` collides with another argument"));
            }
            let is_required = *location == Location::Path
                || p.get("required").and_then(Value::as_bool) == Some(true);
            if is_required {
                required.push(Value::String(argument.clone()));
            }
            properties.insert(argument.clone(), schema);
            plans.push(ParamPlan {
                name: name.clone(),
                argument,
                location: *location,
                required: is_required,
                explode: p
                    .get("explode")
                    .and_then(Value::as_bool)
                    .unwrap_or(default_style == "form"),
            });
        }

        let mut body = None;
        let mut body_required = false;
        if let Some(rb) = op.get("requestBody") {
            let rb = self.deref(rb, 0)?;
            let content = rb
                .get("content")
                .and_then(Value::as_object)
                .ok_or("the request body has no `content`")?;
            let json = content
                .iter()
                .find(|(ct, _)| is_json(ct))
                .map(|(_, m)| m)
                .ok_or_else(|| {
                    format!(
                        "the request body is {} only; only JSON bodies are converted",
                        content.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                })?;
            let schema = json
                .get("schema")
                .map_or_else(|| json!({}), |s| self.schema(s, &mut defs));
            let arg = ["body", "request_body", "_body"]
                .into_iter()
                .find(|a| !taken.contains(*a))
                .ok_or("no argument name is free for the request body")?;
            body_required = rb.get("required").and_then(Value::as_bool) == Some(true);
            if body_required {
                required.push(Value::String(arg.to_owned()));
            }
            properties.insert(arg.to_owned(), schema);
            body = Some(arg.to_owned());
        }

        let mut output = None;
        if let Some(responses) = op.get("responses").and_then(Value::as_object) {
            // The lowest 2xx code described with JSON, else the 2XX range, else `default`.
            let mut codes: Vec<&String> = responses
                .keys()
                .filter(|c| c.starts_with('2') && c.len() == 3)
                .collect();
            codes.sort();
            let pick = codes
                .into_iter()
                .chain(responses.keys().filter(|c| c.as_str() == "2XX"))
                .find_map(|c| {
                    let r = self.deref(&responses[c], 0).ok()?;
                    let content = r.get("content")?.as_object()?;
                    content.iter().find(|(ct, _)| is_json(ct)).map(|(_, m)| m)
                });
            if let Some(schema) = pick.and_then(|m| m.get("schema")) {
                // Its own `$defs`: the output schema stands alone.
                let mut out_defs = Defs::default();
                let mut s = self.schema(schema, &mut out_defs);
                if out_defs.problem.is_none() {
                    let d = out_defs.into_map();
                    if !d.is_empty() {
                        s = match s {
                            Value::Object(mut o) => {
                                o.insert("$defs".into(), Value::Object(d));
                                Value::Object(o)
                            }
                            // A boolean schema refers to nothing.
                            other => other,
                        };
                    }
                    output = Some(s);
                }
            }
        }
        if let Some(p) = defs.problem.take() {
            return Err(p);
        }

        let mut input = Map::new();
        input.insert("type".into(), "object".into());
        input.insert("properties".into(), Value::Object(properties));
        if !required.is_empty() {
            input.insert("required".into(), Value::Array(required));
        }
        input.insert("additionalProperties".into(), false.into());
        let defs_obj = defs.into_map();
        if !defs_obj.is_empty() {
            input.insert("$defs".into(), Value::Object(defs_obj));
        }
        let structured = output.as_ref().map(call::structured);
        Ok(Converted {
            input_schema: Value::Object(input),
            output_schema: output,
            plan: CallPlan {
                method: method.to_uppercase(),
                path: path.to_owned(),
                params: plans,
                body,
                body_required,
                structured,
                security: self.security(op),
            },
        })
    }

    /// The injection the first satisfiable security requirement names: an `apiKey` in a header, query or
    /// cookie, HTTP `bearer`, or OAuth 2.0 / OpenID Connect (bearer tokens). HTTP `basic` needs a username
    /// the document does not give, and mutual TLS is not an injected credential: those, like no
    /// requirement, give `None`.
    fn security(&self, op: &Value) -> Option<crate::credential::Inject> {
        use crate::credential::Inject;
        let reqs = op
            .get("security")
            .or_else(|| self.doc.get("security"))?
            .as_array()?;
        let schemes = self.doc.pointer("/components/securitySchemes")?;
        for req in reqs.iter().filter_map(Value::as_object) {
            for name in req.keys() {
                let Some(scheme) = schemes.get(name).and_then(|s| self.deref(s, 0).ok()) else {
                    continue;
                };
                let field = |k: &str| scheme.get(k).and_then(Value::as_str).unwrap_or_default();
                let inject = match field("type") {
                    "apiKey" => {
                        let name = field("name").to_owned();
                        match field("in") {
                            "header" => Inject::Header {
                                name,
                                prefix: String::new(),
                            },
                            "query" => Inject::Query { name },
                            "cookie" => Inject::Cookie { name },
                            _ => continue,
                        }
                    }
                    "http" if field("scheme").eq_ignore_ascii_case("bearer") => Inject::Bearer,
                    "oauth2" | "openIdConnect" => Inject::Bearer,
                    _ => continue,
                };
                return Some(inject);
            }
        }
        None
    }

    /// An OpenAPI schema as self-contained JSON Schema 2020-12: component references become `$defs`
    /// entries, 3.0's dialect is translated.
    fn schema(&self, s: &Value, defs: &mut Defs) -> Value {
        match s {
            Value::Object(obj) => {
                if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
                    return self.reference(r, defs);
                }
                let mut out = Map::new();
                for (k, v) in obj {
                    let v = match k.as_str() {
                        // Keywords whose values are schemas, lists of schemas or maps of them.
                        "items"
                        | "not"
                        | "additionalProperties"
                        | "contains"
                        | "if"
                        | "then"
                        | "else"
                        | "propertyNames"
                        | "unevaluatedItems"
                        | "unevaluatedProperties" => self.schema(v, defs),
                        "allOf" | "anyOf" | "oneOf" | "prefixItems" => match v {
                            Value::Array(a) => {
                                Value::Array(a.iter().map(|s| self.schema(s, defs)).collect())
                            }
                            other => other.clone(),
                        },
                        "properties" | "patternProperties" | "$defs" | "dependentSchemas" => {
                            match v {
                                Value::Object(m) => Value::Object(
                                    m.iter()
                                        .map(|(n, s)| (n.clone(), self.schema(s, defs)))
                                        .collect(),
                                ),
                                other => other.clone(),
                            }
                        }
                        // OpenAPI-only annotations with no meaning to a validator.
                        "discriminator" | "xml" | "externalDocs" | "example" | "nullable" => {
                            continue
                        }
                        _ => v.clone(),
                    };
                    out.insert(k.clone(), v);
                }
                if self.dialect == Dialect::V30 {
                    translate_30(obj, &mut out);
                }
                Value::Object(out)
            }
            other => other.clone(),
        }
    }

    fn reference(&self, r: &str, defs: &mut Defs) -> Value {
        let Some(name) = r.strip_prefix("#/components/schemas/") else {
            // Some other local pointer: inline it (guarded against cycles by depth).
            return match self.deref(&json!({"$ref": r}), 0) {
                Ok(target) if defs.done.len() < 10_000 => self.schema(target, defs),
                Ok(_) => json!({}),
                Err(e) => {
                    defs.problem.get_or_insert(e);
                    json!({})
                }
            };
        };
        let key = name.replace("~1", "/").replace("~0", "~");
        let def_name = sanitize_def(&key);
        let reference = json!({ "$ref": format!("#/$defs/{def_name}") });
        if defs.done.contains_key(&def_name) {
            // Already converted, or being converted further up: a recursive schema refers to itself.
            return reference;
        }
        defs.done.insert(def_name.clone(), None);
        let converted = match self.pointer(r) {
            Ok(target) => self.schema(target, defs),
            Err(e) => {
                defs.problem.get_or_insert(e);
                json!({})
            }
        };
        defs.done.insert(def_name, Some(converted));
        reference
    }
}

impl Defs {
    fn into_map(self) -> Map<String, Value> {
        self.done
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    }
}

/// 3.0 → 2020-12: `nullable` widens `type` (and an `enum`), and boolean `exclusiveMinimum`/
/// `exclusiveMaximum` become the numeric forms.
fn translate_30(src: &Map<String, Value>, out: &mut Map<String, Value>) {
    if src.get("nullable").and_then(Value::as_bool) == Some(true) {
        match out.get_mut("type") {
            Some(Value::String(t)) => {
                let t = t.clone();
                out.insert("type".into(), json!([t, "null"]));
            }
            Some(_) => {}
            None => {}
        }
        if let Some(Value::Array(e)) = out.get_mut("enum") {
            if !e.contains(&Value::Null) {
                e.push(Value::Null);
            }
        }
    }
    for (flag, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        match src.get(flag) {
            Some(Value::Bool(true)) => {
                if let Some(b) = out.remove(bound) {
                    out.insert(flag.into(), b);
                } else {
                    out.remove(flag);
                }
            }
            Some(Value::Bool(false)) => {
                out.remove(flag);
            }
            _ => {}
        }
    }
}

fn is_json(content_type: &str) -> bool {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    ct == "application/json" || (ct.starts_with("application/") && ct.ends_with("+json"))
}

fn location_word(l: Location) -> &'static str {
    match l {
        Location::Path => "path",
        Location::Query => "query",
        Location::Header => "header",
        Location::Cookie => "cookie",
    }
}

/// The `{name}` variables of a path template.
pub fn template_vars(path: &str) -> Result<Vec<String>, String> {
    let mut vars = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("path {path} has an unclosed `{{`"))?;
        let name = &after[..close];
        if name.is_empty() || name.contains('{') {
            return Err(format!("path {path} has a malformed variable"));
        }
        vars.push(name.to_owned());
        rest = &after[close + 1..];
    }
    Ok(vars)
}

fn sanitize_def(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A tool name from free text: `[A-Za-z0-9_.-]`, no leading/trailing `_`, at most
/// `TOOL_NAME_BYTES_MAX` bytes.
fn sanitize_tool(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
            c
        } else {
            '_'
        };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    let mut out = out.trim_matches('_').to_owned();
    out.truncate(TOOL_NAME_BYTES_MAX);
    if out.is_empty() {
        out.push_str("operation");
    }
    out
}

/// Name every operation's tool: its sanitised `operationId`, else `method_path`. Names that would
/// collide get `_2`, `_3`, … in path and method order, so a name depends only on the document.
fn name_tools(ops: &mut [Operation]) {
    let mut used: HashMap<String, usize> = HashMap::new();
    for op in ops.iter_mut() {
        let base = match &op.operation_id {
            Some(id) if !id.trim().is_empty() => sanitize_tool(id),
            _ => sanitize_tool(&format!(
                "{}_{}",
                op.method.to_lowercase(),
                op.path.replace(['{', '}'], "")
            )),
        };
        let n = used.entry(base.clone()).or_insert(0);
        *n += 1;
        op.tool_name = if *n == 1 {
            base
        } else {
            let suffix = format!("_{n}");
            let mut b = base;
            b.truncate(TOOL_NAME_BYTES_MAX - suffix.len());
            b + &suffix
        };
    }
    // A suffixed name may equal another operation's own name (`a_2` next to `a` twice): rename again.
    let mut seen = BTreeSet::new();
    for op in ops.iter_mut() {
        let mut name = op.tool_name.clone();
        let mut k = 2;
        while !seen.insert(name.clone()) {
            name = format!("{}_{k}", op.tool_name);
            k += 1;
        }
        op.tool_name = name;
    }
}

/// How operations are chosen: by `operationId` or tool name, by tag, or by `METHOD /path`. Tags and
/// wildcards (`*`) pick only safe methods (GET, HEAD); anything that writes must be named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Name(String),
    Tag(String),
    Route { method: String, path: String },
    AllSafe,
}

impl Selector {
    /// `tag:NAME`, `METHOD /path`, `*`, or an operationId / tool name.
    pub fn parse(s: &str) -> Selector {
        let s = s.trim();
        if s == "*" {
            return Selector::AllSafe;
        }
        if let Some(t) = s.strip_prefix("tag:") {
            return Selector::Tag(t.to_owned());
        }
        if let Some((m, p)) = s.split_once(' ') {
            if p.trim_start().starts_with('/') && m.chars().all(|c| c.is_ascii_alphabetic()) {
                return Selector::Route {
                    method: m.to_uppercase(),
                    path: p.trim().to_owned(),
                };
            }
        }
        Selector::Name(s.to_owned())
    }

    fn picks(&self, op: &Operation) -> bool {
        match self {
            Selector::Name(n) => op.operation_id.as_deref() == Some(n) || op.tool_name == *n,
            Selector::Route { method, path } => op.method == *method && op.path == *path,
            Selector::Tag(t) => op.is_safe_method() && op.tags.iter().any(|x| x == t),
            Selector::AllSafe => op.is_safe_method(),
        }
    }
}

/// Why a selection is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectError {
    /// A selector that picks nothing.
    NoMatch(String),
    /// A named operation that cannot be converted, with the reason.
    Unconvertible { operation: String, why: String },
}

impl std::fmt::Display for SelectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SelectError::NoMatch(s) => write!(f, "`{s}` selects no operation"),
            SelectError::Unconvertible { operation, why } => {
                write!(f, "operation {operation} cannot be converted: {why}")
            }
        }
    }
}

impl std::error::Error for SelectError {}

/// The operations `selectors` pick, in document order; each selector must pick something, and an
/// operation named outright must be convertible (ones picked by tag or wildcard that are not are left
/// out; `Document::operations` says why).
pub fn select<'d>(
    doc: &'d Document,
    selectors: &[Selector],
) -> Result<Vec<&'d Operation>, SelectError> {
    let mut chosen = vec![false; doc.operations.len()];
    for sel in selectors {
        let mut any = false;
        for (i, op) in doc.operations.iter().enumerate() {
            if !sel.picks(op) {
                continue;
            }
            any = true;
            match (&op.outcome, sel) {
                (Outcome::Converted(_), _) => chosen[i] = true,
                (Outcome::Unconvertible(why), Selector::Name(_) | Selector::Route { .. }) => {
                    return Err(SelectError::Unconvertible {
                        operation: format!("{} {}", op.method, op.path),
                        why: why.clone(),
                    })
                }
                (Outcome::Unconvertible(_), _) => {}
            }
        }
        if !any {
            let shown = match sel {
                Selector::Name(n) => n.clone(),
                Selector::Tag(t) => format!("tag:{t}"),
                Selector::Route { method, path } => format!("{method} {path}"),
                Selector::AllSafe => "*".into(),
            };
            return Err(SelectError::NoMatch(shown));
        }
    }
    Ok(doc
        .operations
        .iter()
        .zip(chosen)
        .filter_map(|(op, c)| c.then_some(op))
        .collect())
}

/// The MCP tool definition of a converted operation, as an upstream's `tools/list` would give it.
pub fn tool_definition(op: &Operation) -> Option<Value> {
    let c = op.converted()?;
    let mut t = json!({
        "name": op.tool_name,
        "description": op.tool_description(),
        "inputSchema": c.input_schema,
        "annotations": {
            "readOnlyHint": op.is_safe_method(),
            "destructiveHint": op.method == "DELETE",
            "idempotentHint": matches!(op.method.as_str(), "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS"),
            "openWorldHint": true
        }
    });
    if !op.summary.is_empty() {
        t["title"] = op.summary.clone().into();
    }
    if let Some(out) = &c.output_schema {
        t["outputSchema"] = call::output_schema(out);
    }
    Some(t)
}

/// The tools approval pins for an `openapi` capability: the operations `select` picks, converted, each
/// with its call plan.
pub fn pin(
    capability: &str,
    doc: &Document,
    select_specs: &[String],
) -> Result<Vec<crate::control::PinnedTool>, SelectError> {
    let selectors: Vec<Selector> = select_specs.iter().map(|s| Selector::parse(s)).collect();
    let mut tools = Vec::new();
    for op in select(doc, &selectors)? {
        let (Some(def), Some(c)) = (tool_definition(op), op.converted()) else {
            continue;
        };
        // `tool_definition` gives a well-formed MCP tool, so reading it back cannot fail.
        if let Ok(mut t) = crate::control::PinnedTool::from_listed(capability, &def) {
            t.call = Some(c.plan.clone());
            tools.push(t);
        }
    }
    Ok(tools)
}

/// What a re-import changes, by operation (`METHOD /path`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OperationsDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl OperationsDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compare two imports of a document operation by operation.
pub fn diff(old: &Document, new: &Document) -> OperationsDiff {
    let key = |o: &Operation| format!("{} {}", o.method, o.path);
    let old_ops: BTreeMap<String, &Operation> =
        old.operations.iter().map(|o| (key(o), o)).collect();
    let new_ops: BTreeMap<String, &Operation> =
        new.operations.iter().map(|o| (key(o), o)).collect();
    let mut d = OperationsDiff::default();
    for (k, o) in &new_ops {
        match old_ops.get(k) {
            None => d.added.push(k.clone()),
            Some(prev) if prev != o => d.changed.push(k.clone()),
            Some(_) => {}
        }
    }
    d.removed = old_ops
        .keys()
        .filter(|k| !new_ops.contains_key(*k))
        .cloned()
        .collect();
    d
}
