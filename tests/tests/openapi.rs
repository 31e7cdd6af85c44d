//! REST APIs as governed tools: a FastAPI app's own OpenAPI 3.1 document is imported, two reads and one
//! write are selected, approved, and the official Python SDK client lists and calls them through the
//! gateway. Unselected operations are neither listed nor callable, and the app's request log proves what
//! reached it.

#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};

use portcullis_tests::*;

const CONFIG: &str = "pinning:\n  recheck_interval: 1h\n";

/// What the REST app received, in order.
fn calls(port: u16) -> Vec<Value> {
    let r = request(port, "GET", "/_calls", &[], b"").unwrap();
    r.json().as_array().unwrap().clone()
}

fn shop(g: &Gateway, port: u16) -> TempDir {
    ok(
        g,
        &[
            "capability",
            "add",
            "shop",
            "--kind",
            "openapi",
            "--owner",
            "team",
            "--risk",
            "medium",
            "--environment",
            "prod",
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
        ],
    );
    let doc = request(port, "GET", "/openapi.json", &[], b"").unwrap();
    assert_eq!(doc.status, 200);
    let dir = TempDir::new("openapi");
    std::fs::write(dir.path().join("shop.json"), &doc.body).unwrap();
    dir
}

#[test]
fn selected_operations_of_a_fastapi_app_become_governed_tools() {
    let (_api, port) = rest_api();
    let g = Gateway::start(&[], CONFIG);
    admit_tester(&g);
    let dir = shop(&g, port);
    let file = dir.path().join("shop.json");

    // Import: every operation listed, all convertible, none selected yet.
    let imported = ok(&g, &["openapi", "import", "shop", file.to_str().unwrap()]);
    assert_eq!(imported["openapi"], "3.1", "{imported}");
    let ops = imported["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 12, "{imported}");
    assert!(
        ops.iter().all(|o| o["convertible"] == json!(true)),
        "{imported}"
    );
    assert!(imported["changes"].is_null());
    // Approval refuses an openapi capability with nothing selected.
    let e = fails(&g, &["approve"]);
    assert!(e.contains("no operations selected"), "{e}");

    // A tag selects only reads; writes must be named.
    let sel = ok(
        &g,
        &[
            "openapi",
            "select",
            "shop",
            "tag:items",
            "POST /items",
            "GET /echo/{value}",
            "GET /broken",
            "GET /moved",
            "GET /huge",
        ],
    );
    let selected: Vec<&str> = sel["operations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["selected"] == json!(true))
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    assert_eq!(selected.len(), 7, "{sel}");
    assert!(!sel["operations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["method"] == "DELETE" && o["selected"] == json!(true)));
    let delete_tool = sel["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["method"] == "DELETE")
        .map(|o| o["tool"].as_str().unwrap().to_owned())
        .unwrap();
    let e = fails(&g, &["openapi", "select", "shop", "no_such_operation"]);
    assert!(e.contains("selects no operation"), "{e}");
    ok(&g, &["approve", "--note", "shop reads and create"]);

    // The official SDK client sees the selected operations only.
    let listed = py_client(&g.url(), "2025-11-25", "list", &["--tools-only"]);
    let tools: Vec<String> = listed["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tools.len(), 7, "{tools:?}");
    let find = |fragment: &str| {
        tools
            .iter()
            .find(|t| t.starts_with("shop__") && t.contains(fragment))
            .unwrap_or_else(|| panic!("no {fragment} in {tools:?}"))
            .clone()
    };
    assert!(!tools.iter().any(|t| t.contains("delete")), "{tools:?}");
    let (create, get, echo, broken) = (
        find("create"),
        find("get_item"),
        find("echo"),
        find("broken"),
    );

    // A write and a read, through the SDK: JSON comes back as structured content.
    let made = py_client(
        &g.url(),
        "2025-11-25",
        "call",
        &[
            "--tool",
            &create,
            "--args",
            r#"{"body": {"name": "desk", "price": 120, "tags": ["office"]}}"#,
        ],
    );
    assert_eq!(made["structured"]["name"], "desk", "{made}");
    let id = made["structured"]["id"].as_i64().unwrap();
    let got = py_client(
        &g.url(),
        "2026-07-28",
        "call",
        &["--tool", &get, "--args", &format!(r#"{{"item_id": {id}}}"#)],
    );
    assert_eq!(got["structured"]["price"], 120, "{got}");

    // An argument cannot add path segments or a query.
    let r = modern(
        g.plain_port,
        5,
        "tools/call",
        json!({"name": echo, "arguments": {"value": "a b?admin=1#x"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.message()["result"]["structuredContent"]["value"],
        "a b?admin=1#x",
        "{}",
        r.text()
    );
    let before = calls(port).len();
    for value in ["..", "."] {
        let r = modern(
            g.plain_port,
            6,
            "tools/call",
            json!({"name": echo, "arguments": {"value": value}}),
        );
        assert_eq!(r.reason(), "schema_invalid", "{}", r.text());
    }
    // Arguments that break the schema never reach the app.
    let r = modern(
        g.plain_port,
        7,
        "tools/call",
        json!({"name": create, "arguments": {"body": {"name": "", "price": -1}}}),
    );
    assert_eq!(r.reason(), "schema_invalid", "{}", r.text());
    // The unselected DELETE is not callable.
    let r = modern(
        g.plain_port,
        8,
        "tools/call",
        json!({"name": delete_tool, "arguments": {"item_id": 1}}),
    );
    assert_eq!(r.reason(), "tool_not_found", "{}", r.text());
    assert_eq!(calls(port).len(), before, "refused calls reached the app");

    // An upstream error is a tool error with the status and a bounded excerpt.
    let r = modern(
        g.plain_port,
        9,
        "tools/call",
        json!({"name": broken, "arguments": {}}),
    );
    let result = &r.message()["result"];
    assert_eq!(result["isError"], true, "{}", r.text());
    let text = result["content"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("HTTP 500: <html>") && text.len() < 2200,
        "{text}"
    );

    // A redirect is not followed: it is a tool error naming the status.
    let r = modern(
        g.plain_port,
        11,
        "tools/call",
        json!({"name": find("moved"), "arguments": {}}),
    );
    let result = &r.message()["result"];
    assert_eq!(result["isError"], true, "{}", r.text());
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 307"),
        "{}",
        r.text()
    );
    // A body past limits.upstream_body_bytes_max is refused, and the gateway serves on.
    let r = modern(
        g.plain_port,
        12,
        "tools/call",
        json!({"name": find("huge"), "arguments": {}}),
    );
    assert!(
        r.json()["error"]["data"]["reason"].is_string(),
        "{}",
        &r.text()[..r.text().len().min(300)]
    );
    let r = modern(
        g.plain_port,
        13,
        "tools/call",
        json!({"name": get, "arguments": {"item_id": 1}}),
    );
    assert_eq!(
        r.message()["result"]["structuredContent"]["name"],
        "lamp",
        "{}",
        r.text()
    );

    // The agent's own credential never went upstream (the test's own direct fetch of the document
    // carried it; the gateway's requests did not).
    let log = calls(port);
    let through: Vec<&Value> = log
        .iter()
        .filter(|c| c["raw_path"] != "/openapi.json")
        .collect();
    assert!(through.len() >= 4, "{log:?}");
    assert!(
        through.iter().all(|c| c["authorization"].is_null()),
        "{log:?}"
    );
    assert!(through
        .iter()
        .any(|c| c["raw_path"] == "/echo/a%20b%3Fadmin%3D1%23x" && c["query"] == ""));

    // Re-import of the same document changes nothing; an edited one says what changed.
    let again = ok(&g, &["openapi", "import", "shop", file.to_str().unwrap()]);
    assert_eq!(
        again["changes"],
        json!({"added": [], "removed": [], "changed": []})
    );
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    doc["paths"].as_object_mut().unwrap().remove("/broken");
    std::fs::write(&file, doc.to_string()).unwrap();
    let edited = ok(&g, &["openapi", "import", "shop", file.to_str().unwrap()]);
    assert_eq!(
        edited["changes"]["removed"],
        json!(["GET /broken"]),
        "{edited}"
    );
    // The selection still names the removed operation: approval says so, and the pinned tool serves on.
    let e = fails(&g, &["approve"]);
    assert!(e.contains("`GET /broken` selects no operation"), "{e}");
    let r = modern(
        g.plain_port,
        10,
        "tools/call",
        json!({"name": broken, "arguments": {}}),
    );
    assert_eq!(r.message()["result"]["isError"], true, "{}", r.text());
    ok(
        &g,
        &["openapi", "select", "shop", "tag:items", "POST /items"],
    );
    ok(&g, &["approve", "--note", "drop the debug operations"]);
    let listed = py_client(&g.url(), "2026-07-28", "list", &["--tools-only"]);
    assert_eq!(listed["tools"].as_array().unwrap().len(), 3, "{listed}");
}

#[test]
fn documents_that_cannot_be_imported_are_refused_with_the_reason() {
    let (_api, port) = rest_api();
    let g = Gateway::start(&[], CONFIG);
    let dir = shop(&g, port);
    let bad = dir.path().join("bad.yaml");
    for (text, expect) in [
        ("swagger: '2.0'\npaths: {}\n", "convert it to OpenAPI 3.x"),
        ("openapi: 3.0.0\ninfo: [unclosed\n", "neither JSON nor YAML"),
        ("hello: world\n", "not an OpenAPI document"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let e = fails(&g, &["openapi", "import", "shop", bad.to_str().unwrap()]);
        assert!(e.contains(expect), "{text}: {e}");
    }
    // Only openapi capabilities take a document.
    ok(
        &g,
        &[
            "capability",
            "add",
            "mcpcap",
            "--kind",
            "mcp",
            "--owner",
            "t",
            "--risk",
            "low",
            "--environment",
            "prod",
            "--endpoint",
            "http://127.0.0.1:9/mcp",
        ],
    );
    let e = fails(&g, &["openapi", "import", "mcpcap", bad.to_str().unwrap()]);
    assert!(e.contains("not_openapi"), "{e}");
}

#[test]
fn documents_import_from_an_https_url_verified_by_its_ca() {
    let (_api, port) = rest_api();
    let g = Gateway::start(&[], CONFIG);
    let dir = shop(&g, port);
    let doc = std::fs::read_to_string(dir.path().join("shop.json")).unwrap();
    let idp = Idp::start();
    let serve = |body: &str, status: u16, location: Option<&str>| {
        let r = request(
            idp.control,
            "POST",
            "/document",
            &[("authorization", "none")],
            json!({"body": body, "status": status, "location": location})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200);
    };
    serve(&doc, 200, None);
    let url = format!("https://127.0.0.1:{}/doc", idp.jwks_port);
    let imported = ok(
        &g,
        &["openapi", "import", "shop", &url, "--ca-file", &idp.ca],
    );
    assert_eq!(
        imported["operations"].as_array().unwrap().len(),
        12,
        "{imported}"
    );
    // Without the CA that issued its certificate, the server is not trusted.
    let e = fails(&g, &["openapi", "import", "shop", &url]);
    assert!(
        e.contains("certificate") || e.contains("Certificate") || e.contains("tls"),
        "{e}"
    );
    // A redirect is reported, not followed.
    serve("", 302, Some("https://elsewhere.example/doc"));
    let e = fails(
        &g,
        &["openapi", "import", "shop", &url, "--ca-file", &idp.ca],
    );
    assert!(e.contains("302") && e.contains("elsewhere.example"), "{e}");
}

#[test]
fn https_base_urls_are_called_over_verified_tls() {
    // The REST API serves HTTPS with a certificate for 127.0.0.1 from the test IdP's CA.
    let idp = Idp::start();
    let cert = idp.dir.path().join("cert.pem");
    let key = idp.dir.path().join("key.pem");
    let (_api, port) = rest_api_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let g = Gateway::start(
        &[],
        &format!("{CONFIG}upstream_tls:\n  ca_file: {}\n", idp.ca),
    );
    admit_tester(&g);
    ok(
        &g,
        &[
            "capability",
            "add",
            "shop",
            "--kind",
            "openapi",
            "--owner",
            "team",
            "--risk",
            "medium",
            "--environment",
            "prod",
            "--endpoint",
            &format!("https://127.0.0.1:{port}"),
        ],
    );
    let url = format!("https://127.0.0.1:{port}/openapi.json");
    ok(
        &g,
        &["openapi", "import", "shop", &url, "--ca-file", &idp.ca],
    );
    ok(&g, &["openapi", "select", "shop", "GET /items/{item_id}"]);
    ok(&g, &["approve"]);
    let r = modern(
        g.plain_port,
        3,
        "tools/call",
        json!({"name": "shop__get_item_items_item_id_get", "arguments": {"item_id": 1}}),
    );
    let m = r.message();
    assert_eq!(
        m["result"]["structuredContent"]["name"],
        json!("lamp"),
        "{}",
        r.text()
    );

    // A gateway that does not trust the API's CA refuses to call it: no plaintext fallback.
    let g2 = Gateway::start(&[], CONFIG);
    admit_tester(&g2);
    ok(
        &g2,
        &[
            "capability",
            "add",
            "shop",
            "--kind",
            "openapi",
            "--owner",
            "team",
            "--risk",
            "medium",
            "--environment",
            "prod",
            "--endpoint",
            &format!("https://127.0.0.1:{port}"),
        ],
    );
    ok(
        &g2,
        &["openapi", "import", "shop", &url, "--ca-file", &idp.ca],
    );
    ok(&g2, &["openapi", "select", "shop", "GET /items/{item_id}"]);
    ok(&g2, &["approve"]);
    let r = modern(
        g2.plain_port,
        4,
        "tools/call",
        json!({"name": "shop__get_item_items_item_id_get", "arguments": {"item_id": 1}}),
    );
    assert_eq!(
        r.message()["error"]["data"]["reason"],
        json!("upstream_unavailable"),
        "{}",
        r.text()
    );
}

#[test]
fn redirects_are_followed_only_as_configured_and_only_within_the_base_url() {
    let (_api, port) = rest_api();
    let g = Gateway::start(&[], CONFIG);
    admit_tester(&g);
    let dir = shop(&g, port);
    let file = dir.path().join("shop.json");
    ok(&g, &["openapi", "import", "shop", file.to_str().unwrap()]);
    let ops = ["GET /relocated", "GET /loop", "GET /moved"];
    let call = |g: &Gateway, id: u64, fragment: &str| {
        let listed = modern(g.plain_port, 1, "tools/list", json!({}));
        let name = listed.message()["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["name"].as_str())
            .find(|n| n.contains(fragment))
            .unwrap()
            .to_owned();
        let r = modern(
            g.plain_port,
            id,
            "tools/call",
            json!({"name": name, "arguments": {}}),
        );
        r.message()["result"].clone()
    };
    // Not configured: a same-origin redirect is a tool error naming its status.
    let mut args = vec!["openapi", "select", "shop"];
    args.extend(ops);
    ok(&g, &args);
    ok(&g, &["approve", "--note", "no redirects"]);
    let r = call(&g, 2, "relocated");
    assert_eq!(r["isError"], json!(true), "{r}");
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 307"),
        "{r}"
    );

    // Configured: followed within the base URL, to the list it points at; a loop stops at the bound;
    // another host is still never reached.
    args.extend(["--redirects", "3"]);
    ok(&g, &args);
    assert_eq!(
        ok(&g, &["capability", "show", "shop"])["spec"]["openapi"]["redirects"],
        json!(3)
    );
    ok(&g, &["approve", "--note", "three redirects"]);
    let r = call(&g, 3, "relocated");
    assert_eq!(r["isError"], json!(false), "{r}");
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("\"name\""),
        "{r}"
    );
    let r = call(&g, 4, "loop");
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 302"),
        "{r}"
    );
    let r = call(&g, 5, "moved");
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 307"),
        "{r}"
    );
    let calls = request(port, "GET", "/_calls", &[], b"").unwrap().text();
    assert_eq!(
        calls.matches("/loop").count(),
        1 + 3,
        "the call and three hops: {calls}"
    );
    let e = fails(
        &g,
        &[
            "openapi",
            "select",
            "shop",
            "GET /loop",
            "--redirects",
            "11",
        ],
    );
    assert!(e.contains("at most 10"), "{e}");
}
