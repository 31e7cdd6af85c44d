//! The registry in LMDB: capabilities, agents, policies, agent API keys, approved snapshots, OpenAPI
//! documents and the embedded store's sealed secrets.
//!
//! One LMDB environment (`DATA_DIR/lmdb/`) with a named database per record kind. Every edit is one write
//! transaction, so a failed write (map full, invalid record) changes nothing, and LMDB's single writer
//! serialises concurrent approvals. Records are JSON (the `pipeline::control` types); each edit also
//! appends the new version to `history`, so who changed what and when survives later edits. Snapshots are
//! signed blobs (see `signing`) whose body is an rkyv archive (`pipeline::archive`): verified (hash,
//! signature, then the archive's own validation) and read where it lies in the memory map, never copied
//! out or parsed to be looked at.

use std::fmt;
use std::path::{Path, PathBuf};

use heed::byteorder::BE;
use heed::types::{Bytes, Str, U64};
use heed::{Database, Env, EnvOpenOptions, RoTxn, RwTxn};
use portcullis_pipeline::archive;
use portcullis_pipeline::control::{
    self, Agent, Approval, ApproveError, ArchivedSnapshot, Capability, DesiredState, Draft,
    FieldError, PinnedTool, Policy, Record, RecordMeta, Snapshot, SnapshotHeader,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use portcullis_pipeline::credential::Secret;

use crate::secrets::SealKey;
use crate::signing::{self, Activation, BlobError, SigningKey};

/// Default map size: 1 GiB of address space (not disk); records and snapshots of thousands of tools fit
/// many times over. Configurable because LMDB cannot grow past it without a restart.
pub const DEFAULT_MAP_BYTES: usize = 1 << 30;

#[derive(Debug)]
pub enum RegistryError {
    /// The environment could not be opened: missing permissions, a corrupt or truncated file.
    Open {
        path: PathBuf,
        message: String,
    },
    /// The map is full; nothing of the failed write was kept.
    MapFull {
        map_bytes: usize,
    },
    NotFound {
        kind: &'static str,
        key: String,
    },
    AlreadyExists {
        kind: &'static str,
        key: String,
    },
    Invalid(FieldError),
    Approve(ApproveError),
    /// A stored snapshot failed verification.
    BadSnapshot {
        version: u64,
        error: BlobError,
    },
    /// The data dir holds snapshots signed by another key than the one this appliance now trusts.
    SignerMismatch {
        path: PathBuf,
        stored: String,
        trusted: String,
    },
    /// This registry follows a remote control plane: snapshots are approved and activated there.
    Follower,
    /// An offered activation statement does not verify under the trusted key.
    BadActivation,
    /// An offered activation is older than the last one followed: a replay, or a rebuilt control plane.
    StaleActivation {
        offered: u64,
        current: u64,
    },
    /// The offered snapshot is not the one its activation statement names.
    ActivationMismatch {
        message: String,
    },
    /// A key list from the control plane does not verify under the trusted key.
    BadKeys,
    /// A key list older than the one this data plane holds (a replay could bring back a revoked key).
    StaleKeys {
        offered: u64,
        current: u64,
    },
    /// The offered snapshot has a version this data plane already holds with different content.
    SnapshotConflict {
        version: u64,
    },
    /// A stored record or snapshot does not decode: written by a newer version, or damaged.
    Corrupt {
        what: String,
        message: String,
    },
    Lmdb(String),
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::Open { path, message } => write!(
                f,
                "cannot open the registry at {}: {message}. If the file is damaged, stop portcullis, move {} aside and restore it from a backup (or start empty and re-apply your desired state)",
                path.display(),
                path.join("data.mdb").display()
            ),
            RegistryError::MapFull { map_bytes } => write!(
                f,
                "the registry is full ({map_bytes} bytes mapped); nothing was written. Raise `storage.lmdb_map_bytes` and restart"
            ),
            RegistryError::NotFound { kind, key } => write!(f, "no {kind} `{key}`"),
            RegistryError::AlreadyExists { kind, key } => write!(f, "{kind} `{key}` already exists"),
            RegistryError::Invalid(e) => write!(f, "invalid {e}"),
            RegistryError::Approve(e) => write!(f, "approval refused: {e}"),
            RegistryError::BadSnapshot { version, error } => {
                write!(f, "snapshot {version} is refused: {error}")
            }
            RegistryError::SignerMismatch { path, stored, trusted } => write!(
                f,
                "{} holds snapshots signed by {stored}, but this appliance trusts {trusted}. A data dir serves one signer: start with the trust key it was used with, or with a fresh data dir",
                path.display()
            ),
            RegistryError::Follower => f.write_str(
                "this data plane follows a remote control plane: approve and activate snapshots there",
            ),
            RegistryError::BadActivation => f.write_str(
                "the activation statement's signature does not verify with the trusted public key",
            ),
            RegistryError::StaleActivation { offered, current } => write!(
                f,
                "activation {offered} is older than activation {current} already followed: a replayed statement, or a rebuilt control plane (to follow a rebuilt one, start this data plane with a fresh data dir)"
            ),
            RegistryError::ActivationMismatch { message } => {
                write!(f, "the snapshot is not the one its activation names: {message}")
            }
            RegistryError::SnapshotConflict { version } => write!(
                f,
                "snapshot {version} is already held with different content; snapshots are immutable, so the offer is refused"
            ),
            RegistryError::BadKeys => f.write_str(
                "the API key list's signature does not verify with the trusted public key",
            ),
            RegistryError::StaleKeys { offered, current } => write!(
                f,
                "the API key list generated at {offered} is older than the one held (generated at {current}): a replayed list could bring back revoked keys"
            ),
            RegistryError::Corrupt { what, message } => write!(f, "{what} does not decode: {message}"),
            RegistryError::Lmdb(m) => write!(f, "LMDB: {m}"),
        }
    }
}

impl std::error::Error for RegistryError {}

impl RegistryError {
    /// Stable code for the admin API.
    pub fn code(&self) -> &'static str {
        match self {
            RegistryError::Open { .. } => "registry_unavailable",
            RegistryError::MapFull { .. } => "registry_full",
            RegistryError::NotFound { .. } => "not_found",
            RegistryError::AlreadyExists { .. } => "already_exists",
            RegistryError::Invalid(_) => "invalid_field",
            RegistryError::Approve(ApproveError::PolicyInvalid { .. }) => "policy_invalid",
            RegistryError::Approve(ApproveError::NothingChanged { .. }) => "nothing_changed",
            RegistryError::Approve(ApproveError::Inconsistent { .. }) => "inconsistent",
            RegistryError::Approve(ApproveError::ToolsUnavailable { .. }) => "tools_unavailable",
            RegistryError::BadSnapshot { .. } => "snapshot_tampered",
            RegistryError::SignerMismatch { .. } => "signer_mismatch",
            RegistryError::Follower => "follower_read_only",
            RegistryError::BadActivation => "activation_signature_invalid",
            RegistryError::StaleActivation { .. } => "activation_stale",
            RegistryError::ActivationMismatch { .. } => "activation_mismatch",
            RegistryError::SnapshotConflict { .. } => "snapshot_conflict",
            RegistryError::BadKeys => "keys_signature_invalid",
            RegistryError::StaleKeys { .. } => "keys_stale",
            RegistryError::Corrupt { .. } => "registry_corrupt",
            RegistryError::Lmdb(_) => "registry_error",
        }
    }
}

type Result<T> = std::result::Result<T, RegistryError>;

/// What `apply` did, or would do, to each kind of record.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ApplyPlan {
    pub capabilities: KindPlan,
    pub agents: KindPlan,
    pub policies: KindPlan,
    /// False for a dry run.
    pub applied: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct KindPlan {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
}

/// A record kind the registry keeps: its table and key.
pub trait Kind: Clone + Serialize + DeserializeOwned {
    /// Which of the registry's record tables holds this kind.
    const TABLE: RecordTable;
    /// For messages: "capability", "agent", "policy".
    const NAME: &'static str;
    /// The key of the list in a desired-state document: "capabilities", "agents", "policies".
    const PLURAL: &'static str;
    fn key(&self) -> &str;
    fn normalize(&mut self) -> std::result::Result<(), FieldError>;
}

/// The record tables, one per `Kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordTable {
    Capabilities,
    Agents,
    Policies,
}

macro_rules! kind {
    ($t:ty, $table:ident, $name:literal, $plural:literal, $key:ident) => {
        impl Kind for $t {
            const TABLE: RecordTable = RecordTable::$table;
            const NAME: &'static str = $name;
            const PLURAL: &'static str = $plural;
            fn key(&self) -> &str {
                &self.$key
            }
            fn normalize(&mut self) -> std::result::Result<(), FieldError> {
                <$t>::normalize(self)
            }
        }
    };
}
kind!(Capability, Capabilities, "capability", "capabilities", name);
kind!(Agent, Agents, "agent", "agents", name);
kind!(Policy, Policies, "policy", "policies", id);

/// How `put` treats an existing record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// Fail with `AlreadyExists` if the key is taken.
    Create,
    /// Fail with `NotFound` if the key is free.
    Update,
    /// Either (declarative apply).
    Upsert,
}

/// An agent API key as stored: only a hash of the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub agent: String,
    /// BLAKE3 of the whole presented key, hex.
    pub hash: String,
    pub created_by: String,
    pub created_at: u64,
    #[serde(default)]
    pub revoked_at: Option<u64>,
    #[serde(default)]
    pub revoked_by: Option<String>,
}

/// The API keys a control plane signs for its data planes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyList {
    /// Unix milliseconds on the control plane when the list was made.
    pub generated_ms: u64,
    pub keys: Vec<ApiKey>,
}

/// Meta key of the followed key list: 64 signature bytes, then the `KeyList` body.
const FOLLOWED_KEYS: &str = "followed_keys";

/// Where a snapshot stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    #[serde(flatten)]
    pub header: SnapshotHeader,
    /// BLAKE3 of the canonical encoding, hex: the snapshot's identity.
    pub hash: String,
    pub active: bool,
}

/// The tool definitions listed from one capability for an approval, and the capability version read
/// before listing.
#[derive(Clone, Debug)]
pub struct FetchedTools {
    pub capability: String,
    pub version: u64,
    pub tools: Vec<PinnedTool>,
}

/// The active snapshot as a control plane offers it to its data planes: the signed statement naming it
/// and the blob as stored.
#[derive(Clone, Debug)]
pub struct Offer {
    pub activation: Activation,
    pub signature: [u8; 64],
    pub blob: Vec<u8>,
}

/// What following an offer did.
#[derive(Clone, Debug)]
pub struct Followed {
    pub info: SnapshotInfo,
    /// False when the offer was what this data plane already served.
    pub changed: bool,
}

/// An embedded secret as listed: who set which version when, under which key; never the value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    pub version: u64,
    pub updated_by: String,
    pub updated_at: u64,
    /// Id of the key it is sealed under (`SealKey::id_hex`).
    pub key_id: String,
}

#[derive(Serialize, Deserialize)]
struct StoredSecret {
    #[serde(flatten)]
    info: SecretInfo,
    /// Hex of the sealed bytes.
    sealed: String,
}

pub struct Registry {
    env: Env,
    path: PathBuf,
    map_bytes: usize,
    key: SigningKey,
    /// The key snapshots must verify under: this data dir's own key, or a remote control plane's.
    trust: [u8; 32],
    tables: Tables,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("path", &self.path)
            .finish()
    }
}

struct Tables {
    capabilities: Database<Str, Bytes>,
    agents: Database<Str, Bytes>,
    policies: Database<Str, Bytes>,
    api_keys: Database<Str, Bytes>,
    /// `kind/key/version` (version as 20 zero-padded digits, so keys sort by version) → record JSON.
    history: Database<Str, Bytes>,
    /// version → signed blob.
    snapshots: Database<U64<BE>, Bytes>,
    /// version → header JSON, for cheap listing.
    snapshot_headers: Database<U64<BE>, Bytes>,
    /// BLAKE3 hex → an OpenAPI document as imported (capabilities name theirs by this hash).
    documents: Database<Str, Bytes>,
    /// Embedded secret name (`path#field`) → `StoredSecret` JSON, the value sealed (`crate::secrets`).
    secrets: Database<Str, Bytes>,
    /// `latest`, `active` → version, `activation` → activation sequence (8 bytes BE each); `signer` →
    /// the public key the stored snapshots are signed with (32 bytes).
    meta: Database<Str, Bytes>,
}

fn lmdb(map_bytes: usize) -> impl Fn(heed::Error) -> RegistryError {
    move |e| match e {
        heed::Error::Mdb(heed::MdbError::MapFull) => RegistryError::MapFull { map_bytes },
        other => RegistryError::Lmdb(other.to_string()),
    }
}

fn decode<T: DeserializeOwned>(what: impl Fn() -> String, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Corrupt {
        what: what(),
        message: e.to_string(),
    })
}

fn corrupt_snapshot(version: u64, e: &archive::ArchiveError) -> RegistryError {
    RegistryError::Corrupt {
        what: format!("snapshot {version}"),
        message: e.to_string(),
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Our record types have string keys and no non-finite floats, so encoding cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

impl Registry {
    /// Open (creating on first start) the registry under `dir` with `map_bytes` of map. Snapshots verify
    /// under `trust` when given (a data plane following a remote control plane), else under `key`.
    pub fn open(
        dir: &Path,
        map_bytes: usize,
        key: SigningKey,
        trust: Option<[u8; 32]>,
    ) -> Result<Registry> {
        let path = dir.to_path_buf();
        std::fs::create_dir_all(&path).map_err(|e| RegistryError::Open {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let env = open_env(&path, map_bytes).map_err(|e| RegistryError::Open {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let err = lmdb(map_bytes);
        let mut w = env.write_txn().map_err(&err)?;
        let mut db = |name: &str| env.create_database::<Str, Bytes>(&mut w, Some(name));
        let capabilities = db("capabilities").map_err(&err)?;
        let agents = db("agents").map_err(&err)?;
        let policies = db("policies").map_err(&err)?;
        let api_keys = db("api_keys").map_err(&err)?;
        let history = db("history").map_err(&err)?;
        let meta = db("meta").map_err(&err)?;
        let documents = db("documents").map_err(&err)?;
        let secrets = db("secrets").map_err(&err)?;
        let snapshots = env
            .create_database::<U64<BE>, Bytes>(&mut w, Some("snapshots"))
            .map_err(&err)?;
        let snapshot_headers = env
            .create_database::<U64<BE>, Bytes>(&mut w, Some("snapshot_headers"))
            .map_err(&err)?;
        w.commit().map_err(&err)?;
        let registry = Registry {
            env,
            path,
            map_bytes,
            trust: trust.unwrap_or_else(|| key.public()),
            key,
            tables: Tables {
                capabilities,
                agents,
                policies,
                api_keys,
                history,
                snapshots,
                snapshot_headers,
                documents,
                secrets,
                meta,
            },
        };
        let r = registry.read()?;
        let stored = registry.signer_in(&r)?;
        drop(r);
        match stored {
            Some(s) if s != registry.trust => Err(RegistryError::SignerMismatch {
                path: registry.path.clone(),
                stored: signing::hex(&s),
                trusted: signing::hex(&registry.trust),
            }),
            _ => Ok(registry),
        }
    }

    /// Whether snapshots come from a remote control plane rather than this registry's own approvals.
    pub fn is_follower(&self) -> bool {
        self.trust != self.key.public()
    }

    /// The key the stored snapshots are signed with; a data dir from before it was recorded holds only its
    /// own approvals.
    fn signer_in(&self, txn: &RoTxn<'_>) -> Result<Option<[u8; 32]>> {
        if let Some(b) = self.tables.meta.get(txn, "signer").map_err(self.err())? {
            return <[u8; 32]>::try_from(b)
                .map(Some)
                .map_err(|_| RegistryError::Corrupt {
                    what: "the registry's signer".into(),
                    message: format!("{} bytes, not 32", b.len()),
                });
        }
        let any = self
            .tables
            .snapshots
            .first(txn)
            .map_err(self.err())?
            .is_some();
        Ok(any.then(|| self.key.public()))
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.public()
    }

    pub fn public_key_hex(&self) -> String {
        self.key.public_hex()
    }

    fn err(&self) -> impl Fn(heed::Error) -> RegistryError {
        lmdb(self.map_bytes)
    }

    fn table<T: Kind>(&self) -> Database<Str, Bytes> {
        match T::TABLE {
            RecordTable::Capabilities => self.tables.capabilities,
            RecordTable::Agents => self.tables.agents,
            RecordTable::Policies => self.tables.policies,
        }
    }

    fn read(&self) -> Result<RoTxn<'_, heed::WithTls>> {
        self.env.read_txn().map_err(self.err())
    }

    fn write(&self) -> Result<RwTxn<'_>> {
        self.env.write_txn().map_err(self.err())
    }

    pub fn get<T: Kind>(&self, key: &str) -> Result<Record<T>> {
        let r = self.read()?;
        self.get_in::<T>(&r, key)?
            .ok_or_else(|| RegistryError::NotFound {
                kind: T::NAME,
                key: key.to_owned(),
            })
    }

    fn get_in<T: Kind>(&self, txn: &RoTxn<'_>, key: &str) -> Result<Option<Record<T>>> {
        match self.table::<T>().get(txn, key).map_err(self.err())? {
            None => Ok(None),
            Some(b) => decode(|| format!("{} `{key}`", T::NAME), b).map(Some),
        }
    }

    pub fn list<T: Kind>(&self) -> Result<Vec<Record<T>>> {
        let r = self.read()?;
        self.list_in::<T>(&r)
    }

    fn list_in<T: Kind>(&self, txn: &RoTxn<'_>) -> Result<Vec<Record<T>>> {
        let mut out = Vec::new();
        for item in self.table::<T>().iter(txn).map_err(self.err())? {
            let (k, v) = item.map_err(self.err())?;
            out.push(decode(|| format!("{} `{k}`", T::NAME), v)?);
        }
        Ok(out)
    }

    /// Create or replace a record (a draft edit). Returns the stored record; an unchanged spec is not a
    /// new version.
    pub fn put<T: Kind + PartialEq>(
        &self,
        spec: T,
        how: Put,
        by: &str,
        now_ms: u64,
    ) -> Result<Record<T>> {
        let mut w = self.write()?;
        let (rec, changed) = self.put_in(&mut w, spec, how, by, now_ms)?;
        if changed {
            w.commit().map_err(self.err())?;
        }
        Ok(rec)
    }

    /// `put` inside a caller's transaction; also says whether anything was written.
    fn put_in<T: Kind + PartialEq>(
        &self,
        w: &mut RwTxn<'_>,
        mut spec: T,
        how: Put,
        by: &str,
        now_ms: u64,
    ) -> Result<(Record<T>, bool)> {
        spec.normalize().map_err(RegistryError::Invalid)?;
        let existing = self.get_in::<T>(w, spec.key())?;
        let meta = match (&existing, how) {
            (Some(_), Put::Create) => {
                return Err(RegistryError::AlreadyExists {
                    kind: T::NAME,
                    key: spec.key().to_owned(),
                })
            }
            (None, Put::Update) => {
                return Err(RegistryError::NotFound {
                    kind: T::NAME,
                    key: spec.key().to_owned(),
                })
            }
            (Some(old), _) if old.spec == spec => return Ok((old.clone(), false)),
            (Some(old), _) => old.meta.next(by, now_ms),
            (None, _) => RecordMeta::first(by, now_ms),
        };
        let rec = Record { spec, meta };
        let bytes = encode(&rec);
        let err = self.err();
        self.table::<T>()
            .put(w, rec.spec.key(), &bytes)
            .map_err(&err)?;
        let hkey = format!("{}/{}/{:020}", T::NAME, rec.spec.key(), rec.meta.version);
        self.tables.history.put(w, &hkey, &bytes).map_err(&err)?;
        Ok((rec, true))
    }

    /// Remove a record from the draft (approved snapshots keep it). Removing an agent revokes its keys.
    pub fn remove<T: Kind>(&self, key: &str, by: &str, now_ms: u64) -> Result<()> {
        let mut w = self.write()?;
        self.remove_in::<T>(&mut w, key, by, now_ms)?;
        w.commit().map_err(self.err())
    }

    fn remove_in<T: Kind>(
        &self,
        w: &mut RwTxn<'_>,
        key: &str,
        by: &str,
        now_ms: u64,
    ) -> Result<()> {
        let err = self.err();
        let Some(old) = self.get_in::<T>(w, key)? else {
            return Err(RegistryError::NotFound {
                kind: T::NAME,
                key: key.to_owned(),
            });
        };
        self.table::<T>().delete(w, key).map_err(&err)?;
        let hkey = format!("{}/{key}/{:020}", T::NAME, old.meta.version + 1);
        let tomb = serde_json::json!({"removed_by": by, "removed_at": now_ms});
        self.tables
            .history
            .put(w, &hkey, &encode(&tomb))
            .map_err(&err)?;
        // An agent's keys die with it.
        if T::TABLE == RecordTable::Agents {
            self.revoke_all_in(w, key, by, now_ms)?;
        }
        Ok(())
    }

    /// Make the registry's drafts equal `desired` (declarative apply): records in it are created or
    /// updated, records not in it are removed; all in one transaction, so a bad record anywhere changes
    /// nothing. With `dry_run` the plan is computed and the transaction thrown away.
    pub fn apply(
        &self,
        desired: DesiredState,
        by: &str,
        now_ms: u64,
        dry_run: bool,
    ) -> Result<ApplyPlan> {
        let mut w = self.write()?;
        // A capability's OpenAPI document and selection are set by `openapi import|select`, not written
        // in desired-state files: a file that leaves them out keeps them.
        let mut capabilities = desired.capabilities;
        for c in capabilities.iter_mut().filter(|c| c.openapi.is_none()) {
            if let Some(old) = self.get_in::<Capability>(&w, &c.name)? {
                c.openapi = old.spec.openapi;
            }
        }
        let plan = ApplyPlan {
            capabilities: self.apply_kind(&mut w, capabilities, by, now_ms)?,
            agents: self.apply_kind(&mut w, desired.agents, by, now_ms)?,
            policies: self.apply_kind(&mut w, desired.policies, by, now_ms)?,
            applied: !dry_run,
        };
        if dry_run {
            w.abort();
        } else {
            w.commit().map_err(self.err())?;
        }
        Ok(plan)
    }

    fn apply_kind<T: Kind + PartialEq>(
        &self,
        w: &mut RwTxn<'_>,
        desired: Vec<T>,
        by: &str,
        now_ms: u64,
    ) -> Result<KindPlan> {
        let mut plan = KindPlan::default();
        let mut keys = std::collections::BTreeSet::new();
        for (i, spec) in desired.into_iter().enumerate() {
            let key = spec.key().to_owned();
            if !keys.insert(key.clone()) {
                return Err(RegistryError::Invalid(FieldError {
                    field: format!("{}[{i}]", T::PLURAL),
                    message: format!("`{key}` appears twice"),
                }));
            }
            let (rec, changed) =
                self.put_in(w, spec, Put::Upsert, by, now_ms)
                    .map_err(|e| match e {
                        RegistryError::Invalid(f) => RegistryError::Invalid(FieldError {
                            field: format!("{}[{i}].{}", T::PLURAL, f.field),
                            message: f.message,
                        }),
                        other => other,
                    })?;
            // A written record at version 1 is new (a re-created one starts at 1 again).
            match (changed, rec.meta.version) {
                (false, _) => plan.unchanged += 1,
                (true, 1) => plan.created.push(key),
                (true, _) => plan.updated.push(key),
            }
        }
        let stale: Vec<String> = self
            .list_in::<T>(w)?
            .into_iter()
            .map(|r| r.spec.key().to_owned())
            .filter(|k| !keys.contains(k))
            .collect();
        for key in stale {
            self.remove_in::<T>(w, &key, by, now_ms)?;
            plan.removed.push(key);
        }
        Ok(plan)
    }

    /// Every stored version of a record, oldest first (removals appear as `{"removed_by", "removed_at"}`).
    pub fn history<T: Kind>(&self, key: &str) -> Result<Vec<serde_json::Value>> {
        let r = self.read()?;
        let prefix = format!("{}/{key}/", T::NAME);
        let mut out = Vec::new();
        for item in self
            .tables
            .history
            .prefix_iter(&r, &prefix)
            .map_err(self.err())?
        {
            let (k, v) = item.map_err(self.err())?;
            out.push(decode(|| format!("history `{k}`"), v)?);
        }
        Ok(out)
    }

    // ------------------------------------------------------------------ API keys

    /// Store a new key for an active agent. The caller generated `id` and the secret, and passes only the
    /// hash of the whole key.
    pub fn add_key(
        &self,
        agent: &str,
        id: &str,
        hash: &str,
        by: &str,
        now_ms: u64,
    ) -> Result<ApiKey> {
        let mut w = self.write()?;
        let err = self.err();
        if self.get_in::<Agent>(&w, agent)?.is_none() {
            return Err(RegistryError::NotFound {
                kind: "agent",
                key: agent.to_owned(),
            });
        }
        let key = ApiKey {
            id: id.to_owned(),
            agent: agent.to_owned(),
            hash: hash.to_owned(),
            created_by: by.to_owned(),
            created_at: now_ms,
            revoked_at: None,
            revoked_by: None,
        };
        self.tables
            .api_keys
            .put(&mut w, id, &encode(&key))
            .map_err(&err)?;
        w.commit().map_err(&err)?;
        Ok(key)
    }

    pub fn key(&self, id: &str) -> Result<Option<ApiKey>> {
        let r = self.read()?;
        match self.tables.api_keys.get(&r, id).map_err(self.err())? {
            None => Ok(None),
            Some(b) => decode(|| format!("API key `{id}`"), b).map(Some),
        }
    }

    pub fn keys(&self, agent: &str) -> Result<Vec<ApiKey>> {
        let r = self.read()?;
        let mut out = Vec::new();
        for item in self.tables.api_keys.iter(&r).map_err(self.err())? {
            let (k, v) = item.map_err(self.err())?;
            let key: ApiKey = decode(|| format!("API key `{k}`"), v)?;
            if key.agent == agent {
                out.push(key);
            }
        }
        Ok(out)
    }

    /// Every key ever issued, revoked ones included (the data plane's key table is built from this).
    pub fn all_keys(&self) -> Result<Vec<ApiKey>> {
        let r = self.read()?;
        let mut out = Vec::new();
        for item in self.tables.api_keys.iter(&r).map_err(self.err())? {
            let (k, v) = item.map_err(self.err())?;
            out.push(decode(|| format!("API key `{k}`"), v)?);
        }
        Ok(out)
    }

    /// Every key, as a control plane hands them to its data planes: a JSON body (`KeyList`) and its
    /// signature under the snapshot key. Only hashes travel; the list carries when it was made so a
    /// data plane can refuse an older one.
    pub fn signed_keys(&self, now_ms: u64) -> Result<(Vec<u8>, [u8; 64])> {
        let mut keys = self.all_keys()?;
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        let body = serde_json::to_vec(&KeyList {
            generated_ms: now_ms,
            keys,
        })
        .map_err(|e| RegistryError::Lmdb(e.to_string()))?;
        let sig = self.key.sign_keys(&body);
        Ok((body, sig))
    }

    /// Take a key list from the control plane this data plane follows: verify it under the trust key,
    /// refuse one older than what is held, and keep it (so a restart without the control plane still
    /// admits the same agents). Returns the keys.
    pub fn follow_keys(&self, body: &[u8], signature: &[u8]) -> Result<Vec<ApiKey>> {
        signing::verify_keys(body, signature, &self.trust).map_err(|_| RegistryError::BadKeys)?;
        let list: KeyList = decode(|| "API key list".to_owned(), body)?;
        let mut w = self.write()?;
        let err = self.err();
        if let Some(held) = self.tables.meta.get(&w, FOLLOWED_KEYS).map_err(&err)? {
            let held: KeyList = decode(
                || "followed API key list".to_owned(),
                held.get(64..).unwrap_or_default(),
            )?;
            if list.generated_ms < held.generated_ms {
                return Err(RegistryError::StaleKeys {
                    offered: list.generated_ms,
                    current: held.generated_ms,
                });
            }
        }
        let mut stored = signature.to_vec();
        stored.extend_from_slice(body);
        self.tables
            .meta
            .put(&mut w, FOLLOWED_KEYS, &stored)
            .map_err(&err)?;
        w.commit().map_err(&err)?;
        Ok(list.keys)
    }

    /// The key list last followed, verified again as it is read (disk is input).
    pub fn followed_keys(&self) -> Result<Vec<ApiKey>> {
        let r = self.read()?;
        let Some(stored) = self
            .tables
            .meta
            .get(&r, FOLLOWED_KEYS)
            .map_err(self.err())?
        else {
            return Ok(Vec::new());
        };
        if stored.len() < 64 {
            return Err(RegistryError::BadKeys);
        }
        let (sig, body) = stored.split_at(64);
        signing::verify_keys(body, sig, &self.trust).map_err(|_| RegistryError::BadKeys)?;
        let list: KeyList = decode(|| "followed API key list".to_owned(), body)?;
        Ok(list.keys)
    }

    pub fn revoke_key(&self, agent: &str, id: &str, by: &str, now_ms: u64) -> Result<ApiKey> {
        let mut w = self.write()?;
        let err = self.err();
        let found = match self.tables.api_keys.get(&w, id).map_err(&err)? {
            Some(b) => Some(decode::<ApiKey>(|| format!("API key `{id}`"), b)?),
            None => None,
        };
        let mut key = match found {
            Some(k) if k.agent == agent => k,
            _ => {
                return Err(RegistryError::NotFound {
                    kind: "API key",
                    key: format!("{agent}/{id}"),
                })
            }
        };
        if key.revoked_at.is_none() {
            key.revoked_at = Some(now_ms);
            key.revoked_by = Some(by.to_owned());
            self.tables
                .api_keys
                .put(&mut w, id, &encode(&key))
                .map_err(&err)?;
        }
        w.commit().map_err(&err)?;
        Ok(key)
    }

    fn revoke_all_in(&self, w: &mut RwTxn<'_>, agent: &str, by: &str, now_ms: u64) -> Result<()> {
        let err = self.err();
        let mut revoke = Vec::new();
        for item in self.tables.api_keys.iter(w).map_err(&err)? {
            let (k, v) = item.map_err(&err)?;
            let key: ApiKey = decode(|| format!("API key `{k}`"), v)?;
            if key.agent == agent && key.revoked_at.is_none() {
                revoke.push(key);
            }
        }
        for mut key in revoke {
            key.revoked_at = Some(now_ms);
            key.revoked_by = Some(by.to_owned());
            self.tables
                .api_keys
                .put(w, &key.id.clone(), &encode(&key))
                .map_err(&err)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ snapshots

    fn meta_version(&self, txn: &RoTxn<'_>, name: &str) -> Result<Option<u64>> {
        Ok(self
            .tables
            .meta
            .get(txn, name)
            .map_err(self.err())?
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes))
    }

    fn header_in(&self, txn: &RoTxn<'_>, version: u64) -> Result<Option<SnapshotHeader>> {
        match self
            .tables
            .snapshot_headers
            .get(txn, &version)
            .map_err(self.err())?
        {
            None => Ok(None),
            Some(b) => decode(|| format!("snapshot {version} header"), b).map(Some),
        }
    }

    /// Compile the draft into the next snapshot, seal it, store it and (with `activate`) make it active:
    /// all in one write transaction, so concurrent approvals run one after the other and a refused one
    /// leaves nothing behind.
    ///
    /// `fetched` holds the tool definitions the caller listed from each capability that serves MCP, with
    /// the capability version it read before listing: a capability edited meanwhile, or one not listed,
    /// refuses the approval rather than pin definitions from the wrong endpoint.
    pub fn approve(
        &self,
        by: &str,
        note: &str,
        now_ms: u64,
        activate: bool,
        fetched: &[FetchedTools],
    ) -> Result<SnapshotInfo> {
        if self.is_follower() {
            return Err(RegistryError::Follower);
        }
        let mut w = self.write()?;
        let err = self.err();
        let capabilities = self.list_in::<Capability>(&w)?;
        let agents = self.list_in::<Agent>(&w)?;
        let policies = self.list_in::<Policy>(&w)?;
        let mut tools = Vec::new();
        for c in capabilities
            .iter()
            .filter(|c| c.spec.serves_mcp() || c.spec.serves_api())
        {
            let f = fetched.iter().find(|f| f.capability == c.spec.name);
            match f {
                Some(f) if f.version == c.meta.version => {
                    tools.extend(f.tools.iter().cloned());
                }
                Some(f) => {
                    return Err(RegistryError::Approve(ApproveError::ToolsUnavailable {
                        capability: c.spec.name.clone(),
                        message: format!(
                            "changed while its tools were being listed (version {} then {}); approve again",
                            f.version, c.meta.version
                        ),
                    }))
                }
                None => {
                    return Err(RegistryError::Approve(ApproveError::ToolsUnavailable {
                        capability: c.spec.name.clone(),
                        message: "registered while the others' tools were being listed; approve again"
                            .into(),
                    }))
                }
            }
        }
        let latest_version = self.meta_version(&w, "latest")?;
        let latest = match latest_version {
            Some(v) => self.header_in(&w, v)?.map(|h| (v, h.content_hash)),
            None => None,
        };
        let snapshot = control::compile(
            Draft {
                capabilities: &capabilities,
                agents: &agents,
                policies: &policies,
                tools: &tools,
            },
            &Approval {
                approved_by: by,
                approved_at: now_ms,
                note,
                latest: latest.as_ref().map(|(v, h)| (*v, h.as_str())),
            },
        )
        .map_err(RegistryError::Approve)?;
        let body = archive::encode(&snapshot).map_err(|e| RegistryError::Corrupt {
            what: format!("snapshot {}", snapshot.header.version),
            message: e.to_string(),
        })?;
        let blob = self.key.seal(&body);
        let version = snapshot.header.version;
        self.tables
            .snapshots
            .put(&mut w, &version, &blob)
            .map_err(&err)?;
        self.tables
            .snapshot_headers
            .put(&mut w, &version, &encode(&snapshot.header))
            .map_err(&err)?;
        self.tables
            .meta
            .put(&mut w, "latest", &version.to_be_bytes())
            .map_err(&err)?;
        self.tables
            .meta
            .put(&mut w, "signer", &self.key.public())
            .map_err(&err)?;
        if activate {
            self.set_active(&mut w, version, None)?;
        }
        w.commit().map_err(&err)?;
        Ok(SnapshotInfo {
            header: snapshot.header,
            hash: signing::blob_hash(&blob)
                .map(signing::hex)
                .unwrap_or_default(),
            active: activate,
        })
    }

    /// Store a document by its content hash (BLAKE3 hex), which is returned; storing it again is a no-op.
    pub fn put_document(&self, bytes: &[u8]) -> Result<String> {
        let hash = blake3::hash(bytes).to_hex().to_string();
        let mut w = self.write()?;
        let err = self.err();
        self.tables
            .documents
            .put(&mut w, &hash, bytes)
            .map_err(&err)?;
        w.commit().map_err(&err)?;
        Ok(hash)
    }

    /// Seal `value` under `key` and store it as embedded secret `name`; `must_exist` makes it a rotation
    /// (refused for an unknown name). Secrets are local to this data dir: a follower keeps its own.
    pub fn put_secret(
        &self,
        key: &SealKey,
        name: &str,
        value: &str,
        must_exist: bool,
        by: &str,
        now_ms: u64,
    ) -> Result<SecretInfo> {
        let sealed = key.seal(name, value).map_err(|e| {
            RegistryError::Invalid(FieldError {
                field: "value".into(),
                message: e.to_string(),
            })
        })?;
        let mut w = self.write()?;
        let err = self.err();
        let old: Option<StoredSecret> = match self.tables.secrets.get(&w, name).map_err(&err)? {
            Some(b) => Some(decode(|| format!("secret `{name}`"), b)?),
            None => None,
        };
        if must_exist && old.is_none() {
            return Err(RegistryError::NotFound {
                kind: "secret",
                key: name.to_owned(),
            });
        }
        let stored = StoredSecret {
            info: SecretInfo {
                name: name.to_owned(),
                version: old.as_ref().map_or(1, |o| o.info.version + 1),
                updated_by: by.to_owned(),
                updated_at: now_ms,
                key_id: key.id_hex(),
            },
            sealed: signing::hex(&sealed),
        };
        self.tables
            .secrets
            .put(&mut w, name, &encode(&stored))
            .map_err(&err)?;
        w.commit().map_err(&err)?;
        Ok(stored.info)
    }

    /// Embedded secret `name`, opened with `key`; `None` when there is none.
    pub fn secret(&self, key: &SealKey, name: &str) -> Result<Option<Secret>> {
        let r = self.read()?;
        let Some(bytes) = self.tables.secrets.get(&r, name).map_err(self.err())? else {
            return Ok(None);
        };
        let stored: StoredSecret = decode(|| format!("secret `{name}`"), bytes)?;
        let corrupt = |message: String| RegistryError::Corrupt {
            what: format!("secret `{name}`"),
            message,
        };
        let sealed = signing::unhex_vec(&stored.sealed).ok_or_else(|| corrupt("not hex".into()))?;
        key.open(name, &sealed)
            .map(Some)
            .map_err(|e| corrupt(e.to_string()))
    }

    /// Every embedded secret's name and versions (never values).
    pub fn secrets(&self) -> Result<Vec<SecretInfo>> {
        let r = self.read()?;
        let mut out = Vec::new();
        for item in self.tables.secrets.iter(&r).map_err(self.err())? {
            let (name, bytes) = item.map_err(self.err())?;
            let stored: StoredSecret = decode(|| format!("secret `{name}`"), bytes)?;
            out.push(stored.info);
        }
        Ok(out)
    }

    pub fn remove_secret(&self, name: &str) -> Result<()> {
        let mut w = self.write()?;
        let err = self.err();
        if !self.tables.secrets.delete(&mut w, name).map_err(&err)? {
            return Err(RegistryError::NotFound {
                kind: "secret",
                key: name.to_owned(),
            });
        }
        w.commit().map_err(&err)?;
        Ok(())
    }

    /// A stored document by its hash.
    pub fn document(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        let r = self.read()?;
        let v = self
            .tables
            .documents
            .get(&r, hash)
            .map_err(self.err())?
            .map(<[u8]>::to_vec);
        Ok(v)
    }

    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let r = self.read()?;
        let active = self.meta_version(&r, "active")?;
        let mut out = Vec::new();
        for item in self.tables.snapshot_headers.iter(&r).map_err(self.err())? {
            let (v, b) = item.map_err(self.err())?;
            let header: SnapshotHeader = decode(|| format!("snapshot {v} header"), b)?;
            let blob = self
                .tables
                .snapshots
                .get(&r, &v)
                .map_err(self.err())?
                .unwrap_or(&[]);
            let hash = signing::blob_hash(blob)
                .map(signing::hex)
                .unwrap_or_default();
            out.push(SnapshotInfo {
                header,
                hash,
                active: active == Some(v),
            });
        }
        Ok(out)
    }

    /// Read and verify one snapshot (hash and signature) and decode it into owned values.
    pub fn snapshot(&self, version: u64) -> Result<(SnapshotInfo, Snapshot)> {
        self.read_snapshot(version, |info, archived| {
            archive::to_owned(archived)
                .map(|s| (info.clone(), s))
                .map_err(|e| corrupt_snapshot(version, &e))
        })?
    }

    /// One snapshot's header, hash and whether it is active, verified; the body is only looked at.
    pub fn snapshot_info(&self, version: u64) -> Result<SnapshotInfo> {
        self.read_snapshot(version, |info, _| info.clone())
    }

    /// Verify snapshot `version` (hash, signature, the archive's validation) and hand `f` the archive
    /// where it lies in the LMDB map, inside one read transaction: nothing is copied or parsed. A body
    /// stored before archives (JSON) is decoded and archived in memory first.
    pub fn read_snapshot<R>(
        &self,
        version: u64,
        f: impl FnOnce(&SnapshotInfo, &ArchivedSnapshot) -> R,
    ) -> Result<R> {
        let r = self.read()?;
        let active = self.meta_version(&r, "active")?;
        let blob = self
            .tables
            .snapshots
            .get(&r, &version)
            .map_err(self.err())?
            .ok_or(RegistryError::NotFound {
                kind: "snapshot",
                key: version.to_string(),
            })?;
        let opened = signing::open_blob(blob, &self.trust)
            .map_err(|error| RegistryError::BadSnapshot { version, error })?;
        let from_json;
        let body = if archive::is_archive(opened.body) {
            opened.body
        } else {
            let old: Snapshot = decode(|| format!("snapshot {version}"), opened.body)?;
            from_json = archive::encode(&old).map_err(|e| corrupt_snapshot(version, &e))?;
            &from_json[..]
        };
        let archived = archive::access(body).map_err(|e| corrupt_snapshot(version, &e))?;
        let header = archive::header(archived).map_err(|e| corrupt_snapshot(version, &e))?;
        if header.version != version {
            return Err(RegistryError::Corrupt {
                what: format!("snapshot {version}"),
                message: format!("it says it is version {}", header.version),
            });
        }
        let info = SnapshotInfo {
            header,
            hash: signing::hex(&opened.hash),
            active: active == Some(version),
        };
        Ok(f(&info, archived))
    }

    pub fn active_version(&self) -> Result<Option<u64>> {
        let r = self.read()?;
        self.meta_version(&r, "active")
    }

    /// Make an approved snapshot the active one (rollback is activating an older version). The blob is
    /// verified first: a tampered snapshot is never activated.
    pub fn activate(&self, version: u64) -> Result<SnapshotInfo> {
        if self.is_follower() {
            return Err(RegistryError::Follower);
        }
        let (mut info, _) = self.snapshot(version)?;
        let mut w = self.write()?;
        self.set_active(&mut w, version, None)?;
        w.commit().map_err(self.err())?;
        info.active = true;
        Ok(info)
    }

    /// Point `active` at `version` and advance the activation sequence (to `seq` when following, else by
    /// one), in the caller's transaction.
    fn set_active(&self, w: &mut RwTxn<'_>, version: u64, seq: Option<u64>) -> Result<()> {
        let err = self.err();
        let seq = match seq {
            Some(s) => s,
            None => self.seq_in(w)? + 1,
        };
        self.tables
            .meta
            .put(w, "active", &version.to_be_bytes())
            .map_err(&err)?;
        self.tables
            .meta
            .put(w, "activation", &seq.to_be_bytes())
            .map_err(&err)
    }

    /// The activation sequence number of the active snapshot (0 before any activation).
    pub fn activation_seq(&self) -> Result<u64> {
        let r = self.read()?;
        self.seq_in(&r)
    }

    fn seq_in(&self, txn: &RoTxn<'_>) -> Result<u64> {
        // A data dir from before activations were counted has activated once if anything is active.
        Ok(match self.meta_version(txn, "activation")? {
            Some(s) => s,
            None => self.meta_version(txn, "active")?.map_or(0, |_| 1),
        })
    }

    /// The active snapshot with a statement naming it, signed now, for the data planes that follow this
    /// control plane. `None` before the first activation, and on a follower (it has no key to sign with
    /// that its own followers would trust).
    pub fn offer(&self) -> Result<Option<Offer>> {
        if self.is_follower() {
            return Ok(None);
        }
        let r = self.read()?;
        let Some(version) = self.meta_version(&r, "active")? else {
            return Ok(None);
        };
        let seq = self.seq_in(&r)?;
        let blob = self
            .tables
            .snapshots
            .get(&r, &version)
            .map_err(self.err())?
            .ok_or(RegistryError::NotFound {
                kind: "snapshot",
                key: version.to_string(),
            })?;
        // Never hand out what would not verify here: the follower would refuse it anyway.
        let opened = signing::open_blob(blob, &self.trust)
            .map_err(|error| RegistryError::BadSnapshot { version, error })?;
        let activation = Activation {
            seq,
            version,
            hash: opened.hash,
        };
        Ok(Some(Offer {
            signature: self.key.sign_activation(&activation),
            activation,
            blob: blob.to_vec(),
        }))
    }

    /// Take an offer from the control plane this registry trusts: verify the statement and the blob (hash,
    /// signature, that the blob is the one named), refuse anything older than what was followed last,
    /// then store the snapshot and make it active in one transaction. A refused offer changes nothing.
    pub fn follow(&self, offer: &Offer) -> Result<Followed> {
        let a = &offer.activation;
        a.verify(&offer.signature, &self.trust)
            .map_err(|_| RegistryError::BadActivation)?;
        let opened = signing::open_blob(&offer.blob, &self.trust).map_err(|error| {
            RegistryError::BadSnapshot {
                version: a.version,
                error,
            }
        })?;
        if opened.hash != a.hash {
            return Err(RegistryError::ActivationMismatch {
                message: format!(
                    "it names hash {} but the snapshot hashes to {}",
                    signing::hex(&a.hash),
                    signing::hex(&opened.hash)
                ),
            });
        }
        // The header is all a follower needs to store it; the rest is validated here and read in
        // place when it is served.
        let header = if archive::is_archive(opened.body) {
            archive::access(opened.body)
                .and_then(archive::header)
                .map_err(|e| corrupt_snapshot(a.version, &e))?
        } else {
            decode::<Snapshot>(|| format!("snapshot {}", a.version), opened.body)?.header
        };
        if header.version != a.version {
            return Err(RegistryError::ActivationMismatch {
                message: format!(
                    "it names version {} but the snapshot is version {}",
                    a.version, header.version
                ),
            });
        }
        let mut w = self.write()?;
        let err = self.err();
        let current = self.seq_in(&w)?;
        let active = self.meta_version(&w, "active")?;
        let info = |active| SnapshotInfo {
            header: header.clone(),
            hash: signing::hex(&opened.hash),
            active,
        };
        if a.seq == current && active == Some(a.version) {
            return Ok(Followed {
                info: info(true),
                changed: false,
            });
        }
        if a.seq <= current {
            return Err(RegistryError::StaleActivation {
                offered: a.seq,
                current,
            });
        }
        match self.tables.snapshots.get(&w, &a.version).map_err(&err)? {
            Some(held) if signing::blob_hash(held) != Some(&opened.hash[..]) => {
                return Err(RegistryError::SnapshotConflict { version: a.version })
            }
            Some(_) => {}
            None => {
                self.tables
                    .snapshots
                    .put(&mut w, &a.version, &offer.blob)
                    .map_err(&err)?;
                self.tables
                    .snapshot_headers
                    .put(&mut w, &a.version, &encode(&header))
                    .map_err(&err)?;
                let latest = self.meta_version(&w, "latest")?.unwrap_or(0);
                self.tables
                    .meta
                    .put(&mut w, "latest", &latest.max(a.version).to_be_bytes())
                    .map_err(&err)?;
            }
        }
        self.tables
            .meta
            .put(&mut w, "signer", &self.trust)
            .map_err(&err)?;
        self.set_active(&mut w, a.version, Some(a.seq))?;
        w.commit().map_err(&err)?;
        Ok(Followed {
            info: info(true),
            changed: true,
        })
    }

    /// Replace a stored blob by one sealed (signed) with this registry's key around what `body` makes of
    /// the old body: a signer's own mistake, or a body from an older release.
    #[cfg(test)]
    fn reseal_for_tests(&self, version: u64, body: impl FnOnce(&[u8]) -> Vec<u8>) -> Result<()> {
        self.rewrite_blob_for_tests(version, |old| {
            let opened = signing::open_blob(&old, &self.trust)
                .map_err(|error| RegistryError::BadSnapshot { version, error })?;
            Ok(self.key.seal(&body(opened.body)))
        })
    }

    /// Flip bits of a stored blob byte, as an attacker with write access to the file could.
    #[cfg(test)]
    fn tamper_for_tests(&self, version: u64, offset: usize) -> Result<()> {
        self.rewrite_blob_for_tests(version, |mut blob| {
            if let Some(b) = blob.get_mut(offset) {
                *b ^= 0x20;
            }
            Ok(blob)
        })
    }

    /// Store what `f` makes of snapshot `version`'s blob, in one write transaction.
    #[cfg(test)]
    fn rewrite_blob_for_tests(
        &self,
        version: u64,
        f: impl FnOnce(Vec<u8>) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let mut w = self.write()?;
        let err = self.err();
        let old = self
            .tables
            .snapshots
            .get(&w, &version)
            .map_err(&err)?
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let blob = f(old)?;
        self.tables
            .snapshots
            .put(&mut w, &version, &blob)
            .map_err(&err)?;
        w.commit().map_err(&err)
    }
}

#[allow(unsafe_code)]
fn open_env(path: &Path, map_bytes: usize) -> heed::Result<Env> {
    let mut opts = EnvOpenOptions::new();
    opts.map_size(map_bytes).max_dbs(16);
    // SAFETY: heed marks opening unsafe because the memory map must not be modified behind LMDB's back
    // (truncated or written by something other than LMDB) while mapped. The data dir is 0700 and owned by
    // this process; the appliance takes an exclusive lock on the data dir before opening, so no second
    // portcullis maps it, and LMDB's own lock file coordinates readers.
    unsafe { opts.open(path) }
}

#[cfg(test)]
mod tests {
    use portcullis_pipeline::control::{CapabilityKind, CredentialMode, Risk, Status};

    use super::*;
    use crate::DataDir;

    fn reg(tag: &str, map: usize) -> (Registry, PathBuf) {
        let root = std::env::temp_dir().join(format!("pc-reg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = DataDir::open(&root).unwrap();
        let key = SigningKey::load_or_create(&dir).unwrap();
        (
            Registry::open(&root.join("lmdb"), map, key, None).unwrap(),
            root,
        )
    }

    fn cap(name: &str) -> Capability {
        Capability {
            name: name.into(),
            kind: CapabilityKind::Mcp,
            owner: "team".into(),
            risk: Risk::Low,
            environment: "prod".into(),
            endpoint: "http://127.0.0.1:9/mcp".into(),
            tags: vec![],
            description: String::new(),
            status: Status::Active,
            output_schema: Default::default(),
            openapi: None,
            credential: None,
            audit_arguments: None,
        }
    }

    /// What listing every MCP capability's tools would have found: one `search` tool each.
    fn fetched(r: &Registry) -> Vec<FetchedTools> {
        r.list::<Capability>()
            .unwrap()
            .into_iter()
            .map(|c| FetchedTools {
                tools: vec![PinnedTool::from_listed(
                    &c.spec.name,
                    &serde_json::json!({"name": "search", "inputSchema": {"type": "object"}}),
                )
                .unwrap()],
                capability: c.spec.name,
                version: c.meta.version,
            })
            .collect()
    }

    #[test]
    fn apply_keeps_an_imported_openapi_document_the_file_leaves_out() {
        let (r, root) = reg("apply-openapi", DEFAULT_MAP_BYTES);
        let mut shop = cap("shop");
        shop.kind = CapabilityKind::Openapi;
        shop.openapi = Some(control::OpenApiSource {
            redirects: 0,
            document: "ab".repeat(32),
            select: vec!["GET /items".into()],
        });
        r.put(shop.clone(), Put::Create, "alice", 1).unwrap();
        let mut edited = shop.clone();
        edited.openapi = None;
        edited.description = "edited by a file".into();
        let desired = DesiredState {
            capabilities: vec![edited],
            ..DesiredState::default()
        };
        r.apply(desired, "ops", 2, false).unwrap();
        let got = r.get::<Capability>("shop").unwrap();
        assert_eq!(got.spec.openapi, shop.openapi);
        assert_eq!(got.spec.description, "edited by a file");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn embedded_secrets_are_sealed_versioned_and_never_listed_in_clear() {
        let (r, root) = reg("secrets", DEFAULT_MAP_BYTES);
        let key = SealKey::from_bytes(&[3; 32]);
        assert!(matches!(
            r.put_secret(&key, "gh#token", "v1-canary", true, "ops", 1),
            Err(RegistryError::NotFound { .. })
        ));
        let first = r
            .put_secret(&key, "gh#token", "v1-canary", false, "ops", 1)
            .unwrap();
        assert_eq!(first.version, 1);
        let second = r
            .put_secret(&key, "gh#token", "v2-canary", true, "ops", 2)
            .unwrap();
        assert_eq!(second.version, 2);
        assert_eq!(
            r.secret(&key, "gh#token").unwrap().unwrap().expose(),
            "v2-canary"
        );
        assert!(r.secret(&key, "other").unwrap().is_none());
        let listed = serde_json::to_string(&r.secrets().unwrap()).unwrap();
        assert!(
            listed.contains("gh#token") && !listed.contains("canary"),
            "{listed}"
        );
        let wrong = SealKey::from_bytes(&[4; 32]);
        assert!(matches!(
            r.secret(&wrong, "gh#token"),
            Err(RegistryError::Corrupt { .. })
        ));
        r.remove_secret("gh#token").unwrap();
        assert!(r.secret(&key, "gh#token").unwrap().is_none());
        drop(r);
        let on_disk = std::fs::read(root.join("lmdb").join("data.mdb")).unwrap();
        assert!(
            !on_disk.windows(6).any(|w| w == b"canary"),
            "a value in clear on disk"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn records_are_versioned_and_approval_is_monotonic() {
        let (r, root) = reg("basic", DEFAULT_MAP_BYTES);
        r.put(cap("docs"), Put::Create, "alice", 1).unwrap();
        assert!(matches!(
            r.put(cap("docs"), Put::Create, "alice", 2),
            Err(RegistryError::AlreadyExists { .. })
        ));
        let mut c = cap("docs");
        c.risk = Risk::High;
        let rec = r.put(c, Put::Update, "bob", 3).unwrap();
        assert_eq!(
            (
                rec.meta.version,
                rec.meta.created_by.as_str(),
                rec.meta.updated_by.as_str()
            ),
            (2, "alice", "bob")
        );
        assert_eq!(r.history::<Capability>("docs").unwrap().len(), 2);
        r.put(
            Agent {
                name: "bot".into(),
                owner: "o".into(),
                surface: "cursor".into(),
                environment: "prod".into(),
                credential_mode: CredentialMode::Service,
                groups: vec![],
                status: Status::Active,
                limits: vec![],
                sessions: None,
            },
            Put::Create,
            "alice",
            4,
        )
        .unwrap();

        let s1 = r.approve("carol", "first", 5, true, &fetched(&r)).unwrap();
        assert_eq!(s1.header.version, 1);
        assert!(matches!(
            r.approve("carol", "again", 6, true, &fetched(&r)),
            Err(RegistryError::Approve(ApproveError::NothingChanged {
                version: 1
            }))
        ));
        r.put(cap("more"), Put::Create, "alice", 7).unwrap();
        let stale = fetched(&r);
        r.put(
            Capability {
                description: "edited while listing".into(),
                ..cap("more")
            },
            Put::Update,
            "alice",
            8,
        )
        .unwrap();
        assert!(matches!(
            r.approve("carol", "stale", 8, true, &stale),
            Err(RegistryError::Approve(ApproveError::ToolsUnavailable { ref capability, .. })) if capability == "more"
        ));
        let s2 = r.approve("carol", "second", 8, true, &fetched(&r)).unwrap();
        assert_eq!((s2.header.version, s2.header.parent), (2, Some(1)));
        assert_eq!(r.active_version().unwrap(), Some(2));
        r.activate(1).unwrap();
        assert_eq!(r.active_version().unwrap(), Some(1));
        let (info, snap) = r.snapshot(2).unwrap();
        assert_eq!(info.hash, s2.hash);
        assert_eq!(snap.content.capabilities.len(), 2);
        assert_eq!(
            snap.content
                .tools
                .iter()
                .map(|t| format!("{}/{}", t.capability, t.name))
                .collect::<Vec<_>>(),
            ["docs/search", "more/search"]
        );

        r.tamper_for_tests(2, 200).unwrap();
        assert!(matches!(
            r.snapshot(2),
            Err(RegistryError::BadSnapshot { version: 2, .. })
        ));
        assert!(matches!(
            r.activate(2),
            Err(RegistryError::BadSnapshot { .. })
        ));
        assert_eq!(r.active_version().unwrap(), Some(1));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn snapshots_are_archives_read_in_place_and_json_bodies_still_read() {
        let (r, root) = reg("archive", DEFAULT_MAP_BYTES);
        r.put(cap("docs"), Put::Create, "alice", 1).unwrap();
        r.approve("bob", "first", 2, true, &fetched(&r)).unwrap();
        r.put(cap("more"), Put::Create, "alice", 3).unwrap();
        let s2 = r.approve("bob", "second", 4, true, &fetched(&r)).unwrap();
        let (_, owned) = r.snapshot(2).unwrap();
        // Stored as an archive, and what is read in place is what was approved.
        let (tools, note) = r
            .read_snapshot(2, |info, a| {
                assert_eq!(info.hash, s2.hash);
                let names: Vec<String> =
                    a.content.tools.iter().map(|t| t.name.to_string()).collect();
                (names, a.header.note.to_string())
            })
            .unwrap();
        assert_eq!(tools, ["search", "search"]);
        assert_eq!(note, "second");
        assert_eq!(r.snapshot_info(2).unwrap().header, owned.header);
        let schema = &owned.content.tools[0].input_schema;
        assert_eq!(schema["type"], "object", "{schema}");

        // A body written before archives (canonical JSON) reads the same and can be activated.
        r.reseal_for_tests(2, |_| owned.canonical_bytes()).unwrap();
        let (_, again) = r.snapshot(2).unwrap();
        assert_eq!(again, owned);
        r.activate(1).unwrap();
        r.activate(2).unwrap();
        assert_eq!(r.active_version().unwrap(), Some(2));

        // A signed body whose archive does not validate is refused, not trusted on its signature.
        r.reseal_for_tests(2, |_| {
            let mut b = archive::MAGIC.to_vec();
            b.extend_from_slice(&[0xff; 64]);
            b
        })
        .unwrap();
        for e in [
            r.snapshot(2).err(),
            r.snapshot_info(2).err(),
            r.activate(2).err(),
        ] {
            assert!(
                matches!(&e, Some(RegistryError::Corrupt { what, message }) if what == "snapshot 2" && message.contains("does not validate")),
                "{e:?}"
            );
        }
        assert!(r.snapshot(1).is_ok());
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A follower registry trusting `cp`'s key, in its own data dir.
    fn follower(tag: &str, cp: &Registry) -> (Registry, PathBuf) {
        let root = std::env::temp_dir().join(format!("pc-reg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = DataDir::open(&root).unwrap();
        let key = SigningKey::load_or_create(&dir).unwrap();
        let r = Registry::open(
            &root.join("lmdb"),
            DEFAULT_MAP_BYTES,
            key,
            Some(cp.public_key()),
        )
        .unwrap();
        (r, root)
    }

    #[test]
    fn a_follower_takes_only_signed_newer_offers_and_keeps_the_last_good_one() {
        let (cp, cp_root) = reg("cp", DEFAULT_MAP_BYTES);
        let (dp, dp_root) = follower("dp", &cp);
        assert!(dp.is_follower() && !cp.is_follower());
        assert!(cp.offer().unwrap().is_none(), "nothing active yet");
        cp.put(cap("docs"), Put::Create, "a", 1).unwrap();
        cp.approve("a", "one", 2, true, &fetched(&cp)).unwrap();
        let first = cp.offer().unwrap().unwrap();
        assert_eq!((first.activation.seq, first.activation.version), (1, 1));

        let f = dp.follow(&first).unwrap();
        assert!(f.changed && f.info.active);
        assert_eq!(dp.active_version().unwrap(), Some(1));
        assert_eq!(dp.snapshot(1).unwrap().1, cp.snapshot(1).unwrap().1);
        assert!(!dp.follow(&first).unwrap().changed, "same offer again");
        assert!(matches!(
            dp.approve("x", "", 3, true, &[]),
            Err(RegistryError::Follower)
        ));
        assert!(matches!(dp.activate(1), Err(RegistryError::Follower)));

        cp.put(cap("more"), Put::Create, "a", 3).unwrap();
        cp.approve("a", "two", 4, true, &fetched(&cp)).unwrap();
        cp.activate(1).unwrap(); // rollback: activation 3 names version 1
        let second = cp.offer().unwrap().unwrap();
        assert_eq!((second.activation.seq, second.activation.version), (3, 1));

        // Every refusal leaves the last good snapshot active.
        let mut bad_sig = second.clone();
        bad_sig.signature[0] ^= 1;
        let mut tampered = second.clone();
        *tampered.blob.last_mut().unwrap() ^= 0x20;
        let mut mislabeled = second.clone();
        mislabeled.activation.version = 2;
        mislabeled.signature = cp.key.sign_activation(&mislabeled.activation);
        for (offer, code) in [
            (&bad_sig, "activation_signature_invalid"),
            (&tampered, "snapshot_tampered"),
            (&mislabeled, "activation_mismatch"),
        ] {
            assert_eq!(dp.follow(offer).unwrap_err().code(), code);
            assert_eq!(dp.activation_seq().unwrap(), 1);
        }
        // An offer signed by another control plane's key.
        let (other, other_root) = reg("other-cp", DEFAULT_MAP_BYTES);
        other.put(cap("docs"), Put::Create, "a", 1).unwrap();
        other.approve("a", "", 2, true, &fetched(&other)).unwrap();
        assert_eq!(
            dp.follow(&other.offer().unwrap().unwrap())
                .unwrap_err()
                .code(),
            "activation_signature_invalid"
        );

        assert!(dp.follow(&second).unwrap().changed);
        assert_eq!(dp.activation_seq().unwrap(), 3);
        // Replaying the first statement (validly signed, but older) is refused.
        assert!(matches!(
            dp.follow(&first),
            Err(RegistryError::StaleActivation {
                offered: 1,
                current: 3
            })
        ));
        assert_eq!(dp.active_version().unwrap(), Some(1));

        // Reopened with another trust key, the data dir refuses to start.
        drop(dp);
        let dir = DataDir::open(&dp_root).unwrap();
        let key = SigningKey::load_or_create(&dir).unwrap();
        let err = Registry::open(
            &dp_root.join("lmdb"),
            DEFAULT_MAP_BYTES,
            key,
            Some(other.public_key()),
        )
        .unwrap_err();
        assert_eq!(err.code(), "signer_mismatch", "{err}");
        // ...and as a self-hosted control plane too: its snapshots are not its own.
        let key = SigningKey::load_or_create(&dir).unwrap();
        let err = Registry::open(&dp_root.join("lmdb"), DEFAULT_MAP_BYTES, key, None).unwrap_err();
        assert_eq!(err.code(), "signer_mismatch");
        for root in [cp_root, dp_root, other_root] {
            let _ = std::fs::remove_dir_all(&root);
        }
    }

    #[test]
    fn a_full_map_keeps_nothing_of_the_failed_write() {
        let (r, root) = reg("full", 256 << 10);
        let mut n = 0;
        let err = loop {
            let mut c = cap(&format!("c{n}"));
            c.description = "x".repeat(4000);
            match r.put(c, Put::Create, "a", 1) {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
            assert!(n < 10_000, "map never filled");
        };
        assert!(matches!(err, RegistryError::MapFull { .. }), "{err}");
        assert_eq!(r.list::<Capability>().unwrap().len(), n);
        assert!(r.get::<Capability>(&format!("c{n}")).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }
}
