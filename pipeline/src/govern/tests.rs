//! Governance scenarios: a small registry, policies, and what each agent may see and call.

use serde_json::json;

use super::*;
use crate::control::{
    cedar, compile, Agent, Approval, Capability, CapabilityKind, CredentialMode, Draft, Policy,
    Record, RecordMeta, Risk, Snapshot,
};

fn rec<T>(spec: T) -> Record<T> {
    Record {
        spec,
        meta: RecordMeta::first("t", 1),
    }
}

fn agent(name: &str, groups: &[&str], status: Status) -> Record<Agent> {
    rec(Agent {
        name: name.into(),
        owner: "bob".into(),
        surface: "cursor".into(),
        environment: "prod".into(),
        credential_mode: CredentialMode::Service,
        groups: groups.iter().map(|g| (*g).into()).collect(),
        status,
        limits: vec![],
        sessions: None,
    })
}

fn cap(name: &str, risk: Risk) -> Record<Capability> {
    rec(Capability {
        name: name.into(),
        kind: CapabilityKind::Mcp,
        owner: "team".into(),
        risk,
        environment: "prod".into(),
        endpoint: "http://127.0.0.1:1/mcp".into(),
        tags: vec![],
        description: String::new(),
        status: Status::Active,
        output_schema: Default::default(),
        openapi: None,
        credential: None,
        audit_arguments: None,
    })
}

fn tool(capability: &str, name: &str, schema: Value) -> PinnedTool {
    PinnedTool::from_listed(capability, &json!({"name": name, "inputSchema": schema})).unwrap()
}

fn snapshot(policies: &[(&str, &str)]) -> Result<Snapshot, crate::control::ApproveError> {
    let caps = [cap("bank", Risk::High), cap("docs", Risk::Low)];
    let agents = [
        agent("teller", &["finance"], Status::Active),
        agent("reader", &["support"], Status::Active),
        agent("gone", &["finance"], Status::Disabled),
    ];
    let policies: Vec<Record<Policy>> = policies
        .iter()
        .map(|(id, text)| {
            rec(Policy {
                id: (*id).into(),
                description: String::new(),
                text: (*text).into(),
            })
        })
        .collect();
    let tools = [
        tool(
            "bank",
            "transfer",
            json!({"type": "object", "required": ["amount", "to"], "properties": {
                "amount": {"type": "integer", "minimum": 1},
                "to": {"type": "string"},
                "memo": {"type": "string", "maxLength": 10}
            }, "additionalProperties": false}),
        ),
        tool(
            "docs",
            "query",
            json!({"type": "object", "properties": {"table": {"type": "string"}, "limit": {"type": "number"}}}),
        ),
    ];
    compile(
        Draft {
            capabilities: &caps,
            agents: &agents,
            policies: &policies,
            tools: &tools,
        },
        &Approval {
            approved_by: "t",
            approved_at: 1,
            note: "",
            latest: None,
        },
    )
}

fn governor(policies: &[(&str, &str)]) -> Governor {
    let s = snapshot(policies).unwrap();
    let set = cedar::policy_set(&s.content.policies).unwrap();
    Governor::new(&s.content, set).unwrap()
}

const ENV: Env<'static> = Env {
    transport: "h1",
    revision: "2026-07-28",
    client_address: "127.0.0.1",
    session_age_secs: 0,
    hour: 12,
    weekday: 2,
};

const POLICIES: &[(&str, &str)] = &[
    (
        "finance-bank",
        r#"permit(principal in Group::"finance", action, resource in Capability::"bank");"#,
    ),
    (
        "everyone-docs",
        r#"permit(principal, action, resource) when { resource.risk == "low" };"#,
    ),
    (
        "big-transfers",
        r#"forbid(principal, action == Action::"call", resource == Tool::"bank__transfer") when { context.arguments has amount && context.arguments.amount > 1000 };"#,
    ),
    (
        "public-tables",
        r#"forbid(principal, action == Action::"call", resource == Tool::"docs__query") unless { context.arguments has table && context.arguments.table like "public_*" };"#,
    ),
];

#[test]
fn agents_see_what_policy_lets_them_and_nothing_else() {
    let g = governor(POLICIES);
    let sees = |a: &str, c: &str, t: &str| g.decide(a, Action::Discover, c, t, None, &ENV).allowed;
    assert!(sees("teller", "bank", "transfer"));
    assert!(sees("teller", "docs", "query"));
    assert!(!sees("reader", "bank", "transfer"));
    assert!(sees("reader", "docs", "query"));
    // Unknown tools and agents are plain denials.
    assert!(!sees("teller", "bank", "nope"));
    assert!(!sees("nobody", "docs", "query"));
    let v = g.decide(
        "reader",
        Action::Call,
        "bank",
        "transfer",
        Some(&json!({"amount": 5, "to": "x"})),
        &ENV,
    );
    assert!(!v.allowed);
    assert!(v.policies.is_empty(), "default deny names no policy: {v:?}");
}

#[test]
fn argument_level_forbid_denies_one_call_and_permits_another() {
    let g = governor(POLICIES);
    let call = |args: Value| {
        g.decide(
            "teller",
            Action::Call,
            "bank",
            "transfer",
            Some(&args),
            &ENV,
        )
    };
    let ok = call(json!({"amount": 1000, "to": "alice"}));
    assert!(ok.allowed, "{ok:?}");
    assert_eq!(ok.policies, ["finance-bank"]);
    let no = call(json!({"amount": 1001, "to": "alice"}));
    assert!(!no.allowed);
    assert_eq!(no.policies, ["big-transfers"]);
    // Policies compare integers; a fractional amount cannot slip under the bound.
    let frac = call(json!({"amount": 5000.5, "to": "alice"}));
    assert!(!frac.allowed);
    assert!(frac.detail.unwrap().contains("/amount"));

    let q = |table: &str| {
        g.decide(
            "reader",
            Action::Call,
            "docs",
            "query",
            Some(&json!({"table": table})),
            &ENV,
        )
    };
    assert!(q("public_orders").allowed);
    let secret = q("salaries");
    assert!(!secret.allowed);
    assert_eq!(secret.policies, ["public-tables"]);
    // The same forbid applies to an argument that is absent.
    assert!(
        !g.decide(
            "reader",
            Action::Call,
            "docs",
            "query",
            Some(&json!({})),
            &ENV
        )
        .allowed
    );
}

#[test]
fn prompts_and_resources_are_decided_on_the_capability() {
    let g = governor(POLICIES);
    let cap = |a: &str, c: &str| g.decide_capability(a, Action::Call, c, &ENV).allowed;
    assert!(cap("teller", "bank"));
    assert!(!cap("reader", "bank"));
    // `everyone-docs` reads `resource.risk`, which capabilities have too.
    assert!(cap("reader", "docs"));
    assert!(!cap("reader", "nowhere"));
    assert!(!cap("nobody", "docs"));
}

#[test]
fn registration_and_status_are_checked() {
    let g = governor(POLICIES);
    assert_eq!(g.admit("teller"), Ok(()));
    assert_eq!(g.admit("gone"), Err(DenyReason::AgentDisabled));
    assert_eq!(g.admit("nobody"), Err(DenyReason::AgentNotRegistered));
    assert_eq!(
        Governor::empty().admit("teller"),
        Err(DenyReason::AgentNotRegistered)
    );
}

#[test]
fn a_policy_on_an_untyped_or_conflicting_argument_fails_approval() {
    // `limit` is a number (Long); `nope` is declared by no tool.
    let bad = snapshot(&[(
        "p",
        r#"forbid(principal, action, resource) when { context.arguments has nope && context.arguments.nope == 1 };"#,
    )]);
    assert!(bad.is_err(), "{bad:?}");
    // Unguarded access to an optional attribute is refused too.
    let unguarded = snapshot(&[(
        "p",
        r#"forbid(principal, action, resource) when { context.arguments.amount > 1 };"#,
    )]);
    assert!(unguarded.is_err());
    let conflict = arguments_type(&[
        tool(
            "a",
            "t",
            json!({"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "integer"}}}),
        ),
        tool(
            "b",
            "t",
            json!({"type": "object", "properties": {"x": {"type": "integer"}}}),
        ),
        tool(
            "c",
            "t",
            json!({"type": "object", "properties": {"x": {"type": "string"}, "y": {}}}),
        ),
    ]);
    assert_eq!(conflict.get("x"), Some(&Slot::Conflict));
    assert_eq!(conflict.get("y"), Some(&Slot::Conflict));
}

#[test]
fn schema_problems_name_the_pointer_and_the_keyword() {
    let g = governor(POLICIES);
    let check = |args: Value| g.validate("bank", "transfer", &args);
    assert_eq!(check(json!({"amount": 5, "to": "x"})), Ok(()));
    let p = check(json!({"amount": "5", "to": "x"})).unwrap_err();
    assert_eq!(
        (p.pointer.as_str(), p.keyword.as_str()),
        ("/amount", "type")
    );
    let p = check(json!({"to": "x"})).unwrap_err();
    assert_eq!(p.keyword, "required");
    let p = check(json!({"amount": 5, "to": "x", "extra": 1})).unwrap_err();
    assert_eq!(p.keyword, "additionalProperties");
    let p = check(json!({"amount": 5, "to": "x", "memo": "far too long a memo"})).unwrap_err();
    assert_eq!(
        (p.pointer.as_str(), p.keyword.as_str()),
        ("/memo", "maxLength")
    );
    let p = check(json!([1, 2])).unwrap_err();
    assert_eq!((p.pointer.as_str(), p.keyword.as_str()), ("", "type"));
}

#[test]
fn api_keys_authenticate_their_agent_only() {
    let key = "pcak_0011aabb_secretsecret";
    let keys = Keys::new([
        (
            "0011aabb".to_owned(),
            KeyEntry {
                agent: "teller".into(),
                hash: blake3::hash(key.as_bytes()),
                revoked: false,
            },
        ),
        (
            "dead".to_owned(),
            KeyEntry {
                agent: "reader".into(),
                hash: blake3::hash(b"pcak_dead_x"),
                revoked: true,
            },
        ),
    ]);
    assert_eq!(keys.authenticate(key), Ok("teller"));
    for bad in [
        "pcak_0011aabb_secretsecreT",
        "pcak_0011aabb",
        "pcak_ffff_secretsecret",
        "pcak_dead_x",
        "",
    ] {
        assert_eq!(
            keys.authenticate(bad),
            Err(DenyReason::Unauthenticated),
            "{bad}"
        );
    }
    assert_eq!(credential(None), Credential::Missing);
    assert_eq!(
        credential(Some("Bearer pcak_a_b")),
        Credential::ApiKey("pcak_a_b")
    );
    assert_eq!(
        credential(Some("bearer  pcak_a_b ")),
        Credential::ApiKey("pcak_a_b")
    );
    assert_eq!(
        credential(Some("Bearer eyJhbGciOi")),
        Credential::Unsupported
    );
    assert_eq!(credential(Some("Basic dXNlcg==")), Credential::Unsupported);
}

#[test]
fn explain_answers_as_a_request_would_be_decided() {
    let g = governor(&[
        (
            "finance-bank",
            r#"permit(principal in Group::"finance", action, resource in Capability::"bank");"#,
        ),
        (
            "no-big-transfers",
            r#"forbid(principal, action == Action::"call", resource == Tool::"bank__transfer") when { context.arguments has amount && context.arguments.amount > 1000 };"#,
        ),
    ]);
    let ask = |agent: &str, tool: &str, action: &str, args: Value| {
        g.explain(&Question {
            agent: agent.into(),
            tool: tool.into(),
            action: action.into(),
            arguments: Some(args),
            context: QuestionContext::default(),
        })
    };
    let ok = ask(
        "teller",
        "bank__transfer",
        "call",
        json!({"amount": 5, "to": "x"}),
    );
    assert!(ok.allowed, "{ok:?}");
    assert_eq!(ok.policies, ["finance-bank"]);
    let big = ask(
        "teller",
        "bank__transfer",
        "call",
        json!({"amount": 5000, "to": "x"}),
    );
    assert_eq!(
        (big.allowed, big.reason.as_deref(), big.policies.as_slice()),
        (
            false,
            Some("policy_denied"),
            &["no-big-transfers".to_owned()][..]
        )
    );
    let bad = ask(
        "teller",
        "bank__transfer",
        "call",
        json!({"amount": 0, "to": "x"}),
    );
    assert_eq!(bad.reason.as_deref(), Some("schema_invalid"));
    assert_eq!(
        (bad.pointer.as_deref(), bad.keyword.as_deref()),
        (Some("/amount"), Some("minimum"))
    );
    let hidden = ask("reader", "bank__transfer", "discover", json!({}));
    assert_eq!(hidden.reason.as_deref(), Some("policy_denied"));
    assert_eq!(hidden.detail.as_deref(), Some("no policy permits it"));
    assert_eq!(
        ask("nobody", "bank__transfer", "call", json!({}))
            .reason
            .as_deref(),
        Some("agent_not_registered")
    );
    assert_eq!(
        ask("gone", "bank__transfer", "call", json!({}))
            .reason
            .as_deref(),
        Some("agent_disabled")
    );
    assert_eq!(
        ask("teller", "bank__nope", "call", json!({}))
            .reason
            .as_deref(),
        Some("tool_not_found")
    );
    assert_eq!(
        ask("teller", "bank__transfer", "delete", json!({}))
            .reason
            .as_deref(),
        Some("invalid_params")
    );
}

#[test]
fn results_are_checked_against_the_pinned_output_schema_as_the_capability_says() {
    let out =
        json!({"type": "object", "required": ["sum"], "properties": {"sum": {"type": "integer"}}});
    let with_mode = |mode: OutputSchemaMode| {
        let mut c = cap("calc", Risk::Low);
        c.spec.output_schema = mode;
        let mut t = tool("calc", "add", json!({"type": "object"}));
        t.output_schema = Some(out.clone());
        let plain = tool("calc", "echo", json!({"type": "object"}));
        let content = SnapshotContent {
            capabilities: vec![c],
            agents: vec![],
            policies: vec![],
            tools: vec![t, plain],
            cedar_schema: String::new(),
        };
        Governor::new(&content, PolicySet::new()).unwrap()
    };
    let g = with_mode(OutputSchemaMode::Enforce);
    assert!(g
        .check_output("calc", "add", &json!({"structuredContent": {"sum": 3}}))
        .is_ok());
    let (mode, p) = g
        .check_output("calc", "add", &json!({"structuredContent": {"sum": "3"}}))
        .unwrap_err();
    assert_eq!(
        (mode, p.pointer.as_str(), p.keyword.as_str()),
        (OutputSchemaMode::Enforce, "/sum", "type")
    );
    let (_, p) = g
        .check_output("calc", "add", &json!({"content": []}))
        .unwrap_err();
    assert_eq!(p.keyword, "structuredContent");
    // Tool errors, tools without an output schema, and unknown tools pass.
    assert!(g
        .check_output("calc", "add", &json!({"isError": true, "content": []}))
        .is_ok());
    assert!(g
        .check_output("calc", "echo", &json!({"content": []}))
        .is_ok());
    assert!(g.check_output("calc", "nope", &json!({})).is_ok());
    let report = with_mode(OutputSchemaMode::Report);
    let (mode, _) = report.check_output("calc", "add", &json!({})).unwrap_err();
    assert_eq!(mode, OutputSchemaMode::Report);
    assert!(with_mode(OutputSchemaMode::Off)
        .check_output("calc", "add", &json!({}))
        .is_ok());
}

#[test]
fn decision_keys_hold_what_the_applicable_policies_read() {
    let g = governor(&[
        (
            "finance-bank",
            r#"permit(principal in Group::"finance", action, resource in Capability::"bank") when { context.hour >= 9 };"#,
        ),
        (
            "docs-all",
            r#"permit(principal, action, resource in Capability::"docs");"#,
        ),
        (
            "no-big",
            r#"forbid(principal, action == Action::"call", resource == Tool::"bank__transfer") when { context.arguments has amount && context.arguments.amount > 1000 };"#,
        ),
    ]);
    let at = |hour| Env { hour, ..ENV };
    // No policy on docs reads the context: one key whatever the hour.
    let k = |hour| g.decision_key("teller", Action::Call, "docs", "query", &at(hour));
    assert_eq!(k(3).unwrap(), k(15).unwrap());
    // A forbid decides transfers on their arguments: no key, decided every time.
    assert!(g
        .decision_key("teller", Action::Call, "bank", "transfer", &at(10))
        .is_none());
    // Discovering the transfer tool reads the hour, not arguments: one key per hour.
    let d = |hour| g.decision_key("teller", Action::Discover, "bank", "transfer", &at(hour));
    assert_ne!(d(3).unwrap(), d(15).unwrap());
    assert_eq!(d(15).unwrap(), d(15).unwrap());
    assert!(g
        .decision_key("nobody", Action::Call, "docs", "query", &ENV)
        .is_none());
    // What lists depend on: the hour, not the weekday no policy reads.
    assert_ne!(g.discovery_env(&at(3)), g.discovery_env(&at(4)));
    assert_eq!(
        g.discovery_env(&Env {
            weekday: 5,
            ..at(3)
        }),
        g.discovery_env(&at(3))
    );
    // Arguments reach policies only where one reads them: a fractional number on docs is no reason
    // to deny, on a transfer it still is.
    let frac = json!({"limit": 2.5});
    assert!(
        g.decide(
            "teller",
            Action::Call,
            "docs",
            "query",
            Some(&frac),
            &at(10)
        )
        .allowed
    );
    let t = json!({"amount": 2.5, "to": "x"});
    assert!(
        !g.decide(
            "teller",
            Action::Call,
            "bank",
            "transfer",
            Some(&t),
            &at(10)
        )
        .allowed
    );
}

#[test]
fn merged_sets_decide_exactly_as_the_buckets_do() {
    let g = governor(POLICIES);
    let mut merged = crate::govern::MergedSets::default();
    let calls = [
        json!({"amount": 5, "to": "x"}),
        json!({"amount": 5000, "to": "x"}),
        json!({"amount": 5000.5, "to": "x"}),
        json!({"table": "public_a"}),
        json!({"table": "salaries"}),
        json!({}),
        json!([1, 2]),
    ];
    let mut compared = 0;
    // Twice: the second round decides on sets merged by the first.
    for _ in 0..2 {
        for agent in ["teller", "reader", "gone", "nobody"] {
            for (c, t) in [("bank", "transfer"), ("docs", "query"), ("bank", "nope")] {
                for action in [Action::Discover, Action::Call] {
                    for args in calls.iter().map(Some).chain([None]) {
                        let plain = g.decide(agent, action, c, t, args, &ENV);
                        let m = g.decide_merged(&mut merged, agent, action, c, t, args, &ENV);
                        assert_eq!(
                            (plain.allowed, &plain.policies, &plain.detail),
                            (m.allowed, &m.policies, &m.detail),
                            "{agent} {action:?} {c}__{t} {args:?}"
                        );
                        compared += 1;
                    }
                }
            }
        }
    }
    assert_eq!(compared, 2 * 4 * 3 * 2 * 8);
    // teller on bank__transfer consults three buckets, on docs__query two; reader's two on docs__query
    // and on bank__transfer: each (agent, resource) pair with more than one bucket is merged once.
    assert!(!merged.is_empty());
    assert!(merged.len() <= 6, "{}", merged.len());
    merged.clear();
    assert!(merged.is_empty());
}

#[test]
fn remembered_answers_are_kept_apart_by_tool_action_and_context() {
    // Neither policy names a tool or capability in its scope, so both tools share one merged set; the
    // permit reads the tool's name and the hour, the forbid the arguments.
    let g = governor(&[
        (
            "query-by-day",
            r#"permit(principal, action, resource) when { resource.name == "query" && context.hour >= 9 };"#,
        ),
        (
            "discover-all",
            r#"permit(principal, action == Action::"discover", resource);"#,
        ),
        (
            "big-amounts",
            r#"forbid(principal, action == Action::"call", resource) when { context.arguments has amount && context.arguments.amount > 1000 };"#,
        ),
    ]);
    let mut merged = crate::govern::MergedSets::default();
    let mut compared = 0;
    for hour in [12, 3, 12, 20, 3] {
        let env = Env { hour, ..ENV };
        for (c, t) in [("docs", "query"), ("bank", "transfer"), ("docs", "query")] {
            for action in [Action::Call, Action::Discover] {
                for args in [json!({"amount": 5}), json!({"amount": 5000}), json!({})] {
                    let plain = g.decide("teller", action, c, t, Some(&args), &env);
                    let m = g.decide_merged(&mut merged, "teller", action, c, t, Some(&args), &env);
                    assert_eq!(plain, m, "{action:?} {c}__{t} {args} at {hour}h");
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 5 * 3 * 2 * 3);
    let mut call = |t: &str, hour: i64, amount: i64| {
        let env = Env { hour, ..ENV };
        let c = if t == "query" { "docs" } else { "bank" };
        g.decide_merged(
            &mut merged,
            "teller",
            Action::Call,
            c,
            t,
            Some(&json!({"amount": amount})),
            &env,
        )
    };
    assert!(call("query", 12, 5).allowed);
    assert!(
        !call("transfer", 12, 5).allowed,
        "another tool's remembered answer"
    );
    assert!(
        !call("query", 3, 5).allowed,
        "another hour's remembered answer"
    );
    let v = call("query", 12, 5000);
    assert!(!v.allowed);
    assert_eq!(v.policies, ["big-amounts"]);
    assert_eq!(merged.len(), 1, "one merged set for both tools");
}

#[test]
fn the_context_carries_only_the_arguments_policies_name() {
    let fields = |text: &str| {
        let p = cedar_policy::Policy::from_str(text).unwrap();
        argument_fields(p.to_json().ok().as_ref()).map(|f| f.into_iter().collect::<Vec<_>>())
    };
    assert_eq!(
        fields(
            r#"forbid(principal, action, resource) when { context.arguments has amount && context.arguments.amount > 5 && context.arguments["to"] like "x*" };"#
        ),
        Some(vec!["amount".to_owned(), "to".to_owned()])
    );
    // A nested field is read through its top-level one.
    assert_eq!(
        fields(
            r#"permit(principal, action, resource) when { context.arguments.filter.owner == principal.owner };"#
        ),
        Some(vec!["filter".to_owned()])
    );
    assert_eq!(
        fields(r#"permit(principal, action, resource) when { context.hour > 3 };"#),
        Some(vec![])
    );
    // The record compared whole (or handed to anything else) needs every field.
    assert_eq!(
        fields(
            r#"forbid(principal, action, resource) when { context.arguments == {"amount": 5} };"#
        ),
        None
    );
    assert_eq!(
        fields(
            r#"forbid(principal, action, resource) when { context.arguments.amount > 1 || [context.arguments].contains({}) };"#
        ),
        None
    );
    // (Approval validates policies against the schema, which refuses most such uses anyway.)
}
