//! The control plane end to end through the real binary: the CLI drives the admin API of a running
//! gateway; the registry and snapshots live in a real LMDB file in the data dir.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use portcullis_tests::*;

/// `capability add NAME` with valid fields otherwise.
fn add_capability(name: &str) -> [&str; 13] {
    [
        "capability",
        "add",
        name,
        "--kind",
        "mcp",
        "--owner",
        "o",
        "--risk",
        "low",
        "--environment",
        "prod",
        "--endpoint",
        "http://h/",
    ]
}

/// Run `portcullis up` on the gateway's data dir (to see it refused).
fn up_on_same_data_dir(g: &Gateway) -> Output {
    Command::new(gateway_bin())
        .args(["up", "--data-dir"])
        .arg(g.dir.path().join("data"))
        .output()
        .unwrap()
}

/// Register capability `docs` served by an MCP server on `port`, agent `helper` and one policy.
fn register(g: &Gateway, port: u16) {
    let endpoint = format!("http://127.0.0.1:{port}/mcp");
    ok(
        g,
        &[
            "capability",
            "add",
            "docs",
            "--kind",
            "mcp",
            "--owner",
            "team-docs",
            "--risk",
            "low",
            "--environment",
            "prod",
            "--endpoint",
            &endpoint,
            "--tag",
            "b,a",
        ],
    );
    ok(
        g,
        &[
            "agent",
            "add",
            "helper",
            "--owner",
            "bob",
            "--surface",
            "cursor",
            "--environment",
            "prod",
            "--credential-mode",
            "agent-scoped",
            "--group",
            "support",
        ],
    );
    ok(
        g,
        &[
            "policy", "add", "support-reads-low", "--description", "support may call low-risk tools",
            "--text",
            "permit(principal in Group::\"support\", action == Action::\"call\", resource) when { resource.risk == \"low\" };",
        ],
    );
}

#[test]
fn register_approve_edit_roll_back() {
    let (_up, port) = py_server("docs", &[]);
    let g = Gateway::start(&[], "");
    register(&g, port);
    let caps = ok(&g, &["capability", "list"]);
    assert_eq!(caps[0]["spec"]["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(caps[0]["meta"]["created_by"], "alice");

    let s1 = ok(&g, &["approve", "--note", "first"]);
    assert_eq!(s1["version"], 1);
    assert_eq!(s1["active"], true);
    assert_eq!(s1["approved_by"], "alice");
    assert_eq!(s1["policy_ids"], serde_json::json!(["support-reads-low"]));
    assert_eq!(s1["capability_versions"], serde_json::json!(["docs@1"]));
    assert_eq!(s1["hash"].as_str().unwrap().len(), 64);

    // Nothing changed: no new version.
    let e = fails(&g, &["approve", "--note", "again"]);
    assert!(e.contains("nothing_changed"), "{e}");

    let edited = ok(&g, &["capability", "edit", "docs", "--risk", "high"]);
    assert_eq!(edited["meta"]["version"], 2);
    assert_eq!(edited["spec"]["tags"], serde_json::json!(["a", "b"]));
    let s2 = ok(&g, &["approve", "--note", "riskier"]);
    assert_eq!(
        (s2["version"].as_u64(), s2["parent"].as_u64()),
        (Some(2), Some(1))
    );
    let diff = ok(&g, &["snapshot", "diff", "1", "2"]);
    assert_eq!(diff["capabilities"]["changed"], serde_json::json!(["docs"]));

    let history = ok(&g, &["capability", "history", "docs"]);
    assert_eq!(history.as_array().unwrap().len(), 2);

    // Rollback is activating the older version.
    let back = ok(&g, &["snapshot", "activate", "1"]);
    assert_eq!(back["version"], 1);
    let list = ok(&g, &["snapshot", "list"]);
    let active: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["active"] == true)
        .map(|s| s["version"].as_u64().unwrap())
        .collect();
    assert_eq!(active, [1]);
    let shown = ok(&g, &["snapshot", "show", "2"]);
    assert_eq!(shown["content"]["capabilities"][0]["spec"]["risk"], "high");
    assert!(shown["content"]["cedar_schema"]
        .as_str()
        .unwrap()
        .contains("entity Agent"));
}

#[test]
fn approval_refuses_bad_policies_with_their_location_and_changes_nothing() {
    let (_up, port) = py_server("docs", &[]);
    let g = Gateway::start(&[], "");
    register(&g, port);
    ok(
        &g,
        &[
            "policy",
            "add",
            "typo",
            "--text",
            "permit(principal, action, resource)\n  when { principal.departmnet == \"x\" };",
        ],
    );
    let e = fails(&g, &["approve"]);
    assert!(e.contains("policy_invalid"), "{e}");
    assert!(e.contains("policy `typo` 2:"), "{e}");
    assert!(e.contains("departmnet"), "{e}");

    ok(&g, &["policy", "remove", "typo"]);
    ok(
        &g,
        &[
            "policy",
            "add",
            "syntax",
            "--text",
            "permit(principal, action, resource) when { };",
        ],
    );
    let e = fails(&g, &["approve"]);
    assert!(e.contains("policy `syntax` 1:"), "{e}");
    assert_eq!(ok(&g, &["snapshot", "list"]), serde_json::json!([]));

    // Invalid fields and duplicates are refused at the edit, naming the field.
    let e = fails(&g, &add_capability("Bad_Name"));
    assert!(e.contains("invalid_field") && e.contains("name"), "{e}");
    let e = fails(&g, &add_capability("docs"));
    assert!(e.contains("already_exists"), "{e}");
    let e = fails(
        &g,
        &[
            "agent",
            "add",
            "x",
            "--owner",
            "o",
            "--surface",
            "s",
            "--environment",
            "e",
            "--credential-mode",
            "psychic",
        ],
    );
    assert!(
        e.contains("bad_request") && e.contains("credential_mode"),
        "{e}"
    );
}

#[test]
fn api_keys_are_shown_once_stored_as_hashes_and_revocable() {
    let g = Gateway::start(&[], "");
    register(&g, 9); // never approved: the endpoint is not contacted
    let k1 = ok(&g, &["agent", "key", "issue", "helper"]);
    let k2 = ok(&g, &["agent", "key", "issue", "helper"]);
    let secret = k1["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("pcak_"), "{secret}");
    assert_ne!(k1["key"], k2["key"]);
    let list = ok(&g, &["agent", "key", "list", "helper"]);
    let listed = list.to_string();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(!listed.contains(&secret[5..]), "a listing shows a secret");
    let id = k1["id"].as_str().unwrap();
    let revoked = ok(&g, &["agent", "key", "revoke", "helper", id]);
    assert!(revoked["revoked_at"].as_u64().is_some());
    assert_eq!(revoked["revoked_by"], "alice");
    assert!(fails(&g, &["agent", "key", "issue", "nobody"]).contains("not_found"));

    // The secret is nowhere in the LMDB file, only its hash.
    let mdb = std::fs::read(g.dir.path().join("data/lmdb/data.mdb")).unwrap();
    let needle = &secret.as_bytes()[5..];
    assert!(!mdb.windows(needle.len()).any(|w| w == needle));
}

#[test]
fn the_admin_listener_can_require_tls_and_a_client_certificate() {
    let dir = TempDir::new("gw");
    client_pki(&dir, &["ops"], &["ops"]);
    let g = Gateway::start_admin_mtls(dir, "ca.pem", "ops.pem", "ops.key");
    // The CLI drives it over TLS with the operator's certificate (and the token).
    ok(&g, &add_capability("docs"));
    let caps = ok(&g, &["capability", "list"]);
    assert!(caps.to_string().contains("docs"), "{caps}");

    // Plain HTTP gets no answer at all, not even health.
    let r = request(g.admin_port, "GET", "/readyz", &[], b"");
    assert!(r.is_err(), "{:?}", r.map(|r| r.status));

    let at = |f: &str| g.dir.path().join(f).display().to_string();
    let url = format!("https://127.0.0.1:{}", g.admin_port);
    let data = at("data");
    let run = |extra: &[&str]| {
        Command::new(gateway_bin())
            .args([
                "capability",
                "list",
                "--json",
                "--admin",
                &url,
                "--data-dir",
                &data,
            ])
            .args(extra)
            .env_remove("PORTCULLIS_ADMIN_TOKEN")
            .output()
            .unwrap()
    };
    // No certificate, or a same-named one from a CA the listener does not trust: the handshake fails.
    let (rogue_cert, rogue_key) = (at("rogue-ops.pem"), at("rogue-ops.key"));
    for extra in [
        vec![],
        vec!["--client-cert", &rogue_cert, "--client-key", &rogue_key],
    ] {
        let out = run(&extra);
        assert!(!out.status.success(), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("admin API at"), "{extra:?}: {err}");
        assert!(!err.contains("docs"), "{err}");
    }
    // The right certificate with a wrong token is still refused: both are required.
    let wrong = at("wrong.token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let (cert, key) = (at("ops.pem"), at("ops.key"));
    let out = run(&[
        "--client-cert",
        &cert,
        "--client-key",
        &key,
        "--token-file",
        &wrong,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") && err.contains("unauthenticated"),
        "{err}"
    );
    // The listener's certificate is pinned: a wrong fingerprint is refused by the CLI.
    let fp = "00".repeat(32);
    let out = run(&[
        "--client-cert",
        &cert,
        "--client-key",
        &key,
        "--admin-fingerprint",
        &fp,
    ]);
    assert!(!out.status.success());

    // A client CA without TLS is a config error naming the key.
    let bad = TempDir::new("gw");
    let cfg = bad.path().join("c.yaml");
    std::fs::write(&cfg, "listen:\n  admin_client_ca: /nonexistent.pem\n").unwrap();
    let out = Command::new(gateway_bin())
        .args(["up", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(bad.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen.admin_client_ca"), "{err}");
}

#[test]
fn admin_api_needs_the_token() {
    let g = Gateway::start(&[], "");
    for auth in [None, Some("Bearer wrong"), Some("Basic abc")] {
        let mut h = vec![];
        if let Some(a) = auth {
            h.push(("authorization", a));
        }
        let r = request(g.admin_port, "GET", "/admin/v1/capabilities", &h, b"").unwrap();
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.json()["error"]["code"], "unauthenticated");
        assert!(r.header("www-authenticate").is_some());
    }
    let token = std::fs::read_to_string(g.dir.path().join("data/admin.token")).unwrap();
    let meta = std::fs::metadata(g.dir.path().join("data/admin.token")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let auth = format!("Bearer {}", token.trim());
    let r = request(
        g.admin_port,
        "GET",
        "/admin/v1/capabilities",
        &[("authorization", &auth)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // The API describes itself without a token.
    let r = request(g.admin_port, "GET", "/admin/openapi.json", &[], b"").unwrap();
    assert_eq!(r.json()["openapi"], "3.1.0");
    // Health stays open for load balancers.
    assert_eq!(
        request(g.admin_port, "GET", "/healthz", &[], b"")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn registry_survives_restart_and_a_second_process_is_refused() {
    let (_up, port) = py_server("docs", &[]);
    let mut g = Gateway::start(&[], "");
    register(&g, port);
    let s1 = ok(&g, &["approve", "--note", "persisted"]);
    // A second gateway on the same data dir is refused while the first runs.
    let out = up_on_same_data_dir(&g);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another portcullis process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(g.proc.terminate().success());

    let g2 = g.restart();
    let list = ok(&g2, &["snapshot", "list"]);
    assert_eq!(list[0]["hash"], s1["hash"]);
    assert_eq!(list[0]["active"], true);
    assert_eq!(ok(&g2, &["agent", "list"])[0]["spec"]["name"], "helper");
}

#[test]
fn a_corrupt_registry_file_refuses_to_start_naming_the_file() {
    let mut g = Gateway::start(&[], "");
    register(&g, 9); // never approved: the endpoint is not contacted
    assert!(g.proc.terminate().success());
    let mdb = g.dir.path().join("data/lmdb/data.mdb");
    let len = std::fs::metadata(&mdb).unwrap().len();
    // Overwrite both meta pages with garbage: LMDB cannot find a valid root.
    let mut bytes = std::fs::read(&mdb).unwrap();
    for b in bytes.iter_mut().take(8192) {
        *b = 0xA5;
    }
    std::fs::write(&mdb, &bytes).unwrap();
    assert_eq!(std::fs::metadata(&mdb).unwrap().len(), len);
    let out = up_on_same_data_dir(&g);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("data.mdb"), "{stderr}");
    assert!(stderr.contains("backup"), "{stderr}");
}
