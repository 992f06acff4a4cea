//! The read path: body bytes from quiche to stream actors, within each stream's read credit,
//! with the quiche subtleties it must work around (edge-triggered `Data` events, resets that
//! look like FINs).

use bytes::{BufMut, Bytes, BytesMut};
use quiche::h3;
use tracing::debug;

use super::route::ReadCredit;
use super::H3App;
use crate::body::CHUNK_OVERHEAD;
use crate::stream::StreamMsg;

/// Largest single read from quiche for one stream. 64 KiB: many packets' worth of body in one
/// chunk and one message.
pub(crate) const MAX_READ: usize = 64 * 1024;

/// How a chunk read from quiche is handed on: in the buffer it was read into, or copied to an
/// exactly sized one.
///
/// A read lands in a buffer sized to what quiche holds for the stream
/// (`stream_readable_len`), which counts the DATA frame headers between the body bytes too, so
/// the buffer is a little larger than the body read. Handing that buffer on saves copying
/// every body byte once more; copying is kept for a buffer mostly empty (a peer sending tiny
/// DATA frames, or a partial frame behind the body), so a stream's chunks never pin much more
/// memory than the credit they are charged (their length plus [`CHUNK_OVERHEAD`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Hand on the buffer the read landed in.
    InPlace,
    /// Copy the bytes read to an exactly sized buffer, and drop the one read into.
    Copy,
}

impl Chunk {
    /// For `read` body bytes that landed in a buffer of `allocated` bytes: in place when the
    /// unused part is at most 1/32 of what was read (the 3-byte headers of DATA frames of 96
    /// bytes or more), a copy otherwise. A chunk kept in place so pins at most 1/32 more than
    /// its length.
    pub(super) fn of(read: usize, allocated: usize) -> Chunk {
        if allocated.saturating_sub(read) <= read / 32 {
            Chunk::InPlace
        } else {
            Chunk::Copy
        }
    }
}

/// For a stream quiche reports finished: `Ok` for a real FIN, `Err(code)` if the peer reset it.
///
/// quiche marks a reset stream finished as well, and `h3::Connection::recv_body` can queue a
/// `Finished` event for it; the pending reset is still in quiche's receive buffer, so a
/// zero-length read tells: a reset stream yields `StreamReset`, a finished one nothing.
pub(super) fn end_of_stream(
    conn: &mut troupe_transport::QuicConnection,
    stream_id: u64,
) -> Result<(), u64> {
    let mut probe = [0u8; 1];
    match conn.stream_recv(stream_id, &mut probe[..0]) {
        Err(quiche::Error::StreamReset(code)) => Err(code),
        _ => Ok(()),
    }
}

/// Notes `stream_id` in a list of streams to read at the end of the packet batch
/// (`H3App::deferred` or `H3App::rescan`), once.
pub(super) fn note_once(list: &mut Vec<u64>, stream_id: u64) {
    if !list.contains(&stream_id) {
        list.push(stream_id);
    }
}

impl H3App {
    /// Reads a stream's body from quiche while it has credit, and hands it over in one message
    /// (with the FIN or the reset behind it, if that was reached).
    pub(super) fn read_stream(
        &mut self,
        conn: &mut troupe_transport::QuicConnection,
        stream_id: u64,
    ) {
        let Some(h3) = self.h3.as_mut() else { return };
        let Some(route) = self.routes.get_mut(&stream_id) else {
            // No actor (it ended): nothing will consume this, discard it.
            let mut sink = [0u8; 4096];
            while let Ok(n) = h3.recv_body(conn, stream_id, &mut sink) {
                if n == 0 {
                    break;
                }
            }
            return;
        };
        let ReadCredit::Open(mut credit) = route.read else {
            return;
        };
        let mut chunks = Vec::new();
        let mut reset = None;
        // Each chunk is charged its length plus CHUNK_OVERHEAD, so even a peer sending 1-byte
        // DATA frames cannot make one stream hold more memory than its window.
        while credit > CHUNK_OVERHEAD {
            let want = (credit - CHUNK_OVERHEAD).min(MAX_READ);
            let size = conn.stream_readable_len(stream_id, want);
            let read = if size == 0 {
                // Nothing readable: a one-byte read into no allocation still reports a reset.
                let mut probe = [0u8; 1];
                h3.recv_body(conn, stream_id, &mut probe)
                    .map(|n| Bytes::copy_from_slice(&probe[..n]))
            } else {
                let mut buf = BytesMut::with_capacity(size);
                h3.recv_body_buf(conn, stream_id, (&mut buf).limit(size))
                    .map(|n| match Chunk::of(n, buf.capacity()) {
                        Chunk::InPlace => buf.freeze(),
                        Chunk::Copy => Bytes::copy_from_slice(&buf),
                    })
            };
            match read {
                Ok(chunk) if chunk.is_empty() => break,
                Ok(chunk) => {
                    credit -= crate::body::charge(chunk.len());
                    chunks.push(chunk);
                }
                Err(h3::Error::Done) => break,
                Err(h3::Error::TransportError(quiche::Error::StreamReset(code))) => {
                    reset = Some(code);
                    break;
                }
                Err(e) => {
                    debug!(stream_id, "recv_body: {e}");
                    break;
                }
            }
        }
        // After a reset quiche reports the stream finished too: tell the two apart.
        if reset.is_none() && conn.stream_finished(stream_id) {
            reset = end_of_stream(conn, stream_id).err();
        }
        let fin = reset.is_none() && conn.stream_finished(stream_id);
        // quiche's Data event stays "triggered" when a read ends on a partial frame header
        // (bytes readable, no DATA payload yet): no new Data event would come for the rest of
        // the frame. Such a stream is read again after the next h3::poll. (Out of credit with
        // bytes left is different: the returning credit resumes the read.)
        if credit > CHUNK_OVERHEAD && !fin && reset.is_none() && conn.stream_readable(stream_id) {
            note_once(&mut self.rescan, stream_id);
        }
        route.read = if fin || reset.is_some() {
            ReadCredit::Closed
        } else {
            ReadCredit::Open(credit)
        };
        if !chunks.is_empty() || fin {
            let _ = route.actor.cast(StreamMsg::Body { chunks, fin });
        }
        if let Some(code) = reset {
            let _ = route.actor.cast(StreamMsg::PeerReset(code));
        }
    }

    /// The reader returned `bytes` of credit. Returns whether the stream had stalled for want
    /// of credit (then it is read again, and h3 must be polled: a trailer section or the FIN
    /// behind the body is only reported by `h3::poll`, and no packet may come to trigger it).
    pub(super) fn add_read_credit(&mut self, stream_id: u64, bytes: usize) -> bool {
        match self.routes.get_mut(&stream_id) {
            Some(route) => match &mut route.read {
                ReadCredit::Open(credit) => {
                    let stalled = *credit <= CHUNK_OVERHEAD;
                    *credit = credit.saturating_add(bytes);
                    stalled && *credit > CHUNK_OVERHEAD
                }
                ReadCredit::Closed => false,
            },
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Chunk;

    #[test]
    fn an_empty_read_is_never_kept_in_a_buffer_it_did_not_fill() {
        assert_eq!(Chunk::of(0, 0), Chunk::InPlace);
        assert_eq!(Chunk::of(0, 1), Chunk::Copy);
        assert_eq!(Chunk::of(0, 64), Chunk::Copy);
    }

    #[test]
    fn a_full_buffer_is_kept() {
        for n in [1, 3, 1200, super::MAX_READ] {
            assert_eq!(Chunk::of(n, n), Chunk::InPlace, "{n}");
        }
    }

    #[test]
    fn frame_headers_between_large_frames_are_kept() {
        // 64 KiB read as 1,200-byte DATA frames with 3-byte headers: 54 headers.
        let body = 54 * 1200;
        assert_eq!(Chunk::of(body, body + 54 * 3), Chunk::InPlace);
        // Exactly 1/32 unused, and one byte more.
        assert_eq!(Chunk::of(3200, 3300), Chunk::InPlace);
        assert_eq!(Chunk::of(3200, 3301), Chunk::Copy);
    }

    #[test]
    fn tiny_frames_are_copied() {
        // 1-byte DATA frames with 2-byte headers: a third of the buffer is body.
        assert_eq!(Chunk::of(21_845, super::MAX_READ), Chunk::Copy);
        assert_eq!(Chunk::of(1, 3), Chunk::Copy);
        // Small reads get no slack at all: 31 bytes read allow none unused.
        assert_eq!(Chunk::of(31, 32), Chunk::Copy);
        assert_eq!(Chunk::of(32, 33), Chunk::InPlace);
    }
}
