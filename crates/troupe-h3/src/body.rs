//! Message bodies: [`Body`] is what we send, [`RecvBody`] is what we receive.
//!
//! A [`RecvBody`] reads from a buffer owned by its stream actor. Bytes reach that buffer only
//! against credit: the connection actor reads a stream from quiche only while the stream has
//! credit, and the reader returns credit to the connection as it consumes. So the bytes
//! buffered for one stream never exceed its receive window ([`crate::H3Settings::recv_window`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use troupe_transport::ConnMsg;
use troupe_transport::{ConnMailbox, Tracked};

use crate::conn::H3Msg;
use crate::stream::StreamMsg;

/// Credit charged per received chunk on top of its length: roughly what a chunk costs in memory
/// besides its bytes (the `Bytes` handle, its allocation, its queue slot). It keeps a stream's
/// memory within its window even when a peer sends tiny DATA frames.
pub(crate) const CHUNK_OVERHEAD: usize = 64;

/// Credit a chunk of `n` body bytes costs.
pub(crate) fn charge(n: usize) -> usize {
    n + CHUNK_OVERHEAD
}

/// When a reader hands consumed credit back: once a quarter of the window has gathered, and
/// never sooner (not even when the reader has caught up), so a steady upload costs the
/// connection one `Credit` message per quarter window instead of one per chunk it delivered.
///
/// That can never starve the stream. After each chunk it consumes, a reader holds less than a
/// quarter window unreported; so once its buffer is empty (and its `Credit` messages are
/// handled) the connection holds more than three quarters of the window, which for any valid
/// window (at least `2 * CHUNK_OVERHEAD + 1`, [`crate::H3Settings::validate`]) is more than the
/// [`CHUNK_OVERHEAD`] a read needs. A stream stalls only while its reader has not consumed what
/// it was given, and consuming it hands the credit back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CreditReturn {
    unreported: usize,
    report_at: usize,
}

impl CreditReturn {
    /// For a stream whose receive window is `window` bytes.
    pub(crate) fn new(window: usize) -> Self {
        CreditReturn {
            unreported: 0,
            report_at: (window / 4).max(1),
        }
    }

    /// The reader consumed `n` bytes of credit: `Some(bytes)` to hand back now, or `None` to
    /// keep gathering.
    pub(crate) fn consumed(&mut self, n: usize) -> Option<usize> {
        self.unreported = self.unreported.saturating_add(n);
        (self.unreported >= self.report_at).then(|| std::mem::take(&mut self.unreported))
    }
}

/// A boxed error, as body streams carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a received body ended early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The peer reset the stream (RESET_STREAM) with this code.
    #[error("stream reset by peer with code 0x{0:x}")]
    Reset(u64),
    /// The connection closed (or the stream actor stopped) before the body ended.
    #[error("body aborted: {0}")]
    Aborted(String),
}

/// One frame of an outgoing body: bytes, or the trailer section that ends it.
#[derive(Debug, Clone)]
pub enum Frame {
    /// Body bytes.
    Data(Bytes),
    /// Trailers; nothing may follow them.
    Trailers(http::HeaderMap),
}

/// An outgoing body: empty, one buffer, a stream of chunks, or a stream of frames (which may end
/// with trailers).
pub struct Body {
    kind: Kind,
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<Frame, BoxError>> + Send>>;

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Stream(Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>),
    Frames(FrameStream),
    /// A received body passed on (echo, proxying): its bytes, then its trailers if any.
    Recv(RecvBody, bool),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Empty => f.write_str("Body::Empty"),
            Kind::Full(b) => write!(f, "Body::Full({} bytes)", b.as_ref().map_or(0, |b| b.len())),
            Kind::Stream(_) => f.write_str("Body::Stream"),
            Kind::Frames(_) => f.write_str("Body::Frames"),
            Kind::Recv(r, _) => write!(f, "Body::Recv({r:?})"),
        }
    }
}

impl Body {
    /// No body: the headers carry FIN.
    pub fn empty() -> Self {
        Body { kind: Kind::Empty }
    }

    /// A body produced by a stream of chunks; an `Err` item resets the stream
    /// (H3_INTERNAL_ERROR).
    pub fn from_stream<S, E>(s: S) -> Self
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        use futures::TryStreamExt;
        Body {
            kind: Kind::Stream(Box::pin(s.map_err(Into::into))),
        }
    }

    /// A body of frames: data, optionally ended by trailers. An `Err` item resets the stream.
    pub fn from_frames<S, E>(s: S) -> Self
    where
        S: Stream<Item = Result<Frame, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        use futures::TryStreamExt;
        Body {
            kind: Kind::Frames(Box::pin(s.map_err(Into::into))),
        }
    }

    /// A body fed through a bounded channel of `capacity` frames. Dropping the [`BodySender`]
    /// without [`BodySender::finish`] (or trailers) resets the stream with
    /// H3_REQUEST_CANCELLED, so a peer never mistakes a cut-off body for a complete one.
    pub fn channel(capacity: usize) -> (BodySender, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = finished.clone();
        let s = futures::stream::unfold(Some(rx), move |rx| {
            let done = done.clone();
            async move {
                let mut rx = rx?;
                match rx.recv().await {
                    Some(f) => Some((Ok(f), Some(rx))),
                    None if done.load(std::sync::atomic::Ordering::Acquire) => None,
                    None => Some((Err(BodyCancelled), None)),
                }
            }
        });
        (BodySender { tx, finished }, Body::from_frames(s))
    }

    /// True when the body is known to have no bytes, so the headers can carry FIN.
    pub fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Kind::Stream(_) | Kind::Frames(_) | Kind::Recv(..) => false,
        }
    }

    /// The next frame: bytes, trailers, or the end.
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame, BoxError>>> {
        match &mut self.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::Data(b))),
            ),
            Kind::Stream(s) => s
                .as_mut()
                .poll_next(cx)
                .map(|o| o.map(|r| r.map(Frame::Data))),
            Kind::Frames(s) => s.as_mut().poll_next(cx),
            Kind::Recv(r, trailers_done) => match Pin::new(&mut *r).poll_next(cx) {
                Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::Data(b)))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) if !*trailers_done => {
                    *trailers_done = true;
                    Poll::Ready(r.trailers().map(|t| Ok(Frame::Trailers(t))))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// The body's bytes; trailers, if any, are skipped.
impl Stream for Body {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match self.poll_frame(cx) {
                Poll::Ready(Some(Ok(Frame::Data(b)))) => Poll::Ready(Some(Ok(b))),
                Poll::Ready(Some(Ok(Frame::Trailers(_)))) => continue,
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body {
            kind: Kind::Full(Some(b)),
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(b: Vec<u8>) -> Self {
        Bytes::from(b).into()
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Bytes::from(s).into()
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Bytes::from_static(s.as_bytes()).into()
    }
}

impl From<&'static [u8]> for Body {
    fn from(s: &'static [u8]) -> Self {
        Bytes::from_static(s).into()
    }
}

/// Passes a received body on, bytes and trailers.
impl From<RecvBody> for Body {
    fn from(r: RecvBody) -> Self {
        Body {
            kind: Kind::Recv(r, false),
        }
    }
}

/// The error a [`Body::channel`] body ends with when its [`BodySender`] is dropped without
/// [`BodySender::finish`]: the stream is reset with H3_REQUEST_CANCELLED rather than ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the body's sender was dropped before finishing the body")]
pub struct BodyCancelled;

/// Why [`BodySender::try_send_data`] did not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrySend {
    /// The channel is full now.
    #[error("the body's channel is full")]
    Full,
    /// The stream is gone.
    #[error("the body's stream is gone")]
    Closed,
}

/// The sending end of a [`Body::channel`]. Sends wait while the channel is full, so a producer
/// never runs ahead of the peer by more than the channel plus the stream's send window.
///
/// Clones share the body: it ends when every clone is gone, normally (FIN) if any of them
/// called [`BodySender::finish`], else with a reset (H3_REQUEST_CANCELLED).
#[derive(Clone)]
pub struct BodySender {
    tx: tokio::sync::mpsc::Sender<Frame>,
    finished: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for BodySender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodySender")
    }
}

impl BodySender {
    /// Sends body bytes; fails (returning them) once the stream is gone.
    pub async fn send_data(&self, data: Bytes) -> Result<(), Bytes> {
        self.tx
            .send(Frame::Data(data))
            .await
            .map_err(|e| match e.0 {
                Frame::Data(b) => b,
                Frame::Trailers(_) => Bytes::new(),
            })
    }

    /// Sends trailers, which end the body.
    pub async fn send_trailers(self, trailers: http::HeaderMap) -> Result<(), http::HeaderMap> {
        self.finished
            .store(true, std::sync::atomic::Ordering::Release);
        self.tx
            .send(Frame::Trailers(trailers))
            .await
            .map_err(|e| match e.0 {
                Frame::Trailers(t) => t,
                Frame::Data(_) => http::HeaderMap::new(),
            })
    }

    /// Sends body bytes if the channel has room now, without waiting: for producers that
    /// would rather drop (and count) than wait, such as a datagram flow's capsules.
    pub fn try_send_data(&self, data: Bytes) -> Result<(), TrySend> {
        use tokio::sync::mpsc::error::TrySendError;
        self.tx.try_send(Frame::Data(data)).map_err(|e| match e {
            TrySendError::Full(_) => TrySend::Full,
            TrySendError::Closed(_) => TrySend::Closed,
        })
    }

    /// Whether nothing will take the body any more (the stream ended or was reset).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves once nothing will take the body any more (the stream ended or was reset).
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Ends the body normally (FIN).
    pub fn finish(self) {
        self.finished
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// How a received body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    Fin,
    Reset(u64),
    Aborted(String),
}

#[derive(Default)]
struct Inner {
    chunks: VecDeque<Bytes>,
    buffered: usize,
    max_buffered: usize,
    received: u64,
    end: Option<End>,
    waker: Option<Waker>,
    trailers: Option<http::HeaderMap>,
}

/// The buffer between a stream actor (writer) and a [`RecvBody`] (reader).
#[derive(Default)]
pub(crate) struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    /// Bytes received and not yet read by the application.
    pub(crate) fn buffered(&self) -> usize {
        self.lock().buffered
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock means a panic while holding it; the data (plain counters and
        // buffers) is still consistent, so carry on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The stream actor's end of the buffer. Dropping it before the end (the actor stopped or
/// failed) aborts the body, so a reader never waits forever.
pub(crate) struct BodyWriter {
    shared: Arc<Shared>,
}

impl BodyWriter {
    pub(crate) fn new() -> (BodyWriter, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        (
            BodyWriter {
                shared: shared.clone(),
            },
            shared,
        )
    }

    pub(crate) fn push(&self, chunks: Vec<Bytes>) {
        let mut g = self.shared.lock();
        if g.end.is_some() {
            return;
        }
        for c in chunks {
            g.buffered += c.len();
            g.received += c.len() as u64;
            g.chunks.push_back(c);
        }
        g.max_buffered = g.max_buffered.max(g.buffered);
        if let Some(w) = g.waker.take() {
            w.wake();
        }
    }

    pub(crate) fn set_trailers(&self, t: http::HeaderMap) {
        self.shared.lock().trailers = Some(t);
    }

    pub(crate) fn end(&self, end: End) {
        let mut g = self.shared.lock();
        if g.end.is_none() {
            g.end = Some(end);
            if let Some(w) = g.waker.take() {
                w.wake();
            }
        }
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        self.end(End::Aborted("stream ended before the body".into()));
    }
}

/// Figures about a received body, readable at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RecvBodyStats {
    /// Bytes received from the peer so far.
    pub received: u64,
    /// Bytes buffered now (received, not yet read).
    pub buffered: usize,
    /// The most bytes ever buffered at once.
    pub max_buffered: usize,
}

/// A received body (request body on a server, response body on a client).
///
/// Read it as a [`Stream`] of chunks, with [`RecvBody::chunk`], or whole with
/// [`RecvBody::collect`]. Dropping it before the end tells the peer to stop sending
/// (STOP_SENDING with H3_REQUEST_CANCELLED).
pub struct RecvBody {
    /// The buffer the stream actor fills; `None` for a body that ended with the message head
    /// (its HEADERS frame carried FIN): nothing to buffer, report or cancel.
    shared: Option<Arc<Shared>>,
    stream_id: u64,
    /// Which of its stream actor's streams this is (what `RecvDropped` names).
    turn: crate::stream::Turn,
    conn: Option<ConnMailbox<H3Msg>>,
    actor: Option<Tracked<StreamMsg>>,
    /// The consumed credit not yet handed back.
    credit: CreditReturn,
    /// The ending error was yielded: the stream is over (fused), not an error forever.
    errored: bool,
}

impl std::fmt::Debug for RecvBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBody")
            .field("stream_id", &self.stream_id)
            .field("stats", &self.stats())
            .finish()
    }
}

impl RecvBody {
    pub(crate) fn new(
        shared: Arc<Shared>,
        stream_id: u64,
        turn: crate::stream::Turn,
        conn: ConnMailbox<H3Msg>,
        actor: Tracked<StreamMsg>,
        window: usize,
    ) -> Self {
        RecvBody {
            shared: Some(shared),
            stream_id,
            turn,
            conn: Some(conn),
            actor: Some(actor),
            errored: false,
            credit: CreditReturn::new(window),
        }
    }

    /// The body of a message whose head carried FIN: already over, empty, without trailers.
    /// Holds no buffer and no actor reference (most GET requests: one allocation and two
    /// reference counts less per request).
    pub(crate) fn ended(stream_id: u64, turn: crate::stream::Turn) -> Self {
        RecvBody {
            shared: None,
            stream_id,
            turn,
            conn: None,
            actor: None,
            errored: false,
            credit: CreditReturn::new(1),
        }
    }

    /// The QUIC stream this body arrives on.
    pub fn stream_id(&self) -> u64 {
        self.stream_id
    }

    /// Buffer figures for this body.
    pub fn stats(&self) -> RecvBodyStats {
        let Some(shared) = &self.shared else {
            return RecvBodyStats::default();
        };
        let g = shared.lock();
        RecvBodyStats {
            received: g.received,
            buffered: g.buffered,
            max_buffered: g.max_buffered,
        }
    }

    /// Trailers, once the body has ended (if the peer sent any).
    pub fn trailers(&self) -> Option<http::HeaderMap> {
        self.shared.as_ref()?.lock().trailers.clone()
    }

    /// The next chunk; `None` at the end of the body.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, BodyError>> {
        futures::StreamExt::next(self).await
    }

    /// Reads the whole body.
    pub async fn collect(mut self) -> Result<Bytes, BodyError> {
        let mut out = BytesMut::new();
        while let Some(c) = self.chunk().await {
            out.extend_from_slice(&c?);
        }
        Ok(out.freeze())
    }

    fn consumed(&mut self, n: usize) {
        if let (Some(bytes), Some(conn)) = (self.credit.consumed(n), &self.conn) {
            let _ = conn.cast(ConnMsg::App(H3Msg::Credit {
                stream_id: self.stream_id,
                bytes,
            }));
        }
    }
}

impl Stream for RecvBody {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.errored {
            return Poll::Ready(None);
        }
        let Some(shared) = &self.shared else {
            return Poll::Ready(None);
        };
        let (chunk, end) = {
            let mut g = shared.lock();
            match g.chunks.pop_front() {
                Some(c) => {
                    g.buffered -= c.len();
                    (Some(c), None)
                }
                None => match &g.end {
                    Some(e) => (None, Some(e.clone())),
                    None => {
                        g.waker = Some(cx.waker().clone());
                        (None, None)
                    }
                },
            }
        };
        match (chunk, end) {
            (Some(c), _) => {
                self.consumed(charge(c.len()));
                Poll::Ready(Some(Ok(c)))
            }
            (None, Some(End::Fin)) => {
                self.conn = None;
                Poll::Ready(None)
            }
            (None, Some(End::Reset(code))) => {
                self.errored = true;
                Poll::Ready(Some(Err(BodyError::Reset(code))))
            }
            (None, Some(End::Aborted(why))) => {
                self.errored = true;
                Poll::Ready(Some(Err(BodyError::Aborted(why))))
            }
            // Nothing buffered: the stream actor wakes us with the next chunk (the credit
            // gathered so far stays here: see `CreditReturn`).
            (None, None) => Poll::Pending,
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        let ended = self.shared.as_ref().is_none_or(|s| s.lock().end.is_some());
        if !ended {
            if let Some(a) = &self.actor {
                let _ = a.cast(StreamMsg::RecvDropped(self.turn));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nothing_consumed_hands_nothing_back() {
        let mut c = CreditReturn::new(256 * 1024);
        assert_eq!(c.consumed(0), None);
        assert_eq!(c.consumed(0), None);
    }

    #[test]
    fn credit_goes_back_a_quarter_window_at_a_time() {
        let mut c = CreditReturn::new(400);
        // One chunk of a quarter: at once.
        assert_eq!(c.consumed(100), Some(100));
        // Three smaller ones gather, the third crossing the quarter hands all three back.
        assert_eq!(c.consumed(40), None);
        assert_eq!(c.consumed(40), None);
        assert_eq!(c.consumed(40), Some(120));
        // And it starts gathering from zero again.
        assert_eq!(c.consumed(99), None);
        assert_eq!(c.consumed(1), Some(100));
    }

    #[test]
    fn the_smallest_and_the_largest_windows() {
        // A window under four bytes still has a quarter of one byte.
        let mut c = CreditReturn::new(1);
        assert_eq!(c.consumed(1), Some(1));
        let mut c = CreditReturn::new(0);
        assert_eq!(c.consumed(0), None);
        assert_eq!(c.consumed(1), Some(1));
        // The largest window: gathering saturates rather than wrapping.
        let mut c = CreditReturn::new(usize::MAX);
        assert_eq!(c.consumed(usize::MAX / 8), None);
        assert_eq!(c.consumed(usize::MAX), Some(usize::MAX));
    }

    /// A reader that catches up with every chunk (its buffer empty between them) hands credit
    /// back a quarter window at a time, not once per chunk: ten chunks cost two `Credit`
    /// messages, and what it consumed since stays with it.
    #[tokio::test]
    async fn a_reader_that_catches_up_hands_credit_back_by_quarters() {
        use crate::test_actors::sink;
        use futures::FutureExt;
        use troupe_transport::{ActorKind, ActorMeter, Outbox};
        let conn = sink::<ConnMsg<H3Msg>>().await;
        let actor = sink::<StreamMsg>().await;
        let outbox = Arc::new(Outbox::new());
        let mailbox = ConnMailbox::new(
            Tracked::new(
                conn.clone(),
                ActorMeter::new(ActorKind::Connection, &["any"]),
            ),
            outbox.clone(),
        );
        let (writer, shared) = BodyWriter::new();
        let window = 4000;
        let mut body = RecvBody::new(
            shared,
            0,
            crate::stream::Turn(0),
            mailbox,
            Tracked::new(actor.clone(), ActorMeter::new(ActorKind::Stream, &["any"])),
            window,
        );
        for _ in 0..10 {
            writer.push(vec![Bytes::from(vec![1u8; 200])]);
            let chunk = body.chunk().await.expect("a chunk").expect("not an error");
            assert_eq!(chunk.len(), 200);
            // Caught up: nothing buffered, the next read waits.
            assert!(body.chunk().now_or_never().is_none());
        }
        let mut sent = Vec::new();
        outbox.drain(&mut sent);
        let credits: Vec<usize> = sent
            .iter()
            .map(|m| match m {
                H3Msg::Credit {
                    stream_id: 0,
                    bytes,
                } => *bytes,
                _ => panic!("only credit is sent"),
            })
            .collect();
        // Each chunk is charged 264 bytes; a quarter of the window is 1000: four chunks.
        assert_eq!(credits, vec![4 * charge(200), 4 * charge(200)]);
        conn.stop(None);
        actor.stop(None);
    }

    proptest! {
        /// The connection reads a stream as `read_stream` does (conn/read.rs: a chunk of at
        /// most its credit less the overhead and at most `MAX_READ`, while its credit exceeds
        /// the overhead; this mirrors that loop) and the reader consumes every chunk at once:
        /// the connection is never left without credit, and never holds more than the window.
        #[test]
        fn a_reader_that_keeps_up_never_starves_its_stream(
            window in (2 * CHUNK_OVERHEAD + 1)..(1usize << 20),
            sizes in proptest::collection::vec(1usize..100_000, 0..300),
        ) {
            let mut credit = window;
            let mut back = CreditReturn::new(window);
            for size in sizes {
                prop_assert!(credit > CHUNK_OVERHEAD, "stalled at {credit} of {window}");
                let n = size.min(credit - CHUNK_OVERHEAD).min(crate::conn::read::MAX_READ);
                credit -= charge(n);
                if let Some(b) = back.consumed(charge(n)) {
                    credit += b;
                }
                prop_assert!(credit <= window);
            }
        }
    }

    /// A request whose HEADERS frame carried FIN: its body is over before it began, and it
    /// behaves as an ended body in every way a handler can look at it.
    #[tokio::test]
    async fn an_ended_body_is_empty_without_trailers_and_silent_when_dropped() {
        let mut b = RecvBody::ended(4, crate::stream::Turn(0));
        assert_eq!(b.stream_id(), 4);
        assert_eq!(b.stats(), RecvBodyStats::default());
        assert!(b.trailers().is_none());
        assert!(b.chunk().await.is_none(), "no chunk: the end at once");
        assert!(b.chunk().await.is_none(), "and again: fused");
        // Nothing to tell anyone on drop (it holds no actor to send RecvDropped to).
        assert!(b.actor.is_none() && b.conn.is_none());
        drop(b);
        let whole = RecvBody::ended(8, crate::stream::Turn(0));
        assert!(whole.collect().await.unwrap().is_empty());
    }
}
