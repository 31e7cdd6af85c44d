//! `/admin/v1/sessions`: operators see every core's live sessions and revoke them: one by id, every
//! session of an agent, or every session opened with one API key. A revoked session is gone from its
//! core at once; its next request gets `session_revoked`, its open streams end within a quarter second,
//! its upstream sessions are ended, and each revocation leaves an audit record naming the operator.

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
}

/// Serve `/admin/v1/sessions[/…]` (already authenticated).
pub async fn handle(shared: &Shared, method: &str, path: &str, actor: &str, body: &[u8]) -> Answer {
    let rest = path
        .strip_prefix("/admin/v1/sessions")
        .unwrap_or("")
        .trim_matches('/');
    match (method, rest) {
        ("GET", "") => answer(200, &json!(list(shared).await)),
        ("POST", "revoke") => {
            let Ok(req) = serde_json::from_slice::<RevokeRequest>(body) else {
                return error(
                    400,
                    "bad_request",
                    "body: {\"id\"} or {\"agent\"} or {\"key\"}",
                );
            };
            let which = match (req.id, req.agent, req.key) {
                (Some(id), None, None) => match SessionId::parse(&id) {
                    Some(sid) => Revoke::Id(sid),
                    None => return error(400, "invalid_field", "id: not a session id"),
                },
                (None, Some(a), None) => Revoke::Agent(a),
                (None, None, Some(k)) => Revoke::Identity(format!("key:{k}")),
                _ => return error(400, "bad_request", "name exactly one of id, agent, key"),
            };
            let revoked = revoke(shared, which).await;
            for v in &revoked {
                record(shared, v, actor).await;
            }
            crate::info!("sessions revoked by {actor}: {}", revoked.len());
            answer(200, &json!({"revoked": revoked}))
        }
        ("GET", id) => {
            let Some(sid) = SessionId::parse(id) else {
                return error(404, "not_found", "no such session");
            };
            match list_core(shared, sid.core)
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
            "GET /sessions, GET /sessions/ID, POST /sessions/revoke",
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

async fn revoke(shared: &Shared, which: Revoke) -> Vec<SessionView> {
    let Some(peers) = shared.session_peers.get() else {
        return Vec::new();
    };
    let targets: Vec<&flume::Sender<SessionMsg>> = match &which {
        Revoke::Id(id) if id.node == shared.config.node_id => {
            peers.get(usize::from(id.core)).into_iter().collect()
        }
        Revoke::Id(_) => Vec::new(),
        _ => peers.iter().collect(),
    };
    let mut out = Vec::new();
    for tx in targets {
        let which = which.clone();
        out.extend(
            ask(tx, |reply| SessionMsg::Revoke { which, reply })
                .await
                .unwrap_or_default(),
        );
    }
    out
}

/// The audit record of one revocation: who (the operator) did what to whose session.
async fn record(shared: &Shared, v: &SessionView, actor: &str) {
    let Some(trail) = shared.audit.core(v.core) else {
        return;
    };
    let e = portcullis_pipeline::audit::Event {
        at_ms: crate::control::now_ms(),
        core: v.core,
        agent: v.agent.clone(),
        identity: Some(format!("operator:{actor}")),
        session: Some(v.id.clone()),
        transport: "admin".into(),
        method: Some("session/revoke".into()),
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
