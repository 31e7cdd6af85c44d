//! The control plane's costs the issue sets targets for: approving 1,000 tools and 1,000 policies (compile,
//! validate, hash, sign, one LMDB transaction), compiling a 10,000-tool snapshot for serving (activation),
//! publishing it to the cores, answering `tools/list` for 10,000 pinned tools, and importing and converting
//! a 1,000-operation OpenAPI document (YAML, shared component schemas, one recursive).
//!
//! `cargo bench --profile ci -p portcullis-bench --bench control`

#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use portcullis::served::{Published, Served};
use portcullis_pipeline::control::{
    Agent, Capability, CapabilityKind, CredentialMode, PinnedTool, Policy, Risk, Status,
};
use portcullis_pipeline::jsonrpc::{self, Id, Message};
use portcullis_storage::registry::{FetchedTools, Put};
use portcullis_storage::{DataDir, Registry, SigningKey};
use serde_json::json;

fn capability(name: &str, description: &str) -> Capability {
    Capability {
        name: name.into(),
        kind: CapabilityKind::Mcp,
        owner: "team".into(),
        risk: Risk::Low,
        environment: "prod".into(),
        endpoint: "http://127.0.0.1:9/mcp".into(),
        tags: vec!["internal".into()],
        description: description.into(),
        status: Status::Active,
        output_schema: Default::default(),
        openapi: None,
        credential: None,
        audit_arguments: None,
    }
}

fn tools(capability: &str, n: usize) -> Vec<PinnedTool> {
    (0..n)
        .map(|i| {
            PinnedTool::from_listed(
                capability,
                &json!({
                    "name": format!("tool_{i}"),
                    "description": format!("Tool number {i} of {capability}: does one thing well."),
                    "inputSchema": {"type": "object", "properties": {
                        "query": {"type": "string", "maxLength": 256},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 100}
                    }, "required": ["query"]}
                }),
            )
            .unwrap()
        })
        .collect()
}

fn fetched(r: &Registry, per_capability: usize) -> Vec<FetchedTools> {
    r.list::<Capability>()
        .unwrap()
        .into_iter()
        .map(|c| FetchedTools {
            tools: tools(&c.spec.name, per_capability),
            capability: c.spec.name,
            version: c.meta.version,
        })
        .collect()
}

/// A fresh registry in a temp dir with ten MCP capabilities, `cap0`..`cap9`.
fn registry(tag: &str) -> (Registry, std::path::PathBuf) {
    let root = std::env::temp_dir().join(format!("pc-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = DataDir::open(&root).unwrap();
    let key = SigningKey::load_or_create(&dir).unwrap();
    let r = Registry::open(&root.join("lmdb"), 1 << 30, key, None).unwrap();
    for i in 0..10 {
        r.put(capability(&format!("cap{i}"), ""), Put::Create, "bench", 1)
            .unwrap();
    }
    (r, root)
}

fn approve(c: &mut Criterion) {
    let (r, root) = registry("approve");
    for i in 0..100 {
        r.put(
            Agent {
                name: format!("agent{i}"),
                owner: "o".into(),
                surface: "service".into(),
                environment: "prod".into(),
                credential_mode: CredentialMode::Service,
                groups: vec![format!("g{}", i % 10)],
                status: Status::Active,
                limits: vec![],
                sessions: None,
            },
            Put::Create,
            "bench",
            1,
        )
        .unwrap();
    }
    for i in 0..1000 {
        r.put(
            Policy {
                id: format!("p{i}"),
                description: String::new(),
                text: format!(
                    "permit(principal in Group::\"g{}\", action == Action::\"call\", resource in Capability::\"cap{}\") when {{ resource.risk == \"low\" && context.hour >= {} }};",
                    i % 10,
                    i % 10,
                    i % 24
                ),
            },
            Put::Create,
            "bench",
            1,
        )
        .unwrap();
    }
    let n = std::cell::Cell::new(0u64);
    c.bench_function("approve/1000_tools_1000_policies_100_agents", |b| {
        b.iter_batched(
            || {
                // Each approval must change something, or it is refused as `nothing_changed`.
                n.set(n.get() + 1);
                r.put(
                    capability("cap0", &format!("edit {}", n.get())),
                    Put::Upsert,
                    "bench",
                    n.get(),
                )
                .unwrap();
                fetched(&r, 100)
            },
            |f| r.approve("bench", "", n.get(), true, &f).unwrap(),
            BatchSize::PerIteration,
        )
    });
    let _ = std::fs::remove_dir_all(&root);
}

fn serving(c: &mut Criterion) {
    let (r, root) = registry("serve");
    let info = r.approve("bench", "", 1, true, &fetched(&r, 1000)).unwrap();
    let (_, snapshot) = r.snapshot(info.header.version).unwrap();
    assert_eq!(snapshot.content.tools.len(), 10_000);
    let published = Published::new(true);

    // Verify the blob (hash, signature) and validate its archive where it lies in the LMDB map: what
    // every activation pays before it compiles anything.
    c.bench_function("activation/read_verify_in_place_10k_tools", |b| {
        b.iter(|| {
            r.read_snapshot(info.header.version, |_, a| a.content.tools.len())
                .unwrap()
        })
    });
    // The same, decoded into owned values (admin reads: show, diff).
    c.bench_function("activation/read_verify_decode_10k_tools", |b| {
        b.iter(|| r.snapshot(info.header.version).unwrap())
    });
    c.bench_function("activation/compile_for_serving_10k_tools", |b| {
        b.iter(|| Served::from_snapshot(&snapshot, &info.hash, &published).unwrap())
    });
    // What an activation does end to end: verify in place, decode the content out of the archive,
    // compile.
    c.bench_function("activation/read_compile_from_archive_10k_tools", |b| {
        b.iter(|| {
            r.read_snapshot(info.header.version, |i, a| {
                Served::from_archived(a, &i.hash, &published).unwrap()
            })
            .unwrap()
        })
    });
    // The admin thread's part of an activation: swap in the compiled snapshot (the replaced one is
    // retired, freed later off every core's path).
    c.bench_function("activation/publish_swap", |b| {
        b.iter_batched(
            || Served::from_snapshot(&snapshot, &info.hash, &published).unwrap(),
            |s| published.publish(s),
            BatchSize::PerIteration,
        )
    });
    // A core's part: notice the generation moved and take the new snapshot (its old reference is never
    // the last one, so dropping it frees nothing here).
    let held = published.current();
    c.bench_function("activation/core_pickup", |b| {
        b.iter(|| {
            let g = published.generation();
            (g, published.current())
        })
    });
    drop(held);

    // Published here too, so a filtered run (`-- openapi`) that skipped the swap bench still lists.
    published.publish(Served::from_snapshot(&snapshot, &info.hash, &published).unwrap());
    let served = published.current();
    let pins = served.pins.as_ref().unwrap();
    let msg = Message::Response(jsonrpc::Response {
        id: Some(Id::Number(7)),
        outcome: Ok(portcullis_pipeline::mcp::list_result(
            portcullis_pipeline::mcp::ListKind::Tools,
            Vec::new(),
        )),
    });
    c.bench_function("tools_list/10k_pinned_tools", |b| {
        b.iter(|| {
            let shell = jsonrpc::encode(&msg);
            pins.splice_tools_list(&shell, |_, _| true).unwrap()
        })
    });
    let body = pins
        .splice_tools_list(&jsonrpc::encode(&msg), |_, _| true)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 10_000);
    eprintln!("tools/list body for 10k tools: {} bytes", body.len());
    let _ = std::fs::remove_dir_all(&root);
}

/// A YAML document of 500 paths with a GET and a PUT each, parameters and a recursive component schema.
fn openapi_document() -> String {
    let mut y = String::from(
        "openapi: 3.0.3\ninfo: {title: Big, version: '1'}\ncomponents:\n  schemas:\n    Item:\n      type: object\n      required: [name]\n      properties:\n        name: {type: string, maxLength: 80}\n        size: {type: integer, nullable: true}\n        children: {type: array, items: {$ref: '#/components/schemas/Item'}}\npaths:\n",
    );
    for i in 0..500 {
        y.push_str(&format!(
            "  /things{i}/{{id}}:\n    parameters:\n      - {{name: id, in: path, required: true, schema: {{type: string}}}}\n    get:\n      operationId: getThing{i}\n      summary: Get thing {i}\n      tags: [things]\n      parameters:\n        - {{name: expand, in: query, schema: {{type: array, items: {{type: string}}}}}}\n      responses:\n        '200': {{description: ok, content: {{application/json: {{schema: {{$ref: '#/components/schemas/Item'}}}}}}}}\n    put:\n      operationId: putThing{i}\n      requestBody:\n        required: true\n        content: {{application/json: {{schema: {{$ref: '#/components/schemas/Item'}}}}}}\n      responses:\n        '204': {{description: done}}\n"
        ));
    }
    y
}

fn openapi(c: &mut Criterion) {
    let doc = openapi_document();
    let d = portcullis_pipeline::openapi::import(doc.as_bytes()).unwrap();
    assert_eq!(d.operations.len(), 1000);
    assert!(d.operations.iter().all(|o| o.converted().is_some()));
    c.bench_function("openapi/import_and_convert_1000_operations_yaml", |b| {
        b.iter(|| portcullis_pipeline::openapi::import(doc.as_bytes()).unwrap())
    });
    c.bench_function("openapi/pin_500_selected_reads", |b| {
        b.iter(|| {
            portcullis_pipeline::openapi::pin("big", &d, &["*".into(), "tag:things".into()])
                .unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = approve, serving, openapi
}
criterion_main!(benches);
