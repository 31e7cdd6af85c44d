//! The pilot script (`examples/pilot/run.sh`) runs green: a new user's first hour, end to end, on
//! loopback, against the official SDKs, ending in a verified audit trail of the calls it made.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use portcullis_tests::*;

#[test]
fn the_pilot_runs_end_to_end() {
    let out = Command::new("bash")
        .arg(workspace_root().join("examples/pilot/run.sh"))
        .env("PORTCULLIS_BIN", gateway_bin())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "notes__echo -> hello from the pilot",
        "key_sha256",
        "notes__add -> refused",
        "policy_denied",
        "service embedded/shop#key",
        "verified",
        "pilot done",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}\n{stderr}"
        );
    }
}
