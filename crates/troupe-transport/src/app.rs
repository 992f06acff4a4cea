//! The contract between a connection actor and the application protocol running over it
//! (HTTP/3 in `troupe-h3`). The connection actor does I/O and timers; the application reacts.

use std::future::Future;
use std::time::Instant;

use ractor::{ActorRef, SupervisionEvent};

use crate::connection::ConnMsg;
use crate::outbox::ConnMailbox;
use crate::supervision::{FailureKind, FailureRing};

/// Everything an application hook may touch while the connection actor runs it.
pub struct ConnCx<'a, M: Send + 'static> {
    /// The QUIC connection. Hooks run inside the connection actor, so this is exclusive.
    pub conn: &'a mut crate::QuicConnection,
    /// The connection actor itself: the supervisor for child actors.
    pub myself: &'a ActorRef<ConnMsg<M>>,
    /// The connection actor's counted mailbox: children and the application send through it,
    /// so the snapshot sees its depth.
    pub mailbox: &'a ConnMailbox<M>,
    /// quiche's trace id for this connection, for log fields.
    pub trace_id: &'a str,
    /// The endpoint's metrics sink.
    pub metrics: &'a dyn crate::metrics::Metrics,
    pub(crate) failures: &'a mut FailureRing,
    pub(crate) endpoint: &'a crate::stats::EndpointStats,
    /// The time of this turn of the connection actor, read once (see [`TurnClock`]).
    pub clock: &'a mut TurnClock,
}

/// The time of one turn of a connection actor: the clock is read on the first
/// [`TurnClock::now`] of the turn and that instant serves the rest of it, as nginx caches its
/// time once per event-loop pass.
///
/// Why: a small request's connection used to read the clock three times (its stream opened,
/// its first response headers written, its end), each a vDSO call that costs about as much
/// here as the rest of the bookkeeping it stamps; now they share the turn's one read (the
/// stream actor's stamp of its hand-over is its own). A turn lasts microseconds
/// (hooks must not block), so the figures it stamps (a stream's time to first byte, how long
/// its headers waited, its duration) lose nothing anyone reads; a figure that spans turns
/// (headers that waited for flow control) still measures the wait. Reset when each turn
/// begins, so no instant outlives the turn that read it.
#[derive(Debug, Default)]
pub struct TurnClock(Option<Instant>);

impl TurnClock {
    /// This turn's time: the clock read now if nothing read it earlier in the turn.
    pub fn now(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }

    /// A new turn begins: the next [`TurnClock::now`] reads the clock.
    pub(crate) fn reset(&mut self) {
        self.0 = None;
    }
}

impl<M: Send + 'static> ConnCx<'_, M> {
    /// Records that a child (`who`, e.g. `"stream 4"`, of kind `child`) failed (`why`): in
    /// this connection's failure ring and in the endpoint's, both shown by the snapshot.
    pub fn record_child_failure(&mut self, child: crate::ActorKind, who: &str, why: &str) {
        self.failures.record(who, child, FailureKind::Failed, why);
        self.endpoint.record_failure(
            format!("{who} on connection {}", self.trace_id),
            child,
            FailureKind::Failed,
            why,
        );
    }
}

/// An application error that closes the whole connection with an application error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppError {
    /// The application error code put in CONNECTION_CLOSE (e.g. an HTTP/3 error code).
    pub code: u64,
    /// Reason phrase.
    pub reason: String,
}

/// An application protocol over one QUIC connection.
///
/// Every hook runs inside the connection actor's message handler: it must not block, and it
/// should not await anything but spawning child actors. The connection actor flushes packets
/// after every turn, so hooks only queue work on `cx.conn`.
pub trait ConnectionApp: Send + 'static {
    /// Messages the application (and its child actors) send to the connection actor,
    /// delivered to [`ConnectionApp::on_message`].
    type Msg: Send + 'static;

    /// The handshake completed; `cx.conn.is_established()` is true.
    fn on_established(
        &mut self,
        cx: &mut ConnCx<'_, Self::Msg>,
    ) -> impl Future<Output = Result<(), AppError>> + Send;

    /// Packets were fed to quiche on an established connection: read what became readable.
    fn on_readable(
        &mut self,
        cx: &mut ConnCx<'_, Self::Msg>,
    ) -> impl Future<Output = Result<(), AppError>> + Send;

    /// One packet of a batch was fed to quiche on an established connection and more of the
    /// batch follow; [`ConnectionApp::on_readable`] still runs once the batch is in. An
    /// application may read here what the packet made readable, so that what it reads per
    /// call stays small: quiche's HTTP/3 `poll` lists every readable stream on each call, so
    /// reading a batch of many new requests at its end costs a pass over all of them per
    /// request. Only what is cheap per packet belongs here. The default does nothing.
    fn on_packet_fed(
        &mut self,
        cx: &mut ConnCx<'_, Self::Msg>,
    ) -> impl Future<Output = Result<(), AppError>> + Send {
        let _ = cx;
        std::future::ready(Ok(()))
    }

    /// A message for the application arrived.
    fn on_message(
        &mut self,
        cx: &mut ConnCx<'_, Self::Msg>,
        msg: Self::Msg,
    ) -> impl Future<Output = Result<(), AppError>> + Send;

    /// A child actor spawned under the connection started, stopped or failed.
    fn on_child_event(
        &mut self,
        cx: &mut ConnCx<'_, Self::Msg>,
        event: SupervisionEvent,
    ) -> impl Future<Output = Result<(), AppError>> + Send;

    /// Called before every flush: move queued application data into quiche.
    fn before_flush(&mut self, cx: &mut ConnCx<'_, Self::Msg>) -> Result<(), AppError>;

    /// The connection is closed (or the actor is stopping). Data quiche already received (and
    /// acknowledged) may still be read from `cx.conn` and handed to children: they are drained
    /// (their queued messages handled) right after, not killed.
    ///
    /// `info` holds the connection's final figures; `info.close` is always set here.
    fn on_closed(
        &mut self,
        cx: &mut ConnCx<'_, Self::Msg>,
        info: &crate::connection::ConnectionInfo,
    );

    /// The application's children (streams) for the live tree. Runs inside the connection
    /// actor between turns: read shared figures, never message a child. Default: none.
    fn streams_snapshot(&self) -> Vec<crate::snapshot::StreamSnapshot> {
        Vec::new()
    }

    /// Datagrams the application dropped on this connection, by reason, for the live tree.
    /// Default: none.
    fn datagram_drops(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::TurnClock;
    use std::time::Instant;

    #[test]
    fn a_turn_reads_the_clock_once_and_a_new_turn_reads_it_again() {
        let before = Instant::now();
        let mut clock = TurnClock::default();
        // Nothing read yet: the first read is the clock's.
        let first = clock.now();
        assert!(first >= before);
        // One read, then many: the turn's instant every time.
        for _ in 0..3 {
            assert_eq!(clock.now(), first);
        }
        // A new turn reads the clock anew, never earlier than the last.
        while Instant::now() <= first {
            std::hint::spin_loop();
        }
        clock.reset();
        let second = clock.now();
        assert!(second > first, "a reset clock kept the old turn's time");
        assert_eq!(clock.now(), second);
        // A reset with no read in between leaves nothing behind.
        clock.reset();
        clock.reset();
        assert!(clock.now() >= second);
    }
}
