//! The operators' surface: readiness a load balancer can trust, the health document with active upstream
//! checks, metrics broken down by method, decision, agent and tool, the audit search and export, and the
//! web console itself — its login, CSRF defences and headers over raw HTTP, then driven end to end in
//! headless Chromium with screenshots saved under `tests/artifacts/console/`.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use portcullis_tests::*;

fn token(g: &Gateway) -> String {
    std::fs::read_to_string(g.data().join("admin.token"))
        .unwrap()
        .trim()
        .to_owned()
}

fn admin_get(g: &Gateway, path: &str) -> RawResponse {
    let t = format!("Bearer {}", token(g));
    request(g.admin_port, "GET", path, &[("authorization", &t)], b"").unwrap()
}

/// Poll `f` until it returns `Some`, for at most `secs`.
fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn call(port: u16, sid: &str, tool: &str) -> RawResponse {
    post(
        port,
        &[
            ("mcp-session-id", sid),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": tool, "arguments": {"text": "hi"}}})
        .to_string(),
    )
}

#[test]
fn readiness_and_health_follow_the_snapshot_and_the_upstreams() {
    let (mut up, port) = py_server("alpha", &[]);
    let g = Gateway::start(
        &[],
        "pinning:\n  recheck_interval: 1h\nhealth:\n  check_interval: 300ms\n  backoff_max: 2s\n",
    );
    // Before anything is approved the gateway serves nothing: not ready, and it says why.
    let r = request(g.admin_port, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text()
            .contains("snapshot: FAIL no approved snapshot is active"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("cores: ok 2/2"), "{}", r.text());
    assert!(r.text().contains("audit: ok"), "{}", r.text());
    // The health document needs the admin token.
    assert_eq!(
        request(g.admin_port, "GET", "/admin/v1/health", &[], b"")
            .unwrap()
            .status,
        401
    );

    add_capability(&g, "alpha", port);
    approve_tester(&g);
    let r = request(g.admin_port, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("ready\n"), "{}", r.text());

    let h = eventually(10, "alpha checked reachable", || {
        let h = admin_get(&g, "/admin/v1/health").json();
        (h["upstreams"][0]["reachable"] == json!(true)).then_some(h)
    });
    assert_eq!(h["ready"], json!(true));
    assert_eq!(h["mode"], json!("self-hosted"));
    assert_eq!(h["snapshot"]["version"], json!(1));
    assert_eq!(h["snapshot"]["approved_by"], json!("alice"));
    assert_eq!(h["snapshot"]["note"], json!("tester"));
    assert_eq!(h["snapshot"]["hash"].as_str().unwrap().len(), 64, "{h}");
    let cores = h["cores"].as_array().unwrap();
    assert_eq!(cores.len(), 2);
    assert!(cores
        .iter()
        .all(|c| c["driver"] == json!("io_uring") || c["driver"] == json!("epoll")));
    let alpha = &h["upstreams"][0];
    assert_eq!(alpha["name"], json!("alpha"));
    assert_eq!(alpha["kind"], json!("mcp"));
    assert_eq!(alpha["endpoint"], json!(format!("127.0.0.1:{port}")));
    assert!(alpha["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(h["audit"]["writable"], json!(true));
    assert!(h["audit"]["max_bytes"].as_u64().unwrap() > 0);
    // The generated certificate is valid for a while yet.
    let days = h["tls"]["expires_in_days"].as_i64().unwrap();
    assert!(days > 300, "{h}");
    assert_eq!(
        h["tls"]["fingerprint_sha256"].as_str().unwrap().len(),
        95,
        "{h}"
    );
    assert!(g
        .metrics()
        .contains("portcullis_upstream_up{upstream=\"alpha\",kind=\"mcp\"} 1"));
    assert!(g.metrics().contains("portcullis_snapshot_version 1"));

    // The upstream goes away: its checks fail, back off, and the document and metrics say so. The
    // gateway itself stays ready (an upstream down is a failed call, not a box to take out of service).
    up.terminate();
    let h = eventually(15, "alpha checked unreachable twice", || {
        let h = admin_get(&g, "/admin/v1/health").json();
        (h["upstreams"][0]["failures"].as_u64().unwrap_or(0) >= 2).then_some(h)
    });
    let alpha = &h["upstreams"][0];
    assert_eq!(alpha["reachable"], json!(false), "{h}");
    assert!(alpha["error"].as_str().unwrap().len() > 3, "{h}");
    assert_eq!(h["upstreams_reachable"], json!(0));
    assert!(g
        .metrics()
        .contains("portcullis_upstream_up{upstream=\"alpha\",kind=\"mcp\"} 0"));
    assert_eq!(
        request(g.admin_port, "GET", "/readyz", &[], b"")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn metrics_count_by_method_revision_decision_agent_and_tool() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[], "pinning:\n  recheck_interval: 1h\n");
    add_capability(&g, "alpha", port);
    let (ops, viewer) = ops_and_viewer(&g);
    ok(&g, &["approve"]);
    act_as(&ops);
    let sid = initialize(g.plain_port);
    for _ in 0..3 {
        assert_eq!(call(g.plain_port, &sid, "alpha__echo").status, 200);
    }
    act_as(&viewer);
    let vsid = initialize(g.plain_port);
    let r = call(g.plain_port, &vsid, "alpha__add");
    // Out of the viewer's sight: refused (as not found, or by policy) before anything goes upstream.
    let reason = r.reason();
    assert!(
        reason == "tool_not_found" || reason == "policy_denied",
        "{}",
        r.text()
    );
    let expected = [
        "portcullis_tool_calls_total{tool=\"alpha__echo\",decision=\"allowed\"} 3",
        "portcullis_mcp_requests_total{method=\"tools/call\",transport=\"h1\",revision=\"2025-11-25\",decision=\"allowed\"} 3",
        "portcullis_mcp_requests_total{method=\"tools/call\",transport=\"h1\",revision=\"2025-11-25\",decision=\"denied\"} 1",
        "portcullis_mcp_requests_total{method=\"initialize\",transport=\"h1\",revision=\"2025-11-25\",decision=\"allowed\"} 2",
        "portcullis_agent_requests_total{agent=\"ops\"} 4",
        "portcullis_agent_requests_total{agent=\"viewer\"} 2",
        "portcullis_tool_calls_total{tool=\"alpha__add\",decision=\"denied\"} 1",
    ];
    // The two agents' connections may be on different cores, which publish their counts each on their
    // own: wait for all of them, then say which is missing.
    let t0 = Instant::now();
    let mut m = g.metrics();
    while !expected.iter().all(|l| m.contains(l)) && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        m = g.metrics();
    }
    for line in expected {
        assert!(m.contains(line), "missing `{line}` in\n{m}");
    }
    let denial = format!("portcullis_denials_total{{reason=\"{reason}\",blame=\"agent\"}} 1");
    assert!(m.contains(&denial), "missing `{denial}` in\n{m}");
    // What the gateway added to the forwarded calls, and the sessions open.
    let added = m
        .lines()
        .find(|l| l.starts_with("portcullis_gateway_added_duration_seconds_count{core=\"all\"}"))
        .unwrap();
    assert!(added.ends_with(" 3"), "{added}");
    let open: u64 = m
        .lines()
        .filter(|l| l.starts_with("portcullis_sessions_open{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(open, 2);
    let t = admin_get(&g, "/admin/v1/traffic").json();
    assert_eq!(
        t["top_agents"][0],
        json!({"agent": "ops", "requests": 4}),
        "{t}"
    );
    assert_eq!(t["top_tools"][0]["tool"], json!("alpha__echo"));
    assert_eq!(t["denials"][&reason], json!(1));
    assert_eq!(t["latency"]["added"]["count"], json!(3));
}

#[test]
fn agent_and_tool_labels_stay_bounded() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(
        &[],
        "pinning:\n  recheck_interval: 1h\nmetrics:\n  tools_max: 2\n",
    );
    add_capability(&g, "alpha", port);
    approve_tester(&g);
    let sid = initialize(g.plain_port);
    // Names chosen by the agent (unknown tools) cannot grow the label set past the bound.
    for i in 0..20 {
        call(g.plain_port, &sid, &format!("alpha__nope{i}"));
    }
    let m = eventually(5, "counts published", || {
        let m = g.metrics();
        m.contains("tool=\"other\"").then_some(m)
    });
    let tools = m
        .lines()
        .filter(|l| l.starts_with("portcullis_tool_calls_total{"))
        .count();
    assert!(tools <= 3, "{m}");
}

fn login(g: &Gateway) -> (String, String) {
    let body = json!({"token": token(g)}).to_string();
    let r = request(
        g.admin_port,
        "POST",
        "/console/login",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let cookie = r.header("set-cookie").unwrap().to_owned();
    let value = cookie.split(';').next().unwrap().to_owned();
    (value, r.json()["csrf"].as_str().unwrap().to_owned())
}

#[test]
fn console_login_cookie_csrf_and_headers() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[], "pinning:\n  recheck_interval: 1h\n");
    add_capability(&g, "alpha", port);
    approve_tester(&g);
    let sid = initialize(g.plain_port);
    act_anonymously();

    // The page: strict CSP, no inline script, style or handler anywhere in it.
    let page = request(g.admin_port, "GET", "/console/", &[], b"").unwrap();
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    let html = page.text();
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "inline script or style"
    );
    assert!(
        !html
            .split_whitespace()
            .any(|w| w.starts_with("on") && w.contains("=\"")),
        "inline handler"
    );
    for asset in [
        "/console/console.js",
        "/console/console.css",
        "/console/icon.svg",
    ] {
        assert_eq!(
            request(g.admin_port, "GET", asset, &[], b"")
                .unwrap()
                .status,
            200,
            "{asset}"
        );
    }
    assert_eq!(
        request(g.admin_port, "GET", "/console", &[], b"")
            .unwrap()
            .header("location"),
        Some("/console/")
    );

    // Wrong or missing token, a form post, another origin: no login.
    let wrong = request(
        g.admin_port,
        "POST",
        "/console/login",
        &[("content-type", "application/json")],
        br#"{"token":"pcat_wrong"}"#,
    )
    .unwrap();
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    let body = json!({"token": token(&g)}).to_string();
    let form = request(
        g.admin_port,
        "POST",
        "/console/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("token={}", token(&g)).as_bytes(),
    )
    .unwrap();
    assert_eq!(form.status, 403, "{}", form.text());
    let foreign = request(
        g.admin_port,
        "POST",
        "/console/login",
        &[
            ("content-type", "application/json"),
            ("origin", "http://evil.example"),
        ],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(foreign.status, 403);
    assert_eq!(
        request(
            g.admin_port,
            "POST",
            "/console/login",
            &[("content-type", "application/json")],
            b"{"
        )
        .unwrap()
        .status,
        400
    );

    let r = request(
        g.admin_port,
        "POST",
        "/console/login",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .unwrap();
    let set = r.header("set-cookie").unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(flag), "{set}");
    }
    // The token is never echoed.
    assert!(!r.text().contains(&token(&g)));
    let (cookie, csrf) = login(&g);
    let cookie_h = ("cookie", cookie.as_str());

    // The cookie reads.
    let h = request(g.admin_port, "GET", "/admin/v1/health", &[cookie_h], b"").unwrap();
    assert_eq!(h.status, 200, "{}", h.text());
    let s = request(g.admin_port, "GET", "/console/session", &[cookie_h], b"").unwrap();
    assert_eq!(s.json()["csrf"], json!(csrf));
    // A forged cookie reads nothing.
    let forged_cookie = format!("portcullis_console={}", "0".repeat(64));
    assert_eq!(
        request(
            g.admin_port,
            "GET",
            "/admin/v1/health",
            &[("cookie", &forged_cookie)],
            b""
        )
        .unwrap()
        .status,
        401
    );

    // A change with the cookie but without the CSRF token, with a wrong one, or from another
    // origin, is refused and changes nothing.
    let revoke = json!({"id": sid}).to_string();
    for extra in [
        vec![],
        vec![("x-portcullis-csrf", "0000")],
        vec![
            ("x-portcullis-csrf", csrf.as_str()),
            ("origin", "http://evil.example"),
        ],
        vec![
            ("x-portcullis-csrf", csrf.as_str()),
            ("sec-fetch-site", "cross-site"),
        ],
    ] {
        let mut headers = vec![cookie_h, ("content-type", "application/json")];
        headers.extend(extra.iter().copied());
        let r = request(
            g.admin_port,
            "POST",
            "/admin/v1/sessions/revoke",
            &headers,
            revoke.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 403, "{extra:?}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], json!("csrf_failed"));
    }
    let alive = admin_get(&g, "/admin/v1/sessions").json();
    assert_eq!(alive.as_array().unwrap().len(), 1, "{alive}");

    // With it, from the console's own origin, the change is made and audited as the console's.
    let origin = format!("http://127.0.0.1:{}", g.admin_port);
    let r = request(
        g.admin_port,
        "POST",
        "/admin/v1/sessions/revoke",
        &[
            cookie_h,
            ("content-type", "application/json"),
            ("x-portcullis-csrf", &csrf),
            ("origin", &origin),
            ("sec-fetch-site", "same-origin"),
        ],
        revoke.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revoked"].as_array().unwrap().len(), 1);
    let audit = eventually(5, "revocation audited", || {
        let a = admin_get(&g, "/admin/v1/audit?limit=500").json();
        a["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["method"] == json!("session/revoke"))
            .cloned()
    });
    assert_eq!(audit["agent"], json!("tester"), "{audit}");
    assert!(audit.to_string().contains("console"), "{audit}");

    // Logging out ends the cookie.
    let out = request(
        g.admin_port,
        "POST",
        "/console/logout",
        &[cookie_h, ("x-portcullis-csrf", &csrf)],
        b"",
    )
    .unwrap();
    assert_eq!(out.status, 200, "{}", out.text());
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(
        request(g.admin_port, "GET", "/admin/v1/health", &[cookie_h], b"")
            .unwrap()
            .status,
        401
    );
}

#[test]
fn audit_search_pages_filters_exports_and_refuses_odd_queries() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[], "pinning:\n  recheck_interval: 1h\n");
    add_capability(&g, "alpha", port);
    let (ops, viewer) = ops_and_viewer(&g);
    ok(&g, &["approve"]);
    act_as(&ops);
    let sid = initialize(g.plain_port);
    for _ in 0..7 {
        assert_eq!(call(g.plain_port, &sid, "alpha__echo").status, 200);
    }
    act_as(&viewer);
    let vsid = initialize(g.plain_port);
    call(g.plain_port, &vsid, "alpha__add");
    act_anonymously();

    // Pages of 3 of ops' records, newest first, each record once.
    let mut seen = Vec::new();
    let mut before = String::new();
    loop {
        let q = format!("/admin/v1/audit?agent=ops&limit=3{before}");
        let p = admin_get(&g, &q).json();
        let recs = p["records"].as_array().unwrap();
        assert!(recs.len() <= 3);
        for r in recs {
            assert_eq!(r["agent"], json!("ops"));
            seen.push((
                r["at_ms"].as_u64().unwrap(),
                r["cursor"].as_str().unwrap().to_owned(),
            ));
        }
        match p["next"].as_str() {
            Some(n) => before = format!("&before={n}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 8, "initialize and 7 calls: {seen:?}");
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        sorted.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    let cursors: std::collections::HashSet<_> = seen.iter().map(|s| &s.1).collect();
    assert_eq!(cursors.len(), 8);

    let denied = admin_get(&g, "/admin/v1/audit?decision=denied").json();
    let recs = denied["records"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "{denied}");
    assert_eq!(recs[0]["agent"], json!("viewer"));
    let reason = recs[0]["reason"].as_str().unwrap();
    let by_reason = admin_get(&g, &format!("/admin/v1/audit?reason={reason}&agent=viewer")).json();
    assert_eq!(by_reason["records"].as_array().unwrap().len(), 1);
    let none = admin_get(&g, &format!("/admin/v1/audit?reason={reason}&agent=ops")).json();
    assert!(none["records"].as_array().unwrap().is_empty());
    // A huge range is fine; odd characters match nothing rather than something.
    let all = admin_get(
        &g,
        &format!("/admin/v1/audit?from=0&to={}&limit=500", u64::MAX),
    );
    assert_eq!(all.status, 200);
    assert!(all.json()["records"].as_array().unwrap().len() >= 10);
    let odd = admin_get(&g, "/admin/v1/audit?agent=%27%22%3Cscript%3E%E2%9C%93%25");
    assert_eq!(odd.status, 200, "{}", odd.text());
    assert!(odd.json()["records"].as_array().unwrap().is_empty());
    for bad in [
        "agent=%00",
        "agent=%zz",
        "agent=%ff",
        "from=20&to=10",
        "from=yesterday",
        "limit=0",
        "limit=100000",
        "decision=maybe",
        "reason=because",
        "before=garbage",
        "colour=red",
        "agent=a&agent=b",
    ] {
        let r = admin_get(&g, &format!("/admin/v1/audit?{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], json!("invalid_query"), "{bad}");
    }
    let long = admin_get(&g, &format!("/admin/v1/audit?agent={}", "x".repeat(300)));
    assert_eq!(long.status, 400);

    // Export: every matching record, oldest first, as a download.
    let e = admin_get(&g, "/admin/v1/audit/export?agent=ops");
    assert_eq!(e.status, 200);
    assert!(e
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment"));
    let lines: Vec<Value> = e
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    assert!(lines
        .windows(2)
        .all(|w| w[0]["at_ms"].as_u64() <= w[1]["at_ms"].as_u64()));
    let ocsf = admin_get(&g, "/admin/v1/audit/export?agent=ops&format=ocsf").text();
    assert!(ocsf.lines().all(|l| l.contains("\"class_uid\":6003")));
    assert_eq!(
        admin_get(&g, "/admin/v1/audit/export?format=xml").status,
        400
    );
    assert_eq!(admin_get(&g, "/admin/v1/audit/export?limit=5").status, 400);

    let v = admin_get(&g, "/admin/v1/audit/verify").json();
    assert_eq!(v["verified"], json!(true), "{v}");
    assert!(v["events"].as_u64().unwrap() >= 10);
}

#[test]
fn sessions_list_in_pages_with_filters() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[], "pinning:\n  recheck_interval: 1h\n");
    add_capability(&g, "alpha", port);
    let (ops, viewer) = ops_and_viewer(&g);
    ok(&g, &["approve"]);
    act_as(&ops);
    let mine: Vec<String> = (0..5).map(|_| initialize(g.plain_port)).collect();
    act_as(&viewer);
    let theirs = initialize(g.plain_port);
    act_anonymously();
    let p = admin_get(&g, "/admin/v1/sessions?limit=2").json();
    assert_eq!(p["total"], json!(6));
    assert_eq!(p["sessions"].as_array().unwrap().len(), 2);
    let p2 = admin_get(&g, "/admin/v1/sessions?limit=2&offset=4").json();
    assert_eq!(p2["sessions"].as_array().unwrap().len(), 2);
    let v = admin_get(&g, "/admin/v1/sessions?agent=viewer").json();
    assert_eq!(v["total"], json!(1));
    assert_eq!(v["sessions"][0]["id"], json!(theirs));
    let by_id = admin_get(&g, &format!("/admin/v1/sessions?q={}", &mine[3][..12])).json();
    assert_eq!(by_id["total"], json!(1), "{by_id}");
    for bad in ["limit=0", "limit=5000", "offset=-1", "who=me", "q=%00"] {
        assert_eq!(
            admin_get(&g, &format!("/admin/v1/sessions?{bad}")).status,
            400,
            "{bad}"
        );
    }
    // Without a query the list is the plain array the CLI reads.
    assert_eq!(
        admin_get(&g, "/admin/v1/sessions")
            .json()
            .as_array()
            .unwrap()
            .len(),
        6
    );
}

/// Bench result files as the bench scripts write them, and a history line per run.
fn bench_dir(dir: &TempDir) -> std::path::PathBuf {
    let b = dir.path().join("bench");
    std::fs::create_dir_all(&b).unwrap();
    let run = |rps: f64| {
        json!({"when": "2026-12-02T10:00:00+00:00", "commit": "abc1234", "profile": "release",
               "config": {"cores": 2, "concurrency": 32, "payload": "tools/call, 1 KiB"},
               "results": {
                   "direct": {"proto": "h1", "throughput_rps": rps * 1.5, "p50_us": 400, "p99_us": 900, "p999_us": 1500, "errors": 0, "concurrency": 32},
                   "nginx": {"proto": "h1", "throughput_rps": rps * 0.9, "p50_us": 700, "p99_us": 1600, "p999_us": 2500, "errors": 0, "concurrency": 32},
                   "portcullis": {"proto": "h1", "throughput_rps": rps, "p50_us": 650, "p99_us": 1500, "p999_us": 2400, "errors": 0, "concurrency": 32}},
               "ratios": {"portcullis_vs_nginx_throughput": 1.11, "added_p50_us_c1": 31}})
    };
    std::fs::write(b.join("latest.json"), run(20000.0).to_string()).unwrap();
    std::fs::write(b.join("broken.json"), "{not json").unwrap();
    let mut hist = String::new();
    for (i, rps) in [18000.0, 19000.0, 20000.0].iter().enumerate() {
        let mut r = run(*rps);
        r["bench"] = json!("latest");
        r["when"] = json!(format!("2026-12-0{}T10:00:00+00:00", i + 1));
        hist.push_str(&r.to_string());
        hist.push('\n');
    }
    std::fs::write(b.join("history.jsonl"), hist).unwrap();
    b
}

#[test]
fn bench_results_are_served_with_their_history() {
    let dir = TempDir::new("console-bench");
    let b = bench_dir(&dir);
    let g = Gateway::start(&[], &format!("console:\n  bench_dir: {}\n", b.display()));
    let doc = admin_get(&g, "/admin/v1/bench").json();
    let files = doc["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{doc}");
    assert_eq!(files[0]["name"], json!("latest"));
    assert_eq!(
        files[0]["result"]["results"]["portcullis"]["throughput_rps"],
        json!(20000.0)
    );
    assert_eq!(doc["history"].as_array().unwrap().len(), 3);
    assert!(
        doc["problems"][0].as_str().unwrap().starts_with("broken"),
        "{doc}"
    );
}

#[test]
fn the_console_works_in_headless_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} missing: tests/setup.sh installs Debian's chromium"
    );
    let dir = TempDir::new("console-browser");
    let b = bench_dir(&dir);
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(
        &[],
        &format!(
            "pinning:\n  recheck_interval: 1h\nhealth:\n  check_interval: 500ms\nconsole:\n  bench_dir: {}\n",
            b.display()
        ),
    );
    add_capability(&g, "alpha", port);
    let (ops, viewer) = ops_and_viewer(&g);
    ok(&g, &["approve", "--note", "first"]);
    act_as(&ops);
    let sid = initialize(g.plain_port);
    for _ in 0..5 {
        assert_eq!(call(g.plain_port, &sid, "alpha__echo").status, 200);
    }
    let doomed = initialize(g.plain_port);
    act_as(&viewer);
    let vsid = initialize(g.plain_port);
    call(g.plain_port, &vsid, "alpha__add");
    act_anonymously();

    // Calls keep flowing while the browser looks, so the live traffic view has something to draw.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, port, sid) = (stop.clone(), g.plain_port, sid.clone());
        let auth = format!("Bearer {ops}");
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                post(
                    port,
                    &[
                        ("authorization", &auth),
                        ("mcp-session-id", &sid),
                        ("mcp-protocol-version", "2025-11-25"),
                    ],
                    r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"alpha__echo","arguments":{"text":"tick"}}}"#,
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let out = workspace_root().join("tests/artifacts/console");
    let _ = std::fs::remove_dir_all(&out);
    let mut child = Command::new("node")
        .arg(peers_dir().join("node/console_browser.mjs"))
        .args([
            "--url",
            &format!("http://127.0.0.1:{}/console/", g.admin_port),
        ])
        .args(["--token", &token(&g)])
        .args(["--out", &out.display().to_string()])
        .args(["--agent", "ops", "--revoke", &doomed])
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut result = Value::Null;
    for line in stdout.lines().map_while(Result::ok) {
        eprintln!("[browser] {line}");
        if line == "WAITING snapshot" {
            // A new snapshot while the console is open on the snapshots view.
            ok(
                &g,
                &[
                    "policy",
                    "add",
                    "viewers-add",
                    "--text",
                    r#"permit(principal in Group::"viewers", action, resource == Tool::"alpha__add");"#,
                ],
            );
            ok(&g, &["approve", "--note", "second"]);
            writeln!(stdin, "go").unwrap();
        } else if line.starts_with('{') {
            result = serde_json::from_str(&line).unwrap_or(Value::Null);
        }
    }
    let status = child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.join().unwrap();
    assert!(status.success() && result["ok"] == json!(true), "{result}");
    // The revoked session is gone for its agent too.
    act_as(&ops);
    let r = call(g.plain_port, &doomed, "alpha__echo");
    assert_eq!(r.reason(), "session_revoked", "{}", r.text());
    assert_eq!(call(g.plain_port, &sid, "alpha__echo").status, 200);
    for name in [
        "02-health",
        "03-traffic",
        "05-session-revoked",
        "06-audit",
        "07-snapshots",
        "08-bench",
    ] {
        let png = out.join(format!("{name}.png"));
        let meta = std::fs::metadata(&png).unwrap_or_else(|_| panic!("{} missing", png.display()));
        assert!(
            meta.len() > 10_000,
            "{} is {} bytes",
            png.display(),
            meta.len()
        );
    }
}
