#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};

use super::call::{self, CallError};
use super::{import, select, tool_definition, Dialect, ImportError, Location, Outcome, Selector};

/// A hand-written 3.0 document (YAML) with what 3.0 documents do: components, a recursive schema,
/// `nullable`, boolean `exclusiveMinimum`, path-level parameters, server variables, and operations that
/// cannot be converted.
const PETS_30: &str = r##"
openapi: 3.0.3
info: {title: Pets, version: "1.2"}
servers:
  - url: https://{region}.pets.example/v1
    variables:
      region: {default: eu, enum: [eu, us]}
paths:
  /pets:
    get:
      operationId: listPets
      summary: List pets
      tags: [pets]
      parameters:
        - {name: limit, in: query, schema: {type: integer, minimum: 0, exclusiveMinimum: true, maximum: 100}}
        - {name: tags, in: query, explode: false, schema: {type: array, items: {type: string}}}
        - {$ref: "#/components/parameters/Trace"}
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: {type: array, items: {$ref: "#/components/schemas/Pet"}}
    post:
      operationId: createPet
      summary: Create a pet
      tags: [pets]
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Pet"}
      responses:
        "201":
          description: created
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Pet"}
  /pets/{id}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: string}}
    get:
      operationId: get pet/by id!
      tags: [pets]
      parameters:
        - {name: id, in: query, schema: {type: boolean}, description: "shadowing: a query id"}
        - {name: session, in: cookie, schema: {type: string}}
      responses:
        "200": {description: ok, content: {application/json: {schema: {$ref: "#/components/schemas/Pet"}}}}
    delete:
      operationId: deletePet
      responses:
        "204": {description: gone}
  /pets/{id}/photo:
    put:
      operationId: uploadPhoto
      parameters:
        - {name: id, in: path, required: true, schema: {type: string}}
      requestBody:
        content:
          multipart/form-data:
            schema: {type: object}
      responses:
        "200": {description: ok}
  /broken/{thing}:
    get:
      operationId: broken
      responses: {"200": {description: ok}}
  /external:
    get:
      parameters:
        - {$ref: "other.yaml#/components/parameters/X"}
      responses: {"200": {description: ok}}
components:
  parameters:
    Trace: {name: X-Trace, in: header, schema: {type: string}}
  schemas:
    Pet:
      type: object
      required: [name]
      properties:
        name: {type: string, example: Rex}
        owner_email: {type: string, nullable: true}
        kind: {type: string, enum: [cat, dog], nullable: true}
        parent: {$ref: "#/components/schemas/Pet"}
        friends: {type: array, items: {$ref: "#/components/schemas/Pet"}}
"##;

fn op<'d>(doc: &'d super::Document, name: &str) -> &'d super::Operation {
    doc.operations
        .iter()
        .find(|o| o.tool_name == name)
        .unwrap_or_else(|| panic!("no {name}: {:?}", names(doc)))
}

fn names(doc: &super::Document) -> Vec<&str> {
    doc.operations
        .iter()
        .map(|o| o.tool_name.as_str())
        .collect()
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::validator_for(schema).unwrap_or_else(|e| panic!("{e}: {schema:#}"))
}

#[test]
fn a_30_document_converts_operation_by_operation() {
    let doc = import(PETS_30.as_bytes()).unwrap();
    assert_eq!(doc.dialect, Dialect::V30);
    assert_eq!(doc.title, "Pets");
    assert_eq!(doc.servers, ["https://eu.pets.example/v1"]);
    assert_eq!(
        names(&doc),
        [
            "broken",
            "get_external",
            "listPets",
            "createPet",
            "get_pet_by_id",
            "deletePet",
            "uploadPhoto"
        ]
    );

    // What cannot be converted says why, and the rest still converts.
    let why = |name: &str| match &op(&doc, name).outcome {
        Outcome::Unconvertible(w) => w.clone(),
        Outcome::Converted(_) => panic!("{name} converted"),
    };
    assert!(
        why("uploadPhoto").contains("multipart/form-data"),
        "{}",
        why("uploadPhoto")
    );
    assert!(why("broken").contains("{thing}"), "{}", why("broken"));
    assert!(
        why("get_external").contains("external"),
        "{}",
        why("get_external")
    );

    // listPets: query parameters, a referenced header parameter, 3.0's boolean exclusiveMinimum.
    let list = op(&doc, "listPets").converted().unwrap();
    let v = validator(&list.input_schema);
    assert!(v.is_valid(&json!({"limit": 1, "tags": ["a"], "X-Trace": "t"})));
    assert!(!v.is_valid(&json!({"limit": 0})), "0 is excluded");
    assert!(!v.is_valid(&json!({"limit": 101})));
    assert!(
        !v.is_valid(&json!({"other": 1})),
        "unknown arguments refused"
    );
    assert_eq!(list.plan.params.len(), 3);
    assert!(!list.plan.params[1].explode);

    // createPet: the body under `body`, a recursive schema kept as `$defs`, `nullable` translated.
    let create = op(&doc, "createPet").converted().unwrap();
    assert_eq!(create.plan.body.as_deref(), Some("body"));
    assert!(create.plan.body_required);
    assert_eq!(create.input_schema["required"], json!(["body"]));
    let v = validator(&create.input_schema);
    let pet = json!({"name": "Rex", "owner_email": null, "kind": null,
        "parent": {"name": "Old Rex", "friends": [{"name": "Tom", "kind": "cat"}]}});
    assert!(v.is_valid(&json!({ "body": pet })));
    assert!(
        !v.is_valid(&json!({"body": {"name": "Rex", "parent": {"kind": "cat"}}})),
        "nested name required"
    );
    assert!(!v.is_valid(&json!({"body": {"name": "Rex", "kind": "cow"}})));
    assert!(!v.is_valid(&json!({})), "the body is required");
    let defs = &create.input_schema["$defs"]["Pet"];
    assert!(defs["properties"]["name"].get("example").is_none());
    assert_eq!(
        defs["properties"]["owner_email"]["type"],
        json!(["string", "null"])
    );

    // get pet: path-level `id` and an operation's query `id` both kept, under distinct arguments.
    let get = op(&doc, "get_pet_by_id").converted().unwrap();
    let args: Vec<(&str, Location)> = get
        .plan
        .params
        .iter()
        .map(|p| (p.argument.as_str(), p.location))
        .collect();
    assert_eq!(
        args,
        [
            ("path_id", Location::Path),
            ("query_id", Location::Query),
            ("session", Location::Cookie)
        ]
    );
    assert_eq!(get.input_schema["required"], json!(["path_id"]));
    assert_eq!(
        get.input_schema["properties"]["query_id"]["description"],
        "shadowing: a query id"
    );
}

#[test]
fn a_31_document_keeps_its_json_schema() {
    let doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "Notes", "version": "1"},
        "paths": {
            "/notes/{id}": {
                "patch": {
                    "operationId": "patchNote",
                    "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                    "requestBody": {"content": {"application/merge-patch+json": {"schema": {
                        "type": "object",
                        "properties": {"text": {"type": ["string", "null"]}, "pinned": {"type": "boolean"}},
                        "oneOf": [{"required": ["text"]}, {"required": ["pinned"]}]
                    }}}},
                    "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "string"}}}}}
                }
            }
        }
    });
    let doc = import(doc.to_string().as_bytes()).unwrap();
    assert_eq!(doc.dialect, Dialect::V31);
    let patch = doc.operations[0].converted().unwrap();
    let v = validator(&patch.input_schema);
    assert!(v.is_valid(&json!({"id": 4, "body": {"text": null}})));
    assert!(!v.is_valid(&json!({"id": 4, "body": {}})), "oneOf kept");
    assert!(!v.is_valid(&json!({"id": "4", "body": {"pinned": true}})));
    assert!(!doc.operations[0].is_safe_method());
    // A string result is wrapped: MCP structured content is an object.
    let def = tool_definition(&doc.operations[0]).unwrap();
    assert_eq!(
        def["outputSchema"]["properties"]["result"]["type"],
        "string"
    );
    assert_eq!(def["annotations"]["readOnlyHint"], false);
}

#[test]
fn documents_that_are_not_openapi_3_are_refused_with_a_reason() {
    type Case = (&'static [u8], fn(&ImportError) -> bool);
    let cases: [Case; 6] = [
        (b"{\"swagger\": \"2.0\", \"paths\": {}}", |e| {
            *e == ImportError::Swagger2
        }),
        (b"{\"openapi\": \"4.0.0\", \"paths\": {}}", |e| {
            matches!(e, ImportError::Version(_))
        }),
        (b"{\"openapi\": \"3.0.0\"}", |e| *e == ImportError::NoPaths),
        (b"hello: world", |e| *e == ImportError::NotOpenApi),
        (b"{\"openapi\": ", |e| matches!(e, ImportError::Syntax(_))),
        (b"openapi: [unclosed", |e| {
            matches!(e, ImportError::Syntax(_))
        }),
    ];
    for (bytes, ok) in cases {
        let e = import(bytes).unwrap_err();
        assert!(ok(&e), "{}: {e}", String::from_utf8_lossy(bytes));
        assert!(!e.to_string().is_empty());
    }
    assert!(ImportError::Swagger2.to_string().contains("3.x"));
    assert!(import(&[0xff, 0xfe, 0x00]).is_err());
}

#[test]
fn reference_cycles_are_reported_not_followed_forever() {
    let doc = json!({
        "openapi": "3.0.0",
        "paths": {"/a": {"get": {
            "operationId": "a",
            "parameters": [{"$ref": "#/components/parameters/P"}],
            "responses": {}
        }}, "/b": {"get": {"operationId": "b", "responses": {}}}},
        "components": {"parameters": {"P": {"$ref": "#/components/parameters/Q"}, "Q": {"$ref": "#/components/parameters/P"}}}
    });
    let doc = import(doc.to_string().as_bytes()).unwrap();
    match &doc.operations[0].outcome {
        Outcome::Unconvertible(w) => assert!(w.contains("cycle"), "{w}"),
        Outcome::Converted(_) => panic!("a cycle converted"),
    }
    assert!(doc.operations[1].converted().is_some());
}

#[test]
fn tool_names_are_sanitised_stable_and_unique() {
    let mut paths = serde_json::Map::new();
    for (p, id) in [("/x", "same"), ("/y", "same"), ("/z", "same_2"), ("/w", "")] {
        paths.insert(
            p.into(),
            json!({"get": {"operationId": id, "responses": {}}}),
        );
    }
    paths.insert(
        "/very/long".into(),
        json!({"get": {"operationId": "a".repeat(300), "responses": {}}}),
    );
    let doc = json!({"openapi": "3.0.1", "paths": paths});
    let d = import(doc.to_string().as_bytes()).unwrap();
    let n = names(&d);
    let unique: std::collections::BTreeSet<_> = n.iter().collect();
    assert_eq!(unique.len(), n.len(), "{n:?}");
    assert!(n.iter().all(|t| t.len() <= super::TOOL_NAME_BYTES_MAX
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))));
    assert!(n.contains(&"get_w"));
    // The same document names the same way.
    assert_eq!(names(&import(doc.to_string().as_bytes()).unwrap()), n);
}

#[test]
fn selection_needs_writes_named_and_every_selector_to_match() {
    let doc = import(PETS_30.as_bytes()).unwrap();
    let picked = |sel: &[&str]| -> Result<Vec<String>, super::SelectError> {
        let s: Vec<Selector> = sel.iter().map(|s| Selector::parse(s)).collect();
        select(&doc, &s).map(|ops| ops.iter().map(|o| o.tool_name.clone()).collect())
    };
    // By tag: only the reads.
    assert_eq!(
        picked(&["tag:pets"]).unwrap(),
        ["listPets", "get_pet_by_id"]
    );
    assert_eq!(picked(&["*"]).unwrap(), ["listPets", "get_pet_by_id"]);
    // Writes by name or by route.
    assert_eq!(
        picked(&["tag:pets", "createPet", "DELETE /pets/{id}"]).unwrap(),
        ["listPets", "createPet", "get_pet_by_id", "deletePet"]
    );
    assert!(matches!(
        picked(&["nope"]),
        Err(super::SelectError::NoMatch(_))
    ));
    assert!(matches!(
        picked(&["uploadPhoto"]),
        Err(super::SelectError::Unconvertible { .. })
    ));
}

#[test]
fn arguments_cannot_move_a_request_elsewhere() {
    let doc = import(PETS_30.as_bytes()).unwrap();
    let get = &op(&doc, "get_pet_by_id").converted().unwrap().plan;
    let path = |id: &str| call::build(get, &json!({ "path_id": id })).map(|r| r.path_and_query);
    assert_eq!(path("rex").unwrap(), "/pets/rex");
    assert_eq!(path("../admin").unwrap(), "/pets/..%2Fadmin");
    assert_eq!(path("a/b?c#d").unwrap(), "/pets/a%2Fb%3Fc%23d");
    assert_eq!(path("%2F").unwrap(), "/pets/%252F");
    assert_eq!(
        path("http://evil.example/").unwrap(),
        "/pets/http%3A%2F%2Fevil.example%2F"
    );
    for bad in ["..", ".", ""] {
        assert!(
            matches!(path(bad), Err(CallError::Refused { .. })),
            "{bad:?}"
        );
    }
    assert!(matches!(
        call::build(get, &json!({})),
        Err(CallError::Missing(_))
    ));
    assert!(matches!(
        call::build(get, &json!({"path_id": {"a": 1}})),
        Err(CallError::Refused { .. })
    ));
    // Cookies and headers take no control characters or separators.
    for bad in ["a\r\nSet-Cookie: x=1", "a; admin=1", "a\0"] {
        assert!(
            call::build(get, &json!({"path_id": "x", "session": bad})).is_err(),
            "{bad:?}"
        );
    }
    let r = call::build(
        get,
        &json!({"path_id": 7, "query_id": true, "session": "s1"}),
    )
    .unwrap();
    assert_eq!(r.path_and_query, "/pets/7?id=true");
    assert!(r.headers.contains(&("cookie".into(), "session=s1".into())));
    assert_eq!(r.method, "GET");
    assert!(r.body.is_none());

    let list = &op(&doc, "listPets").converted().unwrap().plan;
    assert!(call::build(list, &json!({"X-Trace": "a\nb"})).is_err());
    let r = call::build(
        list,
        &json!({"limit": 5, "tags": ["a b", "c&d"], "X-Trace": "t-1"}),
    )
    .unwrap();
    assert_eq!(r.path_and_query, "/pets?limit=5&tags=a%20b%2Cc%26d");
    assert!(r.headers.contains(&("x-trace".into(), "t-1".into())));

    let create = &op(&doc, "createPet").converted().unwrap().plan;
    let r = call::build(create, &json!({"body": {"name": "Rex"}})).unwrap();
    assert_eq!(r.method, "POST");
    assert_eq!(r.body.as_deref(), Some(&br#"{"name":"Rex"}"#[..]));
    assert!(r
        .headers
        .contains(&("content-type".into(), "application/json".into())));
    assert!(matches!(
        call::build(create, &json!({})),
        Err(CallError::Missing(_))
    ));
    assert_eq!(
        call::build(create, &json!([1])),
        Err(CallError::NotAnObject)
    );
}

#[test]
fn exploded_query_arrays_repeat_their_name() {
    let doc = json!({"openapi": "3.0.0", "paths": {"/s": {"get": {"operationId": "s",
        "parameters": [
            {"name": "k", "in": "query", "schema": {"type": "array", "items": {"type": "integer"}}},
            {"name": "f", "in": "query", "schema": {"type": "object"}}
        ], "responses": {}}}}});
    let d = import(doc.to_string().as_bytes()).unwrap();
    let plan = &d.operations[0].converted().unwrap().plan;
    let r = call::build(plan, &json!({"k": [1, 2], "f": {"a": "x", "b": 2}})).unwrap();
    assert_eq!(r.path_and_query, "/s?k=1&k=2&a=x&b=2");
}

#[test]
fn responses_become_tool_results() {
    let doc = import(PETS_30.as_bytes()).unwrap();
    let list = op(&doc, "listPets");
    let def = tool_definition(list).unwrap();
    let out_schema = &def["outputSchema"];
    assert_eq!(out_schema["type"], "object");
    let out = validator(out_schema);

    let c = list.converted().unwrap();
    let r = call::result(
        200,
        Some("application/json; charset=utf-8"),
        br#"[{"name":"Rex"}]"#,
        c.plan.structured,
    );
    assert_eq!(r["isError"], false);
    assert_eq!(r["structuredContent"], json!({"result": [{"name": "Rex"}]}));
    assert!(out.is_valid(&r["structuredContent"]), "{r}");
    assert_eq!(r["content"][0]["text"], r#"[{"name":"Rex"}]"#);

    // An object result is the structured content as it is.
    let get = op(&doc, "get_pet_by_id");
    let def = tool_definition(get).unwrap();
    let r = call::result(
        200,
        Some("application/json"),
        br#"{"name":"Rex"}"#,
        get.converted().unwrap().plan.structured,
    );
    assert_eq!(r["structuredContent"], json!({"name": "Rex"}));
    assert_eq!(
        def["outputSchema"]["type"], "object",
        "MCP wants it at the top"
    );
    assert!(validator(&def["outputSchema"]).is_valid(&r["structuredContent"]));

    // Errors: the status and a bounded excerpt, flagged.
    let html = format!("<html>{}</html>", "x".repeat(10_000));
    let r = call::result(500, Some("text/html"), html.as_bytes(), None);
    assert_eq!(r["isError"], true);
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("HTTP 500: <html>"));
    assert!(text.len() < call::ERROR_EXCERPT_BYTES_MAX + 32);

    // Other 2xx: text as text, bytes as a blob, nothing as the status.
    let r = call::result(200, Some("text/plain"), b"pong", None);
    assert_eq!(r["content"][0]["text"], "pong");
    let r = call::result(200, Some("image/png"), &[0x89, b'P', b'N', b'G'], None);
    assert_eq!(r["content"][0]["resource"]["blob"], "iVBORw==");
    assert_eq!(r["content"][0]["resource"]["mimeType"], "image/png");
    let r = call::result(204, None, b"", None);
    assert_eq!(r["content"][0]["text"], "HTTP 204");
}

#[test]
fn a_thousand_operations_convert() {
    let mut paths = serde_json::Map::new();
    for i in 0..500 {
        paths.insert(
            format!("/items{i}/{{id}}"),
            json!({
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "get": {"operationId": format!("get{i}"), "responses": {"200": {"description": "", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}}}},
                "put": {"operationId": format!("put{i}"), "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}}, "responses": {}}
            }),
        );
    }
    let doc = json!({"openapi": "3.0.3", "paths": paths, "components": {"schemas": {"Item": {
        "type": "object", "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}}}
    }}}});
    let d = import(doc.to_string().as_bytes()).unwrap();
    assert_eq!(d.operations.len(), 1000);
    assert!(d.operations.iter().all(|o| o.converted().is_some()));
}

#[test]
fn pinned_tools_carry_their_plan_and_reimports_are_diffed() {
    let doc = import(PETS_30.as_bytes()).unwrap();
    let tools = super::pin("pets", &doc, &["tag:pets".into(), "createPet".into()]).unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["listPets", "createPet", "get_pet_by_id"]);
    assert!(tools
        .iter()
        .all(|t| t.capability == "pets" && t.call.is_some()));
    assert_eq!(tools[1].call.as_ref().unwrap().method, "POST");
    assert_eq!(tools[0].title.as_deref(), Some("List pets"));
    assert!(tools[0].output_schema.is_some());
    assert!(super::pin("pets", &doc, &["nothing".into()]).is_err());

    let edited = PETS_30
        .replace("maximum: 100", "maximum: 50")
        .replace("  /external:", "  /new:\n    get:\n      operationId: fresh\n      responses: {\"200\": {description: ok}}\n  /external:")
        .replace("    delete:\n      operationId: deletePet\n      responses:\n        \"204\": {description: gone}\n", "");
    let d = super::diff(&doc, &import(edited.as_bytes()).unwrap());
    assert_eq!(d.added, ["GET /new"]);
    assert_eq!(d.removed, ["DELETE /pets/{id}"]);
    assert_eq!(d.changed, ["GET /pets"]);
    assert!(super::diff(&doc, &doc).is_empty());
}

#[test]
fn the_admin_apis_own_description_converts() {
    // A real 3.1 document we maintain by hand (served at /admin/openapi.json).
    let doc = import(include_bytes!("../../../appliance/src/admin-openapi.json")).unwrap();
    assert_eq!(doc.dialect, Dialect::V31);
    assert!(doc.operations.len() > 30, "{}", doc.operations.len());
    let unconvertible: Vec<_> = doc
        .operations
        .iter()
        .filter_map(|o| match &o.outcome {
            Outcome::Unconvertible(w) => Some(format!("{} {}: {w}", o.method, o.path)),
            Outcome::Converted(_) => None,
        })
        .collect();
    assert!(unconvertible.is_empty(), "{unconvertible:#?}");
    for o in &doc.operations {
        validator(&o.converted().unwrap().input_schema);
    }
}

#[test]
fn security_schemes_say_where_a_credential_goes() {
    use crate::credential::Inject;
    let doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "Keys", "version": "1"},
        "security": [{"bearerAuth": []}],
        "components": {"securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer"},
            "basicAuth": {"type": "http", "scheme": "basic"},
            "key": {"type": "apiKey", "in": "query", "name": "api_key"},
            "sid": {"$ref": "#/components/securitySchemes/session"},
            "session": {"type": "apiKey", "in": "cookie", "name": "sid"}
        }},
        "paths": {
            "/a": {"get": {"operationId": "usesDefault", "responses": {"200": {"description": "ok"}}}},
            "/b": {"get": {"operationId": "usesKey", "security": [{"key": []}], "responses": {"200": {"description": "ok"}}}},
            "/c": {"get": {"operationId": "usesBasicThenCookie", "security": [{"basicAuth": []}, {"sid": []}], "responses": {"200": {"description": "ok"}}}},
            "/d": {"get": {"operationId": "anonymous", "security": [], "responses": {"200": {"description": "ok"}}}}
        }
    });
    let doc = import(doc.to_string().as_bytes()).unwrap();
    let scheme = |name: &str| op(&doc, name).converted().unwrap().plan.security.clone();
    assert_eq!(scheme("usesDefault"), Some(Inject::Bearer));
    assert_eq!(
        scheme("usesKey"),
        Some(Inject::Query {
            name: "api_key".into()
        })
    );
    // Basic needs a username the document lacks: the next requirement (a cookie, through a $ref) wins.
    assert_eq!(
        scheme("usesBasicThenCookie"),
        Some(Inject::Cookie { name: "sid".into() })
    );
    assert_eq!(scheme("anonymous"), None);
}

#[test]
fn redirects_lead_only_within_the_base_url() {
    let origin = ("http", "api.internal", 8080);
    let go = |loc: &str| call::redirect_target(origin, "/v1", "/v1/items/7?x=1", loc);
    assert_eq!(go("/v1/items/8"), Ok("/v1/items/8".to_owned()));
    assert_eq!(go("8?y=2"), Ok("/v1/items/8?y=2".to_owned()));
    assert_eq!(
        go("http://API.internal:8080/v1/x#frag"),
        Ok("/v1/x".to_owned())
    );
    for (loc, why) in [
        (
            "http://169.254.169.254/latest/",
            "a redirect to another origin",
        ),
        (
            "https://api.internal:8080/v1/x",
            "a redirect to another origin",
        ),
        (
            "http://api.internal:9090/v1/x",
            "a redirect to another origin",
        ),
        (
            "http://evil@api.internal:8080/v1/x",
            "a redirect to another origin",
        ),
        ("//evil.example/v1", "a redirect to another origin"),
        ("/admin", "a redirect outside the API's base path"),
        ("/v10/x", "a redirect outside the API's base path"),
        ("/v1/../admin", "a redirect with dot segments"),
        ("/v1/%2E%2E/admin", "a redirect with dot segments"),
        ("../../admin", "a redirect with dot segments"),
        ("/v1/x\r\nset-cookie: a", "a malformed Location"),
        ("", "a malformed Location"),
    ] {
        assert_eq!(go(loc), Err(why), "{loc}");
    }
    // An API at the root takes any path of its origin.
    assert_eq!(
        call::redirect_target(origin, "", "/a", "/b"),
        Ok("/b".to_owned())
    );
}
