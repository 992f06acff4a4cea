//! Parked stream actors a connection keeps to serve its next streams (a pure type).
//!
//! A stream actor whose stream ended cleanly parks instead of stopping: the connection keeps it
//! here and hands it the next stream it opens, so an actor's spawn and teardown are paid once
//! for many streams, one stream at a time. An actor that failed never comes back (it is dead),
//! and one that had children (a datagram flow) stops instead of parking.
//!
//! The policy:
//! - at most `max` parked actors; when full, the one parked longest ago stops;
//! - requests come in bursts (a client's whole window in one flight, then nothing for a round
//!   trip), so the pool is not sized by the streams open at one instant but by use over time:
//!   every [`TRIM_INTERVAL`] it keeps at most as many as streams took from it in the interval
//!   before, and never fewer than [`SPARE`]. A busy connection keeps its actors; one that went
//!   quiet is down to [`SPARE`] within two intervals (an idle actor costs about 8 KB).

use std::collections::VecDeque;
use std::time::Duration;

/// Parked actors a quiet connection keeps: enough for a client that sends one request at a
/// time, or a small burst, without a spawn.
pub(crate) const SPARE: usize = 2;

/// How often a connection with more than [`SPARE`] parked actors trims its pool. One second:
/// long against the gaps between bursts of one client (round trips), short against how long
/// an idle connection lives.
pub(crate) const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// A connection's parked stream actors: the most recently parked is taken first (its memory is
/// the most likely to be in cache), the one parked longest ago goes first.
#[derive(Debug)]
pub(crate) struct StreamPool<T> {
    idle: VecDeque<T>,
    max: usize,
    /// Actors taken since the last trim.
    taken: usize,
}

impl<T> StreamPool<T> {
    /// A pool that never holds more than `max` actors (0: no reuse).
    pub(crate) fn new(max: usize) -> Self {
        StreamPool {
            idle: VecDeque::new(),
            max,
            taken: 0,
        }
    }

    /// The most recently parked actor, if any.
    pub(crate) fn take(&mut self) -> Option<T> {
        let a = self.idle.pop_back();
        if a.is_some() {
            self.taken += 1;
        }
        a
    }

    /// Keeps `actor` for a later stream. Returns the actor that must stop when the pool is
    /// full: the one parked longest ago (`actor` itself when `max` is 0).
    #[must_use = "the actor returned must be stopped"]
    pub(crate) fn put(&mut self, actor: T) -> Option<T> {
        if self.max == 0 {
            return Some(actor);
        }
        self.idle.push_back(actor);
        if self.idle.len() > self.max {
            self.idle.pop_front()
        } else {
            None
        }
    }

    /// Whether the pool holds more than a quiet connection keeps (a trim is due in
    /// [`TRIM_INTERVAL`]).
    pub(crate) fn needs_trim(&self) -> bool {
        self.idle.len() > SPARE
    }

    /// A trim: keeps at most as many as were taken since the last trim, and at least
    /// [`SPARE`]; returns the ones that must stop (those parked longest ago).
    #[must_use = "the actors returned must be stopped"]
    pub(crate) fn trim(&mut self) -> Vec<T> {
        let keep = self.taken.max(SPARE);
        self.taken = 0;
        let excess = self.idle.len().saturating_sub(keep);
        self.idle.drain(..excess).collect()
    }

    /// Everything parked (the connection is closing, or stops taking streams).
    pub(crate) fn drain(&mut self) -> Vec<T> {
        self.taken = 0;
        self.idle.drain(..).collect()
    }

    /// Parked actors now.
    pub(crate) fn len(&self) -> usize {
        self.idle.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_max_keeps_nothing() {
        let mut p = StreamPool::new(0);
        assert_eq!(p.put(1), Some(1));
        assert_eq!(p.len(), 0);
        assert_eq!(p.take(), None);
        assert!(!p.needs_trim());
        assert!(p.trim().is_empty());
    }

    #[test]
    fn an_empty_pool_gives_nothing() {
        let mut p: StreamPool<u32> = StreamPool::new(8);
        assert_eq!(p.take(), None);
        assert!(p.trim().is_empty());
        assert!(p.drain().is_empty());
    }

    #[test]
    fn one_actor_comes_back() {
        let mut p = StreamPool::new(8);
        assert_eq!(p.put(7), None);
        assert_eq!(p.take(), Some(7));
        assert_eq!(p.take(), None);
    }

    #[test]
    fn the_last_parked_is_the_first_out() {
        let mut p = StreamPool::new(8);
        for a in 1..=3 {
            assert_eq!(p.put(a), None);
        }
        assert_eq!(p.take(), Some(3));
        assert_eq!(p.take(), Some(2));
        assert_eq!(p.take(), Some(1));
    }

    #[test]
    fn when_full_the_oldest_goes() {
        let mut p = StreamPool::new(3);
        for a in 0..3 {
            assert_eq!(p.put(a), None);
        }
        assert_eq!(p.put(3), Some(0));
        assert_eq!(p.len(), 3);
        assert_eq!(p.drain(), vec![1, 2, 3]);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn a_quiet_connection_is_trimmed_to_the_spare() {
        let mut p = StreamPool::new(64);
        for a in 0..10 {
            assert_eq!(p.put(a), None);
        }
        assert!(p.needs_trim());
        // Nothing was taken in the interval: the oldest eight go.
        assert_eq!(p.trim(), (0..8).collect::<Vec<_>>());
        assert_eq!(p.len(), SPARE);
        assert!(!p.needs_trim());
        assert_eq!(p.take(), Some(9));
    }

    #[test]
    fn a_busy_connection_keeps_what_it_used() {
        let mut p = StreamPool::new(64);
        // A burst of 50 streams, twice: the second takes the first's actors.
        for a in 0..50 {
            assert_eq!(p.put(a), None);
        }
        for _ in 0..50 {
            assert!(p.take().is_some());
        }
        for a in 0..50 {
            assert_eq!(p.put(a), None);
        }
        assert!(p.trim().is_empty(), "50 were taken: 50 stay");
        assert_eq!(p.len(), 50);
        // The load ends: the next trim leaves the spare only.
        assert_eq!(p.trim().len(), 50 - SPARE);
        assert_eq!(p.len(), SPARE);
    }

    #[test]
    fn a_trim_keeps_as_many_as_were_taken() {
        let mut p = StreamPool::new(64);
        for a in 0..20 {
            assert_eq!(p.put(a), None);
        }
        for _ in 0..5 {
            let a = p.take().unwrap();
            assert_eq!(p.put(a), None);
        }
        assert_eq!(p.trim().len(), 15);
        assert_eq!(p.len(), 5);
    }
}
