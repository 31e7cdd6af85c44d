//! Session table for one core: open, touch, expire, close.
//!
//! A session never moves between cores. Its id names the owning core and node (`SessionId::core`), so
//! other cores ask the owner instead of sharing the table. Nothing here reads a clock or draws randomness:
//! callers pass `now` and the random bytes of a new id.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::revision::Revision;

/// A gateway-minted session id: 16 random bytes plus the owning node and core.
/// Wire form: 40 lowercase hex digits, `NNNNCCCC` + 32 random.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionId {
    pub node: u16,
    pub core: u16,
    pub random: [u8; 16],
}

impl SessionId {
    pub const WIRE_LEN: usize = 40;

    pub fn parse(s: &str) -> Option<SessionId> {
        if s.len() != Self::WIRE_LEN
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let node = u16::from_str_radix(&s[0..4], 16).ok()?;
        let core = u16::from_str_radix(&s[4..8], 16).ok()?;
        let mut random = [0u8; 16];
        for (i, r) in random.iter_mut().enumerate() {
            *r = u8::from_str_radix(&s[8 + 2 * i..10 + 2 * i], 16).ok()?;
        }
        Some(SessionId { node, core, random })
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}{:04x}", self.node, self.core)?;
        for b in self.random {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Bounds on sessions, from `[limits]`.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Idle time after which a session expires.
    pub session_idle: Duration,
    /// Longest life of a session, however active.
    pub session_duration_max: Duration,
    /// Live sessions on one core; at the bound new sessions are refused, existing ones kept.
    pub sessions_per_core_max: usize,
    /// Open streams (a 2025-11-25 GET stream, 2026-07-28 `subscriptions/listen`) of one session.
    pub streams_per_session_max: u32,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            session_idle: Duration::from_secs(30 * 60),
            session_duration_max: Duration::from_secs(24 * 3600),
            sessions_per_core_max: 10_000,
            streams_per_session_max: 8,
        }
    }
}

/// An agent's own session bounds, from its registry record (`control::AgentSessions`); each one left
/// out falls back to the gateway's `[limits]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentSessionLimits {
    pub idle: Option<Duration>,
    pub duration_max: Option<Duration>,
    /// Live sessions of the agent across all cores.
    pub max: Option<usize>,
    pub streams_max: Option<u32>,
}

/// Parse a duration written `N` + `s`, `m`, `h` or `d` (`90s`, `30m`, `8h`, `7d`), 1 s to 31 days.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}`: write a number and a unit, e.g. 30m"))?;
    let unit: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{s}`: the unit is s, m, h or d")),
    };
    n.checked_mul(unit)
        .filter(|secs| (1..=31 * 86_400).contains(secs))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}`: must be 1s to 31d"))
}

/// The canonical form of a duration `parse_duration` accepted: the largest unit that divides it.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionError {
    NotFound,
    Expired,
    Full,
    /// An operator revoked it (`SessionShard::revoke`).
    Revoked,
    /// It holds as many open streams as it may.
    StreamLimit,
}

/// Which sessions an operator revokes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revoke {
    Id(SessionId),
    /// Every session of this agent.
    Agent(String),
    /// Every session opened with this identity (`key:<id>`, `jwt`, `certificate`).
    Identity(String),
}

impl Revoke {
    /// Whether a session of `agent`, opened with `identity`, is one of those named.
    pub fn names(&self, id: SessionId, agent: Option<&str>, identity: Option<&str>) -> bool {
        match self {
            Revoke::Id(i) => *i == id,
            Revoke::Agent(a) => agent == Some(a.as_str()),
            Revoke::Identity(k) => identity == Some(k.as_str()),
        }
    }
}

/// The gateway's own session with one upstream, held on behalf of one agent session and never shown to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamBinding {
    /// The upstream's `Mcp-Session-Id`, if it issued one.
    pub session_id: Option<String>,
    pub revision: Revision,
}

/// What a new session starts with.
#[derive(Clone, Debug)]
pub struct Opening {
    pub revision: Revision,
    pub client_capabilities: Option<simd_json::OwnedValue>,
    pub client_info: Option<simd_json::OwnedValue>,
    pub agent: Option<String>,
    pub identity: Option<String>,
    pub transport: &'static str,
    /// The credential lease a 2026-07-28 session groups requests by (`Session::lease`).
    pub lease: Option<String>,
    pub idle: Duration,
    pub duration_max: Duration,
    pub streams_max: u32,
}

impl Opening {
    /// A session of `revision` under the gateway's bounds, with nothing else known yet.
    pub fn new(revision: Revision, limits: &SessionLimits) -> Opening {
        Opening {
            revision,
            client_capabilities: None,
            client_info: None,
            agent: None,
            identity: None,
            transport: "h1",
            lease: None,
            idle: limits.session_idle,
            duration_max: limits.session_duration_max,
            streams_max: limits.streams_per_session_max,
        }
    }

    /// Apply an agent's own bounds over the gateway's.
    pub fn bounded_by(mut self, agent: &AgentSessionLimits) -> Opening {
        self.idle = agent.idle.unwrap_or(self.idle);
        self.duration_max = agent.duration_max.unwrap_or(self.duration_max);
        self.streams_max = agent.streams_max.unwrap_or(self.streams_max);
        self
    }
}

#[derive(Clone, Debug)]
pub struct Session {
    pub revision: Revision,
    pub created: Instant,
    pub last_active: Instant,
    pub requests: u64,
    /// What the agent declared in `initialize`, replayed as `_meta` to 2026-07-28 upstreams.
    pub client_capabilities: Option<simd_json::OwnedValue>,
    pub client_info: Option<simd_json::OwnedValue>,
    /// The registered agent that opened the session (`None` where nothing is governed: static mode).
    /// Every later request of the session must authenticate as the same agent.
    pub agent: Option<String>,
    /// Indexed by upstream position in the configuration.
    pub upstreams: HashMap<usize, UpstreamBinding>,
    /// How the agent proved who it is when it opened the session: `key:<id>`, `jwt`, `certificate`.
    pub identity: Option<String>,
    /// `h1`, `h2` or `h3`.
    pub transport: &'static str,
    /// A 2026-07-28 session: the credential lease (`key:<id>`, `jwt:<token digest>`,
    /// `certificate:<agent>`) whose requests it groups when they do not name the session.
    pub lease: Option<String>,
    /// This session's own bounds (the agent's, else the gateway's).
    pub idle: Duration,
    pub duration_max: Duration,
    pub streams: u32,
    pub streams_max: u32,
}

impl Session {
    fn is_expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_active) >= self.idle
            || now.saturating_duration_since(self.created) >= self.duration_max
    }
}

/// A session as stored to outlive a restart (`storage::sessions`): clock readings become Unix
/// milliseconds; upstream sessions are left out (the next request opens them again) and so are open
/// streams (none survive a restart).
///
/// Field names are one letter: 10,000 stored sessions are their bytes many times over in the store's
/// pages (and the appliance's memory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    #[serde(rename = "r")]
    pub revision: String,
    #[serde(rename = "c")]
    pub created_ms: u64,
    #[serde(rename = "a")]
    pub last_active_ms: u64,
    #[serde(rename = "n")]
    pub requests: u64,
    /// JSON text.
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub client_capabilities: Option<String>,
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub client_info: Option<String>,
    #[serde(rename = "g", default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(rename = "t")]
    pub transport: String,
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    #[serde(rename = "d")]
    pub idle_ms: u64,
    #[serde(rename = "m")]
    pub duration_max_ms: u64,
    #[serde(rename = "s")]
    pub streams_max: u32,
}

impl Persisted {
    /// `s` as of `now`, which is `now_ms` on the wall clock.
    pub fn of(s: &Session, now: Instant, now_ms: u64) -> Persisted {
        let ago = |t: Instant| {
            let d = u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX);
            now_ms.saturating_sub(d)
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Persisted {
            revision: s.revision.as_str().to_owned(),
            created_ms: ago(s.created),
            last_active_ms: ago(s.last_active),
            requests: s.requests,
            client_capabilities: s
                .client_capabilities
                .as_ref()
                .map(simd_json::to_string)
                .and_then(Result::ok),
            client_info: s
                .client_info
                .as_ref()
                .map(simd_json::to_string)
                .and_then(Result::ok),
            agent: s.agent.clone(),
            identity: s.identity.clone(),
            transport: s.transport.to_owned(),
            lease: s.lease.clone(),
            idle_ms: ms(s.idle),
            duration_max_ms: ms(s.duration_max),
            streams_max: s.streams_max,
        }
    }

    /// The session again, as of `now` (`now_ms` on the wall clock); `None` when it has expired since,
    /// names a revision this gateway no longer speaks, or lies about its times.
    pub fn restore(self, now: Instant, now_ms: u64) -> Option<Session> {
        let at = |ms: u64| now.checked_sub(Duration::from_millis(now_ms.checked_sub(ms)?));
        let json =
            |t: Option<String>| t.and_then(|t| simd_json::to_owned_value(&mut t.into_bytes()).ok());
        let s = Session {
            revision: Revision::parse(&self.revision)?,
            created: at(self.created_ms)?,
            last_active: at(self.last_active_ms)?,
            requests: self.requests,
            client_capabilities: json(self.client_capabilities),
            client_info: json(self.client_info),
            agent: self.agent,
            upstreams: HashMap::new(),
            identity: self.identity,
            transport: match self.transport.as_str() {
                "h2" => "h2",
                "h3" => "h3",
                _ => "h1",
            },
            lease: self.lease,
            idle: Duration::from_millis(self.idle_ms),
            duration_max: Duration::from_millis(self.duration_max_ms),
            streams: 0,
            streams_max: self.streams_max,
        };
        (!s.is_expired(now)).then_some(s)
    }
}

/// A lease's session as `SessionShard::lease` found or opened it: what a core that does not own it
/// needs to know to serve the lease's next requests without asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseHeld {
    pub id: SessionId,
    pub created: Instant,
    pub idle: Duration,
    pub duration_max: Duration,
    /// Opened by this call.
    pub opened: bool,
}

impl LeaseHeld {
    fn of(id: SessionId, s: &Session) -> LeaseHeld {
        LeaseHeld {
            id,
            created: s.created,
            idle: s.idle,
            duration_max: s.duration_max,
            opened: false,
        }
    }
}

#[derive(Debug)]
pub struct SessionShard {
    limits: SessionLimits,
    sessions: HashMap<SessionId, Session>,
    /// Revoked ids and when, so their next use says `session_revoked` rather than "not found"; kept
    /// for the longest a session could have lived on, bounded like the sessions themselves.
    revoked: HashMap<SessionId, Instant>,
    /// Expired ids and when, so a use after the sweep removed one still says `session_expired`;
    /// bounded like `revoked`.
    expired: HashMap<SessionId, Instant>,
    /// The live 2026-07-28 sessions by credential lease.
    leases: HashMap<String, SessionId>,
}

impl SessionShard {
    pub fn new(limits: SessionLimits) -> Self {
        SessionShard {
            limits,
            sessions: HashMap::new(),
            revoked: HashMap::new(),
            expired: HashMap::new(),
            leases: HashMap::new(),
        }
    }

    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn open(
        &mut self,
        now: Instant,
        id: SessionId,
        o: Opening,
    ) -> Result<SessionId, SessionError> {
        if self.sessions.len() >= self.limits.sessions_per_core_max {
            self.expire(now);
            if self.sessions.len() >= self.limits.sessions_per_core_max {
                return Err(SessionError::Full);
            }
        }
        if let Some(lease) = &o.lease {
            self.leases.insert(lease.clone(), id);
        }
        self.sessions.insert(
            id,
            Session {
                revision: o.revision,
                created: now,
                last_active: now,
                requests: 0,
                client_capabilities: o.client_capabilities,
                client_info: o.client_info,
                agent: o.agent,
                upstreams: HashMap::new(),
                identity: o.identity,
                transport: o.transport,
                lease: o.lease,
                idle: o.idle,
                duration_max: o.duration_max,
                streams: 0,
                streams_max: o.streams_max,
            },
        );
        Ok(id)
    }

    /// The live session of credential lease `lease` held by `agent`, its use counted; with `open`, one
    /// is opened when there is none (or the last one expired).
    pub fn lease(
        &mut self,
        now: Instant,
        lease: &str,
        agent: &str,
        open: Option<(SessionId, Opening)>,
    ) -> Result<LeaseHeld, SessionError> {
        if let Some(&id) = self.leases.get(lease) {
            let theirs = match self.sessions.get(&id) {
                Some(s) => s.agent.as_deref() != Some(agent),
                None => false,
            };
            if !theirs {
                match self.touch(id, now) {
                    Ok(s) => return Ok(LeaseHeld::of(id, s)),
                    Err(_) => {
                        self.leases.remove(lease);
                    }
                }
            } else if open.is_some() {
                // The credential now names another agent (a new snapshot mapped the token anew): the
                // old agent's session of it ends, the new agent's starts.
                self.remove(id);
            } else {
                return Err(SessionError::NotFound);
            }
        }
        let (id, o) = open.ok_or(SessionError::NotFound)?;
        self.open(now, id, o)?;
        let s = self.sessions.get(&id).ok_or(SessionError::NotFound)?;
        Ok(LeaseHeld {
            opened: true,
            ..LeaseHeld::of(id, s)
        })
    }

    /// Uses of a session another core served (a lease it caches): counted, and `at` is its last activity
    /// unless a later one is known.
    pub fn seen(&mut self, id: SessionId, at: Instant, requests: u64) {
        if let Some(s) = self.sessions.get_mut(&id) {
            if !s.is_expired(at) {
                s.last_active = s.last_active.max(at);
                s.requests += requests;
            }
        }
    }

    /// Put back a session restored after a restart (`Persisted::restore`).
    pub fn restore(&mut self, id: SessionId, s: Session) {
        if let Some(lease) = &s.lease {
            self.leases.insert(lease.clone(), id);
        }
        self.sessions.insert(id, s);
    }

    pub fn contains(&self, id: SessionId) -> bool {
        self.sessions.contains_key(&id)
    }

    /// Count one more open stream of the session, unless it holds as many as it may.
    pub fn stream_open(&mut self, id: SessionId) -> Result<(), SessionError> {
        let s = self.sessions.get_mut(&id).ok_or(SessionError::NotFound)?;
        if s.streams >= s.streams_max {
            return Err(SessionError::StreamLimit);
        }
        s.streams += 1;
        Ok(())
    }

    pub fn stream_closed(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.streams = s.streams.saturating_sub(1);
        }
    }

    /// A live session, to fill in what its opener knows beyond `open` (no use is counted).
    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        self.sessions.get_mut(&id)
    }

    /// Live sessions of `agent` on this core.
    pub fn count_agent(&self, agent: &str) -> usize {
        self.sessions
            .values()
            .filter(|s| s.agent.as_deref() == Some(agent))
            .count()
    }

    /// The live sessions, for operators.
    pub fn list(&self) -> impl Iterator<Item = (&SessionId, &Session)> {
        self.sessions.iter()
    }

    /// Take a session out, with its lease.
    fn remove(&mut self, id: SessionId) -> Option<Session> {
        let s = self.sessions.remove(&id)?;
        if let Some(lease) = &s.lease {
            if self.leases.get(lease) == Some(&id) {
                self.leases.remove(lease);
            }
        }
        Some(s)
    }

    /// Revoke the sessions `which` names; returns them so the caller can end their upstream sessions.
    /// Their ids answer `Revoked` from now on.
    pub fn revoke(&mut self, which: &Revoke, now: Instant) -> Vec<(SessionId, Session)> {
        let ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(id, s)| which.names(**id, s.agent.as_deref(), s.identity.as_deref()))
            .map(|(id, _)| *id)
            .collect();
        if self.revoked.len() + ids.len() > 2 * self.limits.sessions_per_core_max {
            let keep = self.limits.session_duration_max;
            self.revoked
                .retain(|_, at| now.saturating_duration_since(*at) < keep);
        }
        ids.into_iter()
            .filter_map(|id| {
                self.revoked.insert(id, now);
                self.remove(id).map(|s| (id, s))
            })
            .collect()
    }

    /// Mark a use of the session and return it; an expired session is removed and reported as such.
    pub fn touch(&mut self, id: SessionId, now: Instant) -> Result<&mut Session, SessionError> {
        let expired = match self.sessions.get(&id) {
            None if self.revoked.contains_key(&id) => return Err(SessionError::Revoked),
            None if self.expired.contains_key(&id) => return Err(SessionError::Expired),
            None => return Err(SessionError::NotFound),
            Some(s) => s.is_expired(now),
        };
        if expired {
            self.remove(id);
            self.remember_expired(id, now);
            return Err(SessionError::Expired);
        }
        let s = self.sessions.get_mut(&id).ok_or(SessionError::NotFound)?;
        s.last_active = now;
        s.requests += 1;
        Ok(s)
    }

    /// Record an upstream session created for this agent session. Returns the binding already present when
    /// another request won the race, so the caller can close its own.
    pub fn bind(
        &mut self,
        id: SessionId,
        upstream: usize,
        binding: UpstreamBinding,
    ) -> Result<(), Option<UpstreamBinding>> {
        let s = self.sessions.get_mut(&id).ok_or(None)?;
        if let Some(existing) = s.upstreams.get(&upstream) {
            return Err(Some(existing.clone()));
        }
        s.upstreams.insert(upstream, binding);
        Ok(())
    }

    /// Forget one upstream binding (the upstream said its session is gone).
    pub fn unbind(&mut self, id: SessionId, upstream: usize) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.upstreams.remove(&upstream);
        }
    }

    /// End a session; returns it so the caller can end its upstream sessions.
    pub fn close(&mut self, id: SessionId) -> Option<Session> {
        self.remove(id)
    }

    /// Remove every expired session and return them.
    pub fn expire(&mut self, now: Instant) -> Vec<(SessionId, Session)> {
        let dead: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.is_expired(now))
            .map(|(id, _)| *id)
            .collect();
        dead.into_iter()
            .filter_map(|id| {
                self.remember_expired(id, now);
                self.remove(id).map(|s| (id, s))
            })
            .collect()
    }

    fn remember_expired(&mut self, id: SessionId, now: Instant) {
        if self.expired.len() >= 2 * self.limits.sessions_per_core_max {
            let keep = self.limits.session_idle;
            self.expired
                .retain(|_, at| now.saturating_duration_since(*at) < keep);
            if self.expired.len() >= 2 * self.limits.sessions_per_core_max {
                self.expired.clear();
            }
        }
        self.expired.insert(id, now);
    }
}

/// Agents and API keys an operator revoked, refused on this core until their hold ends (every core
/// keeps its own copy: the revocation is sent to each). Revoking by session id holds nothing: the
/// client may start a new session, as a 2025-11-25 client re-initializes.
#[derive(Debug, Default)]
pub struct Holds {
    agents: HashMap<String, Instant>,
    identities: HashMap<String, Instant>,
}

impl Holds {
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty() && self.identities.is_empty()
    }

    /// Hold what `which` names until `until`.
    pub fn hold(&mut self, which: &Revoke, until: Instant) {
        match which {
            Revoke::Id(_) => {}
            Revoke::Agent(a) => {
                self.agents.insert(a.clone(), until);
            }
            Revoke::Identity(k) => {
                self.identities.insert(k.clone(), until);
            }
        }
    }

    /// Lift the hold on what `which` names; whether there was one.
    pub fn lift(&mut self, which: &Revoke) -> bool {
        match which {
            Revoke::Id(_) => false,
            Revoke::Agent(a) => self.agents.remove(a).is_some(),
            Revoke::Identity(k) => self.identities.remove(k).is_some(),
        }
    }

    /// Whether `agent` (proved by `identity`) is held at `now`. Ended holds are dropped as they are met.
    pub fn holds(&mut self, agent: &str, identity: Option<&str>, now: Instant) -> bool {
        fn check(map: &mut HashMap<String, Instant>, k: &str, now: Instant) -> bool {
            match map.get(k) {
                Some(until) if now < *until => true,
                Some(_) => {
                    map.remove(k);
                    false
                }
                None => false,
            }
        }
        check(&mut self.agents, agent, now)
            || identity.is_some_and(|i| check(&mut self.identities, i, now))
    }

    /// The holds in force, for operators: (`agent` | `key`, name, time left).
    pub fn list(&self, now: Instant) -> Vec<(&'static str, String, Duration)> {
        let left = |until: &Instant| until.saturating_duration_since(now);
        self.agents
            .iter()
            .filter(|(_, u)| now < **u)
            .map(|(a, u)| ("agent", a.clone(), left(u)))
            .chain(
                self.identities
                    .iter()
                    .filter(|(_, u)| now < **u)
                    .map(|(k, u)| {
                        (
                            "key",
                            k.strip_prefix("key:").unwrap_or(k).to_owned(),
                            left(u),
                        )
                    }),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy() -> Opening {
        Opening::new(Revision::V2025_11_25, &SessionLimits::default())
    }

    fn id(n: u8) -> SessionId {
        SessionId {
            node: 1,
            core: 3,
            random: [n; 16],
        }
    }

    #[test]
    fn revoked_sessions_say_so_and_only_the_named_ones_go() {
        let mut shard = SessionShard::new(SessionLimits::default());
        let now = Instant::now();
        for n in 1..=3 {
            let o = Opening {
                agent: Some(format!("a{}", n % 2)),
                ..legacy()
            };
            shard.open(now, id(n), o).unwrap();
        }
        shard.get_mut(id(3)).unwrap().identity = Some("key:k3".into());
        assert_eq!(
            shard.revoke(&Revoke::Identity("key:k3".into()), now).len(),
            1
        );
        assert_eq!(shard.touch(id(3), now).err(), Some(SessionError::Revoked));
        let gone = shard.revoke(&Revoke::Agent("a1".into()), now);
        assert_eq!(gone.len(), 1, "a1 held 1 and 3; 3 was already revoked");
        assert_eq!(shard.touch(id(1), now).err(), Some(SessionError::Revoked));
        assert!(shard.touch(id(2), now).is_ok());
        assert_eq!(shard.touch(id(9), now).err(), Some(SessionError::NotFound));
    }

    #[test]
    fn id_round_trip() {
        let i = SessionId {
            node: 0xabcd,
            core: 7,
            random: *b"0123456789abcdef",
        };
        let s = i.to_string();
        assert_eq!(s.len(), SessionId::WIRE_LEN);
        assert_eq!(SessionId::parse(&s), Some(i));
        assert_eq!(SessionId::parse(&s.to_uppercase()), None);
        assert_eq!(SessionId::parse(&s[1..]), None);
    }

    #[test]
    fn session_expires_one_idle_window_after_last_use() {
        let limits = SessionLimits::default();
        let mut shard = SessionShard::new(limits);
        let t0 = Instant::now(); // tests own the clock; the shard never reads one
        shard.open(t0, id(1), legacy()).unwrap();
        let last = t0 + limits.session_idle - Duration::from_millis(1);
        assert!(shard.touch(id(1), last).is_ok());
        assert_eq!(
            shard.touch(id(1), last + limits.session_idle).err(),
            Some(SessionError::Expired)
        );
        // Removed, and still reported as expired (also after a sweep took it).
        assert_eq!(
            shard.touch(id(1), last + limits.session_idle).err(),
            Some(SessionError::Expired)
        );
        shard.open(t0, id(2), legacy()).unwrap();
        assert_eq!(shard.expire(t0 + 2 * limits.session_idle).len(), 1);
        assert_eq!(
            shard.touch(id(2), t0 + 2 * limits.session_idle).err(),
            Some(SessionError::Expired)
        );
        assert_eq!(shard.touch(id(3), t0).err(), Some(SessionError::NotFound));
    }

    #[test]
    fn duration_bound_holds_however_active() {
        let limits = SessionLimits {
            session_duration_max: Duration::from_secs(10),
            ..SessionLimits::default()
        };
        let mut shard = SessionShard::new(limits);
        let t0 = Instant::now();
        shard
            .open(t0, id(1), Opening::new(Revision::V2025_11_25, &limits))
            .unwrap();
        for s in 1..10 {
            assert!(shard.touch(id(1), t0 + Duration::from_secs(s)).is_ok());
        }
        assert!(shard
            .touch(id(1), t0 + Duration::from_millis(9_999))
            .is_ok());
        assert_eq!(
            shard.touch(id(1), t0 + Duration::from_secs(10)).err(),
            Some(SessionError::Expired)
        );
    }

    #[test]
    fn shard_bound_both_sides() {
        let limits = SessionLimits {
            sessions_per_core_max: 2,
            ..SessionLimits::default()
        };
        let mut shard = SessionShard::new(limits);
        let t0 = Instant::now();
        shard.open(t0, id(1), legacy()).unwrap();
        shard.open(t0, id(2), legacy()).unwrap();
        assert_eq!(shard.open(t0, id(3), legacy()), Err(SessionError::Full));
        // Once one has idled out, there is room again.
        let later = t0 + limits.session_idle;
        assert_eq!(shard.open(later, id(3), legacy()), Ok(id(3)));
    }

    #[test]
    fn bind_race_reports_the_winner() {
        let mut shard = SessionShard::new(SessionLimits::default());
        let t0 = Instant::now();
        shard.open(t0, id(1), legacy()).unwrap();
        let a = UpstreamBinding {
            session_id: Some("a".into()),
            revision: Revision::V2025_11_25,
        };
        let b = UpstreamBinding {
            session_id: Some("b".into()),
            revision: Revision::V2025_11_25,
        };
        assert_eq!(shard.bind(id(1), 0, a.clone()), Ok(()));
        assert_eq!(shard.bind(id(1), 0, b), Err(Some(a)));
        assert_eq!(shard.close(id(1)).map(|s| s.upstreams.len()), Some(1));
    }

    fn modern(agent: &str, lease: &str) -> Opening {
        Opening {
            agent: Some(agent.into()),
            lease: Some(lease.into()),
            ..Opening::new(Revision::V2026_07_28, &SessionLimits::default())
        }
    }

    #[test]
    fn a_lease_keeps_one_session_until_it_idles_out() {
        let mut shard = SessionShard::new(SessionLimits::default());
        let t0 = Instant::now();
        assert_eq!(
            shard.lease(t0, "key:k1", "a", None),
            Err(SessionError::NotFound),
            "asking without opening finds nothing"
        );
        let first = shard
            .lease(t0, "key:k1", "a", Some((id(1), modern("a", "key:k1"))))
            .unwrap();
        assert_eq!((first.id, first.created, first.opened), (id(1), t0, true));
        // Later requests of the lease continue it, whatever id a racing opener would have used.
        let t1 = t0 + Duration::from_secs(60);
        let again = shard
            .lease(t1, "key:k1", "a", Some((id(2), modern("a", "key:k1"))))
            .unwrap();
        assert_eq!((again.id, again.created, again.opened), (id(1), t0, false));
        assert_eq!(shard.len(), 1);
        // Another agent presenting the same lease is no continuation of the first agent's session.
        assert_eq!(
            shard.lease(t1, "key:k1", "b", None),
            Err(SessionError::NotFound)
        );
        assert_eq!(shard.touch(id(1), t1).map(|s| s.requests).ok(), Some(2));
        // Idle past the bound: the next request starts a new session.
        let late = t1 + SessionLimits::default().session_idle;
        let fresh = shard
            .lease(late, "key:k1", "a", Some((id(3), modern("a", "key:k1"))))
            .unwrap();
        assert_eq!((fresh.id, fresh.created), (id(3), late));
        assert_eq!(shard.touch(id(1), late).err(), Some(SessionError::Expired));
        // Revoked, the lease is free for a new session (a hold is what refuses the agent).
        shard.revoke(&Revoke::Id(id(3)), late);
        assert_eq!(
            shard.lease(late, "key:k1", "a", None),
            Err(SessionError::NotFound)
        );
        assert!(shard.leases.is_empty());
    }

    #[test]
    fn uses_seen_elsewhere_keep_a_session_alive() {
        let mut shard = SessionShard::new(SessionLimits::default());
        let t0 = Instant::now();
        shard.open(t0, id(1), modern("a", "jwt:x")).unwrap();
        let idle = SessionLimits::default().session_idle;
        shard.seen(id(1), t0 + idle / 2, 7);
        // An older report does not move the clock back.
        shard.seen(id(1), t0 + idle / 4, 1);
        let s = shard.touch(id(1), t0 + idle).unwrap();
        assert_eq!(s.requests, 9);
        assert_eq!(shard.expire(t0 + idle + idle / 2).len(), 0);
        assert_eq!(shard.expire(t0 + 2 * idle).len(), 1);
    }

    #[test]
    fn agent_bounds_override_the_gateways() {
        let limits = SessionLimits::default();
        let mut shard = SessionShard::new(limits);
        let t0 = Instant::now();
        let own = AgentSessionLimits {
            idle: Some(Duration::from_secs(5)),
            duration_max: Some(Duration::from_secs(60)),
            max: None,
            streams_max: Some(1),
        };
        shard
            .open(
                t0,
                id(1),
                Opening::new(Revision::V2025_11_25, &limits).bounded_by(&own),
            )
            .unwrap();
        shard.open(t0, id(2), legacy()).unwrap();
        assert_eq!(shard.stream_open(id(1)), Ok(()));
        assert_eq!(shard.stream_open(id(1)), Err(SessionError::StreamLimit));
        shard.stream_closed(id(1));
        assert_eq!(shard.stream_open(id(1)), Ok(()));
        let dead = shard.expire(t0 + Duration::from_secs(5));
        assert_eq!(dead.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [id(1)]);
        assert_eq!(shard.len(), 1);
    }

    #[test]
    fn holds_refuse_until_they_end_or_are_lifted() {
        let mut holds = Holds::default();
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(60);
        holds.hold(&Revoke::Agent("a".into()), until);
        holds.hold(&Revoke::Identity("key:k9".into()), until);
        holds.hold(&Revoke::Id(id(1)), until);
        assert!(holds.holds("a", None, t0));
        assert!(holds.holds("b", Some("key:k9"), t0));
        assert!(!holds.holds("b", Some("key:k8"), t0));
        assert_eq!(holds.list(t0).len(), 2);
        assert!(holds.lift(&Revoke::Agent("a".into())));
        assert!(!holds.holds("a", None, t0));
        assert!(!holds.holds("b", Some("key:k9"), until));
        assert!(holds.is_empty(), "an ended hold is dropped when met");
    }

    #[test]
    fn durations_parse_and_print_canonically() {
        for (text, secs, canon) in [
            ("90s", 90, "90s"),
            ("120s", 120, "2m"),
            ("8h", 28_800, "8h"),
            ("7d", 604_800, "7d"),
        ] {
            let d = parse_duration(text).unwrap();
            assert_eq!(d.as_secs(), secs);
            assert_eq!(format_duration(d), canon);
        }
        for bad in [
            "",
            "5",
            "0s",
            "m",
            "32d",
            "5w",
            "-1s",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_persisted_session_comes_back_as_it_was_unless_it_expired_meanwhile() {
        let limits = SessionLimits::default();
        let t0 = Instant::now();
        let mut shard = SessionShard::new(limits);
        let mut info =
            simd_json::to_owned_value(&mut br#"{"name":"c","version":"1"}"#.to_vec()).unwrap();
        if let simd_json::OwnedValue::Object(o) = &mut info {
            o.insert("extra".into(), simd_json::OwnedValue::from(7u64));
        }
        let o = Opening {
            client_info: Some(info.clone()),
            transport: "h2",
            ..modern("a", "key:k")
        };
        shard.open(t0, id(1), o).unwrap();
        shard.touch(id(1), t0 + Duration::from_secs(10)).unwrap();
        let s = shard
            .touch(id(1), t0 + Duration::from_secs(20))
            .unwrap()
            .clone();
        let now = t0 + Duration::from_secs(30);
        let wall = 1_800_000_000_000;
        let p = Persisted::of(&s, now, wall);
        assert_eq!(
            (p.created_ms, p.last_active_ms),
            (wall - 30_000, wall - 10_000)
        );
        let text = serde_json::to_string(&p).unwrap();
        let back: Persisted = serde_json::from_str(&text).unwrap();
        // Restored a minute later (by the wall clock) in a process whose clock reads `later`.
        let later = now + Duration::from_secs(3600);
        let r = back.clone().restore(later, wall + 60_000).unwrap();
        assert_eq!(later.duration_since(r.created), Duration::from_secs(90));
        assert_eq!(later.duration_since(r.last_active), Duration::from_secs(70));
        assert_eq!(
            (r.requests, r.transport, r.client_info.clone()),
            (2, "h2", Some(info))
        );
        assert_eq!(r.lease.as_deref(), Some("key:k"));
        let mut again = SessionShard::new(limits);
        again.restore(id(1), r);
        assert_eq!(
            again.lease(later, "key:k", "a", None).map(|h| h.id),
            Ok(id(1))
        );
        // Idle longer than the bound while the gateway was down: gone.
        assert!(back.restore(later, wall + 40 * 60_000).is_none());
    }
}
