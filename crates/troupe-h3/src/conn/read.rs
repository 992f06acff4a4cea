//! The read path: body bytes from quiche to stream actors, within each stream's read credit,
//! with the quiche subtleties it must work around (edge-triggered `Data` events, resets that
//! look like FINs).

use bytes::Bytes;
use quiche::h3;
use tracing::debug;

use super::route::ReadCredit;
use super::H3App;
use crate::body::CHUNK_OVERHEAD;
use crate::stream::StreamMsg;

/// Largest single read from quiche for one stream. 64 KiB: many packets' worth of body in one
/// chunk and one message.
pub(super) const MAX_READ: usize = 64 * 1024;

thread_local! {
    /// The buffer reads from quiche land in, one per thread for all the connections whose
    /// actors run there: a read copies out exactly what it took before anything else runs, so
    /// nothing is shared across a read. One per connection cost every connection 64 KiB,
    /// zeroed in its handshake.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; MAX_READ]);
}

/// For a stream quiche reports finished: `Ok` for a real FIN, `Err(code)` if the peer reset it.
///
/// quiche marks a reset stream finished as well, and `h3::Connection::recv_body` can queue a
/// `Finished` event for it; the pending reset is still in quiche's receive buffer, so a
/// zero-length read tells: a reset stream yields `StreamReset`, a finished one nothing.
pub(super) fn end_of_stream(conn: &mut quiche::Connection, stream_id: u64) -> Result<(), u64> {
    let mut probe = [0u8; 1];
    match conn.stream_recv(stream_id, &mut probe[..0]) {
        Err(quiche::Error::StreamReset(code)) => Err(code),
        _ => Ok(()),
    }
}

impl H3App {
    /// Reads a stream's body from quiche while it has credit, and hands it over in one message
    /// (with the FIN or the reset behind it, if that was reached).
    pub(super) fn read_stream(&mut self, conn: &mut quiche::Connection, stream_id: u64) {
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
        READ_BUF.with_borrow_mut(|buf| {
            while credit > CHUNK_OVERHEAD {
                let want = (credit - CHUNK_OVERHEAD).min(MAX_READ);
                match h3.recv_body(conn, stream_id, &mut buf[..want]) {
                    Ok(0) => break,
                    Ok(n) => {
                        credit -= crate::body::charge(n);
                        // Exactly sized: a small read never pins a large buffer.
                        chunks.push(Bytes::copy_from_slice(&buf[..n]));
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
        });
        // After a reset quiche reports the stream finished too: tell the two apart.
        if reset.is_none() && conn.stream_finished(stream_id) {
            reset = end_of_stream(conn, stream_id).err();
        }
        let fin = reset.is_none() && conn.stream_finished(stream_id);
        // quiche's Data event stays "triggered" when a read ends on a partial frame header
        // (bytes readable, no DATA payload yet): no new Data event would come for the rest of
        // the frame. Such a stream is read again after the next h3::poll. (Out of credit with
        // bytes left is different: the returning credit resumes the read.)
        if credit > CHUNK_OVERHEAD
            && !fin
            && reset.is_none()
            && conn.stream_readable(stream_id)
            && !self.rescan.contains(&stream_id)
        {
            self.rescan.push(stream_id);
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
