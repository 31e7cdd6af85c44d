//! What brokering a credential adds to one upstream request once it is cached on the core: the steps of
//! `Core::credential` and `Core::send_to` on a hit (pick the binding's section for the agent's mode, build
//! the cache key, look it up, choose the injection, strip and inject into the request's headers, note the
//! wire forms) and the scrub of a 1 KiB answer for echoes. The store lookup itself is off the hot path
//! (broker threads, once per `secrets.cache_ttl`) and not measured here.
//!
//! `cargo bench --profile ci -p portcullis-bench --bench broker`

#![allow(clippy::unwrap_used)]

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portcullis::broker::CoreCache;
use portcullis_pipeline::control::CredentialMode;
use portcullis_pipeline::credential::{self, Binding, Inject, Need, Secret};

fn headers() -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("accept", "application/json, text/event-stream".into()),
        ("mcp-protocol-version", "2026-07-28".into()),
        ("mcp-method", "tools/call".into()),
        ("mcp-name", "echo".into()),
    ]
}

/// One hit: everything between "this request goes to slot N for agent A" and the bytes it is sent with.
fn hit(
    binding: &Binding,
    mode: CredentialMode,
    agent: &str,
    cache: &CoreCache,
    now: Instant,
) -> (Vec<(String, String)>, String, Vec<String>) {
    let key = match binding.need(mode, agent).unwrap() {
        Need::Secret(r) => r.to_string(),
        Need::Exchange(_) => unreachable!(),
    };
    let secret = cache.get(&key, now).unwrap();
    let inject = binding.injection(None).unwrap();
    let mut owned: Vec<(String, String)> = headers()
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.clone()))
        .collect();
    let mut path = String::from("/mcp");
    credential::apply(
        &inject,
        secret.expose(),
        credential::Target {
            headers: &mut owned,
            path_and_query: &mut path,
        },
    )
    .unwrap();
    let forms = credential::wire_forms(&inject, secret.expose());
    (owned, path, forms)
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let mut cache = CoreCache::default();
    for i in 0..100 {
        cache.put(
            format!("embedded/github/agent{i}#token"),
            Secret::new(format!("ghp_{i:0>36}")),
            now + Duration::from_secs(3600),
            now,
        );
    }
    cache.put(
        "embedded/github#token".into(),
        Secret::new("ghp_service_token_0123456789abcdef0123".into()),
        now + Duration::from_secs(3600),
        now,
    );
    let binding = Binding {
        service: Some("embedded/github#token".into()),
        agent_scoped: Some("embedded/github/{agent}#token".into()),
        delegated: None,
        inject: None,
    };
    let basic = Binding {
        inject: Some(Inject::Basic {
            username: "portcullis".into(),
        }),
        ..binding.clone()
    };
    let mut g = c.benchmark_group("credential_cache_hit");
    g.bench_function("service_bearer", |b| {
        b.iter(|| {
            black_box(hit(
                &binding,
                CredentialMode::Service,
                "agent7",
                &cache,
                now,
            ))
        })
    });
    g.bench_function("agent_scoped_bearer", |b| {
        b.iter(|| {
            black_box(hit(
                &binding,
                CredentialMode::AgentScoped,
                "agent7",
                &cache,
                now,
            ))
        })
    });
    g.bench_function("agent_scoped_basic", |b| {
        b.iter(|| {
            black_box(hit(
                &basic,
                CredentialMode::AgentScoped,
                "agent7",
                &cache,
                now,
            ))
        })
    });
    g.finish();

    let (_, _, forms) = hit(&binding, CredentialMode::Service, "agent7", &cache, now);
    let answer = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"{}\"}}]}}}}",
        "x".repeat(960)
    )
    .into_bytes();
    c.bench_function("scrub/1k_answer_without_echo", |b| {
        b.iter(|| {
            let mut a = answer.clone();
            black_box(credential::scrub(&mut a, &forms));
        })
    });
    c.bench_function("baseline/copy_1k_answer", |b| {
        b.iter(|| black_box(answer.clone()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
