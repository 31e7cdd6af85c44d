//! Replay buffers for 2025-11-25 resumability: every event a session's streams carry gets an id unique
//! within the session, and the last events are kept so a client that lost its connection can come back
//! with `Last-Event-ID` (a GET) and get what it missed on that stream, and no other. The GET stream's
//! ids are numbers (`Replay`); a POST's response stream's are `p<stream>.<n>` (`PostStreams`), and such a
//! stream goes on filling its buffer after its agent dropped, until the response arrives, so a resumed
//! stream ends with it. Bounded by count and bytes; a client asking for more than a buffer still holds
//! is told so, and re-syncs.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::session::SessionId;

/// Events kept per session, at most.
pub const EVENTS_MAX: usize = 256;
/// Bytes kept per session, at most.
pub const BYTES_MAX: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct Replay {
    /// The id the next event gets (ids start at 1).
    next: u64,
    events: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
}

/// Why a resumption cannot replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// The events after that id were dropped from the buffer already.
    Evicted,
    /// No event with that id was ever sent on this session.
    Unknown,
}

impl Replay {
    /// Keep `data` (one JSON-RPC message) and return its event id.
    pub fn push(&mut self, data: Vec<u8>) -> u64 {
        if self.next == 0 {
            self.next = 1;
        }
        let id = self.next;
        self.next += 1;
        self.bytes += data.len();
        self.events.push_back((id, data));
        while self.events.len() > EVENTS_MAX || (self.bytes > BYTES_MAX && self.events.len() > 1) {
            if let Some((_, d)) = self.events.pop_front() {
                self.bytes -= d.len();
            }
        }
        id
    }

    /// The events after `last`, oldest first.
    pub fn after(&self, last: u64) -> Result<Vec<(u64, Vec<u8>)>, Gap> {
        let sent = self.next.saturating_sub(1);
        if last > sent {
            return Err(Gap::Unknown);
        }
        let oldest = self.events.front().map_or(self.next.max(1), |(id, _)| *id);
        if last + 1 < oldest {
            return Err(Gap::Evicted);
        }
        Ok(self
            .events
            .iter()
            .filter(|(id, _)| *id > last)
            .cloned()
            .collect())
    }
}

/// POST response streams kept, at most (across sessions).
pub const POST_STREAMS_MAX: usize = 4096;
/// How long a finished POST stream stays resumable.
pub const POST_LINGER: Duration = Duration::from_secs(60);

/// The event id of event `n` of POST stream `stream`.
pub fn post_event_id(stream: u32, n: u64) -> String {
    format!("p{stream}.{n}")
}

/// `p<stream>.<n>` back to its parts.
pub fn parse_post_event_id(id: &str) -> Option<(u32, u64)> {
    let (s, n) = id.trim().strip_prefix('p')?.split_once('.')?;
    Some((s.parse().ok()?, n.parse().ok()?))
}

/// A POST stream's events after a `Last-Event-ID`, and whether the stream has finished.
pub type Resumed = (Vec<(u64, Vec<u8>)>, bool);

#[derive(Debug)]
struct PostStream {
    replay: Replay,
    finished: Option<Instant>,
}

/// The response streams of sessions' POSTs, by session and stream number.
#[derive(Debug, Default)]
pub struct PostStreams {
    next: u32,
    streams: HashMap<(SessionId, u32), PostStream>,
}

impl PostStreams {
    /// A new stream of session `sid`; its number.
    pub fn open(&mut self, sid: SessionId, now: Instant) -> u32 {
        if self.streams.len() >= POST_STREAMS_MAX {
            self.streams.retain(|_, s| {
                s.finished
                    .is_none_or(|t| now.saturating_duration_since(t) < POST_LINGER)
            });
        }
        if self.streams.len() >= POST_STREAMS_MAX {
            // Still full of live streams: the oldest loses its resumability.
            if let Some(k) = self.streams.keys().min_by_key(|(_, n)| *n).copied() {
                self.streams.remove(&k);
            }
        }
        self.next = self.next.wrapping_add(1);
        let n = self.next;
        self.streams.insert(
            (sid, n),
            PostStream {
                replay: Replay::default(),
                finished: None,
            },
        );
        n
    }

    /// Keep one event of the stream; its number within the stream (`None`: the stream was dropped).
    pub fn push(&mut self, sid: SessionId, stream: u32, data: Vec<u8>) -> Option<u64> {
        Some(self.streams.get_mut(&(sid, stream))?.replay.push(data))
    }

    /// The stream sent its last event.
    pub fn finish(&mut self, sid: SessionId, stream: u32, now: Instant) {
        if let Some(s) = self.streams.get_mut(&(sid, stream)) {
            s.finished = Some(now);
        }
    }

    /// The events of session `sid`'s stream after `last`, and whether the stream has finished; `Err`
    /// when the stream is unknown (never this session's, or dropped) or the events were evicted.
    pub fn after(&self, sid: SessionId, stream: u32, last: u64) -> Result<Resumed, Gap> {
        let s = self.streams.get(&(sid, stream)).ok_or(Gap::Unknown)?;
        Ok((s.replay.after(last)?, s.finished.is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(n: u8) -> SessionId {
        SessionId {
            node: 0,
            core: 0,
            random: [n; 16],
        }
    }

    #[test]
    fn a_post_stream_is_resumable_by_its_session_only_and_says_when_it_finished() {
        let mut p = PostStreams::default();
        let t0 = Instant::now();
        let s = p.open(sid(1), t0);
        assert_eq!(parse_post_event_id(&post_event_id(s, 7)), Some((s, 7)));
        assert_eq!(parse_post_event_id("12"), None);
        assert_eq!(p.push(sid(1), s, b"a".to_vec()), Some(1));
        assert_eq!(p.push(sid(1), s, b"b".to_vec()), Some(2));
        assert_eq!(p.after(sid(1), s, 1), Ok((vec![(2, b"b".to_vec())], false)));
        assert_eq!(
            p.after(sid(2), s, 1),
            Err(Gap::Unknown),
            "another session's stream"
        );
        p.finish(sid(1), s, t0);
        assert_eq!(p.after(sid(1), s, 2), Ok((vec![], true)));
        assert_eq!(p.after(sid(1), s, 3), Err(Gap::Unknown));
        // Full: finished streams past their linger go first, then the oldest live ones.
        for _ in 1..POST_STREAMS_MAX {
            p.open(sid(3), t0);
        }
        let late = t0 + POST_LINGER;
        p.open(sid(3), late);
        assert!(p.after(sid(1), s, 0).is_err());
        assert_eq!(p.streams.len(), POST_STREAMS_MAX);
    }

    #[test]
    fn replays_what_followed_and_says_when_it_cannot() {
        let mut r = Replay::default();
        assert_eq!(r.after(0), Ok(vec![]));
        assert_eq!(r.after(1), Err(Gap::Unknown));
        for i in 0..3 {
            assert_eq!(r.push(vec![i]), u64::from(i) + 1);
        }
        assert_eq!(r.after(1), Ok(vec![(2, vec![1]), (3, vec![2])]));
        assert_eq!(r.after(3), Ok(vec![]));
        assert_eq!(r.after(4), Err(Gap::Unknown));
        for i in 0..EVENTS_MAX {
            r.push(vec![i as u8]);
        }
        assert_eq!(r.after(1), Err(Gap::Evicted));
        assert!(r.after(r.next - 2).is_ok());
    }
}
