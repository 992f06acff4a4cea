//! Per-stream audit figures: what a stream carried and how each side ended, readable while the
//! stream runs and after it ended.

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
}

#[derive(Debug)]
struct Inner {
    audit: StreamAudit,
    opened: Instant,
    ended: Option<Instant>,
}

/// A live handle to one stream's figures: in a server request's extensions and a client
/// response's extensions. Cheap to clone; stays readable after the stream ends.
#[derive(Debug, Clone)]
pub struct StreamStats(Arc<Mutex<Inner>>);

impl StreamStats {
    pub(crate) fn new(stream_id: u64, opened: Instant) -> Self {
        StreamStats(Arc::new(Mutex::new(Inner {
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
            },
            opened,
            ended: None,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Marks the stream over (both directions ended, or its actor gone).
    pub(crate) fn end(&self) {
        let mut g = self.lock();
        if g.ended.is_none() {
            g.ended = Some(Instant::now());
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
