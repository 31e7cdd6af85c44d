//! The sans-IO core of Portcullis: everything that parses, checks or decides about MCP traffic.
//!
//! Functions here take bytes, header values, session state and `now` as arguments and return values;
//! they never touch sockets, files, clocks, threads or randomness, so they are fuzzable and benchable
//! as they are. The appliance performs whatever I/O a result asks for.
#![forbid(unsafe_code)]

pub mod archive;
pub mod audit;
pub mod authn;
pub mod base64;
pub mod chunked;
pub mod control;
pub mod credential;
pub mod frame;
pub mod govern;
pub mod jsonrpc;
pub mod listen;
pub mod mcp;
pub mod names;
pub mod openapi;
pub mod params;
pub mod query;
pub mod ratelimit;
pub mod reason;
pub mod replay;
pub mod revision;
pub mod session;
pub mod sse;
pub mod transport;

pub use reason::{Blame, DenyReason};
pub use revision::Revision;
