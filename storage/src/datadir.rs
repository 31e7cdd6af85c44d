//! The data directory: created owner-only (0700), files written atomically and owner-only (0600).
//!
//! A file is written to a temporary name, fsynced, renamed over its final name, and the directory is
//! fsynced, so a crash leaves either the old file or the new one, never a torn one. A data dir that others
//! can read is refused rather than silently tightened: the operator should know someone loosened it.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum StorageError {
    /// An I/O error on a named path.
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The data dir grants access beyond its owner.
    DataDirTooOpen { path: PathBuf, mode: u32 },
    /// A path exists but is not a directory.
    NotADirectory { path: PathBuf },
    /// Another process holds the data dir.
    Locked { path: PathBuf },
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            StorageError::DataDirTooOpen { path, mode } => write!(
                f,
                "{}: mode {mode:o} lets others in; run `chmod 700` on it (the data dir holds keys)",
                path.display()
            ),
            StorageError::NotADirectory { path } => {
                write!(f, "{}: not a directory", path.display())
            }
            StorageError::Locked { path } => write!(
                f,
                "{}: another portcullis process is using this data dir; stop it or pass another --data-dir",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StorageError {}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |error| StorageError::Io {
        path: path.to_owned(),
        error,
    }
}

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Open the data dir, creating it (0700) and its parents if missing.
    pub fn open(root: &Path) -> Result<DataDir, StorageError> {
        match fs::metadata(root) {
            Ok(m) if !m.is_dir() => {
                return Err(StorageError::NotADirectory {
                    path: root.to_owned(),
                })
            }
            Ok(m) => {
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(StorageError::DataDirTooOpen {
                        path: root.to_owned(),
                        mode,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(root)
                    .map_err(io(root))?;
            }
            Err(e) => return Err(io(root)(e)),
        }
        Ok(DataDir {
            root: root.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Read a file of the data dir; `Ok(None)` if it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.file(name);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Take the data dir's exclusive lock for as long as the returned file lives. One process per data
    /// dir: the LMDB map and the audit tails must not have two writers.
    pub fn lock(&self) -> Result<File, StorageError> {
        let path = self.file("lock");
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(fs::TryLockError::WouldBlock) => Err(StorageError::Locked { path }),
            Err(fs::TryLockError::Error(e)) => Err(io(&path)(e)),
        }
    }

    /// Write a file atomically with mode 0600.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        let path = self.file(name);
        let tmp = self.file(&format!(".{name}.tmp"));
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(&tmp))?;
            f.write_all(bytes).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.root))?;
        Ok(())
    }

    /// Read the named files, or create all of them with `make` if any is missing. Returns the contents and
    /// whether they were created now. Used for generated key pairs, which must be written as a set.
    pub fn read_or_create<const N: usize>(
        &self,
        names: [&str; N],
        make: impl FnOnce() -> [Vec<u8>; N],
    ) -> Result<([Vec<u8>; N], bool), StorageError> {
        let mut found: Vec<Vec<u8>> = Vec::with_capacity(N);
        for n in names {
            match self.read(n)? {
                Some(b) => found.push(b),
                None => break,
            }
        }
        if let Ok(all) = <[Vec<u8>; N]>::try_from(found) {
            return Ok((all, false));
        }
        let made = make();
        for (n, b) in names.iter().zip(made.iter()) {
            self.write_atomic(n, b)?;
        }
        Ok((made, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("portcullis-storage-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn creates_owner_only_and_writes_atomically() {
        let root = tmp("create").join("nested");
        let d = DataDir::open(&root).unwrap();
        assert_eq!(
            fs::metadata(&root).unwrap().permissions().mode() & 0o777,
            0o700
        );
        d.write_atomic("a", b"one").unwrap();
        d.write_atomic("a", b"two").unwrap();
        assert_eq!(d.read("a").unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(
            fs::metadata(d.file("a")).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(d.read("missing").unwrap(), None);
        fs::remove_dir_all(root.parent().unwrap()).unwrap();
    }

    #[test]
    fn refuses_an_open_data_dir() {
        let root = tmp("open");
        fs::create_dir_all(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            DataDir::open(&root),
            Err(StorageError::DataDirTooOpen { mode: 0o755, .. })
        ));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn read_or_create_makes_the_set_once() {
        let root = tmp("pair");
        let d = DataDir::open(&root).unwrap();
        let (a, created) = d
            .read_or_create(["c", "k"], || [b"c1".to_vec(), b"k1".to_vec()])
            .unwrap();
        assert!(created);
        let (b, created) = d
            .read_or_create(["c", "k"], || [b"c2".to_vec(), b"k2".to_vec()])
            .unwrap();
        assert!(!created);
        assert_eq!(a, b);
        fs::remove_dir_all(&root).unwrap();
    }
}
