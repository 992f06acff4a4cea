//! Graceful shutdown of a server connection (RFC 9114 §5.2): GOAWAY naming the first request
//! stream not processed, then a close once the last stream is done and delivered.

use tracing::debug;
use troupe_transport::ConnCx;

use super::{H3App, H3Msg, Side};

/// How soon a drain check that found bytes still unacknowledged looks again. 25 ms: a few
/// loopback round trips, and a handful of wake-ups per second on a real path. The check is
/// re-armed only while draining with no stream left, and the drain deadline bounds it; without
/// it the close would wait for a packet that may never come (the last one may have arrived
/// before the last stream actor ended).
const DRAIN_RECHECK: std::time::Duration = std::time::Duration::from_millis(25);

/// A server's GOAWAY: not asked for, waiting for stream capacity on the control stream, or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Goaway {
    NotSent,
    Pending(u64),
    Sent(u64),
}

impl Goaway {
    /// The first request stream ID that will not be processed, once a GOAWAY is decided.
    pub(super) fn first_refused(self) -> Option<u64> {
        match self {
            Goaway::NotSent => None,
            Goaway::Pending(id) | Goaway::Sent(id) => Some(id),
        }
    }
}

impl H3App {
    /// Server: decides a GOAWAY (once) refusing every request after the highest accepted one.
    pub(super) fn start_goaway(&mut self, cx: &mut ConnCx<'_, H3Msg>) {
        let Side::Server(s) = &mut self.side else {
            return;
        };
        if s.goaway == Goaway::NotSent {
            // RFC 9114 §5.2: the first request stream we will not process. The highest accepted
            // request may be above the latest one (streams can arrive out of order).
            s.goaway = Goaway::Pending(s.max_request_id.map_or(0, |m| m + 4));
            self.try_send_goaway(cx);
        }
    }

    /// Puts a decided GOAWAY on the control stream; retried every flush while the connection
    /// has no send capacity for it.
    pub(super) fn try_send_goaway(&mut self, cx: &mut ConnCx<'_, H3Msg>) {
        let Side::Server(s) = &mut self.side else {
            return;
        };
        let Goaway::Pending(id) = s.goaway else {
            return;
        };
        let Some(h3) = self.h3.as_mut() else { return };
        match h3.send_goaway(cx.conn, id) {
            Ok(()) => debug!(id, "GOAWAY sent"),
            Err(quiche::h3::Error::StreamBlocked) | Err(quiche::h3::Error::Done) => return,
            Err(e) => debug!("send_goaway: {e}"),
        }
        s.goaway = Goaway::Sent(id);
        self.check_drained();
    }

    /// Whether quiche has collected every stream whose actor ended: all our response bytes are
    /// acknowledged (a close before that would discard them).
    pub(super) fn all_delivered(&mut self, conn: &mut troupe_transport::QuicConnection) -> bool {
        let Side::Server(s) = &mut self.side else {
            return true;
        };
        let mut scratch = [0u8; 4096];
        s.unacked.prune(|id| {
            // A stream whose reading we stopped (STOP_SENDING) stays readable once the peer's
            // RESET_STREAM (or late data) arrives, and quiche collects a readable stream only
            // when it is read: read and discard what is left, so a complete stream is
            // collected instead of holding the drain until its deadline. Bounded: at most
            // 64 KiB per check.
            for _ in 0..16 {
                match conn.stream_recv(id, &mut scratch) {
                    Ok((_, false)) => {}
                    Ok((_, true)) | Err(_) => break,
                }
            }
            !matches!(
                conn.stream_capacity(id),
                Err(quiche::Error::InvalidStreamState(_))
            )
        })
    }

    /// Server: a stream's actor ended; its bytes may still be unacknowledged.
    pub(super) fn note_ended(&mut self, conn: &mut troupe_transport::QuicConnection, id: u64) {
        let Side::Server(s) = &mut self.side else {
            return;
        };
        if s.unacked.note(id) {
            self.all_delivered(conn);
        }
    }

    /// After GOAWAY: ask for a close check once no stream is left. The check message is sent
    /// from the next flush (`before_flush`), so it is handled after that flush put the GOAWAY
    /// on the wire.
    pub(super) fn check_drained(&mut self) {
        let empty = self.routes.is_empty();
        if let Side::Server(s) = &mut self.side {
            if matches!(s.goaway, Goaway::Sent(_)) && empty {
                s.drain_check_due = true;
            }
        }
    }

    /// The drain check: close (H3_NO_ERROR) if GOAWAY went out, no stream is left and every
    /// ended stream's bytes are acknowledged.
    pub(super) fn drain_check(&mut self, cx: &mut ConnCx<'_, H3Msg>) {
        let sent = matches!(&self.side, Side::Server(s) if matches!(s.goaway, Goaway::Sent(_)));
        if !sent || !self.routes.is_empty() {
            return;
        }
        if self.all_delivered(cx.conn) {
            debug!("drained after GOAWAY: closing");
            let _ = cx.conn.close(true, crate::codes::H3_NO_ERROR, b"");
            return;
        }
        if let Side::Server(s) = &mut self.side {
            if !s.recheck_armed {
                s.recheck_armed = true;
                let me = cx.mailbox.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(DRAIN_RECHECK).await;
                    let _ = me.cast(troupe_transport::ConnMsg::App(H3Msg::DrainRecheck));
                });
            }
        }
    }
}
