//! Chunked decoder: never panics, never consumes more than it is given, and agrees with itself when the
//! input is fed in two pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_pipeline::chunked::ChunkedDecoder;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize % data.len();
    let body = &data[1..];
    let mut out_whole = Vec::new();
    let mut d = ChunkedDecoder::default();
    let whole = d.decode(body, &mut out_whole);
    if let Ok(n) = whole {
        assert!(n <= body.len());
    }
    let mut out_parts = Vec::new();
    let mut d2 = ChunkedDecoder::default();
    let (x, y) = body.split_at(split.min(body.len()));
    if let (Ok(n1), Ok(whole_n)) = (d2.decode(x, &mut out_parts), whole) {
        if n1 == x.len() && !d2.is_done() {
            if let Ok(n2) = d2.decode(y, &mut out_parts) {
                assert_eq!(n1 + n2, whole_n);
                assert_eq!(out_whole, out_parts);
            }
        }
    }
});
