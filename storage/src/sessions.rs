//! Session records that outlive a restart, in an LMDB environment of their own (`DATA_DIR/sessions/`)
//! so that session writes never wait on, or delay, registry writes.
//!
//! Records are opaque bytes keyed by the session id's wire form (`pipeline::session::Persisted` encodes
//! them); revocation holds are kept beside them by what they hold (`agent:NAME`, `key:ID`). Every batch
//! of changes is one write transaction: after a crash a batch is there entirely or not at all.

use std::fmt;
use std::path::{Path, PathBuf};

use heed::types::{Bytes, Str};
use heed::{Database, Env, EnvOpenOptions};

/// The map: address space, not disk. 10,000 sessions take about 5 MiB.
pub const DEFAULT_MAP_BYTES: usize = 256 << 20;

#[derive(Debug)]
pub enum SessionStoreError {
    Open { path: PathBuf, message: String },
    Write(String),
    Read(String),
}

impl fmt::Display for SessionStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open { path, message } => {
                write!(f, "session store {}: {message}", path.display())
            }
            Self::Write(m) => write!(f, "session store write: {m}"),
            Self::Read(m) => write!(f, "session store read: {m}"),
        }
    }
}

impl std::error::Error for SessionStoreError {}

/// One change to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put { id: String, record: Vec<u8> },
    Remove { id: String },
    PutHold { what: String, record: Vec<u8> },
    RemoveHold { what: String },
}

#[derive(Debug)]
pub struct SessionStore {
    env: Env,
    sessions: Database<Str, Bytes>,
    holds: Database<Str, Bytes>,
}

/// What a store held when opened.
#[derive(Debug, Default)]
pub struct Loaded {
    pub sessions: Vec<(String, Vec<u8>)>,
    pub holds: Vec<(String, Vec<u8>)>,
}

impl SessionStore {
    pub fn open(dir: &Path, map_bytes: usize) -> Result<SessionStore, SessionStoreError> {
        let open_err = |e: &dyn fmt::Display| SessionStoreError::Open {
            path: dir.to_path_buf(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(&e))?;
        let mut opts = EnvOpenOptions::new();
        opts.map_size(map_bytes).max_dbs(4);
        // SAFETY: as for the registry (`registry::open_env`): the data dir is 0700, owned by this
        // process and locked against a second portcullis, so nothing else writes the memory map.
        // NO_READ_AHEAD: records are written far more than read, and at random keys; read-ahead would
        // map neighbouring pages into the appliance's memory for nothing.
        #[allow(unsafe_code)]
        let env = unsafe {
            opts.flags(heed::EnvFlags::NO_READ_AHEAD);
            opts.open(dir)
        }
        .map_err(|e| open_err(&e))?;
        let mut w = env.write_txn().map_err(|e| open_err(&e))?;
        let sessions = env
            .create_database::<Str, Bytes>(&mut w, Some("sessions"))
            .map_err(|e| open_err(&e))?;
        let holds = env
            .create_database::<Str, Bytes>(&mut w, Some("holds"))
            .map_err(|e| open_err(&e))?;
        w.commit().map_err(|e| open_err(&e))?;
        Ok(SessionStore {
            env,
            sessions,
            holds,
        })
    }

    /// Everything stored.
    pub fn load(&self) -> Result<Loaded, SessionStoreError> {
        let err = |e: heed::Error| SessionStoreError::Read(e.to_string());
        let r = self.env.read_txn().map_err(err)?;
        let mut out = Loaded::default();
        for (db, into) in [
            (&self.sessions, &mut out.sessions),
            (&self.holds, &mut out.holds),
        ] {
            for kv in db.iter(&r).map_err(err)? {
                let (k, v) = kv.map_err(err)?;
                into.push((k.to_owned(), v.to_vec()));
            }
        }
        Ok(out)
    }

    /// Apply `changes` in one transaction.
    pub fn apply(&self, changes: &[Change]) -> Result<(), SessionStoreError> {
        let err = |e: heed::Error| SessionStoreError::Write(e.to_string());
        let mut w = self.env.write_txn().map_err(err)?;
        for c in changes {
            match c {
                Change::Put { id, record } => self.sessions.put(&mut w, id, record).map_err(err)?,
                Change::Remove { id } => {
                    self.sessions.delete(&mut w, id).map_err(err)?;
                }
                Change::PutHold { what, record } => {
                    self.holds.put(&mut w, what, record).map_err(err)?
                }
                Change::RemoveHold { what } => {
                    self.holds.delete(&mut w, what).map_err(err)?;
                }
            }
        }
        w.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_survive_reopening_and_a_batch_is_one_transaction() {
        let dir = std::env::temp_dir().join(format!("pc-sessions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = SessionStore::open(&dir, 1 << 20).unwrap();
            s.apply(&[
                Change::Put {
                    id: "a".into(),
                    record: b"1".to_vec(),
                },
                Change::Put {
                    id: "b".into(),
                    record: b"2".to_vec(),
                },
                Change::PutHold {
                    what: "agent:x".into(),
                    record: b"h".to_vec(),
                },
            ])
            .unwrap();
            s.apply(&[Change::Remove { id: "a".into() }]).unwrap();
            // A batch the map cannot hold fails whole: the removal before it in the batch is undone too.
            let big = vec![0u8; 2 << 20];
            assert!(s
                .apply(&[
                    Change::Remove { id: "b".into() },
                    Change::Put {
                        id: "c".into(),
                        record: big,
                    },
                ])
                .is_err());
        }
        let s = SessionStore::open(&dir, 1 << 20).unwrap();
        let loaded = s.load().unwrap();
        assert_eq!(loaded.sessions, vec![("b".to_owned(), b"2".to_vec())]);
        assert_eq!(loaded.holds, vec![("agent:x".to_owned(), b"h".to_vec())]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
