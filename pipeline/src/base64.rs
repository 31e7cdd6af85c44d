//! Base64 for the places the wire carries it: decoding JWS parts (unpadded base64url, RFC 7515 §2, one
//! encoding per value) and the `=?base64?…?=` header sentinel (standard alphabet, padding allowed);
//! encoding binary tool results (MCP `blob`, standard alphabet, padded).

#[derive(Clone, Copy)]
enum Alphabet {
    Standard,
    Url,
}

fn value(alphabet: Alphabet, c: u8) -> Option<u32> {
    Some(match (c, alphabet) {
        (b'A'..=b'Z', _) => c - b'A',
        (b'a'..=b'z', _) => c - b'a' + 26,
        (b'0'..=b'9', _) => c - b'0' + 52,
        (b'+', Alphabet::Standard) | (b'-', Alphabet::Url) => 62,
        (b'/', Alphabet::Standard) | (b'_', Alphabet::Url) => 63,
        _ => return None,
    } as u32)
}

/// Decode `s` (no padding left in it); `canonical` refuses set bits below the last whole byte.
fn decode(s: &[u8], alphabet: Alphabet, canonical: bool) -> Option<Vec<u8>> {
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(alphabet, *c)? << (18 - 6 * i);
        }
        let produced = chunk.len() * 6 / 8;
        let used_bits = produced * 8;
        if canonical && used_bits < 24 && acc & ((1u32 << (24 - used_bits)) - 1) != 0 {
            return None;
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..=produced]);
    }
    Some(out)
}

/// Strict unpadded base64url: other alphabets, padding and stray bits are refused.
pub fn url_strict(s: &str) -> Option<Vec<u8>> {
    decode(s.as_bytes(), Alphabet::Url, true)
}

/// Standard base64, trailing padding optional.
pub fn standard(s: &str) -> Option<Vec<u8>> {
    decode(
        s.trim_end_matches('=').as_bytes(),
        Alphabet::Standard,
        false,
    )
}

/// Standard base64 with padding.
pub fn encode_standard(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut acc = 0u32;
        for (i, b) in chunk.iter().enumerate() {
            acc |= u32::from(*b) << (16 - 8 * i);
        }
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((acc >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn encoding_round_trips_through_the_decoder() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
            let e = super::encode_standard(&bytes);
            assert_eq!(e.len() % 4, 0);
            assert_eq!(super::standard(&e).unwrap(), bytes, "{e}");
        }
        assert_eq!(super::encode_standard(b"Man"), "TWFu");
        assert_eq!(super::encode_standard(b"Ma"), "TWE=");
        assert_eq!(super::encode_standard(b"M"), "TQ==");
    }
}
