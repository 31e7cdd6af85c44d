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
    // The agent is held: refused whatever it presents, a new session included, until lifted.
    let r = list_on(g.plain_port, &mine[2]);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.reason(), "access_revoked", "{}", r.text());
    let r = post(
        g.plain_port,
        &[],
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"again","version":"0"}}}"#,
    );
    assert_eq!(r.reason(), "access_revoked", "{}", r.text());
    let holds = ok(&g, &["session", "holds"]);
    assert_eq!(holds[0]["kind"], json!("agent"), "{holds}");
    assert_eq!(holds[0]["name"], json!("ops"), "{holds}");
    assert_eq!(
        ok(&g, &["session", "lift", "--agent", "ops"])["lifted"],
        json!(true)
    );
    for sid in &mine {
        let r = list_on(g.plain_port, sid);
        assert_eq!(r.reason(), "session_revoked", "{sid}: {}", r.text());
    }
    initialize(g.plain_port);
    act_as(&viewer);
    assert_eq!(
        list_on(g.plain_port, &theirs).status,
        200,
        "another agent's session went too"
    );

    // By API key.
    let viewer_key_id = viewer.split('_').nth(1).unwrap();
    let r = ok(
        &g,
        &["session", "revoke", "--key", viewer_key_id, "--hold", "0s"],
    );
    assert_eq!(r["revoked"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["hold_s"], json!(null), "a zero hold holds nothing: {r}");
    assert_eq!(list_on(g.plain_port, &theirs).reason(), "session_revoked");
    // Only ops' new session is left.
    assert_eq!(ok(&g, &["session", "list"]).as_array().unwrap().len(), 1);
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

/// A raw 2025-11-25 `tools/call` of `tool` with no arguments on session `sid`.
fn call_on(port: u16, sid: &str, tool: &str) -> RawResponse {
    post(
        port,
        &[
            ("mcp-session-id", sid),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        &json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
            .to_string(),
    )
}

/// A gateway serving upstream `alpha` (approved), with the test acting as `ops` in a fresh session.
fn alpha_session_as_ops() -> (Proc, Gateway, String) {
    let (up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[], "pinning:\n  recheck_interval: 1h\n");
    add_capability(&g, "alpha", port);
    let (ops, _) = ops_and_viewer(&g);
    ok(&g, &["approve"]);
    act_as(&ops);
    let sid = initialize(g.plain_port);
    (up, g, sid)
}

#[test]
fn upstream_events_reach_the_stream_that_replaced_a_dropped_one() {
    // A client that drops its GET stream and opens another (a reconnect) must hear the upstream on the
    // new one at once, not after the gateway next writes to the dead one. The upstream allows one GET
    // stream per session, so the gateway has to let go of the old one first.
    let (_up, g, sid) = alpha_session_as_ops();
    let announce = |sid: &str| {
        let r = call_on(g.plain_port, sid, "alpha__announce");
        assert!(r.text().contains("announced"), "{}", r.text());
    };
    let heard = |s: &mut TcpStream, round: usize| {
        let mut seen = String::new();
        for _ in 0..20 {
            seen.push_str(&read_for(s, Duration::from_millis(250)));
            if seen.contains("notifications/tools/list_changed") {
                return seen;
            }
        }
        panic!("round {round}: no upstream event on the stream: {seen:?}");
    };
    let (mut s, head) = open_stream(g.plain_port, &sid, None);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    announce(&sid);
    heard(&mut s, 0);
    for round in 1..4 {
        drop(s);
        let (mut next, head) = open_stream(g.plain_port, &sid, None);
        assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
        announce(&sid);
        heard(&mut next, round);
        s = next;
    }
    drop(s);

    // A new session's GET stream and first call at once each want an upstream session: they must end
    // up on the same one, or the call's announcements go to a stream nobody follows.
    for round in 10..14 {
        let fresh = initialize(g.plain_port);
        let port = g.plain_port;
        let first_call = {
            let fresh = fresh.clone();
            std::thread::spawn(move || call_on(port, &fresh, "alpha__whoami"))
        };
        let (mut s, head) = open_stream(g.plain_port, &fresh, None);
        assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
        assert!(first_call.join().unwrap().text().contains("alpha"));
        announce(&fresh);
        heard(&mut s, round);
    }
}

/// A raw 2026-07-28 `tools/list`, naming gateway session `session` when given.
fn modern_list(port: u16, session: Option<&str>) -> RawResponse {
    let body = modern_body(1, "tools/list", json!({}));
    let mut h = vec![
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/list"),
    ];
    if let Some(s) = session {
        h.push(("portcullis-session", s));
    }
    post(port, &h, &body)
}

/// Open a 2026-07-28 `subscriptions/listen` stream; the stream and what it sent within a second.
fn open_listen(port: u16, session: Option<&str>) -> (TcpStream, String) {
    let body = modern_body(
        7,
        "subscriptions/listen",
        json!({"notifications": {"toolsListChanged": true}}),
    );
    let named = session.map_or(String::new(), |s| format!("portcullis-session: {s}\r\n"));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-protocol-version: 2026-07-28\r\nmcp-method: subscriptions/listen\r\n{}{named}content-length: {}\r\n\r\n{body}",
        auth_line(),
        body.len()
    )
    .unwrap();
    let head = read_for(&mut s, Duration::from_secs(1));
    (s, head)
}

#[test]
fn stateless_clients_get_one_gateway_session_per_credential_lease_on_every_core() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[], "pinning:\n  recheck_interval: 1h\n");
    add_capability(&g, "alpha", port);
    let (ops, viewer) = ops_and_viewer(&g);
    ok(&g, &["approve"]);
    act_as(&ops);
    // Sixteen connections land on both cores (each its own connection); one lease, one session.
    let named: Vec<String> = (0..16)
        .map(|_| {
            let r = modern_list(g.plain_port, None);
            assert_eq!(r.status, 200, "{}", r.text());
            r.header("portcullis-session")
                .expect("a 2026-07-28 response names its gateway session")
                .to_owned()
        })
        .collect();
    assert!(named.windows(2).all(|w| w[0] == w[1]), "{named:?}");
    let sid = named[0].clone();
    let rows = ok(&g, &["session", "list"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["id"], json!(sid));
    assert_eq!(rows[0]["revision"], json!("2026-07-28"));
    assert_eq!(
        rows[0]["lease"],
        json!("key"),
        "the lease kind, never its digest"
    );
    let ops_key_id = ops.split('_').nth(1).unwrap();
    assert_eq!(rows[0]["identity"], json!(format!("key:{ops_key_id}")));
    assert!(rows[0]["requests"].as_u64().unwrap() >= 1, "{rows:?}");

    // The official SDK client's requests join the same lease session.
    let v = py_client(&g.url(), "2026-07-28", "list", &["--tools-only"]);
    let seen: Vec<&str> = v["http"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["portcullis-session"].as_str())
        .collect();
    assert!(!seen.is_empty() && seen.iter().all(|s| *s == sid), "{v}");

    // Naming the session keeps it; a forged or another agent's name is refused.
    let r = modern_list(g.plain_port, Some(&sid));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("portcullis-session"), Some(sid.as_str()));
    let forged = format!("{}{}", &sid[..8], "0".repeat(32));
    let r = modern_list(g.plain_port, Some(&forged));
    assert_eq!(r.status, 404);
    assert_eq!(r.reason(), "session_not_found", "{}", r.text());
    act_as(&viewer);
    let r = modern_list(g.plain_port, Some(&sid));
    assert_eq!(r.reason(), "session_agent_mismatch", "{}", r.text());
    let theirs = modern_list(g.plain_port, None);
    let theirs = theirs.header("portcullis-session").unwrap().to_owned();
    assert_ne!(theirs, sid, "another agent's lease is another session");

    // A subscription belongs to its session: revoking the agent ends it, and holds the agent on
    // every core, whichever the connection lands on.
    act_as(&ops);
    let (mut stream, head) = open_listen(g.plain_port, None);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("portcullis-session: {sid}")),
        "{head}"
    );
    let r = ok(&g, &["session", "revoke", "--agent", "ops"]);
    assert_eq!(r["revoked"].as_array().unwrap().len(), 1, "{r}");
    let rest = read_for(&mut stream, Duration::from_secs(5));
    assert!(rest.contains("0\r\n\r\n"), "the stream ended: {rest}");
    for _ in 0..8 {
        let r = modern_list(g.plain_port, None);
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.reason(), "access_revoked");
    }
    act_as(&viewer);
    assert_eq!(modern_list(g.plain_port, None).status, 200);
    act_as(&ops);
    ok(&g, &["session", "lift", "--agent", "ops"]);
    let r = modern_list(g.plain_port, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let again = r.header("portcullis-session").unwrap();
    assert_ne!(again, sid, "a new session after the revocation");
    let r = modern_list(g.plain_port, Some(&sid));
    assert_eq!(r.reason(), "session_revoked", "{}", r.text());
}

#[test]
fn sessions_idle_out_and_end_at_their_duration_with_the_agents_own_bounds() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[], "pinning:\n  recheck_interval: 1h\n");
    add_capability(&g, "alpha", port);
    let brief = register_agent_with(
        &g,
        "brief",
        "testers",
        &[
            "--session-idle",
            "2s",
            "--session-duration-max",
            "5s",
            "--session-streams-max",
            "1",
        ],
    );
    let steady = register_agent(&g, "steady");
    ok(&g, &["approve"]);
    let shown = ok(&g, &["agent", "show", "brief"]);
    assert_eq!(
        shown["spec"]["sessions"],
        json!({"idle": "2s", "duration_max": "5s", "streams_max": 1}),
        "{shown}"
    );

    // Idle past the agent's bound: a 2025-11-25 SDK client is told its session expired; a
    // 2026-07-28 one carries on in a new gateway session. An agent without bounds of its own keeps
    // the gateway's (30 minutes).
    act_as(&brief);
    let legacy = py_client(
        &g.url(),
        "2025-11-25",
        "sequence",
        &["--calls", "2", "--pause", "3"],
    );
    assert_eq!(legacy["results"][0], json!("ok"), "{legacy}");
    assert_ne!(legacy["results"][1], json!("ok"), "{legacy}");
    let statuses: Vec<u64> = legacy["http"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["rpc"] == json!("tools/list"))
        .filter_map(|r| r["status"].as_u64())
        .collect();
    assert_eq!(statuses, [200, 404], "{legacy}");
    let modern = py_client(
        &g.url(),
        "2026-07-28",
        "sequence",
        &["--calls", "2", "--pause", "3"],
    );
    assert_eq!(modern["results"], json!(["ok", "ok"]), "{modern}");
    let named: Vec<&str> = modern["http"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["rpc"] == json!("tools/list"))
        .filter_map(|r| r["portcullis-session"].as_str())
        .collect();
    assert_eq!(named.len(), 2, "{modern}");
    assert_ne!(named[0], named[1], "the idle session ended: {modern}");
    act_as(&steady);
    let v = py_client(
        &g.url(),
        "2025-11-25",
        "sequence",
        &["--calls", "2", "--pause", "3"],
    );
    assert_eq!(v["results"], json!(["ok", "ok"]), "{v}");

    // However active, a session ends at its duration: every second for 7 s outlives 5 s.
    act_as(&brief);
    let busy = py_client(
        &g.url(),
        "2025-11-25",
        "sequence",
        &["--calls", "8", "--pause", "1"],
    );
    let results = busy["results"].as_array().unwrap();
    assert_eq!(results[0], json!("ok"), "{busy}");
    assert_ne!(results[7], json!("ok"), "{busy}");
    let refused = busy["http"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["rpc"] == json!("tools/list"))
        .filter(|r| r["status"] == json!(404))
        .count();
    assert!(refused >= 1, "{busy}");
    // A 2026-07-28 client active every second outlives its lease session's 5 s too: its requests go on,
    // in a new gateway session.
    let busy = py_client(
        &g.url(),
        "2026-07-28",
        "sequence",
        &["--calls", "8", "--pause", "1"],
    );
    assert!(
        busy["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r == "ok"),
        "{busy}"
    );
    let mut named: Vec<&str> = busy["http"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["rpc"] == json!("tools/list"))
        .filter_map(|r| r["portcullis-session"].as_str())
        .collect();
    named.dedup();
    assert!(named.len() >= 2, "a new session after the duration: {busy}");
    // The raw answer says why.
    let sid = initialize(g.plain_port);
    std::thread::sleep(Duration::from_millis(2500));
    let r = list_on(g.plain_port, &sid);
    assert_eq!(r.status, 404);
    assert_eq!(r.reason(), "session_expired", "{}", r.text());

    // One open stream per session for this agent: a second is refused, on either revision.
    let sid = initialize(g.plain_port);
    let (_first, head) = open_stream(g.plain_port, &sid, None);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_second, head) = open_stream(g.plain_port, &sid, None);
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(head.contains("stream_limit"), "{head}");
    let (_listen, head) = open_listen(g.plain_port, None);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_again, head) = open_listen(g.plain_port, None);
    assert!(head.contains("stream_limit"), "{head}");
}

#[test]
fn sessions_and_holds_survive_a_kill_and_revoked_ones_stay_gone() {
    let (_up, port) = py_server("alpha", &[]);
    let mut g = Gateway::start(&[], "pinning:\n  recheck_interval: 1h\n");
    add_capability(&g, "alpha", port);
    let (ops, viewer) = ops_and_viewer(&g);
    ok(&g, &["approve"]);
    act_as(&ops);
    let kept = initialize(g.plain_port);
    let call = |port: u16, sid: &str| {
        post(
            port,
            &[
                ("mcp-session-id", sid),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"alpha__echo","arguments":{"text":"still here"}}}"#,
        )
    };
    let r = call(g.plain_port, &kept);
    assert!(r.text().contains("still here"), "{}", r.text());
    let lease = modern_list(g.plain_port, None);
    let lease = lease.header("portcullis-session").unwrap().to_owned();
    let revoked = initialize(g.plain_port);
    act_as(&viewer);
    initialize(g.plain_port);
    ok(&g, &["session", "revoke", "--agent", "viewer"]);
    // Activity reaches the store within `sessions.persist_interval` (1 s); the revocations were
    // written before the CLI was answered, so the kill right after them cannot bring them back.
    std::thread::sleep(Duration::from_millis(1500));
    ok(&g, &["session", "revoke", &revoked]);
    g.proc.child.kill().unwrap();
    let _ = g.proc.child.wait();
    let g = g.restart();

    act_as(&ops);
    let rows = ok(&g, &["session", "list"]);
    let ids: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert!(ids.contains(&kept.as_str()), "{rows}");
    assert!(ids.contains(&lease.as_str()), "{rows}");
    assert_eq!(ids.len(), 2, "neither revoked session came back: {rows}");
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == json!(kept))
        .unwrap();
    assert_eq!(row["agent"], json!("ops"));
    assert!(row["requests"].as_u64().unwrap() >= 1, "{row}");
    // The session goes on; its upstream session is opened again behind it.
    let r = call(g.plain_port, &kept);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("still here"), "{}", r.text());
    // The lease finds its session again.
    let r = modern_list(g.plain_port, None);
    assert_eq!(r.header("portcullis-session"), Some(lease.as_str()));
    let r = list_on(g.plain_port, &revoked);
    assert_eq!(r.status, 404, "{}", r.text());
    // The hold outlived the restart too.
    act_as(&viewer);
    assert_eq!(modern_list(g.plain_port, None).reason(), "access_revoked");
    let holds = ok(&g, &["session", "holds"]);
    assert_eq!(holds[0]["name"], json!("viewer"), "{holds}");
}

#[test]
fn a_dropped_post_stream_resumes_with_the_rest_of_its_answer() {
    let (_up, g, sid) = alpha_session_as_ops();
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"alpha__slow_count","arguments":{"n":20},"_meta":{"progressToken":"t"}}}"#;
    let mut s = TcpStream::connect(("127.0.0.1", g.plain_port)).unwrap();
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: 2025-11-25\r\n{}content-length: {}\r\n\r\n{body}",
        auth_line(),
        body.len()
    )
    .unwrap();
    let seen = wait_for_event(&mut s, "step 2/20");
    // The stream is primed with an id before anything else, and every event carries one.
    let ids: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert!(ids.len() >= 2, "{seen}");
    assert!(ids[0].ends_with(".0"), "priming event first: {seen}");
    let last = ids.last().unwrap().to_string();
    drop(s);
    // The answer comes in while nobody listens; the resumed stream gets what followed, to the end.
    std::thread::sleep(Duration::from_millis(1500));
    let (mut r, head) = open_stream(g.plain_port, &sid, Some(&last));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let rest = format!("{head}{}", read_for(&mut r, Duration::from_secs(2)));
    assert!(rest.contains("step 20/20"), "{rest}");
    assert!(rest.contains("counted 20"), "{rest}");
    assert!(
        !rest.contains("step 1/20"),
        "nothing before the last id again: {rest}"
    );
    assert!(
        rest.contains("0\r\n\r\n"),
        "the resumed stream ends with the answer: {rest}"
    );
    // Not this session's stream, or an id it never sent: a clear refusal.
    let other = initialize(g.plain_port);
    let (_, head) = open_stream(g.plain_port, &other, Some(&last));
    assert!(head.contains("resume_unavailable"), "{head}");
    let (_, head) = open_stream(g.plain_port, &sid, Some("p999999.1"));
    assert!(head.contains("resume_unavailable"), "{head}");
}
