//! HTTP/2 on the TLS listener (ALPN `h2`), driven by curl as a real HTTP/2 client we did not write.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use portcullis_tests::*;

fn curl_h2(g: &Gateway, headers: &[&str], body: &str) -> (String, String) {
    let cert = g.dir.path().join("data/tls-cert.pem");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-N", "--http2", "--cacert"]).arg(&cert);
    cmd.args(["-w", "\n%{http_version} %{http_code}", "-D", "-"]);
    cmd.args([
        "-H",
        "content-type: application/json",
        "-H",
        "accept: application/json, text/event-stream",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let auth = auth_line();
    if !auth.is_empty() {
        cmd.args(["-H", auth.trim_end()]);
    }
    cmd.args(["--data-binary", body])
        .arg(format!("https://127.0.0.1:{}/mcp", g.tls_port));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (resp, trailer) = text.rsplit_once('\n').unwrap();
    (resp.to_owned(), trailer.to_owned())
}

#[test]
fn mcp_over_http2_json_and_sse() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[("alpha", port)], "");
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}"#;
    let (resp, status) = curl_h2(&g, &[], init);
    assert_eq!(status, "2 200", "{resp}");
    let sid = resp
        .lines()
        .find_map(|l| l.strip_prefix("mcp-session-id: "))
        .expect("no session id")
        .trim()
        .to_owned();
    // A streamed tool call over HTTP/2: progress events, then the result, on one stream.
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"alpha__slow_count","arguments":{"n":3},"_meta":{"progressToken":"p"}}}"#;
    let h_sid = format!("mcp-session-id: {sid}");
    let (resp, status) = curl_h2(&g, &[&h_sid, "mcp-protocol-version: 2025-11-25"], call);
    assert_eq!(status, "2 200", "{resp}");
    assert!(resp.contains("content-type: text/event-stream"), "{resp}");
    assert_eq!(resp.matches("notifications/progress").count(), 3, "{resp}");
    assert!(resp.contains("counted 3"), "{resp}");
    // A 2026-07-28 request over HTTP/2.
    let body = modern_body(
        3,
        "tools/call",
        json!({"name": "alpha__add", "arguments": {"a": 1, "b": 2}}),
    );
    let (resp, status) = curl_h2(
        &g,
        &[
            "mcp-protocol-version: 2026-07-28",
            "mcp-method: tools/call",
            "mcp-name: alpha__add",
        ],
        &body,
    );
    assert_eq!(status, "2 200", "{resp}");
    assert!(resp.contains(r#""resultType":"complete""#), "{resp}");
}

#[test]
fn http2_body_limit_and_bad_json() {
    let g = Gateway::start(&[], "limits:\n  body_bytes_max: 1000\n");
    approve_tester(&g);
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"p":"{}"}}}}"#,
        "x".repeat(2000)
    );
    let (resp, status) = curl_h2(&g, &[], &big);
    assert_eq!(status, "2 413", "{resp}");
    assert!(resp.contains("payload_too_large"), "{resp}");
    let (resp, status) = curl_h2(&g, &[], "{nope");
    assert_eq!(status, "2 400", "{resp}");
    assert!(resp.contains("parse_error"), "{resp}");
}
