//! Per-core counters and latency histograms, merged only when scraped.
//!
//! Counters are atomics written by their own core alone (relaxed; the scraper reads a recent value).
//! Histograms are recorded into a core-local `RefCell` on the hot path and folded into a per-core shared copy
//! once a second by that core's timer, so the scraper's lock never touches a request.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use portcullis_pipeline::DenyReason;

/// Latency histogram range: 1 µs to 60 s, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

/// Record `d` in a `new_histogram`, in whole microseconds and at least 1 (where its range starts).
pub(crate) fn record_micros(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
}

#[derive(Debug)]
pub struct Counters {
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub connections_open: AtomicU64,
    pub requests: AtomicU64,
    pub responses_ok: AtomicU64,
    pub sessions_opened: AtomicU64,
    pub upstream_requests: AtomicU64,
    pub upstream_errors: AtomicU64,
    /// Tool results that did not fit their pinned output schema (reported or withheld).
    pub output_schema_mismatches: AtomicU64,
    /// Sessions this core owns now (set by its housekeeping timer).
    pub sessions_open: AtomicU64,
    pub denials: [AtomicU64; DenyReason::ALL.len()],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            responses_ok: AtomicU64::new(0),
            sessions_opened: AtomicU64::new(0),
            upstream_requests: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            output_schema_mismatches: AtomicU64::new(0),
            sessions_open: AtomicU64::new(0),
            denials: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// What one core publishes for the scraper.
#[derive(Debug)]
pub struct CoreShared {
    pub core: usize,
    pub driver: &'static str,
    pub counters: Counters,
    /// Whole request, gateway receive to last byte written, µs.
    pub request_us: Mutex<Histogram<u64>>,
    /// Upstream exchange, request sent to response head, µs.
    pub upstream_us: Mutex<Histogram<u64>>,
    /// What the gateway added to a forwarded request: its latency less its upstream exchange, µs.
    pub added_us: Mutex<Histogram<u64>>,
    /// Requests by method, transport, revision and decision; calls by agent and tool.
    pub traffic: Mutex<Traffic>,
}

impl CoreShared {
    pub fn new(core: usize, driver: &'static str) -> Arc<Self> {
        Arc::new(CoreShared {
            core,
            driver,
            counters: Counters::default(),
            request_us: Mutex::new(new_histogram()),
            upstream_us: Mutex::new(new_histogram()),
            added_us: Mutex::new(new_histogram()),
            traffic: Mutex::new(Traffic::default()),
        })
    }
}

/// The label a label-set key carries when its table is full: cardinality stays bounded whatever names
/// agents send.
pub const OTHER: &str = "other";

/// JSON-RPC methods counted by name; any other counts as `other` (a client chooses the method string).
const METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
    "server/discover",
    "subscriptions/listen",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "GET",
    "DELETE",
];

fn known(v: Option<&str>, among: &[&'static str], none: &'static str) -> &'static str {
    match v {
        None => none,
        Some(v) => among.iter().find(|m| **m == v).copied().unwrap_or(OTHER),
    }
}

/// One request's labels: method, transport, revision, decision.
pub type TrafficKey = (&'static str, &'static str, &'static str, &'static str);

/// Request counts with bounded labels.
#[derive(Debug, Default, Clone)]
pub struct Traffic {
    pub requests: HashMap<TrafficKey, u64>,
    pub agents: HashMap<String, u64>,
    /// By tool and decision.
    pub tools: HashMap<(String, &'static str), u64>,
}

/// Count `n` under `key` in a table of at most `max` keys (then under `other`).
fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u64>, key: K, other: K, max: usize, n: u64) {
    if map.len() < max || map.contains_key(&key) {
        *map.entry(key).or_insert(0) += n;
    } else {
        *map.entry(other).or_insert(0) += n;
    }
}

impl Traffic {
    fn add(&mut self, from: &Traffic, agents_max: usize, tools_max: usize) {
        for (k, n) in &from.requests {
            *self.requests.entry(*k).or_insert(0) += n;
        }
        for (a, n) in &from.agents {
            bump(&mut self.agents, a.clone(), OTHER.into(), agents_max, *n);
        }
        for ((t, d), n) in &from.tools {
            bump(
                &mut self.tools,
                (t.clone(), *d),
                (OTHER.into(), *d),
                tools_max,
                *n,
            );
        }
    }
}

/// The hot-path side, owned by one core.
#[derive(Debug)]
pub struct CoreMetrics {
    pub shared: Arc<CoreShared>,
    request_us: RefCell<Histogram<u64>>,
    upstream_us: RefCell<Histogram<u64>>,
    added_us: RefCell<Histogram<u64>>,
    traffic: RefCell<Traffic>,
    agents_max: usize,
    tools_max: usize,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl CoreMetrics {
    pub fn new(shared: Arc<CoreShared>, bounds: &crate::config::MetricsConfig) -> Self {
        CoreMetrics {
            shared,
            request_us: RefCell::new(new_histogram()),
            upstream_us: RefCell::new(new_histogram()),
            added_us: RefCell::new(new_histogram()),
            traffic: RefCell::new(Traffic::default()),
            agents_max: bounds.agents_max,
            tools_max: bounds.tools_max,
        }
    }

    /// Count one answered request by its audit record's labels (and what the gateway added to it, when
    /// it went upstream).
    pub fn count(&self, e: &portcullis_pipeline::audit::Event) {
        let key = (
            known(e.method.as_deref(), METHODS, "none"),
            known(Some(e.transport.as_str()), &["h1", "h2", "h3"], "none"),
            known(e.revision.as_deref(), &["2025-11-25", "2026-07-28"], "none"),
            known(
                Some(e.decision.as_str()),
                &["allowed", "denied", "failed"],
                "none",
            ),
        );
        let mut t = self.traffic.borrow_mut();
        *t.requests.entry(key).or_insert(0) += 1;
        if let Some(a) = &e.agent {
            bump(&mut t.agents, a.clone(), OTHER.into(), self.agents_max, 1);
        }
        if let Some(tool) = &e.tool {
            let k = (tool.clone(), key.3);
            bump(&mut t.tools, k, (OTHER.into(), key.3), self.tools_max, 1);
        }
        drop(t);
        if let Some(up) = e.upstream_us {
            let added = e.latency_us.saturating_sub(up).max(1);
            let _ = self.added_us.borrow_mut().record(added);
        }
    }

    pub fn deny(&self, reason: DenyReason) {
        if let Some(i) = DenyReason::ALL.iter().position(|r| *r == reason) {
            inc(&self.shared.counters.denials[i]);
        }
    }

    pub fn record_request(&self, d: Duration) {
        record_micros(&mut self.request_us.borrow_mut(), d);
    }

    pub fn record_upstream(&self, d: Duration) {
        record_micros(&mut self.upstream_us.borrow_mut(), d);
    }

    /// Fold the local histograms into the shared copies (called by the core's timer).
    pub fn publish(&self) {
        {
            let mut local = self.traffic.borrow_mut();
            if !local.requests.is_empty() {
                if let Ok(mut s) = self.shared.traffic.lock() {
                    s.add(&local, self.agents_max, self.tools_max);
                }
                *local = Traffic::default();
            }
        }
        for (local, shared) in [
            (&self.request_us, &self.shared.request_us),
            (&self.upstream_us, &self.shared.upstream_us),
            (&self.added_us, &self.shared.added_us),
        ] {
            let mut local = local.borrow_mut();
            if local.is_empty() {
                continue;
            }
            if let Ok(mut s) = shared.lock() {
                let _ = s.add(&*local);
            }
            local.reset();
        }
    }
}

fn histogram_text(
    out: &mut String,
    name: &str,
    help: &str,
    cores: &[Arc<CoreShared>],
    pick: fn(&CoreShared) -> &Mutex<Histogram<u64>>,
) {
    summary_text(out, name, help, cores.iter().map(|c| (c.core, pick(c))));
}

/// A Prometheus summary (p50/p99/p99.9 in seconds, and the count) of per-core microsecond histograms,
/// each core's and all of them merged.
pub(crate) fn summary_text<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    cores: impl IntoIterator<Item = (usize, &'a Mutex<Histogram<u64>>)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} summary");
    let mut all = new_histogram();
    for (core, h) in cores {
        let Ok(h) = h.lock() else { continue };
        for q in [0.5, 0.99, 0.999] {
            let _ = writeln!(
                out,
                "{name}{{core=\"{core}\",quantile=\"{q}\"}} {}",
                h.value_at_quantile(q) as f64 / 1e6
            );
        }
        let _ = writeln!(out, "{name}_count{{core=\"{core}\"}} {}", h.len());
        let _ = all.add(&*h);
    }
    for q in [0.5, 0.99, 0.999] {
        let _ = writeln!(
            out,
            "{name}{{core=\"all\",quantile=\"{q}\"}} {}",
            all.value_at_quantile(q) as f64 / 1e6
        );
    }
    let _ = writeln!(out, "{name}_count{{core=\"all\"}} {}", all.len());
}

/// Name, help text and accessor of one counter.
type CounterDef = (&'static str, &'static str, fn(&Counters) -> &AtomicU64);

/// Prometheus text exposition of every core's metrics.
pub fn render(
    cores: &[Arc<CoreShared>],
    uptime: Duration,
    bounds: &crate::config::MetricsConfig,
) -> String {
    let mut out = String::with_capacity(8192);
    let _ = writeln!(out, "# HELP portcullis_uptime_seconds Time since start.\n# TYPE portcullis_uptime_seconds gauge\nportcullis_uptime_seconds {}", uptime.as_secs());
    let _ = writeln!(out, "# HELP portcullis_core_info Runtime driver of each core.\n# TYPE portcullis_core_info gauge");
    for c in cores {
        let _ = writeln!(
            out,
            "portcullis_core_info{{core=\"{}\",driver=\"{}\"}} 1",
            c.core, c.driver
        );
    }
    let counters: [CounterDef; 10] = [
        (
            "portcullis_connections_accepted_total",
            "Agent connections accepted.",
            |c| &c.connections_accepted,
        ),
        (
            "portcullis_connections_refused_total",
            "Agent connections closed at connections_per_core_max.",
            |c| &c.connections_refused,
        ),
        (
            "portcullis_connections_open",
            "Agent connections open now.",
            |c| &c.connections_open,
        ),
        (
            "portcullis_requests_total",
            "HTTP requests received on the MCP listeners.",
            |c| &c.requests,
        ),
        (
            "portcullis_responses_ok_total",
            "Requests answered without a refusal.",
            |c| &c.responses_ok,
        ),
        (
            "portcullis_sessions_opened_total",
            "2025-11-25 sessions opened.",
            |c| &c.sessions_opened,
        ),
        (
            "portcullis_upstream_requests_total",
            "Requests sent to upstreams.",
            |c| &c.upstream_requests,
        ),
        (
            "portcullis_upstream_errors_total",
            "Upstream exchanges that failed.",
            |c| &c.upstream_errors,
        ),
        (
            "portcullis_output_schema_mismatches_total",
            "Tool results that did not fit their pinned output schema (mode report or enforce).",
            |c| &c.output_schema_mismatches,
        ),
        (
            "portcullis_sessions_open",
            "Sessions each core owns now.",
            |c| &c.sessions_open,
        ),
    ];
    for (name, help, pick) in counters {
        let kind = if name.ends_with("_open") {
            "gauge"
        } else {
            "counter"
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for c in cores {
            let _ = writeln!(
                out,
                "{name}{{core=\"{}\"}} {}",
                c.core,
                pick(&c.counters).load(Ordering::Relaxed)
            );
        }
    }
    let _ = writeln!(out, "# HELP portcullis_denials_total Refusals by machine-readable reason.\n# TYPE portcullis_denials_total counter");
    for (i, r) in DenyReason::ALL.iter().enumerate() {
        let total: u64 = cores
            .iter()
            .map(|c| c.counters.denials[i].load(Ordering::Relaxed))
            .sum();
        let _ = writeln!(
            out,
            "portcullis_denials_total{{reason=\"{}\",blame=\"{}\"}} {total}",
            r.code(),
            r.blame().label()
        );
    }
    histogram_text(
        &mut out,
        "portcullis_request_duration_seconds",
        "Whole request at the gateway, first byte in to last byte out.",
        cores,
        |c| &c.request_us,
    );
    histogram_text(
        &mut out,
        "portcullis_upstream_duration_seconds",
        "Upstream exchange, request sent to response head.",
        cores,
        |c| &c.upstream_us,
    );
    histogram_text(
        &mut out,
        "portcullis_gateway_added_duration_seconds",
        "What the gateway added to a forwarded request: its latency less its upstream exchange.",
        cores,
        |c| &c.added_us,
    );
    let t = merged(cores, bounds);
    let _ = writeln!(out, "# HELP portcullis_mcp_requests_total Requests by JSON-RPC method (GET and DELETE for stream and session requests), transport, protocol revision and decision.\n# TYPE portcullis_mcp_requests_total counter");
    let sorted: BTreeMap<_, _> = t.requests.iter().collect();
    for ((m, tr, rev, d), n) in sorted {
        let _ = writeln!(out, "portcullis_mcp_requests_total{{method=\"{m}\",transport=\"{tr}\",revision=\"{rev}\",decision=\"{d}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP portcullis_agent_requests_total Requests by agent (metrics.agents_max named, the rest as `other`).\n# TYPE portcullis_agent_requests_total counter");
    for (a, n) in t.agents.iter().collect::<BTreeMap<_, _>>() {
        let _ = writeln!(
            out,
            "portcullis_agent_requests_total{{agent=\"{}\"}} {n}",
            label(a)
        );
    }
    let _ = writeln!(out, "# HELP portcullis_tool_calls_total Tool requests by tool and decision (metrics.tools_max named, the rest as `other`).\n# TYPE portcullis_tool_calls_total counter");
    for ((tool, d), n) in t.tools.iter().collect::<BTreeMap<_, _>>() {
        let _ = writeln!(
            out,
            "portcullis_tool_calls_total{{tool=\"{}\",decision=\"{d}\"}} {n}",
            label(tool)
        );
    }
    out
}

/// Every core's traffic table in one, within the same bounds as each core's (the first cores' names
/// are kept, later ones count as `other`).
pub fn merged(cores: &[Arc<CoreShared>], bounds: &crate::config::MetricsConfig) -> Traffic {
    let mut all = Traffic::default();
    for c in cores {
        if let Ok(t) = c.traffic.lock() {
            all.add(&t, bounds.agents_max, bounds.tools_max);
        }
    }
    all
}

/// A Prometheus label value: backslash, quote and newline escaped.
pub fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Merged percentiles (µs) and count of one histogram across cores.
pub fn quantiles(
    cores: &[Arc<CoreShared>],
    pick: fn(&CoreShared) -> &Mutex<Histogram<u64>>,
) -> serde_json::Value {
    let mut all = new_histogram();
    for c in cores {
        if let Ok(h) = pick(c).lock() {
            let _ = all.add(&*h);
        }
    }
    serde_json::json!({
        "count": all.len(),
        "p50_us": all.value_at_quantile(0.5),
        "p99_us": all.value_at_quantile(0.99),
        "p999_us": all.value_at_quantile(0.999),
    })
}
