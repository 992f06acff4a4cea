//! The streams a server connection must see delivered before a graceful close: their actors
//! ended, but quiche may still hold their bytes unacknowledged.
//!
//! [`Unacked`] is the list and its pruning policy, without quiche: the caller says which
//! streams are still held. Pruning looks at every stream listed, so it must not run for every
//! stream that ends: it runs when the list has grown to twice what survived the last pruning
//! (and at least [`PRUNE_AT`]), so each ended stream costs at most a few looks in all, however
//! many stay unacknowledged at once (a thousand concurrent streams on a path with a long round
//! trip, say). A fixed threshold would not: with more streams unacknowledged than it, every
//! stream that ended would walk the whole list.

/// The smallest size at which the list is pruned. Twice quiche's default limit of concurrent
/// request streams (100), rounded to a power of two: with the default limits a pruning runs
/// about once per couple of hundred streams.
pub(super) const PRUNE_AT: usize = 256;

/// Ended streams whose bytes may be unacknowledged, and when to prune them.
#[derive(Debug)]
pub(super) struct Unacked {
    ids: Vec<u64>,
    /// The list is pruned once it holds more than this many streams.
    prune_above: usize,
}

impl Default for Unacked {
    fn default() -> Self {
        Unacked {
            ids: Vec::new(),
            prune_above: PRUNE_AT,
        }
    }
}

impl Unacked {
    /// Notes a stream whose actor ended. Returns whether the list should be pruned now.
    pub(super) fn note(&mut self, id: u64) -> bool {
        self.ids.push(id);
        self.ids.len() > self.prune_above
    }

    /// Keeps the streams `held` says quiche still holds (it is asked once for each), and sets
    /// the next pruning to twice what is left. Returns whether none is left.
    pub(super) fn prune(&mut self, mut held: impl FnMut(u64) -> bool) -> bool {
        self.ids.retain(|&id| held(id));
        self.prune_above = PRUNE_AT.max(2 * self.ids.len());
        self.ids.is_empty()
    }

    /// Streams listed.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_empty_list_is_all_delivered() {
        let mut u = Unacked::default();
        let mut asked = 0;
        assert!(u.prune(|_| {
            asked += 1;
            true
        }));
        assert_eq!(asked, 0);
    }

    #[test]
    fn one_and_three_streams_wait_for_the_threshold() {
        let mut u = Unacked::default();
        assert!(!u.note(4), "one stream: no pruning");
        assert!(!u.note(8));
        assert!(!u.note(12), "three: none yet");
        // Pruning keeps exactly the held ones.
        assert!(!u.prune(|id| id == 8));
        assert_eq!(u.ids, vec![8]);
        assert!(u.prune(|_| false), "none held: all delivered");
    }

    #[test]
    fn the_threshold_is_the_first_prune() {
        let mut u = Unacked::default();
        for id in 0..PRUNE_AT as u64 {
            assert!(!u.note(id), "stream {id} of {PRUNE_AT}");
        }
        assert!(u.note(PRUNE_AT as u64), "one past the threshold");
        // All delivered: the threshold stays the minimum.
        assert!(u.prune(|_| false));
        for id in 0..PRUNE_AT as u64 {
            assert!(!u.note(id));
        }
        assert!(u.note(0));
    }

    #[test]
    fn survivors_push_the_next_prune_to_twice_their_number() {
        let mut u = Unacked::default();
        for id in 0..=1000u64 {
            u.note(id);
        }
        // Nothing delivered: 1001 survive, the next prune waits until 2002.
        assert!(!u.prune(|_| true));
        assert_eq!(u.len(), 1001);
        for id in 1001..2002u64 {
            assert!(!u.note(id), "stream {id}");
        }
        assert!(u.note(2002));
        // And it comes back down once they are delivered.
        assert!(u.prune(|_| false));
        for id in 0..PRUNE_AT as u64 {
            assert!(!u.note(id));
        }
        assert!(u.note(0));
    }

    proptest! {
        /// Whatever quiche holds at each pruning, the looks at streams in all prunings stay
        /// within three per stream noted (a fixed threshold below the number held would look
        /// at every held stream for every stream noted).
        #[test]
        fn each_stream_costs_a_few_looks_in_all(
            steps in proptest::collection::vec((1usize..400, 0u8..=100), 0..60),
        ) {
            let mut u = Unacked::default();
            let mut next = 0u64;
            let mut noted = 0usize;
            let mut looks = 0usize;
            for (n, keep_pct) in steps {
                for _ in 0..n {
                    noted += 1;
                    next += 4;
                    if u.note(next) {
                        // Keep about keep_pct% of what is listed (by id, deterministic).
                        u.prune(|id| {
                            looks += 1;
                            (id / 4) % 100 < u64::from(keep_pct)
                        });
                    }
                }
                prop_assert!(u.len() <= 2 * noted.max(PRUNE_AT) + 1);
            }
            prop_assert!(looks <= 3 * noted, "{looks} looks for {noted} streams");
        }
    }
}
