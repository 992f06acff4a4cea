//! Per-stream audit figures: what a stream carried and how each side ended, readable while the
//! stream runs and after it ended.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use troupe_transport::StreamEnd;

/// A copy of one stream's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamAudit {
    /// The QUIC stream ID.
    pub stream_id: u64,
    /// Body bytes we wrote into quiche (headers and framing not counted).
    pub bytes_sent: u64,
    /// Body bytes we received.
    pub bytes_received: u64,
    /// How our sending direction ended, once it did.
    pub send_end: Option<StreamEnd>,
    /// How our receiving direction ended, once it did.
    pub recv_end: Option<StreamEnd>,
    /// Server: from the request's arrival to the first response header section written into
    /// quiche. Client: from the request starting to the first response header section arriving.
    pub time_to_first_byte: Option<Duration>,
    /// How long our first header section waited before quiche took it (stream or connection
    /// flow control, or on a client the peer's stream limit).
    pub headers_wait: Option<Duration>,
    /// How long the stream has lived, or lived: until the connection retired it (both
    /// directions ended and its actor stopped, or the connection closed).
    pub duration: Duration,
    /// The application's code for this stream panicked or failed; the connection reset it.
    pub failed: bool,
    /// Our sending direction's state, as the stream actor names it (`idle`, `open`,
    /// `fin_sent`, ...).
    pub send_state: &'static str,
    /// Our receiving direction's state (`awaiting_headers`, `open`, `fin_received`, ...).
    pub recv_state: &'static str,
    /// Body bytes the stream actor may still hand to the connection.
    pub write_credit: u64,
    /// Body bytes produced and not yet taken by quiche (cut at the credit, or handed over and
    /// waiting for room).
    pub pending_out: u64,
}

struct Inner {
    audit: StreamAudit,
    opened: Instant,
    ended: Option<Instant>,
    /// The request's method and path, for the live tree.
    request: Option<(http::Method, String)>,
    /// The received body's buffer, once there is one (its fill level is in the tree).
    /// Since when quiche has refused this stream's bytes for lack of room (stamped by the
    /// connection's write pass); `None` while it writes freely.
    blocked_since: Option<Instant>,
    /// Weak: the figures may outlive the stream (in the application's hands) and must not
    /// keep unread chunks alive.
    recv_buffer: Option<std::sync::Weak<crate::body::Shared>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("audit", &self.audit)
            .field("request", &self.request)
            .finish()
    }
}

/// A live handle to one stream's figures: every server request and client response has one,
/// in the [`crate::StreamControl`] among its extensions ([`crate::StreamControl::stats`]).
/// Cheap to clone; stays readable after the stream ends.
#[derive(Debug, Clone)]
pub struct StreamStats(Arc<Shared>);

/// The figures, and two flags read without the lock.
#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    /// Whether `inner.blocked_since` is set. Only the connection's write pass changes it, and it
    /// reports every stream it serves on every pass: it locks only when the answer changes.
    blocked: AtomicBool,
    /// The stream actor's cell was handed to the application
    /// ([`crate::StreamControl::actor_cell`]), which may have linked children under it. The
    /// actor asks ractor for its children at the stream's end only then (a lock on a line of
    /// memory the request touches nowhere else).
    cell_lent: AtomicBool,
}

impl StreamStats {
    pub(crate) fn new(stream_id: u64, opened: Instant) -> Self {
        let inner = Mutex::new(Inner {
            audit: StreamAudit {
                stream_id,
                bytes_sent: 0,
                bytes_received: 0,
                send_end: None,
                recv_end: None,
                time_to_first_byte: None,
                headers_wait: None,
                duration: Duration::ZERO,
                failed: false,
                send_state: "idle",
                recv_state: "awaiting_headers",
                write_credit: 0,
                pending_out: 0,
            },
            opened,
            ended: None,
            request: None,
            blocked_since: None,
            recv_buffer: None,
        });
        StreamStats(Arc::new(Shared {
            inner,
            blocked: AtomicBool::new(false),
            cell_lent: AtomicBool::new(false),
        }))
    }

    /// Notes that the stream actor's cell was handed to the application.
    pub(crate) fn lend_cell(&self) {
        self.0.cell_lent.store(true, Ordering::Release);
    }

    /// Whether the stream actor's cell was handed to the application.
    pub(crate) fn cell_lent(&self) -> bool {
        self.0.cell_lent.load(Ordering::Acquire)
    }

    /// Records the request's method and path (shown in the live tree).
    pub(crate) fn set_request(&self, method: http::Method, path: String) {
        self.lock().request = Some((method, path));
    }

    /// The connection's write pass: whether this stream's bytes wait for quiche's room now.
    pub(crate) fn set_blocked(&self, blocked: bool) {
        // One writer (the connection actor): a plain load and store suffice.
        if self.0.blocked.load(Ordering::Relaxed) == blocked {
            return;
        }
        self.0.blocked.store(blocked, Ordering::Relaxed);
        let mut g = self.lock();
        match (blocked, g.blocked_since) {
            (true, None) => g.blocked_since = Some(Instant::now()),
            (false, Some(_)) => g.blocked_since = None,
            _ => {}
        }
    }

    /// Records the received body's buffer (its fill level is shown in the live tree).
    pub(crate) fn set_recv_buffer(&self, shared: Arc<crate::body::Shared>) {
        self.lock().recv_buffer = Some(Arc::downgrade(&shared));
    }

    /// The stream's node of the live tree (the connection adds the route's read credit).
    pub(crate) fn tree_node(
        &self,
        actor: troupe_transport::ActorNode,
        read_credit: Option<u64>,
        redact_path: bool,
    ) -> troupe_transport::StreamSnapshot {
        let g = self.lock();
        let a = &g.audit;
        let direction = |state, bytes, end: Option<StreamEnd>| {
            let (end, code) = end.map(StreamEnd::parts).unzip();
            troupe_transport::DirectionSnapshot::new(state, bytes, end, code.flatten())
        };
        let received_waiting = g
            .recv_buffer
            .as_ref()
            .and_then(std::sync::Weak::upgrade)
            .map_or(0, |b| b.buffered() as u64);
        troupe_transport::StreamSnapshot::new(
            actor,
            a.stream_id,
            g.request.as_ref().map(|(m, _)| m.to_string()),
            g.request.as_ref().map(|(_, p)| {
                if redact_path {
                    "<redacted>".to_string()
                } else {
                    p.clone()
                }
            }),
            direction(a.send_state, a.bytes_sent, a.send_end),
            direction(a.recv_state, a.bytes_received, a.recv_end),
            a.write_credit,
            read_credit,
            a.pending_out + received_waiting,
        )
        .with_blocked_for(g.blocked_since.map(|t| t.elapsed().as_secs_f64()))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The figures now.
    pub fn snapshot(&self) -> StreamAudit {
        let g = self.lock();
        let mut a = g.audit.clone();
        a.duration = g.ended.unwrap_or_else(Instant::now) - g.opened;
        a
    }

    /// Updates the figures (crate-internal writers: the stream actor and the connection).
    pub(crate) fn update(&self, f: impl FnOnce(&mut StreamAudit)) {
        f(&mut self.lock().audit);
    }

    /// Records the first header section written (server) or received (client) now, after
    /// waiting `wait` for quiche (server) if known.
    pub(crate) fn first_headers(&self, now: Instant, wait: Option<Duration>) {
        let mut g = self.lock();
        if g.audit.time_to_first_byte.is_none() {
            g.audit.time_to_first_byte = Some(now - g.opened);
        }
        if wait.is_some() && g.audit.headers_wait.is_none() {
            g.audit.headers_wait = wait;
        }
    }

    /// The connection wrote `written` body bytes of the stream in all, part of what its actor
    /// handed over before it parked with its last hand-over (the actor keeps these figures
    /// until it parks; the connection keeps them after). What was handed over and not written
    /// stays pending.
    pub(crate) fn tail_written(&self, written: u64) {
        let mut g = self.lock();
        let a = &mut g.audit;
        // Sent and pending always add up to what the actor handed over.
        let handed = a.bytes_sent + a.pending_out;
        a.bytes_sent = written;
        a.pending_out = handed.saturating_sub(written);
    }

    /// How the sending direction of a stream whose actor parked with its last hand-over ended
    /// (a terminal state), with `written` body bytes written into quiche in all.
    pub(crate) fn tail_ended(&self, end: crate::stream::SendState, written: u64) {
        let mut g = self.lock();
        let a = &mut g.audit;
        a.bytes_sent = written;
        a.pending_out = 0;
        a.send_end = end.end();
        a.send_state = end.name();
    }

    /// Marks the stream over at `now` (both directions ended, or its actor gone).
    pub(crate) fn end(&self, now: Instant) {
        let mut g = self.lock();
        if g.ended.is_none() {
            g.ended = Some(now);
        }
    }

    pub(crate) fn summary(&self) -> troupe_transport::StreamSummary {
        let a = self.snapshot();
        let mut s = troupe_transport::StreamSummary::default();
        s.stream_id = a.stream_id;
        s.bytes_sent = a.bytes_sent;
        s.bytes_received = a.bytes_received;
        s.send = a.send_end;
        s.recv = a.recv_end;
        s.failed = a.failed;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since(s: &StreamStats) -> Option<Instant> {
        s.lock().blocked_since
    }

    /// The write pass reports every stream on every pass; the time a stream became blocked is
    /// kept across repeated reports, cleared when it is unblocked, and taken anew after.
    #[test]
    fn blocked_since_follows_changes_not_reports() {
        let s = StreamStats::new(0, Instant::now());
        // Unblocked from the start, reported so any number of times: nothing recorded.
        for _ in 0..3 {
            s.set_blocked(false);
        }
        assert_eq!(since(&s), None);
        s.set_blocked(true);
        let first = since(&s).expect("blocked");
        for _ in 0..1000 {
            s.set_blocked(true);
        }
        assert_eq!(
            since(&s),
            Some(first),
            "repeated reports keep the first time"
        );
        s.set_blocked(false);
        assert_eq!(since(&s), None);
        std::thread::sleep(Duration::from_millis(2));
        s.set_blocked(true);
        assert!(since(&s).expect("blocked again") > first);
    }

    /// Lending the actor's cell is seen through every clone of the stats.
    #[test]
    fn a_lent_cell_is_seen_by_every_clone() {
        let s = StreamStats::new(4, Instant::now());
        let c = s.clone();
        assert!(!s.cell_lent());
        c.lend_cell();
        assert!(s.cell_lent() && c.cell_lent());
    }
}
