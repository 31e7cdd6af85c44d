//! Official MCP SDK clients through the gateway to official SDK servers, in every revision each speaks.
//!
//! Upstreams: `alpha` (Python `mcp` 2.3, both revisions), `beta` (TypeScript SDK 1.x, 2025-11-25 only),
//! `gamma` (TypeScript `@modelcontextprotocol/server` 2.x, both revisions). The gateway speaks to each in
//! the revision it supports, whatever the client speaks.

#![allow(clippy::unwrap_used)]

use portcullis_tests::*;

struct Fleet {
    gw: Gateway,
    _upstreams: Vec<Proc>,
}

fn fleet() -> Fleet {
    let (a, pa) = py_server("alpha", &[]);
    let (b, pb) = ts_server("v1", "beta");
    let (c, pc) = ts_server("v2", "gamma");
    let gw = Gateway::start(&[("alpha", pa), ("beta", pb), ("gamma", pc)], "");
    Fleet {
        gw,
        _upstreams: vec![a, b, c],
    }
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

fn check_list(v: &Value) {
    let tools = names(v, "tools");
    for up in ["alpha", "beta", "gamma"] {
        for t in ["echo", "add", "slow_count", "whoami"] {
            assert!(
                tools.contains(&format!("{up}__{t}")),
                "missing {up}__{t} in {tools:?}"
            );
        }
    }
    // Four shared tools on each upstream, plus the Python peer's own.
    let extras = [
        "alpha__announce",
        "alpha__confirm",
        "alpha__credentials",
        "alpha__meta_keys",
        "alpha__redefine",
        "alpha__received_calls",
    ];
    assert!(
        extras.iter().all(|e| tools.iter().any(|t| t == e)),
        "{tools:?}"
    );
    assert_eq!(tools.len(), 12 + extras.len(), "{tools:?}");
}

fn check_calls(run: &dyn Fn(&str, &[&str]) -> Value) {
    let v = run(
        "call",
        &["--tool", "beta__add", "--args", r#"{"a":2,"b":40}"#],
    );
    assert_eq!(v["text"], json!("42"), "{v}");
    for up in ["alpha", "beta", "gamma"] {
        let v = run(
            "call",
            &["--tool", &format!("{up}__whoami"), "--args", "{}"],
        );
        assert_eq!(v["text"], json!(up), "{v}");
    }
    let v = run(
        "call",
        &["--tool", "gamma__echo", "--args", r#"{"text":"héllo ✓"}"#],
    );
    assert_eq!(v["text"], json!("héllo ✓"), "{v}");
    // Streaming: progress notifications pass through from both kinds of upstream.
    for up in ["alpha", "beta", "gamma"] {
        let v = run("progress", &["--prefix", &format!("{up}__"), "--n", "3"]);
        assert_eq!(v["progress"].as_array().map(Vec::len), Some(3), "{up}: {v}");
    }
}

#[test]
fn python_client_in_both_revisions() {
    let f = fleet();
    let url = f.gw.url();
    for rev in ["2025-11-25", "2026-07-28"] {
        let v = py_client(&url, rev, "list", &[]);
        assert_eq!(v["negotiated"], json!(rev));
        check_list(&v);
        check_calls(&|scenario, extra| py_client(&url, rev, scenario, extra));
    }
    let v = py_client(
        &url,
        "2025-11-25",
        "session-delete",
        &["--prefix", "beta__"],
    );
    assert!(
        v["session_id"].as_str().is_some_and(|s| s.len() == 40),
        "{v}"
    );
}

#[test]
fn typescript_v1_client_in_2025_11_25() {
    let f = fleet();
    let url = f.gw.url();
    let v = ts_client("v1", &url, "2025-11-25", "list", &[]);
    assert_eq!(v["negotiated"], json!("2025-11-25"));
    check_list(&v);
    check_calls(&|scenario, extra| ts_client("v1", &url, "2025-11-25", scenario, extra));
    ts_client(
        "v1",
        &url,
        "2025-11-25",
        "session-delete",
        &["--prefix", "alpha__"],
    );
}

#[test]
fn typescript_v2_client_in_both_revisions() {
    let f = fleet();
    let url = f.gw.url();
    for rev in ["2025-11-25", "2026-07-28"] {
        let v = ts_client("v2", &url, rev, "list", &[]);
        assert_eq!(v["negotiated"], json!(rev));
        check_list(&v);
        check_calls(&|scenario, extra| ts_client("v2", &url, rev, scenario, extra));
    }
    ts_client(
        "v2",
        &url,
        "2025-11-25",
        "session-delete",
        &["--prefix", "gamma__"],
    );
}

#[test]
fn list_changed_reaches_the_sessions_get_stream() {
    use std::io::Write;
    // alpha speaks 2026-07-28 upstream (followed by subscriptions/listen), beta only 2025-11-25 (followed on
    // its own GET stream with the agent's upstream session).
    let (_a, pa) = py_server("alpha", &[]);
    let (_b, pb) = ts_server("v1", "beta");
    let g = Gateway::start(&[("alpha", pa), ("beta", pb)], "");
    let sid = initialize(g.plain_port);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", g.plain_port)).unwrap();
    write!(
        s,
        "GET /mcp HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: 2025-11-25\r\n\r\n"
    )
    .unwrap();
    let head = wait_for_event(&mut s, "\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    let r = post(
        g.plain_port,
        &[
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"alpha__announce","arguments":{}}}"#,
    );
    assert!(r.text().contains("announced"), "{}", r.text());
    let seen = wait_for_event(&mut s, "notifications/tools/list_changed");
    assert!(
        !seen.contains("subscriptionId"),
        "gateway-internal subscription leaked: {seen}"
    );
}

#[test]
fn session_agents_reach_a_modern_only_upstream() {
    // gamma refuses the 2025-11-25 handshake (-32022); a 2025-11-25 agent is served through 2026-07-28
    // requests built from its session's capabilities, and the gateway remembers the upstream's era.
    let (_c, pc) = ts_server_with("v2", "gamma", &["--modern-only"]);
    let (_b, pb) = ts_server("v1", "beta");
    let g = Gateway::start(&[("gamma", pc), ("beta", pb)], "");
    for _ in 0..2 {
        let v = py_client(
            &g.url(),
            "2025-11-25",
            "call",
            &["--tool", "gamma__whoami", "--args", "{}"],
        );
        assert_eq!(v["text"], json!("gamma"), "{v}");
    }
    let v = py_client(&g.url(), "2025-11-25", "progress", &["--prefix", "gamma__"]);
    assert_eq!(v["progress"].as_array().map(Vec::len), Some(3), "{v}");
    // And a 2026-07-28 agent reaches the legacy-only one.
    let v = py_client(
        &g.url(),
        "2026-07-28",
        "call",
        &["--tool", "beta__whoami", "--args", "{}"],
    );
    assert_eq!(v["text"], json!("beta"), "{v}");
}

#[test]
fn meta_addressed_to_the_gateway_never_reaches_an_upstream() {
    // A 2026-07-28 agent's `_meta` goes upstream with the agent's own keys, without those under the
    // gateway's prefix, in whichever revision the upstream is spoken to.
    let (_a, pa) = py_server("alpha", &[]);
    let g = Gateway::start(&[("alpha", pa)], "");
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
    "name": "alpha__meta_keys", "arguments": {},
    "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
        "dev.portcullis/probe": "for the gateway only",
        "com.example/trace": "t-1",
        "progressToken": "p-1"
    }}});
    let r = post(
        g.plain_port,
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "alpha__meta_keys"),
        ],
        &body.to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_str(&r.text()).unwrap();
    let text = v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    let keys: Vec<String> = serde_json::from_str(text).unwrap_or_default();
    assert!(
        keys.iter().any(|k| k == "com.example/trace"),
        "the agent's own key is forwarded: {v}"
    );
    assert!(
        !keys.iter().any(|k| k.starts_with("dev.portcullis/")),
        "a key addressed to the gateway reached the upstream: {v}"
    );
}

#[test]
fn concurrent_first_calls_all_learn_a_modern_only_upstream() {
    // On one core, several first calls race to open a 2025-11-25 session with an upstream that refuses it;
    // every one of them must fall back to 2026-07-28, not only the one that learned it first.
    let (_c, pc) = ts_server_with("v2", "gamma", &["--modern-only"]);
    let g = Gateway::start_with(&[("gamma", pc)], "", &["--cores", "1"]);
    let sid = initialize(g.plain_port);
    let port = g.plain_port;
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let sid = sid.clone();
            std::thread::spawn(move || {
                let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                    "params": {"name": "gamma__whoami", "arguments": {}}});
                post(
                    port,
                    &[
                        ("mcp-session-id", sid.as_str()),
                        ("mcp-protocol-version", "2025-11-25"),
                    ],
                    &body.to_string(),
                )
            })
        })
        .collect();
    for c in calls {
        let r = c.join().unwrap();
        let v = r.message();
        assert_eq!(v["result"]["content"][0]["text"], json!("gamma"), "{v}");
    }
}

#[test]
fn input_required_round_trip_reaches_the_same_upstream() {
    let (_a, pa) = py_server("alpha", &[]);
    let (_z, pz) = py_server("zeta", &[]);
    let g = Gateway::start(&[("alpha", pa), ("zeta", pz)], "");
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "zeta__confirm"),
    ];
    let caps = json!({"elicitation": {"form": {}}});
    let call = |id: u64, extra: Value| {
        let mut params = json!({"name": "zeta__confirm", "arguments": {"action": "deploy"}});
        for (k, v) in extra.as_object().unwrap() {
            params[k] = v.clone();
        }
        let mut body: Value = serde_json::from_str(&modern_body(id, "tools/call", params)).unwrap();
        body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"] = caps.clone();
        post(g.plain_port, &headers, &body.to_string())
    };
    let first = call(1, json!({}));
    let v = first.json();
    assert_eq!(v["result"]["resultType"], json!("input_required"), "{v}");
    assert_eq!(
        v["result"]["inputRequests"]["ok"]["method"],
        json!("elicitation/create"),
        "{v}"
    );
    let state = v["result"]["requestState"]
        .as_str()
        .expect("requestState")
        .to_owned();
    // The retry carries a new id, the answers and the exact state; the namespaced name routes it back to zeta,
    // whose sealed state would be refused by any other upstream.
    let retry = call(
        2,
        json!({"inputResponses": {"ok": {"action": "accept", "content": {"ok": true}}}, "requestState": state}),
    );
    let v = retry.json();
    assert_eq!(v["id"], json!(2));
    assert_eq!(v["result"]["resultType"], json!("complete"), "{v}");
    assert!(
        v["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("deploy allowed by zeta"),
        "{v}"
    );
    // Tampered state: the upstream's refusal reaches the agent unchanged.
    let bad = call(
        3,
        json!({"inputResponses": {"ok": {"action": "accept", "content": {"ok": true}}}, "requestState": "v1.tampered"}),
    );
    assert_eq!(bad.json()["error"]["code"], json!(-32602), "{}", bad.text());
}
