//! simd-json (what the gateway uses) against serde_json on the request model: parse a 1 KiB `tools/call`
//! into `pipeline::jsonrpc::Message`, versus serde_json into `serde_json::Value` and then the same shape.
//! Both parse the same bytes; simd-json parses in place, so each iteration copies the input first (as the
//! gateway does with the body it owns anyway).
#![allow(clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portcullis_pipeline::jsonrpc::{self, ParseLimits};

fn bench(c: &mut Criterion) {
    let body = portcullis_bench::call_body(7, "fast__echo");
    let limits = ParseLimits::default();
    let mut g = c.benchmark_group("parse_tools_call_1k");
    g.bench_function("simd_json_pipeline", |b| {
        b.iter(|| {
            let mut bytes = body.as_bytes().to_vec();
            black_box(jsonrpc::parse(&mut bytes, &limits).unwrap());
        })
    });
    g.bench_function("simd_json_value_only", |b| {
        b.iter(|| {
            let mut bytes = body.as_bytes().to_vec();
            black_box(simd_json::to_owned_value(&mut bytes).unwrap());
        })
    });
    g.bench_function("depth_scan_only", |b| {
        b.iter(|| black_box(jsonrpc::nesting_depth(black_box(body.as_bytes()), 64)))
    });
    g.bench_function("serde_json_value", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(black_box(body.as_bytes())).unwrap();
            let method = v["method"].as_str().unwrap().to_owned();
            let params = v.get("params").cloned();
            black_box((v["id"].as_i64(), method, params));
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
