//! Everything Portcullis keeps on disk. For now: the data directory itself and the TLS material the
//! appliance generates on first start. LMDB (registry, snapshots) and audit segments come later and live
//! here too, so that one crate owns every byte on disk and the rules for writing it safely.
#![forbid(unsafe_code)]

pub mod datadir;

pub use datadir::{DataDir, StorageError};
