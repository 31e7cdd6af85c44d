//! Governance of one request, decided from the active snapshot: which registered agent presented an API
//! key, what the snapshot's Cedar policies let that agent discover and call, and whether a call's
//! arguments fit the tool's pinned input schema.
//!
//! A `Governor` is compiled once per activation (entities, policy set, schema validators) and shared
//! read-only by every core. Deciding does no I/O and reads no clock: the caller passes the hour, the
//! weekday and the session's age in `Env`. Default deny: without a satisfied `permit` nothing is
//! visible or callable; a `forbid` that fails to evaluate denies (fail closed), a `permit` that fails
//! to evaluate permits nothing.
//!
//! Policies see a call's arguments as `context.arguments`, typed from the pinned input schemas: the
//! schema generator (`arguments_type`) merges every tool's top-level properties into one record of
//! optional attributes, so `context.arguments has amount && context.arguments.amount > 1000` validates
//! at approval. A property two tools type differently, or one without a type Cedar can hold, is left out
//! of the record, so a policy cannot read it and approval says so instead of the policy never firing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicySet, PrincipalConstraint, Request, ResourceConstraint, RestrictedExpression,
};
use serde_json::Value;

use crate::control::{OutputSchemaMode, PinnedTool, SnapshotContent, Status};

mod explain;
use crate::ratelimit::Limit;
use crate::reason::DenyReason;
pub use explain::{Explanation, Question, QuestionContext};

/// Prefix of agent API keys (`pcak_<id>_<secret>`), so a leaked key is recognisable.
pub const API_KEY_PREFIX: &str = "pcak_";
/// Nesting of argument objects that policies can read; deeper properties are left out of the context.
pub const ARGUMENT_DEPTH_MAX: usize = 8;
/// Longest explanation of a schema failure sent back to the agent.
const SCHEMA_MESSAGE_MAX: usize = 240;

// ------------------------------------------------------------------ identity

/// One stored API key: whose it is and the BLAKE3 hash of the whole key.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    pub agent: String,
    pub hash: blake3::Hash,
    pub revoked: bool,
}

/// Every agent API key the gateway accepts, by key id. Rebuilt whenever a key is issued or revoked.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    by_id: HashMap<String, KeyEntry>,
}

/// The credential an `Authorization` header carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    /// No `Authorization` header.
    Missing,
    /// `Bearer pcak_…`: an agent API key.
    ApiKey(&'a str),
    /// A bearer token shaped like a JWT (`eyJ….….…`), for the identity providers to verify.
    Jwt(&'a str),
    /// Any other bearer token or scheme: not accepted (yet).
    Unsupported,
}

/// Read the `Authorization` header.
pub fn credential(authorization: Option<&str>) -> Credential<'_> {
    let Some(h) = authorization else {
        return Credential::Missing;
    };
    let h = h.trim();
    let token = match h.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => return Credential::Unsupported,
    };
    if token.starts_with(API_KEY_PREFIX) {
        Credential::ApiKey(token)
    } else if crate::authn::looks_like_jwt(token) {
        Credential::Jwt(token)
    } else {
        Credential::Unsupported
    }
}

impl Keys {
    pub fn new(entries: impl IntoIterator<Item = (String, KeyEntry)>) -> Keys {
        Keys {
            by_id: entries.into_iter().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The agent a presented key belongs to. The key id selects the entry; the hash of the whole key is
    /// compared in constant time (`blake3::Hash`'s `==`). Unknown, revoked and wrong keys all answer
    /// `Unauthenticated`, so a caller learns nothing about which ids exist.
    pub fn authenticate(&self, presented: &str) -> Result<&str, DenyReason> {
        let hash = blake3::hash(presented.as_bytes());
        let id = presented
            .strip_prefix(API_KEY_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
            .ok_or(DenyReason::Unauthenticated)?;
        match self.by_id.get(id) {
            Some(e) if e.hash == hash && !e.revoked => Ok(&e.agent),
            _ => Err(DenyReason::Unauthenticated),
        }
    }
}

/// The id part of an agent API key (`pcak_<id>_<secret>`), which names it in listings and revocations
/// without revealing it.
pub fn key_id(presented: &str) -> Option<&str> {
    presented
        .strip_prefix(API_KEY_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .map(|(id, _)| id)
}

// ------------------------------------------------------------------ argument types

/// A Cedar type an argument can be given in `context.arguments`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgType {
    Long,
    String,
    Bool,
    Set(Box<ArgType>),
    Record(BTreeMap<String, Slot>),
}

/// One attribute of a merged record: typed, or left out because tools disagree or give no usable type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    Typed(ArgType),
    Conflict,
}

/// Attribute names Cedar's schema syntax can carry without escapes.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

fn schema_type(schema: &Value) -> Option<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        // `["string", "null"]`: the one non-null type (null arguments are simply absent in the context).
        Some(Value::Array(ts)) => {
            let non_null: Vec<&str> = ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            (non_null.len() == 1).then(|| non_null[0])
        }
        None if schema.get("properties").is_some() => Some("object"),
        _ => None,
    }
}

/// The Cedar type of a JSON Schema, if it has one policies can use. JSON numbers become `Long` (Cedar
/// has no floating point); a fractional value is refused at call time rather than rounded.
pub fn arg_type(schema: &Value, depth: usize) -> Option<ArgType> {
    if depth > ARGUMENT_DEPTH_MAX {
        return None;
    }
    match schema_type(schema)? {
        "integer" | "number" => Some(ArgType::Long),
        "string" => Some(ArgType::String),
        "boolean" => Some(ArgType::Bool),
        "array" => Some(ArgType::Set(Box::new(arg_type(
            schema.get("items")?,
            depth + 1,
        )?))),
        "object" => {
            let mut fields = BTreeMap::new();
            if let Some(Value::Object(props)) = schema.get("properties") {
                for (k, v) in props {
                    if !plain_name(k) {
                        continue;
                    }
                    let slot = arg_type(v, depth + 1).map_or(Slot::Conflict, Slot::Typed);
                    fields.insert(k.clone(), slot);
                }
            }
            Some(ArgType::Record(fields))
        }
        _ => None,
    }
}

fn merge_slot(a: Slot, b: Slot) -> Slot {
    match (a, b) {
        (Slot::Typed(ArgType::Record(x)), Slot::Typed(ArgType::Record(y))) => {
            Slot::Typed(ArgType::Record(merge_fields(x, y)))
        }
        (Slot::Typed(ArgType::Set(x)), Slot::Typed(ArgType::Set(y))) => {
            match merge_slot(Slot::Typed(*x), Slot::Typed(*y)) {
                Slot::Typed(t) => Slot::Typed(ArgType::Set(Box::new(t))),
                Slot::Conflict => Slot::Conflict,
            }
        }
        (Slot::Typed(x), Slot::Typed(y)) if x == y => Slot::Typed(x),
        _ => Slot::Conflict,
    }
}

fn merge_fields(
    mut into: BTreeMap<String, Slot>,
    from: BTreeMap<String, Slot>,
) -> BTreeMap<String, Slot> {
    for (k, v) in from {
        let merged = match into.remove(&k) {
            Some(old) => merge_slot(old, v),
            None => v,
        };
        into.insert(k, merged);
    }
    into
}

/// The record type of `context.arguments`: every pinned tool's input properties merged.
pub fn arguments_type(tools: &[PinnedTool]) -> BTreeMap<String, Slot> {
    let mut fields = BTreeMap::new();
    for t in tools {
        if let Some(ArgType::Record(f)) = arg_type(&t.input_schema, 0) {
            fields = merge_fields(fields, f);
        }
    }
    fields
}

fn write_type(out: &mut String, t: &ArgType) {
    match t {
        ArgType::Long => out.push_str("Long"),
        ArgType::String => out.push_str("String"),
        ArgType::Bool => out.push_str("Bool"),
        ArgType::Set(inner) => {
            out.push_str("Set<");
            write_type(out, inner);
            out.push('>');
        }
        ArgType::Record(fields) => write_record(out, fields),
    }
}

/// `{ "a"?: Long, "b"?: { ... } }`: every attribute optional, conflicts left out.
pub fn write_record(out: &mut String, fields: &BTreeMap<String, Slot>) {
    out.push('{');
    let mut first = true;
    for (k, slot) in fields {
        let Slot::Typed(t) = slot else { continue };
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(" \"");
        out.push_str(k);
        out.push_str("\"?: ");
        write_type(out, t);
    }
    out.push_str(" }");
}

/// Why arguments could not be put into the policy context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unrepresentable {
    /// JSON pointer of the value.
    pub pointer: String,
}

fn to_cedar(
    v: &Value,
    t: &ArgType,
    pointer: &mut String,
) -> Result<Option<RestrictedExpression>, Unrepresentable> {
    let unrepresentable = |p: &String| Unrepresentable { pointer: p.clone() };
    Ok(match (t, v) {
        (ArgType::Long, Value::Number(n)) => match n.as_i64() {
            Some(i) => Some(RestrictedExpression::new_long(i)),
            // A fractional or huge number would compare wrongly however it were rounded: fail closed.
            None => return Err(unrepresentable(pointer)),
        },
        (ArgType::String, Value::String(s)) => Some(RestrictedExpression::new_string(s.clone())),
        (ArgType::Bool, Value::Bool(b)) => Some(RestrictedExpression::new_bool(*b)),
        (ArgType::Set(inner), Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            let len = pointer.len();
            for (i, item) in items.iter().enumerate() {
                pointer.push_str(&format!("/{i}"));
                // A set of values policies cannot all see would hide members from `contains`: fail closed.
                match to_cedar(item, inner, pointer)? {
                    Some(x) => out.push(x),
                    None => return Err(unrepresentable(pointer)),
                }
                pointer.truncate(len);
            }
            Some(RestrictedExpression::new_set(out))
        }
        (ArgType::Record(fields), Value::Object(obj)) => Some(record(obj, fields, pointer, None)?),
        // A value of another type than the merged one: the tool's own schema decides whether it is
        // valid; policies simply do not see it.
        _ => None,
    })
}

/// `obj` as a Cedar record of the `fields` it has values for; only the keys in `only`, when given.
fn record(
    obj: &serde_json::Map<String, Value>,
    fields: &BTreeMap<String, Slot>,
    pointer: &mut String,
    only: Option<&BTreeSet<String>>,
) -> Result<RestrictedExpression, Unrepresentable> {
    let mut out = Vec::new();
    let len = pointer.len();
    for (k, v) in obj {
        if only.is_some_and(|only| !only.contains(k)) {
            continue;
        }
        let Some(Slot::Typed(t)) = fields.get(k) else {
            continue;
        };
        pointer.push('/');
        pointer.push_str(&k.replace('~', "~0").replace('/', "~1"));
        if let Some(x) = to_cedar(v, t, pointer)? {
            out.push((k.clone(), x));
        }
        pointer.truncate(len);
    }
    // Keys are unique in a JSON object map, so construction cannot fail on duplicates.
    RestrictedExpression::new_record(out).map_err(|_| Unrepresentable {
        pointer: pointer.clone(),
    })
}

// ------------------------------------------------------------------ decisions

/// `discover` (may see in a list) or `call` (may invoke).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Discover,
    Call,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Discover => "discover",
            Action::Call => "call",
        }
    }
}

/// What the request carries besides who and what: the policies' `context`.
#[derive(Clone, Copy, Debug)]
pub struct Env<'a> {
    /// `h1`, `h2` or `h3`.
    pub transport: &'a str,
    pub revision: &'a str,
    pub client_address: &'a str,
    pub session_age_secs: i64,
    /// 0–23, UTC.
    pub hour: i64,
    /// 0 (Monday) – 6 (Sunday), UTC.
    pub weekday: i64,
}

/// A decision and the policies that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Ids of the determining policies: the permits that allowed, or the forbids that denied (empty for
    /// a default deny).
    pub policies: Vec<String>,
    /// Why a denial had no policy to name, when there is more to say than "nothing permits it".
    pub detail: Option<String>,
}

impl Verdict {
    fn deny(detail: String) -> Verdict {
        Verdict {
            allowed: false,
            policies: Vec::new(),
            detail: Some(detail),
        }
    }
}

/// A pinned tool's compiled input schema: `None` when the schema itself does not compile (every call
/// of that tool is then refused, fail closed).
type InputValidator = Result<jsonschema::Validator, String>;

/// Why arguments were refused before reaching the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaProblem {
    /// JSON pointer into the arguments (`""` for the arguments object itself).
    pub pointer: String,
    /// The JSON Schema keyword that failed (`type`, `required`, `maximum`, ...).
    pub keyword: String,
    pub message: String,
}

/// Policies indexed by the entity their scope names: (principal, resource), `None` for an unconstrained
/// (or type-only) scope. A request can only be decided by the buckets of its agent (itself, its groups,
/// any) and its tool (itself, its capability, any), so a decision costs what those policies cost, not
/// what the whole set costs.
type Buckets = HashMap<(u32, u32), Bucket>;

/// The policies filed under one (principal, resource) scope, split by whether they read the call's
/// arguments, each part with the context attributes its policies read (`READS_*`).
#[derive(Debug)]
struct Bucket {
    /// Policies that do not read `context.arguments`: for one agent, resource, action and the context
    /// attributes they read, their answer is always the same.
    fixed: PolicySet,
    fixed_reads: u8,
    /// Policies that read the arguments: asked on every call.
    moving: PolicySet,
    moving_reads: u8,
    /// The arguments the moving policies read (`None`: they use the arguments record whole).
    moving_fields: ArgumentFields,
}

/// Which top-level arguments some policies read: `None` for all of them.
type ArgumentFields = Option<BTreeSet<String>>;

/// The union of what two sets of policies read of the arguments.
fn union_fields(a: &mut ArgumentFields, b: &ArgumentFields) {
    match (a.as_mut(), b) {
        (Some(a), Some(b)) => a.extend(b.iter().cloned()),
        _ => *a = None,
    }
}

/// What the moving policies of `buckets` read of the arguments, together.
fn moving_fields(buckets: &[&Bucket]) -> ArgumentFields {
    let mut fields = Some(BTreeSet::new());
    for b in buckets.iter().filter(|b| !b.moving.is_empty()) {
        union_fields(&mut fields, &b.moving_fields);
    }
    fields
}

impl Bucket {
    fn reads(&self) -> u8 {
        self.fixed_reads | self.moving_reads
    }
}

/// What Cedar said over some policies: the satisfied permits and forbids, and the forbids that failed
/// to evaluate (Cedar skips a policy that errors; for a forbid that would turn an error into access).
#[derive(Clone, Debug, Default)]
struct Answer {
    permits: Vec<String>,
    forbids: Vec<String>,
    failed_forbids: Vec<String>,
}

impl Answer {
    fn of(response: &cedar_policy::Response, set: &PolicySet) -> Answer {
        let mut a = Answer::default();
        a.failed_forbids.extend(
            response
                .diagnostics()
                .errors()
                .map(|e| match e {
                    cedar_policy::AuthorizationError::PolicyEvaluationError(e) => e.policy_id(),
                })
                .filter(|id| set.policy(id).is_some_and(|p| p.effect() == Effect::Forbid))
                .map(ToString::to_string),
        );
        let reasons = response.diagnostics().reason().map(ToString::to_string);
        match response.decision() {
            Decision::Allow => a.permits.extend(reasons),
            Decision::Deny => a.forbids.extend(reasons),
        }
        a
    }

    /// Cedar's answer over a union of policy sets is the union of its answers over each: a satisfied
    /// forbid anywhere denies, else a satisfied permit anywhere allows.
    fn add(&mut self, other: &Answer) {
        self.permits.extend_from_slice(&other.permits);
        self.forbids.extend_from_slice(&other.forbids);
        self.failed_forbids.extend_from_slice(&other.failed_forbids);
    }

    /// `add`, for an answer not kept (nothing copied).
    fn absorb(&mut self, other: Answer) {
        self.permits.extend(other.permits);
        self.forbids.extend(other.forbids);
        self.failed_forbids.extend(other.failed_forbids);
    }

    fn verdict(self) -> Verdict {
        let Answer {
            permits,
            forbids,
            mut failed_forbids,
        } = self;
        if !failed_forbids.is_empty() {
            failed_forbids.sort_unstable();
            return Verdict {
                allowed: false,
                policies: failed_forbids,
                detail: Some("a forbid policy failed to evaluate".into()),
            };
        }
        let allowed = forbids.is_empty() && !permits.is_empty();
        let mut policies = if forbids.is_empty() { permits } else { forbids };
        policies.sort_unstable();
        Verdict {
            allowed,
            policies,
            detail: None,
        }
    }
}

/// The entities policy scopes name, numbered from 1, so a decision finds its buckets by integers.
type Scopes = HashMap<EntityUid, u32>;
/// The bucket number of an unconstrained principal or resource.
const ANY: u32 = 0;
/// An entity no policy scope names: it has no buckets of its own.
const NO_SCOPE: u32 = u32::MAX;

/// How many merged sets a `MergedSets` holds before it starts over.
pub const MERGED_SETS_MAX: usize = 4096;
/// How many remembered answers a `MergedSets` holds before it starts over: one per agent, tool, action
/// and value of the context attributes read (the hour, say); some 200 bytes each.
pub const MERGED_ANSWERS_MAX: usize = 65_536;

/// The buckets one decision consults, merged into one policy set per (agent, resource scopes): one Cedar
/// call per decision instead of one per bucket, since each call costs microseconds before it reads a
/// policy. Cedar's answer over a union of sets is the union of its answers (a satisfied forbid anywhere
/// denies, else a satisfied permit allows), so merging changes no decision.
///
/// Each merged set is kept in two parts, as buckets are: the policies that read the call's arguments,
/// asked on every call that has some, and the rest, whose answer is remembered per agent, tool, action
/// and the context attributes they read. A call that one argument forbid could deny then costs Cedar
/// that forbid alone, not every permit that lets the agent use the tool.
///
/// Kept by the caller (one per core, no lock) for one `Governor`: `clear` it when the governor changes.
/// Bounded by `MERGED_SETS_MAX`.
#[derive(Debug, Default)]
pub struct MergedSets {
    sets: HashMap<(u32, [u32; 3]), Merged>,
    /// Answers of merged parts that do not depend on arguments. Bounded by `MERGED_ANSWERS_MAX`.
    answers: HashMap<AnswerKey, Answer>,
}

/// What a remembered answer depends on: the agent, the tool, the action, which part of the merged set
/// (the arguments-reading part is remembered only for requests without arguments) and the context
/// attributes that part reads.
#[derive(Debug, PartialEq, Eq, Hash)]
struct AnswerKey {
    agent: u32,
    tool: u32,
    action: Action,
    moving: bool,
    env: EnvKey,
}

/// The consulted buckets of one (agent, resource scopes), merged.
#[derive(Debug)]
struct Merged {
    fixed: PolicySet,
    fixed_reads: u8,
    moving: PolicySet,
    moving_reads: u8,
    moving_fields: ArgumentFields,
}

impl Merged {
    /// The union of `buckets`; `None` if Cedar refuses it (it cannot: policy ids are unique across
    /// buckets), and the caller then asks each bucket.
    fn of(buckets: &[&Bucket]) -> Option<Merged> {
        let (mut fixed, mut moving) = (PolicySet::new(), PolicySet::new());
        for b in buckets {
            for p in b.fixed.policies() {
                fixed.add(p.clone()).ok()?;
            }
            for p in b.moving.policies() {
                moving.add(p.clone()).ok()?;
            }
        }
        Some(Merged {
            fixed,
            fixed_reads: buckets.iter().fold(0, |acc, b| acc | b.fixed_reads),
            moving,
            moving_reads: buckets.iter().fold(0, |acc, b| acc | b.moving_reads),
            moving_fields: moving_fields(buckets),
        })
    }
}

impl MergedSets {
    pub fn clear(&mut self) {
        self.sets.clear();
        self.answers.clear();
    }

    /// The buckets for `key` merged (once per key), and the remembered answers, apart, for one
    /// decision to use both.
    fn parts(
        &mut self,
        key: (u32, [u32; 3]),
        buckets: &[&Bucket],
    ) -> Option<(&Merged, &mut HashMap<AnswerKey, Answer>)> {
        if !self.sets.contains_key(&key) {
            let merged = Merged::of(buckets)?;
            if self.sets.len() >= MERGED_SETS_MAX {
                self.sets.clear();
            }
            self.sets.insert(key, merged);
        }
        Some((self.sets.get(&key)?, &mut self.answers))
    }

    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

const READS_TRANSPORT: u8 = 1;
const READS_REVISION: u8 = 2;
const READS_CLIENT: u8 = 4;
const READS_AGE: u8 = 8;
const READS_HOUR: u8 = 16;
const READS_WEEKDAY: u8 = 32;
const READS_ARGUMENTS: u8 = 64;
const READS_ALL: u8 = 127;

/// Which attributes a policy reads of the record `base` recognises (`context`, `context.arguments`),
/// from its JSON form: every `base.X` and `base has X`, added to `attrs`. `false` when the record is
/// used any other way (whole, or through a function): it then reads everything.
fn attributes_read(v: &Value, base: fn(&Value) -> bool, attrs: &mut BTreeSet<String>) -> bool {
    match v {
        Value::Object(m) => {
            for op in [".", "has"] {
                if let Some(inner) = m.get(op) {
                    if let (Some(left), Some(attr)) = (inner.get("left"), inner.get("attr")) {
                        if base(left) {
                            let Some(attr) = attr.as_str() else {
                                return false;
                            };
                            attrs.insert(attr.to_owned());
                            return true;
                        }
                    }
                }
            }
            !base(v) && m.values().all(|v| attributes_read(v, base, attrs))
        }
        Value::Array(a) => a.iter().all(|v| attributes_read(v, base, attrs)),
        _ => true,
    }
}

fn is_context(v: &Value) -> bool {
    v.get("Var").and_then(Value::as_str) == Some("context")
}

/// Which context attributes a policy reads (`READS_*`), from its JSON form.
fn context_reads(json: Option<&Value>) -> u8 {
    fn attr_bit(attr: &str) -> u8 {
        match attr {
            "transport" => READS_TRANSPORT,
            "revision" => READS_REVISION,
            "client_address" => READS_CLIENT,
            "session_age_secs" => READS_AGE,
            "hour" => READS_HOUR,
            "weekday" => READS_WEEKDAY,
            "arguments" => READS_ARGUMENTS,
            // Not in the schema: approval refuses it; reading it changes nothing we key on.
            _ => 0,
        }
    }
    let mut attrs = BTreeSet::new();
    match json {
        Some(j) if attributes_read(j, is_context, &mut attrs) => {
            attrs.iter().fold(0, |acc, a| acc | attr_bit(a))
        }
        _ => READS_ALL,
    }
}

/// Which top-level arguments a policy reads, from its JSON form: every `context.arguments.X` and
/// `context.arguments has X`; the arguments record used any other way (compared whole, say) reads
/// them all. Policies cannot list a record's keys, so the fields they never name cannot change their
/// answer, and the context leaves them out.
fn argument_fields(json: Option<&Value>) -> ArgumentFields {
    fn is_arguments(v: &Value) -> bool {
        v.get(".").is_some_and(|inner| {
            inner.get("attr").and_then(Value::as_str) == Some("arguments")
                && inner.get("left").is_some_and(is_context)
        })
    }
    let mut fields = BTreeSet::new();
    json.filter(|j| attributes_read(j, is_arguments, &mut fields))
        .map(|_| fields)
}

/// What a `call` or `discover` decision depends on beyond the snapshot: the agent, the tool, the
/// action and the context attributes the policies that can apply read. Equal keys get equal
/// decisions, so a core may remember them for the snapshot's lifetime. There is no key for a decision
/// that reads the call's arguments.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DecisionKey {
    agent: u32,
    tool: u32,
    action: Action,
    env: EnvKey,
}

/// The request context attributes some policies read (the rest left out), as a memo key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EnvKey {
    transport: Option<Box<str>>,
    revision: Option<Box<str>>,
    client: Option<Box<str>>,
    age: Option<i64>,
    hour: Option<i64>,
    weekday: Option<i64>,
}

impl EnvKey {
    fn new(reads: u8, env: &Env<'_>) -> EnvKey {
        let text = |bit: u8, v: &str| (reads & bit != 0).then(|| Box::from(v));
        let num = |bit: u8, v: i64| (reads & bit != 0).then_some(v);
        EnvKey {
            transport: text(READS_TRANSPORT, env.transport),
            revision: text(READS_REVISION, env.revision),
            client: text(READS_CLIENT, env.client_address),
            age: num(READS_AGE, env.session_age_secs),
            hour: num(READS_HOUR, env.hour),
            weekday: num(READS_WEEKDAY, env.weekday),
        }
    }
}

/// A registered agent: status, its entity, the groups it is in.
#[derive(Debug)]
struct AgentEntry {
    /// Its number in this snapshot (for decision keys).
    idx: u32,
    status: Status,
    uid: EntityUid,
    /// The scopes a policy could name it by: any, itself, its groups (`Scopes` numbers).
    principals: Vec<u32>,
    /// The agent's rate limits, each with its index among all agents' limits (its state cell).
    limits: Vec<(usize, Limit)>,
}

/// A pinned tool: its entity, its capability's, and the index of its validator.
#[derive(Debug)]
struct ToolEntry {
    uid: EntityUid,
    /// The scopes a policy could name it by: any, itself, its capability (`NO_SCOPE` where none does).
    resources: [u32; 3],
    validator: usize,
    /// Index of the output validator, for tools that pin an `outputSchema`.
    output: Option<usize>,
    /// Its `x-mcp-header` declarations (`Mcp-Param-*` headers a call must carry).
    params: Vec<crate::params::Binding>,
}

fn principal_key(c: PrincipalConstraint) -> Option<EntityUid> {
    match c {
        PrincipalConstraint::Any | PrincipalConstraint::Is(_) => None,
        PrincipalConstraint::In(u)
        | PrincipalConstraint::Eq(u)
        | PrincipalConstraint::IsIn(_, u) => Some(u),
    }
}

fn resource_key(c: ResourceConstraint) -> Option<EntityUid> {
    match c {
        ResourceConstraint::Any | ResourceConstraint::Is(_) => None,
        ResourceConstraint::In(u) | ResourceConstraint::Eq(u) | ResourceConstraint::IsIn(_, u) => {
            Some(u)
        }
    }
}

fn index(policies: &PolicySet) -> Result<(Buckets, Scopes), String> {
    let mut buckets = Buckets::new();
    let mut scopes = Scopes::new();
    let mut number = |u: Option<EntityUid>| match u {
        None => ANY,
        Some(u) => {
            let next = u32::try_from(scopes.len() + 1).unwrap_or(NO_SCOPE);
            *scopes.entry(u).or_insert(next)
        }
    };
    for p in policies.policies() {
        let key = (
            number(principal_key(p.principal_constraint())),
            number(resource_key(p.resource_constraint())),
        );
        let bucket = buckets.entry(key).or_insert_with(|| Bucket {
            fixed: PolicySet::new(),
            fixed_reads: 0,
            moving: PolicySet::new(),
            moving_reads: 0,
            moving_fields: Some(BTreeSet::new()),
        });
        let json = p.to_json().ok();
        let reads = context_reads(json.as_ref());
        let (part, part_reads) = if reads & READS_ARGUMENTS == 0 {
            (&mut bucket.fixed, &mut bucket.fixed_reads)
        } else {
            union_fields(&mut bucket.moving_fields, &argument_fields(json.as_ref()));
            (&mut bucket.moving, &mut bucket.moving_reads)
        };
        *part_reads |= reads;
        part.add(p.clone()).map_err(|e| e.to_string())?;
    }
    Ok((buckets, scopes))
}

/// The snapshot compiled for deciding.
pub struct Governor {
    n_policies: usize,
    /// Rate limits over all agents (the number of state cells the appliance keeps).
    n_limits: usize,
    /// Whether some policy reads `context`: then what an agent may discover can change from one
    /// request to the next, and lists are decided per request rather than remembered per agent.
    /// Which context attributes any policy reads (`READS_*`).
    reads: u8,
    buckets: Buckets,
    scopes: Scopes,
    entities: Entities,
    agents: HashMap<String, AgentEntry>,
    /// `capability` → tool name → its entities and validator.
    tools: HashMap<String, HashMap<String, ToolEntry>>,
    validators: Vec<InputValidator>,
    output_validators: Vec<InputValidator>,
    /// Capabilities whose results are checked (`report` or `enforce`); absent ones are not.
    output_modes: HashMap<String, OutputSchemaMode>,
    arguments: BTreeMap<String, Slot>,
    discover: EntityUid,
    call: EntityUid,
}

impl std::fmt::Debug for Governor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governor")
            .field("policies", &self.n_policies)
            .field("buckets", &self.buckets.len())
            .field("agents", &self.agents.len())
            .field("tools", &self.validators.len())
            .finish()
    }
}

fn uid(kind: &str, id: &str) -> EntityUid {
    // The type names are constants of the generated schema; they always parse.
    let ty = EntityTypeName::from_str(kind).unwrap_or_else(|e| panic!("entity type {kind}: {e}"));
    EntityUid::from_type_name_and_id(ty, EntityId::new(id))
}

fn strings<'a>(items: impl IntoIterator<Item = &'a String>) -> RestrictedExpression {
    RestrictedExpression::new_set(
        items
            .into_iter()
            .map(|s| RestrictedExpression::new_string(s.clone())),
    )
}

fn text(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

fn snake<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The name agents see a snapshot's tool by, and its Cedar entity id.
pub fn tool_entity_id(capability: &str, name: &str) -> String {
    crate::names::namespace_name(capability, name)
}

impl Governor {
    /// A governor that allows nothing (before the first approval).
    pub fn empty() -> Governor {
        Governor {
            n_policies: 0,
            n_limits: 0,
            reads: 0,
            buckets: Buckets::new(),
            scopes: Scopes::new(),
            entities: Entities::empty(),
            agents: HashMap::new(),
            tools: HashMap::new(),
            validators: Vec::new(),
            output_validators: Vec::new(),
            output_modes: HashMap::new(),
            arguments: BTreeMap::new(),
            discover: uid("Action", "discover"),
            call: uid("Action", "call"),
        }
    }

    /// Compile an approved snapshot's content with its already parsed policies.
    pub fn new(content: &SnapshotContent, policies: PolicySet) -> Result<Governor, String> {
        let (buckets, scopes) = index(&policies)?;
        let scope = |u: &EntityUid| scopes.get(u).copied().unwrap_or(NO_SCOPE);
        let mut entities = Vec::new();
        let mut groups = HashSet::new();
        let mut agents = HashMap::new();
        let mut n_limits = 0;
        for a in &content.agents {
            let s = &a.spec;
            let me = uid("Agent", &s.name);
            let parents: HashSet<EntityUid> = s.groups.iter().map(|g| uid("Group", g)).collect();
            groups.extend(s.groups.iter().cloned());
            let attrs = HashMap::from([
                ("owner".to_owned(), text(&s.owner)),
                ("surface".to_owned(), text(&s.surface)),
                ("environment".to_owned(), text(&s.environment)),
                (
                    "credential_mode".to_owned(),
                    text(&snake(&s.credential_mode)),
                ),
                ("groups".to_owned(), strings(&s.groups)),
            ]);
            let principals: Vec<u32> = std::iter::once(ANY)
                .chain(std::iter::once(scope(&me)))
                .chain(parents.iter().map(scope))
                .filter(|n| *n != NO_SCOPE)
                .collect();
            entities.push(Entity::new(me.clone(), attrs, parents).map_err(|e| e.to_string())?);
            let mut limits = Vec::with_capacity(s.limits.len());
            for spec in &s.limits {
                let l = Limit::parse(spec)
                    .map_err(|e| format!("agent {} limit {spec}: {e}", s.name))?;
                limits.push((n_limits, l));
                n_limits += 1;
            }
            agents.insert(
                s.name.clone(),
                AgentEntry {
                    idx: u32::try_from(agents.len()).unwrap_or(u32::MAX),
                    status: s.status,
                    uid: me,
                    principals,
                    limits,
                },
            );
        }
        for g in groups {
            entities.push(Entity::new_no_attrs(uid("Group", &g), HashSet::new()));
        }
        let mut caps = HashMap::new();
        for c in &content.capabilities {
            let s = &c.spec;
            let attrs = |extra: Vec<(String, RestrictedExpression)>| {
                let mut m = HashMap::from([
                    ("owner".to_owned(), text(&s.owner)),
                    ("risk".to_owned(), text(&snake(&s.risk))),
                    ("environment".to_owned(), text(&s.environment)),
                    ("kind".to_owned(), text(&snake(&s.kind))),
                    ("tags".to_owned(), strings(&s.tags)),
                ]);
                m.extend(extra);
                m
            };
            let me = uid("Capability", &s.name);
            let own = vec![
                ("name".to_owned(), text(&s.name)),
                ("capability".to_owned(), text(&s.name)),
            ];
            entities.push(
                Entity::new(me.clone(), attrs(own), HashSet::new()).map_err(|e| e.to_string())?,
            );
            caps.insert(s.name.clone(), (me, attrs));
        }
        let mut tools: HashMap<String, HashMap<String, ToolEntry>> = HashMap::new();
        let mut validators = Vec::with_capacity(content.tools.len());
        let mut output_validators = Vec::new();
        for t in &content.tools {
            let Some((cap_uid, attrs)) = caps.get(&t.capability) else {
                return Err(format!(
                    "tool `{}` names capability `{}`, which the snapshot lacks",
                    t.name, t.capability
                ));
            };
            let me = uid("Tool", &tool_entity_id(&t.capability, &t.name));
            let a = attrs(vec![
                ("name".to_owned(), text(&t.name)),
                ("capability".to_owned(), text(&t.capability)),
            ]);
            entities.push(
                Entity::new(me.clone(), a, HashSet::from([cap_uid.clone()]))
                    .map_err(|e| e.to_string())?,
            );
            tools.entry(t.capability.clone()).or_default().insert(
                t.name.clone(),
                ToolEntry {
                    resources: [ANY, scope(&me), scope(cap_uid)],
                    uid: me,
                    validator: validators.len(),
                    output: t.output_schema.as_ref().map(|_| output_validators.len()),
                    params: crate::params::bindings(&t.input_schema),
                },
            );
            validators.push(jsonschema::validator_for(&t.input_schema).map_err(|e| e.to_string()));
            if let Some(schema) = &t.output_schema {
                output_validators
                    .push(jsonschema::validator_for(schema).map_err(|e| e.to_string()));
            }
        }
        let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
        Ok(Governor {
            n_policies: policies.num_of_policies(),
            n_limits,
            reads: buckets.values().fold(0, |acc, b| acc | b.reads()),
            buckets,
            scopes,
            entities,
            agents,
            tools,
            validators,
            output_validators,
            output_modes: content
                .capabilities
                .iter()
                .filter(|c| c.spec.output_schema != OutputSchemaMode::Off)
                .map(|c| (c.spec.name.clone(), c.spec.output_schema))
                .collect(),
            arguments: arguments_type(&content.tools),
            discover: uid("Action", "discover"),
            call: uid("Action", "call"),
        })
    }

    /// Rate limits over all agents: the appliance keeps one state cell per limit, indexed as
    /// `agent_limits` numbers them.
    pub fn limit_count(&self) -> usize {
        self.n_limits
    }

    /// An agent's rate limits and their cell indices (none for an unknown agent).
    pub fn agent_limits(&self, agent: &str) -> &[(usize, Limit)] {
        self.agents.get(agent).map_or(&[], |a| a.limits.as_slice())
    }

    /// Is `agent` registered in this snapshot and active?
    pub fn admit(&self, agent: &str) -> Result<(), DenyReason> {
        match self.agents.get(agent).map(|a| a.status) {
            None => Err(DenyReason::AgentNotRegistered),
            Some(Status::Disabled) => Err(DenyReason::AgentDisabled),
            Some(Status::Active) => Ok(()),
        }
    }

    /// The request context with the attributes `reads` names (the policies that can apply read no
    /// others, and Cedar evaluates each attribute given, about a microsecond apiece).
    fn context(
        &self,
        env: &Env<'_>,
        arguments: Option<&Value>,
        reads: u8,
        only: Option<&BTreeSet<String>>,
    ) -> Result<Context, Verdict> {
        if reads & READS_ARGUMENTS == 0 {
            return self.env_context(env, reads, None);
        }
        let args = match arguments {
            Some(Value::Object(obj)) => record(obj, &self.arguments, &mut String::new(), only).map_err(
                |u| {
                    Verdict::deny(format!(
                        "argument {} is a number policies cannot compare exactly (not an integer in the signed 64-bit range)",
                        if u.pointer.is_empty() { "/" } else { &u.pointer }
                    ))
                },
            )?,
            _ => RestrictedExpression::new_record(Vec::new())
                .map_err(|e| Verdict::deny(e.to_string()))?,
        };
        self.env_context(env, reads, Some(args))
    }

    fn env_context(
        &self,
        env: &Env<'_>,
        reads: u8,
        arguments: Option<RestrictedExpression>,
    ) -> Result<Context, Verdict> {
        let mut pairs = Vec::with_capacity(7);
        let mut add = |bit: u8, name: &str, v: &dyn Fn() -> RestrictedExpression| {
            if reads & bit != 0 {
                pairs.push((name.to_owned(), v()));
            }
        };
        add(READS_TRANSPORT, "transport", &|| text(env.transport));
        add(READS_REVISION, "revision", &|| text(env.revision));
        add(READS_CLIENT, "client_address", &|| text(env.client_address));
        add(READS_AGE, "session_age_secs", &|| {
            RestrictedExpression::new_long(env.session_age_secs)
        });
        add(READS_HOUR, "hour", &|| {
            RestrictedExpression::new_long(env.hour)
        });
        add(READS_WEEKDAY, "weekday", &|| {
            RestrictedExpression::new_long(env.weekday)
        });
        if let Some(args) = arguments {
            pairs.push(("arguments".to_owned(), args));
        }
        if pairs.is_empty() {
            return Ok(Context::empty());
        }
        Context::from_pairs(pairs).map_err(|e| Verdict::deny(e.to_string()))
    }

    /// May `agent` `action` the tool `name` of `capability`? `arguments` are the call's (`None` for
    /// discovery). The agent must have passed `admit`; an unknown agent or tool is a plain deny.
    pub fn decide(
        &self,
        agent: &str,
        action: Action,
        capability: &str,
        name: &str,
        arguments: Option<&Value>,
        env: &Env<'_>,
    ) -> Verdict {
        self.decide_tool(None, agent, action, capability, name, arguments, env)
    }

    /// `decide`, with the consulted buckets merged into one set kept in `merged` (see `MergedSets`).
    #[allow(clippy::too_many_arguments)]
    pub fn decide_merged(
        &self,
        merged: &mut MergedSets,
        agent: &str,
        action: Action,
        capability: &str,
        name: &str,
        arguments: Option<&Value>,
        env: &Env<'_>,
    ) -> Verdict {
        self.decide_tool(
            Some(merged),
            agent,
            action,
            capability,
            name,
            arguments,
            env,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn decide_tool(
        &self,
        merged: Option<&mut MergedSets>,
        agent: &str,
        action: Action,
        capability: &str,
        name: &str,
        arguments: Option<&Value>,
        env: &Env<'_>,
    ) -> Verdict {
        let (Some(who), Some(tool)) = (
            self.agents.get(agent),
            self.tools.get(capability).and_then(|m| m.get(name)),
        ) else {
            return Verdict {
                allowed: false,
                policies: Vec::new(),
                detail: None,
            };
        };
        let index = u32::try_from(tool.validator).unwrap_or(u32::MAX);
        self.decide_on(
            who,
            action,
            &tool.uid,
            tool.resources,
            arguments,
            env,
            merged.map(|m| (m, index)),
        )
    }

    /// The buckets a decision for `who` on `resources` consults, and what of the context they read.
    fn consulted(&self, who: &AgentEntry, resources: &[u32]) -> (Vec<&Bucket>, u8) {
        let mut buckets = Vec::new();
        let mut reads = 0;
        for p in &who.principals {
            for r in resources.iter().filter(|r| **r != NO_SCOPE) {
                if let Some(b) = self.buckets.get(&(*p, *r)) {
                    buckets.push(b);
                    reads |= b.reads();
                }
            }
        }
        (buckets, reads)
    }

    /// The key under which `decide(agent, action, capability, name, _, env)` may be remembered for this
    /// snapshot: `None` for an unknown agent or tool, and for a call some applicable policy decides on
    /// its arguments.
    pub fn decision_key(
        &self,
        agent: &str,
        action: Action,
        capability: &str,
        name: &str,
        env: &Env<'_>,
    ) -> Option<DecisionKey> {
        let who = self.agents.get(agent)?;
        let tool = self.tools.get(capability)?.get(name)?;
        let (_, reads) = self.consulted(who, &tool.resources);
        if action == Action::Call && reads & READS_ARGUMENTS != 0 {
            return None;
        }
        Some(DecisionKey {
            agent: who.idx,
            tool: u32::try_from(tool.validator).unwrap_or(u32::MAX),
            action,
            env: EnvKey::new(reads, env),
        })
    }

    /// What an agent's `discover` decisions depend on beyond the agent and the snapshot: the context
    /// attributes any policy reads (discovery has no arguments). Equal keys list equally.
    pub fn discovery_env(&self, env: &Env<'_>) -> EnvKey {
        EnvKey::new(self.reads & !READS_ARGUMENTS, env)
    }

    /// Decide over the buckets of `who` and `resources` (the resource itself and what it is in).
    /// `tool` numbers the resource among the snapshot's tools, for `merged`'s remembered answers.
    #[allow(clippy::too_many_arguments)]
    fn decide_on(
        &self,
        who: &AgentEntry,
        action: Action,
        resource: &EntityUid,
        resources: [u32; 3],
        arguments: Option<&Value>,
        env: &Env<'_>,
        merged: Option<(&mut MergedSets, u32)>,
    ) -> Verdict {
        let (buckets, reads) = self.consulted(who, &resources);
        if buckets.is_empty() {
            // No policy can apply: the default deny, without asking Cedar.
            return Verdict {
                allowed: false,
                policies: Vec::new(),
                detail: None,
            };
        }
        let action_uid = match action {
            Action::Discover => &self.discover,
            Action::Call => &self.call,
        };
        // Only what the policies asked read goes into the context; arguments included.
        let request = |reads: u8,
                       arguments: Option<&Value>,
                       only: Option<&BTreeSet<String>>|
         -> Result<Request, Verdict> {
            let context = self.context(env, arguments, reads, only)?;
            Request::new(
                who.uid.clone(),
                action_uid.clone(),
                resource.clone(),
                context,
                None,
            )
            .map_err(|e| Verdict::deny(e.to_string()))
        };
        let authorizer = Authorizer::new();
        let ask = |set: &PolicySet, request: &Request| {
            Answer::of(&authorizer.is_authorized(request, set, &self.entities), set)
        };
        let mut answer = Answer::default();
        let parts =
            merged.and_then(|(m, tool)| Some((m.parts((who.idx, resources), &buckets)?, tool)));
        if let Some(((m, answers), tool)) = parts {
            // Without arguments the arguments-reading part is as fixed as the rest.
            let parts = [
                (&m.fixed, m.fixed_reads, false, true),
                (&m.moving, m.moving_reads, true, arguments.is_none()),
            ];
            for (set, reads, moving, remember) in parts {
                if set.is_empty() {
                    continue;
                }
                if !remember {
                    match request(reads, arguments, m.moving_fields.as_ref()) {
                        Ok(r) => answer.absorb(ask(set, &r)),
                        Err(v) => return v,
                    }
                    continue;
                }
                let key = AnswerKey {
                    agent: who.idx,
                    tool,
                    action,
                    moving,
                    env: EnvKey::new(reads & !READS_ARGUMENTS, env),
                };
                if let Some(a) = answers.get(&key) {
                    answer.add(a);
                    continue;
                }
                let a = match request(reads, None, None) {
                    Ok(r) => ask(set, &r),
                    Err(v) => return v,
                };
                answer.add(&a);
                if answers.len() >= MERGED_ANSWERS_MAX {
                    answers.clear();
                }
                answers.insert(key, a);
            }
            return answer.verdict();
        }
        // Bucket by bucket, over one request with everything any of them reads.
        let r = match request(reads, arguments, moving_fields(&buckets).as_ref()) {
            Ok(r) => r,
            Err(v) => return v,
        };
        for set in buckets.iter().flat_map(|b| [&b.fixed, &b.moving]) {
            if !set.is_empty() {
                answer.absorb(ask(set, &r));
            }
        }
        answer.verdict()
    }

    /// May `agent` `action` the prompts and resources of `capability` (listing them is `discover`,
    /// `prompts/get` and `resources/read` are `call`)? Decided on the `Capability` entity itself.
    pub fn decide_capability(
        &self,
        agent: &str,
        action: Action,
        capability: &str,
        env: &Env<'_>,
    ) -> Verdict {
        let Some(who) = self.agents.get(agent) else {
            return Verdict {
                allowed: false,
                policies: Vec::new(),
                detail: None,
            };
        };
        let cap = uid("Capability", capability);
        let resources = [
            ANY,
            self.scopes.get(&cap).copied().unwrap_or(NO_SCOPE),
            NO_SCOPE,
        ];
        self.decide_on(who, action, &cap, resources, None, env, None)
    }

    /// Check a 2026-07-28 call's `Mcp-Param-*` headers (lowercase names) against its arguments, by the
    /// pinned tool's `x-mcp-header` declarations (`crate::params`).
    pub fn check_param_headers(
        &self,
        capability: &str,
        name: &str,
        arguments: &Value,
        headers: &[(String, String)],
    ) -> Result<(), crate::params::Mismatch> {
        match self.tools.get(capability).and_then(|m| m.get(name)) {
            Some(t) if !t.params.is_empty() => crate::params::check(&t.params, arguments, headers),
            _ => Ok(()),
        }
    }

    /// Whether `check_output` would look at this tool's results (its capability checks them and it
    /// pins an output schema), so callers convert a result only when it will be read.
    pub fn checks_output(&self, capability: &str, name: &str) -> bool {
        self.output_modes.contains_key(capability)
            && self
                .tools
                .get(capability)
                .and_then(|m| m.get(name))
                .is_some_and(|t| t.output.is_some())
    }

    /// Check a `tools/call` result against the tool's pinned `outputSchema`, as its capability's mode
    /// says: `Err` carries the mode (`report` or `enforce`) and what failed. Results of tools without
    /// an output schema, tool errors (`isError: true`) and capabilities in mode `off` pass unchecked.
    /// A declared schema with no `structuredContent` in the result fails (MCP: the server MUST then
    /// provide structured results).
    pub fn check_output(
        &self,
        capability: &str,
        name: &str,
        result: &Value,
    ) -> Result<(), (OutputSchemaMode, SchemaProblem)> {
        let Some(&mode) = self.output_modes.get(capability) else {
            return Ok(());
        };
        let Some(i) = self
            .tools
            .get(capability)
            .and_then(|m| m.get(name))
            .and_then(|t| t.output)
        else {
            return Ok(());
        };
        if result.get("isError").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        let problem = |pointer: String, keyword: &str, message: String| {
            Err((
                mode,
                SchemaProblem {
                    pointer,
                    keyword: keyword.to_owned(),
                    message: clip(&message),
                },
            ))
        };
        let Some(structured) = result.get("structuredContent") else {
            return problem(
                String::new(),
                "structuredContent",
                "the result has no structuredContent, but the tool declares an outputSchema".into(),
            );
        };
        match &self.output_validators[i] {
            Err(e) => problem(
                String::new(),
                "$schema",
                format!("the pinned output schema does not compile: {e}"),
            ),
            Ok(v) => match v.validate(structured) {
                Ok(()) => Ok(()),
                Err(e) => problem(
                    e.instance_path().as_str().to_owned(),
                    e.kind().keyword(),
                    e.to_string(),
                ),
            },
        }
    }

    /// Check a call's arguments against the tool's pinned input schema. A tool whose schema does not
    /// compile refuses every call.
    pub fn validate(
        &self,
        capability: &str,
        name: &str,
        arguments: &Value,
    ) -> Result<(), SchemaProblem> {
        let Some(tool) = self.tools.get(capability).and_then(|m| m.get(name)) else {
            return Ok(());
        };
        let validator = match &self.validators[tool.validator] {
            Ok(v) => v,
            Err(e) => {
                return Err(SchemaProblem {
                    pointer: String::new(),
                    keyword: "$schema".into(),
                    message: clip(&format!("the pinned input schema does not compile: {e}")),
                })
            }
        };
        match validator.validate(arguments) {
            Ok(()) => Ok(()),
            Err(e) => Err(SchemaProblem {
                pointer: e.instance_path().as_str().to_owned(),
                keyword: e.kind().keyword().to_owned(),
                message: clip(&e.to_string()),
            }),
        }
    }
}

fn clip(s: &str) -> String {
    if s.len() <= SCHEMA_MESSAGE_MAX {
        return s.to_owned();
    }
    let mut end = SCHEMA_MESSAGE_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests;
