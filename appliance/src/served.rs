//! What the data plane serves: the active approved snapshot compiled for serving (or, in static mode, the
//! config's upstreams), handed to the cores without a lock on their hot path.
//!
//! Activation compiles a snapshot once into a `Served` and publishes it behind a generation counter; each
//! core compares the counter (one atomic load) at the start of a request and takes the new `Arc` only when
//! it moved. A request keeps the `Served` it started with until it ends, so in-flight requests finish on
//! the snapshot they started on and a swap drops nothing.
//!
//! Upstreams are numbered by *slot*: an append-only number per (name, endpoint), stable across snapshots,
//! that keys each core's connection pool, what it learned about the upstream's revisions, and the agents'
//! upstream sessions. A snapshot that moves a capability to another endpoint gets a new slot, so nothing
//! learned about the old endpoint is applied to the new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use portcullis_pipeline::archive;
use portcullis_pipeline::control::cedar;
use portcullis_pipeline::control::{
    Agent, ArchivedSnapshot, CredentialMode, PinnedTool, Record, Snapshot, SnapshotContent,
};
use portcullis_pipeline::credential::Binding;
use portcullis_pipeline::govern::{Governor, Keys};
use portcullis_pipeline::mcp::Naming;
use portcullis_pipeline::ratelimit::{Limit, Scope};
use portcullis_pipeline::DenyReason;

use crate::config::{parse_upstream_url, UpstreamUrl};

/// One upstream endpoint as the cores know it.
#[derive(Clone, Debug)]
pub struct SlotDef {
    pub name: String,
    pub url: UpstreamUrl,
}

/// An upstream this snapshot serves.
#[derive(Clone, Debug)]
pub struct ServedUpstream {
    pub name: String,
    pub slot: usize,
    /// What the gateway presents to it (`None`: nothing).
    pub credential: Option<Arc<Binding>>,
    /// The capability's endpoint as registered: the default `resource` of a token exchange.
    pub endpoint: String,
    /// Whether (and with which redactions) its calls' arguments go into the audit trail.
    pub audit_arguments: Option<Arc<portcullis_pipeline::control::ArgumentAudit>>,
    /// An API's calls follow this many redirects within its base URL, at most.
    pub redirects: u8,
}

/// A snapshot compiled for serving.
#[derive(Debug)]
pub struct Served {
    /// The `portcullis-snapshot` response header: `v3 blake3:<hex>`, `none` (nothing approved yet) or
    /// `static` (config upstreams, no control plane).
    pub label: String,
    pub version: Option<u64>,
    pub upstreams: Vec<ServedUpstream>,
    /// The REST APIs whose converted operations this snapshot serves (`openapi` capabilities): their
    /// slot's URL is the API's base.
    pub apis: Vec<ServedUpstream>,
    /// The approved tool definitions; `None` in static mode, where tools are listed live.
    pub pins: Option<Pins>,
    /// The snapshot's agents, tools and Cedar policies compiled for deciding, once at activation, for
    /// every core to evaluate (allows nothing in static mode and before the first approval; static mode
    /// does not consult it).
    pub governor: Governor,
    /// One state cell per rate limit of the governor (`Governor::agent_limits` indexes them), shared
    /// with later snapshots that keep the same agent and limit, so approving does not reset quotas.
    limit_cells: Vec<Arc<AtomicU64>>,
    /// Where the cells' clock starts (`Published::epoch`).
    epoch: Instant,
    /// Each agent's registered credential mode (which section of a binding applies to it) and owner.
    agent_modes: HashMap<String, (CredentialMode, String)>,
    /// The agents registered with session bounds of their own.
    agent_sessions: HashMap<String, portcullis_pipeline::session::AgentSessionLimits>,
}

/// The approved tools of one snapshot, with what the drift watcher found about each.
#[derive(Debug, Default)]
pub struct Pins {
    tools: Vec<Pin>,
    /// capability → upstream tool name → index into `tools`.
    index: HashMap<String, HashMap<String, usize>>,
    /// Set while the upstream describes the tool differently from its pin.
    drifted: Box<[AtomicBool]>,
    /// Moves whenever a drift flag flips, so open streams can tell agents their tool list changed.
    epoch: AtomicU64,
}

#[derive(Debug)]
pub struct Pin {
    pub tool: PinnedTool,
    /// The MCP `Tool` object agents see, encoded once at activation so that listing 10,000 tools is a
    /// concatenation.
    pub listed: Box<[u8]>,
}

impl Pins {
    pub fn new(tools: &[PinnedTool], naming: &Naming) -> Pins {
        let mut index: HashMap<String, HashMap<String, usize>> = HashMap::new();
        let tools: Vec<Pin> = tools
            .iter()
            .map(|t| {
                let shown = t.to_listed(&naming.name(&t.capability, &t.name));
                Pin {
                    tool: t.clone(),
                    listed: serde_json::to_vec(&shown).unwrap_or_default().into(),
                }
            })
            .collect();
        for (i, p) in tools.iter().enumerate() {
            index
                .entry(p.tool.capability.clone())
                .or_default()
                .insert(p.tool.name.clone(), i);
        }
        let drifted = tools.iter().map(|_| AtomicBool::new(false)).collect();
        Pins {
            tools,
            index,
            drifted,
            epoch: AtomicU64::new(0),
        }
    }

    /// May `capability`'s tool `name` be called now?
    pub fn check(&self, capability: &str, name: &str) -> Result<(), DenyReason> {
        let i = self
            .index
            .get(capability)
            .and_then(|m| m.get(name))
            .ok_or(DenyReason::ToolNotFound)?;
        if self.drifted[*i].load(Ordering::Relaxed) {
            return Err(DenyReason::ToolDefinitionChanged);
        }
        Ok(())
    }

    /// The pinned definition of `capability`'s tool `name`.
    pub fn get(&self, capability: &str, name: &str) -> Option<&PinnedTool> {
        let i = self.index.get(capability)?.get(name)?;
        self.tools.get(*i).map(|p| &p.tool)
    }

    /// The encoded `Tool` objects to list: every pinned tool whose upstream has not changed it.
    pub fn listed(&self) -> impl Iterator<Item = &[u8]> {
        self.tools
            .iter()
            .zip(self.drifted.iter())
            .filter(|(_, d)| !d.load(Ordering::Relaxed))
            .map(|(p, _)| &*p.listed)
    }

    /// A `tools/list` response body: `shell` is the encoded response with an empty `"tools":[]` in its
    /// result (after the id, so a string id cannot contain an unescaped copy), which receives the listed
    /// tools. `None` if the shell has no such list.
    /// Only tools `visible` lets through are listed (the agent's `discover` decisions).
    pub fn splice_tools_list(
        &self,
        shell: &[u8],
        mut visible: impl FnMut(usize, &PinnedTool) -> bool,
    ) -> Option<Vec<u8>> {
        const EMPTY: &[u8] = b"\"tools\":[]";
        let at = shell.windows(EMPTY.len()).rposition(|w| w == EMPTY)?;
        let split = at + EMPTY.len() - 1;
        let size: usize = self.tools.iter().map(|p| p.listed.len() + 1).sum();
        let mut body = Vec::with_capacity(shell.len() + size);
        body.extend_from_slice(&shell[..split]);
        let shown = self
            .tools
            .iter()
            .enumerate()
            .zip(self.drifted.iter())
            .filter(|(_, d)| !d.load(Ordering::Relaxed))
            .filter(|((i, p), _)| visible(*i, &p.tool));
        for (i, ((_, p), _)) in shown.enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&p.listed);
        }
        body.extend_from_slice(&shell[split..]);
        Some(body)
    }

    /// Every pinned tool, in index order.
    pub fn pinned(&self) -> impl Iterator<Item = &PinnedTool> {
        self.tools.iter().map(|p| &p.tool)
    }

    /// The pins of one capability, with their indexes.
    pub fn of_capability<'a>(&'a self, capability: &str) -> Vec<(usize, &'a PinnedTool)> {
        let mut v: Vec<(usize, &PinnedTool)> = self
            .index
            .get(capability)
            .map(|m| m.values().map(|&i| (i, &self.tools[i].tool)).collect())
            .unwrap_or_default();
        v.sort_by_key(|(i, _)| *i);
        v
    }

    /// Record whether tool `i` differs upstream; returns whether that changed anything.
    pub fn set_drifted(&self, i: usize, drifted: bool) -> bool {
        let changed = self
            .drifted
            .get(i)
            .is_some_and(|d| d.swap(drifted, Ordering::Relaxed) != drifted);
        if changed {
            self.epoch.fetch_add(1, Ordering::Relaxed);
        }
        changed
    }

    /// How many times a tool was withheld or given back: changes whenever `listed` does.
    pub fn drift_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

impl Served {
    /// Nothing approved yet: no upstreams, nothing to list, every call refused.
    pub fn nothing_approved() -> Served {
        Served {
            label: "none".into(),
            version: None,
            upstreams: Vec::new(),
            apis: Vec::new(),
            pins: Some(Pins::default()),
            governor: Governor::empty(),
            limit_cells: Vec::new(),
            epoch: Instant::now(),
            agent_modes: HashMap::new(),
            agent_sessions: HashMap::new(),
        }
    }

    /// Compile an approved snapshot (already verified) for serving. Capabilities that serve MCP become
    /// upstreams (`http://` or `https://`); an endpoint that does not parse is left out, loudly.
    /// Snapshots always name tools `CAPABILITY__tool` (`naming: passthrough` is for static mode).
    /// Compile a snapshot for serving. Fails (and the caller keeps serving what it had) only if its
    /// policies do not parse, which approval rules out for snapshots this version approved.
    pub fn from_snapshot(
        snapshot: &Snapshot,
        hash: &str,
        published: &Published,
    ) -> Result<Served, String> {
        Self::from_content(snapshot.header.version, &snapshot.content, hash, published)
    }

    /// Compile a snapshot read in place from the registry's map: its content is decoded straight out of
    /// the archive (no JSON is parsed but the schemas', once, for their validators).
    pub fn from_archived(
        archived: &ArchivedSnapshot,
        hash: &str,
        published: &Published,
    ) -> Result<Served, String> {
        let version = archived.header.version.to_native();
        let content = archive::content(archived).map_err(|e| e.to_string())?;
        Self::from_content(version, &content, hash, published)
    }

    fn from_content(
        version: u64,
        content: &SnapshotContent,
        hash: &str,
        published: &Published,
    ) -> Result<Served, String> {
        let policies = cedar::policy_set(&content.policies).map_err(|problems| {
            let first = problems
                .first()
                .map(|p| {
                    format!(
                        "policy `{}` {}:{}: {}",
                        p.policy_id, p.line, p.column, p.message
                    )
                })
                .unwrap_or_default();
            format!("{} policy problem(s), first: {first}", problems.len())
        })?;
        let naming = Naming::Prefixed;
        let mut upstreams = Vec::new();
        let mut apis = Vec::new();
        for c in &content.capabilities {
            let list = if c.spec.serves_mcp() {
                &mut upstreams
            } else if c.spec.serves_api() {
                &mut apis
            } else {
                continue;
            };
            match parse_upstream_url(&c.spec.endpoint) {
                Ok(url) => list.push(ServedUpstream {
                    name: c.spec.name.clone(),
                    slot: published.slot(&c.spec.name, url),
                    credential: c.spec.credential.clone().map(Arc::new),
                    endpoint: c.spec.endpoint.clone(),
                    audit_arguments: c.spec.audit_arguments.clone().map(Arc::new),
                    redirects: c.spec.openapi.as_ref().map_or(0, |o| o.redirects),
                }),
                Err(e) => crate::error!(
                    "snapshot={} capability={} not served: {e}",
                    version,
                    c.spec.name
                ),
            }
        }
        let pins = Pins::new(&content.tools, &naming);
        let governor = Governor::new(content, policies)?;
        let limit_cells = published.limit_cells(&content.agents);
        debug_assert_eq!(limit_cells.len(), governor.limit_count());
        Ok(Served {
            label: format!("v{} blake3:{hash}", version),
            version: Some(version),
            upstreams,
            apis,
            pins: Some(pins),
            governor,
            limit_cells,
            epoch: published.epoch,
            agent_modes: content
                .agents
                .iter()
                .map(|a| {
                    (
                        a.spec.name.clone(),
                        (a.spec.credential_mode, a.spec.owner.clone()),
                    )
                })
                .collect(),
            agent_sessions: content
                .agents
                .iter()
                .filter_map(|a| Some((a.spec.name.clone(), a.spec.sessions.as_ref()?.limits())))
                .collect(),
        })
    }

    /// Static mode: the config's upstreams, listed live, no control plane.
    pub fn static_upstreams(upstreams: &[(String, UpstreamUrl)], published: &Published) -> Served {
        Served {
            label: "static".into(),
            version: None,
            upstreams: upstreams
                .iter()
                .map(|(name, url)| ServedUpstream {
                    name: name.clone(),
                    slot: published.slot(name, url.clone()),
                    credential: None,
                    endpoint: String::new(),
                    audit_arguments: None,
                    redirects: 0,
                })
                .collect(),
            apis: Vec::new(),
            pins: None,
            governor: Governor::empty(),
            limit_cells: Vec::new(),
            epoch: published.epoch,
            agent_modes: HashMap::new(),
            agent_sessions: HashMap::new(),
        }
    }

    /// The served capability on pool slot `slot` (an MCP server or a REST API).
    pub fn on_slot(&self, slot: usize) -> Option<&ServedUpstream> {
        self.upstreams
            .iter()
            .chain(&self.apis)
            .find(|u| u.slot == slot)
    }

    /// The argument-recording setting of capability `name`, if it asks for one.
    pub fn audit_arguments(
        &self,
        name: &str,
    ) -> Option<&portcullis_pipeline::control::ArgumentAudit> {
        self.upstreams
            .iter()
            .chain(&self.apis)
            .find(|u| u.name == name)?
            .audit_arguments
            .as_deref()
    }

    /// The credential mode `agent` is registered with.
    pub fn agent_mode(&self, agent: &str) -> Option<CredentialMode> {
        self.agent_modes.get(agent).map(|(m, _)| *m)
    }

    /// The session bounds `agent` is registered with (each unset one: the gateway's).
    pub fn session_limits(&self, agent: &str) -> portcullis_pipeline::session::AgentSessionLimits {
        self.agent_sessions.get(agent).copied().unwrap_or_default()
    }

    /// The owner `agent` is registered with.
    pub fn agent_owner(&self, agent: &str) -> Option<&str> {
        self.agent_modes.get(agent).map(|(_, o)| o.as_str())
    }

    /// For the audit record: the credential mode `agent` calls capability `name` with and the secret
    /// reference (or token endpoint) that serves it, when the capability binds one.
    pub fn credential_of(&self, name: &str, agent: &str) -> Option<(String, String)> {
        let cap = self
            .upstreams
            .iter()
            .chain(&self.apis)
            .find(|u| u.name == name)?;
        let binding = cap.credential.as_ref()?;
        let mode = self.agent_mode(agent)?;
        let label = match mode {
            CredentialMode::Service => "service",
            CredentialMode::AgentScoped => "agent-scoped",
            CredentialMode::Delegated => "delegated",
        };
        let what = match binding.need(mode, agent) {
            Ok(portcullis_pipeline::credential::Need::Secret(r)) => r.to_string(),
            Ok(portcullis_pipeline::credential::Need::Exchange(x)) => {
                format!("exchange:{}", x.token_endpoint)
            }
            Err(e) => format!("none ({e})"),
        };
        Some((label.to_owned(), what))
    }

    /// Count one request against each of `agent`'s limits that counts it: every request (`call` is
    /// `None`), or a call to a capability (and, for `tools/call`, its tool's upstream name). `Err` is
    /// the limit that refused and how long until it admits one more.
    ///
    /// Each limit's state is one atomic integer updated by compare-and-swap: exact across cores with no
    /// lock, and touched only by cores serving that agent. Limits checked before the refusing one have
    /// counted the request.
    pub fn take(
        &self,
        agent: &str,
        call: Option<(&str, Option<&str>)>,
    ) -> Result<(), (&Limit, Duration)> {
        let limits = self.governor.agent_limits(agent);
        if limits.is_empty() {
            return Ok(());
        }
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        for (i, limit) in limits {
            let counts = match call {
                None => limit.scope == Scope::Agent,
                Some(_) => limit.applies(call),
            };
            let Some(cell) = counts.then(|| self.limit_cells.get(*i)).flatten() else {
                continue;
            };
            let mut tat = cell.load(Ordering::Relaxed);
            loop {
                match limit.admit(tat, now) {
                    Err(wait) => return Err((limit, Duration::from_nanos(wait))),
                    Ok(next) => match cell.compare_exchange_weak(
                        tat,
                        next,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => break,
                        Err(seen) => tat = seen,
                    },
                }
            }
        }
        Ok(())
    }

    /// The slot of the served upstream called `name`.
    /// The slot of a served REST API.
    pub fn api(&self, name: &str) -> Option<usize> {
        self.apis.iter().find(|u| u.name == name).map(|u| u.slot)
    }

    /// How many redirects API `name`'s calls follow.
    pub fn api_redirects(&self, name: &str) -> u8 {
        self.apis
            .iter()
            .find(|u| u.name == name)
            .map_or(0, |u| u.redirects)
    }

    pub fn upstream(&self, name: &str) -> Option<usize> {
        self.upstreams
            .iter()
            .find(|u| u.name == name)
            .map(|u| u.slot)
    }
}

/// A compiled snapshot on its way to being served, with whom to tell when it is.
#[derive(Debug)]
pub struct Staged {
    pub served: Served,
    done: flume::Sender<()>,
}

/// The current `Served`, the slot table, and the drift watcher's doorbell; shared by every core, the admin
/// thread and the watcher.
#[derive(Debug)]
pub struct Published {
    /// Whether snapshots are served (false in static mode: activations are stored but not served).
    managed: bool,
    generation: AtomicU64,
    current: RwLock<Arc<Served>>,
    slots: Mutex<Vec<SlotDef>>,
    /// Replaced `Served`s, kept until no core holds them so that the last reference, and the cost of
    /// freeing thousands of pins, is always dropped here rather than on a core's request path.
    retired: Mutex<Vec<Arc<Served>>>,
    recheck_tx: flume::Sender<()>,
    recheck_rx: flume::Receiver<()>,
    /// Compiled snapshots waiting for the drift watcher to check their pins before they are published.
    staged_tx: flume::Sender<Staged>,
    staged_rx: flume::Receiver<Staged>,
    /// Staged and not yet published.
    pending: AtomicU64,
    /// The agent API keys accepted now, swapped whole when one is issued or revoked; cores pick up a new
    /// table the way they pick up a snapshot (a generation of its own, so key changes never look like
    /// list changes to open streams).
    keys_generation: AtomicU64,
    keys: RwLock<Arc<Keys>>,
    /// Rate-limit state by (agent, limit), carried from snapshot to snapshot.
    limits: Mutex<HashMap<(String, String), Arc<AtomicU64>>>,
    /// The rate limits' clock starts here.
    pub epoch: Instant,
}

impl Published {
    pub fn new(managed: bool) -> Published {
        let (recheck_tx, recheck_rx) = flume::bounded(1);
        let (staged_tx, staged_rx) = flume::unbounded();
        Published {
            managed,
            generation: AtomicU64::new(0),
            current: RwLock::new(Arc::new(Served::nothing_approved())),
            slots: Mutex::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
            recheck_tx,
            recheck_rx,
            staged_tx,
            staged_rx,
            pending: AtomicU64::new(0),
            keys_generation: AtomicU64::new(0),
            keys: RwLock::new(Arc::new(Keys::default())),
            limits: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }

    /// The state cells of every agent's limits, in the order `Governor::new` numbers them: the cell an
    /// earlier snapshot used for the same agent and limit, else a fresh one. Cells no snapshot uses any
    /// more are dropped.
    fn limit_cells(&self, agents: &[Record<Agent>]) -> Vec<Arc<AtomicU64>> {
        let mut map = self.limits.lock().unwrap_or_else(PoisonError::into_inner);
        let mut kept = HashMap::new();
        let mut cells = Vec::new();
        for a in agents {
            for spec in &a.spec.limits {
                let key = (a.spec.name.clone(), spec.clone());
                let cell = map.get(&key).cloned().unwrap_or_default();
                cells.push(cell.clone());
                kept.insert(key, cell);
            }
        }
        *map = kept;
        cells
    }

    pub fn keys_generation(&self) -> u64 {
        self.keys_generation.load(Ordering::Acquire)
    }

    pub fn keys(&self) -> Arc<Keys> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Make `keys` the accepted set for the next request on every core.
    pub fn publish_keys(&self, keys: Keys) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        self.keys_generation.fetch_add(1, Ordering::Release);
    }

    pub fn managed(&self) -> bool {
        self.managed
    }

    /// The slot of (name, url), allocating one the first time.
    pub fn slot(&self, name: &str, url: UpstreamUrl) -> usize {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = slots.iter().position(|s| s.name == name && s.url == url) {
            return i;
        }
        slots.push(SlotDef {
            name: name.to_owned(),
            url,
        });
        slots.len() - 1
    }

    /// Slots from `from` on (a core extends its copy with these when the generation moves).
    pub fn slots_from(&self, from: usize) -> Vec<SlotDef> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots
            .get(from..)
            .map(<[SlotDef]>::to_vec)
            .unwrap_or_default()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<Served> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Make `served` what new requests get, and have the watcher check its pins at once.
    pub fn publish(&self, served: Served) {
        self.swap_in(served);
        self.ask_recheck();
    }

    /// Hand `served` to the drift watcher, which checks its pins against the upstreams and then
    /// publishes it, so that no request is ever served a pin the upstream has already changed. The
    /// receiver hears once it is published. Snapshots are published in the order they were staged.
    pub fn stage(&self, served: Served) -> flume::Receiver<()> {
        let (done, published) = flume::bounded(1);
        self.pending.fetch_add(1, Ordering::SeqCst);
        let _ = self.staged_tx.send(Staged { served, done });
        published
    }

    /// What the drift watcher takes staged snapshots from.
    pub fn staged(&self) -> flume::Receiver<Staged> {
        self.staged_rx.clone()
    }

    /// Publish a staged snapshot whose pins were just checked (no second check is asked for).
    pub fn publish_checked(&self, staged: Staged) {
        self.swap_in(staged.served);
        self.pending.fetch_sub(1, Ordering::SeqCst);
        let _ = staged.done.send(());
    }

    /// Whether a staged snapshot waits for its pins to be checked.
    pub fn checking(&self) -> bool {
        self.pending.load(Ordering::SeqCst) > 0
    }

    fn swap_in(&self, served: Served) {
        crate::info!(
            "serving snapshot={} upstreams={} pinned_tools={}",
            served.label,
            served.upstreams.len(),
            served.pins.as_ref().map_or(0, Pins::len)
        );
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
            Arc::new(served),
        );
        // Release: a core that sees the new generation also sees the new `current` and its slots.
        self.generation.fetch_add(1, Ordering::Release);
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        retired.push(old);
        self.release_retired(&mut retired);
    }

    /// Free retired snapshots no core holds any more (called by the publisher and the watcher).
    pub fn collect_retired(&self) {
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        self.release_retired(&mut retired);
    }

    fn release_retired(&self, retired: &mut Vec<Arc<Served>>) {
        retired.retain(|s| Arc::strong_count(s) > 1);
    }

    /// Ask the drift watcher to list the upstreams' tools now (coalesced with a pending request).
    pub fn ask_recheck(&self) {
        let _ = self.recheck_tx.try_send(());
    }

    pub fn recheck_requests(&self) -> flume::Receiver<()> {
        self.recheck_rx.clone()
    }
}
