//! The audit trail's write path on this machine's disk: records (a typical `tools/call` record, ~520
//! bytes of JSON) framed, chained and written by one core's writer, in `async` batches (no sync), in
//! `durable` batches (one `fdatasync` per batch: group commit), and one record per `fdatasync` (what
//! durable mode would cost without group commit). Also the cost of building a record (serialising the
//! event) on the request path.
//!
//! `cargo bench --profile ci -p portcullis-bench --bench audit` (AUDIT_BENCH_DIR picks the disk;
//! default: the system temp dir).

#![allow(clippy::unwrap_used)]

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use portcullis_pipeline::audit::Event;
use portcullis_storage::audit::Segments;
use portcullis_storage::{DataDir, SigningKey};

fn event(i: u64) -> Event {
    Event {
        at_ms: 1_796_000_000_000 + i,
        core: 0,
        agent: Some("ops-agent".into()),
        owner: Some("team-platform".into()),
        identity: Some("api_key".into()),
        session: None,
        client: "10.1.2.3".into(),
        transport: "h2".into(),
        revision: Some("2026-07-28".into()),
        request_id: Some(i.to_string()),
        method: Some("tools/call".into()),
        capability: Some("github".into()),
        tool: Some("github__create_issue".into()),
        arguments_blake3: Some(
            "a34e4d1ccc74e1f7de201cab4cd39bee5c3d30c472875de10ed1fe7d28068bdc".into(),
        ),
        arguments: None,
        decision: "allowed".into(),
        reason: None,
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
    }
}

fn bench(c: &mut Criterion) {
    let base = std::env::var_os("AUDIT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("portcullis-audit-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let dd = DataDir::open(&base).unwrap();
    let key = Arc::new(SigningKey::load_or_create(&dd).unwrap());
    let root = base.join("audit");
    let (mut segs, _) = Segments::open(&root, 0, 64 << 20, 1000, key).unwrap();
    let payload = serde_json::to_vec(&event(7)).unwrap();
    eprintln!("record payload: {} bytes", payload.len());

    c.bench_function("audit/serialise_event", |b| {
        let e = event(9);
        b.iter(|| black_box(serde_json::to_vec(&e).unwrap()))
    });

    // The CPU side of appending: framing, CRC32C and the BLAKE3 chain, into memory, no I/O.
    let mut g = c.benchmark_group("audit_encode");
    g.throughput(Throughput::Elements(1024));
    g.bench_function("frame_and_chain_1024", |b| {
        let mut chain = portcullis_storage::audit::Chain::GENESIS;
        let mut buf = Vec::with_capacity(1024 * (payload.len() + 64));
        b.iter(|| {
            buf.clear();
            for _ in 0..1024 {
                portcullis_storage::audit::encode(
                    portcullis_storage::audit::Kind::Event,
                    &payload,
                    &mut chain,
                    &mut buf,
                );
            }
            black_box(buf.len())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("audit_append");
    for (name, batch, sync) in [
        ("async_batch_1024", 1024usize, false),
        ("durable_batch_256", 256, true),
        ("durable_batch_1", 1, true),
    ] {
        g.throughput(Throughput::Elements(batch as u64));
        let batch_payloads: Vec<Vec<u8>> = (0..batch).map(|_| payload.clone()).collect();
        g.bench_function(name, |b| {
            b.iter_batched(
                || batch_payloads.clone(),
                |p| black_box(segs.append(&p, sync, 1).unwrap()),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
    drop(segs);
    let _ = std::fs::remove_dir_all(&base);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
