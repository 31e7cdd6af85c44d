//! Bad input gets a clear error with a stable `data.reason`, and nothing hangs: one test per case, each
//! against the real binary on loopback.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use portcullis_tests::*;

const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

fn gw() -> Gateway {
    let g = Gateway::start(&[], "");
    approve_tester(&g);
    g
}

fn session_headers(sid: &str) -> [(&str, &str); 2] {
    [
        ("mcp-session-id", sid),
        ("mcp-protocol-version", "2025-11-25"),
    ]
}

#[test]
fn malformed_json_is_parse_error() {
    let g = gw();
    let r = post(g.plain_port, &[], r#"{"jsonrpc":"2.0","id":1,"#);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], json!(-32700));
    assert_eq!(r.reason(), "parse_error");
}

#[test]
fn invalid_jsonrpc_is_invalid_request() {
    let g = gw();
    for body in [
        r#"{"id":1,"method":"tools/list"}"#,
        r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
        "42",
    ] {
        let r = post(g.plain_port, &[], body);
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["error"]["code"], json!(-32600), "{body}");
        assert_eq!(r.reason(), "invalid_request", "{body}");
    }
}

#[test]
fn invalid_utf8_is_refused() {
    let g = gw();
    let mut h = JSON_HEADERS.to_vec();
    h.push(("x-test", "utf8"));
    let r = request(
        g.plain_port,
        "POST",
        "/mcp",
        &h,
        b"{\"jsonrpc\":\"2.0\",\"method\":\"\xff\xfe\"}",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.reason(), "invalid_utf8");
}

#[test]
fn batches_are_refused() {
    let g = gw();
    let r = post(g.plain_port, &[], &format!("[{LIST},{LIST}]"));
    assert_eq!(r.status, 400);
    assert_eq!(r.reason(), "batch_unsupported");
}

#[test]
fn body_over_limit_is_413_both_sides_of_the_bound() {
    let g = Gateway::start(&[], "limits:\n  body_bytes_max: 1000\n");
    approve_tester(&g);
    let sid = initialize(g.plain_port);
    // Exactly at the bound: parsed (and answered as a normal request).
    let pad = |total: usize| {
        let base = r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"p":""}}"#;
        let mut s = base.replace(
            r#""p":"""#,
            &format!(r#""p":"{}""#, "x".repeat(total - base.len())),
        );
        s.truncate(total);
        s
    };
    let at = pad(1000);
    assert_eq!(at.len(), 1000);
    let r = post(g.plain_port, &session_headers(&sid), &at);
    assert_eq!(r.status, 200, "{}", r.text());
    let over = pad(1001);
    let r = post(g.plain_port, &session_headers(&sid), &over);
    assert_eq!(r.status, 413);
    assert_eq!(r.reason(), "payload_too_large");
}

#[test]
fn depth_bomb_is_refused_before_parsing() {
    let g = gw();
    let depth = 100_000;
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"a":{}{}}}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let r = post(g.plain_port, &[], &body);
    assert_eq!(r.status, 400);
    assert_eq!(r.reason(), "json_too_deep");
    // Still serving.
    assert_eq!(
        request(g.admin_port, "GET", "/healthz", &[], b"")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn wrong_content_type_is_415() {
    let g = gw();
    let r = request(
        g.plain_port,
        "POST",
        "/mcp",
        &[
            ("content-type", "text/plain"),
            ("accept", "application/json, text/event-stream"),
        ],
        LIST.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 415);
    assert_eq!(r.reason(), "unsupported_media_type");
}

#[test]
fn missing_or_wrong_accept_is_406() {
    let g = gw();
    for accept in [None, Some("application/json"), Some("text/html")] {
        let mut h = vec![("content-type", "application/json")];
        if let Some(a) = accept {
            h.push(("accept", a));
        }
        let r = request(g.plain_port, "POST", "/mcp", &h, LIST.as_bytes()).unwrap();
        assert_eq!(r.status, 406, "{accept:?}");
        assert_eq!(r.reason(), "not_acceptable");
    }
}

#[test]
fn unknown_protocol_version_is_refused_with_supported_list() {
    let g = gw();
    let sid = initialize(g.plain_port);
    let r = post(
        g.plain_port,
        &[
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "1999-01-01"),
        ],
        LIST,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.reason(), "unsupported_protocol_version");
    assert_eq!(r.json()["error"]["data"]["requested"], json!("1999-01-01"));
    let body = modern_body(1, "tools/list", json!({})).replace("2026-07-28", "2030-01-01");
    let r = post(
        g.plain_port,
        &[
            ("mcp-protocol-version", "2030-01-01"),
            ("mcp-method", "tools/list"),
        ],
        &body,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], json!(-32022));
    assert!(r.json()["error"]["data"]["supported"]
        .as_array()
        .unwrap()
        .contains(&json!("2026-07-28")));
}

#[test]
fn modern_header_body_mismatch_is_refused() {
    let g = gw();
    let body = modern_body(1, "tools/call", json!({"name": "a__echo", "arguments": {}}));
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"),
                ("mcp-name", "a__echo"),
            ],
            "header_mismatch",
        ),
        (
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "a__other"),
            ],
            "header_mismatch",
        ),
        (
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
            ],
            "missing_header",
        ),
        (
            &[("mcp-method", "tools/call"), ("mcp-name", "a__echo")],
            "missing_header",
        ),
    ];
    for (headers, reason) in cases {
        let r = post(g.plain_port, headers, &body);
        assert_eq!(r.status, 400, "{headers:?}");
        assert_eq!(r.json()["error"]["code"], json!(-32020), "{headers:?}");
        assert_eq!(r.reason(), reason, "{headers:?}");
    }
}

#[test]
fn session_rules() {
    let g = gw();
    let r = post(g.plain_port, &[], LIST);
    assert_eq!((r.status, r.reason().as_str()), (400, "session_required"));
    let r = post(
        g.plain_port,
        &[("mcp-session-id", "0000000000000000000000000000000000000000")],
        LIST,
    );
    assert_eq!((r.status, r.reason().as_str()), (404, "session_not_found"));
    let sid = initialize(g.plain_port);
    let r = request(
        g.plain_port,
        "DELETE",
        "/mcp",
        &[("mcp-session-id", &sid)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let r = post(g.plain_port, &session_headers(&sid), LIST);
    assert_eq!((r.status, r.reason().as_str()), (404, "session_not_found"));
}

#[test]
fn unknown_tool_and_method() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[("alpha", port)], "");
    let sid = initialize(g.plain_port);
    for name in ["nobody__echo", "plain"] {
        let body = json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":name,"arguments":{}}}).to_string();
        let r = post(g.plain_port, &session_headers(&sid), &body);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["id"], json!(5));
        assert_eq!(r.reason(), "tool_not_found", "{name}");
    }
    let r = post(
        g.plain_port,
        &session_headers(&sid),
        r#"{"jsonrpc":"2.0","id":6,"method":"no/such"}"#,
    );
    assert_eq!(r.json()["error"]["code"], json!(-32601));
    assert_eq!(r.reason(), "method_not_found");
    // 2026-07-28 says 404 for an unknown method.
    let r = post(
        g.plain_port,
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "no/such"),
        ],
        &modern_body(7, "no/such", json!({})),
    );
    assert_eq!((r.status, r.reason().as_str()), (404, "method_not_found"));
}

#[test]
fn upstream_down_is_upstream_unavailable() {
    let dead = free_port(); // nothing listens there
    let g = Gateway::start(
        &[("gone", dead)],
        "limits:\n  upstream_connect_timeout: 2s\n",
    );
    let sid = initialize(g.plain_port);
    let body = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"gone__echo","arguments":{"text":"x"}}}"#;
    let r = post(g.plain_port, &session_headers(&sid), body);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], json!(9));
    assert_eq!(r.reason(), "upstream_unavailable");
    // The list still answers (empty) rather than failing as a whole.
    let r = post(g.plain_port, &session_headers(&sid), LIST);
    assert_eq!(r.json()["result"]["tools"], json!([]));
}

#[test]
fn upstream_refusing_mid_request_is_upstream_unavailable() {
    // Accepts, reads the request, closes without a byte.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(16) {
            let Ok(mut s) = s else { continue };
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b);
        }
    });
    let g = Gateway::start(&[("rude", port)], "");
    let sid = initialize(g.plain_port);
    let body = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"rude__x","arguments":{}}}"#;
    let r = post(g.plain_port, &session_headers(&sid), body);
    assert_eq!(r.reason(), "upstream_protocol_error", "{}", r.text());
}

#[test]
fn slow_upstream_is_upstream_timeout() {
    // Accepts and reads, then never answers.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().take(16) {
            let Ok(mut s) = s else { continue };
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b);
            held.push(s);
        }
    });
    let g = Gateway::start(
        &[("slow", port)],
        "limits:\n  upstream_response_timeout: 500ms\n",
    );
    let sid = initialize(g.plain_port);
    let body = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"slow__x","arguments":{}}}"#;
    let r = post(g.plain_port, &session_headers(&sid), body);
    assert_eq!(r.json()["id"], json!(4));
    assert_eq!(r.reason(), "upstream_timeout");
}

#[test]
fn headers_one_byte_at_a_time_are_cut_off() {
    let g = Gateway::start(&[], "limits:\n  header_read_timeout: 1s\n");
    approve_tester(&g);
    let mut s = TcpStream::connect(("127.0.0.1", g.plain_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
    let mut cut = false;
    for b in head.iter().cycle().take(200) {
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        // Peek without blocking long: has the gateway answered?
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        let got = s.read(&mut buf);
        s.set_nonblocking(false).unwrap();
        match got {
            Ok(0) => {
                cut = true;
                break;
            }
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
                assert!(text.contains("request_timeout"), "{text}");
                cut = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(cut, "a client trickling headers was never cut off");
}

#[test]
fn oversized_headers_are_431() {
    let g = Gateway::start(&[], "limits:\n  header_bytes_max: 2048\n");
    approve_tester(&g);
    let big = "x".repeat(4096);
    let r = request(
        g.plain_port,
        "POST",
        "/mcp",
        &[("x-big", &big)],
        LIST.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 431);
    assert_eq!(r.reason(), "headers_too_large");
}

#[test]
fn foreign_origin_is_403_and_other_paths_404() {
    let g = gw();
    let r = post(g.plain_port, &[("origin", "http://evil.example")], LIST);
    assert_eq!((r.status, r.reason().as_str()), (403, "origin_not_allowed"));
    let r = request(g.plain_port, "GET", "/nope", &[], b"").unwrap();
    assert_eq!(r.status, 404);
    let r = request(g.plain_port, "PUT", "/mcp", &[], b"").unwrap();
    assert_eq!(r.status, 405);
}

/// True when the gateway closes `s` (EOF or reset) within the read timeout, reading whatever it sent first.
fn closed_by_gateway(s: &mut TcpStream) -> (bool, String) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (true, String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn idle_connections_are_closed_after_idle_timeout() {
    let g = Gateway::start_with(&[], "limits:\n  idle_timeout: 1s\n", &["--cores", "1"]);
    approve_tester(&g);
    let mut s = TcpStream::connect(("127.0.0.1", g.plain_port)).unwrap();
    let (closed, sent) = closed_by_gateway(&mut s);
    assert!(closed);
    assert_eq!(sent, "", "an idle close needs no response");
}

#[test]
fn a_body_that_stops_arriving_gets_408() {
    let g = Gateway::start_with(&[], "limits:\n  request_timeout: 1s\n", &["--cores", "1"]);
    approve_tester(&g);
    let mut s = TcpStream::connect(("127.0.0.1", g.plain_port)).unwrap();
    s.write_all(b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: 100\r\n\r\n{\"jsonrpc\"").unwrap();
    let (closed, sent) = closed_by_gateway(&mut s);
    assert!(closed);
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert!(sent.contains("request_timeout"), "{sent}");
}

#[test]
fn connections_past_the_per_core_bound_are_closed() {
    let g = Gateway::start_with(
        &[],
        "limits:\n  connections_per_core_max: 2\n",
        &["--cores", "1"],
    );
    // Two connections at the bound are served...
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(("127.0.0.1", g.plain_port)).unwrap();
        s.write_all(b"GET /nope HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s).unwrap();
        assert_eq!(r.status, 404);
        held.push(s);
    }
    // ...the third is closed at once.
    let mut third = TcpStream::connect(("127.0.0.1", g.plain_port)).unwrap();
    let _ = third.write_all(b"GET /nope HTTP/1.1\r\nhost: x\r\n\r\n");
    let (closed, sent) = closed_by_gateway(&mut third);
    assert!(closed);
    assert_eq!(sent, "");
    assert!(g
        .metrics()
        .contains(r#"portcullis_connections_refused_total{core="0"} 1"#));
    // Room again once one closes.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    let r = request(g.plain_port, "GET", "/nope", &[], b"").unwrap();
    assert_eq!(r.status, 404);
}

#[test]
fn sessions_past_the_per_core_bound_are_refused() {
    let g = Gateway::start_with(
        &[],
        "limits:\n  sessions_per_core_max: 1\n",
        &["--cores", "1"],
    );
    approve_tester(&g);
    let _first = initialize(g.plain_port);
    let r = post(
        g.plain_port,
        &[],
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#,
    );
    assert_eq!((r.status, r.reason().as_str()), (503, "overloaded"));
}

#[test]
fn upstream_that_never_accepts_is_a_connect_timeout() {
    // A listener whose accept queue is full drops further SYNs: connecting to it hangs.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut filler = Vec::new();
    for _ in 0..4096 {
        match std::net::TcpStream::connect_timeout(
            &l.local_addr().unwrap(),
            Duration::from_millis(200),
        ) {
            Ok(s) => filler.push(s),
            Err(_) => break, // the queue is full
        }
    }
    let g = Gateway::start(
        &[("deaf", port)],
        "limits:\n  upstream_connect_timeout: 500ms\n",
    );
    let sid = initialize(g.plain_port);
    let body = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"deaf__x","arguments":{}}}"#;
    let r = post(g.plain_port, &session_headers(&sid), body);
    assert_eq!(r.reason(), "upstream_unavailable", "{}", r.text());
    drop(l);
}

#[test]
fn malformed_http_and_smuggling_shapes_are_refused() {
    let g = gw();
    for raw_req in [
        &b"GARBAGE\r\n\r\n"[..],
        b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /mcp HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n",
        b"POST /mcp HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let r = raw(g.plain_port, raw_req).unwrap();
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(raw_req));
        assert_eq!(r.reason(), "malformed_http", "{}", String::from_utf8_lossy(raw_req));
    }
}

#[test]
fn chunked_request_bodies_are_accepted() {
    let g = gw();
    let body = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"0"}}}"#;
    let (a, b) = body.split_at(40);
    let req = format!(
        "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n{}\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        auth_line(),
        a.len(),
        b.len()
    );
    let r = raw(g.plain_port, req.as_bytes()).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("mcp-session-id").is_some());
}
