//! Searching and exporting the audit trail for the admin API and the console, without holding the trail
//! in memory.
//!
//! A search page walks each core's segments newest first and, inside a segment, its records last to
//! first. Records are appended in completion order, but carry their arrival time: a record can sit
//! after one that arrived later by at most the time to its answer's head. `ARRIVAL_SLACK` bounds that,
//! which gives two shortcuts that keep a page's cost independent of the trail's length: a segment whose
//! first record arrived more than the slack after the page's upper bound (`before`, `to`) is skipped
//! after reading that one record, and the walk of a core stops at a record that arrived more than the
//! slack before the page's lower bound (the oldest record the page could still take, or `from`). An
//! export streams every matching record oldest first, merging the cores by arrival time, one segment
//! per core in memory at a time.
//!
//! Both read the files the writers append to (safe beside them: a record being appended reads as a
//! torn tail and is left for the next read) and run on a thread of their own, never on a core.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portcullis_pipeline::audit::{Cursor, Event, Query};
use portcullis_storage::audit::{self, Kind, RecordRef};

/// How much later than its arrival a record may be appended, at most: longer than any request takes
/// to its response head (`limits.upstream_response_timeout` and the rest are far below it).
pub const ARRIVAL_SLACK_MS: u64 = 10 * 60 * 1000;

/// One page of a search, newest first.
#[derive(Debug, Default)]
pub struct Page {
    pub records: Vec<(Cursor, Event)>,
    /// `before` of the next page (`None`: this is the last).
    pub next: Option<Cursor>,
    /// Event records looked at to find this page.
    pub scanned: u64,
    /// The time budget ran out: the page may miss older matches (`next` continues from what was read).
    pub partial: bool,
}

/// What a query's exact-name filters need a record's raw JSON to contain (`"agent":"NAME"`), so most
/// records are passed over without being parsed.
struct Needles(Vec<memchr::memmem::Finder<'static>>);

impl Needles {
    fn of(q: &Query) -> Needles {
        let mut v = Vec::new();
        for (field, value) in [("agent", &q.filter.agent), ("tool", &q.filter.tool)] {
            if let Some(value) = value {
                let needle = format!(
                    "\"{field}\":{}",
                    serde_json::to_string(value).unwrap_or_default()
                );
                v.push(memchr::memmem::Finder::new(needle.as_bytes()).into_owned());
            }
        }
        Needles(v)
    }

    fn may_match(&self, payload: &[u8]) -> bool {
        self.0.iter().all(|f| f.find(payload).is_some())
    }
}

/// A record's arrival time without parsing the rest: events are serialised with `at_ms` first.
fn arrival(payload: &[u8]) -> Option<u64> {
    if let Some(rest) = payload.strip_prefix(b"{\"at_ms\":") {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 {
            return std::str::from_utf8(&rest[..digits]).ok()?.parse().ok();
        }
    }
    #[derive(serde::Deserialize)]
    struct TimeOnly {
        at_ms: u64,
    }
    serde_json::from_slice::<TimeOnly>(payload)
        .ok()
        .map(|t| t.at_ms)
}

fn event_of(q: &Query, needles: &Needles, core: u16, r: RecordRef<'_>) -> Option<(Cursor, Event)> {
    if r.kind != Kind::Event || !needles.may_match(r.payload) {
        return None;
    }
    let e: Event = serde_json::from_slice(r.payload).ok()?;
    let at = Cursor {
        at_ms: e.at_ms,
        core,
        seq: r.seq,
    };
    q.admits(at, &e).then_some((at, e))
}

/// One page of `q` from the trail under `root`, spending at most `budget`.
pub fn page(root: &Path, q: &Query, budget: Duration) -> Result<Page, String> {
    let t0 = Instant::now();
    let needles = Needles::of(q);
    let upper = match (q.before.map(|c| c.at_ms), q.filter.to_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut out = Page::default();
    let mut found: Vec<(Cursor, Event)> = Vec::new();
    'cores: for (core, dir) in audit::cores(root).map_err(|e| e.to_string())? {
        // The arrival times of this core's best `limit` matches so far (a min-heap: its top is the
        // oldest of them, the bar an older record must clear).
        let mut best: BinaryHeap<Reverse<u64>> = BinaryHeap::new();
        for (_, seg) in audit::segments(&dir)
            .map_err(|e| e.to_string())?
            .iter()
            .rev()
        {
            if t0.elapsed() > budget {
                out.partial = true;
                break 'cores;
            }
            if let Some(upper) = upper {
                let first =
                    audit::first_payload(seg).map_err(|e| format!("{}: {e}", seg.display()))?;
                if first
                    .and_then(|p| arrival(&p))
                    .is_some_and(|t| t.saturating_sub(ARRIVAL_SLACK_MS) > upper)
                {
                    continue;
                }
            }
            let bytes = std::fs::read(seg).map_err(|e| format!("{}: {e}", seg.display()))?;
            for r in audit::records(&bytes).into_iter().rev() {
                if r.kind != Kind::Event {
                    continue;
                }
                out.scanned += 1;
                let Some(at) = arrival(r.payload) else {
                    continue;
                };
                let floor = match (best.len() >= q.limit, q.filter.from_ms) {
                    (true, Some(f)) => Some(best.peek().map_or(f, |Reverse(b)| (*b).max(f))),
                    (true, None) => best.peek().map(|Reverse(b)| *b),
                    (false, f) => f,
                };
                if floor.is_some_and(|f| at.saturating_add(ARRIVAL_SLACK_MS) < f) {
                    // Everything older on this core arrived before anything this page can still take.
                    continue 'cores;
                }
                if let Some(hit) = event_of(q, &needles, core, r) {
                    best.push(Reverse(hit.0.at_ms));
                    if best.len() > q.limit {
                        best.pop();
                    }
                    found.push(hit);
                }
            }
        }
    }
    found.sort_by_key(|(c, _)| Reverse(*c));
    if found.len() > q.limit {
        found.truncate(q.limit);
        out.next = found.last().map(|(c, _)| *c);
    } else if out.partial {
        out.next = found.last().map(|(c, _)| *c);
    }
    out.records = found;
    Ok(out)
}

/// One core's matching events, oldest first, a segment at a time.
struct CoreStream {
    core: u16,
    segments: std::vec::IntoIter<PathBuf>,
    /// The current segment's bytes and the offsets of its records not yet looked at.
    bytes: Vec<u8>,
    at: usize,
    head: Option<(Cursor, Event)>,
}

impl CoreStream {
    fn advance(&mut self, q: &Query, needles: &Needles) -> Result<(), String> {
        self.head = None;
        loop {
            while self.at < self.bytes.len() {
                let Ok((r, n)) = audit::decode_ref(&self.bytes[self.at..]) else {
                    // A torn tail: the rest of this segment is an append in flight.
                    self.at = self.bytes.len();
                    break;
                };
                self.at += n;
                if let Some(hit) = event_of(q, needles, self.core, r) {
                    self.head = Some(hit);
                    return Ok(());
                }
            }
            let Some(seg) = self.segments.next() else {
                return Ok(());
            };
            self.bytes = std::fs::read(&seg).map_err(|e| format!("{}: {e}", seg.display()))?;
            self.at = 0;
        }
    }
}

/// Every record `q.filter` admits, oldest first by arrival across the cores, to `sink` (which returns
/// `false` to stop: the client went away). Returns how many were written.
pub fn export(root: &Path, q: &Query, mut sink: impl FnMut(&Event) -> bool) -> Result<u64, String> {
    let needles = Needles::of(q);
    let mut streams = Vec::new();
    for (core, dir) in audit::cores(root).map_err(|e| e.to_string())? {
        let segments: Vec<PathBuf> = audit::segments(&dir)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        let mut s = CoreStream {
            core,
            segments: segments.into_iter(),
            bytes: Vec::new(),
            at: 0,
            head: None,
        };
        s.advance(q, &needles)?;
        streams.push(s);
    }
    let mut n = 0u64;
    loop {
        let Some(i) = streams
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.head.as_ref().map(|(c, _)| (c.at_ms, c.core, c.seq, i)))
            .min()
            .map(|t| t.3)
        else {
            return Ok(n);
        };
        if let Some((_, e)) = &streams[i].head {
            if !sink(e) {
                return Ok(n);
            }
            n += 1;
        }
        streams[i].advance(q, &needles)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_storage::audit::Segments;
    use std::sync::Arc;

    fn trail(name: &str, per_core: &[Vec<(u64, &str)>]) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "portcullis-auditsearch-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        let key = Arc::new(
            portcullis_storage::SigningKey::load_or_create(
                &portcullis_storage::DataDir::open(&root).unwrap(),
            )
            .unwrap(),
        );
        let audit_root = root.join("audit");
        for (core, events) in per_core.iter().enumerate() {
            // Small segments, so that pages cross segment boundaries.
            let (mut s, _) =
                Segments::open(&audit_root, core as u16, 4096, 1000, key.clone()).unwrap();
            for (at, agent) in events {
                let e = Event {
                    at_ms: *at,
                    core: core as u16,
                    agent: Some((*agent).to_owned()),
                    decision: "allowed".into(),
                    ..Event::default()
                };
                s.append(&[serde_json::to_vec(&e).unwrap()], false, *at)
                    .unwrap();
            }
            s.sync().unwrap();
        }
        audit_root
    }

    #[test]
    fn pages_walk_every_match_newest_first_without_repeats() {
        let a: Vec<(u64, &str)> = (0..300)
            .map(|i| (1000 + i * 2, if i % 3 == 0 { "ops" } else { "bot" }))
            .collect();
        let b: Vec<(u64, &str)> = (0..200).map(|i| (1001 + i * 3, "ops")).collect();
        let root = trail("pages", &[a.clone(), b.clone()]);
        let mut want: Vec<u64> = a
            .iter()
            .chain(b.iter())
            .filter(|(_, who)| *who == "ops")
            .map(|(t, _)| *t)
            .collect();
        want.sort_unstable_by(|x, y| y.cmp(x));
        let mut got = Vec::new();
        let mut before: Option<Cursor> = None;
        loop {
            let mut q = Query::parse("agent=ops&limit=37").unwrap();
            q.before = before;
            let p = page(&root, &q, Duration::from_secs(30)).unwrap();
            assert!(p.records.len() <= 37 && !p.partial);
            got.extend(p.records.iter().map(|(c, _)| c.at_ms));
            match p.next {
                Some(n) => before = Some(n),
                None => break,
            }
        }
        assert_eq!(got, want);
        // A time window.
        let q = Query::parse("from=1100&to=1110&limit=500").unwrap();
        let p = page(&root, &q, Duration::from_secs(30)).unwrap();
        let mut times: Vec<u64> = p.records.iter().map(|(c, _)| c.at_ms).collect();
        times.sort_unstable();
        let mut expect: Vec<u64> = a
            .iter()
            .chain(b.iter())
            .map(|(t, _)| *t)
            .filter(|t| (1100..=1110).contains(t))
            .collect();
        expect.sort_unstable();
        assert_eq!(times, expect);
        // Export: every match, oldest first.
        let mut out = Vec::new();
        let n = export(&root, &Query::parse("agent=ops").unwrap(), |e| {
            out.push(e.at_ms);
            true
        })
        .unwrap();
        want.reverse();
        assert_eq!((n as usize, out), (want.len(), want));
        // A name that only appears inside another field does not match.
        let p = page(
            &root,
            &Query::parse("agent=op").unwrap(),
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(p.records.is_empty());
        let _ = std::fs::remove_dir_all(root.parent().unwrap());
    }

    #[test]
    fn a_page_reads_only_the_newest_part_of_a_long_trail() {
        // A record a minute for 2,000 minutes per core: far more than the arrival slack apart.
        let minute = 60_000u64;
        let a: Vec<(u64, &str)> = (0..2000).map(|i| (i * minute, "ops")).collect();
        let b: Vec<(u64, &str)> = (0..2000).map(|i| (i * minute + 30_000, "ops")).collect();
        let root = trail("long", &[a, b]);
        let p = page(
            &root,
            &Query::parse("limit=20").unwrap(),
            Duration::from_secs(30),
        )
        .unwrap();
        let times: Vec<u64> = p.records.iter().map(|(c, _)| c.at_ms).collect();
        let want: Vec<u64> = (0..20)
            .map(|k| 1999 * minute + 30_000 - k * 30_000)
            .collect();
        assert_eq!(times, want);
        // A page's worth per core (either could hold the whole page) and the slack's worth after it:
        // nowhere near the 4,000 there are.
        assert!(p.scanned < 80, "scanned {}", p.scanned);
        // A page deep in the trail skips the newer segments after reading their first records.
        let deep = Cursor {
            at_ms: 500 * minute,
            core: 0,
            seq: 0,
        };
        let mut q = Query::parse("limit=5").unwrap();
        q.before = Some(deep);
        let p = page(&root, &q, Duration::from_secs(30)).unwrap();
        let times: Vec<u64> = p.records.iter().map(|(c, _)| c.at_ms).collect();
        assert_eq!(
            times,
            vec![
                499 * minute + 30_000,
                499 * minute,
                498 * minute + 30_000,
                498 * minute,
                497 * minute + 30_000
            ]
        );
        assert!(p.scanned < 400, "scanned {}", p.scanned);
        // A window from `from`: stops at the window's start.
        let q = Query::parse(&format!("from={}&limit=500", 1990 * minute)).unwrap();
        let p = page(&root, &q, Duration::from_secs(30)).unwrap();
        assert_eq!(p.records.len(), 20);
        assert!(p.scanned < 100, "scanned {}", p.scanned);
        let _ = std::fs::remove_dir_all(root.parent().unwrap());
    }
}
