//! JSON-RPC parser: never panics on any bytes, and whatever it accepts survives encode → parse unchanged.
//! The era classifier and router run on every accepted message too (they must not panic either).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_pipeline::jsonrpc::{self, Message, ParseLimits};
use portcullis_pipeline::{mcp, transport};

fuzz_target!(|data: &[u8]| {
    let limits = ParseLimits { json_depth_max: 32 };
    let mut body = data.to_vec();
    let Ok(msg) = jsonrpc::parse(&mut body, &limits) else { return };
    let mut again = jsonrpc::encode(&msg);
    let back = jsonrpc::parse(&mut again, &limits).expect("an encoded message parses");
    assert_eq!(msg, back);
    let headers = transport::McpHeaders { protocol_version: Some("2026-07-28"), method: msg.method(), ..Default::default() };
    let _ = transport::classify_post(&headers, &msg);
    if let Message::Request(req) = &msg {
        if let Ok(route) = mcp::route(req, &mcp::Naming::Prefixed) {
            let _ = mcp::rewrite_for_upstream(req.clone(), &route);
        }
    }
});
