//! Sessions that survive a restart: one writer thread applies the cores' session changes to the
//! session store (`storage::sessions`) in batches, off the cores' threads; at start the stored sessions
//! and holds are read back for their cores.
//!
//! Cores report what changed every `sessions.persist_interval` (`Core::persist_sessions`), so a crash
//! loses at most that much activity. Revocations are different: the admin API waits for `flush` before
//! answering, so a revoked session never comes back after a crash.

use std::time::{Duration, Instant};

use portcullis_pipeline::session::{Persisted, Revoke, Session, SessionId};
use portcullis_storage::sessions::{Change, SessionStore};

/// Changes applied in one transaction, at most.
const BATCH_MAX: usize = 128;

enum Msg {
    Change(Change),
    Flush(flume::Sender<()>),
}

#[derive(Debug, Clone)]
pub struct Persister {
    tx: flume::Sender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Change(_) => "Change",
            Msg::Flush(_) => "Flush",
        })
    }
}

/// What the store held at start, sorted for the cores.
#[derive(Debug, Default)]
pub struct Restored {
    /// Indexed by core.
    pub sessions: Vec<Vec<(SessionId, Session)>>,
    pub holds: Vec<(Revoke, Instant)>,
}

impl Persister {
    /// Start the writer over `store`.
    pub fn start(store: SessionStore) -> std::io::Result<Persister> {
        // Unbounded: a core never waits on the disk; the writer catches up in batches.
        let (tx, rx) = flume::unbounded::<Msg>();
        std::thread::Builder::new()
            .name("portcullis-sessions".into())
            .spawn(move || write_loop(&store, &rx))?;
        Ok(Persister { tx })
    }

    pub fn send(&self, c: Change) {
        let _ = self.tx.send(Msg::Change(c));
    }

    /// `flush` for threads outside a runtime (the end of `main`).
    pub fn flush_blocking(&self) {
        let (reply, rx) = flume::bounded(1);
        if self.tx.send(Msg::Flush(reply)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }

    /// Wait until everything sent before is on disk (or failed to be, which is logged).
    pub async fn flush(&self) {
        let (reply, rx) = flume::bounded(1);
        if self.tx.send(Msg::Flush(reply)).is_ok() {
            let _ = monoio::time::timeout(Duration::from_secs(5), rx.recv_async()).await;
        }
    }
}

fn write_loop(store: &SessionStore, rx: &flume::Receiver<Msg>) {
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut changes = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Change(c) => changes.push(c),
                Msg::Flush(f) => flushes.push(f),
            }
            next = (changes.len() < BATCH_MAX)
                .then(|| rx.try_recv().ok())
                .flatten();
        }
        if !changes.is_empty() {
            match store.apply(&changes) {
                Ok(()) if failing => {
                    failing = false;
                    crate::info!("session store writable again");
                }
                Ok(()) => {}
                // Sessions go on being served from memory; only their surviving a restart is at stake.
                Err(e) if !failing => {
                    failing = true;
                    crate::error!("sessions not persisted: {e}");
                }
                Err(_) => {}
            }
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

/// The stored key of a hold on `which` (`None` for a session id, which holds nothing).
pub fn hold_key(which: &Revoke) -> Option<String> {
    match which {
        Revoke::Id(_) => None,
        Revoke::Agent(a) => Some(format!("agent:{a}")),
        Revoke::Identity(k) => Some(k.clone()),
    }
}

/// Read the store back: live sessions for the core that owns each (an id names its core; with fewer
/// cores than before, core `c` is now `c % cores`), holds that have not ended. What expired meanwhile
/// is removed from the store.
pub fn restore(store: &SessionStore, cores: usize, node: u16) -> Restored {
    let mut out = Restored {
        sessions: (0..cores.max(1)).map(|_| Vec::new()).collect(),
        holds: Vec::new(),
    };
    let loaded = match store.load() {
        Ok(l) => l,
        Err(e) => {
            crate::error!("stored sessions not read: {e}");
            return out;
        }
    };
    let now = Instant::now();
    let now_ms = crate::control::now_ms();
    let mut gone = Vec::new();
    for (key, bytes) in loaded.sessions {
        let back = SessionId::parse(&key)
            .filter(|id| id.node == node)
            .zip(serde_json::from_slice::<Persisted>(&bytes).ok())
            .and_then(|(id, p)| Some((id, p.restore(now, now_ms)?)));
        match back {
            Some((id, s)) => out.sessions[usize::from(id.core) % cores.max(1)].push((id, s)),
            None => gone.push(Change::Remove { id: key }),
        }
    }
    for (key, bytes) in loaded.holds {
        let until = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .and_then(|ms| ms.checked_sub(now_ms))
            .map(|left| now + Duration::from_millis(left));
        let which = if let Some(a) = key.strip_prefix("agent:") {
            Some(Revoke::Agent(a.to_owned()))
        } else {
            key.starts_with("key:")
                .then(|| Revoke::Identity(key.clone()))
        };
        match which.zip(until) {
            Some(h) => out.holds.push(h),
            None => gone.push(Change::RemoveHold { what: key }),
        }
    }
    if !gone.is_empty() {
        if let Err(e) = store.apply(&gone) {
            crate::warn!("expired sessions not removed from the store: {e}");
        }
    }
    let n: usize = out.sessions.iter().map(Vec::len).sum();
    if n > 0 || !out.holds.is_empty() {
        crate::info!(
            "sessions restored sessions={n} holds={} expired={}",
            out.holds.len(),
            gone.len()
        );
    }
    out
}
