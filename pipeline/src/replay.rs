//! The replay buffer of a session's GET stream: every event sent on it gets an id (unique within the
//! session), and the last events are kept so a client that lost its connection can come back with
//! `Last-Event-ID` and get what it missed (2025-11-25 resumability). Bounded by count and bytes; a
//! client asking for more than the buffer still holds is told so, and re-syncs.

use std::collections::VecDeque;

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

#[cfg(test)]
mod tests {
    use super::*;

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
