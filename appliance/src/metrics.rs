//! Per-core counters and latency histograms, merged only when scraped.
//!
//! Counters are atomics written by their own core alone (relaxed; the scraper reads a recent value).
//! Histograms are recorded into a core-local `RefCell` on the hot path and folded into a per-core shared copy
//! once a second by that core's timer, so the scraper's lock never touches a request.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use portcullis_pipeline::DenyReason;

/// Latency histogram range: 1 µs to 60 s, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
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
}

impl CoreShared {
    pub fn new(core: usize, driver: &'static str) -> Arc<Self> {
        Arc::new(CoreShared {
            core,
            driver,
            counters: Counters::default(),
            request_us: Mutex::new(new_histogram()),
            upstream_us: Mutex::new(new_histogram()),
        })
    }
}

/// The hot-path side, owned by one core.
#[derive(Debug)]
pub struct CoreMetrics {
    pub shared: Arc<CoreShared>,
    request_us: RefCell<Histogram<u64>>,
    upstream_us: RefCell<Histogram<u64>>,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl CoreMetrics {
    pub fn new(shared: Arc<CoreShared>) -> Self {
        CoreMetrics {
            shared,
            request_us: RefCell::new(new_histogram()),
            upstream_us: RefCell::new(new_histogram()),
        }
    }

    pub fn deny(&self, reason: DenyReason) {
        if let Some(i) = DenyReason::ALL.iter().position(|r| *r == reason) {
            inc(&self.shared.counters.denials[i]);
        }
    }

    pub fn record_request(&self, d: Duration) {
        let _ = self
            .request_us
            .borrow_mut()
            .record((d.as_micros() as u64).max(1));
    }

    pub fn record_upstream(&self, d: Duration) {
        let _ = self
            .upstream_us
            .borrow_mut()
            .record((d.as_micros() as u64).max(1));
    }

    /// Fold the local histograms into the shared copies (called by the core's timer).
    pub fn publish(&self) {
        for (local, shared) in [
            (&self.request_us, &self.shared.request_us),
            (&self.upstream_us, &self.shared.upstream_us),
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
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} summary");
    let mut all = new_histogram();
    for c in cores {
        let Ok(h) = pick(c).lock() else { continue };
        for q in [0.5, 0.99, 0.999] {
            let _ = writeln!(
                out,
                "{name}{{core=\"{}\",quantile=\"{q}\"}} {}",
                c.core,
                h.value_at_quantile(q) as f64 / 1e6
            );
        }
        let _ = writeln!(out, "{name}_count{{core=\"{}\"}} {}", c.core, h.len());
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
pub fn render(cores: &[Arc<CoreShared>], uptime: Duration) -> String {
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
    let counters: [CounterDef; 9] = [
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
    out
}
