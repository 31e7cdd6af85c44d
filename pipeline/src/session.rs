//! Session table for one core: open, touch, expire, close.
//!
//! A session never moves between cores. Its id names the owning core and node (`SessionId::core`), so
//! other cores ask the owner instead of sharing the table. Nothing here reads a clock or draws randomness:
//! callers pass `now` and the random bytes of a new id.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

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
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            session_idle: Duration::from_secs(30 * 60),
            session_duration_max: Duration::from_secs(24 * 3600),
            sessions_per_core_max: 10_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionError {
    NotFound,
    Expired,
    Full,
    /// An operator revoked it (`SessionShard::revoke`).
    Revoked,
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

/// The gateway's own session with one upstream, held on behalf of one agent session and never shown to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamBinding {
    /// The upstream's `Mcp-Session-Id`, if it issued one.
    pub session_id: Option<String>,
    pub revision: Revision,
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
}

#[derive(Debug)]
pub struct SessionShard {
    limits: SessionLimits,
    sessions: HashMap<SessionId, Session>,
    /// Revoked ids and when, so their next use says `session_revoked` rather than "not found"; kept
    /// for the longest a session could have lived on, bounded like the sessions themselves.
    revoked: HashMap<SessionId, Instant>,
}

impl SessionShard {
    pub fn new(limits: SessionLimits) -> Self {
        SessionShard {
            limits,
            sessions: HashMap::new(),
            revoked: HashMap::new(),
        }
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
        revision: Revision,
    ) -> Result<SessionId, SessionError> {
        self.open_with(now, id, revision, None, None, None)
    }

    pub fn open_with(
        &mut self,
        now: Instant,
        id: SessionId,
        revision: Revision,
        client_capabilities: Option<simd_json::OwnedValue>,
        client_info: Option<simd_json::OwnedValue>,
        agent: Option<String>,
    ) -> Result<SessionId, SessionError> {
        if self.sessions.len() >= self.limits.sessions_per_core_max {
            self.expire(now);
            if self.sessions.len() >= self.limits.sessions_per_core_max {
                return Err(SessionError::Full);
            }
        }
        self.sessions.insert(
            id,
            Session {
                revision,
                created: now,
                last_active: now,
                requests: 0,
                client_capabilities,
                client_info,
                agent,
                upstreams: HashMap::new(),
                identity: None,
                transport: "h1",
            },
        );
        Ok(id)
    }

    /// A live session, to fill in what its opener knows beyond `open_with` (no use is counted).
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

    /// Revoke the sessions `which` names; returns them so the caller can end their upstream sessions.
    /// Their ids answer `Revoked` from now on.
    pub fn revoke(&mut self, which: &Revoke, now: Instant) -> Vec<(SessionId, Session)> {
        let ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(id, s)| match which {
                Revoke::Id(i) => *id == i,
                Revoke::Agent(a) => s.agent.as_deref() == Some(a.as_str()),
                Revoke::Identity(k) => s.identity.as_deref() == Some(k.as_str()),
            })
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
                self.sessions.remove(&id).map(|s| (id, s))
            })
            .collect()
    }

    fn is_expired(&self, s: &Session, now: Instant) -> bool {
        now.saturating_duration_since(s.last_active) >= self.limits.session_idle
            || now.saturating_duration_since(s.created) >= self.limits.session_duration_max
    }

    /// Mark a use of the session and return it; an expired session is removed and reported as such.
    pub fn touch(&mut self, id: SessionId, now: Instant) -> Result<&mut Session, SessionError> {
        let expired = match self.sessions.get(&id) {
            None if self.revoked.contains_key(&id) => return Err(SessionError::Revoked),
            None => return Err(SessionError::NotFound),
            Some(s) => self.is_expired(s, now),
        };
        if expired {
            self.sessions.remove(&id);
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
        self.sessions.remove(&id)
    }

    /// Remove every expired session and return them.
    pub fn expire(&mut self, now: Instant) -> Vec<(SessionId, Session)> {
        let dead: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| self.is_expired(s, now))
            .map(|(id, _)| *id)
            .collect();
        dead.into_iter()
            .filter_map(|id| self.sessions.remove(&id).map(|s| (id, s)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            shard
                .open_with(
                    now,
                    id(n),
                    Revision::V2025_11_25,
                    None,
                    None,
                    Some(format!("a{}", n % 2)),
                )
                .unwrap();
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
        shard.open(t0, id(1), Revision::V2025_11_25).unwrap();
        let last = t0 + limits.session_idle - Duration::from_millis(1);
        assert!(shard.touch(id(1), last).is_ok());
        assert_eq!(
            shard.touch(id(1), last + limits.session_idle).err(),
            Some(SessionError::Expired)
        );
        assert_eq!(
            shard.touch(id(1), last + limits.session_idle).err(),
            Some(SessionError::NotFound)
        );
    }

    #[test]
    fn duration_bound_holds_however_active() {
        let limits = SessionLimits {
            session_duration_max: Duration::from_secs(10),
            ..SessionLimits::default()
        };
        let mut shard = SessionShard::new(limits);
        let t0 = Instant::now();
        shard.open(t0, id(1), Revision::V2025_11_25).unwrap();
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
        shard.open(t0, id(1), Revision::V2025_11_25).unwrap();
        shard.open(t0, id(2), Revision::V2025_11_25).unwrap();
        assert_eq!(
            shard.open(t0, id(3), Revision::V2025_11_25),
            Err(SessionError::Full)
        );
        // Once one has idled out, there is room again.
        let later = t0 + limits.session_idle;
        assert_eq!(shard.open(later, id(3), Revision::V2025_11_25), Ok(id(3)));
    }

    #[test]
    fn bind_race_reports_the_winner() {
        let mut shard = SessionShard::new(SessionLimits::default());
        let t0 = Instant::now();
        shard.open(t0, id(1), Revision::V2025_11_25).unwrap();
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
}
