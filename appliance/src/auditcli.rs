//! `portcullis audit verify|tail|search|export`: the operator's view of the audit trail, read straight
//! from `DATA_DIR/audit` (append-only files, so reading beside a running appliance is safe: a record still
//! being appended reads as a torn tail and is left for the next read).
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_pipeline::audit::{Event, Filter};
use portcullis_storage::audit::{self, Kind};
use portcullis_storage::signing;

/// Records between progress lines of a long export.
const PROGRESS_EVERY: u64 = 100_000;

pub fn run(
    words: &[String],
    fields: &[(String, String)],
    flags: &[String],
    json: bool,
    data_dir: Option<PathBuf>,
) -> Result<(), String> {
    let follow = flags.iter().any(|f| f == "follow");
    let mark = flags.iter().any(|f| f == "mark");
    let data = data_dir.unwrap_or_else(|| PathBuf::from("portcullis-data"));
    let root = data.join("audit");
    let field = |n: &str| {
        fields
            .iter()
            .rev()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    let filter = filter(&field)?;
    match words.first().map(String::as_str) {
        Some("verify") => verify(&data, &root, field("public-key"), json),
        Some("tail") => {
            let n: usize = field("n")
                .map(|v| v.parse().map_err(|_| "--n: not a number".to_owned()))
                .transpose()?
                .unwrap_or(20);
            tail(&root, n, follow, &filter)
        }
        Some("search") => {
            let out = std::io::stdout();
            let mut out = out.lock();
            for e in events(&root)?.into_iter().filter(|e| filter.matches(e)) {
                line(&mut out, &e)?;
            }
            Ok(())
        }
        Some("export") => export(&root, &filter, field("format"), field("out"), mark),
        _ => Err(format!(
            "audit verify|tail|search|export\n{}",
            crate::cli::USAGE
        )),
    }
}

fn filter(field: &dyn Fn(&str) -> Option<String>) -> Result<Filter, String> {
    let ms = |n: &str| -> Result<Option<u64>, String> {
        field(n)
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("--{n}: milliseconds since the epoch"))
            })
            .transpose()
    };
    let mut f = Filter {
        from_ms: ms("from")?,
        to_ms: ms("to")?,
        agent: field("agent"),
        tool: field("tool"),
        decision: field("decision"),
        reason: field("reason"),
    };
    if let Some(since) = field("since") {
        let d =
            crate::config::parse_duration(&since).ok_or("--since: a duration such as 15m or 2h")?;
        f.from_ms = Some(crate::control::now_ms().saturating_sub(d.as_millis() as u64));
    }
    Ok(f)
}

fn verify(data: &Path, root: &Path, key: Option<String>, json: bool) -> Result<(), String> {
    let public = match key {
        Some(hex) => signing::parse_public_key(&hex).ok_or("--public-key: 64 hex digits")?,
        None => {
            if !data.join(signing::KEY_FILE).exists() {
                return Err(format!(
                    "{} has no signing key; pass --public-key (the appliance's `portcullis signing-key`)",
                    data.display()
                ));
            }
            let dd = portcullis_storage::DataDir::open(data).map_err(|e| e.to_string())?;
            portcullis_storage::SigningKey::load_or_create(&dd)
                .map_err(|e| e.to_string())?
                .public()
        }
    };
    let v = audit::verify(root, &public).map_err(|e| format!("{}: {e}", root.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "{} cores, {} segments, {} records, {} checkpoints, {} records after the last checkpoint",
            v.cores, v.segments, v.events, v.checkpoints, v.unanchored
        );
        for b in &v.breaks {
            println!(
                "BREAK core {} segment {} at byte {}{}: {}",
                b.core,
                b.segment,
                b.offset,
                b.seq.map(|s| format!(" (record {s})")).unwrap_or_default(),
                b.problem
            );
        }
    }
    // A torn tail on the newest segment of a running appliance is an append in flight, not a break.
    let real: Vec<_> = v
        .breaks
        .iter()
        .filter(|b| !b.problem.starts_with("torn tail"))
        .collect();
    if real.is_empty() {
        if !json {
            println!("verified");
        }
        Ok(())
    } else {
        Err(format!("{} break(s) in the audit trail", real.len()))
    }
}

/// Every event record of every core, oldest first by time.
pub fn events(root: &Path) -> Result<Vec<Event>, String> {
    events_and_ends(root).map(|(e, _)| e)
}

/// `events`, and per core the last sequence number read.
fn events_and_ends(root: &Path) -> Result<(Vec<Event>, BTreeMap<u16, u64>), String> {
    let mut out = Vec::new();
    let mut ends = BTreeMap::new();
    for (core, dir) in audit::cores(root).map_err(|e| e.to_string())? {
        for (_, seg) in audit::segments(&dir).map_err(|e| e.to_string())? {
            let (records, _, _) =
                audit::read_segment(&seg).map_err(|e| format!("{}: {e}", seg.display()))?;
            if let Some(last) = records.last() {
                ends.insert(core, last.seq);
            }
            for r in records.into_iter().filter(|r| r.kind == Kind::Event) {
                if let Ok(e) = serde_json::from_slice::<Event>(&r.payload) {
                    out.push(e);
                }
            }
        }
    }
    out.sort_by_key(|e| e.at_ms);
    Ok((out, ends))
}

fn line(out: &mut impl Write, e: &Event) -> Result<(), String> {
    writeln!(out, "{}", serde_json::to_string(e).unwrap_or_default()).map_err(|e| e.to_string())
}

fn tail(root: &Path, n: usize, follow: bool, filter: &Filter) -> Result<(), String> {
    let all: Vec<Event> = events(root)?
        .into_iter()
        .filter(|e| filter.matches(e))
        .collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut shown = all.len();
    for e in &all[all.len().saturating_sub(n)..] {
        line(&mut out, e)?;
    }
    out.flush().ok();
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now: Vec<Event> = events(root)?
            .into_iter()
            .filter(|e| filter.matches(e))
            .collect();
        if now.len() > shown {
            for e in &now[shown..] {
                line(&mut out, e)?;
            }
            out.flush().ok();
            shown = now.len();
        }
    }
}

fn export(
    root: &Path,
    filter: &Filter,
    format: Option<String>,
    out: Option<String>,
    mark: bool,
) -> Result<(), String> {
    if mark && !filter.is_empty() {
        return Err("--mark records a complete export: use it without filters".into());
    }
    let ocsf = match format.as_deref() {
        None | Some("jsonl") => false,
        Some("ocsf") => true,
        Some(other) => return Err(format!("--format {other}: jsonl or ocsf")),
    };
    let mut sink: Box<dyn Write> = match &out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| format!("{p}: {e}"))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut n = 0u64;
    let (all, ends) = events_and_ends(root)?;
    for e in all.into_iter().filter(|e| filter.matches(e)) {
        let text = if ocsf {
            e.to_ocsf().to_string()
        } else {
            serde_json::to_string(&e).unwrap_or_default()
        };
        writeln!(sink, "{text}").map_err(|e| e.to_string())?;
        n += 1;
        if n.is_multiple_of(PROGRESS_EVERY) {
            eprintln!("exported {n} records");
        }
    }
    sink.flush().map_err(|e| e.to_string())?;
    eprintln!("exported {n} records");
    if mark {
        // Only once the export is complete and flushed may its segments count as delivered.
        let file = root.join(crate::audit::CURSOR_FILES[1]);
        let tmp = root.join("export.cursor.tmp");
        std::fs::write(&tmp, serde_json::to_string(&ends).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, &file))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        eprintln!("marked as exported (audit.at_budget: drop_oldest_exported may delete it)");
    }
    Ok(())
}
