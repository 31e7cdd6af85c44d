//! Incremental Server-Sent Events parser and encoder (the `text/event-stream` format of the HTML spec).
//!
//! Upstream SSE streams arrive in arbitrary chunks; `SseParser::push` buffers at most one event and
//! yields complete events, so the gateway relays event by event without holding the whole stream.
//! The bound on a single event is the caller's (`event_bytes_max`): a longer event is an error.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseError {
    /// One event grew past `event_bytes_max` before its blank line.
    EventTooLarge,
    /// Field bytes are not UTF-8.
    InvalidUtf8,
}

#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    current: Event,
    has_data: bool,
    pending_bytes: usize,
    event_bytes_max: usize,
    /// The previous chunk ended in CR: a LF at the start of the next one belongs to that line ending.
    after_cr: bool,
}

impl SseParser {
    pub fn new(event_bytes_max: usize) -> Self {
        SseParser {
            line: Vec::new(),
            current: Event::default(),
            has_data: false,
            pending_bytes: 0,
            event_bytes_max,
            after_cr: false,
        }
    }

    /// Feed bytes; complete events are appended to `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        if std::mem::take(&mut self.after_cr) && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..];
        }
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.grow(bytes.len())?;
                    self.line.extend_from_slice(bytes);
                    return Ok(());
                }
                Some(i) => {
                    self.grow(i)?;
                    self.line.extend_from_slice(&bytes[..i]);
                    // CRLF counts as one line ending; a lone CR or LF also ends a line.
                    let mut skip = i + 1;
                    if bytes[i] == b'\r' {
                        match bytes.get(i + 1) {
                            Some(b'\n') => skip += 1,
                            None => self.after_cr = true,
                            Some(_) => {}
                        }
                    }
                    bytes = &bytes[skip..];
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, out)?;
                    self.line = line;
                    self.line.clear();
                }
            }
        }
        Ok(())
    }

    fn grow(&mut self, n: usize) -> Result<(), SseError> {
        self.pending_bytes += n;
        if self.pending_bytes > self.event_bytes_max {
            return Err(SseError::EventTooLarge);
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        if line.is_empty() {
            if self.has_data || self.current.id.is_some() || self.current.event.is_some() {
                let mut ev = std::mem::take(&mut self.current);
                if ev.data.ends_with('\n') {
                    ev.data.pop();
                }
                out.push(ev);
            }
            self.current = Event::default();
            self.has_data = false;
            self.pending_bytes = 0;
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(()); // comment
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::InvalidUtf8)?;
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.current.data.push_str(value);
                self.current.data.push('\n');
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.current.id = Some(value.to_owned()),
            "event" => self.current.event = Some(value.to_owned()),
            "retry" => self.current.retry_ms = value.parse().ok(),
            _ => {}
        }
        Ok(())
    }
}

/// Encode one event. Data lines are split on newlines so multi-line data survives.
pub fn encode(ev: &Event, out: &mut Vec<u8>) {
    if let Some(id) = &ev.id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    if let Some(e) = &ev.event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(e.as_bytes());
        out.push(b'\n');
    }
    if let Some(r) = ev.retry_ms {
        out.extend_from_slice(format!("retry: {r}\n").as_bytes());
    }
    for line in ev.data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut p = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn events_split_anywhere() {
        let stream =
            b"id: 1\nevent: message\ndata: {\"a\":1}\n\n: comment\r\ndata: x\r\ndata: y\r\n\r\n";
        let whole = parse_all(&[stream]);
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].id.as_deref(), Some("1"));
        assert_eq!(whole[0].data, "{\"a\":1}");
        assert_eq!(whole[1].data, "x\ny");
        for split in 0..stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(parse_all(&[a, b]), whole, "split at {split}");
        }
    }

    #[test]
    fn encode_round_trip() {
        let ev = Event {
            id: Some("7".into()),
            event: Some("message".into()),
            data: "a\nb".into(),
            retry_ms: Some(10),
        };
        let mut buf = Vec::new();
        encode(&ev, &mut buf);
        assert_eq!(parse_all(&[&buf]), vec![ev]);
    }

    #[test]
    fn event_bound_both_sides() {
        let mut p = SseParser::new(10);
        let mut out = Vec::new();
        p.push(b"data: 1234", &mut out).unwrap(); // exactly 10 bytes pending
        p.push(b"\n\n", &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let mut p = SseParser::new(10);
        assert_eq!(
            p.push(b"data: 12345", &mut out),
            Err(SseError::EventTooLarge)
        );
    }
}
