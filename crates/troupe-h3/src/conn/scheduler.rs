//! The RFC 9218 write scheduler: in which order a connection serves the streams that have
//! something to write (bytes quiche has not taken yet, or a request for more credit).
//!
//! quiche orders only the bytes already in its buffers, and what it accepts is bounded by the
//! congestion window; so the connection hands out that room itself, in this order:
//! - most urgent first (urgency 0 before 7);
//! - within one urgency, non-incremental streams one after another in stream ID order (RFC 9218
//!   §10: a non-incremental response is best delivered whole), then incremental ones, which take
//!   turns: a stream that was served moves to the back of its urgency's turn.
//!
//! A pure type (no quiche, no actors), modelled on quinn-proto's pending-streams queue.

use std::collections::{BTreeSet, VecDeque};

use rustc_hash::FxHashMap;

use crate::priority::{Priority, URGENCY_MAX};

/// Streams waiting to write, by urgency.
#[derive(Debug, Default)]
pub(crate) struct WriteScheduler {
    /// Each queued stream's key, for removal and reprioritisation.
    keys: FxHashMap<u64, Priority>,
    levels: [Level; URGENCY_MAX as usize + 1],
}

#[derive(Debug, Default)]
struct Level {
    /// Non-incremental streams, in stream ID order.
    sequential: BTreeSet<u64>,
    /// Incremental streams, in turn order.
    incremental: VecDeque<u64>,
}

impl Level {
    fn remove(&mut self, id: u64, incremental: bool) {
        if incremental {
            if let Some(i) = self.incremental.iter().position(|&s| s == id) {
                self.incremental.remove(i);
            }
        } else {
            self.sequential.remove(&id);
        }
    }
}

fn level_of(p: Priority) -> usize {
    usize::from(p.urgency.min(URGENCY_MAX))
}

impl WriteScheduler {
    /// Queues `id` with its priority; a stream already queued keeps its place unless its
    /// priority changed (then it joins the back of its new urgency's turn).
    pub(crate) fn insert(&mut self, id: u64, key: Priority) {
        match self.keys.insert(id, key) {
            Some(old) if old == key => return,
            Some(old) => self.levels[level_of(old)].remove(id, old.incremental),
            None => {}
        }
        let level = &mut self.levels[level_of(key)];
        if key.incremental {
            level.incremental.push_back(id);
        } else {
            level.sequential.insert(id);
        }
    }

    /// Changes the priority of a queued stream; a stream not queued stays unqueued.
    pub(crate) fn reprioritise(&mut self, id: u64, key: Priority) {
        if self.keys.contains_key(&id) {
            self.insert(id, key);
        }
    }

    /// Takes `id` out of the queue (it has nothing more to write, or it ended).
    pub(crate) fn remove(&mut self, id: u64) {
        if let Some(old) = self.keys.remove(&id) {
            self.levels[level_of(old)].remove(id, old.incremental);
        }
    }

    /// `id` was served this turn and stays queued: an incremental stream goes to the back of
    /// its urgency's turn, so streams of equal urgency share the room.
    pub(crate) fn served(&mut self, id: u64) {
        let Some(key) = self.keys.get(&id).copied() else {
            return;
        };
        if key.incremental {
            let level = &mut self.levels[level_of(key)];
            level.remove(id, true);
            level.incremental.push_back(id);
        }
    }

    /// The queued streams in the order to serve them, written into `out` (cleared first; the
    /// caller keeps the vector so a flush allocates nothing).
    pub(crate) fn order_into(&self, out: &mut Vec<u64>) {
        out.clear();
        for level in &self.levels {
            out.extend(level.sequential.iter().copied());
            out.extend(level.incremental.iter().copied());
        }
    }

    /// Whether `id` is queued.
    #[cfg(test)]
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.keys.contains_key(&id)
    }

    /// Streams queued.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no stream is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Which streams may write or be granted new credit in one pass over the order: once a stream
/// has been granted credit and its bytes are on their way from its actor, the room it will need
/// is not given to less urgent streams (RFC 9218's strict urgency order), nor to later
/// non-incremental streams of its urgency (delivered one after another); incremental streams
/// of one urgency share. Without it, every gap of one actor message between a grant and its
/// bytes let less urgent streams take the room.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    blocker: Option<Priority>,
}

impl Gate {
    /// Whether a stream with `key`, met later in the order, may write or be granted credit.
    pub(crate) fn admits(&self, key: Priority) -> bool {
        match self.blocker {
            None => true,
            Some(b) if b.urgency < key.urgency => false,
            Some(b) => b.incremental && key.incremental,
        }
    }

    /// A stream with `key` waits for its actor's bytes: it holds back what comes after it.
    /// The first (most urgent) blocker decides.
    pub(crate) fn block(&mut self, key: Priority) {
        if self.blocker.is_none() {
            self.blocker = Some(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(u: u8, i: bool) -> Priority {
        Priority::new(u, i)
    }

    fn order(s: &WriteScheduler) -> Vec<u64> {
        let mut v = Vec::new();
        s.order_into(&mut v);
        v
    }

    #[test]
    fn empty_orders_nothing() {
        let mut s = WriteScheduler::default();
        assert!(s.is_empty());
        assert!(order(&s).is_empty());
        s.remove(4);
        s.served(4);
        s.reprioritise(4, p(0, false));
        assert!(s.is_empty() && order(&s).is_empty());
    }

    #[test]
    fn one_stream() {
        let mut s = WriteScheduler::default();
        s.insert(8, p(3, true));
        s.served(8);
        assert_eq!(order(&s), vec![8]);
        s.remove(8);
        assert!(s.is_empty());
    }

    #[test]
    fn most_urgent_first_whatever_the_arrival_order() {
        // Requested least urgent first: 7, 5, 3, 1.
        let mut s = WriteScheduler::default();
        for (id, u) in [(0, 7), (4, 5), (8, 3), (12, 1)] {
            s.insert(id, p(u, false));
        }
        assert_eq!(order(&s), vec![12, 8, 4, 0]);
        // Removing the stream being served keeps the rest in order (the bug this replaces:
        // swap_remove moved the least urgent stream into the drained one's slot).
        s.remove(12);
        assert_eq!(order(&s), vec![8, 4, 0]);
        s.remove(4);
        assert_eq!(order(&s), vec![8, 0]);
        s.insert(16, p(0, false));
        assert_eq!(order(&s), vec![16, 8, 0]);
    }

    #[test]
    fn non_incremental_streams_go_in_stream_order_then_incremental_ones() {
        let mut s = WriteScheduler::default();
        s.insert(20, p(3, true));
        s.insert(8, p(3, false));
        s.insert(4, p(3, false));
        s.insert(12, p(3, true));
        assert_eq!(order(&s), vec![4, 8, 20, 12]);
        // Serving a non-incremental stream does not move it: it is finished first.
        s.served(4);
        assert_eq!(order(&s), vec![4, 8, 20, 12]);
    }

    #[test]
    fn incremental_streams_take_turns() {
        let mut s = WriteScheduler::default();
        for id in [0, 4, 8] {
            s.insert(id, p(3, true));
        }
        let mut firsts = Vec::new();
        for _ in 0..6 {
            let o = order(&s);
            firsts.push(o[0]);
            s.served(o[0]);
        }
        assert_eq!(firsts, vec![0, 4, 8, 0, 4, 8]);
        // Inserting a queued stream again does not jump the queue.
        s.insert(4, p(3, true));
        assert_eq!(order(&s), vec![0, 4, 8]);
    }

    #[test]
    fn reprioritising_moves_a_stream_between_urgencies() {
        let mut s = WriteScheduler::default();
        s.insert(0, p(3, false));
        s.insert(4, p(3, false));
        s.insert(8, p(5, true));
        s.reprioritise(8, p(0, true));
        assert_eq!(order(&s), vec![8, 0, 4]);
        s.reprioritise(0, p(7, false));
        assert_eq!(order(&s), vec![8, 4, 0]);
        // Not queued: stays out.
        s.reprioritise(99, p(0, false));
        assert!(!s.contains(99));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn the_extreme_urgencies() {
        let mut s = WriteScheduler::default();
        s.insert(4, p(URGENCY_MAX, true));
        s.insert(8, p(0, false));
        assert_eq!(order(&s), vec![8, 4]);
    }

    #[test]
    fn an_open_gate_admits_everything() {
        let g = Gate::default();
        for u in 0..=URGENCY_MAX {
            assert!(g.admits(p(u, false)) && g.admits(p(u, true)));
        }
    }

    #[test]
    fn a_blocker_holds_back_less_urgent_streams() {
        let mut g = Gate::default();
        g.block(p(1, false));
        // A later, less urgent blocker changes nothing.
        g.block(p(5, true));
        assert!(!g.admits(p(3, false)));
        assert!(!g.admits(p(7, true)));
        // Same urgency, non-incremental: one after another.
        assert!(!g.admits(p(1, false)));
        assert!(!g.admits(p(1, true)));
    }

    #[test]
    fn incremental_streams_of_one_urgency_share() {
        let mut g = Gate::default();
        g.block(p(3, true));
        assert!(g.admits(p(3, true)));
        assert!(!g.admits(p(3, false)));
        assert!(!g.admits(p(4, true)));
    }

    proptest! {
        /// Whatever the operations: each queued stream appears exactly once, urgencies never
        /// decrease along the order, and non-incremental streams of one urgency come first, in
        /// stream order.
        #[test]
        fn order_is_a_valid_rfc9218_order(
            ops in proptest::collection::vec((0u8..4, 0u64..12, 0u8..8, any::<bool>()), 0..80),
        ) {
            let mut s = WriteScheduler::default();
            let mut model: FxHashMap<u64, Priority> = FxHashMap::default();
            for (op, id, u, inc) in ops {
                match op {
                    0 => { s.insert(id, p(u, inc)); model.insert(id, p(u, inc)); }
                    1 => { s.remove(id); model.remove(&id); }
                    2 => s.served(id),
                    _ => {
                        s.reprioritise(id, p(u, inc));
                        if let Some(k) = model.get_mut(&id) { *k = p(u, inc); }
                    }
                }
                let o = order(&s);
                prop_assert_eq!(o.len(), model.len());
                prop_assert_eq!(s.len(), model.len());
                let mut seen = std::collections::HashSet::new();
                for id in &o { prop_assert!(seen.insert(*id)); prop_assert!(model.contains_key(id)); }
                for w in o.windows(2) {
                    let (a, b) = (model[&w[0]], model[&w[1]]);
                    prop_assert!(a.urgency <= b.urgency);
                    if a.urgency == b.urgency {
                        prop_assert!(!a.incremental || b.incremental);
                        if !a.incremental && !b.incremental { prop_assert!(w[0] < w[1]); }
                    }
                }
            }
        }
    }
}
