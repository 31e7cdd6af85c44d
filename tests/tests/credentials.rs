//! The credential broker end to end: service, agent-scoped and delegated credentials from the embedded
//! store, environment variables, files, a real OpenBao server and a token endpoint, presented to real
//! MCP SDK upstreams. The upstream's `credentials` tool reports digests of what it received, so each
//! test proves which credential arrived without the credential itself reaching the agent; the canary
//! test drives many calls, failures included, and finds none of the secrets anywhere an agent, an
//! operator's log or a scrape could see them.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use portcullis_tests::*;

fn sha(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A value no other test and no earlier run could have produced.
fn canary(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("canary{tag}{}x{nanos}", std::process::id())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `portcullis secret keygen` into `dir/secrets.key` (outside the gateway's data dir).
fn keygen(dir: &Path) -> PathBuf {
    let key = dir.join("secrets.key");
    let out = Command::new(gateway_bin())
        .args(["secret", "keygen"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    key
}

/// `portcullis secret put|rotate REF` with the value on stdin.
fn secret(g: &Gateway, verb: &str, r: &str, value: &str) -> Value {
    let mut child = Command::new(gateway_bin())
        .args(["secret", verb, r, "--json", "--admin"])
        .arg(format!("http://127.0.0.1:{}", g.admin_port))
        .arg("--data-dir")
        .arg(g.data())
        .env_remove("PORTCULLIS_ADMIN_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{value}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "secret {verb} {r}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains(value), "the CLI echoed the value");
    serde_json::from_str(&stdout).unwrap()
}

fn apply(g: &Gateway, dir: &Path, yaml: &str) {
    let f = dir.join("state.yaml");
    std::fs::write(&f, yaml).unwrap();
    ok(g, &["apply", "-f", f.to_str().unwrap(), "--approve"]);
}

fn call_as(g: &Gateway, auth: &str, tool: &str) -> RawResponse {
    call_as_with(g, auth, tool, 7, json!({}))
}

/// A 2026-07-28 `tools/call` of `tool` with `arguments`, presenting `auth` as the bearer token.
fn call_as_with(g: &Gateway, auth: &str, tool: &str, id: u64, arguments: Value) -> RawResponse {
    let bearer = format!("Bearer {auth}");
    let body = modern_body(
        id,
        "tools/call",
        json!({"name": tool, "arguments": arguments}),
    );
    let mut h = JSON_HEADERS.to_vec();
    h.extend([
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", tool),
        ("authorization", bearer.as_str()),
    ]);
    request(g.plain_port, "POST", "/mcp", &h, body.as_bytes()).unwrap()
}

/// What the upstream's `credentials` tool saw.
fn seen(r: &RawResponse) -> Value {
    let m = r.message();
    let text = m["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no tool result: {}", r.text()));
    serde_json::from_str(text).unwrap()
}

fn refused_for_credential(r: &RawResponse, what: &str) {
    assert_eq!(
        r.message()["error"]["data"]["reason"],
        json!("credential_unavailable"),
        "{what}: {}",
        r.text()
    );
}

/// Poll `f` every 100 ms until it is true (15 s at most).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(15), "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A hand-written OpenAPI 3.0 document for the rogue API: an apiKey header scheme for every operation.
const ROGUE_30: &str = r#"
openapi: 3.0.3
info: {title: Rogue, version: "1"}
components:
  securitySchemes:
    key: {type: apiKey, in: header, name: X-Rogue-Key}
security:
  - key: []
paths:
  /ok:
    get:
      operationId: ok
      responses:
        "200":
          description: fine
          content:
            application/json:
              schema: {type: object, properties: {ok: {type: boolean}}}
  /fail:
    get: {operationId: fail, responses: {"200": {description: never}}}
  /garbage:
    get: {operationId: garbage, responses: {"200": {description: never}}}
  /slow:
    get: {operationId: slow, responses: {"200": {description: never}}}
"#;

/// A REST upstream that misbehaves on purpose, one request per connection: `/fail` answers 500 with the
/// request head echoed in the body, `/garbage` echoes the head back without any HTTP framing, `/slow`
/// never answers in time, `/ok` is fine. Returns its port.
fn rogue_api() -> u16 {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split(' ').nth(1).unwrap_or("").to_owned();
                let reply = if path.starts_with("/fail") {
                    let body = format!("upstream exploded; you sent:\n{text}");
                    format!("HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).into_bytes()
                } else if path.starts_with("/garbage") {
                    format!("\u{0}garbage {text}").into_bytes()
                } else if path.starts_with("/slow") {
                    std::thread::sleep(Duration::from_secs(3));
                    return;
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"ok\":true}".to_vec()
                };
                let _ = conn.write_all(&reply);
            });
        }
    });
    port
}

const POLICIES: &str = r#"
policies:
  - id: testers-all
    text: 'permit(principal in Group::"testers", action, resource);'
"#;

fn agent(name: &str, mode: &str, group: &str) -> String {
    format!(
        "  - {{name: {name}, owner: qa, surface: service, environment: prod, credential_mode: {mode}, groups: [{group}]}}\n"
    )
}

#[test]
fn brokered_credentials_reach_upstreams_and_never_agents() {
    let dir = TempDir::new("cred");
    let key = keygen(dir.path());
    let files = dir.path().join("creds");
    std::fs::create_dir_all(&files).unwrap();
    let alpha_secret = canary("alpha");
    std::fs::write(files.join("alpha-token"), format!("{alpha_secret}\n")).unwrap();
    let gamma_secret = canary("gamma");
    // The gateway inherits this process's environment (nextest runs each test in a process of its own).
    std::env::set_var("PCTEST_SECRET_GAMMA", &gamma_secret);
    let rogue_secret = canary("rogue");
    std::env::set_var("PCTEST_SECRET_ROGUE", &rogue_secret);
    let rogue_port = rogue_api();
    let rejects = dir.path().join("alpha-rejects.log");
    let (_alpha, alpha_port) = py_server(
        "alpha",
        &[
            "--require-auth",
            &format!("Bearer {alpha_secret}"),
            "--reject-log",
            rejects.to_str().unwrap(),
        ],
    );
    let (_beta, beta_port) = py_server("beta", &[]);
    let (_gamma, gamma_port) = py_server("gamma", &[]);
    let extra = format!(
        "pinning:\n  recheck_interval: 1h\nlimits:\n  upstream_response_timeout: 1s\nsecrets:\n  key_file: {}\n  cache_ttl: 1s\n  stores:\n    - {{name: files, kind: file, dir: {}}}\n    - {{name: env, kind: env, prefix: PCTEST_SECRET_}}\n",
        key.display(),
        files.display()
    );
    let g = Gateway::start_in(TempDir::new("cred-gw"), "", &[], &extra, &["--cores", "2"]);

    let alice_secret = canary("alice");
    let bob_secret = canary("bob");
    assert_eq!(
        secret(&g, "put", "embedded/beta/alice#token", &alice_secret)["version"],
        json!(1)
    );
    secret(&g, "put", "embedded/beta/bob#token", &bob_secret);
    let state = format!(
        r#"capabilities:
  - name: alpha
    kind: mcp
    owner: team
    risk: low
    environment: prod
    endpoint: http://127.0.0.1:{alpha_port}/mcp
    credential:
      service: files/alpha-token
  - name: beta
    kind: mcp
    owner: team
    risk: low
    environment: prod
    endpoint: http://127.0.0.1:{beta_port}/mcp
    credential:
      agent_scoped: "embedded/beta/{{agent}}#token"
      inject: {{type: basic, username: portcullis}}
  - name: gamma
    kind: mcp
    owner: team
    risk: low
    environment: prod
    endpoint: http://127.0.0.1:{gamma_port}/mcp
    credential:
      service: env/GAMMA
      inject: {{type: header, name: X-Api-Key}}
  - name: rogue
    kind: openapi
    owner: team
    risk: low
    environment: prod
    endpoint: http://127.0.0.1:{rogue_port}
    credential:
      service: env/ROGUE
agents:
{}{}{}{}{POLICIES}"#,
        agent("svc", "service", "testers"),
        agent("alice", "agent-scoped", "testers"),
        agent("bob", "agent-scoped", "testers"),
        agent("nobody", "service", "outsiders"),
    );
    let f = dir.path().join("state.yaml");
    std::fs::write(&f, &state).unwrap();
    ok(&g, &["apply", "-f", f.to_str().unwrap()]);
    let doc = dir.path().join("rogue.yaml");
    std::fs::write(&doc, ROGUE_30).unwrap();
    ok(&g, &["openapi", "import", "rogue", doc.to_str().unwrap()]);
    ok(&g, &["openapi", "select", "rogue", "*"]);
    // Approval lists alpha's tools, which alpha serves only to its service credential.
    ok(&g, &["approve", "--note", "brokered"]);
    let key_of = |agent: &str| {
        ok(&g, &["agent", "key", "issue", agent])["key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (svc, alice, bob, nobody) = (
        key_of("svc"),
        key_of("alice"),
        key_of("bob"),
        key_of("nobody"),
    );

    // service: the gateway's own credential, from a file, as a bearer token.
    let r = call_as(&g, &svc, "alpha__credentials");
    let s = seen(&r);
    assert_eq!(
        s["authorization_sha256"],
        json!(sha(&format!("Bearer {alpha_secret}"))),
        "{s}"
    );
    // service: from the environment, in a custom header; nothing in Authorization.
    let s = seen(&call_as(&g, &svc, "gamma__credentials"));
    assert_eq!(s["x_api_key_sha256"], json!(sha(&gamma_secret)), "{s}");
    assert_eq!(
        s["authorization_sha256"],
        Value::Null,
        "the agent's key went upstream: {s}"
    );
    // agent-scoped: each agent its own, from the embedded store, as basic auth.
    let basic = |v: &str| {
        sha(&format!(
            "Basic {}",
            b64(format!("portcullis:{v}").as_bytes())
        ))
    };
    let s = seen(&call_as(&g, &alice, "beta__credentials"));
    assert_eq!(
        s["authorization_sha256"],
        json!(basic(&alice_secret)),
        "{s}"
    );
    let s = seen(&call_as(&g, &bob, "beta__credentials"));
    assert_eq!(s["authorization_sha256"], json!(basic(&bob_secret)), "{s}");
    // A REST API described by a hand-written 3.0 document: its apiKey scheme places the key.
    let r = call_as(&g, &svc, "rogue__ok");
    assert_eq!(
        r.message()["result"]["structuredContent"],
        json!({"ok": true}),
        "{}",
        r.text()
    );
    // Through the official SDK client too (a 2025-11-25 session, upstream session opened as alice).
    act_as(&alice);
    let v = py_client(
        &g.url(),
        "2025-11-25",
        "call",
        &["--tool", "beta__credentials"],
    );
    let s: Value = serde_json::from_str(v["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        s["authorization_sha256"],
        json!(basic(&alice_secret)),
        "{s}"
    );
    act_anonymously();
    // No mode falls back to another's credential.
    refused_for_credential(
        &call_as(&g, &svc, "beta__credentials"),
        "service agent, agent-scoped only",
    );
    refused_for_credential(
        &call_as(&g, &alice, "alpha__credentials"),
        "agent-scoped agent, service only",
    );

    // Rotation: a new embedded value is presented once the cache lifetime has passed, without restart.
    let alice_rotated = canary("alicerot");
    assert_eq!(
        secret(&g, "rotate", "embedded/beta/alice#token", &alice_rotated)["version"],
        json!(2)
    );
    eventually("the rotated secret reaches the upstream", || {
        seen(&call_as(&g, &alice, "beta__credentials"))["authorization_sha256"]
            == json!(basic(&alice_rotated))
    });
    let listed = ok(&g, &["secret", "list"]);
    assert!(
        listed.to_string().contains("embedded/beta/alice#token"),
        "{listed}"
    );

    // A store that fails: alpha's file goes away. Its calls are refused, never sent without the
    // credential; the other capabilities keep working.
    std::fs::remove_file(files.join("alpha-token")).unwrap();
    eventually("alpha calls refused for their credential", || {
        call_as(&g, &svc, "alpha__credentials").message()["error"]["data"]["reason"]
            == json!("credential_unavailable")
    });
    assert_eq!(
        seen(&call_as(&g, &svc, "gamma__credentials"))["x_api_key_sha256"],
        json!(sha(&gamma_secret))
    );
    assert!(
        std::fs::read_to_string(&rejects)
            .unwrap_or_default()
            .is_empty(),
        "alpha got a request without its credential"
    );
    let check = cli(&g, &["secret", "check", "files/alpha-token"]);
    assert!(!check.status.success());

    // The canary sweep. alpha now gets a wrong credential (itself a canary) and answers 401 echoing every
    // header it received; policy denials, schema refusals and credential failures are mixed in.
    let wrong = canary("wrong");
    std::fs::write(files.join("alpha-token"), &wrong).unwrap();
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let calls: [(&str, &str); 8] = [
        (&svc, "alpha__credentials"),
        (&svc, "gamma__credentials"),
        (&alice, "beta__credentials"),
        (&bob, "beta__credentials"),
        (&nobody, "gamma__credentials"),
        (&svc, "beta__credentials"),
        (&svc, "rogue__fail"),
        (&svc, "rogue__garbage"),
    ];
    for i in 0..1500 {
        let (who, tool) = calls[i % calls.len()];
        let r = if i % 50 == 49 {
            // Arguments the pinned schema refuses.
            call_as_with(&g, who, tool, 9, json!({"x": {"y": 1}}))
        } else {
            call_as(&g, who, tool)
        };
        bodies.push(r.body.clone());
        for (n, v) in &r.headers {
            bodies.push(format!("{n}: {v}").into_bytes());
        }
    }
    // The rogue API's 500 echoed its key: the agent got the error with the key redacted; its garbage and
    // its silence became upstream errors.
    let r = call_as(&g, &svc, "rogue__fail");
    assert!(
        r.text().contains("[redacted]") && r.text().contains("HTTP 500"),
        "{}",
        r.text()
    );
    bodies.push(r.body.clone());
    let r = call_as(&g, &svc, "rogue__garbage");
    assert_eq!(
        r.message()["error"]["data"]["reason"],
        json!("upstream_protocol_error"),
        "{}",
        r.text()
    );
    for _ in 0..3 {
        let r = call_as(&g, &svc, "rogue__slow");
        assert_eq!(
            r.message()["error"]["data"]["reason"],
            json!("upstream_timeout"),
            "{}",
            r.text()
        );
        bodies.push(r.body.clone());
    }
    let alpha_answers = call_as(&g, &svc, "alpha__credentials");
    assert_ne!(alpha_answers.status, 0);
    assert!(
        !alpha_answers.text().contains("you_sent"),
        "an upstream's 401 page reached the agent: {}",
        alpha_answers.text()
    );
    bodies.push(g.metrics().into_bytes());
    bodies.push(
        request(g.admin_port, "GET", "/metrics", &[], b"")
            .unwrap()
            .body,
    );
    for verb in [["secret", "list"], ["capability", "list"]] {
        bodies.push(ok(&g, &verb).to_string().into_bytes());
    }
    let mut on_disk = Vec::new();
    files_under(&g.data(), &mut on_disk);
    let log = g.output.lock().unwrap().clone();
    for c in [
        &alpha_secret,
        &gamma_secret,
        &alice_secret,
        &bob_secret,
        &alice_rotated,
        &wrong,
    ] {
        assert!(
            !log.contains(c.as_str()),
            "a secret in the gateway's output"
        );
        for b in &bodies {
            assert!(
                !contains(b, c),
                "a secret in what an agent or operator saw: {}",
                String::from_utf8_lossy(b)
            );
        }
        for (p, b) in &on_disk {
            assert!(!contains(b, c), "a secret in clear in {}", p.display());
        }
    }
    // The wrong credential did go to alpha (which refused it), so the sweep saw the echo path.
    assert!(std::fs::read_to_string(&rejects).unwrap().lines().count() > 0);
}

const ISSUER: &str = "https://idp.test";
const RESOURCE: &str = "https://gw.test/mcp";

#[test]
fn delegated_agents_act_through_token_exchange() {
    let idp = Idp::start();
    let dir = TempDir::new("deleg");
    let key = keygen(dir.path());
    let (_alpha, alpha_port) = py_server("alpha", &[]);
    let extra = format!(
        "pinning:\n  recheck_interval: 1h\nidentity:\n  resource: [\"{RESOURCE}\"]\n  jwt:\n    - issuer: {ISSUER}\n      jwks_url: {}\n      tls_ca_file: {}\n      leeway: 5s\nsecrets:\n  key_file: {}\n  expiry_margin: 1s\n  exchange_tls_ca_file: {}\n",
        idp.jwks_url(),
        idp.ca,
        key.display(),
        idp.ca
    );
    let g = Gateway::start_in(TempDir::new("deleg-gw"), "", &[], &extra, &["--cores", "2"]);
    let client_secret = canary("client");
    secret(&g, "put", "embedded/idp#client_secret", &client_secret);
    let exchange = |cfg: Value| {
        let r = request(
            idp.control,
            "POST",
            "/exchange",
            &[("authorization", "none")],
            cfg.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200);
    };
    let exchanges = || {
        request(
            idp.control,
            "GET",
            "/exchanges",
            &[("authorization", "none")],
            b"",
        )
        .unwrap()
        .json()["exchanges"]
            .as_u64()
            .unwrap()
    };
    exchange(json!({"client_id": "portcullis", "client_secret": client_secret, "expires_in": 300}));
    let endpoint = format!("http://127.0.0.1:{alpha_port}/mcp");
    let state = format!(
        r#"capabilities:
  - name: alpha
    kind: mcp
    owner: team
    risk: low
    environment: prod
    endpoint: {endpoint}
    credential:
      delegated:
        token_endpoint: https://127.0.0.1:{}/token
        client_id: portcullis
        client_secret: embedded/idp#client_secret
agents:
{}{POLICIES}"#,
        idp.jwks_port,
        agent("dave", "delegated", "testers"),
    );
    apply(&g, dir.path(), &state);
    let token = |n: u64| {
        idp.mint(
            "r1",
            json!({"iss": ISSUER, "aud": RESOURCE, "sub": "dave", "exp": now() + 300, "iat": now(), "jti": format!("t{n}")}),
            None,
        )
    };

    let t1 = token(1);
    let s = seen(&call_as(&g, &t1, "alpha__credentials"));
    let claims = &s["jwt_claims"];
    assert_eq!(claims["sub"], json!("dave"), "{s}");
    assert_eq!(claims["aud"], json!(endpoint), "{s}");
    assert_eq!(claims["act"], json!({"sub": "portcullis"}), "{s}");
    assert_ne!(
        s["authorization_sha256"],
        json!(sha(&format!("Bearer {t1}"))),
        "the agent's token went upstream"
    );
    let after_first = exchanges();
    // Cached until shortly before it expires: the same token is not exchanged again.
    for _ in 0..5 {
        seen(&call_as(&g, &t1, "alpha__credentials"));
    }
    assert!(
        exchanges() <= after_first + 1,
        "one exchange per core at most"
    );

    // An API key cannot be exchanged: a delegated agent without a token is refused, not served as the
    // gateway.
    let dave_key = ok(&g, &["agent", "key", "issue", "dave"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    refused_for_credential(
        &call_as(&g, &dave_key, "alpha__credentials"),
        "delegated agent with an API key",
    );

    // A refused exchange denies the call; the server's description (which echoes the subject token)
    // goes nowhere.
    exchange(json!({"refuse": true}));
    let t2 = token(2);
    let r = call_as(&g, &t2, "alpha__credentials");
    refused_for_credential(&r, "refused exchange");
    assert!(!r.text().contains(&t2));
    assert!(
        !g.output.lock().unwrap().contains(&t2),
        "the subject token in the log"
    );

    // Expiry: a token issued for 2 s is dropped 1 s early and exchanged again.
    exchange(json!({"refuse": false, "expires_in": 2}));
    let t3 = token(3);
    seen(&call_as(&g, &t3, "alpha__credentials"));
    let n = exchanges();
    eventually("an expiring token is exchanged again", || {
        seen(&call_as(&g, &t3, "alpha__credentials"));
        exchanges() > n + 1
    });
    assert!(!g.output.lock().unwrap().contains(&client_secret));
}

fn bao(addr: &str, ca: &Path, args: &[&str]) -> String {
    let bin = python().parent().unwrap().join("bao");
    let out = Command::new(bin)
        .args(args)
        .env("BAO_ADDR", addr)
        .env("BAO_CACERT", ca)
        .env("BAO_TOKEN", "root")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bao {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn openbao_kv_with_approle_login_renewal_and_outage() {
    let dir = TempDir::new("bao");
    let port = free_port();
    let addr = format!("https://127.0.0.1:{port}");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let mut cmd = Command::new(python().parent().unwrap().join("bao"));
    cmd.args([
        "server",
        "-dev",
        "-dev-tls",
        "-dev-root-token-id=root",
        &format!("-dev-listen-address=127.0.0.1:{port}"),
    ])
    .arg(format!("-dev-tls-cert-dir={}", certs.display()))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut server = Proc {
        child: cmd.spawn().unwrap(),
        name: "bao".into(),
    };
    let ca = certs.join("vault-ca.pem");
    eventually("OpenBao is up", || {
        ca.exists()
            && Command::new(python().parent().unwrap().join("bao"))
                .args(["status"])
                .env("BAO_ADDR", &addr)
                .env("BAO_CACERT", &ca)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    });
    let first = canary("bao");
    bao(
        &addr,
        &ca,
        &["kv", "put", "secret/alpha", &format!("token={first}")],
    );
    bao(&addr, &ca, &["auth", "enable", "approle"]);
    let policy = dir.path().join("policy.hcl");
    std::fs::write(
        &policy,
        "path \"secret/data/*\" { capabilities = [\"read\"] }\n",
    )
    .unwrap();
    bao(
        &addr,
        &ca,
        &["policy", "write", "portcullis", policy.to_str().unwrap()],
    );
    // A short token lifetime, so the gateway renews it during the test.
    bao(
        &addr,
        &ca,
        &[
            "write",
            "auth/approle/role/portcullis",
            "token_policies=portcullis",
            "token_ttl=4s",
            "token_max_ttl=1h",
        ],
    );
    let role_id = bao(
        &addr,
        &ca,
        &[
            "read",
            "-field=role_id",
            "auth/approle/role/portcullis/role-id",
        ],
    );
    let secret_id = bao(
        &addr,
        &ca,
        &[
            "write",
            "-f",
            "-field=secret_id",
            "auth/approle/role/portcullis/secret-id",
        ],
    );
    let secret_id_file = dir.path().join("secret-id");
    std::fs::write(&secret_id_file, &secret_id).unwrap();
    let root_token_file = dir.path().join("root-token");
    std::fs::write(&root_token_file, "root\n").unwrap();

    let (_alpha, alpha_port) = py_server("alpha", &[]);
    let (_gamma, gamma_port) = py_server("gamma", &[]);
    let gamma_secret = canary("gammaenv");
    std::env::set_var("PCTEST_BAO_GAMMA", &gamma_secret);
    let key = keygen(dir.path());
    let extra = format!(
        "pinning:\n  recheck_interval: 1h\nsecrets:\n  key_file: {}\n  cache_ttl: 1s\n  timeout: 3s\n  stores:\n    - name: bao\n      kind: openbao\n      address: {addr}\n      tls_ca_file: {}\n      auth:\n        approle: {{role_id: {role_id}, secret_id_file: {}}}\n    - {{name: env, kind: env, prefix: PCTEST_BAO_}}\n    - name: baoroot\n      kind: openbao\n      address: {addr}\n      tls_ca_file: {}\n      auth: {{token_file: {}}}\n",
        key.display(),
        ca.display(),
        secret_id_file.display(),
        ca.display(),
        root_token_file.display()
    );
    let g = Gateway::start_in(TempDir::new("bao-gw"), "", &[], &extra, &["--cores", "2"]);
    let state = format!(
        r#"capabilities:
  - name: alpha
    kind: mcp
    owner: team
    risk: low
    environment: prod
    endpoint: http://127.0.0.1:{alpha_port}/mcp
    credential:
      service: "bao/alpha#token"
  - name: gamma
    kind: mcp
    owner: team
    risk: low
    environment: prod
    endpoint: http://127.0.0.1:{gamma_port}/mcp
    credential:
      service: env/GAMMA
agents:
{}{POLICIES}"#,
        agent("svc", "service", "testers"),
    );
    apply(&g, dir.path(), &state);
    let svc = ok(&g, &["agent", "key", "issue", "svc"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let digest = |r: &RawResponse| seen(r)["authorization_sha256"].clone();
    assert_eq!(
        digest(&call_as(&g, &svc, "alpha__credentials")),
        json!(sha(&format!("Bearer {first}")))
    );
    // The same secret through a store that logs in with a token file instead of AppRole.
    let check = ok(&g, &["secret", "check", "baoroot/alpha#token"]);
    assert_eq!(check["resolves"], json!(true), "{check}");
    let missing = cli(&g, &["secret", "check", "baoroot/nothing-here#token"]);
    assert!(!missing.status.success());
    // Rotated in OpenBao: picked up within the cache lifetime.
    let second = canary("bao2");
    bao(
        &addr,
        &ca,
        &["kv", "put", "secret/alpha", &format!("token={second}")],
    );
    eventually("the rotated OpenBao secret reaches the upstream", || {
        digest(&call_as(&g, &svc, "alpha__credentials")) == json!(sha(&format!("Bearer {second}")))
    });
    // Every core's cached copy has lived out its 1 s by now. Past several lifetimes of the AppRole token
    // (4 s, renewed at half), lookups keep working.
    std::thread::sleep(Duration::from_millis(1200));
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(6) {
        assert_eq!(
            digest(&call_as(&g, &svc, "alpha__credentials")),
            json!(sha(&format!("Bearer {second}")))
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // OpenBao goes down: alpha fails closed, gamma (another store) keeps working.
    server.child.kill().unwrap();
    let _ = server.child.wait();
    eventually("alpha refused once OpenBao is gone", || {
        call_as(&g, &svc, "alpha__credentials").message()["error"]["data"]["reason"]
            == json!("credential_unavailable")
    });
    assert_eq!(
        digest(&call_as(&g, &svc, "gamma__credentials")),
        json!(sha(&format!("Bearer {gamma_secret}")))
    );
    let metrics = g.metrics();
    assert!(
        metrics.contains("portcullis_credential_failures_total{store=\"bao\"}"),
        "{metrics}"
    );
    let log = g.output.lock().unwrap().clone();
    for c in [&first, &second, &secret_id, &gamma_secret] {
        assert!(
            !log.contains(c.as_str()),
            "a secret in the gateway's output"
        );
        assert!(!metrics.contains(c.as_str()));
    }
}

#[test]
fn openapi_security_schemes_say_where_the_brokered_key_goes() {
    let dir = TempDir::new("cred-api");
    let key = keygen(dir.path());
    let (_api, port) = rest_api();
    let extra = format!(
        "pinning:\n  recheck_interval: 1h\nsecrets:\n  key_file: {}\n",
        key.display()
    );
    let g = Gateway::start_in(
        TempDir::new("cred-api-gw"),
        "",
        &[],
        &extra,
        &["--cores", "2"],
    );
    let shop_key = canary("shop");
    secret(&g, "put", "embedded/shop#key", &shop_key);
    // No `inject`: the document's apiKey scheme (header X-Shop-Key) says where the key goes.
    let state = format!(
        r#"capabilities:
  - name: shop
    kind: openapi
    owner: team
    risk: medium
    environment: prod
    endpoint: http://127.0.0.1:{port}
    credential:
      service: embedded/shop#key
agents:
{}{POLICIES}"#,
        agent("svc", "service", "testers"),
    );
    let f = dir.path().join("state.yaml");
    std::fs::write(&f, state).unwrap();
    ok(&g, &["apply", "-f", f.to_str().unwrap()]);
    let doc = request(port, "GET", "/openapi.json", &[], b"").unwrap();
    let doc_file = dir.path().join("shop.json");
    std::fs::write(&doc_file, &doc.body).unwrap();
    ok(
        &g,
        &["openapi", "import", "shop", doc_file.to_str().unwrap()],
    );
    ok(&g, &["openapi", "select", "shop", "tag:auth"]);
    ok(&g, &["approve", "--note", "shop with its key"]);
    let svc = ok(&g, &["agent", "key", "issue", "svc"])["key"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = call_as(&g, &svc, "shop__whoami_whoami_get");
    let m = r.message();
    assert_eq!(
        m["result"]["structuredContent"]["key_sha256"],
        json!(sha(&shop_key)),
        "{}",
        r.text()
    );
    // The API echoes the key in its 401: the agent gets the error with the key redacted.
    let r = call_as(&g, &svc, "shop__leaky_leaky_get");
    let m = r.message();
    assert_eq!(m["result"]["isError"], json!(true), "{}", r.text());
    assert!(r.text().contains("[redacted]"), "{}", r.text());
    assert!(!r.text().contains(&shop_key), "the key reached the agent");
    // The agent's own key went nowhere upstream.
    let calls = request(port, "GET", "/_calls", &[], b"").unwrap().text();
    assert!(!calls.contains(&svc), "{calls}");
    assert!(!g.output.lock().unwrap().contains(&shop_key));
}

#[test]
fn an_https_mcp_server_is_listed_and_called_over_verified_tls_with_its_credential() {
    let idp = Idp::start();
    let cert = idp.dir.path().join("cert.pem");
    let tls_key = idp.dir.path().join("key.pem");
    let token = canary("tls");
    let (_alpha, port) = py_server(
        "alpha",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            tls_key.to_str().unwrap(),
            "--require-auth",
            &format!("Bearer {token}"),
        ],
    );
    let dir = TempDir::new("cred-tls");
    let key = keygen(dir.path());
    let extra = format!(
        "pinning:\n  recheck_interval: 1h\nupstream_tls:\n  ca_file: {}\nsecrets:\n  key_file: {}\n",
        idp.ca,
        key.display()
    );
    let g = Gateway::start_in(
        TempDir::new("cred-tls-gw"),
        "",
        &[],
        &extra,
        &["--cores", "2"],
    );
    secret(&g, "put", "embedded/alpha#token", &token);
    let state = format!(
        r#"capabilities:
  - name: alpha
    kind: mcp
    owner: team
    risk: low
    environment: prod
    endpoint: https://127.0.0.1:{port}/mcp
    credential:
      service: embedded/alpha#token
agents:
{}{POLICIES}"#,
        agent("svc", "service", "testers"),
    );
    // Approval lists the tools over TLS, with the service credential.
    apply(&g, dir.path(), &state);
    let svc = ok(&g, &["agent", "key", "issue", "svc"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = seen(&call_as(&g, &svc, "alpha__credentials"));
    assert_eq!(
        s["authorization_sha256"],
        json!(sha(&format!("Bearer {token}"))),
        "{s}"
    );
    act_as(&svc);
    let v = py_client(
        &g.url(),
        "2025-11-25",
        "call",
        &["--tool", "alpha__echo", "--args", r#"{"text":"over tls"}"#],
    );
    assert_eq!(v["text"], json!("over tls"), "{v}");
}
