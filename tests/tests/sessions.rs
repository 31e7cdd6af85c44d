//! Operators' control of sessions: every core's sessions listed with their agent and identity, and
//! revoked by id, by agent or by API key, on whichever core owns them. A revoked session's next request
//! gets `session_revoked`, its open GET stream ends, and the audit trail names the operator.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use portcullis_tests::*;

fn list_on(port: u16, sid: &str) -> RawResponse {
    post(
        port,
        &[
            ("mcp-session-id", sid),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/list","params":{}}"#,
    )
}

#[test]
fn operators_list_and_revoke_sessions_on_every_core() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[], "pinning:\n  recheck_interval: 1h\n");
    add_capability(&g, "alpha", port);
    let (ops, viewer) = ops_and_viewer(&g);
    ok(&g, &["approve"]);
    act_as(&ops);
    let mine: Vec<String> = (0..6).map(|_| initialize(g.plain_port)).collect();
    for sid in &mine {
        assert_eq!(list_on(g.plain_port, sid).status, 200);
    }
    act_as(&viewer);
    let theirs = initialize(g.plain_port);

    let list = ok(&g, &["session", "list"]);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 7, "{list}");
    let ops_key_id = ops.split('_').nth(1).unwrap();
    for sid in &mine {
        let row = rows.iter().find(|r| r["id"] == json!(sid)).unwrap();
        assert_eq!(row["agent"], json!("ops"));
        assert_eq!(row["identity"], json!(format!("key:{ops_key_id}")), "{row}");
        assert_eq!(row["revision"], json!("2025-11-25"));
        assert_eq!(row["client"], json!("raw 0"));
    }
    let shown = ok(&g, &["session", "show", &mine[0]]);
    assert_eq!(shown["agent"], json!("ops"));

    // An open GET stream on one of ops' sessions.
    act_as(&ops);
    let mut stream = TcpStream::connect(("127.0.0.1", g.plain_port)).unwrap();
    write!(
        stream,
        "GET /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\nmcp-session-id: {}\r\nmcp-protocol-version: 2025-11-25\r\n{}\r\n",
        mine[0],
        auth_line()
    )
    .unwrap();
    let head = wait_for_event(&mut stream, "\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // One by id.
    let r = ok(&g, &["session", "revoke", &mine[1]]);
    assert_eq!(r["revoked"].as_array().unwrap().len(), 1, "{r}");
    let refused = list_on(g.plain_port, &mine[1]);
    assert_eq!(refused.status, 404);
    assert_eq!(refused.reason(), "session_revoked", "{}", refused.text());
    assert_eq!(list_on(g.plain_port, &mine[2]).status, 200);

    // Every session of the agent, on every core: the open stream ends.
    let r = ok(&g, &["session", "revoke", "--agent", "ops"]);
    assert_eq!(r["revoked"].as_array().unwrap().len(), 5, "{r}");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                rest.extend_from_slice(&buf[..n]);
                if rest.ends_with(b"0\r\n\r\n") {
                    break;
                }
            }
            Err(e) => panic!("the revoked session's stream did not end: {e}"),
        }
    }
    for sid in &mine {
        let r = list_on(g.plain_port, sid);
        assert_eq!(r.reason(), "session_revoked", "{sid}: {}", r.text());
    }
    act_as(&viewer);
    assert_eq!(
        list_on(g.plain_port, &theirs).status,
        200,
        "another agent's session went too"
    );

    // By API key.
    let viewer_key_id = viewer.split('_').nth(1).unwrap();
    let r = ok(&g, &["session", "revoke", "--key", viewer_key_id]);
    assert_eq!(r["revoked"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(list_on(g.plain_port, &theirs).reason(), "session_revoked");
    assert_eq!(ok(&g, &["session", "list"]).as_array().unwrap().len(), 0);
    // A forged id and another node's id are refused as unknown, not revoked.
    let r = ok(
        &g,
        &["session", "revoke", &format!("00ff{}", &mine[0][4..])],
    );
    assert_eq!(r["revoked"].as_array().unwrap().len(), 0);

    // The audit trail names the operator for each revocation.
    let out = Command::new(gateway_bin())
        .args(["audit", "search", "--data-dir"])
        .arg(g.data())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let revocations: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["method"] == json!("session/revoke"))
        .collect();
    assert_eq!(revocations.len(), 7, "{revocations:?}");
    assert!(revocations
        .iter()
        .all(|r| r["identity"] == json!("operator:alice")));
}

#[test]
fn an_initialize_flood_stops_at_the_agents_session_limit_and_bad_ids_are_unknown() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(
        &[],
        "pinning:\n  recheck_interval: 1h\nlimits:\n  sessions_per_agent_max: 3\n",
    );
    add_capability(&g, "alpha", port);
    let (ops, viewer) = ops_and_viewer(&g);
    ok(&g, &["approve"]);
    act_as(&ops);
    let mine: Vec<String> = (0..3).map(|_| initialize(g.plain_port)).collect();
    // Across both cores, however the connections landed.
    for _ in 0..5 {
        let r = post(
            g.plain_port,
            &[],
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"flood","version":"0"}}}"#,
        );
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.reason(), "session_limit", "{}", r.text());
        assert!(r.header("mcp-session-id").is_none());
    }
    // Another agent is not held back by this one.
    act_as(&viewer);
    let theirs = initialize(g.plain_port);
    assert_eq!(list_on(g.plain_port, &theirs).status, 200);
    // Ending one session makes room for one.
    act_as(&ops);
    let r = request(
        g.plain_port,
        "DELETE",
        "/mcp",
        &[
            ("mcp-session-id", &mine[0]),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    initialize(g.plain_port);

    // Forged, truncated, other-node and other-core ids are unknown sessions.
    let good = &mine[1];
    let forged = format!("{}{}", &good[..8], "0".repeat(32));
    let truncated = good[..39].to_owned();
    let other_node = format!("ffff{}", &good[4..]);
    let other_core = format!("{}0007{}", &good[..4], &good[8..]);
    for bad in [forged, truncated, other_node, other_core] {
        let r = list_on(g.plain_port, &bad);
        assert_eq!(r.status, 404, "{bad}: {}", r.text());
        assert_eq!(r.reason(), "session_not_found", "{bad}");
    }
    // A live session presented with another agent's credential is no session of theirs.
    act_as(&viewer);
    let r = list_on(g.plain_port, &mine[1]);
    assert_eq!(r.status, 404);
    assert_eq!(r.reason(), "session_agent_mismatch", "{}", r.text());
}

/// Whatever a stream sends within `d`.
fn read_for(s: &mut TcpStream, d: Duration) -> String {
    let end = std::time::Instant::now() + d;
    let mut out = String::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => break,
        }
    }
    out
}

/// The `id:` lines of an SSE text.
fn event_ids(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn open_stream(port: u16, sid: &str, last: Option<&str>) -> (TcpStream, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let resume = last.map_or(String::new(), |l| format!("last-event-id: {l}\r\n"));
    write!(
        s,
        "GET /mcp HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: 2025-11-25\r\n{}{resume}\r\n",
        auth_line()
    )
    .unwrap();
    let head = read_for(&mut s, Duration::from_millis(1500));
    (s, head)
}

#[test]
fn a_dropped_get_stream_resumes_from_last_event_id() {
    // The gateway's own list_changed events (each activation changes what the agent may list) are the
    // stream's events here: no upstream timing involved.
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[], "pinning:\n  recheck_interval: 1h\n");
    add_capability(&g, "alpha", port);
    let (ops, _) = ops_and_viewer(&g);
    ok(&g, &["approve", "--note", "v1"]);
    ok(
        &g,
        &["capability", "edit", "alpha", "--description", "second"],
    );
    ok(&g, &["approve", "--note", "v2"]);
    act_as(&ops);
    let sid = initialize(g.plain_port);
    let (mut s, head) = open_stream(g.plain_port, &sid, None);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut seen = String::new();
    for v in ["1", "2", "1"] {
        ok(&g, &["snapshot", "activate", v]);
        seen.push_str(&read_for(&mut s, Duration::from_millis(700)));
    }
    let ids = event_ids(&seen);
    assert!(ids.len() >= 2, "events with ids: {seen}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    drop(s);

    // Back with the first id: what followed it comes first, with its id.
    let (mut s, head) = open_stream(g.plain_port, &sid, Some(&ids[0].to_string()));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let replayed = format!("{head}{}", read_for(&mut s, Duration::from_secs(1)));
    assert_eq!(event_ids(&replayed).first(), Some(&ids[1]), "{replayed}");
    assert!(
        replayed.contains("notifications/tools/list_changed"),
        "{replayed}"
    );
    drop(s);

    // An id the session never sent: a clear refusal, after which the client re-syncs.
    let (_, head) = open_stream(g.plain_port, &sid, Some("999999"));
    assert!(head.starts_with("HTTP/1.1 409"), "{head}");
    assert!(head.contains("resume_unavailable"), "{head}");
}
