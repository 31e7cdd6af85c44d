//! Start, configuration errors, TLS, metrics and SIGTERM drain of the real binary.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use portcullis_tests::*;

#[test]
fn bad_config_fails_at_start_naming_the_key_path() {
    let dir = TempDir::new("badcfg");
    let cases = [
        ("limits:\n  body_bytes_mux: 10\n", "body_bytes_mux"),
        ("limits:\n  idle_timeout: soon\n", "limits.idle_timeout"),
        (
            "upstreams:\n  - name: Has_Caps\n    url: http://127.0.0.1:1/mcp\n",
            "upstreams[0].name",
        ),
        ("listen:\n  admin: not-an-address\n", "listen.admin"),
        ("naming: passthrough\nupstreams: []\n", "naming"),
    ];
    for (yaml, path) in cases {
        let cfg = dir.path().join("c.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let out = Command::new(gateway_bin())
            .arg("up")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{yaml}: {stderr}");
        assert!(
            stderr.contains(path),
            "{yaml}: expected `{path}` in: {stderr}"
        );
    }
}

#[test]
fn no_arguments_start_on_embedded_defaults() {
    // The defaults bind 127.0.0.1:8443 and :8444; this is the only test that uses them.
    let dir = TempDir::new("defaults");
    let mut child = Command::new(gateway_bin())
        .arg("up")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut proc = Proc {
        child,
        name: "gateway-defaults".into(),
    };
    let t0 = std::time::Instant::now();
    loop {
        if request(8444, "GET", "/readyz", &[], b"").is_ok_and(|r| serving(&r)) {
            break;
        }
        assert!(t0.elapsed() < READY_TIMEOUT, "defaults never became ready");
        assert!(proc.child.try_wait().unwrap().is_none(), "gateway exited");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Serving, but nothing approved yet: a load balancer must not send agents here.
    let ready = request(8444, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(ready.text().contains("snapshot: FAIL"), "{}", ready.text());
    let data = dir.path().join("portcullis-data");
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let cert = data.join("tls-cert.pem");
    let key_mode = std::fs::metadata(data.join("tls-key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    // TLS with the generated certificate as the only trust anchor.
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&cert)
        .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}", "-X", "POST", "https://127.0.0.1:8443/mcp"])
        .args(["-H", "content-type: application/json", "-H", "accept: application/json, text/event-stream"])
        .args(["--data", r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}"#])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        // ALPN offers h2 first; curl takes it. A fresh appliance has no agents: it admits nobody.
        "401 2",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = proc.terminate();
    assert_eq!(status.code(), Some(0));
    let banner = std::io::read_to_string(stdout).unwrap();
    assert!(banner.contains("https://127.0.0.1:8443/mcp"), "{banner}");
    assert!(banner.contains("SHA-256 fingerprint"), "{banner}");
    // Where the operator goes next: the console, and the token to log in with.
    assert!(
        banner.contains("Console: http://127.0.0.1:8444/console/"),
        "{banner}"
    );
    assert!(banner.contains("admin.token"), "{banner}");
}

#[test]
fn metrics_count_per_core_and_by_reason() {
    let g = Gateway::start(&[], "");
    approve_tester(&g);
    let _ = post(g.plain_port, &[], "{not json");
    let sid = initialize(g.plain_port);
    assert!(!sid.is_empty());
    let m = g.metrics();
    assert!(
        m.contains(r#"portcullis_denials_total{reason="parse_error",blame="agent"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"portcullis_core_info{core="1""#), "{m}");
    assert!(m.contains("portcullis_request_duration_seconds"), "{m}");
    let sessions: u64 = m
        .lines()
        .filter(|l| l.starts_with("portcullis_sessions_opened_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(sessions, 1);
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let (_up, port) = py_server("alpha", &[]);
    let mut g = Gateway::start(&[("alpha", port)], "limits:\n  drain_timeout: 20s\n");
    let sid = initialize(g.plain_port);
    let plain = g.plain_port;
    // slow_count sleeps 50 ms per step: 40 steps keep the call in flight while SIGTERM arrives.
    let call = std::thread::spawn(move || {
        post(
            plain,
            &[
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"alpha__slow_count","arguments":{"n":40}}}"#,
        )
    });
    // Wait until the call is in flight at the upstream (the gateway counted an upstream request for it).
    let t0 = std::time::Instant::now();
    loop {
        let m = g.metrics();
        let upstream: u64 = m
            .lines()
            .filter(|l| l.starts_with("portcullis_upstream_requests_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        if upstream >= 2 {
            break;
        }
        assert!(t0.elapsed() < READY_TIMEOUT);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let status = g.proc.terminate();
    let r = call.join().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        r.text().contains("counted 40"),
        "in-flight call was not completed: {}",
        r.text()
    );
    // After the drain, nothing listens.
    assert!(request(plain, "GET", "/mcp", &[], b"").is_err());
}

#[test]
fn epoll_driver_serves_the_same_path() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[("alpha", port)], "driver: epoll\n");
    let m = g.metrics();
    assert!(
        m.contains(r#"portcullis_core_info{core="0",driver="epoll"} 1"#),
        "{m}"
    );
    let v = py_client(
        &g.url(),
        "2026-07-28",
        "call",
        &["--tool", "alpha__add", "--args", r#"{"a":20,"b":22}"#],
    );
    assert_eq!(v["text"], json!("42"));
    let v = py_client(&g.url(), "2025-11-25", "progress", &["--prefix", "alpha__"]);
    assert_eq!(v["progress"].as_array().map(Vec::len), Some(3), "{v}");
}

#[test]
fn a_session_is_served_from_any_core() {
    // SO_REUSEPORT spreads connections over the cores by their 4-tuple; a session lives on the core that
    // opened it, and the other cores reach it by message. Many fresh connections land on both cores.
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[("alpha", port)], "");
    let sid = initialize(g.plain_port);
    for i in 0..24 {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"alpha__echo","arguments":{{"text":"n{i}"}}}}}}"#
        );
        let r = post(
            g.plain_port,
            &[
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            &body,
        );
        assert!(r.text().contains(&format!("n{i}")), "{}", r.text());
    }
    let m = g.metrics();
    let per_core: Vec<u64> = m
        .lines()
        .filter(|l| l.starts_with("portcullis_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(per_core.len(), 2, "{m}");
    assert!(
        per_core.iter().all(|&n| n > 0),
        "both cores should have served requests: {per_core:?}"
    );
}

#[test]
fn passthrough_naming_shows_the_one_upstreams_names_unchanged() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[("alpha", port)], "naming: passthrough\n");
    let sid = initialize(g.plain_port);
    let h = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let call = |body: &str| post(g.plain_port, &h, body).message();

    let tools = call(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"echo"), "{names:?}");
    assert!(names.iter().all(|n| !n.contains("__")), "{names:?}");

    let r = call(
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"as-is"}}}"#,
    );
    assert_eq!(r["result"]["content"][0]["text"], "as-is", "{r}");

    let res = call(r#"{"jsonrpc":"2.0","id":3,"method":"resources/list"}"#);
    assert_eq!(
        res["result"]["resources"][0]["uri"], "portcullis://info",
        "{res}"
    );
    let read = call(
        r#"{"jsonrpc":"2.0","id":4,"method":"resources/read","params":{"uri":"portcullis://info"}}"#,
    );
    assert_eq!(
        read["result"]["contents"][0]["uri"], "portcullis://info",
        "{read}"
    );

    // The prefixed form means nothing here: it reaches the upstream verbatim, which knows no such tool.
    let r = call(
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"alpha__echo","arguments":{"text":"x"}}}"#,
    );
    assert!(
        r.get("error").is_some() || r["result"]["isError"] == true,
        "{r}"
    );
}
