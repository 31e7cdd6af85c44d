//! Governance on the hot path: one `tools/call` decided by Cedar (with its arguments in the context) and
//! validated against its pinned schema, and one agent's `tools/list` filtered by `discover`, against a
//! snapshot of 1,000 tools, 1,000 policies and 100 agents. Pure pipeline code on one core: no I/O.
//! Each (group, capability) pair has one permit, and one forbid reads the arguments of every call: the
//! decision reads the policies that can apply (indexed by scope), not all 1,000.
//!
//! `cargo bench --profile ci -p portcullis-bench --bench govern`

#![allow(clippy::unwrap_used)]

/// The appliance's global allocator (`appliance/src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, Criterion};
use portcullis_pipeline::control::{
    cedar, compile, Agent, Approval, Capability, CapabilityKind, CredentialMode, Draft, PinnedTool,
    Policy, Record, RecordMeta, Risk, Status,
};
use portcullis_pipeline::govern::{Action, Env, Governor, MergedSets};
use serde_json::json;

fn rec<T>(spec: T) -> Record<T> {
    Record {
        spec,
        meta: RecordMeta::first("bench", 1),
    }
}

/// The bench snapshot; `argument_forbid` adds the forbid that reads every call's arguments.
fn governor(argument_forbid: bool) -> Governor {
    let caps: Vec<_> = (0..10)
        .map(|i| {
            rec(Capability {
                name: format!("cap{i}"),
                kind: CapabilityKind::Mcp,
                owner: "team".into(),
                risk: if i % 2 == 0 { Risk::Low } else { Risk::High },
                environment: "prod".into(),
                endpoint: "http://127.0.0.1:9/mcp".into(),
                tags: vec!["internal".into()],
                description: String::new(),
                status: Status::Active,
                output_schema: Default::default(),
                openapi: None,
                credential: None,
                audit_arguments: None,
            })
        })
        .collect();
    let agents: Vec<_> = (0..100)
        .map(|i| {
            rec(Agent {
                name: format!("agent{i}"),
                owner: "o".into(),
                surface: "service".into(),
                environment: "prod".into(),
                credential_mode: CredentialMode::Service,
                groups: vec![format!("g{i}")],
                status: Status::Active,
                limits: vec![],
                sessions: None,
            })
        })
        .collect();
    let mut policies: Vec<_> = (0..999)
        .map(|i| {
            rec(Policy {
                id: format!("p{i}"),
                description: String::new(),
                text: format!(
                    "permit(principal in Group::\"g{}\", action, resource in Capability::\"cap{}\") when {{ resource.risk == \"low\" && context.hour >= {} }};",
                    i % 100,
                    (i / 100) % 10,
                    i % 12
                ),
            })
        })
        .collect();
    policies.push(rec(Policy {
        id: if argument_forbid { "limit" } else { "night" }.into(),
        description: String::new(),
        text: if argument_forbid {
            "forbid(principal, action == Action::\"call\", resource) when { context.arguments has limit && context.arguments.limit > 50 };"
        } else {
            "forbid(principal, action == Action::\"call\", resource) when { context.hour < 6 };"
        }
        .into(),
    }));
    let tools: Vec<PinnedTool> = (0..1000)
        .map(|i| {
            PinnedTool::from_listed(
                &format!("cap{}", i % 10),
                &json!({
                    "name": format!("tool_{i}"),
                    "inputSchema": {"type": "object", "properties": {
                        "query": {"type": "string", "maxLength": 256},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 100}
                    }, "required": ["query"]}
                }),
            )
            .unwrap()
        })
        .collect();
    let s = compile(
        Draft {
            capabilities: &caps,
            agents: &agents,
            policies: &policies,
            tools: &tools,
        },
        &Approval {
            approved_by: "bench",
            approved_at: 1,
            note: "",
            latest: None,
        },
    )
    .unwrap();
    let set = cedar::policy_set(&s.content.policies).unwrap();
    Governor::new(&s.content, set).unwrap()
}

/// The request every call bench decides: mid-day, so the hour-bound permits apply.
const ENV: Env<'static> = Env {
    transport: "h1",
    revision: "2026-07-28",
    client_address: "127.0.0.1",
    session_age_secs: 10,
    hour: 13,
    weekday: 2,
};

fn call_arguments() -> serde_json::Value {
    json!({"query": "open invoices for ACME", "limit": 20})
}

fn govern(c: &mut Criterion) {
    let g = governor(true);
    let env = ENV;
    let args = call_arguments();
    // agent0 is in g0, which p0 lets use cap0 (low risk); tool_0 belongs to cap0.
    let v = g.decide("agent0", Action::Call, "cap0", "tool_0", Some(&args), &env);
    assert!(v.allowed, "{v:?}");
    // As a core decides: over the consulted buckets merged once into one set (`MergedSets`).
    let mut merged = MergedSets::default();
    c.bench_function(
        "govern/call_decide_and_validate_1000_policies_1000_tools",
        |b| {
            b.iter(|| {
                let v = g.decide_merged(
                    &mut merged,
                    "agent0",
                    Action::Call,
                    "cap0",
                    "tool_0",
                    Some(&args),
                    &env,
                );
                assert!(v.allowed);
                g.validate("cap0", "tool_0", &args).unwrap();
            })
        },
    );
    // The same over the buckets one by one (one Cedar call each).
    c.bench_function("govern/call_decide_and_validate_unmerged", |b| {
        b.iter(|| {
            let v = g.decide("agent0", Action::Call, "cap0", "tool_0", Some(&args), &env);
            assert!(v.allowed);
            g.validate("cap0", "tool_0", &args).unwrap();
        })
    });
    // A core remembers decisions no applicable policy makes on the arguments (`Core::decide_call`):
    // what a repeated call costs then is its key, one lookup and the schema check.
    let g2 = governor(false);
    let key = g2
        .decision_key("agent0", Action::Call, "cap0", "tool_0", &env)
        .unwrap();
    let memo = std::collections::HashMap::from([(
        key,
        g2.decide("agent0", Action::Call, "cap0", "tool_0", Some(&args), &env),
    )]);
    assert!(g
        .decision_key("agent0", Action::Call, "cap0", "tool_0", &env)
        .is_none());
    c.bench_function("govern/call_remembered_decision_and_validate", |b| {
        b.iter(|| {
            let k = g2
                .decision_key("agent0", Action::Call, "cap0", "tool_0", &env)
                .unwrap();
            assert!(memo[&k].allowed);
            g2.validate("cap0", "tool_0", &args).unwrap();
        })
    });
    let mut merged2 = MergedSets::default();
    c.bench_function("govern/call_decide_only_no_argument_policies", |b| {
        b.iter(|| {
            g2.decide_merged(
                &mut merged2,
                "agent0",
                Action::Call,
                "cap0",
                "tool_0",
                Some(&args),
                &env,
            )
        })
    });
    c.bench_function("govern/call_decide_only", |b| {
        b.iter(|| {
            g.decide_merged(
                &mut merged,
                "agent0",
                Action::Call,
                "cap0",
                "tool_0",
                Some(&args),
                &env,
            )
        })
    });
    c.bench_function("govern/validate_only", |b| {
        b.iter(|| g.validate("cap0", "tool_0", &args))
    });
    c.bench_function("govern/list_filter_1000_tools_one_agent", |b| {
        b.iter(|| {
            (0..1000)
                .filter(|i| {
                    g.decide_merged(
                        &mut merged,
                        "agent0",
                        Action::Discover,
                        &format!("cap{}", i % 10),
                        &format!("tool_{i}"),
                        None,
                        &env,
                    )
                    .allowed
                })
                .count()
        })
    });
}

/// Criterion reports means; the bar is a p99. Time each of many single decisions (the appliance's path:
/// merged sets, then validation) and print the percentiles from an HDR histogram.
#[allow(clippy::print_stdout)] // The report is what a bench is for.
fn percentiles() {
    let g = governor(true);
    let env = ENV;
    let args = call_arguments();
    let mut merged = MergedSets::default();
    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for i in 0..220_000 {
        let t0 = std::time::Instant::now();
        let v = g.decide_merged(
            &mut merged,
            "agent0",
            Action::Call,
            "cap0",
            "tool_0",
            Some(&args),
            &env,
        );
        g.validate("cap0", "tool_0", &args).unwrap();
        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        assert!(v.allowed);
        // The first 20,000 warm caches and the allocator.
        if i >= 20_000 {
            h.record(ns).unwrap();
        }
    }
    println!(
        "govern/call_decide_and_validate percentiles over {} calls: p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, max {:.2} µs",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.value_at_quantile(0.999) as f64 / 1e3,
        h.max() as f64 / 1e3
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = govern
}

fn main() {
    benches();
    // Only when benchmarking (`cargo bench`), not when a test run merely checks the bench builds.
    if std::env::args().any(|a| a == "--bench") {
        percentiles();
    }
    Criterion::default().configure_from_args().final_summary();
}
