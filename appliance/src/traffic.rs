//! The console's live traffic view: every `SAMPLE_EVERY` the admin thread reads the cores' published
//! counters and histograms, and keeps what changed since the previous reading (request and denial
//! rates, p50/p99 of the whole request and of what the gateway added) in a ring of the last
//! `SAMPLES_MAX` points. `GET /admin/v1/traffic` answers the ring with the totals since start.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;

use crate::admin::CoreList;
use crate::metrics::{self, CoreShared};

pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Ten minutes of points.
const SAMPLES_MAX: usize = 300;
/// Rows of the top agents and tools.
const TOP: usize = 10;

/// One point of the live view.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub at_ms: u64,
    pub requests_per_s: f64,
    pub denied_per_s: f64,
    pub failed_per_s: f64,
    /// Of the requests answered in this interval (0 when none were).
    pub request_p50_us: u64,
    pub request_p99_us: u64,
    pub added_p50_us: u64,
    pub added_p99_us: u64,
}

#[derive(Default)]
struct Last {
    requests: u64,
    denied: u64,
    failed: u64,
    request: Option<Histogram<u64>>,
    added: Option<Histogram<u64>>,
}

#[derive(Debug, Default)]
pub struct Live {
    ring: Mutex<VecDeque<Sample>>,
}

impl Live {
    pub fn samples(&self) -> Vec<Sample> {
        self.ring
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn merged(
    cores: &[Arc<CoreShared>],
    pick: fn(&CoreShared) -> &Mutex<Histogram<u64>>,
) -> Option<Histogram<u64>> {
    let mut it = cores.iter();
    let mut all = pick(it.next()?).lock().ok()?.clone();
    for c in it {
        if let Ok(h) = pick(c).lock() {
            let _ = all.add(&*h);
        }
    }
    Some(all)
}

/// The requests answered since `last`: the newer histogram less the older.
fn window(now: &Histogram<u64>, last: Option<&Histogram<u64>>) -> (u64, u64) {
    let mut d = now.clone();
    if let Some(l) = last {
        if d.subtract(l).is_err() {
            // Histograms only grow; a failed subtraction means a reset: start over from `now`.
            d = now.clone();
        }
    }
    if d.is_empty() {
        (0, 0)
    } else {
        (d.value_at_quantile(0.5), d.value_at_quantile(0.99))
    }
}

/// Sample for as long as the process runs (a task on the admin runtime).
pub async fn run(cores: CoreList, live: Arc<Live>, bounds: crate::config::MetricsConfig) {
    let mut last = Last::default();
    let mut first = true;
    loop {
        monoio::time::sleep(SAMPLE_EVERY).await;
        let Some(list) = cores.get() else { continue };
        let requests: u64 = list
            .iter()
            .map(|c| c.counters.requests.load(Ordering::Relaxed))
            .sum();
        let t = metrics::merged(list, &bounds);
        let by = |d: &str| -> u64 {
            t.requests
                .iter()
                .filter(|(k, _)| k.3 == d)
                .map(|(_, n)| n)
                .sum()
        };
        let (denied, failed) = (by("denied"), by("failed"));
        let request = merged(list, |c| &c.request_us);
        let added = merged(list, |c| &c.added_us);
        if !first {
            let secs = SAMPLE_EVERY.as_secs_f64();
            let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
            let (rq50, rq99) = request
                .as_ref()
                .map_or((0, 0), |h| window(h, last.request.as_ref()));
            let (ad50, ad99) = added
                .as_ref()
                .map_or((0, 0), |h| window(h, last.added.as_ref()));
            let s = Sample {
                at_ms: crate::control::now_ms(),
                requests_per_s: rate(requests, last.requests),
                denied_per_s: rate(denied, last.denied),
                failed_per_s: rate(failed, last.failed),
                request_p50_us: rq50,
                request_p99_us: rq99,
                added_p50_us: ad50,
                added_p99_us: ad99,
            };
            if let Ok(mut r) = live.ring.lock() {
                if r.len() == SAMPLES_MAX {
                    r.pop_front();
                }
                r.push_back(s);
            }
        }
        first = false;
        last = Last {
            requests,
            denied,
            failed,
            request,
            added,
        };
    }
}

/// `GET /admin/v1/traffic`: totals since start, the top agents and tools, and the live ring.
pub fn summary(
    cores: &CoreList,
    live: &Live,
    uptime: Duration,
    bounds: &crate::config::MetricsConfig,
) -> serde_json::Value {
    let list = cores.get().map(Vec::as_slice).unwrap_or(&[]);
    let sum = |pick: fn(&metrics::Counters) -> &std::sync::atomic::AtomicU64| -> u64 {
        list.iter()
            .map(|c| pick(&c.counters).load(Ordering::Relaxed))
            .sum()
    };
    let t = metrics::merged(list, bounds);
    let mut by_decision: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_method: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_transport: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_revision: BTreeMap<&str, u64> = BTreeMap::new();
    for ((m, tr, rev, d), n) in &t.requests {
        *by_decision.entry(d).or_default() += n;
        *by_method.entry(m).or_default() += n;
        *by_transport.entry(tr).or_default() += n;
        *by_revision.entry(rev).or_default() += n;
    }
    let mut denials = BTreeMap::new();
    for (i, r) in portcullis_pipeline::DenyReason::ALL.iter().enumerate() {
        let n: u64 = list
            .iter()
            .map(|c| c.counters.denials[i].load(Ordering::Relaxed))
            .sum();
        if n > 0 {
            denials.insert(r.code(), n);
        }
    }
    let mut agents: Vec<(&String, &u64)> = t.agents.iter().collect();
    agents.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let top_agents: Vec<_> = agents
        .iter()
        .take(TOP)
        .map(|(a, n)| json!({"agent": a, "requests": n}))
        .collect();
    let mut tools: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for ((tool, d), n) in &t.tools {
        *tools.entry(tool).or_default().entry(d).or_default() += n;
    }
    let mut tools: Vec<_> = tools.into_iter().collect();
    tools.sort_by_key(|(name, by)| (std::cmp::Reverse(by.values().sum::<u64>()), *name));
    let top_tools: Vec<_> = tools
        .iter()
        .take(TOP)
        .map(|(tool, by)| {
            json!({
                "tool": tool,
                "calls": by.values().sum::<u64>(),
                "allowed": by.get("allowed").copied().unwrap_or(0),
                "denied": by.get("denied").copied().unwrap_or(0),
                "failed": by.get("failed").copied().unwrap_or(0),
            })
        })
        .collect();
    json!({
        "uptime_s": uptime.as_secs(),
        "sample_every_s": SAMPLE_EVERY.as_secs(),
        "requests": sum(|c| &c.requests),
        "upstream_requests": sum(|c| &c.upstream_requests),
        "upstream_errors": sum(|c| &c.upstream_errors),
        "by_decision": by_decision,
        "by_method": by_method,
        "by_transport": by_transport,
        "by_revision": by_revision,
        "denials": denials,
        "latency": {
            "request": metrics::quantiles(list, |c| &c.request_us),
            "added": metrics::quantiles(list, |c| &c.added_us),
            "upstream": metrics::quantiles(list, |c| &c.upstream_us),
        },
        "top_agents": top_agents,
        "top_tools": top_tools,
        "live": live.samples(),
    })
}
