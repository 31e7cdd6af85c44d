//! HTTP/3 on the MCP TLS port (UDP), driven by aioquic (PyPI) as a real HTTP/3 client we did not write:
//! both MCP revisions, JSON and SSE answers, governance and audit through the same path as TCP, and
//! what a QUIC listener must survive (garbage datagrams, truncated Initials, stream floods, idle
//! connections, a client that moves to a new port).

#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::{json, Value};

use portcullis_tests::*;

/// Run the aioquic client against the gateway's HTTP/3 endpoint; its JSON line.
fn h3(g: &Gateway, args: &[&str]) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(peers_dir().join("h3_client.py"))
        .arg(format!("https://127.0.0.1:{}/mcp", g.tls_port))
        .arg("--ca")
        .arg(g.data().join("tls-cert.pem"))
        .args(args);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "h3_client printed no JSON: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn req(headers: Value, body: Value) -> String {
    json!({"headers": headers, "body": body}).to_string()
}

fn modern(method: &str, name: Option<&str>, params: Value) -> String {
    let mut h = json!({"mcp-protocol-version": "2026-07-28", "mcp-method": method});
    if let Some(n) = name {
        h["mcp-name"] = json!(n);
    }
    let body: Value = serde_json::from_str(&modern_body(1, method, params)).unwrap();
    req(h, body)
}

fn ok_h3(v: &Value) -> &Vec<Value> {
    assert_eq!(v["ok"], json!(true), "{v}");
    v["responses"].as_array().unwrap()
}

#[test]
fn aioquic_lists_and_calls_tools_over_http3_on_both_revisions_governed_and_audited() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[], "pinning:\n  recheck_interval: 1h\n");
    add_capability(&g, "alpha", port);
    let (ops, viewer) = ops_and_viewer(&g);
    ok(&g, &["approve"]);

    // 2026-07-28: list and call, JSON answers.
    let v = h3(
        &g,
        &[
            "--bearer",
            &ops,
            "--request",
            &modern("tools/list", None, json!({})),
            "--request",
            &modern(
                "tools/call",
                Some("alpha__echo"),
                json!({"name": "alpha__echo", "arguments": {"text": "over quic"}}),
            ),
        ],
    );
    let rs = ok_h3(&v);
    assert_eq!(v["alpn"], json!("h3"));
    assert_eq!(rs[0]["status"], json!(200), "{v}");
    assert!(
        rs[0]["body"].as_str().unwrap().contains("alpha__echo"),
        "{v}"
    );
    assert!(rs[1]["body"].as_str().unwrap().contains("over quic"), "{v}");
    assert!(rs[0]["headers"]["portcullis-session"].is_string(), "{v}");

    // 2025-11-25: initialize, then a call answered as an SSE stream (progress notifications).
    let init = req(
        json!({}),
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "aioquic", "version": "1"}}}),
    );
    let v = h3(&g, &["--bearer", &ops, "--request", &init]);
    let rs = ok_h3(&v);
    let sid = rs[0]["headers"]["mcp-session-id"]
        .as_str()
        .unwrap()
        .to_owned();
    let slow = req(
        json!({"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "alpha__slow_count", "arguments": {"n": 3}, "_meta": {"progressToken": "p1"}}}),
    );
    let v = h3(&g, &["--bearer", &ops, "--request", &slow]);
    let rs = ok_h3(&v);
    assert_eq!(
        rs[0]["headers"]["content-type"],
        json!("text/event-stream"),
        "{v}"
    );
    let body = rs[0]["body"].as_str().unwrap();
    assert_eq!(body.matches("notifications/progress").count(), 3, "{body}");
    assert!(body.contains("counted 3"), "{body}");
    let rows = ok(&g, &["session", "show", &sid]);
    assert_eq!(rows["transport"], json!("h3"), "{rows}");

    // Governance: the viewer may not call add; no credential is no entry.
    let v = h3(
        &g,
        &[
            "--bearer",
            &viewer,
            "--request",
            &modern(
                "tools/call",
                Some("alpha__add"),
                json!({"name": "alpha__add", "arguments": {"a": 1, "b": 2}}),
            ),
        ],
    );
    let body = ok_h3(&v)[0]["body"].as_str().unwrap().to_owned();
    assert!(
        body.contains("policy_denied") || body.contains("tool_not_found"),
        "{body}"
    );
    let v = h3(&g, &["--request", &modern("tools/list", None, json!({}))]);
    assert_eq!(ok_h3(&v)[0]["status"], json!(401), "{v}");

    // The audit trail names the transport.
    let out = Command::new(gateway_bin())
        .args(["audit", "search", "--data-dir"])
        .arg(g.data())
        .output()
        .unwrap();
    let h3_records = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["transport"] == json!("h3"))
        .count();
    assert!(h3_records >= 5, "{h3_records}");

    // HTTPS answers over TCP (HTTP/1.1 and HTTP/2) advertise HTTP/3 on the same port; plain HTTP does not.
    for version in ["--http1.1", "--http2"] {
        let out = Command::new("curl")
            .args(["-sS", "-D", "-", "-o", "/dev/null", version, "--cacert"])
            .arg(g.data().join("tls-cert.pem"))
            .args([
                "-H",
                "content-type: application/json",
                "-H",
                "accept: application/json, text/event-stream",
            ])
            .args([
                "-H",
                "mcp-protocol-version: 2026-07-28",
                "-H",
                "mcp-method: tools/list",
            ])
            .args(["-H", &format!("authorization: Bearer {ops}")])
            .args(["--data-binary", &modern_body(1, "tools/list", json!({}))])
            .arg(format!("https://127.0.0.1:{}/mcp", g.tls_port))
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(
            head.contains(&format!("alt-svc: h3=\":{}\"; ma=86400", g.tls_port)),
            "{version}: {head}"
        );
    }
    act_as(&ops);
    let r = post(
        g.plain_port,
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
        ],
        &modern_body(1, "tools/list", json!({})),
    );
    assert_eq!(r.status, 200);
    assert!(r.header("alt-svc").is_none());
}

#[test]
fn a_quic_listener_survives_garbage_stream_floods_idling_and_clients_that_move() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(
        &[],
        "pinning:\n  recheck_interval: 1h\nlimits:\n  idle_timeout: 2s\n  h3_streams_per_connection_max: 4\n",
    );
    add_capability(&g, "alpha", port);
    let key = approve_tester(&g);
    let list = modern("tools/list", None, json!({}));

    // Random datagrams, a truncated Initial and a packet for no connection: dropped, and the next
    // client is served.
    let v = h3(
        &g,
        &["--bearer", &key, "--garbage", "500", "--request", &list],
    );
    assert_eq!(ok_h3(&v)[0]["status"], json!(200), "{v}");

    // Twenty requests at once on a connection that may have four open: the rest wait for room (the
    // client is told how many streams it may open), none is lost.
    let v = h3(
        &g,
        &[
            "--bearer",
            &key,
            "--streams",
            "20",
            "--streams-headers",
            r#"{"mcp-protocol-version":"2026-07-28","mcp-method":"tools/list"}"#,
        ],
    );
    assert_eq!(v["ok"], json!(true), "{v}");
    assert_eq!(v["answered"], json!(20), "{v}");

    // A connection silent past limits.idle_timeout is closed by the gateway.
    let v = h3(&g, &["--bearer", &key, "--request", &list, "--idle", "5"]);
    assert_eq!(v["ok"], json!(true), "{v}");
    assert!(!v["closed_by_server"].is_null(), "{v}");

    // A client that moves to a new local port after every answer, five times, with and without a new
    // connection id: the connection follows it, whichever core the new address would hash to.
    for new_cid in [false, true] {
        let mut args = vec!["--bearer", key.as_str(), "--rebind-every", "1"];
        if new_cid {
            args.push("--new-cid");
        }
        for _ in 0..6 {
            args.extend(["--request", list.as_str()]);
        }
        let v = h3(&g, &args);
        let rs = ok_h3(&v);
        assert_eq!(rs.len(), 6, "{v}");
        assert!(rs.iter().all(|r| r["status"] == json!(200)), "{v}");
        assert_eq!(v["rebound"].as_array().unwrap().len(), 5, "{v}");
    }
}

/// A counter's value from the gateway's `/metrics`.
fn metric(g: &Gateway, line_start: &str) -> u64 {
    g.metrics()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start}"))
}

#[test]
fn zero_rtt_serves_only_the_methods_an_operator_marked_safe_before_the_handshake() {
    let (_up, port) = py_server("alpha", &[]);
    let list = modern("tools/list", None, json!({}));
    let call = modern(
        "tools/call",
        Some("alpha__echo"),
        json!({"name": "alpha__echo", "arguments": {"text": "not early"}}),
    );

    // Off by default: a resumed client's requests all wait for the handshake (none counted early), and
    // the ticket offers no early data.
    let g = Gateway::start(&[], "pinning:\n  recheck_interval: 1h\n");
    add_capability(&g, "alpha", port);
    let key = approve_tester(&g);
    let v = h3(
        &g,
        &[
            "--bearer",
            &key,
            "--early",
            "--request",
            &list,
            "--request",
            &list,
        ],
    );
    assert_eq!(v["ok"], json!(true), "{v}");
    assert_eq!(v["ticket_max_early_data"].as_u64().unwrap_or(0), 0, "{v}");
    assert_eq!(
        metric(&g, "portcullis_h3_early_requests_total{outcome=\"served\"}"),
        0
    );
    drop(g);

    let g = Gateway::start_in(
        TempDir::new("gw"),
        "  h3_early_data_methods: [tools/list]\n",
        &[],
        "pinning:\n  recheck_interval: 1h\n",
        &["--cores", "2"],
    );
    add_capability(&g, "alpha", port);
    let key = approve_tester(&g);
    let v = h3(
        &g,
        &[
            "--bearer",
            &key,
            "--early",
            "--request",
            &list,
            "--request",
            &list,
            "--request",
            &call,
        ],
    );
    let rs = ok_h3(&v);
    assert!(v["ticket_max_early_data"].as_u64().unwrap() > 0, "{v}");
    // Both answered: the list at once, the call once the handshake completed.
    assert!(
        rs[0]["body"].as_str().unwrap().contains("alpha__echo"),
        "{v}"
    );
    assert!(rs[1]["body"].as_str().unwrap().contains("not early"), "{v}");
    // Which requests the gateway reads before the handshake completes depends on timing (on loopback
    // the client's Finished is a few microseconds behind its early data); what never happens is an
    // unsafe method served early. Calls alone, early: none is counted served.
    let served = metric(&g, "portcullis_h3_early_requests_total{outcome=\"served\"}");
    assert!(
        served <= 1,
        "only the list may have been served early: {served}"
    );
    let v = h3(
        &g,
        &[
            "--bearer",
            &key,
            "--early",
            "--request",
            &list,
            "--request",
            &call,
            "--request",
            &call,
        ],
    );
    let rs = ok_h3(&v);
    assert!(
        rs.iter()
            .all(|r| r["body"].as_str().unwrap().contains("not early")),
        "{v}"
    );
    let after = metric(&g, "portcullis_h3_early_requests_total{outcome=\"served\"}");
    assert_eq!(
        after, served,
        "no early call was served before the handshake"
    );
}

#[test]
fn client_certificates_name_agents_over_quic_and_a_flood_setting_makes_clients_prove_their_address()
{
    let pki = TempDir::new("pki");
    client_pki(&pki, &["viewer"], &["viewer"]);
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(
        &[],
        &format!(
            "pinning:\n  recheck_interval: 1h\nlimits:\n  h3_handshakes_before_retry: 0\nidentity:\n  mtls:\n    ca_file: {}\n",
            pki.path().join("ca.pem").display()
        ),
    );
    add_capability(&g, "alpha", port);
    ops_and_viewer(&g);
    ok(&g, &["approve"]);
    let list = modern("tools/list", None, json!({}));
    let cert = |name: &str| {
        [
            pki.path().join(format!("{name}.pem")).display().to_string(),
            pki.path().join(format!("{name}.key")).display().to_string(),
        ]
    };
    // The viewer's certificate, no bearer: the viewer's tools only.
    let [c, k] = cert("viewer");
    let v = h3(&g, &["--cert", &c, "--key", &k, "--request", &list]);
    let body = ok_h3(&v)[0]["body"].as_str().unwrap().to_owned();
    assert!(
        body.contains("alpha__echo") && !body.contains("alpha__add"),
        "{body}"
    );
    // The same name from a CA the gateway does not trust: no handshake.
    let [c, k] = cert("rogue-viewer");
    let v = h3(&g, &["--cert", &c, "--key", &k, "--request", &list]);
    assert_eq!(v["ok"], json!(false), "{v}");
    assert!(v["error"].as_str().unwrap().contains("certificate"), "{v}");
    // With h3_handshakes_before_retry at 0 every new client was sent a Retry first, and still served.
    assert!(metric(&g, "portcullis_h3_retries_total") >= 2);
}
