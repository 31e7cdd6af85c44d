//! Hybrid mode's data plane: follow a remote control plane's active snapshot (see `sync` for the wire).
//!
//! One plain thread long-polls the control plane over HTTPS with blocking I/O: it is one request at a
//! time, off every core, and a blocked read costs nothing but its own stack. Each offer is verified and
//! stored by `Registry::follow` before it is served, so what is served survives a restart of this data
//! plane with the control plane gone. When the control plane cannot be reached the data plane keeps
//! serving what it has and retries with backoff; a refused offer is logged, counted, shown at
//! `GET /admin/v1/sync`, and reported to the control plane in the next poll.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use serde::Serialize;

use crate::config::{parse_https_url, Follow, UpstreamUrl};
use crate::control::{now_ms, ControlPlane};
use crate::{https, sync};
use portcullis_storage::signing::parse_hex;

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How following goes, for `GET /admin/v1/sync` and `/metrics`.
#[derive(Debug)]
pub struct FollowStatus {
    control_plane: String,
    state: Mutex<FollowState>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FollowState {
    pub control_plane: String,
    /// `connecting` until the first answer, then `following` or `unreachable`.
    pub state: &'static str,
    pub last_contact_ms: Option<u64>,
    pub last_error: Option<String>,
    /// The activation served: sequence, snapshot version and hash.
    pub serving: Option<Serving>,
    pub refused: Option<Refused>,
    pub refusals_total: u64,
    /// Agent API keys in the key list last taken from the control plane.
    pub keys: Option<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Serving {
    pub seq: u64,
    pub version: u64,
    pub hash: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Refused {
    pub seq: u64,
    pub version: u64,
    pub code: &'static str,
    pub message: String,
    pub at_ms: u64,
}

impl FollowStatus {
    pub fn new(control_plane: &str) -> FollowStatus {
        FollowStatus {
            control_plane: control_plane.to_owned(),
            state: Mutex::new(FollowState {
                control_plane: control_plane.to_owned(),
                state: "connecting",
                ..FollowState::default()
            }),
        }
    }

    pub fn control_plane(&self) -> &str {
        &self.control_plane
    }

    pub fn snapshot(&self) -> FollowState {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FollowState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Prometheus lines for the follower.
    pub fn metrics(&self) -> String {
        let s = self.lock();
        format!(
            "# HELP portcullis_follow_up Whether the last poll of the control plane got an answer.\n# TYPE portcullis_follow_up gauge\nportcullis_follow_up {}\n# HELP portcullis_follow_refused_total Snapshot offers refused (signature, hash, replay).\n# TYPE portcullis_follow_refused_total counter\nportcullis_follow_refused_total {}\n# HELP portcullis_follow_activation Activation sequence served from the control plane.\n# TYPE portcullis_follow_activation gauge\nportcullis_follow_activation {}\n",
            u8::from(s.state == "following"),
            s.refusals_total,
            s.serving.as_ref().map_or(0, |v| v.seq)
        )
    }
}

/// Everything the follower thread needs, checked at start.
#[derive(Debug)]
pub struct Follower {
    url: UpstreamUrl,
    token: String,
    tls: Arc<ClientConfig>,
    wait: Duration,
    connect_timeout: Duration,
    /// Largest snapshot accepted: what the registry's map could hold.
    body_max: usize,
    node: String,
}

impl Follower {
    pub fn new(
        f: &Follow,
        connect_timeout: Duration,
        body_max: usize,
        node: String,
    ) -> Result<Follower, String> {
        let url = parse_https_url(&f.control_plane)?;
        let token = std::fs::read_to_string(&f.token_file)
            .map_err(|e| format!("follow.token_file {}: {e}", f.token_file.display()))?
            .trim()
            .to_owned();
        if token.len() < 32 {
            return Err(format!(
                "follow.token_file {}: shorter than 32 characters; copy the control plane's DATA_DIR/sync.token",
                f.token_file.display()
            ));
        }
        Ok(Follower {
            url,
            token,
            tls: https::client_config(
                f.tls_fingerprint.as_deref(),
                f.tls_ca_file.as_deref(),
                "follow",
            )?,
            wait: f.poll_wait.0,
            connect_timeout,
            body_max,
            node,
        })
    }

    /// Poll until `stop` is set (checked between polls; the process exits without waiting for one).
    pub fn run(self, cp: Arc<ControlPlane>, status: Arc<FollowStatus>, stop: Arc<AtomicBool>) {
        // What a restart serves before the control plane answers (or if it says nothing is new).
        if let Ok(Some(version)) = cp.registry.active_version() {
            if let Ok(info) = cp.registry.snapshot_info(version) {
                status.lock().serving = Some(Serving {
                    seq: cp.registry.activation_seq().unwrap_or(0),
                    version,
                    hash: info.hash,
                });
            }
        }
        let mut backoff = BACKOFF_MIN;
        let mut refused: Option<(u64, &'static str)> = None;
        let mut reachable = None;
        while !stop.load(Ordering::SeqCst) {
            let seq = cp.registry.activation_seq().unwrap_or(0);
            // Until the control plane has answered, ask without waiting: the state shown to operators
            // (and a first offer) should not take a whole long poll to appear.
            let wait = if reachable == Some(true) {
                self.wait
            } else {
                Duration::ZERO
            };
            let outcome = self.poll(seq, refused, wait);
            let ok = outcome.is_ok();
            if reachable != Some(ok) {
                match &outcome {
                    Ok(_) => crate::info!("following control plane {}", status.control_plane),
                    Err(e) => crate::warn!(
                        "control plane {} unreachable: {e}; serving the last good snapshot",
                        status.control_plane
                    ),
                }
                reachable = Some(ok);
            }
            {
                let mut s = status.lock();
                s.state = if ok { "following" } else { "unreachable" };
                match &outcome {
                    Ok(_) => {
                        s.last_contact_ms = Some(now_ms());
                        s.last_error = None;
                    }
                    Err(e) => s.last_error = Some(e.clone()),
                }
            }
            match outcome {
                Ok(Some(offer)) => {
                    let a = offer.activation;
                    match cp.follow_offer(&offer) {
                        Ok(f) => {
                            refused = None;
                            if f.changed {
                                crate::info!(
                                    "control plane activation {}: serving snapshot v{} blake3:{}",
                                    a.seq,
                                    a.version,
                                    f.info.hash
                                );
                            }
                            status.lock().serving = Some(Serving {
                                seq: a.seq,
                                version: a.version,
                                hash: f.info.hash,
                            });
                        }
                        Err(e) => {
                            crate::error!(
                                "refused snapshot v{} (activation {}) from {}: {e}; still serving the last good snapshot",
                                a.version,
                                a.seq,
                                status.control_plane
                            );
                            refused = Some((a.seq, e.code()));
                            let mut s = status.lock();
                            s.refusals_total += 1;
                            s.refused = Some(Refused {
                                seq: a.seq,
                                version: a.version,
                                code: e.code(),
                                message: e.to_string(),
                                at_ms: now_ms(),
                            });
                            drop(s);
                            // The next poll names the refusal, so the control plane holds it until
                            // something newer: no tight loop, but do not hammer a confused peer either.
                            std::thread::sleep(BACKOFF_MIN);
                        }
                    }
                    backoff = BACKOFF_MIN;
                }
                Ok(None) => backoff = BACKOFF_MIN,
                Err(_) => {}
            }
            if ok {
                self.follow_keys(&cp, &status);
            } else {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// After each answered poll, take the control plane's key list. A list that fails (unreachable,
    /// bad signature, older than the one held) changes nothing: the last good keys stay.
    fn follow_keys(&self, cp: &ControlPlane, status: &FollowStatus) {
        let outcome = self
            .fetch_keys()
            .and_then(|(body, sig)| cp.follow_keys(&body, &sig).map_err(|e| e.to_string()));
        match outcome {
            Ok(n) => status.lock().keys = Some(n),
            Err(e) => {
                crate::warn!(
                    "API key list from {} not taken: {e}; the last good keys stay",
                    status.control_plane
                );
                status.lock().last_error = Some(e);
            }
        }
    }

    /// One long poll: `Ok(Some)` an offer, `Ok(None)` nothing new, `Err` why the control plane did not
    /// answer usefully.
    fn poll(
        &self,
        seq: u64,
        refused: Option<(u64, &str)>,
        wait: Duration,
    ) -> Result<Option<portcullis_storage::registry::Offer>, String> {
        let base = self.url.path.trim_end_matches('/');
        let mut target = format!("{base}{}?seq={seq}&wait={}", sync::PATH, wait.as_secs());
        let mut extra = String::new();
        if let Some((r, code)) = refused {
            target.push_str(&format!("&refused={r}"));
            extra = format!("{}: {code}\r\n", sync::REFUSED_HEADER);
        }
        let (status, activation, body) =
            self.exchange(&target, &extra, wait, sync::ACTIVATION_HEADER)?;
        match status {
            200 => {
                let header = activation
                    .ok_or_else(|| format!("200 without `{}`", sync::ACTIVATION_HEADER))?;
                sync::parse_offer(&header, body)
                    .map(Some)
                    .ok_or_else(|| format!("malformed `{}`: {header}", sync::ACTIVATION_HEADER))
            }
            204 => Ok(None),
            other => Err(format!(
                "HTTP {other}: {}",
                String::from_utf8_lossy(&body[..body.len().min(512)])
            )),
        }
    }

    /// Fetch the control plane's signed key list: the body and its signature.
    fn fetch_keys(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        let base = self.url.path.trim_end_matches('/');
        let target = format!("{base}{}", sync::KEYS_PATH);
        let (status, sig, body) =
            self.exchange(&target, "", Duration::ZERO, sync::KEYS_SIGNATURE_HEADER)?;
        if status != 200 {
            return Err(format!(
                "key list: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(512)])
            ));
        }
        let sig = sig
            .and_then(|s| parse_hex::<64>(s.trim()))
            .ok_or_else(|| format!("key list without a valid `{}`", sync::KEYS_SIGNATURE_HEADER))?;
        Ok((body, sig.to_vec()))
    }

    /// One HTTPS GET to the control plane (held up to `wait` by the other side): status, the value of
    /// `header`, body.
    fn exchange(
        &self,
        target: &str,
        extra: &str,
        wait: Duration,
        header: &str,
    ) -> Result<(u16, Option<String>, Vec<u8>), String> {
        let headers = format!(
            "authorization: Bearer {}\r\n{}: {}\r\n{extra}",
            self.token,
            sync::NODE_HEADER,
            self.node,
        );
        // The control plane holds the poll up to `wait`; past that plus a margin the link is dead.
        https::get(
            &self.url,
            &self.tls,
            &https::Get {
                target,
                headers: &headers,
                connect_timeout: self.connect_timeout,
                io_timeout: wait + Duration::from_secs(15),
                body_max: self.body_max,
                header,
            },
        )
    }
}
