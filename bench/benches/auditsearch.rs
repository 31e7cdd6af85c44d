//! Searching a large audit trail as the console does (`GET /admin/v1/audit`): a trail of
//! AUDIT_SEARCH_RECORDS records (default 1,000,000, over 2 cores, 64 MiB segments, typical `tools/call`
//! records of 50 agents plus one rare agent every 100,000 records) is written once, then one page is
//! timed: the newest page, a page filtered to a common agent, one deep in the trail (by cursor), one
//! filtered to an agent with few records (reads everything), and one for an hour-long time window.
//!
//! `cargo bench --profile ci -p portcullis-bench --bench auditsearch` (AUDIT_BENCH_DIR picks the disk).

#![allow(clippy::unwrap_used)]

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portcullis::auditsearch::page;
use portcullis_pipeline::audit::{Cursor, Event, Query};
use portcullis_storage::audit::Segments;
use portcullis_storage::{DataDir, SigningKey};

const T0: u64 = 1_796_000_000_000;

fn event(i: u64, core: u16) -> Event {
    let agent = if i.is_multiple_of(100_000) {
        "rare-agent".to_owned()
    } else {
        format!("agent-{:02}", i % 50)
    };
    Event {
        // Ten records a second across the trail.
        at_ms: T0 + i * 100,
        core,
        agent: Some(agent),
        owner: Some("team-platform".into()),
        identity: Some("api_key".into()),
        client: "10.1.2.3".into(),
        transport: "h2".into(),
        revision: Some("2026-07-28".into()),
        request_id: Some(i.to_string()),
        method: Some("tools/call".into()),
        capability: Some("github".into()),
        tool: Some("github__create_issue".into()),
        arguments_blake3: Some(
            "9f64a747e1b97f131fabb6b447296c9b6f0201e79fb3c5356e6c77e89b6a806a".into(),
        ),
        decision: "allowed".into(),
        policies: vec!["operators-all".into()],
        snapshot: "v12 blake3:6f4a66804936887dccba170bb9919794724c58456b64992e6e25270a47c61d7e"
            .into(),
        credential_mode: Some("service".into()),
        secret_ref: Some("embedded/github#token".into()),
        upstream_status: Some(200),
        upstream_us: Some(350),
        status: 200,
        latency_us: 412,
        bytes_in: 1302,
        bytes_out: 870,
        ..Event::default()
    }
}

fn bench(c: &mut Criterion) {
    let n: u64 = std::env::var("AUDIT_SEARCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let base = std::env::var_os("AUDIT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!(
            "portcullis-auditsearch-bench-{}",
            std::process::id()
        ));
    let _ = std::fs::remove_dir_all(&base);
    let dd = DataDir::open(&base).unwrap();
    let key = Arc::new(SigningKey::load_or_create(&dd).unwrap());
    let root = base.join("audit");
    let t = std::time::Instant::now();
    for core in 0..2u16 {
        let (mut segs, _) = Segments::open(&root, core, 64 << 20, 100_000, key.clone()).unwrap();
        let mut batch = Vec::with_capacity(4096);
        for i in (u64::from(core)..n).step_by(2) {
            batch.push(serde_json::to_vec(&event(i, core)).unwrap());
            if batch.len() == 4096 {
                segs.append(&batch, false, 1).unwrap();
                batch.clear();
            }
        }
        segs.append(&batch, false, 1).unwrap();
        segs.sync().unwrap();
    }
    eprintln!("wrote {n} records in {:.1?}", t.elapsed());

    let budget = Duration::from_secs(60);
    let q = |s: &str| Query::parse(s).unwrap();
    let mut g = c.benchmark_group("audit_search");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("newest_page_50", |b| {
        let q = q("limit=50");
        b.iter(|| black_box(page(&root, &q, budget).unwrap().records.len()))
    });
    g.bench_function("common_agent_page_50", |b| {
        let q = q("agent=agent-07&limit=50");
        b.iter(|| black_box(page(&root, &q, budget).unwrap().records.len()))
    });
    g.bench_function("deep_page_50_by_cursor", |b| {
        let mut q = q("limit=50");
        q.before = Some(Cursor {
            at_ms: T0 + (n / 2) * 100,
            core: 0,
            seq: u64::MAX,
        });
        b.iter(|| black_box(page(&root, &q, budget).unwrap().records.len()))
    });
    g.bench_function("hour_window_page_50", |b| {
        let from = T0 + (n / 4) * 100;
        let q = q(&format!("from={from}&to={}&limit=50", from + 3_600_000));
        b.iter(|| black_box(page(&root, &q, budget).unwrap().records.len()))
    });
    g.bench_function("rare_agent_whole_trail", |b| {
        let q = q("agent=rare-agent&limit=50");
        b.iter(|| {
            let p = page(&root, &q, budget).unwrap();
            assert_eq!(p.records.len(), 50.min((n / 100_000) as usize));
            black_box(p.scanned)
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&base);
}

criterion_group!(benches, bench);
criterion_main!(benches);
