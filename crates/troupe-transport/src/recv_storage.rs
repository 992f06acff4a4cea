//! The receive loop's buffers, grown as traffic asks for them.
//!
//! One `recvmmsg` fills up to [`RecvStorage::slots`] buffers of one slot each. A loop that
//! always had its full batch (32 slots of 64 KiB) zeroed 2 MiB when it started: 512 page
//! faults and a memset, paid again by every client endpoint, which usually carries a single
//! connection (a tenth of what the benchmark's client spent per handshake went there). So the
//! storage starts with one slot and doubles each time a call fills every slot it had, up to
//! the batch: a busy server reaches the full batch within a few calls, and an endpoint that
//! never sees a burst keeps one slot. It does not shrink: the memory a burst took stays for
//! the next one.

use std::io::IoSliceMut;

/// Receive buffers for one receive loop: buffers of `slot` bytes, one after another in `buf`,
/// at most `max` of them.
#[derive(Debug)]
pub(crate) struct RecvStorage {
    buf: Vec<u8>,
    slot: usize,
    max: usize,
}

impl RecvStorage {
    /// One buffer of `slot` bytes (more than zero), growing to at most `max` (at least one).
    pub(crate) fn new(slot: usize, max: usize) -> Self {
        assert!(slot > 0, "a receive buffer holds at least one byte");
        RecvStorage {
            buf: vec![0; slot],
            slot,
            max: max.max(1),
        }
    }

    /// How many buffers the next receive offers.
    pub(crate) fn slots(&self) -> usize {
        self.buf.len() / self.slot
    }

    /// The buffers, one per slot, for the next receive.
    pub(crate) fn io_slices(&mut self) -> Vec<IoSliceMut<'_>> {
        self.buf
            .chunks_mut(self.slot)
            .map(IoSliceMut::new)
            .collect()
    }

    /// The first `len` bytes of buffer `i`, as the last receive filled them.
    pub(crate) fn filled(&self, i: usize, len: usize) -> &[u8] {
        let start = i * self.slot;
        &self.buf[start..start + len.min(self.slot)]
    }

    /// Called after each receive with how many buffers it filled: when that was all of them
    /// and the batch allows more, the next receive offers twice as many. What the receive
    /// filled stays readable through [`RecvStorage::filled`].
    pub(crate) fn note_filled(&mut self, filled: usize) {
        let slots = self.slots();
        if filled >= slots && slots < self.max {
            self.buf.resize((slots * 2).min(self.max) * self.slot, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RecvStorage;

    fn after(fills: &[usize], max: usize) -> RecvStorage {
        let mut s = RecvStorage::new(8, max);
        for &f in fills {
            s.note_filled(f);
        }
        s
    }

    #[test]
    fn starts_with_one_slot_and_offers_exactly_its_buffers() {
        let mut s = RecvStorage::new(8, 32);
        assert_eq!(s.slots(), 1);
        let bufs = s.io_slices();
        assert_eq!(bufs.len(), 1);
        assert_eq!(bufs[0].len(), 8);
    }

    #[test]
    fn an_empty_or_partial_receive_does_not_grow() {
        assert_eq!(after(&[0, 0, 0], 32).slots(), 1);
        let s = after(&[1, 1, 3, 2, 0], 32);
        assert_eq!(s.slots(), 4, "1 -> 2 -> 4, then 3 of 4 and less stay");
    }

    #[test]
    fn every_full_receive_doubles_up_to_the_maximum_and_stays_there() {
        let s = after(&[1, 2, 4, 8, 16], 32);
        assert_eq!(s.slots(), 32);
        let mut s = after(&[1, 2, 4, 8, 16, 32, 32], 32);
        assert_eq!(s.slots(), 32);
        assert_eq!(s.io_slices().len(), 32);
        assert_eq!(s.buf.len(), 32 * 8, "no memory beyond the batch");
    }

    #[test]
    fn a_maximum_that_is_not_a_power_of_two_is_reached_exactly() {
        assert_eq!(after(&[1, 2, 4], 3).slots(), 3);
        assert_eq!(after(&[1, 2, 3, 3], 3).slots(), 3);
    }

    #[test]
    fn a_maximum_of_one_or_zero_never_grows() {
        assert_eq!(after(&[1, 1, 1], 1).slots(), 1);
        assert_eq!(after(&[1, 1], 0).slots(), 1, "zero means one");
    }

    #[test]
    fn what_a_receive_filled_survives_the_growth_it_triggers() {
        // The receive loop's order: receive into every slot, note it (which grows the
        // storage, maybe moving it), then read what was received.
        let mut s = RecvStorage::new(4, 8);
        s.note_filled(1);
        for (i, b) in s.io_slices().iter_mut().enumerate() {
            b.fill(0xa0 + i as u8);
        }
        s.note_filled(2);
        assert_eq!(s.slots(), 4);
        assert_eq!(s.filled(0, 4), &[0xa0; 4]);
        assert_eq!(s.filled(1, 3), &[0xa1; 3]);
        assert_eq!(s.filled(3, 4), &[0; 4], "a new slot starts zeroed");
    }

    #[test]
    fn a_grown_storage_keeps_what_each_slot_received() {
        let mut s = RecvStorage::new(4, 4);
        s.note_filled(1);
        s.note_filled(2);
        {
            let mut bufs = s.io_slices();
            assert_eq!(bufs.len(), 4);
            for (i, b) in bufs.iter_mut().enumerate() {
                b.fill(i as u8 + 1);
            }
        }
        assert_eq!(s.filled(0, 4), &[1, 1, 1, 1]);
        assert_eq!(s.filled(3, 2), &[4, 4]);
        assert_eq!(
            s.filled(2, 9),
            &[3, 3, 3, 3],
            "a length past the slot is cut to it"
        );
    }
}
