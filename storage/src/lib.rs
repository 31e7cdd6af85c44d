//! Everything Portcullis keeps on disk: the data directory and the TLS material generated into it, the
//! LMDB registry with its signed snapshots, and (later) audit segments. One crate owns every byte on disk
//! and the rules for writing it safely.
// Denied, not forbidden: opening the LMDB memory map is the one unsafe call, allowed where it is made.
#![deny(unsafe_code)]

pub mod audit;
pub mod datadir;
pub mod registry;
pub mod secrets;
pub mod sessions;
pub mod signing;

pub use datadir::{DataDir, StorageError};
pub use registry::{FetchedTools, Registry, RegistryError};
pub use signing::SigningKey;
