//! A fast MCP upstream for the whole-path benchmark: answers `server/discover`, `tools/list` and `tools/call`
//! (echoing the arguments' size) in the 2026-07-28 revision, one thread per connection, keep-alive.
//! The official SDK servers would be the bottleneck; this one is not, so the benchmark measures the path.
//! It is also a REST API for converted tools: `POST /echo` (any other path than `/mcp`) answers
//! `{"result": "received N bytes of arguments"}` for a JSON body of N bytes (`bench/converted`).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::net::TcpListener;

use portcullis_bench::{write_response, Reader};
use serde_json::{json, Value};

fn answer(req: &Value) -> Value {
    let id = req["id"].clone();
    let method = req["method"].as_str().unwrap_or("");
    let meta = json!({"io.modelcontextprotocol/serverInfo": {"name": "fast", "version": "0"}});
    let result = match method {
        "server/discover" => json!({
            "resultType": "complete", "supportedVersions": ["2026-07-28"],
            "capabilities": {"tools": {}}, "ttlMs": 60000, "cacheScope": "public", "_meta": meta
        }),
        "tools/list" => json!({
            "resultType": "complete", "ttlMs": 60000, "cacheScope": "public",
            "tools": [{"name": "echo", "description": "Echo the arguments' size", "inputSchema": {"type": "object"}}]
        }),
        "tools/call" => {
            let n = req["params"]["arguments"].to_string().len();
            json!({"resultType": "complete", "content": [{"type": "text", "text": format!("received {n} bytes of arguments")}], "isError": false})
        }
        _ => {
            return json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "Method not found"}})
        }
    };
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    println!("READY {}", l.local_addr().unwrap().port());
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        let _ = s.set_nodelay(true);
        std::thread::spawn(move || {
            let mut r = Reader::default();
            while let Ok(Some(req)) = r.read(&mut s, true) {
                if req.path != "/mcp" {
                    let n = req.body.len();
                    let body =
                        json!({"result": format!("received {n} bytes of arguments")}).to_string();
                    if write_response(
                        &mut s,
                        200,
                        &[("content-type", "application/json")],
                        body.as_bytes(),
                    )
                    .is_err()
                    {
                        return;
                    }
                    continue;
                }
                let Ok(v) = serde_json::from_slice::<Value>(&req.body) else {
                    let _ = write_response(&mut s, 400, &[], b"bad json");
                    return;
                };
                if v.get("id").is_none() {
                    if write_response(&mut s, 202, &[], b"").is_err() {
                        return;
                    }
                    continue;
                }
                let body = answer(&v).to_string();
                if write_response(
                    &mut s,
                    200,
                    &[("content-type", "application/json")],
                    body.as_bytes(),
                )
                .is_err()
                {
                    return;
                }
            }
        });
    }
}
