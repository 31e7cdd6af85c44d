//! The official MCP conformance suite (`@modelcontextprotocol/conformance` 0.2.0-alpha.12, server scenarios)
//! against the gateway, once per protocol revision's requirement set.
//!
//! The gateway runs with `naming: passthrough` in front of one upstream, `conformance_server.mjs` (the
//! fixtures the scenarios call by name, on the TypeScript SDK 2.x), so the suite sees the upstream's names.
//! `tests/peers/node/conformance-baseline.yaml` lists, with a reason each, what may fail: a feature planned for
//! a later issue, what the upstream cannot do, and gateway bugs not fixed yet. Any other FAILURE or WARNING
//! check fails the test, and so does a baselined check that now passes (a stale entry). The CLI judges the
//! set's scored scenarios itself (`--expected-failures`); this test applies the same rule to every scenario
//! the set ran, the unscored ones (extensions, pending) included, from the `checks.json` files it writes.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use portcullis_tests::*;

fn baseline_path() -> std::path::PathBuf {
    peers_dir().join("node/conformance-baseline.yaml")
}

/// The `server:` entries of the baseline: scenario -> `None` (the whole scenario) or the excused check ids.
/// The file is a flat YAML list of plain strings, so a line reader suffices.
fn baseline() -> BTreeMap<String, Option<BTreeSet<String>>> {
    let text = std::fs::read_to_string(baseline_path()).unwrap();
    let mut out: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
    let mut in_server = false;
    for line in text.lines() {
        let line = line.split('#').next().unwrap().trim_end();
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') && !line.starts_with('-') {
            in_server = line == "server:";
            continue;
        }
        let Some(entry) = line.trim().strip_prefix("- ") else {
            panic!("unexpected baseline line: {line}");
        };
        if !in_server {
            continue;
        }
        match entry.trim().split_once(':') {
            None => {
                out.insert(entry.trim().to_owned(), None);
            }
            Some((scenario, check)) => {
                out.entry(scenario.to_owned())
                    .or_insert_with(|| Some(BTreeSet::new()))
                    .as_mut()
                    .unwrap_or_else(|| panic!("{scenario} is baselined whole and per check"))
                    .insert(check.to_owned());
            }
        }
    }
    out
}

/// Scenario -> (check id -> statuses), from `<dir>/server-<scenario>-<ISO timestamp>/checks.json`.
fn results(dir: &Path) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        // The timestamp is `2026-07-28T10-49-47-729Z`: 24 characters after the last scenario character's '-'.
        let scenario = name
            .strip_prefix("server-")
            .and_then(|s| s.get(..s.len().checked_sub(25)?))
            .unwrap_or_else(|| panic!("unexpected result dir {name}"));
        let checks: Value =
            serde_json::from_slice(&std::fs::read(e.path().join("checks.json")).unwrap()).unwrap();
        let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for c in checks.as_array().unwrap() {
            by_id
                .entry(c["id"].as_str().unwrap().to_owned())
                .or_default()
                .push(c["status"].as_str().unwrap().to_owned());
        }
        out.insert(scenario.to_owned(), by_id);
    }
    out
}

fn failing(statuses: &[String]) -> bool {
    statuses.iter().any(|s| s == "FAILURE" || s == "WARNING")
}

/// The CLI's baseline rule (per check id, occurrences collapsed, most severe first): returns the
/// unexpected failures and the stale entries.
fn judge(
    results: &BTreeMap<String, BTreeMap<String, Vec<String>>>,
    baseline: &BTreeMap<String, Option<BTreeSet<String>>>,
) -> (Vec<String>, Vec<String>) {
    let (mut unexpected, mut stale) = (Vec::new(), Vec::new());
    for (scenario, checks) in results {
        let scenario_fails = checks.values().any(|s| failing(s));
        match baseline.get(scenario) {
            Some(None) if !scenario_fails => stale.push(scenario.clone()),
            Some(None) => {}
            None => unexpected.extend(
                checks
                    .iter()
                    .filter(|(_, s)| failing(s))
                    .map(|(id, s)| format!("{scenario}:{id} {s:?}")),
            ),
            Some(Some(excused)) => {
                for (id, s) in checks {
                    if failing(s) && !excused.contains(id) {
                        unexpected.push(format!("{scenario}:{id} {s:?}"));
                    }
                }
                for id in excused {
                    let s = checks.get(id).map(Vec::as_slice).unwrap_or(&[]);
                    if !failing(s) && s.iter().any(|x| x == "SUCCESS") {
                        stale.push(format!("{scenario}:{id}"));
                    }
                }
            }
        }
    }
    (unexpected, stale)
}

fn run_requirements(revision: &str) {
    let (_upstream, port) = conformance_server();
    let gw = Gateway::start(&[("conf", port)], "naming: passthrough\n");
    let out = TempDir::new("conformance");
    let run = Command::new(peers_dir().join("node/conformance.sh"))
        .args(["server", "--url", &gw.url(), "--requirements", revision])
        .arg("--expected-failures")
        .arg(baseline_path())
        .arg("-o")
        .arg(out.path())
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let results = results(out.path());
    let (unexpected, stale) = judge(&results, &baseline());
    let passed: usize = results
        .values()
        .filter(|c| !c.values().any(|s| failing(s)))
        .count();
    eprintln!(
        "conformance {revision}: {passed} of {} scenarios without a failing check",
        results.len()
    );
    assert!(
        run.status.success() && unexpected.is_empty() && stale.is_empty(),
        "conformance {revision} through the gateway: CLI {:?}\nunexpected failures: {unexpected:#?}\n\
         stale baseline entries (now passing, remove them): {stale:#?}\n--- CLI output ---\n{log}",
        run.status
    );
    assert!(
        results.len() >= 30,
        "only {} scenarios ran:\n{log}",
        results.len()
    );
}

#[test]
fn requirements_2025_11_25_through_the_gateway() {
    run_requirements("2025-11-25");
}

#[test]
fn requirements_2026_07_28_through_the_gateway() {
    run_requirements("2026-07-28");
}
