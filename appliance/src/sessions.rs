//! `/admin/v1/sessions`: operators see every core's live sessions and revoke them: one by id, every
//! session of an agent, or every session opened with one API key. A revoked session is gone from its
//! core at once; its next request gets `session_revoked`, its open streams end within a quarter second,
//! its upstream sessions are ended, and each revocation leaves an audit record naming the operator.
//! Revoking an agent or a key also holds it (`limits.revocation_hold`, or the request's `hold`): every
//! core refuses it with `access_revoked` until the hold ends or is lifted (`POST /sessions/lift`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use portcullis_pipeline::session::{Revoke, SessionId};

use crate::control::Answer;
use crate::gateway::{SessionMsg, SessionView, Shared};

/// How long the admin thread waits for one core's answer.
const CORE_TIMEOUT: Duration = Duration::from_secs(2);

fn answer(status: u16, v: &serde_json::Value) -> Answer {
    Answer {
        status,
        body: serde_json::to_vec_pretty(v).unwrap_or_default(),
    }
}

fn error(status: u16, code: &str, message: &str) -> Answer {
    answer(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    agent: Option<String>,
    /// An API key id (the `<id>` of `pcak_<id>_…`).
    #[serde(default)]
    key: Option<String>,
    /// How long an agent or key stays refused (`30m`, `0s`: not at all); default `limits.revocation_hold`.
    #[serde(default)]
    hold: Option<String>,
}

impl RevokeRequest {
    fn which(&self) -> Result<Revoke, Answer> {
        match (&self.id, &self.agent, &self.key) {
            (Some(id), None, None) => SessionId::parse(id)
                .map(Revoke::Id)
                .ok_or_else(|| error(400, "invalid_field", "id: not a session id")),
            (None, Some(a), None) => Ok(Revoke::Agent(a.clone())),
            (None, None, Some(k)) => Ok(Revoke::Identity(format!("key:{k}"))),
            _ => Err(error(
                400,
                "bad_request",
                "name exactly one of id, agent, key",
            )),
        }
    }
}

/// A page of the session list (`GET /sessions?agent=&q=&offset=&limit=`), newest first.
struct Page {
    agent: Option<String>,
    /// A part of the id, agent, client or identity.
    text: Option<String>,
    offset: usize,
    limit: usize,
}

/// Sessions on one page, at most.
const PAGE_MAX: u64 = 1000;

impl Page {
    fn parse(query: &str) -> Result<Page, portcullis_pipeline::query::QueryError> {
        use portcullis_pipeline::query::{number, parse};
        let mut p = Page {
            agent: None,
            text: None,
            offset: 0,
            limit: 100,
        };
        for (name, v) in parse(query, &["agent", "q", "offset", "limit"])? {
            match name {
                "agent" => p.agent = (!v.is_empty()).then_some(v),
                "q" => p.text = (!v.is_empty()).then_some(v.to_lowercase()),
                "offset" => p.offset = number("offset", &v, 0, u32::MAX.into())? as usize,
                "limit" => p.limit = number("limit", &v, 1, PAGE_MAX)? as usize,
                _ => {}
            }
        }
        Ok(p)
    }

    fn of(&self, mut all: Vec<SessionView>) -> serde_json::Value {
        all.retain(|s| {
            self.agent
                .as_ref()
                .is_none_or(|a| s.agent.as_ref() == Some(a))
                && self.text.as_ref().is_none_or(|t| {
                    [
                        Some(&s.id),
                        s.agent.as_ref(),
                        s.client.as_ref(),
                        s.identity.as_ref(),
                    ]
                    .into_iter()
                    .flatten()
                    .any(|f| f.to_lowercase().contains(t.as_str()))
                })
        });
        all.sort_by(|a, b| a.age_s.cmp(&b.age_s).then_with(|| a.id.cmp(&b.id)));
        let total = all.len();
        let page: Vec<_> = all.into_iter().skip(self.offset).take(self.limit).collect();
        json!({"total": total, "offset": self.offset, "limit": self.limit, "sessions": page})
    }
}

/// Serve `/admin/v1/sessions[/…]` (already authenticated).
pub async fn handle(
    shared: &Shared,
    method: &str,
    path: &str,
    query: &str,
    actor: &str,
    body: &[u8],
) -> Answer {
    let rest = path
        .strip_prefix("/admin/v1/sessions")
        .unwrap_or("")
        .trim_matches('/');
    match (method, rest) {
        ("GET", "") if query.is_empty() => answer(200, &json!(list(shared).await)),
        ("GET", "") => match Page::parse(query) {
            Ok(p) => answer(200, &p.of(list(shared).await)),
            Err(e) => error(400, "invalid_query", &e.0),
        },
        ("POST", "revoke") => {
            let Ok(req) = serde_json::from_slice::<RevokeRequest>(body) else {
                return error(
                    400,
                    "bad_request",
                    "body: {\"id\"} or {\"agent\"} or {\"key\"}",
                );
            };
            let which = match req.which() {
                Ok(w) => w,
                Err(a) => return a,
            };
            let hold = match req.hold.as_deref() {
                None => shared.config.limits.revocation_hold.0,
                Some(h) => match crate::config::parse_duration(h) {
                    Some(d) => d,
                    None => return error(400, "invalid_field", "hold: a duration, e.g. 30m or 0s"),
                },
            };
            let hold = (!hold.is_zero() && !matches!(which, Revoke::Id(_))).then_some(hold);
            let revoked = revoke(shared, &which, hold).await;
            if let Some(p) = &shared.persist {
                if let (Some(what), Some(h)) = (crate::persist::hold_key(&which), hold) {
                    let until = crate::control::now_ms() + h.as_millis() as u64;
                    p.send(portcullis_storage::sessions::Change::PutHold {
                        what,
                        record: until.to_string().into_bytes(),
                    });
                }
                p.flush().await;
            }
            for v in &revoked {
                record(shared, "session/revoke", v.agent.clone(), Some(v.id.clone()), actor).await;
            }
            if hold.is_some() {
                record(shared, "session/hold", held_agent(&which), None, actor).await;
            }
            crate::info!("sessions revoked by {actor}: {}", revoked.len());
            answer(
                200,
                &json!({"revoked": revoked, "hold_s": hold.map(|h| h.as_secs())}),
            )
        }
        ("POST", "lift") => {
            let which = match serde_json::from_slice::<RevokeRequest>(body)
                .map_err(|_| error(400, "bad_request", "body: {\"agent\"} or {\"key\"}"))
                .and_then(|r| r.which())
            {
                Ok(Revoke::Id(_)) => {
                    return error(400, "bad_request", "a session id holds nothing: name agent or key")
                }
                Ok(w) => w,
                Err(a) => return a,
            };
            let mut lifted = false;
            for tx in shared.session_peers.get().into_iter().flatten() {
                let which = which.clone();
                lifted |= ask(tx, |reply| SessionMsg::Lift { which, reply })
                    .await
                    .unwrap_or(false);
            }
            if let (Some(p), Some(what)) = (&shared.persist, crate::persist::hold_key(&which)) {
                p.send(portcullis_storage::sessions::Change::RemoveHold { what });
                p.flush().await;
            }
            if lifted {
                record(shared, "session/lift", held_agent(&which), None, actor).await;
            }
            answer(200, &json!({"lifted": lifted}))
        }
        ("GET", "holds") => {
            // Every core holds the same; the first that answers speaks for all.
            let mut holds = Vec::new();
            for tx in shared.session_peers.get().into_iter().flatten() {
                if let Some(h) = ask(tx, |reply| SessionMsg::Holds { reply }).await {
                    holds = h;
                    break;
                }
            }
            let rows: Vec<_> = holds
                .into_iter()
                .map(|(kind, name, left)| json!({"kind": kind, "name": name, "left_s": left}))
                .collect();
            answer(200, &json!(rows))
        }
        ("GET", id) => {
            let Some(sid) = SessionId::parse(id) else {
                return error(404, "not_found", "no such session");
            };
            let cores = shared.session_peers.get().map_or(1, |p| p.len().max(1));
            match list_core(shared, (usize::from(sid.core) % cores) as u16)
                .await
                .into_iter()
                .find(|s| s.id == id)
            {
                Some(s) => answer(200, &json!(s)),
                None => error(404, "not_found", "no such session"),
            }
        }
        _ => error(
            405,
            "method_not_allowed",
            "GET /sessions, GET /sessions/ID, GET /sessions/holds, POST /sessions/revoke, POST /sessions/lift",
        ),
    }
}

async fn ask<T>(
    tx: &flume::Sender<SessionMsg>,
    msg: impl FnOnce(flume::Sender<T>) -> SessionMsg,
) -> Option<T> {
    let (reply, rx) = flume::bounded(1);
    tx.send_async(msg(reply)).await.ok()?;
    monoio::time::timeout(CORE_TIMEOUT, rx.recv_async())
        .await
        .ok()?
        .ok()
}

async fn list_core(shared: &Shared, core: u16) -> Vec<SessionView> {
    let Some(tx) = shared
        .session_peers
        .get()
        .and_then(|p| p.get(usize::from(core)))
    else {
        return Vec::new();
    };
    ask(tx, |reply| SessionMsg::List { reply })
        .await
        .unwrap_or_default()
}

async fn list(shared: &Shared) -> Vec<SessionView> {
    let n = shared.session_peers.get().map_or(0, Vec::len);
    let mut out = Vec::new();
    for core in 0..n {
        out.extend(list_core(shared, core as u16).await);
    }
    out
}

/// Every core gets the revocation, an id's too: the owner ends the session, the others forget what
/// they remember of it (a lease session's requests are served without asking the owner).
async fn revoke(shared: &Shared, which: &Revoke, hold: Option<Duration>) -> Vec<SessionView> {
    if matches!(which, Revoke::Id(id) if id.node != shared.config.node_id) {
        return Vec::new();
    }
    let hold_until = hold.map(|h| std::time::Instant::now() + h);
    let mut out = Vec::new();
    for tx in shared.session_peers.get().into_iter().flatten() {
        let which = which.clone();
        out.extend(
            ask(tx, |reply| SessionMsg::Revoke {
                which,
                hold_until,
                reply,
            })
            .await
            .unwrap_or_default(),
        );
    }
    out
}

/// The agent a hold names, or the key as `key:<id>` for the record's agent field.
fn held_agent(which: &Revoke) -> Option<String> {
    match which {
        Revoke::Id(_) => None,
        Revoke::Agent(a) => Some(a.clone()),
        Revoke::Identity(k) => Some(k.clone()),
    }
}

/// The audit record of one operator action on sessions: who (the operator) did what to whose session.
async fn record(
    shared: &Shared,
    method: &str,
    agent: Option<String>,
    session: Option<String>,
    actor: &str,
) {
    let cores = shared.session_peers.get().map_or(1, |p| p.len().max(1));
    let core = session
        .as_deref()
        .and_then(SessionId::parse)
        .map_or(0, |s| (usize::from(s.core) % cores) as u16);
    let Some(trail) = shared.audit.core(core) else {
        return;
    };
    let e = portcullis_pipeline::audit::Event {
        at_ms: crate::control::now_ms(),
        core,
        agent,
        identity: Some(format!("operator:{actor}")),
        session,
        transport: "admin".into(),
        method: Some(method.into()),
        decision: "allowed".into(),
        snapshot: shared.served.current().label.clone(),
        status: 200,
        ..Default::default()
    };
    if let Err(err) = trail
        .record(serde_json::to_vec(&e).unwrap_or_default())
        .await
    {
        crate::error!("audit record of a revocation not written: {err}");
    }
}
