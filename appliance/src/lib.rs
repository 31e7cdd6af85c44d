//! The Portcullis appliance: runtime, listeners, upstream clients, admin surface and configuration.
//!
//! Protocol and policy decisions live in `portcullis-pipeline`; bytes on disk in `portcullis-storage`. This
//! crate does the I/O those decisions ask for and wires the pieces together.
// Denied, not forbidden: steering QUIC datagrams to their core (`h3srv::attach_cid_steering`) needs one
// setsockopt that neither std nor socket2 offers.
#![deny(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod auditcli;
pub mod auditsearch;
pub mod broker;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod follow;
pub mod gateway;
pub mod h2srv;
pub mod h3srv;
pub mod health;
pub mod http;
pub mod https;
pub mod identity;
pub mod log;
pub mod metrics;
pub mod ops;
pub mod persist;
pub mod pinwatch;
pub mod probe;
pub mod runtime;
pub mod served;
pub mod sessions;
pub mod sync;
pub mod syslog;
pub mod tls;
pub mod traffic;
pub mod upstream;

use portcullis_pipeline::{jsonrpc, DenyReason};

/// JSON-RPC error body (no id) for a refusal made before any message was parsed.
pub fn gateway_refusal_body(reason: DenyReason) -> Vec<u8> {
    jsonrpc::encode(&jsonrpc::deny_response(None, reason, &[]))
}
