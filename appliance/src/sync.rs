//! Hybrid mode's wire: how a control plane hands its active snapshot to the data planes that follow it.
//!
//! A data plane long-polls `GET /sync/v1/active?seq=S[&refused=R]&wait=SECS` on the control plane's sync
//! listener (HTTPS, `Authorization: Bearer <DATA_DIR/sync.token>`, `portcullis-node: ID`). `S` is the
//! activation it serves, `R` the last one it refused. The control plane answers as soon as its own
//! activation differs from both, else with 204 after `wait`. A 200 carries the snapshot blob as stored
//! (`application/vnd.portcullis.snapshot`) and `portcullis-activation: seq=S; version=V; hash=HEX;
//! signature=HEX`, a statement signed with the snapshot key. The data plane verifies both before it
//! stores anything (`Registry::follow`), so the sync listener and the network between need not be trusted
//! for integrity; the token keeps the registry's content (policies, tool definitions) from strangers.
//!
//! The control plane offers any differing activation, even an older one, and lets the data plane judge:
//! a refusal comes back in the next poll (`refused=R`, `portcullis-refused: CODE`) and is listed at
//! `GET /admin/v1/data-planes`, so an operator sees a data plane that stopped following.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use portcullis_storage::registry::Offer;
use portcullis_storage::signing::{hex, parse_hex, Activation};
use serde::Serialize;

use crate::control::{self, ControlPlane};

pub const PATH: &str = "/sync/v1/active";
/// The agent API keys (hashes), signed with the snapshot key: `GET` answers 200 with the `KeyList` JSON
/// and `portcullis-keys-signature: HEX`. Data planes fetch it after every poll, so a key issued or
/// revoked on the control plane takes effect on a data plane within one `follow.poll_wait`.
pub const KEYS_PATH: &str = "/sync/v1/keys";
pub const KEYS_SIGNATURE_HEADER: &str = "portcullis-keys-signature";
pub const CONTENT_TYPE: &str = "application/vnd.portcullis.snapshot";
pub const ACTIVATION_HEADER: &str = "portcullis-activation";
pub const NODE_HEADER: &str = "portcullis-node";
pub const REFUSED_HEADER: &str = "portcullis-refused";
pub const TOKEN_FILE: &str = "sync.token";
/// Longest a poll is held, whatever it asks: bounds what a client can pin on the admin thread, and stays
/// under common idle timeouts of proxies between the planes.
pub const WAIT_MAX: Duration = Duration::from_secs(120);
/// Data planes remembered for `GET /admin/v1/data-planes`; the least recently seen is forgotten first.
const DATA_PLANES_MAX: usize = 10_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind, still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Wakes every waiting long poll when the active snapshot changes.
#[derive(Debug, Default)]
pub struct Beacon {
    inner: Mutex<BeaconInner>,
}

#[derive(Debug, Default)]
struct BeaconInner {
    rung: u64,
    next_id: u64,
    waiters: Vec<(u64, Waker)>,
}

impl Beacon {
    pub fn ring(&self) {
        let mut g = lock(&self.inner);
        g.rung += 1;
        for (_, w) in g.waiters.drain(..) {
            w.wake();
        }
    }

    pub fn rung(&self) -> u64 {
        lock(&self.inner).rung
    }

    /// Resolves once the beacon rings after `since` (a value of `rung()`). Dropping it (a poll that
    /// timed out) unregisters it, so waiters never pile up between activations.
    pub fn wait(&self, since: u64) -> Wait<'_> {
        Wait {
            beacon: self,
            since,
            id: None,
        }
    }
}

#[derive(Debug)]
pub struct Wait<'a> {
    beacon: &'a Beacon,
    since: u64,
    id: Option<u64>,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut g = lock(&this.beacon.inner);
        if g.rung != this.since {
            this.id = None; // `ring` drained the entry
            return Poll::Ready(());
        }
        let id = *this.id.get_or_insert_with(|| {
            g.next_id += 1;
            g.next_id
        });
        match g.waiters.iter_mut().find(|(i, _)| *i == id) {
            Some(entry) => entry.1.clone_from(cx.waker()),
            None => g.waiters.push((id, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock(&self.beacon.inner).waiters.retain(|(i, _)| *i != id);
        }
    }
}

/// The activation statement as a header value.
pub fn activation_header(offer: &Offer) -> String {
    let a = &offer.activation;
    format!(
        "seq={}; version={}; hash={}; signature={}",
        a.seq,
        a.version,
        hex(&a.hash),
        hex(&offer.signature)
    )
}

/// Parse `activation_header`'s format back into an offer around `blob`.
pub fn parse_offer(header: &str, blob: Vec<u8>) -> Option<Offer> {
    let (mut seq, mut version, mut hash, mut signature) = (None, None, None, None);
    for part in header.split(';') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "seq" => seq = v.parse().ok(),
            "version" => version = v.parse().ok(),
            "hash" => hash = parse_hex::<32>(v),
            "signature" => signature = parse_hex::<64>(v),
            _ => {}
        }
    }
    Some(Offer {
        activation: Activation {
            seq: seq?,
            version: version?,
            hash: hash?,
        },
        signature: signature?,
        blob,
    })
}

/// What the control plane last heard from one data plane.
#[derive(Clone, Debug, Serialize)]
pub struct DataPlaneSeen {
    pub node: String,
    pub address: String,
    pub last_seen_ms: u64,
    /// The activation sequence it serves (0: none yet).
    pub serving_seq: u64,
    /// The last activation it refused, and why (its stable code).
    pub refused: Option<RefusalSeen>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RefusalSeen {
    pub seq: u64,
    pub code: String,
}

/// Data planes by node id.
#[derive(Debug, Default)]
pub struct DataPlanes {
    seen: Mutex<BTreeMap<String, DataPlaneSeen>>,
}

impl DataPlanes {
    fn record(&self, d: DataPlaneSeen) {
        let mut g = lock(&self.seen);
        if g.len() >= DATA_PLANES_MAX && !g.contains_key(&d.node) {
            let oldest = g
                .values()
                .min_by_key(|d| d.last_seen_ms)
                .map(|d| d.node.clone());
            if let Some(k) = oldest {
                g.remove(&k);
            }
        }
        g.insert(d.node.clone(), d);
    }

    pub fn list(&self) -> Vec<DataPlaneSeen> {
        lock(&self.seen).values().cloned().collect()
    }
}

/// One sync request, as the listener read it.
#[derive(Debug)]
pub struct SyncRequest<'a> {
    pub method: &'a str,
    /// Path and query.
    pub target: &'a str,
    pub authorization: Option<&'a str>,
    pub node: Option<&'a str>,
    pub refused_code: Option<&'a str>,
    pub peer: String,
}

/// A sync answer: status, extra headers and body.
#[derive(Debug)]
pub struct SyncAnswer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

fn json_error(status: u16, code: &str, message: &str) -> SyncAnswer {
    SyncAnswer {
        status,
        headers: vec![("content-type", "application/json".into())],
        body: serde_json::to_vec(&serde_json::json!({"error": {"code": code, "message": message}}))
            .unwrap_or_default(),
    }
}

/// A node id as a data plane sent it, if it is a plain short token; anything else is recorded as
/// `unnamed` rather than echoed into the admin API.
fn node_name(raw: Option<&str>) -> String {
    match raw {
        Some(n)
            if !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
        {
            n.to_owned()
        }
        _ => "unnamed".to_owned(),
    }
}

/// Answer one long poll: the active snapshot when it differs from what the data plane has (or last
/// refused), else 204 once `wait` passes without an activation.
pub async fn answer(cp: &ControlPlane, req: SyncRequest<'_>) -> SyncAnswer {
    let (path, query) = req.target.split_once('?').unwrap_or((req.target, ""));
    if path != PATH && path != KEYS_PATH {
        return json_error(
            404,
            "not_found",
            "the sync listener serves only /sync/v1/active and /sync/v1/keys",
        );
    }
    if req.method != "GET" {
        return json_error(405, "method_not_allowed", "allowed: GET");
    }
    if !cp.sync_authorized(req.authorization) {
        return json_error(
            401,
            "unauthenticated",
            "sync needs `Authorization: Bearer <token>` with the control plane's DATA_DIR/sync.token",
        );
    }
    if path == KEYS_PATH {
        return match cp.registry.signed_keys(control::now_ms()) {
            Ok((body, sig)) => SyncAnswer {
                status: 200,
                headers: vec![
                    ("content-type", "application/json".into()),
                    (KEYS_SIGNATURE_HEADER, hex(&sig)),
                ],
                body,
            },
            Err(e) => json_error(500, e.code(), &e.to_string()),
        };
    }
    let (mut seq, mut refused, mut wait) = (0u64, None, Duration::from_secs(25));
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || json_error(400, "bad_request", &format!("query `{k}` must be a number"));
        match k {
            "seq" => match v.parse() {
                Ok(n) => seq = n,
                Err(_) => return bad(),
            },
            "refused" => match v.parse() {
                Ok(n) => refused = Some(n),
                Err(_) => return bad(),
            },
            "wait" => match v.parse::<u64>() {
                Ok(n) => wait = Duration::from_secs(n).min(WAIT_MAX),
                Err(_) => return bad(),
            },
            _ => {}
        }
    }
    cp.data_planes.record(DataPlaneSeen {
        node: node_name(req.node),
        address: req.peer,
        last_seen_ms: control::now_ms(),
        serving_seq: seq,
        refused: refused.map(|seq| RefusalSeen {
            seq,
            code: req
                .refused_code
                .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
                .unwrap_or("unknown")
                .to_owned(),
        }),
    });
    let deadline = std::time::Instant::now() + wait;
    let mut woken = false;
    loop {
        let rung = cp.beacon.rung();
        let current = match cp.registry.activation_seq() {
            Ok(s) => s,
            Err(e) => return json_error(500, e.code(), &e.to_string()),
        };
        if current != 0 && current != seq && Some(current) != refused {
            match cp.registry.offer() {
                Ok(Some(offer)) => {
                    return SyncAnswer {
                        status: 200,
                        headers: vec![
                            ("content-type", CONTENT_TYPE.into()),
                            (ACTIVATION_HEADER, activation_header(&offer)),
                        ],
                        body: offer.blob,
                    }
                }
                Ok(None) => {}
                Err(e) => return json_error(500, e.code(), &e.to_string()),
            }
        }
        // Woken without a new activation: the keys changed. Answer now, so the data plane takes the new
        // key list at once (a revocation must not wait out a long poll).
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if woken
            || left.is_zero()
            || monoio::time::timeout(left, cp.beacon.wait(rung))
                .await
                .is_err()
        {
            return SyncAnswer {
                status: 204,
                headers: Vec::new(),
                body: Vec::new(),
            };
        }
        woken = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_round_trip_through_the_header() {
        let offer = Offer {
            activation: Activation {
                seq: 7,
                version: 3,
                hash: [0xab; 32],
            },
            signature: [0xcd; 64],
            blob: b"blob".to_vec(),
        };
        let back = parse_offer(&activation_header(&offer), offer.blob.clone()).unwrap();
        assert_eq!(back.activation, offer.activation);
        assert_eq!(back.signature, offer.signature);
        assert!(parse_offer("seq=1; version=1", Vec::new()).is_none());
        assert!(parse_offer("seq=x; version=1; hash=00; signature=00", Vec::new()).is_none());
    }

    #[test]
    fn node_names_are_plain_tokens() {
        assert_eq!(node_name(Some("dp-1.rack4")), "dp-1.rack4");
        assert_eq!(node_name(Some("<script>")), "unnamed");
        assert_eq!(node_name(None), "unnamed");
    }

    #[test]
    fn a_wait_that_times_out_leaves_no_waiter_behind() {
        let beacon = Beacon::default();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            for _ in 0..3 {
                let r = monoio::time::timeout(Duration::from_millis(5), beacon.wait(0)).await;
                assert!(r.is_err());
            }
            assert!(lock(&beacon.inner).waiters.is_empty());
            let since = beacon.rung();
            beacon.ring();
            beacon.wait(since).await; // already rung: ready at once
        });
    }
}
