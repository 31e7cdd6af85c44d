//! Hybrid mode: a data plane follows a control plane on loopback over HTTPS (certificate pinned by
//! fingerprint, snapshots and activations verified with the control plane's signing key). It serves what
//! the control plane activates (rollback included), keeps serving the last good snapshot when the
//! control plane is gone (also across its own restart), refuses and reports a snapshot signed by any
//! other key, and picks up again when the real control plane returns. Official SDK clients make the calls.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use portcullis_tests::*;

/// Tool names a raw 2026-07-28 `tools/list` shows, and its `portcullis-snapshot` header. Before the
/// data plane serves a snapshot registering the agent, the refusal (403) lists nothing.
fn listed(g: &Gateway) -> (Vec<String>, String) {
    let r = modern(g.plain_port, 1, "tools/list", json!({}));
    let snapshot = r.header("portcullis-snapshot").unwrap_or("").to_owned();
    if r.status == 403 && r.reason() == "agent_not_registered" {
        return (Vec::new(), snapshot);
    }
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let names = v["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    (
        names,
        r.header("portcullis-snapshot").unwrap_or("").to_owned(),
    )
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn label(version: u64, approved: &Value) -> String {
    format!("v{version} blake3:{}", approved["hash"].as_str().unwrap())
}

/// Copy `names` from one data dir into another (created owner-only), as an operator provisioning a
/// data plane, or an attacker who stole them, would.
fn copy_secrets(from: &Path, to: &Path, names: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for n in names {
        std::fs::copy(from.join(n), to.join(n)).unwrap();
        std::fs::set_permissions(to.join(n), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

fn control_plane(dir: TempDir, sync: u16) -> Gateway {
    Gateway::start_in(
        dir,
        &format!("  sync: 127.0.0.1:{sync}\n"),
        &[],
        "",
        &["--cores", "1"],
    )
}

/// A data plane following `cp` (reached at `sync`), with the token copied into its own dir.
fn data_plane(cp: &Gateway, sync: u16, token: Option<&str>, fingerprint: Option<&str>) -> Gateway {
    let key = ok(cp, &["signing-key"])["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let fp = ok(cp, &["tls-fingerprint"])["fingerprint_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = TempDir::new("dp");
    let token_file = dir.path().join("cp-sync.token");
    match token {
        Some(t) => std::fs::write(&token_file, t).unwrap(),
        None => {
            std::fs::copy(cp.data().join("sync.token"), &token_file).unwrap();
        }
    }
    let url = format!("https://127.0.0.1:{sync}");
    let token_arg = token_file.to_string_lossy().into_owned();
    Gateway::start_in(
        dir,
        "",
        &[],
        "",
        &[
            "--cores",
            "2",
            "--control-plane",
            &url,
            "--trust-key",
            &key,
            "--control-plane-token",
            &token_arg,
            "--control-plane-fingerprint",
            fingerprint.unwrap_or(&fp),
        ],
    )
}

#[test]
fn a_data_plane_follows_its_control_plane_and_outlives_it() {
    let (_alpha, pa) = py_server("alpha", &[]);
    let sync = free_port();
    let cp = control_plane(TempDir::new("cp"), sync);
    let mut dp = data_plane(&cp, sync, None, None);
    wait_for("the data plane reaches the control plane", || {
        ok(&dp, &["sync"])["state"] == json!("following")
    });
    // Agents and their keys are registered on the control plane; the data plane takes the signed key
    // list, but admits nobody before a snapshot registers them.
    let key = admit_tester(&cp);
    wait_for("the key list reaches the data plane", || {
        ok(&dp, &["sync"])["keys"] == json!(1)
    });
    let r = modern(dp.plain_port, 1, "tools/list", json!({}));
    assert_eq!(
        (r.status, r.reason().as_str()),
        (403, "agent_not_registered")
    );
    assert_eq!(r.header("portcullis-snapshot"), Some("none"));

    // Approved on the control plane, served by the data plane.
    add_capability(&cp, "alpha", pa);
    let v1 = label(1, &ok(&cp, &["approve", "--note", "first"]));
    wait_for("v1 reaches the data plane", || listed(&dp).1 == v1);
    assert!(listed(&dp).0.contains(&"alpha__echo".to_owned()));
    for rev in ["2025-11-25", "2026-07-28"] {
        let v = py_client(
            &dp.url(),
            rev,
            "call",
            &["--tool", "alpha__add", "--args", r#"{"a":2,"b":40}"#],
        );
        assert_eq!(v["text"], json!("42"), "{v}");
    }
    let status = ok(&dp, &["sync"]);
    assert_eq!(status["serving"]["version"], json!(1), "{status}");

    // A key revoked on the control plane stops working on the data plane within a poll.
    let second = ok(&cp, &["agent", "key", "issue", "tester"]);
    act_as(second["key"].as_str().unwrap());
    wait_for("the second key works on the data plane", || {
        modern(dp.plain_port, 1, "tools/list", json!({})).status == 200
    });
    ok(
        &cp,
        &[
            "agent",
            "key",
            "revoke",
            "tester",
            second["id"].as_str().unwrap(),
        ],
    );
    wait_for("the revocation reaches the data plane", || {
        modern(dp.plain_port, 1, "tools/list", json!({})).reason() == "unauthenticated"
    });
    act_as(&key);

    // The data plane's registry is not edited locally.
    let e = fails(
        &dp,
        &["capability", "add", "x", "--kind", "mcp", "--owner", "o"],
    );
    assert!(e.contains("follower_read_only"), "{e}");
    assert!(fails(&dp, &["approve"]).contains("follower_read_only"));

    // The control plane lists the data plane and what it serves.
    wait_for("the control plane sees activation 1 served", || {
        let planes = ok(&cp, &["data-planes"]);
        planes.as_array().unwrap().len() == 1 && planes[0]["serving_seq"] == json!(1)
    });

    // A second approval, then a rollback on the control plane: the data plane follows both.
    ok(
        &cp,
        &["capability", "edit", "alpha", "--description", "second"],
    );
    let v2 = label(2, &ok(&cp, &["approve", "--note", "second"]));
    wait_for("v2 reaches the data plane", || listed(&dp).1 == v2);
    ok(&cp, &["snapshot", "activate", "1"]);
    wait_for("the rollback to v1 reaches the data plane", || {
        listed(&dp).1 == v1
    });

    // The control plane goes away: the data plane keeps serving v1.
    let mut cp = cp;
    cp.proc.terminate();
    wait_for("the data plane notices", || {
        ok(&dp, &["sync"])["state"] == json!("unreachable")
    });
    assert_eq!(listed(&dp).1, v1);
    let v = py_client(
        &dp.url(),
        "2026-07-28",
        "call",
        &[
            "--tool",
            "alpha__echo",
            "--args",
            r#"{"text":"still here"}"#,
        ],
    );
    assert_eq!(v["text"], json!("still here"), "{v}");

    // ...and across its own restart, with the control plane still gone.
    dp.proc.terminate();
    let dp = dp.restart();
    assert_eq!(listed(&dp).1, v1);
    let status = ok(&dp, &["sync"]);
    assert_eq!(
        (&status["serving"]["seq"], &status["serving"]["version"]),
        (&json!(3), &json!(1)),
        "{status}"
    );
    let v = py_client(
        &dp.url(),
        "2025-11-25",
        "call",
        &["--tool", "alpha__add", "--args", r#"{"a":1,"b":1}"#],
    );
    assert_eq!(v["text"], json!("2"), "{v}");

    // An impostor holding the control plane's certificate and sync token, but not its signing key,
    // takes its address: what it approves is refused and reported, and v1 stays.
    let imp_dir = TempDir::new("impostor");
    copy_secrets(
        &cp.data(),
        &imp_dir.path().join("data"),
        &["tls-cert.pem", "tls-key.pem", "sync.token"],
    );
    let imp = control_plane(imp_dir, sync);
    add_capability(&imp, "alpha", pa);
    ok(&imp, &["approve", "--note", "not the real one"]);
    wait_for("the data plane refuses the impostor's snapshot", || {
        ok(&dp, &["sync"])["refused"]["code"] == json!("activation_signature_invalid")
    });
    assert_eq!(listed(&dp).1, v1);
    wait_for("the refusal is reported to the control plane", || {
        ok(&imp, &["data-planes"])[0]["refused"]["code"] == json!("activation_signature_invalid")
    });
    let m = dp.metrics();
    assert!(m.contains("portcullis_follow_refused_total 1"), "{m}");
    drop(imp);

    // The real control plane returns; its next approval flows again.
    let cp = cp.restart();
    ok(
        &cp,
        &["capability", "edit", "alpha", "--description", "third"],
    );
    let v3 = label(3, &ok(&cp, &["approve", "--note", "third"]));
    wait_for("v3 reaches the data plane", || listed(&dp).1 == v3);
    let status = ok(&dp, &["sync"]);
    assert_eq!(status["state"], json!("following"), "{status}");
}

#[test]
fn a_data_plane_with_a_wrong_token_or_certificate_serves_nothing_new() {
    let sync = free_port();
    let cp = control_plane(TempDir::new("cp"), sync);
    let wrong_token = data_plane(&cp, sync, Some(&"f".repeat(64)), None);
    let wrong_cert = data_plane(&cp, sync, None, Some(&["AB"; 32].join(":")));
    wait_for("the wrong token is refused", || {
        let s = ok(&wrong_token, &["sync"]);
        s["state"] == json!("unreachable") && s["last_error"].as_str().unwrap().contains("401")
    });
    wait_for("the wrong certificate is refused", || {
        let s = ok(&wrong_cert, &["sync"]);
        s["state"] == json!("unreachable")
            && s["last_error"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("certificate")
    });
    // Neither shows up as a following data plane.
    assert_eq!(ok(&cp, &["data-planes"]), json!([]));
    // The sync listener serves nothing else, and the admin API knows it is not a data plane.
    assert!(fails(&cp, &["sync"]).contains("not_found"));
}
