//! Incremental decoder for HTTP/1.1 chunked transfer coding (RFC 9112 §7.1).
//!
//! Used for request bodies from agents and response bodies from upstreams. Chunk extensions and trailers
//! are read and dropped. Chunk-size lines are bounded so a peer cannot make us buffer an endless line.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// A chunk-size line that is not hex, too long, or a missing CRLF after chunk data.
    Malformed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataCrlf,
    Trailer,
    Done,
}

/// Longest chunk-size line (size, extensions) we accept.
const SIZE_LINE_BYTES_MAX: usize = 4096;

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    line: Vec<u8>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size,
            line: Vec::new(),
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode as much of `input` as possible, appending payload bytes to `out`. Returns the number of input
    /// bytes consumed; bytes after the final chunk and trailers are left unconsumed (they belong to the next
    /// message on the connection).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => break,
                State::Data(left) => {
                    let n = (left as usize).min(input.len() - i);
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataCrlf
                    } else {
                        State::Data(left)
                    };
                }
                State::Size | State::DataCrlf | State::Trailer => {
                    let b = input[i];
                    i += 1;
                    if b != b'\n' {
                        if self.line.len() >= SIZE_LINE_BYTES_MAX {
                            return Err(ChunkError::Malformed);
                        }
                        self.line.push(b);
                        continue;
                    }
                    let mut line = std::mem::take(&mut self.line);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    self.state = match self.state {
                        State::DataCrlf if line.is_empty() => State::Size,
                        State::DataCrlf => return Err(ChunkError::Malformed),
                        State::Trailer if line.is_empty() => State::Done,
                        State::Trailer => State::Trailer,
                        _ => {
                            let size = line
                                .split(|&c| c == b';')
                                .next()
                                .unwrap_or(&[])
                                .trim_ascii();
                            if size.is_empty() || size.len() > 15 {
                                return Err(ChunkError::Malformed);
                            }
                            let s = std::str::from_utf8(size).map_err(|_| ChunkError::Malformed)?;
                            match u64::from_str_radix(s, 16).map_err(|_| ChunkError::Malformed)? {
                                0 => State::Trailer,
                                n => State::Data(n),
                            }
                        }
                    };
                    self.line = line;
                    self.line.clear();
                }
            }
        }
        Ok(i)
    }
}

/// Frame `data` as one chunk.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_across_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for split in 0..wire.len() {
            let mut d = ChunkedDecoder::default();
            let mut out = Vec::new();
            let (a, b) = wire.split_at(split);
            let n1 = d.decode(a, &mut out).unwrap();
            assert_eq!(n1, a.len().min(wire.len() - 4));
            let n2 = d.decode(b, &mut out).unwrap();
            assert!(d.is_done());
            assert_eq!(out, b"hello, world");
            assert_eq!(&wire[n1 + n2..], b"NEXT", "split {split}");
        }
    }

    #[test]
    fn round_trip() {
        let mut wire = Vec::new();
        encode_chunk(b"abc", &mut wire);
        encode_chunk(b"", &mut wire);
        encode_chunk(&[7u8; 300], &mut wire);
        wire.extend_from_slice(LAST_CHUNK);
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        assert_eq!(d.decode(&wire, &mut out), Ok(wire.len()));
        assert!(d.is_done());
        assert_eq!(out.len(), 303);
    }

    #[test]
    fn malformed() {
        let mut out = Vec::new();
        assert_eq!(
            ChunkedDecoder::default().decode(b"zz\r\n", &mut out),
            Err(ChunkError::Malformed)
        );
        assert_eq!(
            ChunkedDecoder::default().decode(b"1\r\nab\r\n", &mut out),
            Err(ChunkError::Malformed)
        );
        assert_eq!(
            ChunkedDecoder::default().decode(b"ffffffffffffffff\r\n", &mut out),
            Err(ChunkError::Malformed)
        );
        assert_eq!(
            ChunkedDecoder::default().decode(&[b'1'; 5000], &mut out),
            Err(ChunkError::Malformed)
        );
    }
}
