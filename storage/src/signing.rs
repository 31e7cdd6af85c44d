//! The snapshot signing key and the signed snapshot blob format.
//!
//! The key is an ed25519 key pair generated on first start into the data dir (PKCS#8, 0600). A blob is
//! `MAGIC | BLAKE3(body) | ed25519(DOMAIN | hash) | body`, where body is the snapshot's canonical encoding:
//! a reader checks the hash before it trusts a byte of the body, and the signature before it trusts the
//! hash, so a flipped bit, a truncated blob and a blob from another signer are all refused.

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use crate::datadir::{DataDir, StorageError};

pub const KEY_FILE: &str = "snapshot-signing.pk8";
const MAGIC: &[u8; 8] = b"PCSNAP01";
/// Signatures cover this prefix and the hash, so a snapshot signature cannot be replayed as any other
/// message the same key might sign later.
const DOMAIN: &[u8] = b"portcullis snapshot v1\0";
/// Activation statements (which snapshot is active, in which order) are signed under their own prefix.
const ACTIVATION_DOMAIN: &[u8] = b"portcullis activation v1\0";
/// Domain of a control plane's signed list of agent API keys (hashes only) for its data planes.
const KEYS_DOMAIN: &[u8] = b"portcullis keys v1\0";
const HASH_LEN: usize = 32;
const SIG_LEN: usize = 64;
pub const BLOB_HEADER_LEN: usize = MAGIC.len() + HASH_LEN + SIG_LEN;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobError {
    /// Shorter than the header, or not starting with the magic.
    NotASnapshot,
    /// The body does not hash to the recorded hash: changed or truncated.
    HashMismatch,
    /// The signature does not verify with the trusted key.
    BadSignature,
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlobError::NotASnapshot => "not a snapshot blob (bad magic or truncated header)",
            BlobError::HashMismatch => {
                "content does not match its BLAKE3 hash (altered or truncated)"
            }
            BlobError::BadSignature => "signature does not verify with the trusted public key",
        })
    }
}

impl std::error::Error for BlobError {}

pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private half.
        write!(f, "SigningKey({})", self.public_hex())
    }
}

impl SigningKey {
    /// Load the data dir's key, generating it on first start.
    pub fn load_or_create(dir: &DataDir) -> Result<SigningKey, StorageError> {
        let invalid = |msg: String| StorageError::Io {
            path: dir.file(KEY_FILE),
            error: std::io::Error::new(std::io::ErrorKind::InvalidData, msg),
        };
        let mut gen_err = None;
        let ([pk8], _) =
            dir.read_or_create([KEY_FILE], || {
                match Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()) {
                    Ok(doc) => [doc.as_ref().to_vec()],
                    Err(e) => {
                        gen_err = Some(e.to_string());
                        [Vec::new()]
                    }
                }
            })?;
        if let Some(e) = gen_err {
            return Err(invalid(format!("generating the signing key: {e}")));
        }
        let pair = Ed25519KeyPair::from_pkcs8(&pk8).map_err(|e| {
            invalid(format!(
                "not an ed25519 PKCS#8 key ({e}); restore it from backup"
            ))
        })?;
        Ok(SigningKey { pair })
    }

    pub fn public(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.pair.public_key().as_ref());
        k
    }

    pub fn public_hex(&self) -> String {
        hex(&self.public())
    }

    /// Seal a snapshot body into a blob.
    pub fn seal(&self, body: &[u8]) -> Vec<u8> {
        let hash = blake3::hash(body);
        let sig = self.pair.sign(&signed_message(hash.as_bytes()));
        let mut blob = Vec::with_capacity(BLOB_HEADER_LEN + body.len());
        blob.extend_from_slice(MAGIC);
        blob.extend_from_slice(hash.as_bytes());
        blob.extend_from_slice(sig.as_ref());
        blob.extend_from_slice(body);
        blob
    }
}

/// "Snapshot `version` with `hash` is the active one, as of activation number `seq`": what a control plane
/// signs for the data planes that follow it. `seq` grows with every activation (approvals and rollbacks),
/// so a follower can refuse an older statement replayed to it even though it is validly signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activation {
    pub seq: u64,
    pub version: u64,
    pub hash: [u8; 32],
}

impl Activation {
    fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(ACTIVATION_DOMAIN.len() + 16 + HASH_LEN);
        m.extend_from_slice(ACTIVATION_DOMAIN);
        m.extend_from_slice(&self.seq.to_be_bytes());
        m.extend_from_slice(&self.version.to_be_bytes());
        m.extend_from_slice(&self.hash);
        m
    }

    /// Check `signature` over this statement under `public_key`.
    pub fn verify(&self, signature: &[u8], public_key: &[u8; 32]) -> Result<(), BlobError> {
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&self.message(), signature)
            .map_err(|_| BlobError::BadSignature)
    }
}

fn keys_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(KEYS_DOMAIN.len() + HASH_LEN);
    m.extend_from_slice(KEYS_DOMAIN);
    m.extend_from_slice(blake3::hash(body).as_bytes());
    m
}

/// Check `signature` over a key list body under `public_key`.
pub fn verify_keys(body: &[u8], signature: &[u8], public_key: &[u8; 32]) -> Result<(), BlobError> {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&keys_message(body), signature)
        .map_err(|_| BlobError::BadSignature)
}

impl SigningKey {
    /// Sign a key list body (`Registry::signed_keys`), under a domain of its own so that no key list
    /// can pass for a snapshot or an activation statement.
    pub fn sign_keys(&self, body: &[u8]) -> [u8; SIG_LEN] {
        let mut out = [0u8; SIG_LEN];
        out.copy_from_slice(self.pair.sign(&keys_message(body)).as_ref());
        out
    }

    pub fn sign_activation(&self, a: &Activation) -> [u8; SIG_LEN] {
        let mut out = [0u8; SIG_LEN];
        out.copy_from_slice(self.pair.sign(&a.message()).as_ref());
        out
    }
}

/// Domain of audit checkpoints, so that none can pass for a snapshot, an activation or a key list.
const AUDIT_DOMAIN: &[u8] = b"portcullis-audit-checkpoint-v1\0";

/// "Core `core`'s audit chain reached record `seq` with hash `hash`": what a checkpoint signs.
fn audit_message(core: u16, seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(AUDIT_DOMAIN.len() + 2 + 8 + HASH_LEN);
    m.extend_from_slice(AUDIT_DOMAIN);
    m.extend_from_slice(&core.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

impl SigningKey {
    pub fn sign_audit_checkpoint(&self, core: u16, seq: u64, hash: &[u8; 32]) -> [u8; SIG_LEN] {
        let mut out = [0u8; SIG_LEN];
        out.copy_from_slice(self.pair.sign(&audit_message(core, seq, hash)).as_ref());
        out
    }
}

/// Check an audit checkpoint's signature under `public_key`.
pub fn verify_audit_checkpoint(
    core: u16,
    seq: u64,
    hash: &[u8; 32],
    signature: &[u8],
    public_key: &[u8; 32],
) -> Result<(), BlobError> {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&audit_message(core, seq, hash), signature)
        .map_err(|_| BlobError::BadSignature)
}

fn signed_message(hash: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + hash.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(hash);
    m
}

/// A verified blob: the body (borrowed from the blob, e.g. from the LMDB map) and its hash.
#[derive(Debug, Clone, Copy)]
pub struct Opened<'a> {
    pub hash: [u8; 32],
    pub body: &'a [u8],
}

/// The hash a blob records (unverified: for listing; `open_blob` before trusting the body).
pub fn blob_hash(blob: &[u8]) -> Option<&[u8]> {
    blob.get(MAGIC.len()..MAGIC.len() + HASH_LEN)
}

/// Check a blob's hash and its signature under `public_key`, without copying the body.
pub fn open_blob<'a>(blob: &'a [u8], public_key: &[u8; 32]) -> Result<Opened<'a>, BlobError> {
    if blob.len() < BLOB_HEADER_LEN || &blob[..MAGIC.len()] != MAGIC {
        return Err(BlobError::NotASnapshot);
    }
    let (hash, rest) = blob[MAGIC.len()..].split_at(HASH_LEN);
    let (sig, body) = rest.split_at(SIG_LEN);
    if blake3::hash(body).as_bytes() != hash {
        return Err(BlobError::HashMismatch);
    }
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&signed_message(hash), sig)
        .map_err(|_| BlobError::BadSignature)?;
    let mut h = [0u8; 32];
    h.copy_from_slice(hash);
    Ok(Opened { hash: h, body })
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parse 64 hex digits into a public key.
pub fn parse_public_key(s: &str) -> Option<[u8; 32]> {
    parse_hex(s)
}

/// Parse an even number of hex digits (either case) into bytes.
pub fn unhex_vec(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    b.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Parse exactly `2 * N` hex digits (either case).
pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != 2 * N {
        return None;
    }
    let mut k = [0u8; N];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        k[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_detect_tampering() {
        let root = std::env::temp_dir().join(format!("pc-sign-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = DataDir::open(&root).unwrap();
        let key = SigningKey::load_or_create(&dir).unwrap();
        let again = SigningKey::load_or_create(&dir).unwrap();
        assert_eq!(key.public(), again.public());
        assert_eq!(parse_public_key(&key.public_hex()), Some(key.public()));

        let blob = key.seal(b"{\"v\":1}");
        let opened = open_blob(&blob, &key.public()).unwrap();
        assert_eq!(opened.body, b"{\"v\":1}");

        let mut flipped = blob.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            open_blob(&flipped, &key.public()).unwrap_err(),
            BlobError::HashMismatch
        );
        assert_eq!(
            open_blob(&blob[..blob.len() - 1], &key.public()).unwrap_err(),
            BlobError::HashMismatch
        );
        assert_eq!(
            open_blob(&blob[..10], &key.public()).unwrap_err(),
            BlobError::NotASnapshot
        );
        let other = [7u8; 32];
        assert_eq!(
            open_blob(&blob, &other).unwrap_err(),
            BlobError::BadSignature
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn activation_statements_bind_every_field() {
        let root = std::env::temp_dir().join(format!("pc-act-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let key = SigningKey::load_or_create(&DataDir::open(&root).unwrap()).unwrap();
        let a = Activation {
            seq: 3,
            version: 2,
            hash: [9; 32],
        };
        let sig = key.sign_activation(&a);
        assert_eq!(a.verify(&sig, &key.public()), Ok(()));
        for changed in [
            Activation { seq: 4, ..a },
            Activation { version: 3, ..a },
            Activation { hash: [8; 32], ..a },
        ] {
            assert_eq!(
                changed.verify(&sig, &key.public()),
                Err(BlobError::BadSignature)
            );
        }
        // A snapshot signature is no activation signature, even over the same bytes.
        let blob = key.seal(b"x");
        assert!(a.verify(&blob[40..104], &key.public()).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }
}
