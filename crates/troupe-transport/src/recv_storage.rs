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
//!
//! Buffers of a page or more (the loop's are 64 KiB) do not sit back to back: each starts an
//! odd number of cache lines after the previous one ([`stride_for`]; 64 KiB and 17 lines).
//! Back to back, the 32 buffers' starts would share one set of a 32 KiB L1 and two sets of
//! this machine's 1 MiB L2, and a batch whose datagrams fill only the first few KiB of each
//! buffer would evict itself before the loop copied it out. Under cachegrind (L2 shaped like
//! this machine's), an upload's server took 1.69M L2 read misses per 64 MiB back to back and
//! 0.22M staggered (1.18M and 0.05M in an earlier pair of runs), for as many instructions.
//! The gaps cost 31 x 1,088 bytes per full batch.

use std::io::IoSliceMut;

/// Receive buffers for one receive loop: buffers of `slot` bytes, one every
/// [`stride_for`]`(slot)` bytes in `buf`, at most `max` of them.
#[derive(Debug)]
pub(crate) struct RecvStorage {
    buf: Vec<u8>,
    slot: usize,
    max: usize,
}

/// Buffers whose starts lie a multiple of this apart share their cache sets: 4 KiB is one
/// way of a 32 KiB, 8-way L1 (64 sets of 64-byte lines), and a 1 MiB, 8-way L2 repeats every
/// 128 KiB. Buffers smaller than this start in sets far enough apart on their own.
const ALIAS: usize = 4096;

/// A cache line.
const LINE: usize = 64;

/// How many lines further than its size each buffer of a page or more starts from the one
/// before it. A datagram of 1,350 bytes fills 22 lines at its buffer's head: 17 lines apart,
/// the heads of a batch of 32 overlap by five lines at most, so no L2 set holds lines of more
/// than two of them. One line apart (the least that separates their starts), a set held
/// lines of up to 22 heads, more than its 8 ways: under cachegrind an upload's server then
/// took 0.93M L2 read misses per 64 MiB, against 1.69M back to back and 0.22M 17 lines apart.
const STAGGER_LINES: usize = 17;

/// The distance between two buffers' starts, for buffers of `slot` bytes. For a slot of at
/// least [`ALIAS`] bytes it is a whole and odd number of lines, [`STAGGER_LINES`] or one more
/// beyond the slot: odd, so it shares no factor with the sets' count (a power of two), and the
/// starts of up to 64 consecutive buffers fall in different L1 sets and of up to 2,048 in
/// different L2 sets, whether `slot` is a multiple of a page (64 KiB: 17 lines more) or one
/// byte short of one (back to back, each start would move by a byte: all in one set).
fn stride_for(slot: usize) -> usize {
    if slot < ALIAS {
        slot
    } else {
        ((slot.div_ceil(LINE) + STAGGER_LINES) | 1) * LINE
    }
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
        self.buf.len().div_ceil(stride_for(self.slot))
    }

    /// The buffers, one per slot, for the next receive.
    pub(crate) fn io_slices(&mut self) -> Vec<IoSliceMut<'_>> {
        let slot = self.slot;
        self.buf
            .chunks_mut(stride_for(slot))
            .map(|b| IoSliceMut::new(&mut b[..slot]))
            .collect()
    }

    /// The first `len` bytes of buffer `i`, as the last receive filled them.
    pub(crate) fn filled(&self, i: usize, len: usize) -> &[u8] {
        let start = i * stride_for(self.slot);
        &self.buf[start..start + len.min(self.slot)]
    }

    /// Called after each receive with how many buffers it filled: when that was all of them
    /// and the batch allows more, the next receive offers twice as many. What the receive
    /// filled stays readable through [`RecvStorage::filled`].
    pub(crate) fn note_filled(&mut self, filled: usize) {
        let slots = self.slots();
        if filled >= slots && slots < self.max {
            let n = (slots * 2).min(self.max);
            // The last buffer needs no gap after it.
            self.buf
                .resize((n - 1) * stride_for(self.slot) + self.slot, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{stride_for, RecvStorage};

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

    /// Where each offered buffer starts, as an offset from the first, and how long it is.
    fn layout(s: &mut RecvStorage) -> Vec<(usize, usize)> {
        let bufs = s.io_slices();
        let base = bufs[0].as_ptr() as usize;
        bufs.iter()
            .map(|b| (b.as_ptr() as usize - base, b.len()))
            .collect()
    }

    /// Storage of `slot`-byte buffers grown to `n` (a power of two) of them.
    fn grown(slot: usize, n: usize) -> RecvStorage {
        let mut s = RecvStorage::new(slot, n);
        while s.slots() < n {
            let k = s.slots();
            s.note_filled(k);
        }
        s
    }

    #[test]
    fn page_sized_buffers_start_in_different_cache_sets() {
        // The receive loop's batch: 32 buffers of 64 KiB. Back to back, every start would be
        // the same L1 set and one of two L2 sets; and each head, the first 22 lines a
        // datagram fills, shares a set with no more than its two neighbours' heads.
        let mut s = grown(64 * 1024, 32);
        let layout = layout(&mut s);
        assert_eq!(layout.len(), 32);
        let mut l1_sets: Vec<usize> = layout.iter().map(|(at, _)| at % 4096 / 64).collect();
        let mut l2_sets: Vec<usize> = layout.iter().map(|(at, _)| at % 131_072 / 64).collect();
        l1_sets.sort_unstable();
        l1_sets.dedup();
        l2_sets.sort_unstable();
        l2_sets.dedup();
        assert_eq!(l1_sets.len(), 32, "every start in its own L1 set");
        assert_eq!(l2_sets.len(), 32, "every start in its own L2 set");
        let mut heads_per_set = vec![0; 2048];
        for (at, _) in &layout {
            for line in 0..22 {
                heads_per_set[(at / 64 + line) % 2048] += 1;
            }
        }
        assert!(heads_per_set.iter().all(|&n| n <= 2), "{heads_per_set:?}");
        for w in layout.windows(2) {
            assert_eq!(w[0].1, 64 * 1024, "each buffer is exactly one slot");
            assert!(w[0].0 + w[0].1 <= w[1].0, "buffers do not overlap");
            assert_eq!(w[0].0 % 64, 0, "every start is on a cache line");
        }
        assert_eq!(layout[31].1, 64 * 1024);
        assert_eq!(
            stride_for(64 * 1024),
            64 * 1024 + 17 * 64,
            "17 lines between buffers"
        );
        assert_eq!(
            s.buf.len(),
            31 * (64 * 1024 + 17 * 64) + 64 * 1024,
            "no gap after the last buffer"
        );
    }

    #[test]
    fn buffers_a_byte_short_of_a_page_multiple_are_staggered_too() {
        // Back to back, each start would be one byte before the last one's set: all 32 in
        // one or two sets.
        let mut s = grown(64 * 1024 - 1, 32);
        let layout = layout(&mut s);
        let mut l1_sets: Vec<usize> = layout.iter().map(|(at, _)| at % 4096 / 64).collect();
        l1_sets.sort_unstable();
        l1_sets.dedup();
        assert_eq!(l1_sets.len(), 32);
        assert!(layout.iter().all(|&(_, len)| len == 64 * 1024 - 1));
        assert_eq!(stride_for(4097), 83 * 64, "65 lines and 17 more, made odd");
        assert_eq!(
            stride_for(4096),
            81 * 64,
            "64 lines and 17 more: already odd"
        );
        assert_eq!(stride_for(4095), 4095, "under a page: back to back");
    }

    #[test]
    fn up_to_sixty_four_page_sized_buffers_get_distinct_l1_sets() {
        let mut s = grown(4096, 64);
        let layout = layout(&mut s);
        let mut sets: Vec<usize> = layout.iter().map(|(at, _)| at % 4096 / 64).collect();
        sets.sort_unstable();
        sets.dedup();
        assert_eq!(sets.len(), 64);
    }

    #[test]
    fn other_slot_sizes_stay_back_to_back() {
        for slot in [1, 8, 1500, 4095] {
            let mut s = grown(slot, 4);
            let layout = layout(&mut s);
            let starts: Vec<usize> = layout.iter().map(|(at, _)| *at).collect();
            assert_eq!(starts, vec![0, slot, 2 * slot, 3 * slot], "slot {slot}");
            assert_eq!(s.buf.len(), 4 * slot);
        }
    }

    #[test]
    fn one_page_sized_buffer_has_no_gap_and_a_receive_of_none_keeps_it() {
        let mut s = RecvStorage::new(8192, 32);
        s.note_filled(0);
        assert_eq!(s.slots(), 1);
        assert_eq!(s.buf.len(), 8192);
        assert_eq!(layout(&mut s), vec![(0, 8192)]);
    }

    #[test]
    fn staggered_buffers_read_back_what_each_received() {
        let mut s = grown(4096, 3 + 1);
        {
            let mut bufs = s.io_slices();
            for (i, b) in bufs.iter_mut().enumerate() {
                b.fill(i as u8 + 1);
            }
        }
        for i in 0..4 {
            let got = s.filled(i, 5000);
            assert_eq!(got.len(), 4096, "a length past the slot is cut to it");
            assert!(got.iter().all(|&x| x == i as u8 + 1), "buffer {i}");
        }
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
