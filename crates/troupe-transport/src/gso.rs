//! Grouping outgoing packets into GSO sends (`UDP_SEGMENT`): a pure type beside the connection
//! actor that uses it, so its edge cases are unit-tested without sockets.
//!
//! quiche writes one packet at a time. A run of packets to one destination, all of one size
//! except perhaps a shorter last one, can go out as one `sendmsg` with the kernel cutting it into
//! segments. [`GsoBatcher`] owns the buffer the packets are written into and says when a batch
//! must be sent: when it holds the most segments one send may carry, when a packet is shorter
//! than the batch's segment size (it must be the last), or when the next packet goes elsewhere
//! or is larger (then the batch is sent *without* it and the packet starts the next batch).
//!
//! The buffer itself is the worker thread's, not the connection's: a connection borrows one
//! for a flush ([`GsoBatcher::attach`], [`borrow_buffer`]) and gives it back after
//! ([`GsoBatcher::detach`], [`return_buffer`]), so the next connection to flush writes into
//! memory still in cache. With a buffer per connection, 50 connections kept 50 buffers of up
//! to 86 KB, and each flush wrote its packets into one untouched since that connection's last
//! turn: about 16 of the 300 cache misses per request the benchmark's 50x10 load counted.
//! [`BufferShelf`] is the policy, a pure type.

use std::cell::RefCell;
use std::net::SocketAddr;

/// Most packets in one GSO send. 64: the kernel's `UDP_MAX_SEGMENTS`.
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Most bytes in one GSO send: under the 65,507-byte UDP payload limit of IPv4 with room to
/// spare (Linux refuses a larger send, GSO or not).
pub const MAX_GSO_BYTES: usize = 65_000;

/// Spare send buffers one worker thread keeps. Four: a flush that waits for the socket holds
/// its buffer while other connections flush, and a worker rarely has more than a few of those
/// at once; a fifth is allocated and dropped. At most about 86 KB each (see
/// [`MAX_GSO_BYTES`]).
pub const SPARE_SEND_BUFFERS: usize = 4;

/// Spare buffers, given out last-returned first (the one most likely still in cache), at most
/// `max` kept.
#[derive(Debug)]
pub struct BufferShelf {
    bufs: Vec<Vec<u8>>,
    max: usize,
}

impl BufferShelf {
    /// An empty shelf that keeps at most `max` buffers (0: keeps none).
    pub const fn new(max: usize) -> Self {
        BufferShelf {
            bufs: Vec::new(),
            max,
        }
    }

    /// The buffer returned last, or a new empty one.
    pub fn take(&mut self) -> Vec<u8> {
        self.bufs.pop().unwrap_or_default()
    }

    /// Keeps `buf` for the next [`take`](Self::take), unless the shelf is full or `buf` never
    /// held anything (then it is dropped).
    pub fn put(&mut self, buf: Vec<u8>) {
        if buf.capacity() > 0 && self.bufs.len() < self.max {
            self.bufs.push(buf);
        }
    }

    /// Buffers on the shelf.
    pub fn len(&self) -> usize {
        self.bufs.len()
    }

    /// Whether the shelf is empty.
    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }
}

thread_local! {
    static SHELF: RefCell<BufferShelf> = const { RefCell::new(BufferShelf::new(SPARE_SEND_BUFFERS)) };
}

/// A send buffer from this thread's shelf (or a new one), for [`GsoBatcher::attach`].
pub fn borrow_buffer() -> Vec<u8> {
    SHELF.with(|s| s.borrow_mut().take())
}

/// Gives a buffer from [`GsoBatcher::detach`] back to this thread's shelf. A flush that began
/// on another thread (a multi-threaded runtime) just leaves it here.
pub fn return_buffer(buf: Vec<u8>) {
    SHELF.with(|s| s.borrow_mut().put(buf));
}

/// A batch ready to go out: `buffer()[..len]` to `to`, cut into segments of `segment` bytes
/// (the last may be shorter). With one packet, `len == segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// Destination.
    pub to: SocketAddr,
    /// Bytes at the start of the buffer.
    pub len: usize,
    /// Segment size.
    pub segment: usize,
    /// Packets in the batch.
    pub segments: usize,
}

#[derive(Debug, Clone, Copy)]
struct Batch {
    to: SocketAddr,
    segment: usize,
    count: usize,
    len: usize,
}

impl Batch {
    /// A batch of one packet of `n` bytes.
    fn one(to: SocketAddr, n: usize) -> Self {
        Batch {
            to,
            segment: n,
            count: 1,
            len: n,
        }
    }

    fn ready(self) -> Ready {
        Ready {
            to: self.to,
            len: self.len,
            segment: self.segment,
            segments: self.count,
        }
    }
}

/// Builds GSO batches in one buffer (see the module docs).
///
/// Use: write the next packet into [`slot`](Self::slot), then [`commit`](Self::commit) its
/// length and destination. Whenever `commit` or [`sent`](Self::sent) returns a [`Ready`], send
/// `buffer()[..ready.len]` and call `sent()` before writing the next packet. At the end,
/// [`finish`](Self::finish) returns the last batch.
#[derive(Debug)]
pub struct GsoBatcher {
    buf: Vec<u8>,
    payload: usize,
    max_segments: usize,
    batch: Option<Batch>,
    /// A packet that did not join the batch just returned: where it lies in the buffer, its
    /// length and destination. `sent()` moves it to the front as the next batch.
    carry: Option<(usize, usize, SocketAddr)>,
}

impl GsoBatcher {
    /// A batcher for packets of at most `payload` bytes. `kernel_segments` is what the socket
    /// supports (1 without GSO); `gso` false sends one packet per send whatever the kernel
    /// offers. The batch is also bounded by [`MAX_GSO_SEGMENTS`] and [`MAX_GSO_BYTES`].
    pub fn new(payload: usize, kernel_segments: usize, gso: bool) -> Self {
        let payload = payload.max(1);
        let max_segments = if gso {
            kernel_segments
                .clamp(1, MAX_GSO_SEGMENTS)
                .min(MAX_GSO_BYTES / payload)
                .max(1)
        } else {
            1
        };
        GsoBatcher {
            // Empty until a flush attaches its thread's buffer, which grows as batches need it
            // (up to `payload * max_segments`).
            buf: Vec::new(),
            payload,
            max_segments,
            batch: None,
            carry: None,
        }
    }

    /// Gives the batcher `buf` to write packets into (its length is kept: bytes in it are
    /// overwritten, never read). Call between flushes only: with no batch open and nothing
    /// carried over.
    pub fn attach(&mut self, buf: Vec<u8>) {
        debug_assert!(self.batch.is_none() && self.carry.is_none());
        self.buf = buf;
    }

    /// Takes the buffer back out (empty in its place), once the flush sent everything:
    /// [`finish`](Self::finish)'s batch and what [`sent`](Self::sent) carried over.
    pub fn detach(&mut self) -> Vec<u8> {
        debug_assert!(self.batch.is_none() && self.carry.is_none());
        std::mem::take(&mut self.buf)
    }

    /// Most packets one send carries.
    #[cfg(test)]
    pub fn max_segments(&self) -> usize {
        self.max_segments
    }

    /// Where quiche writes the next packet: `payload` bytes after the current batch.
    pub fn slot(&mut self) -> &mut [u8] {
        debug_assert!(self.carry.is_none(), "sent() must follow a Ready");
        let at = self.batch.map_or(0, |b| b.len);
        if self.buf.len() < at + self.payload {
            self.buf.resize(at + self.payload, 0);
        }
        &mut self.buf[at..at + self.payload]
    }

    /// The buffer; a [`Ready`] names its first `len` bytes.
    pub fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// Records that `n` bytes for `to` were written into [`slot`](Self::slot). Returns a batch
    /// to send now, if one is complete.
    pub fn commit(&mut self, n: usize, to: SocketAddr) -> Option<Ready> {
        debug_assert!(n <= self.payload);
        match &mut self.batch {
            None => {
                self.batch = Some(Batch::one(to, n));
                self.take_if_full(false)
            }
            Some(b) if b.to == to && n <= b.segment => {
                b.len += n;
                b.count += 1;
                // A short packet must be the last segment of a GSO send.
                let short = n < b.segment;
                self.take_if_full(short)
            }
            Some(b) => {
                // Elsewhere, or larger: the batch goes without this packet, which starts the
                // next one once the caller has sent the batch.
                let ready = b.ready();
                self.carry = Some((b.len, n, to));
                self.batch = None;
                Some(ready)
            }
        }
    }

    /// The last returned batch was sent (or failed): its buffer space is free again. Returns
    /// another batch to send at once when the packet carried over is one by itself.
    pub fn sent(&mut self) -> Option<Ready> {
        let (from, n, to) = self.carry.take()?;
        self.buf.copy_within(from..from + n, 0);
        self.batch = Some(Batch::one(to, n));
        self.take_if_full(false)
    }

    /// The batch still open, to send at the end of a flush.
    pub fn finish(&mut self) -> Option<Ready> {
        self.batch.take().map(Batch::ready)
    }

    fn take_if_full(&mut self, short: bool) -> Option<Ready> {
        let b = self.batch?;
        if short
            || b.count >= self.max_segments
            || b.len + self.payload > self.payload * self.max_segments
        {
            self.batch = None;
            Some(b.ready())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Runs packets `(len, port)` through a batcher the way the connection actor does, checking
    /// every sent batch's bytes, and returns the sends.
    fn run(b: &mut GsoBatcher, packets: &[(usize, u16)]) -> Vec<(Ready, Vec<u8>)> {
        let mut sends = Vec::new();
        let mut collect = |b: &mut GsoBatcher, mut r: Option<Ready>| {
            while let Some(ready) = r {
                sends.push((ready, b.buffer()[..ready.len].to_vec()));
                r = b.sent();
            }
        };
        for (i, &(n, port)) in packets.iter().enumerate() {
            let slot = b.slot();
            assert!(slot.len() >= n, "slot too small");
            slot[..n].fill(i as u8);
            let r = b.commit(n, addr(port));
            collect(b, r);
        }
        let r = b.finish();
        collect(b, r);
        sends
    }

    /// Every packet arrives once, in order, to its destination, and every send is a valid GSO
    /// send: equal segments but a shorter last one, one destination, within the limits.
    fn check(b: &GsoBatcher, packets: &[(usize, u16)], sends: &[(Ready, Vec<u8>)]) {
        let mut i = 0;
        for (r, bytes) in sends {
            assert!(r.segments >= 1 && r.segments <= b.max_segments());
            assert!(r.len <= MAX_GSO_BYTES.max(b.payload));
            let mut off = 0;
            for s in 0..r.segments {
                let (n, port) = packets[i];
                assert_eq!(r.to, addr(port), "packet {i} to the wrong place");
                if s + 1 < r.segments {
                    assert_eq!(n, r.segment, "only the last segment may be shorter");
                } else {
                    assert!(n <= r.segment);
                }
                assert!(
                    bytes[off..off + n].iter().all(|&x| x == i as u8),
                    "packet {i} bytes"
                );
                off += n;
                i += 1;
            }
            assert_eq!(off, r.len);
        }
        assert_eq!(i, packets.len(), "every packet sent exactly once");
    }

    /// Runs and checks `packets`; the segments of each send.
    fn segments(b: &mut GsoBatcher, packets: &[(usize, u16)]) -> Vec<usize> {
        let s = run(b, packets);
        check(b, packets, &s);
        s.iter().map(|(r, _)| r.segments).collect()
    }

    #[test]
    fn shelf_gives_back_the_last_returned_first() {
        let mut s = BufferShelf::new(SPARE_SEND_BUFFERS);
        // Zero: a new, empty buffer.
        assert!(s.is_empty());
        assert_eq!(s.take().capacity(), 0);
        // One.
        s.put(Vec::with_capacity(10));
        assert_eq!(s.len(), 1);
        assert_eq!(s.take().capacity(), 10);
        assert!(s.is_empty());
        // Three: last in, first out.
        for c in [10, 20, 30] {
            s.put(Vec::with_capacity(c));
        }
        let caps: Vec<usize> = (0..3).map(|_| s.take().capacity()).collect();
        assert_eq!(caps, [30, 20, 10]);
        assert!(s.is_empty());
    }

    #[test]
    fn shelf_keeps_at_most_its_maximum_and_no_empty_buffer() {
        let mut s = BufferShelf::new(SPARE_SEND_BUFFERS);
        for c in 1..=SPARE_SEND_BUFFERS + 2 {
            s.put(Vec::with_capacity(c * 100));
        }
        assert_eq!(
            s.len(),
            SPARE_SEND_BUFFERS,
            "the ones beyond the maximum are dropped"
        );
        assert_eq!(s.take().capacity(), SPARE_SEND_BUFFERS * 100);
        s.put(Vec::new());
        assert_eq!(
            s.len(),
            SPARE_SEND_BUFFERS - 1,
            "an unused buffer is not kept"
        );
        let mut none = BufferShelf::new(0);
        none.put(vec![1]);
        assert!(none.is_empty(), "a shelf of size 0 keeps nothing");
    }

    #[test]
    fn a_borrowed_buffer_serves_the_next_batcher_and_keeps_its_bytes_room() {
        // Two connections flushing one after the other on one thread write into one buffer.
        let mut a = GsoBatcher::new(1350, 64, true);
        let mut b = GsoBatcher::new(1350, 64, true);
        a.attach(borrow_buffer());
        let three = [(1350, 1), (1350, 1), (700, 1)];
        assert_eq!(segments(&mut a, &three), vec![3]);
        let buf = a.detach();
        let (ptr, len) = (buf.as_ptr(), buf.len());
        assert!(len >= 3 * 1350);
        assert_eq!(
            a.detach().capacity(),
            0,
            "detached: the batcher holds nothing"
        );
        return_buffer(buf);
        b.attach(borrow_buffer());
        assert_eq!(segments(&mut b, &[(1200, 2), (1200, 3)]), vec![1, 1]);
        let again = b.detach();
        assert_eq!(again.as_ptr(), ptr, "the same memory, not a new buffer");
        return_buffer(again);
    }

    #[test]
    fn zero_packets_send_nothing() {
        let mut b = GsoBatcher::new(1350, 64, true);
        assert!(run(&mut b, &[]).is_empty());
    }

    #[test]
    fn room_grows_with_the_batches_and_no_further() {
        let mut b = GsoBatcher::new(1350, 64, true);
        assert!(b.buffer().is_empty(), "no room before the first packet");
        assert_eq!(segments(&mut b, &[(1200, 1)]), vec![1]);
        assert_eq!(b.buffer().len(), 1350);
        let three = [(1350, 1), (1350, 1), (1350, 1)];
        assert_eq!(segments(&mut b, &three), vec![3]);
        assert_eq!(b.buffer().len(), 3 * 1350);
        let many = vec![(1350, 1); 200];
        assert_eq!(
            segments(&mut b, &many),
            vec![b.max_segments(); 200 / b.max_segments()]
                .into_iter()
                .chain((200 % b.max_segments() > 0).then_some(200 % b.max_segments()))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            b.buffer().len(),
            1350 * b.max_segments(),
            "one full batch at most"
        );
    }

    #[test]
    fn one_packet_is_one_send() {
        let mut b = GsoBatcher::new(1350, 64, true);
        let p = [(1200, 1)];
        assert_eq!(segments(&mut b, &p), vec![1]);
    }

    #[test]
    fn equal_packets_share_one_send() {
        let mut b = GsoBatcher::new(1350, 64, true);
        let p = [(1350, 1), (1350, 1), (1350, 1), (700, 1)];
        assert_eq!(segments(&mut b, &p), vec![4]);
    }

    #[test]
    fn one_segment_per_send() {
        // No UDP_SEGMENT in the kernel: every packet its own send (this panicked before: the
        // second packet's slot lay past a one-segment buffer).
        let mut b = GsoBatcher::new(1350, 1, true);
        let p = [(1350, 1), (1350, 1), (900, 1), (1350, 2), (100, 2)];
        assert_eq!(segments(&mut b, &p), vec![1; p.len()]);
        // GSO turned off: the same, whatever the kernel offers.
        let mut b = GsoBatcher::new(1350, 64, false);
        assert_eq!(b.max_segments(), 1);
        assert_eq!(segments(&mut b, &p), vec![1; p.len()]);
    }

    #[test]
    fn payload_above_half_the_send_limit_is_one_segment() {
        // 40,000-byte payloads: two would exceed 65,000 bytes, so one per send.
        let mut b = GsoBatcher::new(40_000, 64, true);
        assert_eq!(b.max_segments(), 1);
        let p = [(40_000, 1), (40_000, 1), (1_200, 1), (39_999, 1)];
        assert_eq!(segments(&mut b, &p), vec![1; 4]);
    }

    #[test]
    fn mixed_sizes_split_where_a_packet_is_larger_or_shorter() {
        let mut b = GsoBatcher::new(1350, 64, true);
        let p = [
            (1000, 1),
            (1000, 1),
            (1350, 1), // larger: new batch
            (1350, 1),
            (500, 1), // shorter: ends the batch
            (1350, 1),
            (1350, 1),
            (1350, 1),
        ];
        assert_eq!(segments(&mut b, &p), vec![2, 3, 3]);
    }

    #[test]
    fn a_change_of_destination_starts_a_new_send() {
        let mut b = GsoBatcher::new(1350, 64, true);
        let p = [(1350, 1), (1350, 2), (1350, 2), (1350, 1), (1350, 3)];
        assert_eq!(segments(&mut b, &p), vec![1, 2, 1, 1]);
        // The same with one segment per send.
        let mut b = GsoBatcher::new(1350, 1, true);
        assert_eq!(segments(&mut b, &p), vec![1; 5]);
    }

    #[test]
    fn the_maximum_fills_a_send_and_starts_the_next() {
        let mut b = GsoBatcher::new(1000, 64, true);
        assert_eq!(b.max_segments(), 64);
        let p: Vec<(usize, u16)> = (0..64 * 2 + 3).map(|_| (1000, 1)).collect();
        assert_eq!(segments(&mut b, &p), vec![64, 64, 3]);
        // Bounded by bytes as well: 1350-byte packets, at most 48 per 65,000 bytes.
        let mut b = GsoBatcher::new(1350, 64, true);
        assert_eq!(b.max_segments(), 48);
        let p: Vec<(usize, u16)> = (0..100).map(|_| (1350, 1)).collect();
        let s = run(&mut b, &p);
        assert!(s.iter().all(|(r, _)| r.len <= MAX_GSO_BYTES));
        check(&b, &p, &s);
    }
}
