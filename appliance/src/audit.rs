//! The audit writer: one thread per core appends that core's records to its own segments
//! (`storage::audit`), in batches, so one `fdatasync` commits every record that queued while the previous
//! one ran (group commit).
//!
//! In `durable` mode a core releases a response only after its record's batch is synced; in `async` mode
//! it queues the record and goes on, and the writer syncs at least every `audit.flush_interval`. A record
//! that cannot be written (disk full or read-only, the disk budget reached) fails the request it belongs
//! to with `audit_unavailable`: nothing is answered without its record. The writer recovers on its own
//! when writes succeed again.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use portcullis_storage::audit::{Recovery, Segments};
use portcullis_storage::SigningKey;

use crate::config::{AtBudget, Audit, AuditMode};

/// Per-core positions of what has left the appliance: the syslog forwarder's and `audit export --mark`'s.
pub const CURSOR_FILES: [&str; 2] = ["syslog.cursor", "export.cursor"];

/// The highest sequence number of core `core` that a cursor under `root` has delivered.
pub fn exported(root: &Path, core: u16) -> u64 {
    CURSOR_FILES
        .iter()
        .filter_map(|f| std::fs::read_to_string(root.join(f)).ok())
        .filter_map(|t| serde_json::from_str::<std::collections::BTreeMap<u16, u64>>(&t).ok())
        .filter_map(|m| m.get(&core).copied())
        .max()
        .unwrap_or(0)
}

/// Records queued per core, at most; past it a durable core waits, an async one too (never drops).
const QUEUE_MAX: usize = 65_536;

enum Job {
    Record {
        payload: Vec<u8>,
        ack: Option<flume::Sender<Result<(), String>>>,
        /// When the core queued it: the record's wait is measured from here.
        queued: Instant,
    },
    /// Write a checkpoint, sync, and answer (shutdown).
    Close(flume::Sender<()>),
}

/// What one core's writer has counted.
#[derive(Debug)]
pub struct Stats {
    pub records: AtomicU64,
    pub failures: AtomicU64,
    pub batches: AtomicU64,
    /// Nanoseconds spent writing and syncing batches.
    pub write_nanos: AtomicU64,
    /// The last batch could not be written (cleared by the next one that is).
    pub failing: AtomicBool,
    /// When the last batch was written, ms since the epoch (0: none yet).
    pub last_batch_ms: AtomicU64,
    /// Microseconds each batch took to write (and sync, when durable). Locked by the writer once a
    /// batch and by a scrape, never by a core.
    pub batch_us: Mutex<Histogram<u64>>,
    /// Microseconds from a record being queued to its batch being written: what a durable request
    /// waits for its record.
    pub wait_us: Mutex<Histogram<u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            records: AtomicU64::default(),
            failures: AtomicU64::default(),
            batches: AtomicU64::default(),
            write_nanos: AtomicU64::default(),
            failing: AtomicBool::default(),
            last_batch_ms: AtomicU64::default(),
            batch_us: Mutex::new(crate::metrics::new_histogram()),
            wait_us: Mutex::new(crate::metrics::new_histogram()),
        }
    }
}

/// One core's handle on its writer.
#[derive(Debug)]
pub struct CoreTrail {
    tx: flume::Sender<Job>,
    durable: bool,
    pub stats: Arc<Stats>,
}

/// Every core's writer.
#[derive(Debug)]
pub struct Trail {
    pub root: PathBuf,
    cores: Vec<CoreTrail>,
    used: Arc<AtomicU64>,
    max: u64,
}

impl CoreTrail {
    /// Append `payload`. Durable: returns once it is on disk (or why it cannot be). Async: once queued.
    pub async fn record(&self, payload: Vec<u8>) -> Result<(), String> {
        if !self.durable {
            return self
                .tx
                .send_async(Job::Record {
                    payload,
                    ack: None,
                    queued: Instant::now(),
                })
                .await
                .map_err(|_| "the audit writer stopped".to_owned());
        }
        let (ack, done) = flume::bounded(1);
        self.tx
            .send_async(Job::Record {
                payload,
                ack: Some(ack),
                queued: Instant::now(),
            })
            .await
            .map_err(|_| "the audit writer stopped".to_owned())?;
        done.recv_async()
            .await
            .map_err(|_| "the audit writer stopped".to_owned())?
    }

    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}

impl Trail {
    /// Open (recovering) every core's segments under `root` and start their writers.
    pub fn open(
        root: &Path,
        cores: usize,
        cfg: &Audit,
        key: Arc<SigningKey>,
    ) -> Result<Trail, String> {
        let used = Arc::new(AtomicU64::new(0));
        let prune_lock = Arc::new(std::sync::Mutex::new(()));
        let mut out = Vec::with_capacity(cores);
        for core in 0..cores {
            let id = u16::try_from(core).map_err(|_| "too many cores".to_owned())?;
            let (segs, recovery) = Segments::open(
                root,
                id,
                cfg.segment_bytes,
                cfg.checkpoint_every,
                key.clone(),
            )
            .map_err(|e| e.to_string())?;
            report(id, &recovery);
            used.fetch_add(segs.bytes(), Ordering::Relaxed);
            let (tx, rx) = flume::bounded(QUEUE_MAX);
            let stats = Arc::new(Stats::default());
            let writer = Writer {
                root: root.to_path_buf(),
                key: key.clone(),
                prune_lock: prune_lock.clone(),
                cores: cores as u16,
                drop_exported: cfg.at_budget == AtBudget::DropOldestExported,
                core: id,
                segs,
                rx,
                durable: cfg.mode == AuditMode::Durable,
                flush_interval: cfg.flush_interval.0,
                gather: cfg.async_gather.0,
                batch_max: cfg.batch_max,
                used: used.clone(),
                max: cfg.max_bytes,
                stats: stats.clone(),
            };
            std::thread::Builder::new()
                .name(format!("portcullis-audit-{core}"))
                .spawn(move || writer.run())
                .map_err(|e| format!("audit writer thread: {e}"))?;
            out.push(CoreTrail {
                tx,
                durable: cfg.mode == AuditMode::Durable,
                stats,
            });
        }
        Ok(Trail {
            root: root.to_path_buf(),
            cores: out,
            used,
            max: cfg.max_bytes,
        })
    }

    pub fn core(&self, id: u16) -> Option<&CoreTrail> {
        self.cores.get(usize::from(id))
    }

    /// Checkpoint and sync every core's trail (at shutdown, after the cores stopped).
    pub fn close(&self) {
        for c in &self.cores {
            let (tx, rx) = flume::bounded(1);
            if c.tx.send(Job::Close(tx)).is_ok() {
                let _ = rx.recv_timeout(Duration::from_secs(5));
            }
        }
    }

    /// Prometheus text for `/metrics`.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let rows: [MetricRow; 5] = [
            ("portcullis_audit_records_total", "counter", "Audit records written, per core.", |c| c.stats.records.load(Ordering::Relaxed)),
            ("portcullis_audit_failures_total", "counter", "Audit records that could not be written (their requests got audit_unavailable), per core.", |c| c.stats.failures.load(Ordering::Relaxed)),
            ("portcullis_audit_batches_total", "counter", "Batches written (one fdatasync each in durable mode), per core.", |c| c.stats.batches.load(Ordering::Relaxed)),
            ("portcullis_audit_write_seconds_total", "counter", "Time spent writing and syncing batches, per core.", |c| c.stats.write_nanos.load(Ordering::Relaxed)),
            ("portcullis_audit_queue_depth", "gauge", "Records waiting for the writer, per core.", |c| c.queued() as u64),
        ];
        for (name, kind, help, get) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (i, c) in self.cores.iter().enumerate() {
                let v = get(c);
                if name.ends_with("_seconds_total") {
                    let _ = writeln!(out, "{name}{{core=\"{i}\"}} {:.6}", v as f64 / 1e9);
                } else {
                    let _ = writeln!(out, "{name}{{core=\"{i}\"}} {v}");
                }
            }
        }
        crate::metrics::summary_text(
            &mut out,
            "portcullis_audit_batch_write_duration_seconds",
            "Writing (and in durable mode syncing) one batch of records, per core.",
            self.cores
                .iter()
                .enumerate()
                .map(|(i, c)| (i, &c.stats.batch_us)),
        );
        crate::metrics::summary_text(
            &mut out,
            "portcullis_audit_record_wait_seconds",
            "From a record being queued to its batch being written: what a durable request waits for its record, per core.",
            self.cores.iter().enumerate().map(|(i, c)| (i, &c.stats.wait_us)),
        );
        let _ = writeln!(
            out,
            "# HELP portcullis_audit_bytes Bytes of the audit trail on disk.\n# TYPE portcullis_audit_bytes gauge\nportcullis_audit_bytes {}\n# HELP portcullis_audit_max_bytes The audit trail's disk budget.\n# TYPE portcullis_audit_max_bytes gauge\nportcullis_audit_max_bytes {}",
            self.used.load(Ordering::Relaxed),
            self.max
        );
        out
    }

    /// Bytes on disk and the budget.
    pub fn usage(&self) -> (u64, u64) {
        (self.used.load(Ordering::Relaxed), self.max)
    }

    /// Whether every core's writer wrote its last batch (a full or read-only disk makes one fail).
    pub fn writable(&self) -> bool {
        self.cores
            .iter()
            .all(|c| !c.stats.failing.load(Ordering::Relaxed))
    }

    /// The health document's audit section: disk use, queue depth, and how long the oldest queued
    /// records have waited at most (time since the last batch of a core with records queued).
    pub fn health(&self, now_ms: u64) -> serde_json::Value {
        let queued: usize = self.cores.iter().map(CoreTrail::queued).sum();
        let lag_ms = self
            .cores
            .iter()
            .filter(|c| c.queued() > 0)
            .map(|c| now_ms.saturating_sub(c.stats.last_batch_ms.load(Ordering::Relaxed)))
            .max()
            .unwrap_or(0);
        let failures: u64 = self
            .cores
            .iter()
            .map(|c| c.stats.failures.load(Ordering::Relaxed))
            .sum();
        let records: u64 = self
            .cores
            .iter()
            .map(|c| c.stats.records.load(Ordering::Relaxed))
            .sum();
        serde_json::json!({
            "writable": self.writable(),
            "mode": if self.cores.first().is_some_and(|c| c.durable) { "durable" } else { "async" },
            "bytes": self.used.load(Ordering::Relaxed),
            "max_bytes": self.max,
            "records_written": records,
            "failures": failures,
            "queue_depth": queued,
            "lag_ms": lag_ms,
        })
    }
}

/// A per-core metric: name, type, help, and how to read it.
type MetricRow = (
    &'static str,
    &'static str,
    &'static str,
    fn(&CoreTrail) -> u64,
);

fn report(core: u16, r: &Recovery) {
    if r.truncated_bytes > 0 {
        crate::warn!(
            "audit core={core} segment={} torn tail cut: {} bytes (an append interrupted by a crash; it was never acknowledged), {} records intact",
            r.segment.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
            r.truncated_bytes,
            r.records
        );
    }
}

struct Writer {
    root: PathBuf,
    key: Arc<SigningKey>,
    /// One core prunes at a time (any core's closed segments: the budget is shared).
    prune_lock: Arc<std::sync::Mutex<()>>,
    cores: u16,
    drop_exported: bool,
    core: u16,
    segs: Segments,
    rx: flume::Receiver<Job>,
    durable: bool,
    flush_interval: Duration,
    /// Async mode: the pause after a write (`audit.async_gather`).
    gather: Duration,
    batch_max: usize,
    used: Arc<AtomicU64>,
    max: u64,
    stats: Arc<Stats>,
}

fn now_ms() -> u64 {
    crate::control::now_ms()
}

impl Writer {
    fn run(mut self) {
        let mut dirty = false;
        let mut last_sync = Instant::now();
        loop {
            let first = if self.durable || !dirty {
                match self.rx.recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            } else {
                let wait = self.flush_interval.saturating_sub(last_sync.elapsed());
                match self.rx.recv_timeout(wait) {
                    Ok(j) => j,
                    Err(flume::RecvTimeoutError::Timeout) => {
                        if self.segs.sync().is_ok() {
                            dirty = false;
                        }
                        last_sync = Instant::now();
                        continue;
                    }
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut payloads = Vec::new();
            let mut acks = Vec::new();
            let mut queued = Vec::new();
            let mut closes = Vec::new();
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Record {
                        payload,
                        ack,
                        queued: at,
                    } => {
                        payloads.push(payload);
                        acks.push(ack);
                        queued.push(at);
                    }
                    Job::Close(tx) => closes.push(tx),
                }
                if payloads.len() < self.batch_max {
                    next = self.rx.try_recv().ok();
                }
            }
            let payloads_empty = payloads.is_empty();
            if !payloads_empty {
                let outcome = self.write(&payloads);
                if outcome.is_ok() {
                    if let Ok(mut h) = self.stats.wait_us.lock() {
                        for at in &queued {
                            crate::metrics::record_micros(&mut h, at.elapsed());
                        }
                    }
                }
                for ack in acks.into_iter().flatten() {
                    let _ = ack.send(outcome.clone());
                }
                if outcome.is_ok() && !self.durable {
                    dirty = true;
                    if last_sync.elapsed() >= self.flush_interval {
                        if self.segs.sync().is_ok() {
                            dirty = false;
                        }
                        last_sync = Instant::now();
                    }
                }
            }
            for c in closes {
                let _ = self.segs.checkpoint(now_ms());
                let _ = c.send(());
            }
            if !self.durable && !payloads_empty && !self.gather.is_zero() {
                // Async: nobody waits for this write, so let records gather a moment instead of waking
                // this thread once per record (a context switch that every request would pay on a busy
                // box). An idle writer blocks in `recv` again and is woken by the next record.
                std::thread::sleep(self.flush_interval.min(self.gather));
            }
        }
        let _ = self.segs.checkpoint(now_ms());
    }

    /// Free at least `need` bytes of exported segments, this core's first, then the others' (the
    /// budget is shared, and which core fills it depends on where connections land). Returns the bytes
    /// freed.
    fn prune(&mut self, need: u64) -> u64 {
        let _one = self
            .prune_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut freed = 0;
        let order = std::iter::once(self.core).chain((0..self.cores).filter(|c| *c != self.core));
        for core in order {
            if freed >= need {
                break;
            }
            let dir = portcullis_storage::audit::core_dir(&self.root, core);
            let exported = exported(&self.root, core);
            match portcullis_storage::audit::prune_exported(
                &dir,
                core,
                exported,
                &self.key,
                now_ms(),
            ) {
                Ok(0) => {}
                Ok(n) => {
                    crate::info!(
                        "audit at its budget: deleted {n} bytes of core {core}'s oldest exported segments"
                    );
                    freed += n;
                }
                Err(e) => crate::error!("audit pruning core {core} failed: {e}"),
            }
        }
        freed
    }

    fn write(&mut self, payloads: &[Vec<u8>]) -> Result<(), String> {
        let n = payloads.len() as u64;
        let size: u64 = payloads
            .iter()
            .map(|p| (p.len() + portcullis_storage::audit::HEAD_LEN) as u64)
            .sum();
        let mut used = self.used.load(Ordering::Relaxed);
        if used + size > self.max && self.drop_exported {
            let freed = self.prune(used + size - self.max);
            if freed > 0 {
                used = self.used.fetch_sub(freed, Ordering::Relaxed) - freed;
            }
        }
        let result = if used + size > self.max {
            Err(portcullis_storage::audit::AuditError::Budget {
                used,
                max: self.max,
            }
            .to_string())
        } else {
            let before = self.segs.bytes();
            let t0 = Instant::now();
            let r = self.segs.append(payloads, self.durable, now_ms());
            let took = t0.elapsed();
            self.stats
                .write_nanos
                .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
            if r.is_ok() {
                if let Ok(mut h) = self.stats.batch_us.lock() {
                    crate::metrics::record_micros(&mut h, took);
                }
            }
            let grown = self.segs.bytes().saturating_sub(before);
            self.used.fetch_add(grown, Ordering::Relaxed);
            r.map(|_| ()).map_err(|e| e.to_string())
        };
        match &result {
            Ok(()) => {
                self.stats.records.fetch_add(n, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.last_batch_ms.store(now_ms(), Ordering::Relaxed);
                if self.stats.failing.swap(false, Ordering::Relaxed) {
                    crate::info!("audit core={} writing again", self.core);
                }
            }
            Err(e) => {
                self.stats.failures.fetch_add(n, Ordering::Relaxed);
                // Once per outage, not once per record: a full disk must not become a log storm.
                if !self.stats.failing.swap(true, Ordering::Relaxed) {
                    crate::error!(
                        "audit core={} cannot write records, calls are refused with audit_unavailable: {e}",
                        self.core
                    );
                }
            }
        }
        result
    }
}
