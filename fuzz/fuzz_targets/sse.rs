//! SSE parser: never panics, never yields an event larger than its bound, and splitting the input at any
//! point yields the same events as feeding it whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_pipeline::sse::SseParser;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize % data.len();
    let body = &data[1..];
    let mut whole = Vec::new();
    let a = SseParser::new(4096).push(body, &mut whole);
    let mut parts = Vec::new();
    let mut p = SseParser::new(4096);
    let (x, y) = body.split_at(split.min(body.len()));
    let b = p.push(x, &mut parts).and_then(|_| p.push(y, &mut parts));
    if a.is_ok() && b.is_ok() {
        assert_eq!(whole, parts);
    }
    for ev in whole {
        assert!(ev.data.len() <= 4096);
    }
});
