//! The audit trail end to end: every request on `/mcp` leaves a record (allowed, denied, failed) that the
//! operator tools find, verify and export; kill -9 under load loses no acknowledged record; a full disk or
//! a spent budget fails calls closed with `audit_unavailable` and the trail recovers when space returns.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use portcullis_tests::*;

/// `portcullis audit ARGS --data-dir DATA`: exit status and stdout.
fn audit(g: &Gateway, args: &[&str]) -> (bool, String) {
    let out = Command::new(gateway_bin())
        .arg("audit")
        .args(args)
        .arg("--data-dir")
        .arg(g.data())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn records(g: &Gateway, filter: &[&str]) -> Vec<Value> {
    let mut args = vec!["search"];
    args.extend_from_slice(filter);
    let (ok, out) = audit(g, &args);
    assert!(ok, "{out}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn by_id(rs: &[Value], id: u64) -> &Value {
    rs.iter()
        .find(|r| r["request_id"] == json!(id.to_string()))
        .unwrap_or_else(|| panic!("no record of request {id} in {rs:?}"))
}

fn call(port: u16, id: u64, tool: &str, args: Value) -> RawResponse {
    modern(
        port,
        id,
        "tools/call",
        json!({"name": tool, "arguments": args}),
    )
}

fn governed() -> (Gateway, Proc, String, String) {
    let (up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[], "pinning:\n  recheck_interval: 1h\n");
    add_capability(&g, "alpha", port);
    let (ops, viewer) = ops_and_viewer(&g);
    ok(&g, &["approve", "--note", "audited"]);
    (g, up, ops, viewer)
}

#[test]
fn every_request_leaves_a_record_that_verifies_and_exports() {
    let (mut g, _up, ops, viewer) = governed();
    act_as(&ops);
    let r = call(
        g.plain_port,
        41,
        "alpha__echo",
        json!({"text": "argument-canary-4711"}),
    );
    assert_eq!(
        r.message()["result"]["content"][0]["text"],
        json!("argument-canary-4711")
    );
    act_as(&viewer);
    let r = call(g.plain_port, 42, "alpha__add", json!({"a": 1, "b": 2}));
    assert_eq!(r.reason(), "policy_denied", "{}", r.text());
    act_anonymously();
    let r = modern(g.plain_port, 43, "tools/list", json!({}));
    assert_eq!(r.status, 401);

    let rs = records(&g, &[]);
    let allowed = by_id(&rs, 41);
    assert_eq!(allowed["decision"], json!("allowed"), "{allowed}");
    assert_eq!(allowed["agent"], json!("ops"));
    assert_eq!(allowed["owner"], json!("qa"));
    assert_eq!(allowed["identity"], json!("api_key"));
    assert_eq!(allowed["method"], json!("tools/call"));
    assert_eq!(allowed["tool"], json!("alpha__echo"));
    assert_eq!(allowed["capability"], json!("alpha"));
    assert_eq!(allowed["policies"], json!(["operators-all"]));
    assert_eq!(allowed["revision"], json!("2026-07-28"));
    assert_eq!(allowed["upstream_status"], json!(200));
    assert_eq!(allowed["status"], json!(200));
    assert_eq!(allowed["transport"], json!("h1"), "{allowed}");
    assert!(
        allowed["snapshot"]
            .as_str()
            .unwrap()
            .starts_with("v1 blake3:"),
        "{allowed}"
    );
    assert_eq!(allowed["arguments_blake3"].as_str().unwrap().len(), 64);
    let denied = by_id(&rs, 42);
    assert_eq!(denied["decision"], json!("denied"), "{denied}");
    assert_eq!(denied["reason"], json!("policy_denied"));
    assert_eq!(denied["agent"], json!("viewer"));
    assert!(
        denied.get("upstream_status").is_none(),
        "a denied call went upstream: {denied}"
    );
    // Refused before its body is read: the record says who (nobody), from where, and why.
    let anonymous = rs
        .iter()
        .find(|r| r["reason"] == json!("unauthenticated"))
        .unwrap_or_else(|| panic!("{rs:?}"));
    assert_eq!(anonymous["status"], json!(401));
    assert_eq!(anonymous["client"], json!("127.0.0.1"));
    assert!(anonymous.get("agent").is_none());
    // Filters.
    let only = records(&g, &["--agent", "viewer", "--decision", "denied"]);
    assert!(!only.is_empty() && only.iter().all(|r| r["agent"] == json!("viewer")));
    // The arguments themselves are not in the trail, only their digest.
    let mut files = Vec::new();
    for e in walk(&g.data().join("audit")) {
        files.push(std::fs::read(e).unwrap());
    }
    assert!(!files.is_empty());
    assert!(files
        .iter()
        .all(|b| !b.windows(20).any(|w| w == b"argument-canary-4711")));

    let (ok_, out) = audit(&g, &["verify"]);
    assert!(ok_ && out.contains("verified"), "{out}");
    let (ok_, out) = audit(&g, &["export", "--format", "ocsf"]);
    assert!(ok_);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), rs.len());
    assert!(lines.iter().all(|l| l["class_uid"] == json!(6003)));
    let (_, tail) = audit(&g, &["tail", "--n", "2"]);
    assert_eq!(tail.lines().count(), 2);
    let metrics = g.metrics();
    assert!(
        metrics.contains("portcullis_audit_records_total{core="),
        "{metrics}"
    );
    // Every record written was waited for and every batch timed, in the histograms' counts.
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {metrics}"))
    };
    let written: f64 = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("portcullis_audit_records_total{core="))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum();
    let batches: f64 = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("portcullis_audit_batches_total{core="))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum();
    assert!(written >= rs.len() as f64, "{metrics}");
    assert_eq!(
        value("portcullis_audit_record_wait_seconds_count{core=\"all\"}"),
        written
    );
    assert_eq!(
        value("portcullis_audit_batch_write_duration_seconds_count{core=\"all\"}"),
        batches
    );
    let p99 = value("portcullis_audit_record_wait_seconds{core=\"all\",quantile=\"0.99\"}");
    assert!(p99 > 0.0 && p99 < 60.0, "{p99}");

    // A clean stop vouches for every tail with a signed checkpoint; a flipped byte is then found.
    assert!(g.proc.terminate().success());
    let (ok_, out) = audit(&g, &["verify", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(ok_, "{v}");
    assert_eq!(v["unanchored"], json!(0), "{v}");
    let seg = walk(&g.data().join("audit"))
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().len() > 200)
        .unwrap();
    let mut b = std::fs::read(&seg).unwrap();
    b[100] ^= 0x20;
    std::fs::write(&seg, &b).unwrap();
    let (ok_, out) = audit(&g, &["verify"]);
    assert!(!ok_ && out.contains("BREAK"), "{out}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Call `alpha__echo` from `threads` threads with unique request ids until `stop`; the ids the gateway
/// answered with a result (acknowledged) go into `acked`.
fn load(
    port: u16,
    base: u64,
    threads: u64,
    stop: &Arc<AtomicBool>,
    acked: &Arc<Mutex<Vec<u64>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|t| {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = base + t * 100_000 + i;
                    i += 1;
                    let body = modern_body(
                        id,
                        "tools/call",
                        json!({"name": "alpha__echo", "arguments": {"text": format!("m{id}")}}),
                    );
                    let mut h = JSON_HEADERS.to_vec();
                    h.extend([
                        ("mcp-protocol-version", "2026-07-28"),
                        ("mcp-method", "tools/call"),
                        ("mcp-name", "alpha__echo"),
                    ]);
                    let Ok(r) = request(port, "POST", "/mcp", &h, body.as_bytes()) else {
                        continue;
                    };
                    if r.status == 200
                        && serde_json::from_slice::<Value>(&r.body)
                            .ok()
                            .is_some_and(|m| {
                                m["result"]["content"][0]["text"] == json!(format!("m{id}"))
                            })
                    {
                        acked.lock().unwrap().push(id);
                    }
                }
            })
        })
        .collect()
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_record() {
    let (mut g, _up, ops, _) = governed();
    act_as(&ops);
    let cycles: u64 = std::env::var("PORTCULLIS_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut total_acked = 0;
    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads = load(g.plain_port, (cycle + 1) * 10_000_000, 4, &stop, &acked);
        // Let some calls complete, then kill the gateway in the middle of others.
        let t0 = std::time::Instant::now();
        while acked.lock().unwrap().len() < 20 && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(150));
        g.proc.child.kill().unwrap();
        let _ = g.proc.child.wait();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        g = g.restart();
        let acked = acked.lock().unwrap().clone();
        assert!(!acked.is_empty(), "cycle {cycle}: no call completed");
        total_acked += acked.len();
        let recorded: HashSet<String> = records(&g, &["--agent", "ops"])
            .into_iter()
            .filter_map(|r| r["request_id"].as_str().map(str::to_owned))
            .collect();
        let missing: Vec<&u64> = acked
            .iter()
            .filter(|id| !recorded.contains(&id.to_string()))
            .collect();
        assert!(
            missing.is_empty(),
            "cycle {cycle}: acknowledged calls without a record: {missing:?}"
        );
        let (ok_, out) = audit(&g, &["verify"]);
        assert!(ok_, "cycle {cycle}: {out}");
    }
    eprintln!("kill -9: {cycles} cycles, {total_acked} acknowledged calls, all recorded");
}

fn refused_for_audit(r: &RawResponse) -> bool {
    r.status == 503 && r.reason() == "audit_unavailable"
}

#[test]
fn a_spent_budget_fails_closed() {
    let (up, port) = py_server("alpha", &[]);
    let g = Gateway::start(
        &[],
        "pinning:\n  recheck_interval: 1h\naudit:\n  segment_bytes: 8192\n  max_bytes: 40000\n",
    );
    add_capability(&g, "alpha", port);
    let (ops, _) = ops_and_viewer(&g);
    ok(&g, &["approve"]);
    act_as(&ops);
    let mut refused = None;
    for id in 1..2000 {
        let r = call(g.plain_port, id, "alpha__echo", json!({"text": "x"}));
        if refused_for_audit(&r) {
            refused = Some(id);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let first = refused.expect("the budget never ran out");
    // Every call before was answered and recorded; the refused one reached no agent as a result.
    let rs = records(&g, &[]);
    for id in 1..first {
        by_id(&rs, id);
    }
    assert!(g
        .metrics()
        .contains("portcullis_audit_failures_total{core="));
    drop(up);
}

/// A tmpfs mounted for one test, unmounted when it ends.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: std::path::PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs (the tests run as root)");
        Tmpfs(path)
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_closed_and_recovers_when_space_returns() {
    let dir = TempDir::new("auditfull");
    let fs = Tmpfs::mount(dir.path().join("auditfs"), "128k");
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("data"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::os::unix::fs::symlink(&fs.0, dir.path().join("data").join("audit")).unwrap();
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start_in(
        dir,
        "",
        &[],
        "pinning:\n  recheck_interval: 1h\n",
        &["--cores", "2"],
    );
    add_capability(&g, "alpha", port);
    let (ops, _) = ops_and_viewer(&g);
    ok(&g, &["approve"]);
    act_as(&ops);
    let mut acked = Vec::new();
    let mut refused = 0;
    for id in 1..3000 {
        let r = call(g.plain_port, id, "alpha__echo", json!({"text": "y"}));
        if refused_for_audit(&r) {
            refused += 1;
            if refused >= 5 {
                break;
            }
        } else {
            assert_eq!(r.status, 200, "{}", r.text());
            acked.push(id);
        }
    }
    assert!(refused >= 5, "the disk never filled");
    // Space returns: calls are served (and recorded) again, without a restart.
    fs.resize("8m");
    let mut served = false;
    for id in 5000..5050 {
        let r = call(g.plain_port, id, "alpha__echo", json!({"text": "z"}));
        if r.status == 200 {
            acked.push(id);
            served = true;
        }
    }
    assert!(served, "no call served after the disk grew");
    let rs = records(&g, &[]);
    for id in &acked {
        by_id(&rs, *id);
    }
    let (ok_, out) = audit(&g, &["verify"]);
    assert!(ok_, "{out}");
}

/// A syslog collector: accepts connections on `port` and parses octet-counted RFC 5424 frames.
fn collector(listener: std::net::TcpListener, got: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let got = got.clone();
            std::thread::spawn(move || {
                use std::io::Read;
                let mut conn = conn;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    // Frames: "LEN SP MSG".
                    while let Some(sp) = buf.iter().position(|b| *b == b' ') {
                        let len: usize = std::str::from_utf8(&buf[..sp]).unwrap().parse().unwrap();
                        if buf.len() < sp + 1 + len {
                            break;
                        }
                        let msg = String::from_utf8(buf[sp + 1..sp + 1 + len].to_vec()).unwrap();
                        got.lock().unwrap().push(msg);
                        buf.drain(..sp + 1 + len);
                    }
                }
            });
        }
    });
}

#[test]
fn records_stream_to_syslog_and_resume_after_the_collector_returns() {
    // The collector is not there yet: records wait on disk.
    let port = free_port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let (_up, up_port) = py_server("alpha", &[]);
    let g = Gateway::start(
        &[],
        &format!("pinning:\n  recheck_interval: 1h\naudit:\n  syslog: {{address: \"127.0.0.1:{port}\"}}\n"),
    );
    add_capability(&g, "alpha", up_port);
    let (ops, viewer) = ops_and_viewer(&g);
    ok(&g, &["approve"]);
    act_as(&ops);
    call(g.plain_port, 7001, "alpha__echo", json!({"text": "s"}));
    act_as(&viewer);
    call(g.plain_port, 7002, "alpha__add", json!({"a": 1, "b": 1}));
    std::thread::sleep(Duration::from_millis(300));
    collector(
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap(),
        got.clone(),
    );
    let seen = |id: &str| {
        got.lock()
            .unwrap()
            .iter()
            .any(|m| m.contains(&format!("\"request_id\":\"{id}\"")))
    };
    let wait = |id: &str| {
        let t0 = std::time::Instant::now();
        while !seen(id) {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{id} never arrived: {:?}",
                got.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("7001");
    wait("7002");
    let msgs = got.lock().unwrap().clone();
    let allowed = msgs
        .iter()
        .find(|m| m.contains("\"request_id\":\"7001\""))
        .unwrap();
    assert!(
        allowed.starts_with("<110>1 "),
        "facility 13, informational: {allowed}"
    );
    assert!(allowed.contains(" portcullis "), "{allowed}");
    let denied = msgs
        .iter()
        .find(|m| m.contains("\"request_id\":\"7002\""))
        .unwrap();
    assert!(
        denied.starts_with("<108>1 "),
        "facility 13, warning: {denied}"
    );

    // A restart resumes from the collector's cursor: new records arrive, old ones are not sent again.
    let before = got.lock().unwrap().len();
    let mut g = g;
    assert!(g.proc.terminate().success());
    let g = g.restart();
    act_as(&ops);
    call(g.plain_port, 7003, "alpha__echo", json!({"text": "t"}));
    wait("7003");
    let after: Vec<String> = got.lock().unwrap()[before..].to_vec();
    assert!(
        !after.iter().any(|m| m.contains("\"request_id\":\"7001\"")),
        "the restart re-sent records the collector had: {after:?}"
    );
}

#[test]
fn a_capability_can_ask_for_its_arguments_recorded_with_fields_redacted() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[], "pinning:\n  recheck_interval: 1h\n");
    let dir = TempDir::new("auditargs");
    let state = format!(
        r#"capabilities:
  - name: alpha
    kind: mcp
    owner: team
    risk: low
    environment: prod
    endpoint: http://127.0.0.1:{port}/mcp
    audit_arguments: {{redact: [B]}}
agents:
  - {{name: ops, owner: qa, surface: service, environment: prod, credential_mode: service, groups: [operators]}}
policies:
  - id: operators-all
    text: 'permit(principal in Group::"operators", action, resource in Capability::"alpha");'
"#
    );
    let f = dir.path().join("state.yaml");
    std::fs::write(&f, state).unwrap();
    ok(&g, &["apply", "-f", f.to_str().unwrap(), "--approve"]);
    let key = ok(&g, &["agent", "key", "issue", "ops"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    act_as(&key);
    let r = call(g.plain_port, 9001, "alpha__add", json!({"a": 20, "b": 22}));
    assert_eq!(
        r.message()["result"]["content"][0]["text"],
        json!("42"),
        "{}",
        r.text()
    );
    let rs = records(&g, &[]);
    let rec = by_id(&rs, 9001);
    assert_eq!(
        rec["arguments"],
        json!({"a": 20, "b": "[redacted]"}),
        "{rec}"
    );
}

#[test]
fn at_the_budget_exported_segments_can_make_room() {
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(
        &[],
        "pinning:\n  recheck_interval: 1h\naudit:\n  segment_bytes: 8192\n  max_bytes: 40000\n  at_budget: drop_oldest_exported\n",
    );
    add_capability(&g, "alpha", port);
    let (ops, _) = ops_and_viewer(&g);
    ok(&g, &["approve"]);
    act_as(&ops);
    // Nothing exported yet: the budget fails closed as ever.
    let mut id = 1;
    loop {
        let r = call(g.plain_port, id, "alpha__echo", json!({"text": "x"}));
        id += 1;
        if refused_for_audit(&r) {
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(id < 2000, "the budget never ran out");
    }
    // A complete export, marked: its segments may go.
    let out = g.dir.path().join("export.jsonl");
    let (ok_, _) = audit(&g, &["export", "--mark", "--out", out.to_str().unwrap()]);
    assert!(ok_);
    let exported = std::fs::read_to_string(&out).unwrap().lines().count();
    assert!(exported > 20);
    for _ in 0..20 {
        let r = call(g.plain_port, id, "alpha__echo", json!({"text": "x"}));
        assert_eq!(r.status, 200, "call {id} after the export: {}", r.text());
        id += 1;
    }
    let pruned = walk(&g.data().join("audit"))
        .into_iter()
        .any(|p| p.ends_with("pruned.json"));
    assert!(pruned, "no segment was pruned");
    let (ok_, out) = audit(&g, &["verify"]);
    assert!(ok_, "{out}");
}
