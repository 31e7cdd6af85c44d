//! Agent identity from an external identity provider: JWTs minted by PyJWT, keys served as a JWKS over
//! HTTPS by `tests/peers/idp.py`, verified by the gateway and mapped to registered agents. Bad tokens
//! are refused with 401 and a pointer at the protected-resource metadata; key rotation, unknown-kid
//! storms and a JWKS endpoint that goes down behave as the README says.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use portcullis_tests::*;

const ISSUER: &str = "https://idp.test";
const RESOURCE: &str = "https://gw.test/mcp";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str) -> Value {
    json!({"iss": ISSUER, "aud": RESOURCE, "sub": sub, "exp": now() + 300, "iat": now()})
}

fn config(idp: &Idp, extra: &str) -> String {
    format!(
        "pinning:\n  recheck_interval: 1h\nidentity:\n  resource: [\"{RESOURCE}\"]\n  jwt:\n    - issuer: {ISSUER}\n      jwks_url: {}\n      tls_ca_file: {}\n      leeway: 5s\n{extra}",
        idp.jwks_url(),
        idp.ca
    )
}

/// A gateway with capability `alpha`, agents `ops` (everything) and `viewer` (only echo), approved.
fn governed(idp: &Idp, extra: &str) -> (Gateway, Proc) {
    let (up, port) = py_server("alpha", &[]);
    let g = Gateway::start(&[], &config(idp, extra));
    add_capability(&g, "alpha", port);
    ops_and_viewer(&g);
    ok(&g, &["approve", "--note", "jwt agents"]);
    (g, up)
}

fn list_with(g: &Gateway, token: &str) -> RawResponse {
    let auth = format!("Bearer {token}");
    let body = modern_body(1, "tools/list", json!({}));
    let mut h = JSON_HEADERS.to_vec();
    h.extend([
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/list"),
        ("authorization", auth.as_str()),
    ]);
    request(g.plain_port, "POST", "/mcp", &h, body.as_bytes()).unwrap()
}

fn tool_names(r: &RawResponse) -> Vec<String> {
    r.json()["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", r.text()))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_refused(r: &RawResponse, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert_eq!(r.reason(), "unauthenticated", "{what}: {}", r.text());
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains("resource_metadata=")
            && challenge.contains(".well-known/oauth-protected-resource"),
        "{what}: {challenge}"
    );
}

fn identity(g: &Gateway) -> Value {
    ok(g, &["identity"])
}

#[test]
fn tokens_name_agents_and_bad_ones_are_refused() {
    let idp = Idp::start();
    let (g, _up) = governed(&idp, "");

    // Each algorithm admits, and the claim names the agent policy sees.
    for kid in ["r1", "e1", "d1"] {
        let r = list_with(&g, &idp.mint(kid, claims("ops"), None));
        assert_eq!(r.status, 200, "{kid}: {}", r.text());
        assert!(tool_names(&r).contains(&"alpha__add".to_owned()), "{kid}");
    }
    let r = list_with(&g, &idp.mint("e1", claims("viewer"), None));
    assert_eq!(tool_names(&r), ["alpha__echo"]);

    // The official SDK clients present the token as their bearer.
    act_as(&idp.mint("d1", claims("viewer"), None));
    let v = py_client(&g.url(), "2025-11-25", "list", &["--tools-only"]);
    assert_eq!(v["tools"], json!(["alpha__echo"]), "{v}");
    let v = ts_client("v2", &g.url(), "2026-07-28", "list", &["--tools-only"]);
    assert_eq!(v["tools"], json!(["alpha__echo"]), "{v}");
    act_anonymously();

    // A valid token for nobody registered.
    let r = list_with(&g, &idp.mint("r1", claims("ghost"), None));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.reason(), "agent_not_registered");

    let with = |k: &str, v: Value| {
        let mut c = claims("ops");
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v;
        }
        c
    };
    let bad = [
        (
            "expired",
            idp.mint("r1", with("exp", json!(now() - 120)), None),
        ),
        (
            "not yet valid",
            idp.mint("r1", with("nbf", json!(now() + 120)), None),
        ),
        ("no expiry", idp.mint("e1", with("exp", Value::Null), None)),
        (
            "other audience",
            idp.mint("e1", with("aud", json!("https://other.test/mcp")), None),
        ),
        (
            "other issuer",
            idp.mint("d1", with("iss", json!("https://evil.test")), None),
        ),
        ("alg none", idp.mint("r1", claims("ops"), Some("none"))),
        (
            "HS256 keyed with the public key",
            idp.mint("r1", claims("ops"), Some("hs256-public")),
        ),
        (
            "signed by a stranger",
            idp.mint("r1", claims("ops"), Some("stranger")),
        ),
        (
            "oversized",
            idp.mint("d1", with("pad", json!("x".repeat(9000))), None),
        ),
        ("garbage", "eyJhbGciOiJSUzI1NiJ9.eyJ.AAAA".to_owned()),
    ];
    for (what, token) in &bad {
        assert_refused(&list_with(&g, token), what);
    }
    // An agent's own token is refused the same way on every method, GET streams included.
    let r = request(
        g.plain_port,
        "GET",
        "/mcp",
        &[
            ("accept", "text/event-stream"),
            ("authorization", &format!("Bearer {}", bad[0].1)),
        ],
        b"",
    )
    .unwrap();
    assert_refused(&r, "expired on GET");

    // The protected-resource metadata names this resource and the identity provider.
    let r = request(
        g.plain_port,
        "GET",
        "/.well-known/oauth-protected-resource/mcp",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["resource"], json!(RESOURCE));
    assert_eq!(r.json()["authorization_servers"], json!([ISSUER]));

    // Refusals are counted by why; tokens never reach the log or the admin view.
    let m = g.metrics();
    for code in [
        "token_expired",
        "token_wrong_audience",
        "token_algorithm",
        "token_bad_signature",
        "token_too_large",
    ] {
        assert!(
            m.contains(&format!(
                "portcullis_jwt_refused_total{{reason=\"{code}\"}}"
            )),
            "{code}\n{m}"
        );
    }
    let id = identity(&g);
    assert_eq!(id["providers"][0]["keys"], json!(3), "{id}");
    assert!(!id.to_string().contains(&bad[0].1));
}

#[test]
fn rotated_keys_are_fetched_once_and_kid_storms_are_throttled() {
    let idp = Idp::start();
    let (g, _up) = governed(
        &idp,
        "      jwks_refresh: 1h\n      unknown_kid_refresh_min: 2s\n",
    );
    let r = list_with(&g, &idp.mint("r1", claims("ops"), None));
    assert_eq!(r.status, 200, "{}", r.text());

    // A key added after the last fetch: its first token causes one refetch and is admitted.
    idp.rotate("r2", "ES256");
    std::thread::sleep(Duration::from_millis(2100));
    let before = idp.hits();
    let r = list_with(&g, &idp.mint("r2", claims("ops"), None));
    assert_eq!(r.status, 200, "rotated key: {}", r.text());
    assert_eq!(idp.hits(), before + 1);

    // Made-up kids right after: refused, and at most one more fetch reaches the identity provider.
    let storm: Vec<String> = (0..30)
        .map(|i| idp.mint(&format!("made-up-{i}"), claims("ops"), Some("stranger")))
        .collect();
    let storm_start = idp.hits();
    for t in &storm {
        assert_refused(&list_with(&g, t), "unknown kid");
    }
    assert!(
        idp.hits() <= storm_start + 1,
        "{} fetches",
        idp.hits() - storm_start
    );
    let id = identity(&g);
    assert!(
        id["providers"][0]["unknown_kid_throttled_total"]
            .as_u64()
            .unwrap()
            >= 29,
        "{id}"
    );
    assert_eq!(id["providers"][0]["keys"], json!(4), "{id}");
}

/// Poll `f` until it holds (30 s at most).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(30), "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn keys_outlive_an_outage_until_their_limit_then_tokens_fail_closed() {
    let idp = Idp::start();
    let (g, _up) = governed(
        &idp,
        "      jwks_refresh: 1s\n      jwks_max_age: 3s\n      unknown_kid_refresh_min: 1s\n",
    );
    let token = idp.mint("e1", claims("ops"), None);
    assert_eq!(list_with(&g, &token).status, 200);

    idp.set_down(true);
    eventually("a failed fetch", || {
        identity(&g)["providers"][0]["fetch_failures_total"]
            .as_u64()
            .unwrap()
            > 0
    });
    // Within jwks_max_age the held keys still admit.
    let id = identity(&g);
    if id["providers"][0]["expired"] == json!(false) {
        assert_eq!(list_with(&g, &token).status, 200, "{id}");
    }
    eventually("keys expired", || {
        identity(&g)["providers"][0]["expired"] == json!(true)
    });
    assert_refused(&list_with(&g, &token), "keys past jwks_max_age");
    assert_eq!(identity(&g)["providers"][0]["keys"], json!(0));

    idp.set_down(false);
    eventually("keys back", || list_with(&g, &token).status == 200);
}

/// `tools/list` over TLS with curl (HTTP/2, or HTTP/1.1), presenting client certificate `cert` from
/// `pki` and `bearer`: the HTTP status and body, or curl's complaint when the handshake fails.
fn curl_list(
    g: &Gateway,
    pki: &TempDir,
    cert: Option<&str>,
    bearer: Option<&str>,
    h1: bool,
) -> Result<(u16, Value), String> {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--cacert"])
        .arg(g.data().join("tls-cert.pem"))
        .args(["-w", "\n%{http_code}"]);
    cmd.arg(if h1 { "--http1.1" } else { "--http2" });
    if let Some(c) = cert {
        cmd.arg("--cert")
            .arg(pki.path().join(format!("{c}.pem")))
            .arg("--key")
            .arg(pki.path().join(format!("{c}.key")));
    }
    if let Some(b) = bearer {
        cmd.args(["-H", &format!("authorization: Bearer {b}")]);
    }
    for h in [
        "content-type: application/json",
        "accept: application/json, text/event-stream",
        "mcp-protocol-version: 2026-07-28",
        "mcp-method: tools/list",
    ] {
        cmd.args(["-H", h]);
    }
    cmd.args(["--data-binary", &modern_body(1, "tools/list", json!({}))])
        .arg(format!("https://127.0.0.1:{}/mcp", g.tls_port));
    let out = cmd.output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    Ok((
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    ))
}

fn names_in(v: &Value) -> Vec<String> {
    v["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn client_certificates_name_agents_and_untrusted_ones_are_refused() {
    let pki = TempDir::new("pki");
    client_pki(&pki, &["ops", "viewer", "ghost"], &["ops"]);
    let (_up, port) = py_server("alpha", &[]);
    let g = Gateway::start(
        &[],
        &format!(
            "pinning:\n  recheck_interval: 1h\nidentity:\n  mtls:\n    ca_file: {}\n",
            pki.path().join("ca.pem").display()
        ),
    );
    add_capability(&g, "alpha", port);
    let (_, viewer_key) = ops_and_viewer(&g);
    ok(&g, &["approve", "--note", "mtls agents"]);

    // The official Python SDK client over HTTPS with the ops certificate.
    let mut cmd = std::process::Command::new(python());
    cmd.arg(peers_dir().join("py_client.py"))
        .arg(format!("https://127.0.0.1:{}/mcp", g.tls_port))
        .args([
            "--revision",
            "2025-11-25",
            "--scenario",
            "list",
            "--tools-only",
        ])
        .env("PORTCULLIS_TLS_CA", g.data().join("tls-cert.pem"))
        .env("PORTCULLIS_CLIENT_CERT", pki.path().join("ops.pem"))
        .env("PORTCULLIS_CLIENT_KEY", pki.path().join("ops.key"));
    let v = run_client(cmd, "py_client over mTLS");
    assert!(
        v["tools"]
            .as_array()
            .unwrap()
            .contains(&json!("alpha__add")),
        "{v}"
    );

    // HTTP/2 and HTTP/1.1 each carry the certificate's agent.
    for h1 in [false, true] {
        let (status, v) = curl_list(&g, &pki, Some("viewer"), None, h1).unwrap();
        assert_eq!(
            (status, names_in(&v)),
            (200, vec!["alpha__echo".to_owned()])
        );
    }
    // A trusted certificate for no registered agent; no certificate and no bearer.
    let (status, v) = curl_list(&g, &pki, Some("ghost"), None, false).unwrap();
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["data"]["reason"], json!("agent_not_registered"));
    let (status, v) = curl_list(&g, &pki, None, None, false).unwrap();
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"]["data"]["reason"], json!("unauthenticated"));
    // A certificate for `ops` from a CA with the same name that the gateway does not trust: no
    // handshake at all.
    let refused = curl_list(&g, &pki, Some("rogue-ops"), None, false);
    assert!(refused.is_err(), "{refused:?}");
    // A bearer credential is used where one is presented: the viewer's key on the ops certificate.
    let (status, v) = curl_list(&g, &pki, Some("ops"), Some(&viewer_key), false).unwrap();
    assert_eq!(
        (status, names_in(&v)),
        (200, vec!["alpha__echo".to_owned()])
    );
}
