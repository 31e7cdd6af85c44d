//! The MCP endpoint of one core: carries out what `pipeline` decides, doing the I/O it asks for.
//!
//! A POST is framed, parsed and classified by era (`pipeline::transport`), routed (`pipeline::mcp`), then
//! answered by the gateway itself (initialize, ping, discover), fanned out to every upstream and merged (the
//! list methods), or forwarded to the one upstream that owns a namespaced name, with the response relayed
//! as JSON or as a live SSE stream. Each upstream is spoken to in the revision it supports, whatever the
//! agent speaks; upstream sessions belong to one agent session and are never shared between agents.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_pipeline::control::OutputSchemaMode;
use portcullis_pipeline::credential::{self, Secret};
use portcullis_pipeline::govern::{self, Action, Env, Keys, Verdict};
use portcullis_pipeline::jsonrpc::{self, Id, Message, ParseLimits, Request};
use portcullis_pipeline::listen::{self, ListenFilter, UpstreamWant};
use portcullis_pipeline::mcp::{self, ListKind, Route};
use portcullis_pipeline::session::{
    Holds, LeaseHeld, Opening, Session, SessionError, SessionId, SessionShard, UpstreamBinding,
};
use portcullis_pipeline::sse::{self, SseParser};
use portcullis_pipeline::transport::{self, Era, McpHeaders, Refusal};
use portcullis_pipeline::{frame, DenyReason, Revision};
use simd_json::prelude::*;
use simd_json::OwnedValue as Value;

use crate::config::{Config, UpstreamUrl};
use crate::http::{Reply, RequestHead, Response};
use crate::metrics::{inc, CoreMetrics, CoreShared};
use crate::served::{Published, Served, SlotDef};
use crate::upstream::{Pool, UpstreamResponse};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Pages fetched from one upstream for one merged list; past it the rest is dropped (bounded fan-out).
const LIST_PAGES_MAX: usize = 32;

/// Read-only state every core shares.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    /// What is served: the active snapshot (or the config's upstreams in static mode).
    pub served: Arc<Published>,
    /// How the upstreams' names appear to agents (from `config.naming`).
    pub naming: mcp::Naming,
    pub draining: std::sync::atomic::AtomicBool,
    pub ready_cores: std::sync::atomic::AtomicUsize,
    pub started: Instant,
    /// Identity providers whose JWTs name agents (empty: API keys only).
    pub identity: Arc<crate::identity::Providers>,
    /// Resolves the credentials presented upstream.
    pub broker: Arc<crate::broker::Broker>,
    /// Every core's audit writer.
    pub audit: Arc<crate::audit::Trail>,
    /// Each core's session inbox, for the admin API (set once the cores exist).
    pub session_peers: std::sync::OnceLock<Vec<flume::Sender<SessionMsg>>>,
    /// Moves whenever sessions are revoked, so open streams look again at once.
    pub revocations: std::sync::atomic::AtomicU64,
    /// What the QUIC threads count.
    pub h3: crate::h3srv::H3Stats,
    /// `Alt-Svc` for answers over TLS on TCP: HTTP/3 on the same port (`None`: no HTTP/3 listener).
    pub alt_svc: Option<String>,
    /// Writes session records to outlive a restart (`None`: `sessions.persist` off, or the store failed).
    pub persist: Option<crate::persist::Persister>,
    /// What the session store held at start, taken by each core as it starts.
    pub restored: std::sync::Mutex<crate::persist::Restored>,
    /// Session agents' POST response streams, resumable by a GET with `Last-Event-ID: p<stream>.<n>`.
    /// Touched per event of a streamed response, never for JSON answers.
    pub post_streams: std::sync::Mutex<portcullis_pipeline::replay::PostStreams>,
    /// Each session's GET-stream replay buffer (`Last-Event-ID`). Touched only when a stream event is
    /// sent or a stream resumes, never on the call path.
    pub replays:
        std::sync::Mutex<std::collections::HashMap<SessionId, portcullis_pipeline::replay::Replay>>,
    /// Which GET stream of each session follows each upstream. Touched when a stream opens or ends.
    pub followers: Followers,
}

/// Which of a session's GET streams follows each upstream: the newest. A 2025-11-25 upstream takes one
/// GET stream per session (a second is refused with 409), and a client that reconnects opens its new
/// stream before the gateway can notice the old one is gone (that shows only at the next write to it).
/// So a newer stream takes each upstream over: the older stream's follower lets go of its upstream
/// stream, and every upstream message reaches exactly one stream, the one the client is reading.
#[derive(Debug, Default)]
pub struct Followers {
    next: std::sync::atomic::AtomicU64,
    current: std::sync::Mutex<std::collections::HashMap<(SessionId, usize), Follower>>,
}

/// The stream following one upstream of one session: its generation, and the sender whose drop stops it.
type Follower = (u64, flume::Sender<()>);

impl Followers {
    /// Take upstream `up` of session `id` over. The receiver disconnects when another stream takes it
    /// over or this one lets go (`release`); its follower stops then.
    fn take(&self, id: SessionId, up: usize) -> (u64, flume::Receiver<()>) {
        let generation = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = flume::bounded(0);
        // The displaced sender drops outside the lock; its follower wakes on its own core.
        let displaced = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((id, up), (generation, tx));
        drop(displaced);
        (generation, rx)
    }

    /// Let go of upstream `up` of session `id`, unless a newer stream took it over meanwhile.
    fn release(&self, id: SessionId, up: usize, generation: u64) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current
            .get(&(id, up))
            .is_some_and(|(g, _)| *g == generation)
        {
            current.remove(&(id, up));
        }
    }
}

/// The upstreams one GET stream follows, let go when the stream ends however it ends.
struct Following<'a> {
    followers: &'a Followers,
    id: SessionId,
    held: Vec<(usize, u64)>,
}

impl Drop for Following<'_> {
    fn drop(&mut self) {
        for (up, generation) in self.held.drain(..) {
            self.followers.release(self.id, up, generation);
        }
    }
}

/// Times one relayed stream resumes its upstream's closed stream, at most, and the longest wait asked.
const UPSTREAM_RESUMES_MAX: usize = 16;
const UPSTREAM_RETRY_MAX: Duration = Duration::from_secs(2);

/// How often a resumed POST stream looks for the rest of its answer.
const POST_RESUME_POLL: Duration = Duration::from_millis(25);

/// Sessions with a replay buffer, at most; past it the older half is dropped (their clients re-sync).
const REPLAYS_MAX: usize = 65_536;

/// A session operation sent to the core that owns the session.
#[derive(Debug)]
pub enum SessionMsg {
    Touch {
        id: SessionId,
        now: Instant,
        reply: flume::Sender<Result<Session, SessionError>>,
    },
    Bind {
        id: SessionId,
        upstream: usize,
        binding: UpstreamBinding,
        reply: flume::Sender<Result<(), Option<UpstreamBinding>>>,
    },
    Unbind {
        id: SessionId,
        upstream: usize,
    },
    Close {
        id: SessionId,
        reply: flume::Sender<Option<Session>>,
    },
    /// How many live sessions an agent holds on this core.
    CountAgent {
        agent: String,
        reply: flume::Sender<usize>,
    },
    /// The core's live sessions, for operators.
    List {
        reply: flume::Sender<Vec<SessionView>>,
    },
    /// Revoke sessions on this core; answers with the ids revoked. Every core gets it: each drops what
    /// it caches of the sessions named and, with `hold_until`, refuses the agent or key till then.
    Revoke {
        which: portcullis_pipeline::session::Revoke,
        hold_until: Option<Instant>,
        reply: flume::Sender<Vec<SessionView>>,
    },
    /// End the hold on an agent or key on this core; answers whether there was one.
    Lift {
        which: portcullis_pipeline::session::Revoke,
        reply: flume::Sender<bool>,
    },
    /// The holds in force on this core: (`agent` | `key`, name, seconds left).
    Holds {
        reply: flume::Sender<Vec<(&'static str, String, u64)>>,
    },
    /// The 2026-07-28 session of a credential lease, opened with `open` when there is none.
    Lease {
        lease: String,
        agent: String,
        open: Option<Box<(SessionId, Opening)>>,
        now: Instant,
        reply: flume::Sender<Result<LeaseHeld, SessionError>>,
    },
    /// Uses of a lease session another core served since it last said (no answer).
    Seen {
        id: SessionId,
        at: Instant,
        requests: u64,
    },
    /// Count a stream the session opens, unless it holds as many as it may.
    StreamOpen {
        id: SessionId,
        reply: flume::Sender<Result<(), SessionError>>,
    },
    StreamClosed {
        id: SessionId,
    },
}

/// What a core remembers of a lease session another core owns, so that the lease's requests here need
/// no round trip: uses are reported (`SessionMsg::Seen`) at most once per `LEASE_REPORT_INTERVAL`.
#[derive(Debug)]
struct LeaseEntry {
    id: SessionId,
    agent: String,
    identity: Option<String>,
    created: Instant,
    idle: Duration,
    duration_max: Duration,
    /// The last use reported to the owner, and the uses since.
    reported: Instant,
    pending: u64,
}

/// How often a core tells a lease session's owner about its uses; well inside any idle bound.
const LEASE_REPORT_INTERVAL: Duration = Duration::from_millis(500);

/// Lease sessions one core remembers of other cores; past it the memory starts over.
const LEASE_CACHE_MAX: usize = 65_536;

/// The response header naming a 2026-07-28 request's gateway session (see `Core::modern_session`).
pub const SESSION_HEADER: &str = "portcullis-session";

/// A session as operators see it (never its upstream session ids).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionView {
    pub id: String,
    pub core: u16,
    pub agent: Option<String>,
    pub identity: Option<String>,
    pub revision: &'static str,
    pub transport: &'static str,
    pub client: Option<String>,
    pub age_s: u64,
    pub idle_s: u64,
    pub requests: u64,
    pub upstream_sessions: usize,
    pub streams: u32,
    /// A 2026-07-28 session's credential lease kind (`key`, `jwt`, `certificate`), never its digest.
    pub lease: Option<String>,
    /// Its own bounds, seconds.
    pub idle_max_s: u64,
    pub duration_max_s: u64,
}

impl SessionView {
    fn of(id: SessionId, s: &Session, now: Instant) -> SessionView {
        SessionView {
            id: id.to_string(),
            core: id.core,
            agent: s.agent.clone(),
            identity: s.identity.clone(),
            revision: s.revision.as_str(),
            transport: s.transport,
            client: s.client_info.as_ref().map(|i| {
                let name = i.get("name").and_then(|v| v.as_str()).unwrap_or("?");
                let version = i.get("version").and_then(|v| v.as_str()).unwrap_or("");
                format!("{name} {version}").trim().to_owned()
            }),
            age_s: now.saturating_duration_since(s.created).as_secs(),
            idle_s: now.saturating_duration_since(s.last_active).as_secs(),
            requests: s.requests,
            upstream_sessions: s.upstreams.len(),
            streams: s.streams,
            lease: s
                .lease
                .as_deref()
                .map(|l| l.split(':').next().unwrap_or(l).to_owned()),
            idle_max_s: s.idle.as_secs(),
            duration_max_s: s.duration_max.as_secs(),
        }
    }
}

/// One core's state. Lives in an `Rc`: nothing here crosses threads except through `peers`.
#[derive(Debug)]
pub struct Core {
    pub id: u16,
    pub shared: Arc<Shared>,
    pub pool: Rc<Pool>,
    pub sessions: RefCell<SessionShard>,
    /// Agents and keys operators revoked, refused here until their hold ends.
    holds: RefCell<Holds>,
    /// Lease sessions other cores own, by lease.
    leases: RefCell<std::collections::HashMap<String, LeaseEntry>>,
    /// Each stored session's last activity as written (`persist_sessions`).
    persisted: RefCell<std::collections::HashMap<SessionId, Instant>>,
    pub peers: Vec<flume::Sender<SessionMsg>>,
    pub metrics: CoreMetrics,
    /// Which revisions each upstream slot speaks, as learned by this core.
    upstream_eras: RefCell<Vec<Eras>>,
    /// This core's copy of the slot table, and the `Served` of the generation it last saw.
    slots: RefCell<Vec<SlotDef>>,
    served: RefCell<(u64, LocalServed)>,
    /// The API key table of the generation this core last saw.
    keys: RefCell<(u64, LocalKeys)>,
    /// Which pinned tools each agent may discover, per snapshot label (see `visible_tools`).
    discovered: RefCell<Discovered>,
    /// Call decisions that depend only on their key, per snapshot label.
    decisions: RefCell<Decisions>,
    /// The policy buckets decisions consult, merged per (agent, tool), per snapshot label.
    merged: RefCell<(String, govern::MergedSets)>,
    /// Credentials this core resolved, until each one's lifetime ends.
    credentials: RefCell<crate::broker::CoreCache>,
    /// The JSON parser's working buffers, kept between requests; borrowed only for one parse.
    parser: RefCell<jsonrpc::Scratch>,
    /// Where a call's arguments are serialized to be hashed (`arguments_digest`), kept likewise.
    digest_buf: RefCell<Vec<u8>>,
    /// Requests being served on this core; read at drain. Changed only through `request_started` and
    /// `request_finished`, which also keep the driver polled (`runtime::IdlePoll`).
    pub in_flight: Cell<usize>,
    pub connections: Cell<usize>,
    pub idle_poll: crate::runtime::IdlePoll,
}

/// A core's handle on a `Served`: cloning the `Rc` per request keeps the reference count on this core,
/// where cloning the `Arc` would bounce one cache line between every core on every request.
#[allow(clippy::redundant_allocation)]
type LocalServed = Rc<Arc<Served>>;
#[allow(clippy::redundant_allocation)]
type LocalKeys = Rc<Arc<Keys>>;
/// A snapshot label and, per agent, which of its pinned tools the agent may discover.
type Discovered = (
    String,
    std::collections::HashMap<(String, govern::EnvKey), Rc<Vec<bool>>>,
);

/// Call decisions one core remembers, per snapshot label (see `Core::decide_call`).
type Decisions = (
    String,
    std::collections::HashMap<govern::DecisionKey, Verdict>,
);

/// Whom an upstream request is made for: the credential broker picks the credential from it.
#[derive(Clone, Debug, Default)]
struct OnBehalf {
    /// The registered agent (`None` in static mode, where no capability binds a credential).
    agent: Option<String>,
    /// The agent's verified inbound bearer token, for `delegated` capabilities to exchange. Never sent
    /// upstream itself.
    token: Option<Secret>,
}

/// Who is calling, as governance sees it: the registered agent a credential proved, and what the
/// policies' context reads about the request.
#[derive(Debug)]
struct Caller {
    /// `None` in static mode, where nothing is governed.
    who: Option<String>,
    /// The JWT the agent presented, kept for token exchange (`OnBehalf::token`).
    token: Option<Secret>,
    /// How it proved who it is: `api_key`, `jwt` or `certificate` (`None` in static mode).
    kind: Option<&'static str>,
    /// The credential itself, as sessions record it: `key:<id>`, `jwt`, `certificate`.
    identity: Option<String>,
    transport: &'static str,
    client: String,
    /// UTC hour and weekday (0 = Monday) when the request arrived.
    hour: i64,
    weekday: i64,
}

impl Caller {
    /// The credential lease a 2026-07-28 session groups by: `key:<id>`, `jwt:<digest of the token>`,
    /// `certificate:<agent>`. Computed only for the requests that need it (a JWT is hashed).
    fn lease(&self) -> Option<String> {
        let who = self.who.as_deref()?;
        Some(match (self.kind?, &self.token, self.identity.as_deref()) {
            ("jwt", Some(token), _) => {
                let digest = blake3::hash(token.expose().as_bytes());
                format!("jwt:{}", &digest.to_hex()[..32])
            }
            (_, _, Some(key)) if key.starts_with("key:") => key.to_owned(),
            (kind, _, _) => format!("{kind}:{who}"),
        })
    }

    fn on_behalf(&self) -> OnBehalf {
        OnBehalf {
            agent: self.who.clone(),
            token: self.token.clone(),
        }
    }

    fn env<'a>(&'a self, agent: &'a Agent) -> Env<'a> {
        let (revision, age) = match agent {
            Agent::Modern { .. } => (Revision::V2026_07_28.as_str(), 0),
            Agent::Session { session, .. } => (
                session.revision.as_str(),
                i64::try_from(session.created.elapsed().as_secs()).unwrap_or(i64::MAX),
            ),
        };
        Env {
            transport: self.transport,
            revision,
            client_address: &self.client,
            session_age_secs: age,
            hour: self.hour,
            weekday: self.weekday,
        }
    }
}

/// A core's copy of something published under a generation counter: kept while the generation stands,
/// replaced by `load()` when it moved. Returns the copy and whether it was replaced. The `Rc` keeps
/// reference counting on this core (see `LocalServed`).
#[allow(clippy::redundant_allocation)]
fn pick_up<T>(
    cell: &RefCell<(u64, Rc<Arc<T>>)>,
    generation: u64,
    load: impl FnOnce() -> Arc<T>,
) -> (Rc<Arc<T>>, bool) {
    {
        let cur = cell.borrow();
        if cur.0 == generation {
            return (cur.1.clone(), false);
        }
    }
    let fresh = Rc::new(load());
    *cell.borrow_mut() = (generation, fresh.clone());
    (fresh, true)
}

/// UTC hour of day and weekday (0 = Monday) of the system clock.
fn hour_and_weekday() -> (i64, i64) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    // 1970-01-01 was a Thursday (weekday 3 counting from Monday = 0).
    (((secs % 86_400) / 3600) as i64, ((days + 3) % 7) as i64)
}

/// Who is asking: a 2026-07-28 agent (stateless) or a 2025-11-25 session.
enum Agent {
    Modern {
        /// The agent's `_meta` without the keys addressed to the gateway, copied only for
        /// `subscriptions/listen`, whose upstream requests the gateway builds itself. Every other request
        /// of a 2026-07-28 agent carries its own `_meta` (`transport::era` refuses one without), which
        /// goes upstream in place.
        meta: Option<Value>,
        /// The request's `Mcp-Param-*` headers (SEP-2243: tool arguments mirrored for intermediaries),
        /// passed on to a 2026-07-28 upstream, which checks them against the body.
        params: Vec<(String, String)>,
        on: OnBehalf,
        /// Its gateway session (`Core::modern_session`); `None` where nothing is governed.
        session: Option<SessionId>,
    },
    Session {
        id: SessionId,
        session: Box<Session>,
        on: OnBehalf,
    },
}

impl Agent {
    fn is_modern(&self) -> bool {
        matches!(self, Agent::Modern { .. })
    }

    fn on(&self) -> &OnBehalf {
        match self {
            Agent::Modern { on, .. } | Agent::Session { on, .. } => on,
        }
    }
}

/// What this core has learned about the revisions one upstream speaks (`None`: not asked yet).
#[derive(Clone, Copy, Debug, Default)]
struct Eras {
    /// Answers `server/discover` with 2026-07-28 among its versions.
    modern: Option<bool>,
    /// Accepts a 2025-11-25 `initialize`.
    legacy: Option<bool>,
}

/// Legacy upstream sessions opened for one stateless request, closed when it is done.
type Ephemeral = Vec<(usize, String)>;

impl Core {
    pub fn new(
        id: u16,
        shared: Arc<Shared>,
        pool: Pool,
        peers: Vec<flume::Sender<SessionMsg>>,
        metrics: Arc<CoreShared>,
    ) -> Self {
        let l = &shared.config.limits;
        let limits = portcullis_pipeline::session::SessionLimits {
            session_idle: l.session_idle.0,
            session_duration_max: l.session_duration_max.0,
            sessions_per_core_max: l.sessions_per_core_max,
            streams_per_session_max: l.streams_per_session_max,
        };
        let generation = shared.served.generation();
        let served = shared.served.current();
        let keys = (
            shared.served.keys_generation(),
            Rc::new(shared.served.keys()),
        );
        let slots = shared.served.slots_from(0);
        let n = slots.len();
        let mut shard = SessionShard::new(limits);
        let mut holds = Holds::default();
        let mut persisted = std::collections::HashMap::new();
        {
            let mut restored = shared
                .restored
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(mine) = restored.sessions.get_mut(usize::from(id)) {
                for (sid, s) in mine.drain(..) {
                    persisted.insert(sid, s.last_active);
                    shard.restore(sid, s);
                }
            }
            for (which, until) in &restored.holds {
                holds.hold(which, *until);
            }
        }
        let metrics = CoreMetrics::new(metrics, &shared.config.metrics);
        let shared_idle_poll = shared.config.idle_poll.0;
        Core {
            id,
            shared,
            pool: Rc::new(pool),
            sessions: RefCell::new(shard),
            holds: RefCell::new(holds),
            leases: RefCell::default(),
            persisted: RefCell::new(persisted),
            peers,
            metrics,
            upstream_eras: RefCell::new(vec![Eras::default(); n]),
            slots: RefCell::new(slots),
            served: RefCell::new((generation, Rc::new(served))),
            keys: RefCell::new(keys),
            discovered: RefCell::new((String::new(), std::collections::HashMap::new())),
            decisions: RefCell::new((String::new(), std::collections::HashMap::new())),
            merged: RefCell::new((String::new(), govern::MergedSets::default())),
            credentials: RefCell::default(),
            parser: RefCell::default(),
            digest_buf: RefCell::default(),
            in_flight: Cell::new(0),
            connections: Cell::new(0),
            idle_poll: crate::runtime::IdlePoll::new(shared_idle_poll),
        }
    }

    /// A request (of any transport) begins on this core.
    pub fn request_started(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
        self.idle_poll.touch();
    }

    /// A request on this core has been answered (or given up).
    pub fn request_finished(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        self.idle_poll.touch();
    }

    /// What this request is served from: the snapshot published last, picked up here when the generation
    /// moved (one atomic load otherwise). The caller holds it to the end of the request.
    fn served(&self) -> LocalServed {
        let (served, moved) = pick_up(&self.served, self.shared.served.generation(), || {
            self.shared.served.current()
        });
        if moved {
            let mut slots = self.slots.borrow_mut();
            let fresh = self.shared.served.slots_from(slots.len());
            slots.extend(fresh);
            let n = slots.len();
            self.upstream_eras.borrow_mut().resize(n, Eras::default());
        }
        served
    }

    /// The API keys accepted now: picked up like `served`, one atomic load when nothing changed.
    fn keys(&self) -> LocalKeys {
        pick_up(&self.keys, self.shared.served.keys_generation(), || {
            self.shared.served.keys()
        })
        .0
    }

    /// Authenticate a request on `/mcp` and admit its agent against the snapshot it is served from.
    /// Static mode governs nothing and admits everyone.
    async fn identify(&self, sv: &Served, head: &RequestHead) -> Result<Caller, DenyReason> {
        if !self.shared.served.managed() {
            // Nothing governed: no policy reads the context, so none of it is gathered.
            return Ok(Caller {
                who: None,
                token: None,
                kind: None,
                identity: None,
                transport: head.transport,
                client: String::new(),
                hour: 0,
                weekday: 0,
            });
        }
        let mut bearer = None;
        let mut kind = "api_key";
        let mut identity = None;
        let agent = match govern::credential(head.header_str("authorization")) {
            govern::Credential::ApiKey(key) => {
                let agent = self.keys().authenticate(key)?.to_owned();
                identity = govern::key_id(key).map(|id| format!("key:{id}"));
                agent
            }
            govern::Credential::Jwt(token) if !self.shared.identity.is_empty() => {
                // Why is counted (`portcullis_jwt_refused_total`), not logged: a token storm must not
                // become a log storm, and the agent learns only `unauthenticated`.
                let agent = self
                    .shared
                    .identity
                    .verify(token)
                    .await
                    .map_err(|_| DenyReason::Unauthenticated)?;
                bearer = Some(Secret::new(token.to_owned()));
                kind = "jwt";
                agent
            }
            // No bearer: the connection's verified client certificate, if it names an agent.
            govern::Credential::Missing if head.cert_agent.is_some() => {
                kind = "certificate";
                head.cert_agent.as_deref().unwrap_or_default().to_owned()
            }
            govern::Credential::Jwt(_)
            | govern::Credential::Missing
            | govern::Credential::Unsupported => return Err(DenyReason::Unauthenticated),
        };
        sv.governor.admit(&agent)?;
        let (hour, weekday) = hour_and_weekday();
        Ok(Caller {
            who: Some(agent),
            token: bearer,
            kind: Some(kind),
            identity: identity.or_else(|| Some(kind.to_owned())),
            transport: head.transport,
            client: head.peer.map(|p| p.ip().to_string()).unwrap_or_default(),
            hour,
            weekday,
        })
    }

    /// Moves whenever what agents may list changes: the published snapshot, or a pinned tool withheld or
    /// given back.
    fn list_version(&self) -> (u64, u64) {
        let served = self.served();
        let generation = self.served.borrow().0;
        (
            generation,
            served.pins.as_ref().map_or(0, |p| p.drift_epoch()),
        )
    }

    /// The name of an upstream slot, for logs and for namespacing what it sends.
    fn slot_name(&self, up: usize) -> String {
        self.slots
            .borrow()
            .get(up)
            .map_or_else(String::new, |s| s.name.clone())
    }

    fn parse_limits(&self) -> ParseLimits {
        ParseLimits {
            json_depth_max: self.shared.config.limits.json_depth_max,
        }
    }

    /// Parse a JSON-RPC message in this core's kept parser buffers.
    fn parse(&self, body: &mut [u8], limits: &ParseLimits) -> Result<Message, DenyReason> {
        jsonrpc::parse_in(body, limits, &mut self.parser.borrow_mut())
    }

    /// The hex BLAKE3 digest of a call's arguments as compact JSON (the audit record's
    /// `arguments_blake3`): serialized once into a kept buffer and hashed in one go, which is several
    /// times cheaper than feeding the hasher each small piece the serializer writes.
    fn arguments_digest(&self, args: &Value) -> String {
        let mut buf = self.digest_buf.borrow_mut();
        buf.clear();
        let _ = args.write(&mut *buf);
        let hex = blake3::hash(&buf).to_hex().to_string();
        // The parser's bound on what a core keeps between requests holds here too.
        if buf.capacity() > jsonrpc::Scratch::KEEP_BYTES {
            *buf = Vec::new();
        }
        hex
    }

    // ---- sessions: local shard, or a message to the owning core ----

    /// Where session `id` lives: here (`Some(None)`), on another core, or nowhere (another node's).
    /// Restarted with fewer cores, a stored session of core `c` lives on `c % cores` (`persist::restore`).
    fn owner(&self, id: SessionId) -> Option<Option<&flume::Sender<SessionMsg>>> {
        if id.node != self.shared.config.node_id {
            return None;
        }
        let core = usize::from(id.core) % self.peers.len().max(1);
        if core == usize::from(self.id) {
            return Some(None);
        }
        self.peers.get(core).map(Some)
    }

    async fn session_touch(&self, id: SessionId) -> Result<Session, SessionError> {
        match self.owner(id) {
            None => Err(SessionError::NotFound),
            Some(None) => self
                .sessions
                .borrow_mut()
                .touch(id, Instant::now())
                .map(|s| s.clone()),
            Some(Some(tx)) => {
                let (reply, rx) = flume::bounded(1);
                if tx
                    .send_async(SessionMsg::Touch {
                        id,
                        now: Instant::now(),
                        reply,
                    })
                    .await
                    .is_err()
                {
                    return Err(SessionError::NotFound);
                }
                rx.recv_async().await.unwrap_or(Err(SessionError::NotFound))
            }
        }
    }

    async fn session_bind(
        &self,
        id: SessionId,
        upstream: usize,
        binding: UpstreamBinding,
    ) -> Result<(), Option<UpstreamBinding>> {
        match self.owner(id) {
            None => Err(None),
            Some(None) => self.sessions.borrow_mut().bind(id, upstream, binding),
            Some(Some(tx)) => {
                let (reply, rx) = flume::bounded(1);
                if tx
                    .send_async(SessionMsg::Bind {
                        id,
                        upstream,
                        binding,
                        reply,
                    })
                    .await
                    .is_err()
                {
                    return Err(None);
                }
                rx.recv_async().await.unwrap_or(Err(None))
            }
        }
    }

    async fn session_unbind(&self, id: SessionId, upstream: usize) {
        match self.owner(id) {
            None => {}
            Some(None) => self.sessions.borrow_mut().unbind(id, upstream),
            Some(Some(tx)) => {
                let _ = tx.send_async(SessionMsg::Unbind { id, upstream }).await;
            }
        }
    }

    async fn session_close(&self, id: SessionId) -> Option<Session> {
        match self.owner(id) {
            None => None,
            Some(None) => self.sessions.borrow_mut().close(id),
            Some(Some(tx)) => {
                let (reply, rx) = flume::bounded(1);
                tx.send_async(SessionMsg::Close { id, reply }).await.ok()?;
                rx.recv_async().await.ok().flatten()
            }
        }
    }

    /// The core owning a lease's session: every core computes the same one, so a lease seen on several
    /// cores is one session.
    fn lease_owner(&self, lease: &str) -> u16 {
        let n = self.peers.len().max(1) as u64;
        // FNV-1a: the same on every core and every run.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in lease.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % n) as u16
    }

    /// A lease session another core owns, as remembered here: its use is counted and reported now and
    /// then. `None` when not remembered or possibly ended (then the owner is asked).
    fn cached_lease(&self, lease: &str, who: &str, now: Instant) -> Option<SessionId> {
        let mut leases = self.leases.borrow_mut();
        let e = leases.get_mut(lease)?;
        if e.agent != who
            || now.saturating_duration_since(e.reported) >= e.idle
            || now.saturating_duration_since(e.created) >= e.duration_max
        {
            leases.remove(lease);
            return None;
        }
        e.pending += 1;
        if now.saturating_duration_since(e.reported) >= LEASE_REPORT_INTERVAL {
            if let Some(tx) = self.peers.get(usize::from(e.id.core)) {
                // A report lost to a full queue only leaves the owner's clock a little behind.
                let _ = tx.try_send(SessionMsg::Seen {
                    id: e.id,
                    at: now,
                    requests: e.pending,
                });
            }
            e.reported = now;
            e.pending = 0;
        }
        Some(e.id)
    }

    /// Ask `owner` for a lease's session (opening it with `open`), and remember the answer here.
    async fn ask_lease(
        &self,
        owner: u16,
        lease: &str,
        who: &str,
        identity: Option<&str>,
        open: Option<(SessionId, Opening)>,
        now: Instant,
    ) -> Result<SessionId, SessionError> {
        if owner == self.id {
            let held = self.sessions.borrow_mut().lease(now, lease, who, open)?;
            if held.opened {
                inc(&self.metrics.shared.counters.sessions_opened);
            }
            return Ok(held.id);
        }
        let tx = self
            .peers
            .get(usize::from(owner))
            .ok_or(SessionError::NotFound)?;
        let (reply, rx) = flume::bounded(1);
        let msg = SessionMsg::Lease {
            lease: lease.to_owned(),
            agent: who.to_owned(),
            open: open.map(Box::new),
            now,
            reply,
        };
        tx.send_async(msg)
            .await
            .map_err(|_| SessionError::NotFound)?;
        let held = rx
            .recv_async()
            .await
            .unwrap_or(Err(SessionError::NotFound))?;
        let mut leases = self.leases.borrow_mut();
        if leases.len() >= LEASE_CACHE_MAX {
            leases.clear();
        }
        leases.insert(
            lease.to_owned(),
            LeaseEntry {
                id: held.id,
                agent: who.to_owned(),
                identity: identity.map(str::to_owned),
                created: held.created,
                idle: held.idle,
                duration_max: held.duration_max,
                reported: now,
                pending: 0,
            },
        );
        Ok(held.id)
    }

    /// The gateway session of a 2026-07-28 request: the one its `portcullis-session` header names (the
    /// client keeps continuity), else its credential lease's, opened on the lease's first request.
    /// `None` where nothing is governed (no agent, no lease).
    async fn modern_session(
        &self,
        sv: &Served,
        head: &RequestHead,
        caller: &Caller,
    ) -> Result<Option<SessionId>, DenyReason> {
        let Some(who) = &caller.who else {
            return Ok(None);
        };
        if let Some(named) = head.header_str(SESSION_HEADER) {
            let id = SessionId::parse(named).ok_or(DenyReason::SessionNotFound)?;
            let s = self.session_touch(id).await.map_err(session_refusal)?;
            // A session id is no credential: another agent's session looks like no session.
            if s.agent.as_deref() != Some(who.as_str()) {
                return Err(DenyReason::SessionAgentMismatch);
            }
            return Ok(Some(id));
        }
        let Some(lease) = caller.lease() else {
            return Ok(None);
        };
        let lease = lease.as_str();
        let now = Instant::now();
        let owner = self.lease_owner(lease);
        let identity = caller.identity.as_deref();
        if owner != self.id {
            if let Some(id) = self.cached_lease(lease, who, now) {
                return Ok(Some(id));
            }
        }
        if let Ok(id) = self.ask_lease(owner, lease, who, identity, None, now).await {
            return Ok(Some(id));
        }
        // The lease's first request: a new session, within the agent's bounds.
        let bounds = sv.session_limits(who);
        if self.at_session_limit(who, &bounds).await {
            return Err(DenyReason::SessionLimit);
        }
        let id = self.new_session_id(owner)?;
        let opening = Opening {
            agent: Some(who.clone()),
            identity: caller.identity.clone(),
            transport: caller.transport,
            lease: Some(lease.to_owned()),
            ..Opening::new(Revision::V2026_07_28, self.sessions.borrow().limits())
        }
        .bounded_by(&bounds);
        match self
            .ask_lease(owner, lease, who, identity, Some((id, opening)), now)
            .await
        {
            Ok(id) => Ok(Some(id)),
            Err(SessionError::Full) => Err(DenyReason::Overloaded),
            Err(e) => Err(session_refusal(e)),
        }
    }

    /// Count a stream session `id` opens; the slot gives it back when dropped, however the stream ends.
    async fn stream_slot(&self, id: SessionId) -> Result<StreamSlot<'_>, DenyReason> {
        let r = match self.owner(id) {
            None => Err(SessionError::NotFound),
            Some(None) => self.sessions.borrow_mut().stream_open(id),
            Some(Some(tx)) => {
                let (reply, rx) = flume::bounded(1);
                match tx.send_async(SessionMsg::StreamOpen { id, reply }).await {
                    Ok(()) => rx.recv_async().await.unwrap_or(Err(SessionError::NotFound)),
                    Err(_) => Err(SessionError::NotFound),
                }
            }
        };
        match r {
            Ok(()) => Ok(StreamSlot { core: self, id }),
            Err(SessionError::StreamLimit) => Err(DenyReason::StreamLimit),
            Err(e) => Err(session_refusal(e)),
        }
    }

    /// Whether an operator's hold refuses this caller now.
    fn held(&self, caller: &Caller) -> bool {
        let Some(who) = &caller.who else {
            return false;
        };
        let mut holds = self.holds.borrow_mut();
        !holds.is_empty() && holds.holds(who, caller.identity.as_deref(), Instant::now())
    }

    /// Serve session operations other cores send to this one.
    pub async fn serve_session_messages(self: Rc<Self>, rx: flume::Receiver<SessionMsg>) {
        while let Ok(msg) = rx.recv_async().await {
            match msg {
                SessionMsg::Touch { id, now, reply } => {
                    let r = self.sessions.borrow_mut().touch(id, now).map(|s| s.clone());
                    let _ = reply.send(r);
                }
                SessionMsg::Bind {
                    id,
                    upstream,
                    binding,
                    reply,
                } => {
                    let r = self.sessions.borrow_mut().bind(id, upstream, binding);
                    let _ = reply.send(r);
                }
                SessionMsg::Unbind { id, upstream } => {
                    self.sessions.borrow_mut().unbind(id, upstream)
                }
                SessionMsg::Close { id, reply } => {
                    let r = self.sessions.borrow_mut().close(id);
                    let _ = reply.send(r);
                }
                SessionMsg::CountAgent { agent, reply } => {
                    let _ = reply.send(self.sessions.borrow().count_agent(&agent));
                }
                SessionMsg::List { reply } => {
                    let now = Instant::now();
                    let list = self
                        .sessions
                        .borrow()
                        .list()
                        .map(|(id, s)| SessionView {
                            core: self.id,
                            ..SessionView::of(*id, s, now)
                        })
                        .collect();
                    let _ = reply.send(list);
                }
                SessionMsg::Revoke {
                    which,
                    hold_until,
                    reply,
                } => {
                    let now = Instant::now();
                    if let Some(until) = hold_until {
                        self.holds.borrow_mut().hold(&which, until);
                    }
                    self.leases.borrow_mut().retain(|_, e| {
                        !which.names(e.id, Some(e.agent.as_str()), e.identity.as_deref())
                    });
                    let gone = self.sessions.borrow_mut().revoke(&which, now);
                    // Off the store before the operator hears of it (the admin API flushes).
                    if let Some(p) = &self.shared.persist {
                        let mut done = self.persisted.borrow_mut();
                        for (id, _) in &gone {
                            done.remove(id);
                            p.send(portcullis_storage::sessions::Change::Remove {
                                id: id.to_string(),
                            });
                        }
                    }
                    let views = gone
                        .iter()
                        .map(|(id, s)| SessionView::of(*id, s, now))
                        .collect();
                    if !gone.is_empty() {
                        // Streams anywhere look again whether their session still stands.
                        self.shared
                            .revocations
                            .fetch_add(1, std::sync::atomic::Ordering::Release);
                    }
                    let _ = reply.send(views);
                    for (_, s) in gone {
                        self.end_upstream_sessions(&s, None).await;
                    }
                }
                SessionMsg::Lift { which, reply } => {
                    let _ = reply.send(self.holds.borrow_mut().lift(&which));
                }
                SessionMsg::Holds { reply } => {
                    let now = Instant::now();
                    let list = self.holds.borrow().list(now);
                    let _ = reply.send(
                        list.into_iter()
                            .map(|(kind, name, left)| (kind, name, left.as_secs()))
                            .collect(),
                    );
                }
                SessionMsg::Lease {
                    lease,
                    agent,
                    open,
                    now,
                    reply,
                } => {
                    let r = self
                        .sessions
                        .borrow_mut()
                        .lease(now, &lease, &agent, open.map(|o| *o));
                    if r.is_ok_and(|h| h.opened) {
                        inc(&self.metrics.shared.counters.sessions_opened);
                    }
                    let _ = reply.send(r);
                }
                SessionMsg::Seen { id, at, requests } => {
                    self.sessions.borrow_mut().seen(id, at, requests);
                }
                SessionMsg::StreamOpen { id, reply } => {
                    let _ = reply.send(self.sessions.borrow_mut().stream_open(id));
                }
                SessionMsg::StreamClosed { id } => {
                    self.sessions.borrow_mut().stream_closed(id);
                }
            }
        }
    }

    /// Write the sessions that changed since the last call, and remove those gone (the core's timer
    /// calls it every `sessions.persist_interval`).
    pub fn persist_sessions(&self) {
        let Some(p) = &self.shared.persist else {
            return;
        };
        let now = Instant::now();
        let now_ms = crate::control::now_ms();
        let shard = self.sessions.borrow();
        let mut done = self.persisted.borrow_mut();
        for (id, s) in shard.list() {
            if done.get(id) == Some(&s.last_active) {
                continue;
            }
            let p_rec = portcullis_pipeline::session::Persisted::of(s, now, now_ms);
            p.send(portcullis_storage::sessions::Change::Put {
                id: id.to_string(),
                record: serde_json::to_vec(&p_rec).unwrap_or_default(),
            });
            done.insert(*id, s.last_active);
        }
        if done.len() > shard.len() {
            done.retain(|id, _| {
                let live = shard.contains(*id);
                if !live {
                    p.send(portcullis_storage::sessions::Change::Remove { id: id.to_string() });
                }
                live
            });
        }
    }

    /// Drop expired sessions and end their upstream sessions (called by the core's timer).
    pub async fn expire_sessions(&self) {
        let dead = self.sessions.borrow_mut().expire(Instant::now());
        for (_, s) in dead {
            self.end_upstream_sessions(&s, None).await;
        }
    }

    /// `on` is the request that ended the session, or `None` when it expired: then only the session's
    /// agent is known, which serves every mode but `delegated` (no token to exchange: those upstream
    /// sessions are left to expire on their own).
    async fn end_upstream_sessions(&self, s: &Session, on: Option<&OnBehalf>) {
        let expired = OnBehalf {
            agent: s.agent.clone(),
            token: None,
        };
        let on = on.unwrap_or(&expired);
        for (up, b) in &s.upstreams {
            if let Some(sid) = &b.session_id {
                self.delete_upstream_session(*up, on, sid).await;
            }
        }
    }

    /// Whether `agent` holds as many live sessions as its bounds (else the gateway's) allow.
    async fn at_session_limit(
        &self,
        agent: &str,
        bounds: &portcullis_pipeline::session::AgentSessionLimits,
    ) -> bool {
        let max = bounds
            .max
            .unwrap_or(self.shared.config.limits.sessions_per_agent_max);
        self.agent_sessions(agent).await >= max
    }

    /// Live sessions of `agent` on every core (each core counts its own; a core that does not answer
    /// counts none, so a stuck core cannot lock an agent out).
    async fn agent_sessions(&self, agent: &str) -> usize {
        let mut n = self.sessions.borrow().count_agent(agent);
        for (core, tx) in self.peers.iter().enumerate() {
            if core == usize::from(self.id) {
                continue;
            }
            let (reply, rx) = flume::bounded(1);
            let msg = SessionMsg::CountAgent {
                agent: agent.to_owned(),
                reply,
            };
            if tx.send_async(msg).await.is_ok() {
                n += rx.recv_async().await.unwrap_or(0);
            }
        }
        n
    }

    /// The GET-stream events of session `sid` after event `last` (a `Last-Event-ID`); `None` when the
    /// buffer cannot say (evicted, never sent, not a number).
    fn replay_after(&self, sid: SessionId, last: &str) -> Option<Vec<(u64, Vec<u8>)>> {
        let last = last.trim().parse::<u64>().ok()?;
        let replays = self
            .shared
            .replays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match replays.get(&sid) {
            Some(r) => r.after(last).ok(),
            None if last == 0 => Some(Vec::new()),
            None => None,
        }
    }

    /// One message of a POST's response stream as an SSE event: kept in the stream's buffer and
    /// carrying its event id when the stream is resumable, plain otherwise.
    fn frame_post_event(&self, resumable: Option<(SessionId, u32)>, data: Vec<u8>) -> Vec<u8> {
        let id = resumable.and_then(|(sid, stream)| {
            let n = self.post_streams().push(sid, stream, data.clone())?;
            Some(portcullis_pipeline::replay::post_event_id(stream, n))
        });
        sse_event(&data, id)
    }

    fn post_streams(&self) -> std::sync::MutexGuard<'_, portcullis_pipeline::replay::PostStreams> {
        self.shared
            .post_streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keep one GET-stream event of session `sid` for resumption; its event id.
    fn remember(&self, sid: SessionId, data: Vec<u8>) -> u64 {
        let mut replays = self
            .shared
            .replays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if replays.len() >= REPLAYS_MAX && !replays.contains_key(&sid) {
            let drop: Vec<SessionId> = replays.keys().take(REPLAYS_MAX / 2).copied().collect();
            for k in drop {
                replays.remove(&k);
            }
        }
        replays.entry(sid).or_default().push(data)
    }

    /// A fresh id for a session core `core` owns.
    fn new_session_id(&self, core: u16) -> Result<SessionId, DenyReason> {
        let mut random = [0u8; 16];
        // A CSPRNG failure must not produce a guessable id: refuse the session instead.
        getrandom::fill(&mut random).map_err(|_| DenyReason::Overloaded)?;
        Ok(SessionId {
            node: self.shared.config.node_id,
            core,
            random,
        })
    }

    // ---- the HTTP entry point ----

    /// Answer one request on the MCP listener: `/mcp`, and the protected-resource metadata (RFC 9728)
    /// that a 401 points agents at. Returns whether the connection may be kept alive.
    pub async fn route<R: Reply>(&self, conn: &mut R, head: &RequestHead, body: Vec<u8>) -> bool {
        match head.path.split('?').next().unwrap_or("") {
            "/mcp" => self.handle(conn, head, body).await,
            PROTECTED_RESOURCE_PATH | PROTECTED_RESOURCE_MCP_PATH if head.method == "GET" => {
                let id = &self.shared.identity;
                let doc = serde_json::json!({
                    "resource": id.resource.first().cloned().unwrap_or_else(|| resource_uri(head)),
                    "bearer_methods_supported": ["header"],
                    "resource_name": "Portcullis MCP gateway",
                    "authorization_servers": id.issuers(),
                });
                inc(&self.metrics.shared.counters.responses_ok);
                let resp = Response::new(200)
                    .header("content-type", "application/json")
                    .header("cache-control", "max-age=300");
                conn.full(resp, doc.to_string().as_bytes(), false).await
            }
            _ => {
                self.refuse(conn, None, false, DenyReason::NotFound.into(), &[])
                    .await
            }
        }
    }

    /// Answer one request on `/mcp`. Returns whether the connection may be kept alive. Every response
    /// names the snapshot the request was served from (`portcullis-snapshot`).
    pub async fn handle<R: Reply>(&self, conn: &mut R, head: &RequestHead, body: Vec<u8>) -> bool {
        let sv = self.served();
        let event = portcullis_pipeline::audit::Event {
            at_ms: crate::control::now_ms(),
            core: self.id,
            client: head.peer.map(|p| p.ip().to_string()).unwrap_or_default(),
            transport: head.transport.to_owned(),
            snapshot: sv.label.clone(),
            bytes_in: body.len() as u64,
            method: match head.method.as_str() {
                "POST" => None,
                other => Some(other.to_owned()),
            },
            ..Default::default()
        };
        let mut conn = Stamped {
            inner: conn,
            metrics: &self.metrics,
            label: &sv.label,
            trail: self.shared.audit.core(self.id),
            event,
            t0: Instant::now(),
            committed: false,
            session: None,
            alt_svc: self
                .shared
                .alt_svc
                .as_deref()
                .filter(|_| head.secure && head.transport != "h3"),
        };
        self.handle_served(&mut conn, &sv, head, body).await
    }

    async fn handle_served<R: Reply>(
        &self,
        conn: &mut R,
        sv: &Served,
        head: &RequestHead,
        body: Vec<u8>,
    ) -> bool {
        inc(&self.metrics.shared.counters.requests);
        if let Some(origin) = head.header_str("origin") {
            if !origin_allowed(origin, &self.shared.config.listen.allowed_origins) {
                return self
                    .refuse(conn, None, false, DenyReason::OriginNotAllowed.into(), &[])
                    .await;
            }
        }
        let caller = match self.identify(sv, head).await {
            Ok(c) => c,
            Err(r) => {
                let challenge = format!(
                    "Bearer resource_metadata=\"{}\"",
                    protected_resource_url(head)
                );
                let headers = [("www-authenticate", challenge)];
                let headers: &[(&'static str, String)] = if r == DenyReason::Unauthenticated {
                    &headers
                } else {
                    &[]
                };
                return self.refuse(conn, None, false, r.into(), headers).await;
            }
        };
        if let Some(a) = conn.audit() {
            a.agent.clone_from(&caller.who);
            a.identity = caller.kind.map(str::to_owned);
            a.owner = caller
                .who
                .as_deref()
                .and_then(|w| sv.agent_owner(w))
                .map(str::to_owned);
        }
        if self.held(&caller) {
            return self
                .refuse(conn, None, false, DenyReason::AccessRevoked.into(), &[])
                .await;
        }
        if let Some(who) = &caller.who {
            if let Err((limit, wait)) = sv.take(who, None) {
                return self.rate_refused(conn, None, false, limit, wait).await;
            }
        }
        match head.method.as_str() {
            "POST" => self.post(conn, sv, head, body, &caller).await,
            "GET" => {
                if let Err(r) = frame::check_accept_get(head.header("accept")) {
                    return self.refuse(conn, None, false, r.into(), &[]).await;
                }
                self.listen(conn, sv, head, &caller).await
            }
            "DELETE" => self.delete(conn, head, &caller).await,
            _ => {
                self.refuse(
                    conn,
                    None,
                    false,
                    DenyReason::MethodNotAllowed.into(),
                    &[("allow", "POST, DELETE".into())],
                )
                .await
            }
        }
    }

    async fn delete<R: Reply>(&self, conn: &mut R, head: &RequestHead, caller: &Caller) -> bool {
        let Some(sid) = head.header_str("mcp-session-id") else {
            return self
                .refuse(conn, None, false, DenyReason::SessionRequired.into(), &[])
                .await;
        };
        let Some(id) = SessionId::parse(sid) else {
            return self
                .refuse(conn, None, false, DenyReason::SessionNotFound.into(), &[])
                .await;
        };
        match self.session_touch(id).await {
            Ok(s) if s.agent == caller.who => {}
            _ => {
                return self
                    .refuse(conn, None, false, DenyReason::SessionNotFound.into(), &[])
                    .await
            }
        }
        match self.session_close(id).await {
            None => {
                self.refuse(conn, None, false, DenyReason::SessionNotFound.into(), &[])
                    .await
            }
            Some(s) => {
                self.end_upstream_sessions(&s, Some(&caller.on_behalf()))
                    .await;
                inc(&self.metrics.shared.counters.responses_ok);
                conn.full(Response::new(200), b"", false).await
            }
        }
    }

    async fn post<R: Reply>(
        &self,
        conn: &mut R,
        sv: &Served,
        head: &RequestHead,
        mut body: Vec<u8>,
        caller: &Caller,
    ) -> bool {
        if let Err(r) = frame::check_content_type(head.header("content-type")) {
            return self.refuse(conn, None, false, r.into(), &[]).await;
        }
        if let Err(r) = frame::check_accept_post(head.header("accept")) {
            return self.refuse(conn, None, false, r.into(), &[]).await;
        }
        let msg = match self.parse(&mut body, &self.parse_limits()) {
            Ok(m) => m,
            Err(r) => return self.refuse(conn, None, false, r.into(), &[]).await,
        };
        let id = match &msg {
            Message::Request(r) => Some(r.id.clone()),
            _ => None,
        };
        let headers = McpHeaders {
            protocol_version: head.header_str("mcp-protocol-version"),
            session_id: head.header_str("mcp-session-id"),
            method: head.header_str("mcp-method"),
            name: head.header_str("mcp-name"),
        };
        if let Some(a) = conn.audit() {
            if let Message::Request(r) = &msg {
                a.request_id = Some(match &r.id {
                    Id::Number(n) => n.to_string(),
                    Id::String(s) => format!("{s:?}"),
                });
            }
            a.method = Some(match &msg {
                Message::Request(r) => r.method.clone(),
                Message::Notification(n) => n.method.clone(),
                Message::Response(_) => "(response)".to_owned(),
            });
        }
        let era = match transport::classify_post(&headers, &msg) {
            Ok(e) => e,
            Err(refusal) => {
                let modern = transport::meta(&msg)
                    .is_some_and(|m| m.get(transport::META_PROTOCOL_VERSION).is_some());
                return self.refuse(conn, id, modern, refusal, &[]).await;
            }
        };
        let agent = match era {
            Era::Initialize => {
                let Message::Request(req) = msg else {
                    return self
                        .refuse(conn, None, false, DenyReason::InvalidRequest.into(), &[])
                        .await;
                };
                return self.initialize(conn, sv, req, caller).await;
            }
            Era::Modern(_) => {
                let session = match self.modern_session(sv, head, caller).await {
                    Ok(s) => s,
                    Err(r) => return self.refuse(conn, id, true, r.into(), &[]).await,
                };
                if let Some(sid) = session {
                    conn.name_session(sid);
                }
                if let Some(a) = conn.audit() {
                    a.revision = Some(Revision::V2026_07_28.as_str().to_owned());
                    a.session = session.map(|s| s.to_string());
                }
                Agent::Modern {
                    meta: match &msg {
                        Message::Request(r) if r.method == "subscriptions/listen" => {
                            // What goes upstream on the agent's behalf never carries the keys addressed
                            // to the gateway.
                            let mut m =
                                transport::meta(&msg).cloned().unwrap_or_else(Value::object);
                            mcp::strip_gateway_keys(&mut m);
                            Some(m)
                        }
                        _ => None,
                    },
                    params: param_headers(head),
                    on: caller.on_behalf(),
                    session,
                }
            }
            Era::Session(sid) => match self.session_touch(sid).await {
                // A session id is no credential: another agent's session looks like no session.
                Ok(s) if s.agent != caller.who => {
                    return self
                        .refuse(
                            conn,
                            id,
                            false,
                            DenyReason::SessionAgentMismatch.into(),
                            &[],
                        )
                        .await
                }
                Ok(s) => {
                    if let Some(a) = conn.audit() {
                        a.session = Some(sid.to_string());
                        a.revision = Some(s.revision.as_str().to_owned());
                    }
                    Agent::Session {
                        id: sid,
                        session: Box::new(s),
                        on: caller.on_behalf(),
                    }
                }
                Err(e) => {
                    return self
                        .refuse(conn, id, false, session_refusal(e).into(), &[])
                        .await
                }
            },
        };
        match msg {
            Message::Request(req) => self.request(conn, sv, &agent, req, caller).await,
            Message::Notification(n) => {
                if let Agent::Session { session, .. } = &agent {
                    if n.method.starts_with("notifications/")
                        && n.method != "notifications/initialized"
                    {
                        self.broadcast_notification(agent.on(), session, &Message::Notification(n))
                            .await;
                    }
                }
                inc(&self.metrics.shared.counters.responses_ok);
                conn.full(Response::new(202), b"", false).await
            }
            Message::Response(resp) => self.answer_upstream_request(conn, sv, &agent, resp).await,
        }
    }

    async fn initialize<R: Reply>(
        &self,
        conn: &mut R,
        sv: &Served,
        req: Request,
        caller: &Caller,
    ) -> bool {
        let params = req.params.as_ref();
        let requested = params
            .and_then(|p| p.get("protocolVersion"))
            .and_then(|v| v.as_str());
        let revision = mcp::negotiate_initialize(requested);
        let caps = params.and_then(|p| p.get("capabilities")).cloned();
        let info = params.and_then(|p| p.get("clientInfo")).cloned();
        let bounds = caller
            .who
            .as_deref()
            .map(|w| sv.session_limits(w))
            .unwrap_or_default();
        if let Some(who) = &caller.who {
            if self.at_session_limit(who, &bounds).await {
                return self
                    .refuse(
                        conn,
                        Some(req.id),
                        false,
                        DenyReason::SessionLimit.into(),
                        &[],
                    )
                    .await;
            }
        }
        let sid = match self.new_session_id(self.id) {
            Ok(s) => s,
            Err(r) => return self.refuse(conn, Some(req.id), false, r.into(), &[]).await,
        };
        let opening = Opening {
            client_capabilities: caps,
            client_info: info,
            agent: caller.who.clone(),
            identity: caller.identity.clone(),
            transport: caller.transport,
            ..Opening::new(revision, self.sessions.borrow().limits())
        }
        .bounded_by(&bounds);
        let opened = self
            .sessions
            .borrow_mut()
            .open(Instant::now(), sid, opening);
        if opened.is_err() {
            return self
                .refuse(
                    conn,
                    Some(req.id),
                    false,
                    DenyReason::Overloaded.into(),
                    &[],
                )
                .await;
        }
        inc(&self.metrics.shared.counters.sessions_opened);
        if let Some(a) = conn.audit() {
            a.session = Some(sid.to_string());
            a.revision = Some(revision.as_str().to_owned());
        }
        let result = mcp::initialize_result(&self.shared.naming, revision, VERSION);
        let msg = Message::Response(jsonrpc::Response {
            id: Some(req.id),
            outcome: Ok(result),
        });
        let resp = Response::new(200)
            .header("content-type", "application/json")
            .header("mcp-session-id", sid.to_string());
        inc(&self.metrics.shared.counters.responses_ok);
        conn.full(resp, &jsonrpc::encode(&msg), false).await
    }

    async fn request<R: Reply>(
        &self,
        conn: &mut R,
        sv: &Served,
        agent: &Agent,
        req: Request,
        caller: &Caller,
    ) -> bool {
        let modern = agent.is_modern();
        if modern && req.method == "subscriptions/listen" {
            return self.subscriptions_listen(conn, sv, agent, req).await;
        }
        if modern && mcp::removed_in_stateless(&req.method) {
            return self
                .refuse(
                    conn,
                    Some(req.id),
                    modern,
                    DenyReason::MethodNotFound.into(),
                    &[],
                )
                .await;
        }
        let route = match mcp::route(&req, &self.shared.naming) {
            Ok(r) => r,
            Err(r) => return self.refuse(conn, Some(req.id), modern, r.into(), &[]).await,
        };
        // Stateless agents never get here with the session-lifecycle methods (`removed_in_stateless`).
        match route {
            // A second `initialize` inside a session.
            Route::Initialize => {
                self.refuse(
                    conn,
                    Some(req.id),
                    modern,
                    DenyReason::InvalidRequest.into(),
                    &[],
                )
                .await
            }
            Route::Ping => {
                self.reply_result(conn, agent, req.id, Value::object())
                    .await
            }
            Route::Discover if modern => {
                let result = discover_result(&self.shared.naming);
                self.reply_result(conn, agent, req.id, result).await
            }
            Route::Discover => {
                self.refuse(
                    conn,
                    Some(req.id),
                    modern,
                    DenyReason::MethodNotFound.into(),
                    &[],
                )
                .await
            }
            Route::Broadcast => {
                if let Agent::Session { session, .. } = agent {
                    self.broadcast_request(agent.on(), session, &req).await;
                }
                self.reply_result(conn, agent, req.id, Value::object())
                    .await
            }
            Route::List(ListKind::Tools) if sv.pins.is_some() => {
                self.reply_pinned_tools(conn, sv, agent, req.id, caller)
                    .await
            }
            Route::List(kind) => {
                // Prompts and resources are governed per capability (tools are listed from the pins).
                let env = caller.env(agent);
                let visible = |capability: &str| match &caller.who {
                    None => true,
                    Some(who) => {
                        sv.governor
                            .decide_capability(who, Action::Discover, capability, &env)
                            .allowed
                    }
                };
                let result = self.merged_list(sv, agent, &req, kind, &visible).await;
                self.reply_result(conn, agent, req.id, result).await
            }
            Route::ByName { ref upstream, .. } | Route::ByUri { ref upstream, .. } => {
                if let Some(a) = conn.audit() {
                    a.capability = Some(upstream.clone());
                    if let Route::ByName { name, .. } = &route {
                        a.tool = Some(format!("{upstream}__{name}"));
                    }
                    if req.method == "tools/call" {
                        if let Some(args) = req.params.as_ref().and_then(|p| p.get("arguments")) {
                            a.arguments_blake3 = Some(self.arguments_digest(args));
                            if let Some(rec) = sv.audit_arguments(upstream) {
                                let mut v = to_serde(args);
                                portcullis_pipeline::audit::redact(&mut v, &rec.redact);
                                a.arguments = Some(v);
                            }
                        }
                    }
                    if let Some((mode, secret_ref)) = caller
                        .who
                        .as_deref()
                        .and_then(|w| sv.credential_of(upstream, w))
                    {
                        a.credential_mode = Some(mode);
                        a.secret_ref = Some(secret_ref);
                    }
                }
                if let (Route::ByName { upstream, name }, Some(pins)) = (&route, &sv.pins) {
                    if req.method == "tools/call" {
                        if let Err(r) = pins.check(upstream, name) {
                            return self.refuse(conn, Some(req.id), modern, r.into(), &[]).await;
                        }
                        if let Some(who) = &caller.who {
                            let governed = govern_call(
                                self,
                                sv,
                                who,
                                upstream,
                                name,
                                &req,
                                &caller.env(agent),
                                match agent {
                                    Agent::Modern { params, .. } => Some(params.as_slice()),
                                    Agent::Session { .. } => None,
                                },
                            );
                            let policies = match &governed {
                                Ok(p) => p.clone(),
                                Err((_, data, _)) => data
                                    .iter()
                                    .find(|(k, _)| *k == "policies")
                                    .and_then(|(_, v)| v.as_array())
                                    .map(|a| {
                                        a.iter()
                                            .filter_map(|x| x.as_str().map(str::to_owned))
                                            .collect()
                                    })
                                    .unwrap_or_default(),
                            };
                            if let Some(a) = conn.audit() {
                                a.policies = policies;
                            }
                            if let Err((reason, data, detail)) = governed {
                                return self
                                    .refuse_with(
                                        conn,
                                        Some(req.id),
                                        modern,
                                        reason.into(),
                                        &[],
                                        data,
                                        detail,
                                    )
                                    .await;
                            }
                        }
                    }
                }
                if let Some(who) = &caller.who {
                    if req.method != "tools/call" {
                        let verdict = sv.governor.decide_capability(
                            who,
                            Action::Call,
                            upstream,
                            &caller.env(agent),
                        );
                        if let Err((reason, data, _)) = policy_refusal(sv, verdict) {
                            return self
                                .refuse_with(
                                    conn,
                                    Some(req.id),
                                    modern,
                                    reason.into(),
                                    &[],
                                    data,
                                    None,
                                )
                                .await;
                        }
                    }
                }
                if let Some(who) = &caller.who {
                    let tool = match &route {
                        Route::ByName { name, .. } if req.method == "tools/call" => {
                            Some(name.as_str())
                        }
                        _ => None,
                    };
                    if let Err((limit, wait)) = sv.take(who, Some((upstream, tool))) {
                        return self
                            .rate_refused(conn, Some(req.id), modern, limit, wait)
                            .await;
                    }
                }
                if let (Route::ByName { upstream, name }, Some(pins)) = (&route, &sv.pins) {
                    let plan = pins.get(upstream, name).and_then(|t| t.call.as_ref());
                    if let (Some(plan), true) = (plan, req.method == "tools/call") {
                        return self
                            .call_api(conn, sv, agent, &req, upstream, name, plan)
                            .await;
                    }
                }
                let Some(up) = sv.upstream(upstream) else {
                    return self
                        .refuse(
                            conn,
                            Some(req.id),
                            modern,
                            DenyReason::ToolNotFound.into(),
                            &[],
                        )
                        .await;
                };
                let check = match &route {
                    Route::ByName { upstream, name }
                        if req.method == "tools/call"
                            && sv.governor.checks_output(upstream, name) =>
                    {
                        Some(OutputCheck {
                            sv,
                            capability: upstream.clone(),
                            tool: name.clone(),
                        })
                    }
                    _ => None,
                };
                let fwd = mcp::rewrite_for_upstream(req, &route);
                self.forward(conn, agent, up, fwd, check.as_ref()).await
            }
        }
    }

    /// A `tools/call` of a tool converted from an OpenAPI operation: the HTTP request its plan builds
    /// from the (already validated) arguments, to the API's registered base URL only; the response as a
    /// tool result, held against the pinned output schema like any other.
    #[allow(clippy::too_many_arguments)]
    async fn call_api<R: Reply>(
        &self,
        conn: &mut R,
        sv: &Served,
        agent: &Agent,
        req: &Request,
        capability: &str,
        tool: &str,
        plan: &portcullis_pipeline::openapi::CallPlan,
    ) -> bool {
        use portcullis_pipeline::openapi::call;
        let modern = agent.is_modern();
        let arguments = req
            .params
            .as_ref()
            .and_then(|p| p.get("arguments"))
            .map_or_else(|| serde_json::json!({}), to_serde);
        let built = match call::build(plan, &arguments) {
            Ok(b) => b,
            Err(e) => {
                crate::info!("capability={capability} tool={tool} call refused: {e}");
                return self
                    .refuse(
                        conn,
                        Some(req.id.clone()),
                        modern,
                        DenyReason::SchemaInvalid.into(),
                        &[],
                    )
                    .await;
            }
        };
        let Some((slot, mut url)) = sv
            .api(capability)
            .and_then(|s| self.upstream_url(s).map(|u| (s, u)))
        else {
            return self
                .refuse(
                    conn,
                    Some(req.id.clone()),
                    modern,
                    DenyReason::UpstreamUnavailable.into(),
                    &[],
                )
                .await;
        };
        // The operation's path under the base URL's; `build` encoded every argument into it.
        let base = url.path.trim_end_matches('/').to_owned();
        url.path = format!("{base}{}", built.path_and_query);
        let headers: Vec<(&str, String)> = built
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.clone()))
            .collect();
        let (mut method, mut payload) = (built.method.clone(), built.body.clone());
        let follow = sv.api_redirects(capability);
        let mut hops = 0;
        let (resp, mut body) = loop {
            let sent = self
                .send_to(
                    slot,
                    agent.on(),
                    plan.security.as_ref(),
                    &url,
                    &method,
                    &headers,
                    payload.as_deref().unwrap_or_default(),
                )
                .await;
            let got = match sent {
                Ok(mut resp) => resp
                    .read_all(&self.pool)
                    .await
                    .map(|b| (resp, b))
                    .map_err(|e| {
                        inc(&self.metrics.shared.counters.upstream_errors);
                        crate::warn!("capability={capability} api error={e:?}");
                        e.reason()
                    }),
                Err(reason) => Err(reason),
            };
            let (resp, got) = match got {
                Ok(b) => b,
                Err(reason) => {
                    return self
                        .refuse(conn, Some(req.id.clone()), modern, reason.into(), &[])
                        .await;
                }
            };
            let redirect = matches!(resp.status, 301 | 302 | 303 | 307 | 308);
            let location = resp.header("location").map(str::to_owned);
            let (true, Some(location), true) = (redirect, location, hops < follow) else {
                break (resp, got);
            };
            // Followed only as configured, and only where a call could go anyway: the base URL.
            let scheme = if url.secure { "https" } else { "http" };
            match call::redirect_target((scheme, &url.host, url.port), &base, &url.path, &location)
            {
                Ok(next) => {
                    hops += 1;
                    url.path = next;
                    // 303, and 301/302 after anything but GET/HEAD, continue as a GET (RFC 9110 15.4).
                    if resp.status == 303
                        || (matches!(resp.status, 301 | 302)
                            && !matches!(method.as_str(), "GET" | "HEAD"))
                    {
                        method = "GET".to_owned();
                        payload = None;
                    }
                }
                Err(why) => {
                    crate::info!(
                        "capability={capability} tool={tool} redirect not followed: {why}"
                    );
                    break (resp, got);
                }
            }
        };
        self.scrub(capability, &mut body, &resp.presented);
        if let Some(a) = conn.audit() {
            a.upstream_status = Some(resp.status);
            a.upstream_us = Some(micros(resp.elapsed));
        }
        let (status, content_type) = (resp.status, resp.header("content-type"));
        let result = call::result(status, content_type, &body, plan.structured);
        let result = from_serde(&result);
        if sv.governor.checks_output(capability, tool) {
            let check = OutputCheck {
                sv,
                capability: capability.to_owned(),
                tool: tool.to_owned(),
            };
            if let Err(refused) = self.check_output(&check, req.id.clone(), &result) {
                if let Some(a) = conn.audit() {
                    a.reason = Some(DenyReason::OutputSchemaInvalid.code().to_owned());
                }
                let resp = Response::new(200).header("content-type", "application/json");
                return conn.full(resp, &jsonrpc::encode(&refused), false).await;
            }
        }
        self.reply_result(conn, agent, req.id.clone(), result).await
    }

    // ---- the standalone stream of a 2025-11-25 session ----

    /// `GET /mcp`: one SSE stream merging what every upstream sends outside a request (list_changed,
    /// resource updates, log messages, upstream-to-agent requests). Legacy upstreams are followed on their
    /// own GET stream with this session's upstream session; 2026-07-28 upstreams by `subscriptions/listen`.
    /// The stream ends when the agent goes away, the session ends, or the gateway drains.
    async fn listen<R: Reply>(
        &self,
        conn: &mut R,
        sv: &Served,
        head: &RequestHead,
        caller: &Caller,
    ) -> bool {
        if head
            .header_str("mcp-protocol-version")
            .and_then(Revision::parse)
            .is_some_and(Revision::is_stateless)
        {
            // 2026-07-28 has no GET stream: subscriptions/listen replaces it.
            return self
                .refuse(
                    conn,
                    None,
                    true,
                    DenyReason::MethodNotAllowed.into(),
                    &[("allow", "POST".into())],
                )
                .await;
        }
        let Some(sid) = head.header_str("mcp-session-id") else {
            return self
                .refuse(conn, None, false, DenyReason::SessionRequired.into(), &[])
                .await;
        };
        let Some(id) = SessionId::parse(sid) else {
            return self
                .refuse(conn, None, false, DenyReason::SessionNotFound.into(), &[])
                .await;
        };
        let session = match self.session_touch(id).await {
            Ok(s) if s.agent != caller.who => {
                return self
                    .refuse(
                        conn,
                        None,
                        false,
                        DenyReason::SessionAgentMismatch.into(),
                        &[],
                    )
                    .await
            }
            Ok(s) => s,
            Err(e) => {
                return self
                    .refuse(conn, None, false, session_refusal(e).into(), &[])
                    .await
            }
        };
        // A POST's response stream resumed: what followed the last event, then the rest as it comes.
        if let Some((stream, last)) = head
            .header_str("last-event-id")
            .and_then(portcullis_pipeline::replay::parse_post_event_id)
        {
            return self.resume_post_stream(conn, id, stream, last).await;
        }
        // A client resuming a dropped stream: what it missed, or a clear refusal it can re-sync after.
        let missed = match head.header_str("last-event-id") {
            None => Vec::new(),
            Some(last) => match self.replay_after(id, last) {
                Some(events) => events,
                None => {
                    return self
                        .refuse(conn, None, false, DenyReason::ResumeUnavailable.into(), &[])
                        .await
                }
            },
        };
        let _slot = match self.stream_slot(id).await {
            Ok(slot) => slot,
            Err(r) => return self.refuse(conn, None, false, r.into(), &[]).await,
        };
        let agent = Agent::Session {
            id,
            session: Box::new(session),
            on: caller.on_behalf(),
        };
        let (tx, rx) = flume::bounded::<Message>(LISTEN_QUEUE_LEN);
        let want = UpstreamWant::all_lists();
        let mut following = Following {
            followers: &self.shared.followers,
            id,
            held: Vec::with_capacity(sv.upstreams.len()),
        };
        for u in &sv.upstreams {
            let (generation, stop) = self.shared.followers.take(id, u.slot);
            following.held.push((u.slot, generation));
            if let Err(r) = self
                .follow_upstream(&agent, u.slot, tx.clone(), &want, stop)
                .await
            {
                crate::warn!("listen upstream={} reason={}", u.name, r.code());
            }
        }
        let head = Response::new(200)
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .header("x-accel-buffering", "no");
        if !conn.stream_start(head).await {
            return false;
        }
        inc(&self.metrics.shared.counters.responses_ok);
        for (event, data) in missed {
            if !conn
                .stream_data(sse_event(&data, Some(event.to_string())))
                .await
            {
                return false;
            }
        }
        match self.relay_out_of_request(conn, &rx, None, Some(id)).await {
            Relayed::AgentGone => false,
            Relayed::Ended | Relayed::Draining => {
                drop(tx);
                conn.stream_end().await
            }
        }
    }

    /// Resume POST stream `stream` of session `sid` after event `last`: the events since, then the
    /// others as the upstream's answer arrives, ending with the response. The stream's upstream request
    /// went on after its agent dropped (`relay_stream`).
    async fn resume_post_stream<R: Reply>(
        &self,
        conn: &mut R,
        sid: SessionId,
        stream: u32,
        mut last: u64,
    ) -> bool {
        let first = self.post_streams().after(sid, stream, last);
        let Ok(_) = first else {
            return self
                .refuse(conn, None, false, DenyReason::ResumeUnavailable.into(), &[])
                .await;
        };
        let head = Response::new(200)
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .header("x-accel-buffering", "no");
        if !conn.stream_start(head).await {
            return false;
        }
        inc(&self.metrics.shared.counters.responses_ok);
        let deadline = Instant::now() + self.shared.config.limits.upstream_response_timeout.0;
        loop {
            let got = self.post_streams().after(sid, stream, last);
            let (events, finished) = match got {
                Ok(r) => r,
                // Evicted meanwhile: end here; the client re-syncs.
                Err(_) => return conn.stream_end().await,
            };
            for (n, data) in events {
                last = n;
                let id = portcullis_pipeline::replay::post_event_id(stream, n);
                if !conn.stream_data(sse_event(&data, Some(id))).await {
                    return false;
                }
            }
            if finished || Instant::now() >= deadline {
                return conn.stream_end().await;
            }
            monoio::time::sleep(POST_RESUME_POLL).await;
        }
    }

    /// `subscriptions/listen` from a 2026-07-28 agent: follow each served upstream for what the agent
    /// asked (the upstream's own `subscriptions/listen`, or a 2025-11-25 upstream's GET stream on an
    /// upstream session opened for this stream and closed with it), and relay it with the gateway's own
    /// list changes, filtered and tagged with the subscription id, after the acknowledgement.
    async fn subscriptions_listen<R: Reply>(
        &self,
        conn: &mut R,
        sv: &Served,
        agent: &Agent,
        req: Request,
    ) -> bool {
        let filter = match ListenFilter::parse(&req, &self.shared.naming) {
            Ok(f) => f,
            Err(r) => return self.refuse(conn, Some(req.id), true, r.into(), &[]).await,
        };
        // The stream belongs to the request's session: it counts against the session's streams and
        // ends when the session does.
        let session = match agent {
            Agent::Modern { session, .. } => *session,
            Agent::Session { .. } => None,
        };
        let _slot = match session {
            None => None,
            Some(id) => match self.stream_slot(id).await {
                Ok(slot) => Some(slot),
                Err(r) => return self.refuse(conn, Some(req.id), true, r.into(), &[]).await,
            },
        };
        let (tx, rx) = flume::bounded::<Message>(LISTEN_QUEUE_LEN);
        // Dropped when the subscription ends: its followers let go of their upstream streams at once.
        let (stop_tx, stop) = flume::bounded::<()>(0);
        let mut ephemeral = Ephemeral::new();
        for u in &sv.upstreams {
            let want = filter.for_upstream(&u.name);
            if want.is_empty() {
                continue;
            }
            match self
                .follow_upstream(agent, u.slot, tx.clone(), &want, stop.clone())
                .await
            {
                Ok(e) => ephemeral.extend(e),
                Err(r) => crate::warn!(
                    "subscriptions/listen upstream={} reason={}",
                    u.name,
                    r.code()
                ),
            }
        }
        let head = Response::new(200)
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .header("x-accel-buffering", "no");
        let mut open = conn.stream_start(head).await
            && conn
                .stream_data(sse_message(&filter.acknowledgement(&req.id)))
                .await;
        if open {
            inc(&self.metrics.shared.counters.responses_ok);
            open = match self
                .relay_out_of_request(conn, &rx, Some((&filter, &req.id)), session)
                .await
            {
                Relayed::AgentGone => false,
                // A graceful end is a result, so the client knows the server closed the subscription.
                Relayed::Draining | Relayed::Ended => {
                    conn.stream_data(sse_message(&listen::ended(&req.id))).await
                        && conn.stream_end().await
                }
            };
        }
        drop(tx);
        drop(stop_tx);
        self.close_ephemeral(agent.on(), ephemeral).await;
        open
    }

    /// Relay what upstream streams queue in `rx`, and the gateway's own list changes, onto an open SSE
    /// stream until the agent goes away, the session (if any) ends, or the gateway drains. With
    /// `subscription`, only what the agent asked for passes, tagged with the subscription id.
    async fn relay_out_of_request<R: Reply>(
        &self,
        conn: &mut R,
        rx: &flume::Receiver<Message>,
        subscription: Option<(&ListenFilter, &Id)>,
        session: Option<SessionId>,
    ) -> Relayed {
        let frame = |msg: Message| -> Option<Vec<u8>> {
            match (subscription, msg) {
                (None, msg) if session.is_some() => {
                    let data = jsonrpc::encode(&msg);
                    let id = self.remember(session.unwrap_or_else(|| unreachable!()), data.clone());
                    Some(sse_event(&data, Some(id.to_string())))
                }
                (None, msg) => Some(sse_message(&msg)),
                (Some((filter, id)), Message::Notification(mut n)) if filter.accepts(&n) => {
                    listen::tag(&mut n, id);
                    Some(sse_message(&Message::Notification(n)))
                }
                // Upstream requests and unrequested notifications never reach a subscription.
                (Some(_), _) => None,
            }
        };
        let mut quiet_since = std::time::Instant::now();
        let mut lists = self.list_version();
        let mut revocations = self
            .shared
            .revocations
            .load(std::sync::atomic::Ordering::Acquire);
        loop {
            // An activation, a rollback or a withheld tool changes what this agent may list: say so, as
            // an MCP server whose lists changed does (the gateway advertises `listChanged`).
            let now = self.list_version();
            if now != lists {
                let mut methods = vec![listen::TOOLS_CHANGED];
                if now.0 != lists.0 {
                    methods.push(listen::PROMPTS_CHANGED);
                    methods.push(listen::RESOURCES_CHANGED);
                }
                lists = now;
                for method in methods {
                    let n = Message::Notification(jsonrpc::Notification {
                        method: method.into(),
                        params: None,
                    });
                    if let Some(framed) = frame(n) {
                        if !conn.stream_data(framed).await {
                            return Relayed::AgentGone;
                        }
                        quiet_since = std::time::Instant::now();
                    }
                }
            }
            // Checked often, not only at keep-alives: a drain must not wait out an idle stream.
            if self
                .shared
                .draining
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return Relayed::Draining;
            }
            let seen = self
                .shared
                .revocations
                .load(std::sync::atomic::Ordering::Acquire);
            if seen != revocations {
                revocations = seen;
                if let Some(id) = session {
                    if self.session_touch(id).await.is_err() {
                        return Relayed::Ended;
                    }
                }
            }
            match monoio::time::timeout(LISTEN_DRAIN_CHECK, rx.recv_async()).await {
                Ok(Ok(msg)) => {
                    if let Some(framed) = frame(msg) {
                        if !conn.stream_data(framed).await {
                            return Relayed::AgentGone;
                        }
                        quiet_since = std::time::Instant::now();
                    }
                }
                Ok(Err(_)) => unreachable!("the caller holds a sender"),
                Err(_) if quiet_since.elapsed() < LISTEN_KEEPALIVE => {}
                Err(_) => {
                    quiet_since = std::time::Instant::now();
                    // Keep intermediaries from timing the stream out, and notice a session that ended.
                    if !conn.stream_data(b": keep-alive\n\n".to_vec()).await {
                        return Relayed::AgentGone;
                    }
                    if let Some(id) = session {
                        if self.session_touch(id).await.is_err() {
                            return Relayed::Ended;
                        }
                    }
                }
            }
        }
    }

    /// Open one upstream's out-of-request stream for this agent and relay it into `tx` from a task of its own,
    /// until the upstream ends it or `stop` disconnects (the agent's stream ended or was superseded).
    /// Returns the upstream sessions opened just for this stream (a stateless agent following a
    /// 2025-11-25 upstream), for the caller to close when the stream ends.
    async fn follow_upstream(
        &self,
        agent: &Agent,
        up: usize,
        tx: flume::Sender<Message>,
        want: &UpstreamWant,
        stop: flume::Receiver<()>,
    ) -> Result<Ephemeral, DenyReason> {
        let mut ephemeral = Ephemeral::new();
        let (rev, sid) = self.exchange_revision(agent, up, &mut ephemeral).await?;
        let name = self.slot_name(up);
        let mut resp = if rev.is_stateless() {
            let mut params = simd_json::owned::Object::new();
            params.insert("notifications".into(), want.to_filter());
            let meta = match agent {
                // Copied for this very request (`Agent::Modern`).
                Agent::Modern { meta, .. } => meta.clone().unwrap_or_else(Value::object),
                Agent::Session { session, .. } => modern_meta(
                    session
                        .client_capabilities
                        .as_ref()
                        .unwrap_or(&Value::object()),
                    session.client_info.as_ref(),
                ),
            };
            let req = Request {
                id: Id::String("portcullis-listen".into()),
                method: "subscriptions/listen".into(),
                params: Some(params_with_meta(Some(Value::from(params)), meta)),
            };
            let headers = modern_headers("subscriptions/listen", None);
            self.send_upstream(
                up,
                agent.on(),
                "POST",
                &headers,
                &jsonrpc::encode(&Message::Request(req)),
            )
            .await?
        } else {
            // A 2025-11-25 upstream has no filter: it sends what it sends, and the relay filters. Its
            // resource subscriptions are requests on the same upstream session.
            for uri in &want.uris {
                let mut p = simd_json::owned::Object::new();
                p.insert("uri".into(), Value::from(uri.as_str()));
                let req = Request {
                    id: Id::String("portcullis-subscribe".into()),
                    method: "resources/subscribe".into(),
                    params: Some(Value::from(p)),
                };
                let body = jsonrpc::encode(&Message::Request(req));
                match self
                    .send_upstream(
                        up,
                        agent.on(),
                        "POST",
                        &legacy_headers(sid.as_deref()),
                        &body,
                    )
                    .await
                {
                    Ok(mut r) => {
                        let _ = r.read_all(&self.pool).await;
                    }
                    Err(r) => {
                        crate::warn!("resources/subscribe upstream={name} reason={}", r.code())
                    }
                }
            }
            let mut headers = legacy_headers(sid.as_deref());
            headers.retain(|(n, _)| *n != "content-type");
            headers.iter_mut().for_each(|h| {
                if h.0 == "accept" {
                    h.1 = "text/event-stream".to_owned();
                }
            });
            // The stream this one superseded may still hold the upstream's one GET slot for a moment
            // (its follower lets go on its own core): a 409 then is worth a few short retries.
            let mut wait = FOLLOW_RETRY_FIRST;
            loop {
                let mut r = self
                    .send_upstream(up, agent.on(), "GET", &headers, b"")
                    .await?;
                if r.status != 409 || wait > FOLLOW_RETRY_LAST {
                    break r;
                }
                let _ = r.read_all(&self.pool).await;
                monoio::time::sleep(wait).await;
                wait *= 2;
            }
        };
        if resp.status != 200 || !resp.is_event_stream() {
            // 405: this upstream offers no stream; nothing to follow.
            let _ = resp.read_all(&self.pool).await;
            return Ok(ephemeral);
        }
        // The agent holds this stream open as long as it likes; the upstream may be silent for as long.
        resp.set_read_timeout(self.shared.config.limits.session_idle.0);
        let pool = self.pool.clone();
        let limits = self.parse_limits();
        let event_max = self.shared.config.limits.upstream_body_bytes_max;
        let shared = self.shared.clone();
        monoio::spawn(async move {
            let mut parser = SseParser::new(event_max);
            let mut events = Vec::new();
            loop {
                let chunk = monoio::select! {
                    _ = stop.recv_async() => return,
                    c = resp.next_chunk(&pool) => c,
                };
                let Ok(Some(chunk)) = chunk else {
                    return;
                };
                if parser.push(&chunk, &mut events).is_err() {
                    return;
                }
                for ev in events.drain(..) {
                    let mut b = ev.data.into_bytes();
                    let Ok(msg) = jsonrpc::parse(&mut b, &limits) else {
                        continue;
                    };
                    if let Message::Notification(n) = &msg {
                        if n.method == "notifications/tools/list_changed" {
                            // Pinned tools may have changed upstream: have the watcher look now.
                            shared.served.ask_recheck();
                        }
                    }
                    let Some(msg) = rewrite_stream_message(&shared.naming, &name, msg) else {
                        continue;
                    };
                    // Gone or superseded: dropping `resp` closes the upstream's stream.
                    let sent = monoio::select! {
                        _ = stop.recv_async() => return,
                        sent = tx.send_async(msg) => sent,
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(ephemeral)
    }

    // ---- answers ----

    async fn reply_result<R: Reply>(
        &self,
        conn: &mut R,
        agent: &Agent,
        id: Id,
        mut result: Value,
    ) -> bool {
        if agent.is_modern() {
            complete_result(&mut result);
        }
        let msg = Message::Response(jsonrpc::Response {
            id: Some(id),
            outcome: Ok(result),
        });
        inc(&self.metrics.shared.counters.responses_ok);
        let resp = Response::new(200).header("content-type", "application/json");
        conn.full(resp, &jsonrpc::encode(&msg), false).await
    }

    /// `tools/list` served from the snapshot: the pinned definitions, less those the upstream changed since,
    /// spliced as pre-encoded bytes (the list is the same for every agent until policy filters it).
    async fn reply_pinned_tools<R: Reply>(
        &self,
        conn: &mut R,
        sv: &Served,
        agent: &Agent,
        id: Id,
        caller: &Caller,
    ) -> bool {
        let mut result = mcp::list_result(ListKind::Tools, Vec::new());
        if agent.is_modern() {
            complete_result(&mut result);
            // Changes only with a new snapshot or a drifted tool; still computed for this agent.
            result.insert("ttlMs", 0u64).ok();
            result.insert("cacheScope", "private").ok();
        }
        let msg = Message::Response(jsonrpc::Response {
            id: Some(id),
            outcome: Ok(result),
        });
        let shell = jsonrpc::encode(&msg);
        let visible = sv
            .pins
            .as_ref()
            .zip(caller.who.as_deref())
            .map(|(pins, who)| self.visible_tools(sv, pins, who, &caller.env(agent)));
        // The same decision basis as a call: a tool this agent may not discover is not listed.
        let body = sv.pins.as_ref().and_then(|p| {
            p.splice_tools_list(&shell, |i, _| {
                visible
                    .as_ref()
                    .is_none_or(|v| v.get(i).copied().unwrap_or(false))
            })
        });
        let Some(body) = body else {
            return self
                .refuse(
                    conn,
                    None,
                    agent.is_modern(),
                    DenyReason::Overloaded.into(),
                    &[],
                )
                .await;
        };
        inc(&self.metrics.shared.counters.responses_ok);
        let resp = Response::new(200).header("content-type", "application/json");
        conn.full(resp, &body, false).await
    }

    /// Which pinned tools `who` may discover, by pin index. Where no policy reads the context the answer
    /// depends only on the agent and the snapshot, so this core remembers it per agent until the snapshot
    /// label changes (bounded: at `DISCOVERED_AGENTS_MAX` agents the memory starts over).
    fn visible_tools(
        &self,
        sv: &Served,
        pins: &crate::served::Pins,
        who: &str,
        env: &Env<'_>,
    ) -> Rc<Vec<bool>> {
        let compute = || -> Rc<Vec<bool>> {
            Rc::new(
                pins.pinned()
                    .map(|t| {
                        self.decide(sv, who, Action::Discover, &t.capability, &t.name, None, env)
                            .allowed
                    })
                    .collect(),
            )
        };
        // What the agent may discover changes only with the context attributes policies read (the
        // hour, say): one list per agent and such values, until the snapshot changes.
        let key = (who.to_owned(), sv.governor.discovery_env(env));
        let mut memo = self.discovered.borrow_mut();
        if memo.0 != sv.label {
            *memo = (sv.label.clone(), std::collections::HashMap::new());
        }
        if let Some(v) = memo.1.get(&key) {
            return v.clone();
        }
        if memo.1.len() >= DISCOVERED_AGENTS_MAX {
            memo.1.clear();
        }
        let v = compute();
        memo.1.insert(key, v.clone());
        v
    }

    /// One Cedar decision, over the consulted policy buckets merged once on this core per snapshot.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        sv: &Served,
        who: &str,
        action: Action,
        capability: &str,
        name: &str,
        arguments: Option<&serde_json::Value>,
        env: &Env<'_>,
    ) -> Verdict {
        let mut merged = self.merged.borrow_mut();
        if merged.0 != sv.label {
            merged.0.clone_from(&sv.label);
            merged.1.clear();
        }
        sv.governor
            .decide_merged(&mut merged.1, who, action, capability, name, arguments, env)
    }

    /// Decide a `tools/call` with Cedar, remembering the decision on this core when it depends only on
    /// what `Governor::decision_key` holds (not on the arguments), until the snapshot changes.
    fn decide_call(
        &self,
        sv: &Served,
        who: &str,
        capability: &str,
        name: &str,
        arguments: &serde_json::Value,
        env: &Env<'_>,
    ) -> Verdict {
        let decide = || {
            self.decide(
                sv,
                who,
                Action::Call,
                capability,
                name,
                Some(arguments),
                env,
            )
        };
        let Some(key) = sv
            .governor
            .decision_key(who, Action::Call, capability, name, env)
        else {
            return decide();
        };
        let mut memo = self.decisions.borrow_mut();
        if memo.0 != sv.label {
            *memo = (sv.label.clone(), std::collections::HashMap::new());
        }
        if let Some(v) = memo.1.get(&key) {
            return v.clone();
        }
        if memo.1.len() >= DECISIONS_MAX {
            memo.1.clear();
        }
        let v = decide();
        memo.1.insert(key, v.clone());
        v
    }

    /// Answer a refusal. Errors about one well-formed request travel on HTTP 200 as JSON-RPC errors; errors
    /// the transport rules give a status (and 2026-07-28's 404 for unknown methods) use that status.
    async fn refuse<R: Reply>(
        &self,
        conn: &mut R,
        id: Option<Id>,
        modern: bool,
        refusal: Refusal,
        extra_headers: &[(&'static str, String)],
    ) -> bool {
        self.refuse_with(conn, id, modern, refusal, extra_headers, Vec::new(), None)
            .await
    }

    /// Hold a `tools/call` result against the tool's pinned output schema (`Governor::check_output`):
    /// a mismatch is logged in mode `report`, and replaces the result with `output_schema_invalid` in
    /// mode `enforce`. Only the failing pointer and rule are logged, never the result.
    fn check_output(&self, c: &OutputCheck<'_>, id: Id, result: &Value) -> Result<(), Message> {
        let structured = to_serde(result);
        let Err((mode, p)) =
            c.sv.governor
                .check_output(&c.capability, &c.tool, &structured)
        else {
            return Ok(());
        };
        inc(&self.metrics.shared.counters.output_schema_mismatches);
        crate::warn!(
            "core {}: capability={} tool={} result does not fit its output schema at `{}` ({}){}",
            self.id,
            c.capability,
            c.tool,
            p.pointer,
            p.keyword,
            if mode == OutputSchemaMode::Enforce {
                "; withheld"
            } else {
                ""
            }
        );
        if mode != OutputSchemaMode::Enforce {
            return Ok(());
        }
        self.metrics.deny(DenyReason::OutputSchemaInvalid);
        let mut msg = jsonrpc::deny_response(
            Some(id),
            DenyReason::OutputSchemaInvalid,
            &[
                ("snapshot", Value::from(c.sv.label.as_str())),
                ("pointer", Value::from(p.pointer.as_str())),
                ("keyword", Value::from(p.keyword.as_str())),
            ],
        );
        if let Message::Response(r) = &mut msg {
            if let Err(e) = &mut r.outcome {
                e.message = format!("{}: {}", e.message, p.message);
            }
        }
        Err(msg)
    }

    /// `rate_limited`: HTTP 429 with `Retry-After` (whole seconds, rounded up), and the limit and the
    /// wait in milliseconds in `error.data`.
    async fn rate_refused<R: Reply>(
        &self,
        conn: &mut R,
        id: Option<Id>,
        modern: bool,
        limit: &portcullis_pipeline::ratelimit::Limit,
        wait: std::time::Duration,
    ) -> bool {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let secs = ms.div_ceil(1000);
        self.refuse_with(
            conn,
            id,
            modern,
            DenyReason::RateLimited.into(),
            &[("retry-after", secs.to_string())],
            vec![
                ("limit", Value::from(limit.to_string().as_str())),
                ("retry_after_ms", Value::from(ms)),
            ],
            Some(format!("{limit}; retry in {secs} s")),
        )
        .await
    }

    /// `refuse`, with more for `error.data` and a detail appended to `error.message`.
    #[allow(clippy::too_many_arguments)]
    async fn refuse_with<R: Reply>(
        &self,
        conn: &mut R,
        id: Option<Id>,
        modern: bool,
        refusal: Refusal,
        extra_headers: &[(&'static str, String)],
        data: Vec<(&'static str, Value)>,
        detail: Option<String>,
    ) -> bool {
        let reason = refusal.reason;
        self.metrics.deny(reason);
        if let Some(a) = conn.audit() {
            a.reason.get_or_insert_with(|| reason.code().to_owned());
        }
        let status = if modern && reason == DenyReason::MethodNotFound {
            404
        } else if reason.is_jsonrpc_level() && id.is_some() {
            200
        } else {
            reason.http_status()
        };
        let mut extra: Vec<(&str, Value)> = data;
        if let Some(req) = &refusal.requested_version {
            extra.push(("requested", Value::from(req.as_str())));
            extra.push((
                "supported",
                Value::Array(Box::new(
                    Revision::ALL
                        .iter()
                        .rev()
                        .map(|r| Value::from(r.as_str()))
                        .collect(),
                )),
            ));
        }
        if let Some(h) = refusal.header {
            extra.push(("header", Value::from(h)));
        }
        let mut msg = jsonrpc::deny_response(id, reason, &extra);
        if let Message::Response(r) = &mut msg {
            if let Err(e) = &mut r.outcome {
                if let Some(h) = refusal.header {
                    e.message = format!("{}: {h}", e.message);
                }
                if let Some(d) = detail {
                    e.message = format!("{}: {d}", e.message);
                }
            }
        }
        let mut resp = Response::new(status).header("content-type", "application/json");
        for (n, v) in extra_headers {
            resp = resp.header(n, v.clone());
        }
        // After a framing or size refusal the rest of the request may still be on the wire: close.
        let close = !reason.is_jsonrpc_level() && status >= 400 && status != 404 && status != 405;
        let ok = conn.full(resp, &jsonrpc::encode(&msg), close).await;
        ok && !close
    }

    // ---- upstreams ----

    fn upstream_url(&self, up: usize) -> Option<UpstreamUrl> {
        self.slots.borrow().get(up).map(|s| s.url.clone())
    }

    async fn send_upstream(
        &self,
        up: usize,
        on: &OnBehalf,
        method: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<UpstreamResponse, DenyReason> {
        let url = self
            .upstream_url(up)
            .ok_or(DenyReason::UpstreamUnavailable)?;
        self.send_to(up, on, None, &url, method, headers, body)
            .await
    }

    /// One request on slot `up`'s pool to `url` (the slot's own, or a REST API's path under its base),
    /// carrying the credential the capability binds for `on` (placed as `scheme`, an OpenAPI operation's
    /// security scheme, says when the binding does not), counted and timed as upstream traffic.
    #[allow(clippy::too_many_arguments)]
    async fn send_to(
        &self,
        up: usize,
        on: &OnBehalf,
        scheme: Option<&credential::Inject>,
        url: &UpstreamUrl,
        method: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<UpstreamResponse, DenyReason> {
        let credential = self.credential(up, on, scheme).await?;
        inc(&self.metrics.shared.counters.upstream_requests);
        let t0 = Instant::now();
        let r = self
            .pool
            .send_with_credential(
                up,
                url,
                method,
                headers,
                body,
                credential.as_ref().map(|(i, s)| (i, s)),
            )
            .await;
        if let Err(crate::upstream::UpstreamError::Credential(e)) = &r {
            crate::warn!("upstream={} credential refused: {e}", self.slot_name(up));
            return Err(DenyReason::CredentialUnavailable);
        }
        let elapsed = t0.elapsed();
        self.metrics.record_upstream(elapsed);
        r.map(|mut resp| {
            resp.elapsed = elapsed;
            resp
        })
        .map_err(|e| {
            inc(&self.metrics.shared.counters.upstream_errors);
            crate::warn!("upstream={} error={e:?}", self.slot_name(up));
            e.reason()
        })
    }

    /// Remove the credential a request carried from what its upstream answered (`credential::scrub`),
    /// counting and logging (without the value) each time an upstream echoed it.
    fn scrub(&self, upstream: &str, bytes: &mut Vec<u8>, presented: &[String]) {
        if presented.is_empty() {
            return;
        }
        let n = credential::scrub(bytes, presented);
        if n > 0 {
            crate::warn!("upstream={upstream} echoed its credential {n} time(s); redacted before the agent saw it");
        }
    }

    /// The credential slot `up`'s capability binds for `on`: `None` when it binds none, from this core's
    /// cache when fresh, else from the broker. Any failure is `credential_unavailable`: the call is
    /// refused rather than sent without its credential.
    async fn credential(
        &self,
        up: usize,
        on: &OnBehalf,
        scheme: Option<&credential::Inject>,
    ) -> Result<Option<(credential::Inject, Secret)>, DenyReason> {
        let served = self.served();
        let Some(cap) = served.on_slot(up) else {
            return Ok(None);
        };
        let Some(binding) = cap.credential.clone() else {
            return Ok(None);
        };
        let unavailable = |why: &dyn std::fmt::Display| {
            crate::warn!("capability={} credential_unavailable: {why}", cap.name);
            DenyReason::CredentialUnavailable
        };
        let agent = on
            .agent
            .as_deref()
            .ok_or_else(|| unavailable(&"no agent"))?;
        let mode = served
            .agent_mode(agent)
            .ok_or_else(|| unavailable(&format_args!("agent {agent} is not in the snapshot")))?;
        let need = binding
            .need(mode, agent)
            .map_err(|e| unavailable(&format_args!("agent {agent}: {e}")))?;
        let inject = binding.injection(scheme).map_err(|e| unavailable(&e))?;
        let (key, want) = match need {
            credential::Need::Secret(r) => (r.to_string(), crate::broker::Want::Secret(r)),
            credential::Need::Exchange(x) => {
                let subject = on.token.clone().ok_or_else(|| {
                    unavailable(&format_args!(
                        "agent {agent} is delegated but presented no token to exchange (API keys and certificates cannot be)"
                    ))
                })?;
                let key = format!(
                    "x/{}/{}",
                    cap.name,
                    blake3::hash(subject.expose().as_bytes()).to_hex()
                );
                let want = crate::broker::Want::Exchange {
                    exchange: x.clone(),
                    resource: cap.endpoint.clone(),
                    subject,
                };
                (key, want)
            }
        };
        let now = Instant::now();
        if let Some(secret) = self.credentials.borrow().get(&key, now) {
            return Ok(Some((inject, secret)));
        }
        let resolved = self
            .shared
            .broker
            .resolve(want)
            .await
            .map_err(|e| unavailable(&e))?;
        if !resolved.valid_for.is_zero() {
            self.credentials.borrow_mut().put(
                key,
                resolved.secret.clone(),
                Instant::now() + resolved.valid_for,
                now,
            );
        }
        Ok(Some((inject, resolved.secret)))
    }

    /// The revision an upstream speaks: `server/discover` answered with 2026-07-28 among its versions means
    /// modern; anything else means a 2025-11-25 server. Cached per core once the upstream has answered.
    async fn speaks_modern(&self, up: usize, on: &OnBehalf) -> Result<bool, DenyReason> {
        if let Some(m) = self.upstream_eras.borrow()[up].modern {
            return Ok(m);
        }
        let body = jsonrpc::encode(&Message::Request(discover_request()));
        let headers = modern_headers("server/discover", None);
        let mut resp = self.send_upstream(up, on, "POST", &headers, &body).await?;
        let rev = if resp.status == 200 {
            match self.read_response_message(&mut resp).await {
                Ok(jsonrpc::Response {
                    outcome: Ok(result),
                    ..
                }) => {
                    if offers_modern(&result) {
                        Revision::V2026_07_28
                    } else {
                        Revision::V2025_11_25
                    }
                }
                _ => Revision::V2025_11_25,
            }
        } else {
            let _ = resp.read_all(&self.pool).await;
            Revision::V2025_11_25
        };
        self.upstream_eras.borrow_mut()[up].modern = Some(rev.is_stateless());
        crate::info!(
            "upstream={} speaks_2026_07_28={}",
            self.slot_name(up),
            rev.is_stateless()
        );
        Ok(rev.is_stateless())
    }

    /// The revision to speak to an upstream for this agent. A 2025-11-25 session agent gets a 2025-11-25
    /// upstream session wherever the upstream accepts one, so that upstream-to-agent requests (sampling,
    /// elicitation) flow as the agent expects; a 2026-07-28 agent gets 2026-07-28 wherever the upstream
    /// speaks it, so input_required results and their retries pass through untouched.
    async fn revision_for(&self, agent: &Agent, up: usize) -> Result<Revision, DenyReason> {
        let legacy = self.upstream_eras.borrow()[up].legacy;
        match agent {
            Agent::Session { .. } if legacy != Some(false) => Ok(Revision::V2025_11_25),
            _ if self.speaks_modern(up, agent.on()).await? => Ok(Revision::V2026_07_28),
            _ if legacy != Some(false) => Ok(Revision::V2025_11_25),
            _ => Err(DenyReason::UpstreamProtocolError),
        }
    }

    /// Decide the revision for this exchange and, for 2025-11-25, the upstream session to use. An upstream
    /// that refuses the 2025-11-25 handshake is remembered as modern-only.
    async fn exchange_revision(
        &self,
        agent: &Agent,
        up: usize,
        ephemeral: &mut Ephemeral,
    ) -> Result<(Revision, Option<String>), DenyReason> {
        loop {
            let rev = self.revision_for(agent, up).await?;
            if rev.is_stateless() {
                return Ok((rev, None));
            }
            match self.binding_for(agent, up, ephemeral).await {
                Ok(sid) => {
                    self.upstream_eras.borrow_mut()[up].legacy = Some(true);
                    return Ok((rev, sid));
                }
                // Concurrent first exchanges may each be refused; whichever learns it first, every one of
                // them retries in 2026-07-28 (revision_for never picks 2025-11-25 again, so this ends).
                Err(DenyReason::UpstreamProtocolError)
                    if self.upstream_eras.borrow()[up].legacy != Some(true) =>
                {
                    self.upstream_eras.borrow_mut()[up].legacy = Some(false);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_response_message(
        &self,
        resp: &mut UpstreamResponse,
    ) -> Result<jsonrpc::Response, DenyReason> {
        read_response(
            &self.pool,
            resp,
            &self.parse_limits(),
            self.shared.config.limits.upstream_body_bytes_max,
            Some(&self.parser),
        )
        .await
    }

    /// Open a 2025-11-25 session with an upstream on behalf of an agent.
    async fn open_upstream_session(
        &self,
        up: usize,
        on: &OnBehalf,
        capabilities: Option<&Value>,
    ) -> Result<UpstreamBinding, DenyReason> {
        let body = jsonrpc::encode(&Message::Request(initialize_request(capabilities)));
        let headers = legacy_headers(None);
        let mut resp = self.send_upstream(up, on, "POST", &headers, &body).await?;
        if resp.status != 200 {
            let _ = resp.read_all(&self.pool).await;
            // A 4xx refuses the handshake itself (a modern-only upstream); 5xx is an upstream in trouble.
            return Err(if (400..500).contains(&resp.status) {
                DenyReason::UpstreamProtocolError
            } else {
                DenyReason::UpstreamUnavailable
            });
        }
        let session_id = resp.header("mcp-session-id").map(str::to_owned);
        let r = self.read_response_message(&mut resp).await?;
        if r.outcome.is_err() {
            return Err(DenyReason::UpstreamProtocolError);
        }
        let note = initialized_notification();
        let mut r = self
            .send_upstream(
                up,
                on,
                "POST",
                &legacy_headers(session_id.as_deref()),
                &note,
            )
            .await?;
        let _ = r.read_all(&self.pool).await;
        Ok(UpstreamBinding {
            session_id,
            revision: Revision::V2025_11_25,
        })
    }

    async fn delete_upstream_session(&self, up: usize, on: &OnBehalf, sid: &str) {
        if let Ok(mut r) = self
            .send_upstream(up, on, "DELETE", &legacy_headers(Some(sid)), b"")
            .await
        {
            let _ = r.read_all(&self.pool).await;
        }
    }

    /// The binding an agent session holds with a legacy upstream, opening one if needed.
    async fn binding_for(
        &self,
        agent: &Agent,
        up: usize,
        ephemeral: &mut Ephemeral,
    ) -> Result<Option<String>, DenyReason> {
        match agent {
            Agent::Session { id, session, .. } => {
                if let Some(b) = session.upstreams.get(&up) {
                    return Ok(b.session_id.clone());
                }
                let b = self
                    .open_upstream_session(up, agent.on(), session.client_capabilities.as_ref())
                    .await?;
                match self.session_bind(*id, up, b.clone()).await {
                    Ok(()) => Ok(b.session_id),
                    Err(winner) => {
                        if let Some(sid) = &b.session_id {
                            self.delete_upstream_session(up, agent.on(), sid).await;
                        }
                        match winner {
                            Some(w) => Ok(w.session_id),
                            None => Err(DenyReason::SessionNotFound),
                        }
                    }
                }
            }
            Agent::Modern { .. } => {
                // A stateless agent gets a fresh upstream session per request: nothing is shared between agents.
                let b = self.open_upstream_session(up, agent.on(), None).await?;
                if let Some(sid) = &b.session_id {
                    ephemeral.push((up, sid.clone()));
                }
                Ok(b.session_id)
            }
        }
    }

    /// Send one agent request to an upstream in the upstream's revision; returns the response to relay.
    async fn upstream_exchange(
        &self,
        agent: &Agent,
        up: usize,
        req: Request,
        ephemeral: &mut Ephemeral,
    ) -> Result<UpstreamResponse, DenyReason> {
        let (rev, sid) = self.exchange_revision(agent, up, ephemeral).await?;
        // Whatever the agent addressed to the gateway stays here, in every revision (lists are built
        // from the agent's request as it came).
        let mut req = req;
        if let Some(p) = req.params.as_mut() {
            mcp::strip_gateway_meta(p);
        }
        if rev.is_stateless() {
            let mut fwd = req;
            let forwarded_meta = fwd
                .params
                .as_ref()
                .and_then(|p| p.get("_meta"))
                .is_some_and(|m| m.is_object());
            match agent {
                // The request carries the agent's own `_meta`: it goes upstream as it is, in place.
                Agent::Modern { .. } if forwarded_meta => {}
                // Only a notification comes without one: it goes with an empty `_meta`, as it came.
                Agent::Modern { meta, .. } => {
                    let meta = meta.clone().unwrap_or_else(Value::object);
                    fwd.params = Some(params_with_meta(fwd.params.take(), meta));
                }
                Agent::Session { session, .. } => {
                    let mut m = modern_meta(
                        session
                            .client_capabilities
                            .as_ref()
                            .unwrap_or(&Value::object()),
                        session.client_info.as_ref(),
                    );
                    // Keep the agent's progress token.
                    if let Some(token) = fwd
                        .params
                        .as_ref()
                        .and_then(|p| p.get("_meta"))
                        .and_then(|m| m.get("progressToken"))
                    {
                        m.insert("progressToken", token.clone()).ok();
                    }
                    fwd.params = Some(params_with_meta(fwd.params.take(), m));
                }
            }
            // State the version we speak upstream.
            if let Some(m) = fwd.params.as_mut().and_then(|p| p.get_mut("_meta")) {
                m.insert(
                    transport::META_PROTOCOL_VERSION,
                    Revision::V2026_07_28.as_str(),
                )
                .ok();
            }
            let name = name_of(&fwd);
            let mut headers: Vec<(&str, String)> = modern_headers(&fwd.method, name.as_deref());
            if let Agent::Modern { params, .. } = agent {
                if fwd.method == "tools/call" {
                    headers.extend(params.iter().map(|(n, v)| (n.as_str(), v.clone())));
                }
            }
            return self
                .send_upstream(
                    up,
                    agent.on(),
                    "POST",
                    &headers,
                    &jsonrpc::encode(&Message::Request(fwd)),
                )
                .await;
        }
        let mut fwd = req;
        strip_modern_meta(&mut fwd);
        let body = jsonrpc::encode(&Message::Request(fwd));
        let mut resp = self
            .send_upstream(
                up,
                agent.on(),
                "POST",
                &legacy_headers(sid.as_deref()),
                &body,
            )
            .await?;
        resp.session_id.clone_from(&sid);
        if resp.status == 404 && sid.is_some() {
            // The upstream lost our session (restart, expiry): open a new one once and retry.
            let mut resp = resp;
            let _ = resp.read_all(&self.pool).await;
            if let Agent::Session { id, session, .. } = agent {
                self.session_unbind(*id, up).await;
                let b = self
                    .open_upstream_session(up, agent.on(), session.client_capabilities.as_ref())
                    .await?;
                let _ = self.session_bind(*id, up, b.clone()).await;
                let mut resp = self
                    .send_upstream(
                        up,
                        agent.on(),
                        "POST",
                        &legacy_headers(b.session_id.as_deref()),
                        &body,
                    )
                    .await?;
                resp.session_id = b.session_id;
                return Ok(resp);
            }
            return Err(DenyReason::UpstreamUnavailable);
        }
        Ok(resp)
    }

    async fn close_ephemeral(&self, on: &OnBehalf, ephemeral: Ephemeral) {
        for (up, sid) in ephemeral {
            self.delete_upstream_session(up, on, &sid).await;
        }
    }

    async fn merged_list(
        &self,
        sv: &Served,
        agent: &Agent,
        req: &Request,
        kind: ListKind,
        visible: &dyn Fn(&str) -> bool,
    ) -> Value {
        let mut items = Vec::new();
        let mut ttl_ms: Option<u64> = None;
        for def in sv.upstreams.iter().filter(|d| visible(&d.name)) {
            let up = def.slot;
            let mut ephemeral = Ephemeral::new();
            let mut cursor: Option<Value> = None;
            for _ in 0..LIST_PAGES_MAX {
                let mut page = Request {
                    id: req.id.clone(),
                    method: kind.method().into(),
                    params: req.params.clone(),
                };
                let mut params = page.params.take().unwrap_or_else(Value::object);
                match &cursor {
                    Some(c) => {
                        params.insert("cursor", c.clone()).ok();
                    }
                    None => {
                        if let Some(p) = params.as_object_mut() {
                            p.remove("cursor");
                        }
                    }
                }
                page.params = Some(params);
                let result = match self
                    .upstream_exchange(agent, up, page, &mut ephemeral)
                    .await
                {
                    Ok(mut resp) => self.read_response_message(&mut resp).await,
                    Err(r) => Err(r),
                };
                let result = match result {
                    Ok(jsonrpc::Response { outcome: Ok(r), .. }) => r,
                    // An upstream without this list (method not found) or one that is down contributes nothing;
                    // the others still answer.
                    Ok(_) => break,
                    Err(r) => {
                        crate::warn!(
                            "list={} upstream={} reason={}",
                            kind.method(),
                            def.name,
                            r.code()
                        );
                        break;
                    }
                };
                mcp::collect_list(&self.shared.naming, kind, &def.name, &result, &mut items);
                let t = result.get("ttlMs").and_then(|v| v.as_u64()).unwrap_or(0);
                ttl_ms = Some(ttl_ms.map_or(t, |m| m.min(t)));
                cursor = result.get("nextCursor").filter(|c| c.is_str()).cloned();
                if cursor.is_none() {
                    break;
                }
            }
            self.close_ephemeral(agent.on(), ephemeral).await;
        }
        let mut result = mcp::list_result(kind, items);
        if agent.is_modern() {
            // The merged list is computed for this agent: never publicly cacheable.
            result.insert("ttlMs", ttl_ms.unwrap_or(0)).ok();
            result.insert("cacheScope", "private").ok();
        }
        result
    }

    /// Forward a request to its upstream and relay the answer, JSON or SSE, to the agent.
    async fn forward<R: Reply>(
        &self,
        conn: &mut R,
        agent: &Agent,
        up: usize,
        req: Request,
        check: Option<&OutputCheck<'_>>,
    ) -> bool {
        let modern = agent.is_modern();
        let mut ephemeral = Ephemeral::new();
        // What the answer is matched against; the request itself moves upstream.
        let req_origin = Request {
            id: req.id.clone(),
            method: req.method.clone(),
            params: None,
        };
        let mut resp = match self.upstream_exchange(agent, up, req, &mut ephemeral).await {
            Ok(r) => r,
            Err(r) => {
                self.close_ephemeral(agent.on(), ephemeral).await;
                return self
                    .refuse(conn, Some(req_origin.id), modern, r.into(), &[])
                    .await;
            }
        };
        let upstream = self.slot_name(up);
        if let Some(a) = conn.audit() {
            a.upstream_status = Some(resp.status);
            a.upstream_us = Some(micros(resp.elapsed));
        }
        let keep = if resp.is_event_stream() && resp.status == 200 {
            self.relay_stream(conn, agent, (up, &upstream), &req_origin, &mut resp, check)
                .await
        } else {
            let upstream_status = resp.status;
            match self.read_response_message(&mut resp).await {
                Ok(r) => {
                    // 2026-07-28 ties some JSON-RPC errors to an HTTP status (400 for a missing client
                    // capability or header mismatch, 404 for a removed method): an upstream's 4xx error
                    // reaches a modern agent with its status, as if it had spoken to the upstream itself.
                    let status =
                        if modern && r.outcome.is_err() && (400..500).contains(&upstream_status) {
                            upstream_status
                        } else {
                            200
                        };
                    let msg = self.rewrite_response(agent, &upstream, &req_origin, r, check);
                    inc(&self.metrics.shared.counters.responses_ok);
                    let out = Response::new(status).header("content-type", "application/json");
                    let mut bytes = jsonrpc::encode(&msg);
                    self.scrub(&upstream, &mut bytes, &resp.presented);
                    conn.full(out, &bytes, false).await
                }
                Err(r) => {
                    self.refuse(conn, Some(req_origin.id.clone()), modern, r.into(), &[])
                        .await
                }
            }
        };
        self.close_ephemeral(agent.on(), ephemeral).await;
        keep
    }

    fn rewrite_response(
        &self,
        agent: &Agent,
        upstream: &str,
        req: &Request,
        mut r: jsonrpc::Response,
        check: Option<&OutputCheck<'_>>,
    ) -> Message {
        // The agent's id, whatever the upstream echoed.
        r.id = Some(req.id.clone());
        if let (Some(c), Ok(result)) = (check, &r.outcome) {
            if let Err(refused) = self.check_output(c, req.id.clone(), result) {
                return refused;
            }
        }
        if let Ok(result) = &mut r.outcome {
            if req.method == "resources/read" {
                mcp::rewrite_read_result(&self.shared.naming, upstream, result);
            }
            if agent.is_modern() {
                complete_result(result);
                if req.method == "resources/read" && result.get("ttlMs").is_none() {
                    result.insert("ttlMs", 0u64).ok();
                    result.insert("cacheScope", "private").ok();
                }
            }
        }
        Message::Response(r)
    }

    async fn relay_stream<R: Reply>(
        &self,
        conn: &mut R,
        agent: &Agent,
        (up, upstream): (usize, &str),
        req: &Request,
        resp: &mut UpstreamResponse,
        check: Option<&OutputCheck<'_>>,
    ) -> bool {
        let head = Response::new(200)
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .header("x-accel-buffering", "no");
        if !conn.stream_start(head).await {
            return false;
        }
        // A session agent's stream is resumable: its events get ids, and when the agent drops, the
        // rest of the upstream's answer is still read into the buffer for a GET with Last-Event-ID.
        let resumable = match agent {
            Agent::Session { id, .. } => Some((*id, self.post_streams().open(*id, Instant::now()))),
            Agent::Modern { .. } => None,
        };
        // The priming event (2025-11-25): an id to resume from before anything else is sent. Were the
        // agent gone already, the answer still goes into the buffer.
        let mut detached = false;
        if let Some((_, stream)) = resumable {
            // `retry`: how long a client whose stream broke waits before it comes back with the id.
            let mut prime = Vec::new();
            sse::encode(
                &sse::Event {
                    id: Some(portcullis_pipeline::replay::post_event_id(stream, 0)),
                    event: None,
                    data: String::new(),
                    retry_ms: Some(1000),
                },
                &mut prime,
            );
            detached = !conn.stream_data(prime).await;
        }
        let limits = self.parse_limits();
        let mut parser = SseParser::new(self.shared.config.limits.upstream_body_bytes_max);
        let mut events = Vec::new();
        let mut answered = false;
        // A 2025-11-25 upstream may close its stream before the answer (SSE polling, SEP-1699): the
        // gateway then resumes it with Last-Event-ID on the same upstream session, like a client would,
        // and the agent's stream carries on.
        let mut upstream_last: Option<String> = None;
        let mut upstream_retry = Duration::from_millis(0);
        let mut resumes = 0;
        while !answered {
            let chunk = match resp.next_chunk(&self.pool).await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    let (Some(last), Some(sid)) = (&upstream_last, resp.session_id.clone()) else {
                        break;
                    };
                    if resumes >= UPSTREAM_RESUMES_MAX {
                        break;
                    }
                    resumes += 1;
                    monoio::time::sleep(upstream_retry.min(UPSTREAM_RETRY_MAX)).await;
                    let mut headers = legacy_headers(Some(&sid));
                    headers.retain(|(n, _)| *n != "content-type");
                    for h in &mut headers {
                        if h.0 == "accept" {
                            h.1 = "text/event-stream".to_owned();
                        }
                    }
                    headers.push(("last-event-id", last.clone()));
                    match self
                        .send_upstream(up, agent.on(), "GET", &headers, b"")
                        .await
                    {
                        Ok(mut next) if next.status == 200 && next.is_event_stream() => {
                            next.session_id = Some(sid);
                            *resp = next;
                            continue;
                        }
                        Ok(mut next) => {
                            let _ = next.read_all(&self.pool).await;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                Err(e) => {
                    inc(&self.metrics.shared.counters.upstream_errors);
                    crate::warn!("upstream={upstream} stream error={e:?}");
                    break;
                }
            };
            if parser.push(&chunk, &mut events).is_err() {
                break;
            }
            let mut out = Vec::new();
            for ev in events.drain(..) {
                if let Some(id) = &ev.id {
                    upstream_last = Some(id.clone());
                }
                if let Some(ms) = ev.retry_ms {
                    upstream_retry = Duration::from_millis(ms);
                }
                if ev.data.is_empty() {
                    continue; // priming events carry an upstream event id the agent cannot resume against
                }
                let mut b = ev.data.into_bytes();
                let Ok(msg) = self.parse(&mut b, &limits) else {
                    continue;
                };
                let msg = match msg {
                    Message::Response(r) => {
                        answered = true;
                        self.rewrite_response(agent, upstream, req, r, check)
                    }
                    Message::Notification(mut n) => {
                        if let Some(p) = n.params.as_mut() {
                            mcp::rewrite_notification_params(
                                &self.shared.naming,
                                &n.method,
                                upstream,
                                p,
                            );
                        }
                        Message::Notification(n)
                    }
                    Message::Request(mut r) => {
                        // Upstream-to-agent requests (sampling, elicitation, roots) only exist for session agents.
                        if agent.is_modern() {
                            continue;
                        }
                        r.id = mcp::map_upstream_request_id(upstream, &r.id);
                        Message::Request(r)
                    }
                };
                let mut data = jsonrpc::encode(&msg);
                self.scrub(upstream, &mut data, &resp.presented);
                out.extend_from_slice(&self.frame_post_event(resumable, data));
                if answered {
                    break;
                }
            }
            if !detached && !out.is_empty() && !conn.stream_data(out).await {
                match resumable {
                    // The agent went away: dropping the upstream connection cancels the request there.
                    None => return false,
                    // It may come back for the rest: keep reading the answer into the buffer.
                    Some(_) => detached = true,
                }
            }
        }
        let last = if answered {
            inc(&self.metrics.shared.counters.responses_ok);
            None
        } else {
            self.metrics.deny(DenyReason::UpstreamProtocolError);
            let msg = jsonrpc::deny_response(
                Some(req.id.clone()),
                DenyReason::UpstreamProtocolError,
                &[],
            );
            Some(self.frame_post_event(resumable, jsonrpc::encode(&msg)))
        };
        if let Some((sid, stream)) = resumable {
            self.post_streams().finish(sid, stream, Instant::now());
        }
        if detached {
            return false;
        }
        if let Some(framed) = last {
            if !conn.stream_data(framed).await {
                return false;
            }
        }
        conn.stream_end().await
    }

    /// A session agent's answer to an upstream's request: restore the upstream's id and deliver it.
    async fn answer_upstream_request<R: Reply>(
        &self,
        conn: &mut R,
        sv: &Served,
        agent: &Agent,
        resp: jsonrpc::Response,
    ) -> bool {
        let Agent::Session { session, .. } = agent else {
            return self
                .refuse(conn, None, true, DenyReason::InvalidRequest.into(), &[])
                .await;
        };
        let target = resp
            .id
            .as_ref()
            .and_then(mcp::unmap_upstream_request_id)
            .and_then(|(name, orig)| sv.upstream(name).map(|up| (up, orig)));
        let Some((up, orig)) = target else {
            return self
                .refuse(conn, None, false, DenyReason::InvalidRequest.into(), &[])
                .await;
        };
        let mut fwd = resp;
        fwd.id = Some(orig);
        let sid = session
            .upstreams
            .get(&up)
            .and_then(|b| b.session_id.clone());
        match self
            .send_upstream(
                up,
                agent.on(),
                "POST",
                &legacy_headers(sid.as_deref()),
                &jsonrpc::encode(&Message::Response(fwd)),
            )
            .await
        {
            Ok(mut r) => {
                let _ = r.read_all(&self.pool).await;
                inc(&self.metrics.shared.counters.responses_ok);
                conn.full(Response::new(202), b"", false).await
            }
            Err(r) => self.refuse(conn, None, false, r.into(), &[]).await,
        }
    }

    async fn broadcast_notification(&self, on: &OnBehalf, session: &Session, msg: &Message) {
        let body = jsonrpc::encode(msg);
        for (up, b) in &session.upstreams {
            if let Ok(mut r) = self
                .send_upstream(
                    *up,
                    on,
                    "POST",
                    &legacy_headers(b.session_id.as_deref()),
                    &body,
                )
                .await
            {
                let _ = r.read_all(&self.pool).await;
            }
        }
    }

    async fn broadcast_request(&self, on: &OnBehalf, session: &Session, req: &Request) {
        let body = jsonrpc::encode(&Message::Request(req.clone()));
        for (up, b) in &session.upstreams {
            if b.revision.is_stateless() {
                continue;
            }
            if let Ok(mut r) = self
                .send_upstream(
                    *up,
                    on,
                    "POST",
                    &legacy_headers(b.session_id.as_deref()),
                    &body,
                )
                .await
            {
                let _ = self.read_response_message(&mut r).await;
            }
        }
    }
}

/// A `Reply` that names the request's snapshot on every response it writes, and writes the request's
/// audit record before the response leaves: in durable mode the response waits until the record is on
/// disk, and a record that cannot be written turns the response into `audit_unavailable`.
struct Stamped<'a, R> {
    inner: &'a mut R,
    metrics: &'a crate::metrics::CoreMetrics,
    label: &'a str,
    trail: Option<&'a crate::audit::CoreTrail>,
    event: portcullis_pipeline::audit::Event,
    t0: Instant,
    committed: bool,
    /// The 2026-07-28 gateway session to name in the response (`SESSION_HEADER`).
    session: Option<SessionId>,
    /// `Alt-Svc` to send (HTTPS over TCP, with HTTP/3 on).
    alt_svc: Option<&'a str>,
}

impl<R: Reply> Stamped<'_, R> {
    fn headed(&self, resp: Response) -> Response {
        let mut resp = resp.header(SNAPSHOT_HEADER, self.label.to_owned());
        if let Some(alt) = self.alt_svc {
            resp = resp.header("alt-svc", alt.to_owned());
        }
        match self.session {
            Some(id) => resp.header(SESSION_HEADER, id.to_string()),
            None => resp,
        }
    }

    /// Write the record (once). `Err` when it could not be.
    async fn commit(&mut self, status: u16, bytes_out: usize) -> Result<(), ()> {
        if self.committed {
            return Ok(());
        }
        self.committed = true;
        let e = &mut self.event;
        e.status = status;
        e.bytes_out = bytes_out as u64;
        e.latency_us = micros(self.t0.elapsed());
        let reason = e.reason.as_deref().and_then(DenyReason::from_code);
        e.decision = portcullis_pipeline::audit::decision_of(reason).to_owned();
        self.metrics.count(e);
        let Some(trail) = self.trail else {
            return Ok(());
        };
        let payload = serde_json::to_vec(&*e).unwrap_or_default();
        trail.record(payload).await.map_err(|_| ())
    }

    async fn unrecorded(&mut self) -> bool {
        let msg = jsonrpc::deny_response(None, DenyReason::AuditUnavailable, &[]);
        let resp = Response::new(DenyReason::AuditUnavailable.http_status())
            .header("content-type", "application/json")
            .header(SNAPSHOT_HEADER, self.label.to_owned());
        self.inner.full(resp, &jsonrpc::encode(&msg), true).await
    }
}

impl<R: Reply> Reply for Stamped<'_, R> {
    async fn full(&mut self, resp: Response, body: &[u8], close: bool) -> bool {
        if self.commit(resp.status, body.len()).await.is_err() {
            let _ = self.unrecorded().await;
            return false;
        }
        let resp = self.headed(resp);
        self.inner.full(resp, body, close).await
    }
    async fn stream_start(&mut self, resp: Response) -> bool {
        if self.commit(resp.status, 0).await.is_err() {
            let _ = self.unrecorded().await;
            return false;
        }
        let resp = self.headed(resp);
        self.inner.stream_start(resp).await
    }
    async fn stream_data(&mut self, data: Vec<u8>) -> bool {
        self.inner.stream_data(data).await
    }
    async fn stream_end(&mut self) -> bool {
        self.inner.stream_end().await
    }
    fn audit(&mut self) -> Option<&mut portcullis_pipeline::audit::Event> {
        Some(&mut self.event)
    }
    fn name_session(&mut self, id: SessionId) {
        self.session = Some(id);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One open stream counted against its session (`Core::stream_slot`), given back when dropped.
struct StreamSlot<'a> {
    core: &'a Core,
    id: SessionId,
}

impl Drop for StreamSlot<'_> {
    fn drop(&mut self) {
        match self.core.owner(self.id) {
            None => {}
            Some(None) => self.core.sessions.borrow_mut().stream_closed(self.id),
            Some(Some(tx)) => {
                let (tx, id) = (tx.clone(), self.id);
                monoio::spawn(async move {
                    let _ = tx.send_async(SessionMsg::StreamClosed { id }).await;
                });
            }
        }
    }
}

/// Response header naming the snapshot a request was served from: `v3 blake3:<hex>`, `none`, `static`.
pub const SNAPSHOT_HEADER: &str = "portcullis-snapshot";

/// Call decisions one core remembers per snapshot (`Core::decide_call`); past it the memo starts over.
const DECISIONS_MAX: usize = 65_536;

/// Agents whose discoverable tools one core remembers per snapshot (`Core::visible_tools`).
const DISCOVERED_AGENTS_MAX: usize = 1024;

/// RFC 9728 protected-resource metadata: the root form, and the form for the resource `/mcp`.
const PROTECTED_RESOURCE_PATH: &str = "/.well-known/oauth-protected-resource";
const PROTECTED_RESOURCE_MCP_PATH: &str = "/.well-known/oauth-protected-resource/mcp";

/// What an agent is told when its session id does not lead to a live session.
fn session_refusal(e: SessionError) -> DenyReason {
    match e {
        SessionError::Expired => DenyReason::SessionExpired,
        SessionError::Revoked => DenyReason::SessionRevoked,
        SessionError::NotFound | SessionError::Full => DenyReason::SessionNotFound,
        SessionError::StreamLimit => DenyReason::StreamLimit,
    }
}

fn origin_of(head: &RequestHead) -> String {
    let scheme = if head.secure { "https" } else { "http" };
    let host = head
        .header_str("host")
        .or_else(|| head.header_str(":authority"))
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

/// This gateway's resource URI as the agent addressed it (RFC 8707 / RFC 9728 `resource`).
fn resource_uri(head: &RequestHead) -> String {
    format!("{}/mcp", origin_of(head))
}

fn protected_resource_url(head: &RequestHead) -> String {
    format!("{}{PROTECTED_RESOURCE_MCP_PATH}", origin_of(head))
}

/// simd-json's value as serde_json's (what the schema validator and the policy context read).
fn from_serde(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::null(),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::from)
            .or_else(|| n.as_u64().map(Value::from))
            .unwrap_or_else(|| Value::from(n.as_f64().unwrap_or_default())),
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => Value::Array(Box::new(a.iter().map(from_serde).collect())),
        serde_json::Value::Object(o) => {
            let mut m = simd_json::owned::Object::with_capacity(o.len());
            for (k, v) in o {
                m.insert(k.clone(), from_serde(v));
            }
            Value::Object(Box::new(m))
        }
    }
}

fn to_serde(v: &Value) -> serde_json::Value {
    use simd_json::StaticNode;
    match v {
        Value::Static(StaticNode::Null) => serde_json::Value::Null,
        Value::Static(StaticNode::Bool(b)) => serde_json::Value::Bool(*b),
        Value::Static(StaticNode::I64(i)) => serde_json::Value::from(*i),
        Value::Static(StaticNode::U64(u)) => serde_json::Value::from(*u),
        Value::Static(StaticNode::F64(f)) => serde_json::Number::from_f64(*f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Value::String(s) => serde_json::Value::String(s.to_string()),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(to_serde).collect()),
        Value::Object(o) => serde_json::Value::Object(
            o.iter()
                .map(|(k, v)| (k.to_string(), to_serde(v)))
                .collect(),
        ),
    }
}

/// A `tools/call` whose result is held against the pinned output schema.
struct OutputCheck<'a> {
    sv: &'a Served,
    capability: String,
    tool: String,
}

/// What a refused call carries: the reason, `error.data` fields, a detail for `error.message`.
type CallRefusal = (DenyReason, Vec<(&'static str, Value)>, Option<String>);

/// A denial as the wire carries it: `policy_denied` with the deciding policies and the snapshot.
fn policy_refusal(sv: &Served, verdict: Verdict) -> Result<(), CallRefusal> {
    let Verdict {
        allowed,
        policies,
        detail,
    } = verdict;
    if allowed {
        return Ok(());
    }
    let ids: Vec<Value> = policies.iter().map(|p| Value::from(p.as_str())).collect();
    Err((
        DenyReason::PolicyDenied,
        vec![
            ("snapshot", Value::from(sv.label.as_str())),
            ("policies", Value::Array(Box::new(ids))),
        ],
        detail.or_else(|| {
            policies
                .is_empty()
                .then(|| "no policy permits it".to_owned())
        }),
    ))
}

/// Govern one `tools/call` of a pinned tool: Cedar `call` with the arguments, then the pinned input
/// schema. Nothing reaches the upstream unless both pass.
#[allow(clippy::too_many_arguments)]
fn govern_call(
    core: &Core,
    sv: &Served,
    who: &str,
    capability: &str,
    name: &str,
    req: &Request,
    env: &Env<'_>,
    param_headers: Option<&[(String, String)]>,
) -> Result<Vec<String>, CallRefusal> {
    let arguments = req
        .params
        .as_ref()
        .and_then(|p| p.get("arguments"))
        .map_or_else(|| serde_json::Value::Object(Default::default()), to_serde);
    let verdict = core.decide_call(sv, who, capability, name, &arguments, env);
    let policies = verdict.policies.clone();
    policy_refusal(sv, verdict)?;
    if let Err(p) = sv.governor.validate(capability, name, &arguments) {
        let detail = format!("{} ({} at `{}`)", p.message, p.keyword, p.pointer);
        return Err((
            DenyReason::SchemaInvalid,
            vec![
                ("snapshot", Value::from(sv.label.as_str())),
                ("pointer", Value::from(p.pointer)),
                ("keyword", Value::from(p.keyword)),
            ],
            Some(detail),
        ));
    }
    // A 2026-07-28 agent mirrors annotated arguments into headers that intermediaries may have acted
    // on: they must say what the body says before the body is acted on.
    if let Some(headers) = param_headers {
        if let Err(m) = sv
            .governor
            .check_param_headers(capability, name, &arguments, headers)
        {
            let (reason, what) = if m.missing {
                (DenyReason::MissingHeader, "is absent")
            } else {
                (DenyReason::HeaderMismatch, "disagrees with the arguments")
            };
            let detail = format!("{} {what}", m.header);
            return Err((
                reason,
                vec![("header", Value::from(m.header.as_str()))],
                Some(detail),
            ));
        }
    }
    Ok(policies)
}

/// Messages queued from upstream streams to one agent's GET stream; at the bound upstream reads wait.
const LISTEN_QUEUE_LEN: usize = 64;
/// How a relayed stream ended.
enum Relayed {
    /// Writing failed: the agent is gone, nothing more can be sent.
    AgentGone,
    /// The agent's session ended.
    Ended,
    /// The gateway is shutting down.
    Draining,
}

/// Interval of SSE comments on an idle GET stream.
/// Retries of an upstream GET refused with 409 while a superseded stream lets go: 10, 20 … 640 ms.
const FOLLOW_RETRY_FIRST: Duration = Duration::from_millis(10);
const FOLLOW_RETRY_LAST: Duration = Duration::from_millis(640);
const LISTEN_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);
/// How often an idle GET stream looks at the drain flag.
const LISTEN_DRAIN_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// What of an upstream's out-of-request stream reaches the agent, renamed into the gateway's namespace.
fn rewrite_stream_message(naming: &mcp::Naming, upstream: &str, msg: Message) -> Option<Message> {
    match msg {
        Message::Notification(mut n) => {
            if n.method == "notifications/subscriptions/acknowledged" {
                return None;
            }
            if let Some(p) = n.params.as_mut() {
                mcp::rewrite_notification_params(naming, &n.method, upstream, p);
                if let Some(meta) = p.get_mut("_meta").and_then(|m| m.as_object_mut()) {
                    meta.remove("io.modelcontextprotocol/subscriptionId");
                }
            }
            Some(Message::Notification(n))
        }
        Message::Request(mut r) => {
            r.id = mcp::map_upstream_request_id(upstream, &r.id);
            Some(Message::Request(r))
        }
        // Responses on a standalone stream belong to resumed requests, which the gateway does not resume.
        Message::Response(_) => None,
    }
}

/// `Origin` values that pass: loopback hosts on any port, or one of the configured origins.
fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a == origin) {
        return true;
    }
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        rest.split(':').next().unwrap_or("")
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

/// The gateway's `server/discover` to an upstream, asking which revisions it speaks.
pub(crate) fn discover_request() -> Request {
    Request {
        id: Id::String("portcullis-discover".into()),
        method: "server/discover".into(),
        params: Some(params_with_meta(None, modern_meta(&Value::object(), None))),
    }
}

/// Whether a `server/discover` result lists 2026-07-28 among its versions.
pub(crate) fn offers_modern(result: &Value) -> bool {
    result
        .get("supportedVersions")
        .and_then(|v| v.as_array())
        .is_some_and(|a| {
            a.iter()
                .any(|v| v.as_str() == Some(Revision::V2026_07_28.as_str()))
        })
}

/// The gateway's 2025-11-25 `initialize` to an upstream, with the agent's capabilities if it has any.
pub(crate) fn initialize_request(capabilities: Option<&Value>) -> Request {
    let mut params = simd_json::owned::Object::new();
    params.insert(
        "protocolVersion".into(),
        Value::from(Revision::V2025_11_25.as_str()),
    );
    params.insert(
        "capabilities".into(),
        capabilities.cloned().unwrap_or_else(Value::object),
    );
    params.insert("clientInfo".into(), gateway_info());
    Request {
        id: Id::Number(0),
        method: "initialize".into(),
        params: Some(Value::from(params)),
    }
}

pub(crate) fn initialized_notification() -> Vec<u8> {
    jsonrpc::encode(&Message::Notification(jsonrpc::Notification {
        method: "notifications/initialized".into(),
        params: None,
    }))
}

pub(crate) fn gateway_info() -> Value {
    let mut o = simd_json::owned::Object::new();
    o.insert("name".into(), Value::from("portcullis"));
    o.insert("version".into(), Value::from(VERSION));
    Value::from(o)
}

fn discover_result(naming: &mcp::Naming) -> Value {
    let mut o = simd_json::owned::Object::new();
    o.insert(
        "supportedVersions".into(),
        Value::Array(Box::new(
            Revision::ALL
                .iter()
                .rev()
                .map(|r| Value::from(r.as_str()))
                .collect(),
        )),
    );
    o.insert("capabilities".into(), mcp::gateway_capabilities());
    o.insert("instructions".into(), Value::from(naming.instructions()));
    o.insert("ttlMs".into(), Value::from(0u64));
    o.insert("cacheScope".into(), Value::from("private"));
    let mut meta = simd_json::owned::Object::new();
    meta.insert(transport::META_SERVER_INFO.into(), gateway_info());
    o.insert("_meta".into(), Value::from(meta));
    Value::from(o)
}

/// One encoded JSON-RPC message as an SSE `message` event, with its event id if it has one.
fn sse_event(data: &[u8], id: Option<String>) -> Vec<u8> {
    let mut framed = Vec::with_capacity(data.len() + 48);
    sse::encode(
        &sse::Event {
            id,
            event: Some("message".into()),
            data: String::from_utf8_lossy(data).into_owned(),
            retry_ms: None,
        },
        &mut framed,
    );
    framed
}

/// One JSON-RPC message as an SSE `message` event.
fn sse_message(msg: &Message) -> Vec<u8> {
    sse_event(&jsonrpc::encode(msg), None)
}

/// Read the JSON-RPC response of an upstream exchange, from a JSON body or the first response on an SSE
/// stream (notifications before it are dropped: the caller is the gateway, not an agent).
pub(crate) async fn read_response(
    pool: &Pool,
    resp: &mut UpstreamResponse,
    limits: &ParseLimits,
    event_bytes_max: usize,
    parser: Option<&RefCell<jsonrpc::Scratch>>,
) -> Result<jsonrpc::Response, DenyReason> {
    let parse = |b: &mut [u8]| match parser {
        Some(s) => jsonrpc::parse_in(b, limits, &mut s.borrow_mut()),
        None => jsonrpc::parse(b, limits),
    };
    if resp.is_event_stream() {
        let mut parser = SseParser::new(event_bytes_max);
        let mut events = Vec::new();
        loop {
            let Some(chunk) = resp.next_chunk(pool).await.map_err(|e| e.reason())? else {
                return Err(DenyReason::UpstreamProtocolError);
            };
            parser
                .push(&chunk, &mut events)
                .map_err(|_| DenyReason::UpstreamProtocolError)?;
            for ev in events.drain(..) {
                if ev.data.is_empty() {
                    continue;
                }
                let mut b = ev.data.into_bytes();
                if let Ok(Message::Response(r)) = parse(&mut b) {
                    // Drain the rest so the connection can be reused.
                    while let Ok(Some(_)) = resp.next_chunk(pool).await {}
                    return Ok(r);
                }
            }
        }
    }
    let mut body = resp.read_all(pool).await.map_err(|e| e.reason())?;
    match parse(&mut body) {
        Ok(Message::Response(r)) => Ok(r),
        _ => Err(DenyReason::UpstreamProtocolError),
    }
}

/// Give a result the 2026-07-28 `resultType` if an upstream (or the gateway) left it out.
fn complete_result(result: &mut Value) {
    if result.get("resultType").is_none() {
        result.insert("resultType", "complete").ok();
    }
}

/// The `_meta` a 2026-07-28 upstream needs, built for an agent that spoke 2025-11-25 (or for the gateway).
pub(crate) fn modern_meta(capabilities: &Value, client_info: Option<&Value>) -> Value {
    let mut m = simd_json::owned::Object::new();
    m.insert(
        transport::META_PROTOCOL_VERSION.into(),
        Value::from(Revision::V2026_07_28.as_str()),
    );
    m.insert(
        transport::META_CLIENT_CAPABILITIES.into(),
        capabilities.clone(),
    );
    m.insert(
        transport::META_CLIENT_INFO.into(),
        client_info.cloned().unwrap_or_else(gateway_info),
    );
    Value::from(m)
}

pub(crate) fn params_with_meta(params: Option<Value>, meta: Value) -> Value {
    let mut p = params.unwrap_or_else(Value::object);
    p.insert("_meta", meta).ok();
    p
}

/// Remove the 2026-07-28 `_meta` keys before a request goes to a 2025-11-25 upstream.
fn strip_modern_meta(req: &mut Request) {
    let Some(meta) = req
        .params
        .as_mut()
        .and_then(|p| p.get_mut("_meta"))
        .and_then(|m| m.as_object_mut())
    else {
        return;
    };
    meta.retain(|k, _| !k.starts_with("io.modelcontextprotocol/"));
    if meta.is_empty() {
        if let Some(p) = req.params.as_mut().and_then(|p| p.as_object_mut()) {
            p.remove("_meta");
        }
    }
}

/// `Mcp-Param-*` headers a request carries, at most `PARAM_HEADERS_MAX` (the header limits already
/// bound their size), names lowercased.
fn param_headers(head: &RequestHead) -> Vec<(String, String)> {
    head.headers
        .iter()
        .filter(|(n, _)| {
            n.len() > PARAM_PREFIX.len()
                && n.as_bytes()[..PARAM_PREFIX.len()].eq_ignore_ascii_case(PARAM_PREFIX.as_bytes())
        })
        .filter_map(|(n, v)| {
            Some((
                n.to_ascii_lowercase(),
                std::str::from_utf8(v).ok()?.to_owned(),
            ))
        })
        .take(PARAM_HEADERS_MAX)
        .collect()
}

const PARAM_PREFIX: &str = "mcp-param-";
/// `Mcp-Param-*` headers passed on per request, at most.
const PARAM_HEADERS_MAX: usize = 64;

fn name_of(req: &Request) -> Option<String> {
    let field = match req.method.as_str() {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        _ => return None,
    };
    req.params.as_ref()?.get(field)?.as_str().map(str::to_owned)
}

pub(crate) fn modern_headers(method: &str, name: Option<&str>) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("content-type", "application/json".to_owned()),
        ("accept", "application/json, text/event-stream".to_owned()),
        (
            "mcp-protocol-version",
            Revision::V2026_07_28.as_str().to_owned(),
        ),
        ("mcp-method", method.to_owned()),
    ];
    if let Some(n) = name {
        h.push(("mcp-name", transport::encode_header_value(n)));
    }
    h
}

pub(crate) fn legacy_headers(session: Option<&str>) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("content-type", "application/json".to_owned()),
        ("accept", "application/json, text/event-stream".to_owned()),
        (
            "mcp-protocol-version",
            Revision::V2025_11_25.as_str().to_owned(),
        ),
    ];
    if let Some(s) = session {
        h.push(("mcp-session-id", s.to_owned()));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audit digest of a call's arguments is taken over the fast generator's compact JSON; it is the
    /// serde serializer's byte for byte, so digests did not change when the hashing moved to it.
    #[test]
    fn arguments_serialize_as_the_serde_serializer_does() {
        let mut body =
            br#"{"s":"x\u00e9\n\"q\"\u0001/","n":-42,"f":2.5e-7,"big":18446744073709551615,
            "t":true,"z":null,"a":[1,{"k":[]},{}],"o":{"nested":{"deep":"\ud83d\ude00"}}}"#
                .to_vec();
        let v = simd_json::to_owned_value(&mut body).unwrap();
        let mut fast = Vec::new();
        v.write(&mut fast).unwrap();
        assert_eq!(fast, simd_json::to_vec(&v).unwrap());
    }

    #[test]
    fn origins() {
        assert!(origin_allowed("http://localhost:3000", &[]));
        assert!(origin_allowed("https://127.0.0.1", &[]));
        assert!(origin_allowed("http://[::1]:8080", &[]));
        assert!(!origin_allowed("http://evil.example", &[]));
        assert!(!origin_allowed("http://localhost.evil.example", &[]));
        assert!(origin_allowed(
            "https://console.corp",
            &["https://console.corp".to_owned()]
        ));
        assert!(!origin_allowed("null", &[]));
    }

    #[test]
    fn modern_meta_is_stripped_for_legacy_upstreams() {
        let mut b = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":5,"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#.to_vec();
        let Ok(Message::Request(mut r)) = jsonrpc::parse(&mut b, &ParseLimits::default()) else {
            panic!()
        };
        strip_modern_meta(&mut r);
        let s = String::from_utf8(jsonrpc::encode(&Message::Request(r))).unwrap();
        assert!(s.contains(r#""_meta":{"progressToken":5}"#), "{s}");
    }
}
