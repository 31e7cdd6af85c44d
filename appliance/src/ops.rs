//! The operators' read-side of the admin API, which the console draws: `GET /admin/v1/health` (the health
//! document), `/traffic` (totals and the live ring), `/audit` (a search page), `/audit/export` (streamed
//! JSONL or OCSF), `/audit/verify`, and `/bench` (the benchmark result files).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use portcullis_pipeline::audit::Query;

use crate::admin::CoreList;
use crate::control::{Answer, ControlPlane};
use crate::gateway::Shared;
use crate::health::Checks;
use crate::traffic::Live;

/// How long one search page may read the trail.
const SEARCH_BUDGET: Duration = Duration::from_secs(10);
/// Result files read from the bench directory, at most, and the largest one.
const BENCH_FILES_MAX: usize = 64;
const BENCH_FILE_BYTES_MAX: u64 = 1 << 20;
/// History lines answered, the newest.
const BENCH_HISTORY_MAX: usize = 1000;
/// Bytes of export per chunk written to the client.
const EXPORT_CHUNK: usize = 64 << 10;

/// What the admin thread holds for these endpoints.
#[derive(Debug)]
pub struct Ops {
    pub shared: Arc<Shared>,
    pub cores: CoreList,
    pub n_cores: usize,
    pub control: Arc<ControlPlane>,
    pub checks: Arc<Checks>,
    pub live: Arc<Live>,
}

/// An answer, or a streamed export: its content type, file name, and chunks from a reader thread.
#[derive(Debug)]
pub enum Out {
    Answer(Answer),
    Stream {
        content_type: &'static str,
        filename: String,
        chunks: flume::Receiver<Vec<u8>>,
    },
}

fn answer(status: u16, v: &serde_json::Value) -> Out {
    Out::Answer(Answer {
        status,
        body: serde_json::to_vec_pretty(v).unwrap_or_default(),
    })
}

fn error(status: u16, code: &str, message: &str) -> Out {
    answer(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

/// Run `f` on a thread of its own and wait for it without blocking the admin runtime.
async fn off_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = flume::bounded(1);
    std::thread::Builder::new()
        .name("portcullis-audit-read".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .ok()?;
    rx.recv_async().await.ok()
}

impl Ops {
    /// The paths this module serves.
    pub fn serves(path: &str) -> bool {
        matches!(
            path,
            "/admin/v1/health"
                | "/admin/v1/traffic"
                | "/admin/v1/audit"
                | "/admin/v1/audit/export"
                | "/admin/v1/audit/verify"
                | "/admin/v1/bench"
        )
    }

    pub async fn handle(&self, method: &str, path: &str, query: &str) -> Out {
        if method != "GET" {
            return error(405, "method_not_allowed", "GET only");
        }
        match path {
            "/admin/v1/health" => answer(
                200,
                &crate::health::document(
                    &self.shared,
                    &self.cores,
                    self.n_cores,
                    &self.control,
                    &self.checks,
                ),
            ),
            "/admin/v1/traffic" => answer(
                200,
                &crate::traffic::summary(
                    &self.cores,
                    &self.live,
                    self.shared.started.elapsed(),
                    &self.shared.config.metrics,
                ),
            ),
            "/admin/v1/audit" => self.search(query).await,
            "/admin/v1/audit/export" => self.export(query),
            "/admin/v1/audit/verify" => self.verify().await,
            "/admin/v1/bench" => answer(200, &bench(&self.bench_dir())),
            _ => error(404, "not_found", "no such resource"),
        }
    }

    async fn search(&self, query: &str) -> Out {
        let q = match Query::parse(query) {
            Ok(q) => q,
            Err(e) => return error(400, "invalid_query", &e.0),
        };
        let root = self.shared.audit.root.clone();
        let Some(r) = off_thread(move || crate::auditsearch::page(&root, &q, SEARCH_BUDGET)).await
        else {
            return error(503, "overloaded", "no thread to read the audit trail");
        };
        match r {
            Ok(p) => {
                let records: Vec<_> = p
                    .records
                    .iter()
                    .map(|(c, e)| {
                        let mut v = serde_json::to_value(e).unwrap_or_default();
                        v["seq"] = c.seq.into();
                        v["cursor"] = c.to_string().into();
                        v
                    })
                    .collect();
                answer(
                    200,
                    &json!({
                        "records": records,
                        "next": p.next.map(|c| c.to_string()),
                        "scanned": p.scanned,
                        "partial": p.partial,
                    }),
                )
            }
            Err(e) => {
                crate::error!("audit search: {e}");
                error(500, "audit_unreadable", "the audit trail could not be read")
            }
        }
    }

    fn export(&self, query: &str) -> Out {
        // `format` is this endpoint's own; the rest is a search filter (without paging).
        let mut format = "jsonl";
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("format", "jsonl")) => format = "jsonl",
                Some(("format", "ocsf")) => format = "ocsf",
                Some(("format", _)) => {
                    return error(400, "invalid_query", "`format` is jsonl or ocsf")
                }
                Some(("limit" | "before", _)) => {
                    return error(
                        400,
                        "invalid_query",
                        "an export has every matching record: no `limit` or `before`",
                    )
                }
                _ => rest.push(pair),
            }
        }
        let q = match Query::parse(&rest.join("&")) {
            Ok(q) => q,
            Err(e) => return error(400, "invalid_query", &e.0),
        };
        let root = self.shared.audit.root.clone();
        let (tx, rx) = flume::bounded::<Vec<u8>>(8);
        let ocsf = format == "ocsf";
        let spawned = std::thread::Builder::new()
            .name("portcullis-audit-export".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(EXPORT_CHUNK + 4096);
                let r = crate::auditsearch::export(&root, &q, |e| {
                    let line = if ocsf {
                        serde_json::to_vec(&e.to_ocsf())
                    } else {
                        serde_json::to_vec(e)
                    };
                    buf.extend_from_slice(&line.unwrap_or_default());
                    buf.push(b'\n');
                    if buf.len() >= EXPORT_CHUNK {
                        return tx.send(std::mem::take(&mut buf)).is_ok();
                    }
                    true
                });
                if !buf.is_empty() {
                    let _ = tx.send(buf);
                }
                if let Err(e) = r {
                    crate::error!("audit export stopped: {e}");
                }
            });
        if spawned.is_err() {
            return error(503, "overloaded", "no thread to read the audit trail");
        }
        Out::Stream {
            content_type: "application/x-ndjson",
            filename: format!("portcullis-audit-{}.{format}", crate::control::now_ms()),
            chunks: rx,
        }
    }

    async fn verify(&self) -> Out {
        let Some(public) =
            portcullis_storage::signing::parse_public_key(&self.control.registry.public_key_hex())
        else {
            return error(500, "internal", "the signing key is unreadable");
        };
        let root = self.shared.audit.root.clone();
        let Some(r) = off_thread(move || portcullis_storage::audit::verify(&root, &public)).await
        else {
            return error(503, "overloaded", "no thread to read the audit trail");
        };
        match r {
            Ok(v) => {
                // A torn tail on the newest segment of a running appliance is an append in flight.
                let real = v
                    .breaks
                    .iter()
                    .filter(|b| !b.problem.starts_with("torn tail"))
                    .count();
                let mut doc = serde_json::to_value(&v).unwrap_or_default();
                doc["verified"] = (real == 0).into();
                answer(200, &doc)
            }
            Err(e) => {
                crate::error!("audit verify: {e}");
                error(500, "audit_unreadable", "the audit trail could not be read")
            }
        }
    }

    fn bench_dir(&self) -> PathBuf {
        if let Some(d) = &self.shared.config.console.bench_dir {
            return d.clone();
        }
        let own = self.shared.config.data_dir.join("bench");
        if own.is_dir() {
            return own;
        }
        let checkout = PathBuf::from("bench/results");
        if checkout.is_dir() {
            return checkout;
        }
        own
    }
}

/// The result files of `dir` (`NAME.json`, each one bench script's latest run) and the run history
/// (`history.jsonl`, one run per line, the newest last).
pub fn bench(dir: &Path) -> serde_json::Value {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut paths: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        for p in paths.into_iter().take(BENCH_FILES_MAX) {
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let too_big = std::fs::metadata(&p).map_or(true, |m| m.len() > BENCH_FILE_BYTES_MAX);
            if too_big {
                problems.push(format!("{name}: larger than {BENCH_FILE_BYTES_MAX} bytes"));
                continue;
            }
            match std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            {
                Some(doc) => files.push(json!({"name": name, "result": doc})),
                None => problems.push(format!("{name}: not JSON")),
            }
        }
    }
    let mut history: Vec<serde_json::Value> = Vec::new();
    if let Ok(text) = std::fs::read_to_string(dir.join("history.jsonl")) {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        for l in &lines[lines.len().saturating_sub(BENCH_HISTORY_MAX)..] {
            if let Ok(v) = serde_json::from_str(l) {
                history.push(v);
            }
        }
    }
    json!({
        "dir": dir.display().to_string(),
        "files": files,
        "history": history,
        "problems": problems,
    })
}
