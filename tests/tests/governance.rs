//! Governance end to end: API keys name agents, the snapshot's Cedar policies decide what each agent
//! lists and calls (arguments included), and arguments that do not fit the pinned schema never reach
//! the upstream. Official SDK clients and a Python SDK upstream.

#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};

use portcullis_tests::*;

const CONFIG: &str = "pinning:\n  recheck_interval: 1h\n";

fn policy(g: &Gateway, id: &str, text: &str) {
    ok(g, &["policy", "add", id, "--text", text]);
}

fn call(g: &Gateway, tool: &str, args: Value) -> RawResponse {
    modern(
        g.plain_port,
        7,
        "tools/call",
        json!({"name": tool, "arguments": args}),
    )
}

fn received(g: &Gateway) -> String {
    let r = call(g, "alpha__received_calls", json!({}));
    r.json()["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", r.text()))
        .to_owned()
}

#[test]
fn policy_decides_what_each_agent_lists_and_calls() {
    let (_a, pa) = py_server("alpha", &[]);
    let g = Gateway::start(&[], CONFIG);
    add_capability(&g, "alpha", pa);
    let (ops, viewer) = ops_and_viewer(&g);
    register_agent_in(&g, "idle", "nobody");
    policy(
        &g,
        "no-big-adds",
        r#"forbid(principal, action == Action::"call", resource == Tool::"alpha__add") when { context.arguments has a && context.arguments.a > 100 };"#,
    );
    ok(&g, &["approve", "--note", "two agents"]);

    // Discovery: the viewer sees only echo, the operator everything, through both SDKs and revisions.
    act_as(&viewer);
    for rev in ["2025-11-25", "2026-07-28"] {
        let v = py_client(&g.url(), rev, "list", &["--tools-only"]);
        assert_eq!(v["tools"], json!(["alpha__echo"]), "{v}");
    }
    let v = ts_client("v2", &g.url(), "2026-07-28", "list", &["--tools-only"]);
    assert_eq!(v["tools"], json!(["alpha__echo"]), "{v}");
    act_as(&ops);
    let v = py_client(&g.url(), "2026-07-28", "list", &["--tools-only"]);
    let tools = v["tools"].as_array().unwrap();
    assert!(
        tools.len() > 5 && tools.contains(&json!("alpha__add")),
        "{v}"
    );

    // A tool the viewer cannot see it cannot call; the default deny names no policy.
    act_as(&viewer);
    let r = call(&g, "alpha__add", json!({"a": 1, "b": 2}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.reason(), "policy_denied", "{}", r.text());
    assert_eq!(r.json()["error"]["data"]["policies"], json!([]));
    assert!(r.json()["error"]["data"]["snapshot"]
        .as_str()
        .unwrap()
        .starts_with("v1 "));
    let v = py_client(
        &g.url(),
        "2025-11-25",
        "call",
        &["--tool", "alpha__echo", "--args", r#"{"text":"seen"}"#],
    );
    assert_eq!(v["text"], json!("seen"));
    // Prompts and resources are decided on the capability: the viewer's policy names one tool only.
    let r = modern(g.plain_port, 8, "prompts/list", json!({}));
    assert_eq!(r.json()["result"]["prompts"], json!([]), "{}", r.text());
    let r = modern(
        g.plain_port,
        9,
        "prompts/get",
        json!({"name": "alpha__greet", "arguments": {}}),
    );
    assert_eq!(r.reason(), "policy_denied", "{}", r.text());
    act_as(&ops);
    let v = py_client(&g.url(), "2026-07-28", "list", &[]);
    assert!(v["prompts"].to_string().contains("alpha__greet"), "{v}");
    let r = modern(
        g.plain_port,
        9,
        "prompts/get",
        json!({"name": "alpha__greet", "arguments": {}}),
    );
    assert!(r.json()["result"].is_object(), "{}", r.text());

    // An argument-level forbid denies one call and permits another, naming the policy.
    act_as(&ops);
    let v = ts_client(
        "v2",
        &g.url(),
        "2026-07-28",
        "call",
        &["--tool", "alpha__add", "--args", r#"{"a":100,"b":1}"#],
    );
    assert_eq!(v["text"], json!("101"), "{v}");
    let r = call(&g, "alpha__add", json!({"a": 101, "b": 1}));
    assert_eq!(r.reason(), "policy_denied", "{}", r.text());
    assert_eq!(
        r.json()["error"]["data"]["policies"],
        json!(["no-big-adds"])
    );
    // A fractional number cannot slip under an integer bound.
    let r = call(&g, "alpha__add", json!({"a": 5000.5, "b": 1}));
    assert_eq!(r.reason(), "policy_denied", "{}", r.text());

    // Arguments that do not fit the pinned schema never reach the upstream.
    let r = call(&g, "alpha__add", json!({"a": "two", "b": 1}));
    assert_eq!(r.reason(), "schema_invalid", "{}", r.text());
    assert_eq!(r.json()["error"]["data"]["pointer"], json!("/a"));
    assert_eq!(r.json()["error"]["data"]["keyword"], json!("type"));
    let r = call(&g, "alpha__add", json!({"a": 1}));
    assert_eq!(r.reason(), "schema_invalid", "{}", r.text());
    assert_eq!(r.json()["error"]["data"]["keyword"], json!("required"));
    assert_eq!(received(&g), "echo:seen,add:100,1");

    // Identity: no key, a wrong key, a revoked key, a registered agent nothing permits.
    act_anonymously();
    let r = call(&g, "alpha__echo", json!({"text": "x"}));
    assert_eq!((r.status, r.reason().as_str()), (401, "unauthenticated"));
    let challenge = r.header("www-authenticate").unwrap().to_owned();
    assert!(
        challenge.contains("resource_metadata=\"http://127.0.0.1:"),
        "{challenge}"
    );
    let meta = request(
        g.plain_port,
        "GET",
        "/.well-known/oauth-protected-resource/mcp",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(meta.status, 200);
    assert_eq!(
        meta.json()["resource"],
        json!(format!("http://127.0.0.1:{}/mcp", g.plain_port))
    );
    act_as(&format!("{}x", &ops[..ops.len() - 1]));
    assert_eq!(
        call(&g, "alpha__echo", json!({"text": "x"})).reason(),
        "unauthenticated"
    );
    let id = ok(&g, &["agent", "key", "list", "viewer"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&g, &["agent", "key", "revoke", "viewer", &id]);
    act_as(&viewer);
    assert_eq!(
        call(&g, "alpha__echo", json!({"text": "x"})).reason(),
        "unauthenticated"
    );

    // A session belongs to the agent that opened it.
    act_as(&ops);
    let sid = initialize(g.plain_port);
    let idle = register_agent_in(&g, "late", "operators");
    act_as(&idle);
    let list_in_session = || {
        post(
            g.plain_port,
            &[
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        )
    };
    let r = list_in_session();
    // `late` is not in the approved snapshot yet.
    assert_eq!(
        (r.status, r.reason().as_str()),
        (403, "agent_not_registered")
    );
    ok(&g, &["approve", "--note", "late joins"]);
    let r = list_in_session();
    assert_eq!(
        (r.status, r.reason().as_str()),
        (404, "session_agent_mismatch")
    );

    // A disabled agent is refused as such once the snapshot says so.
    act_as(&ops);
    ok(&g, &["agent", "edit", "ops", "--status", "disabled"]);
    // A draft changes nothing until it is approved.
    let r = call(&g, "alpha__echo", json!({"text": "x"}));
    assert!(r.json()["result"].is_object(), "{}", r.text());
    ok(&g, &["approve", "--note", "ops off"]);
    let r = call(&g, "alpha__echo", json!({"text": "x"}));
    assert_eq!((r.status, r.reason().as_str()), (403, "agent_disabled"));
}

#[test]
fn rate_limits_and_quotas_refuse_with_retry_after_and_survive_approval() {
    let (_a, pa) = py_server("alpha", &[]);
    let g = Gateway::start(&[], CONFIG);
    add_capability(&g, "alpha", pa);
    let ops = register_agent_with(
        &g,
        "ops",
        "operators",
        &["--limit", "5/1m", "--limit", "alpha__add=2/1h"],
    );
    let other = register_agent_in(&g, "other", "operators");
    policy(
        &g,
        "operators-all",
        r#"permit(principal in Group::"operators", action, resource);"#,
    );
    let shown = ok(&g, &["agent", "show", "ops"]);
    assert_eq!(
        shown["spec"]["limits"],
        json!(["5/1m", "alpha__add=2/1h"]),
        "{shown}"
    );
    ok(&g, &["approve", "--note", "limits"]);

    act_as(&ops);
    // The tool quota: two calls, then 429 naming the limit, with Retry-After.
    for i in 0..2 {
        let r = call(&g, "alpha__add", json!({"a": i, "b": 1}));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.json()["result"].is_object(), "{}", r.text());
    }
    let r = call(&g, "alpha__add", json!({"a": 9, "b": 1}));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.reason(), "rate_limited");
    assert_eq!(r.json()["id"], json!(7), "the refusal answers the call");
    assert_eq!(r.json()["error"]["data"]["limit"], json!("alpha__add=2/1h"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");

    // Other tools are still callable until the agent's own limit (5 requests a minute, this one's
    // sixth refused) runs out.
    for _ in 0..2 {
        let r = call(&g, "alpha__echo", json!({"text": "hi"}));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = call(&g, "alpha__echo", json!({"text": "hi"}));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["data"]["limit"], json!("5/1m"));

    // Approving again keeps the counts; another agent has its own.
    policy(
        &g,
        "nobody",
        r#"forbid(principal == Agent::"nobody", action, resource);"#,
    );
    ok(&g, &["approve", "--note", "again"]);
    assert_eq!(call(&g, "alpha__echo", json!({"text": "hi"})).status, 429);
    act_as(&other);
    assert_eq!(call(&g, "alpha__add", json!({"a": 1, "b": 1})).status, 200);

    // A malformed limit is refused at registration, naming the field.
    let err = fails(&g, &["agent", "edit", "other", "--limit", "lots/1m"]);
    assert!(err.contains("limits[0]"), "{err}");
}

#[test]
fn policy_explain_and_policy_test_answer_as_the_gateway_decides() {
    let (_a, pa) = py_server("alpha", &[]);
    let g = Gateway::start(&[], CONFIG);
    add_capability(&g, "alpha", pa);
    let (_, viewer) = ops_and_viewer(&g);
    policy(
        &g,
        "no-big-adds",
        r#"forbid(principal, action == Action::"call", resource == Tool::"alpha__add") when { context.arguments has a && context.arguments.a > 100 };"#,
    );
    ok(&g, &["approve", "--note", "explain"]);

    let explain = |args: &[&str]| {
        let mut a = vec!["policy", "explain"];
        a.extend_from_slice(args);
        ok(&g, &a)
    };
    let v = explain(&[
        "--agent",
        "ops",
        "--tool",
        "alpha__add",
        "--args",
        r#"{"a": 500, "b": 1}"#,
    ]);
    assert_eq!(
        (&v["allowed"], &v["reason"], &v["policies"]),
        (
            &json!(false),
            &json!("policy_denied"),
            &json!(["no-big-adds"])
        ),
        "{v}"
    );
    assert!(
        v["snapshot"].as_str().unwrap().starts_with("v1 blake3:"),
        "{v}"
    );
    let v = explain(&[
        "--agent",
        "ops",
        "--tool",
        "alpha__add",
        "--args",
        r#"{"a": 5, "b": 1}"#,
    ]);
    assert_eq!(
        (&v["allowed"], &v["policies"]),
        (&json!(true), &json!(["operators-all"])),
        "{v}"
    );
    let v = explain(&[
        "--agent",
        "ops",
        "--tool",
        "alpha__add",
        "--args",
        r#"{"a": "two", "b": 1}"#,
    ]);
    assert_eq!(
        (&v["reason"], &v["pointer"]),
        (&json!("schema_invalid"), &json!("/a")),
        "{v}"
    );
    let v = explain(&[
        "--agent",
        "viewer",
        "--tool",
        "alpha__add",
        "--action",
        "discover",
    ]);
    assert_eq!(
        (&v["allowed"], &v["policies"]),
        (&json!(false), &json!([])),
        "{v}"
    );

    // The same answer the gateway gives the agent.
    act_as(&viewer);
    let r = call(&g, "alpha__add", json!({"a": 1, "b": 1}));
    assert_eq!(r.reason(), "policy_denied");

    // A table of expectations: passes against the active snapshot...
    let file = g.dir.path().join("policy-test.yaml");
    std::fs::write(
        &file,
        r#"cases:
  - {name: ops adds small, agent: ops, tool: alpha__add, arguments: {a: 5, b: 1}, expect: allow, policies: [operators-all]}
  - {name: ops adds big, agent: ops, tool: alpha__add, arguments: {a: 500, b: 1}, expect: deny, reason: policy_denied, policies: [no-big-adds]}
  - {name: viewer echoes, agent: viewer, tool: alpha__echo, arguments: {text: hi}, expect: allow}
  - {name: viewer cannot see add, agent: viewer, tool: alpha__add, action: discover, expect: deny}
  - {name: strangers, agent: nobody, tool: alpha__echo, expect: deny, reason: agent_not_registered}
"#,
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let rows = ok(&g, &["policy", "test", path]);
    assert_eq!(rows.as_array().unwrap().len(), 5, "{rows}");
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["result"] == json!("ok")),
        "{rows}"
    );

    // ...and fails, naming the case, against a draft that changes a decision.
    policy(
        &g,
        "viewers-quiet",
        r#"forbid(principal in Group::"viewers", action == Action::"call", resource);"#,
    );
    let out = cli(&g, &["policy", "test", path, "--snapshot", "draft"]);
    assert!(!out.status.success());
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed: Vec<&Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["result"] != json!("ok"))
        .collect();
    assert_eq!(failed.len(), 1, "{rows}");
    assert_eq!(failed[0]["case"], json!("viewer echoes"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not decide as expected"));
    // The active snapshot is unchanged until approval.
    assert!(cli(&g, &["policy", "test", path]).status.success());

    // A draft approval would refuse is refused with the same problems.
    policy(
        &g,
        "broken",
        r#"permit(principal, action, resource) when { context.nope > 1 };"#,
    );
    let err = fails(
        &g,
        &[
            "policy",
            "explain",
            "--agent",
            "ops",
            "--tool",
            "alpha__add",
            "--snapshot",
            "draft",
        ],
    );
    assert!(err.contains("broken"), "{err}");
}

#[test]
fn tool_results_are_held_against_their_pinned_output_schema() {
    let (_a, pa) = py_server("alpha", &["--broken-output"]);
    let g = Gateway::start(&[], CONFIG);
    add_capability(&g, "alpha", pa);
    approve_tester(&g);
    let structured = |r: &RawResponse| r.json()["result"]["structuredContent"].clone();

    // Default `report`: results pass; the broken one too (the gateway logs it).
    let r = call(&g, "alpha__add", json!({"a": 1, "b": 2}));
    assert_eq!(structured(&r), json!({"result": 3}), "{}", r.text());
    let r = call(&g, "alpha__bad_add", json!({"a": 1, "b": 2}));
    assert_eq!(structured(&r), json!({"result": "3"}), "{}", r.text());

    let counted = |m: &str| -> u64 {
        m.lines()
            .filter(|l| l.starts_with("portcullis_output_schema_mismatches_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(counted(&g.metrics()), 1, "{}", g.metrics());

    // `enforce`: the broken result is withheld, naming where it breaks the schema.
    ok(
        &g,
        &["capability", "edit", "alpha", "--output-schema", "enforce"],
    );
    ok(&g, &["approve", "--note", "enforce outputs"]);
    let r = call(&g, "alpha__bad_add", json!({"a": 1, "b": 2}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.reason(), "output_schema_invalid", "{}", r.text());
    let data = &r.json()["error"]["data"];
    assert_eq!(
        (&data["pointer"], &data["keyword"]),
        (&json!("/result"), &json!("type")),
        "{data}"
    );
    assert!(
        !r.text().contains("\"3\""),
        "the result is not shown: {}",
        r.text()
    );
    let r = call(&g, "alpha__add", json!({"a": 1, "b": 2}));
    assert_eq!(structured(&r), json!({"result": 3}), "{}", r.text());
    // Through a 2025-11-25 session too (SSE responses pass the same check).
    let sid = initialize(g.plain_port);
    let body = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                      "params": {"name": "alpha__bad_add", "arguments": {"a": 2, "b": 2}}});
    let r = post(
        g.plain_port,
        &[
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        &body.to_string(),
    );
    let m = r.message();
    assert_eq!(
        m["error"]["data"]["reason"],
        json!("output_schema_invalid"),
        "{m}"
    );
    assert_eq!(m["id"], json!(3));

    assert_eq!(counted(&g.metrics()), 3);

    // `off`: nothing is checked.
    ok(
        &g,
        &["capability", "edit", "alpha", "--output-schema", "off"],
    );
    ok(&g, &["approve", "--note", "outputs unchecked"]);
    let r = call(&g, "alpha__bad_add", json!({"a": 1, "b": 2}));
    assert_eq!(structured(&r), json!({"result": "3"}), "{}", r.text());
}

#[test]
fn odd_arguments_are_refused_or_decided_without_harm() {
    let (_a, pa) = py_server("alpha", &[]);
    let g = Gateway::start(&[], CONFIG);
    add_capability(&g, "alpha", pa);
    approve_tester(&g);
    policy(
        &g,
        "no-big-adds",
        r#"forbid(principal, action == Action::"call", resource == Tool::"alpha__add") when { context.arguments has a && context.arguments.a > 100 };"#,
    );
    ok(&g, &["approve", "--note", "forbid"]);

    // Arguments that are not an object never reach the upstream.
    for args in [json!([1, 2]), json!("a=1"), json!(7), json!(null)] {
        let r = call(&g, "alpha__add", args.clone());
        assert_eq!(r.reason(), "schema_invalid", "{args}: {}", r.text());
        assert_eq!(
            r.json()["error"]["data"]["keyword"],
            json!("type"),
            "{args}"
        );
    }
    // A huge array and deep nesting beside the real arguments: decided on what policies read, the
    // forbid still fires, and a small call still goes through.
    let pad: Vec<u32> = vec![0; 200_000];
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!({"d": deep});
    }
    let r = call(
        &g,
        "alpha__add",
        json!({"a": 500, "b": 1, "pad": pad, "deep": deep}),
    );
    assert_eq!(
        r.reason(),
        "policy_denied",
        "{}",
        &r.text()[..200.min(r.text().len())]
    );
    let r = call(
        &g,
        "alpha__add",
        json!({"a": 5, "b": 1, "pad": pad, "deep": deep}),
    );
    assert_eq!(r.status, 200);
    assert!(
        r.json()["result"].is_object(),
        "{}",
        &r.text()[..200.min(r.text().len())]
    );
    assert_eq!(received(&g), "add:5,1");
}

#[test]
fn mcp_param_headers_must_agree_with_the_arguments() {
    let (_c, pc) = conformance_server();
    let g = Gateway::start(&[], CONFIG);
    add_capability(&g, "conf", pc);
    approve_tester(&g);
    let tool = "conf__test_custom_header";
    let send = |header: Option<&str>, region: &str| {
        let body = modern_body(
            9,
            "tools/call",
            json!({"name": tool, "arguments": {"region": region}}),
        );
        let mut h = vec![
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", tool),
        ];
        if let Some(v) = header {
            h.push(("Mcp-Param-Region", v));
        }
        post(g.plain_port, &h, &body)
    };
    // Agreeing headers, plain or in the base64 wrapper, reach the upstream (which checks them too).
    for header in ["us-west1", "=?base64?dXMtd2VzdDE=?="] {
        let r = send(Some(header), "us-west1");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.json()["result"]["content"][0]["text"],
            json!("region us-west1"),
            "{}",
            r.text()
        );
    }
    // A header that disagrees with the body, or is missing, is refused before the upstream.
    let r = send(Some("eu-west1"), "us-west1");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.reason(), "header_mismatch", "{}", r.text());
    assert_eq!(
        r.json()["error"]["data"]["header"],
        json!("mcp-param-region")
    );
    assert_eq!(r.json()["id"], json!(9));
    let r = send(None, "us-west1");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.reason(), "missing_header", "{}", r.text());
}
