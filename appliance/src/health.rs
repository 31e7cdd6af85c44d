//! Health: the readiness checks behind `/readyz` (what a load balancer may trust), active checks of every
//! served upstream with backoff, and the JSON health document of `GET /admin/v1/health` that the console
//! draws.
//!
//! Upstream checks are a TCP connect to the registered endpoint, timed: they prove the endpoint is
//! reachable without sending a request that an upstream could act on. They run on the admin thread, one at
//! a time, so a slow endpoint delays the next check, never a request.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::admin::CoreList;
use crate::control::ControlPlane;
use crate::gateway::Shared;

/// What the last check of one upstream found.
#[derive(Clone, Debug, Serialize)]
pub struct UpstreamHealth {
    pub name: String,
    /// `mcp` or `openapi`.
    pub kind: &'static str,
    /// `host:port` (never the path: it may carry a token in a query).
    pub endpoint: String,
    /// `None` until the first check.
    pub reachable: Option<bool>,
    pub latency_ms: Option<f64>,
    pub checked_at_ms: Option<u64>,
    /// Checks failed in a row.
    pub failures: u32,
    pub error: Option<String>,
    /// When the next check is due, seconds from now.
    pub next_check_s: u64,
    #[serde(skip)]
    next_at: Instant,
}

/// Every served upstream's last check, by name.
#[derive(Debug, Default)]
pub struct Checks {
    upstreams: Mutex<BTreeMap<String, UpstreamHealth>>,
}

impl Checks {
    pub fn list(&self) -> Vec<UpstreamHealth> {
        let now = Instant::now();
        self.lock()
            .values()
            .map(|u| UpstreamHealth {
                next_check_s: u.next_at.saturating_duration_since(now).as_secs(),
                ..u.clone()
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, UpstreamHealth>> {
        self.upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Prometheus text: reachability and check latency per upstream.
    pub fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::from(
            "# HELP portcullis_upstream_up Whether the upstream's endpoint accepted a connection at its last check (1), did not (0); absent before the first.\n# TYPE portcullis_upstream_up gauge\n",
        );
        let list = self.list();
        for u in list.iter().filter(|u| u.reachable.is_some()) {
            let _ = writeln!(
                out,
                "portcullis_upstream_up{{upstream=\"{}\",kind=\"{}\"}} {}",
                crate::metrics::label(&u.name),
                u.kind,
                u8::from(u.reachable == Some(true))
            );
        }
        out.push_str("# HELP portcullis_upstream_check_seconds Time to connect at the upstream's last successful check.\n# TYPE portcullis_upstream_check_seconds gauge\n");
        for u in &list {
            if let Some(ms) = u.latency_ms {
                let _ = writeln!(
                    out,
                    "portcullis_upstream_check_seconds{{upstream=\"{}\",kind=\"{}\"}} {:.6}",
                    crate::metrics::label(&u.name),
                    u.kind,
                    ms / 1e3
                );
            }
        }
        out
    }
}

/// The delay before the next check after `failures` failures in a row: the interval, doubled per
/// failure, at most `max`.
pub fn backoff(interval: Duration, failures: u32, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
    interval.saturating_mul(factor).min(max.max(interval))
}

/// Check the served upstreams for as long as the process runs (a task on the admin runtime).
pub async fn run(shared: Arc<Shared>, checks: Arc<Checks>) {
    let cfg = shared.config.health.clone();
    loop {
        // What is served now: upstreams come and go with snapshots.
        let served = shared.served.current();
        let slots = shared.served.slots_from(0);
        let mut want: BTreeMap<String, (&'static str, String)> = BTreeMap::new();
        for (kind, list) in [("mcp", &served.upstreams), ("openapi", &served.apis)] {
            for u in list.iter() {
                if let Some(s) = slots.get(u.slot) {
                    want.insert(
                        u.name.clone(),
                        (kind, format!("{}:{}", s.url.host, s.url.port)),
                    );
                }
            }
        }
        drop(served);
        let due: Vec<(String, &'static str, String)> = {
            let mut map = checks.lock();
            map.retain(|name, _| want.contains_key(name));
            let now = Instant::now();
            want.into_iter()
                .filter_map(|(name, (kind, endpoint))| {
                    let e = map.entry(name.clone()).or_insert_with(|| UpstreamHealth {
                        name: name.clone(),
                        kind,
                        endpoint: endpoint.clone(),
                        reachable: None,
                        latency_ms: None,
                        checked_at_ms: None,
                        failures: 0,
                        error: None,
                        next_check_s: 0,
                        next_at: now,
                    });
                    if e.endpoint != endpoint {
                        // A new snapshot moved it: check the new endpoint now.
                        e.endpoint.clone_from(&endpoint);
                        e.next_at = now;
                        e.failures = 0;
                    }
                    (e.next_at <= now).then_some((name, kind, endpoint))
                })
                .collect()
        };
        for (name, _, endpoint) in due {
            let t0 = Instant::now();
            let r = monoio::time::timeout(
                cfg.check_timeout.0,
                monoio::net::TcpStream::connect(endpoint.as_str()),
            )
            .await;
            let took = t0.elapsed();
            let outcome = match r {
                Ok(Ok(stream)) => {
                    drop(stream);
                    Ok(took)
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "no connection within {} ms",
                    cfg.check_timeout.0.as_millis()
                )),
            };
            let mut map = checks.lock();
            let Some(e) = map.get_mut(&name) else {
                continue;
            };
            e.checked_at_ms = Some(crate::control::now_ms());
            match outcome {
                Ok(took) => {
                    if e.reachable == Some(false) {
                        crate::info!("upstream={name} reachable again at {endpoint}");
                    }
                    e.reachable = Some(true);
                    e.latency_ms = Some(took.as_secs_f64() * 1e3);
                    e.failures = 0;
                    e.error = None;
                }
                Err(why) => {
                    if e.reachable != Some(false) {
                        crate::warn!("upstream={name} unreachable at {endpoint}: {why}");
                    }
                    e.reachable = Some(false);
                    e.latency_ms = None;
                    e.failures = e.failures.saturating_add(1);
                    e.error = Some(why);
                }
            }
            e.next_at =
                Instant::now() + backoff(cfg.check_interval.0, e.failures, cfg.backoff_max.0);
        }
        monoio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One readiness check: its name, whether it passes, and what was found.
#[derive(Debug)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// What `/readyz` checks: every core serving with its listeners bound, not draining, an active
/// snapshot (or static upstreams), and every audit writer writing.
pub fn readiness(shared: &Shared, n_cores: usize) -> Vec<Check> {
    let ready = shared.ready_cores.load(Ordering::SeqCst);
    let served = shared.served.current();
    let snapshot = match served.version {
        Some(_) => (true, served.label.clone()),
        None if !shared.served.managed() => (true, "static upstreams".to_owned()),
        None if shared.served.checking() => (
            false,
            "the active snapshot's pinned tools are being checked before it is served".to_owned(),
        ),
        None => (false, "no approved snapshot is active".to_owned()),
    };
    vec![
        Check {
            name: "cores",
            ok: ready == n_cores && n_cores > 0,
            detail: format!("{ready}/{n_cores} serving with their listeners bound"),
        },
        Check {
            name: "draining",
            ok: !shared.draining.load(Ordering::SeqCst),
            detail: if shared.draining.load(Ordering::SeqCst) {
                "shutting down".into()
            } else {
                "no".into()
            },
        },
        Check {
            name: "snapshot",
            ok: snapshot.0,
            detail: snapshot.1,
        },
        Check {
            name: "audit",
            ok: shared.audit.writable(),
            detail: if shared.audit.writable() {
                "writing".into()
            } else {
                "a writer cannot write its records (disk full or read-only?)".into()
            },
        },
    ]
}

/// The `/readyz` body: `ready`, or `not ready` and one line per check (`name: ok|FAIL detail`).
pub fn readiness_text(checks: &[Check]) -> (bool, String) {
    let ready = checks.iter().all(|c| c.ok);
    let mut out = String::from(if ready { "ready\n" } else { "not ready\n" });
    for c in checks {
        out.push_str(&format!(
            "{}: {} {}\n",
            c.name,
            if c.ok { "ok" } else { "FAIL" },
            c.detail
        ));
    }
    (ready, out)
}

/// The health document.
pub fn document(
    shared: &Shared,
    cores: &CoreList,
    n_cores: usize,
    control: &ControlPlane,
    checks: &Checks,
) -> serde_json::Value {
    let now = crate::control::now_ms();
    let ready = readiness(shared, n_cores);
    let list = cores.get().map(Vec::as_slice).unwrap_or(&[]);
    let core_rows: Vec<_> = list
        .iter()
        .map(|c| {
            let n = &c.counters;
            json!({
                "core": c.core,
                "driver": c.driver,
                "requests": n.requests.load(Ordering::Relaxed),
                "connections_open": n.connections_open.load(Ordering::Relaxed),
                "sessions_open": n.sessions_open.load(Ordering::Relaxed),
            })
        })
        .collect();
    let sessions: u64 = list
        .iter()
        .map(|c| c.counters.sessions_open.load(Ordering::Relaxed))
        .sum();
    let served = shared.served.current();
    let snapshot = match served.version {
        Some(v) => {
            let info = control.snapshot_info(v);
            json!({
                "version": v,
                "label": served.label,
                "hash": info.as_ref().map(|i| i.hash.clone()),
                "approved_by": info.as_ref().map(|i| i.header.approved_by.clone()),
                "approved_at": info.as_ref().map(|i| i.header.approved_at),
                "note": info.as_ref().map(|i| i.header.note.clone()),
            })
        }
        None => serde_json::Value::Null,
    };
    let mode = if control.follow_status().is_some() {
        "data-plane"
    } else if shared.served.managed() {
        "self-hosted"
    } else {
        "static"
    };
    let (fingerprint, not_after) = control.tls();
    let tls = json!({
        "fingerprint_sha256": fingerprint,
        "not_after": not_after,
        "expires_in_days": not_after.map(|t| (t as i64 - (now / 1000) as i64) / 86_400),
    });
    let upstreams = checks.list();
    let reachable = upstreams
        .iter()
        .filter(|u| u.reachable == Some(true))
        .count();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "mode": mode,
        "node_id": shared.config.node_id,
        "uptime_s": shared.started.elapsed().as_secs(),
        "now_ms": now,
        "ready": ready.iter().all(|c| c.ok),
        "checks": ready
            .iter()
            .map(|c| json!({"name": c.name, "ok": c.ok, "detail": c.detail}))
            .collect::<Vec<_>>(),
        "cores": core_rows,
        "snapshot": snapshot,
        "upstreams": upstreams,
        "upstreams_reachable": reachable,
        "audit": shared.audit.health(now),
        "sessions": {"open": sessions},
        "tls": tls,
        "following": control.follow_status().map(|f| f.snapshot()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_checks_back_off_to_the_bound() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(10), 0, s(300)), s(10));
        assert_eq!(backoff(s(10), 1, s(300)), s(20));
        assert_eq!(backoff(s(10), 3, s(300)), s(80));
        assert_eq!(backoff(s(10), 5, s(300)), s(300));
        assert_eq!(backoff(s(10), 4_000_000, s(300)), s(300));
        // A bound below the interval never makes checks more frequent than the interval.
        assert_eq!(backoff(s(10), 2, s(5)), s(10));
    }
}
