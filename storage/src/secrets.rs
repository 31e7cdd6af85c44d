//! The embedded secret store's sealing: each secret is encrypted with ChaCha20-Poly1305 under a key that
//! lives outside the data dir (a file or an environment variable), and bound to its name so a record
//! copied under another name, or written with another key, fails to open instead of decrypting.
//!
//! Sealed form: `PCS1` · key id (first 8 bytes of BLAKE3 of the key) · 96-bit random nonce · ciphertext
//! and tag. The AAD is `portcullis-secret-v1`, NUL, the secret's name.

use std::fmt;
use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use portcullis_pipeline::credential::Secret;

const MAGIC: &[u8; 4] = b"PCS1";
const KEY_ID_LEN: usize = 8;
const AAD_PREFIX: &[u8] = b"portcullis-secret-v1\0";
/// Bytes of a secret's value, at most.
pub const VALUE_BYTES_MAX: usize = 64 << 10;

#[derive(Debug, PartialEq, Eq)]
pub enum SealError {
    /// Sealed under another key than the one configured.
    WrongKey,
    /// Truncated, rewritten, or stored under another name.
    Corrupt,
    /// The value is not UTF-8.
    NotText,
    TooLarge,
    /// The OS random source failed.
    Random,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SealError::WrongKey => "sealed under another key than the one configured",
            SealError::Corrupt => {
                "the sealed record does not open (damaged, or stored under another name)"
            }
            SealError::NotText => "the value is not UTF-8 text",
            SealError::TooLarge => "the value is larger than 64 KiB",
            SealError::Random => "the OS random source failed",
        })
    }
}

/// Why a key cannot be loaded.
#[derive(Debug)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The embedded store's key. Its `Debug` names only its id.
pub struct SealKey {
    key: LessSafeKey,
    id: [u8; KEY_ID_LEN],
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealKey({})", crate::signing::hex(&self.id))
    }
}

impl SealKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> SealKey {
        let id_full = blake3::hash(bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&id_full.as_bytes()[..KEY_ID_LEN]);
        // 32 bytes is exactly ChaCha20-Poly1305's key length, so this cannot fail.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).unwrap_or_else(|_| unreachable!());
        SealKey {
            key: LessSafeKey::new(unbound),
            id,
        }
    }

    /// A key written as 64 hex digits (surrounding whitespace ignored), as `portcullis secret keygen`
    /// writes it.
    pub fn from_hex(text: &str) -> Result<SealKey, KeyError> {
        let k = Zeroizing::new(
            crate::signing::parse_hex::<32>(text.trim())
                .ok_or_else(|| KeyError("a secrets key is 64 hex digits (32 bytes)".into()))?,
        );
        Ok(SealKey::from_bytes(&k))
    }

    /// Read a key file, refusing one other users may read.
    pub fn from_file(path: &Path) -> Result<SealKey, KeyError> {
        let what = |e: &dyn fmt::Display| KeyError(format!("secrets key {}: {e}", path.display()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| what(&e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(what(&format_args!(
                    "mode {:o} lets others read it; chmod 600",
                    mode & 0o777
                )));
            }
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| what(&e))?);
        SealKey::from_hex(&text).map_err(|e| what(&e))
    }

    /// A fresh random key as 64 hex digits.
    pub fn generate_hex() -> Result<Zeroizing<String>, SealError> {
        let mut k = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut k[..])
            .map_err(|_| SealError::Random)?;
        Ok(Zeroizing::new(crate::signing::hex(&k[..])))
    }

    /// The key's id as hex (safe to show: it identifies, it does not reveal).
    pub fn id_hex(&self) -> String {
        crate::signing::hex(&self.id)
    }

    pub fn seal(&self, name: &str, value: &str) -> Result<Vec<u8>, SealError> {
        if value.len() > VALUE_BYTES_MAX {
            return Err(SealError::TooLarge);
        }
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(4 + KEY_ID_LEN + NONCE_LEN + value.len() + 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        let mut body = Zeroizing::new(value.as_bytes().to_vec());
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(name)),
                &mut *body,
            )
            .map_err(|_| SealError::Corrupt)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Secret, SealError> {
        let head = 4 + KEY_ID_LEN + NONCE_LEN;
        if sealed.len() < head + 16 || &sealed[..4] != MAGIC {
            return Err(SealError::Corrupt);
        }
        if sealed[4..4 + KEY_ID_LEN] != self.id {
            return Err(SealError::WrongKey);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[4 + KEY_ID_LEN..head]);
        let mut body = Zeroizing::new(sealed[head..].to_vec());
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(name)),
                &mut body[..],
            )
            .map_err(|_| SealError::Corrupt)?;
        let text = std::str::from_utf8(plain).map_err(|_| SealError::NotText)?;
        Ok(Secret::new(text.to_owned()))
    }
}

fn aad(name: &str) -> Vec<u8> {
    let mut a = AAD_PREFIX.to_vec();
    a.extend_from_slice(name.as_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_under_their_key_and_name() {
        let k = SealKey::from_bytes(&[7; 32]);
        let sealed = k.seal("github#token", "ghp_canary").expect("seals");
        assert!(!sealed
            .windows(b"ghp_canary".len())
            .any(|w| w == b"ghp_canary"));
        assert_eq!(
            k.open("github#token", &sealed).expect("opens").expose(),
            "ghp_canary"
        );
        assert_eq!(
            k.open("other#token", &sealed).expect_err("other name"),
            SealError::Corrupt
        );
        let other = SealKey::from_bytes(&[8; 32]);
        assert_eq!(
            other.open("github#token", &sealed).expect_err("other key"),
            SealError::WrongKey
        );
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            k.open("github#token", &flipped).expect_err("tampered"),
            SealError::Corrupt
        );
        assert_ne!(
            k.seal("github#token", "ghp_canary").expect("seals"),
            sealed,
            "fresh nonce"
        );
    }

    #[test]
    fn keys_load_from_hex_and_refuse_loose_files() {
        let hex = SealKey::generate_hex().expect("random");
        let k = SealKey::from_hex(&hex).expect("hex");
        assert_eq!(format!("{k:?}"), format!("SealKey({})", k.id_hex()));
        assert!(SealKey::from_hex("abcd").is_err());
        let dir = std::env::temp_dir().join(format!("pc-sealkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("key");
        std::fs::write(&f, format!("{}\n", &*hex)).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(SealKey::from_file(&f).is_err(), "world-readable key");
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        assert_eq!(SealKey::from_file(&f).expect("loads").id_hex(), k.id_hex());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
