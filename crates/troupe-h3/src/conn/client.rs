//! The client side of a connection: requests waiting for a stream (the server's MAX_STREAMS),
//! bounded by `H3Settings::max_pending_requests`, and putting them on the wire.

use std::collections::VecDeque;
use std::sync::Arc;

use quiche::h3;
use tracing::trace;
use troupe_transport::ConnCx;

use super::{H3App, H3Msg, PendingRequest, Side};
use crate::audit::StreamStats;
use crate::error::RequestError;
use crate::headers;
use crate::peer_settings::PeerSettings;
use crate::priority::Priority;
use crate::stream::Role;

/// State a client connection shares with its [`crate::Client`] handles.
#[derive(Debug)]
pub(crate) struct ClientShared {
    /// The ID in the server's latest GOAWAY, or `u64::MAX` before any.
    pub(crate) goaway: std::sync::atomic::AtomicU64,
    /// The server's SETTINGS, once they arrived.
    pub(crate) peer_settings: tokio::sync::watch::Sender<Option<PeerSettings>>,
    /// Bounds requests handed to the connection and not yet on the wire.
    pub(crate) pending: Arc<tokio::sync::Semaphore>,
}

impl ClientShared {
    pub(crate) fn new(max_pending: usize) -> Self {
        ClientShared {
            goaway: std::sync::atomic::AtomicU64::new(u64::MAX),
            peer_settings: tokio::sync::watch::channel(None).0,
            pending: Arc::new(tokio::sync::Semaphore::new(max_pending)),
        }
    }
}

/// The client's side of [`H3App`].
pub(super) struct ClientSide {
    /// Requests waiting for the server to allow another stream, in order.
    pub(super) waiting: VecDeque<PendingRequest>,
    pub(super) shared: Arc<ClientShared>,
}

impl ClientSide {
    /// The server sent GOAWAY with `id`: requests not yet on the wire fail, to be retried on
    /// another connection.
    pub(super) fn on_goaway(&mut self, id: u64) {
        self.shared
            .goaway
            .store(id, std::sync::atomic::Ordering::Release);
        for req in self.waiting.drain(..) {
            let _ = req.reply.send(Err(RequestError::GoingAway));
        }
    }
}

impl H3App {
    /// Client: a new request; it waits behind earlier ones, or for a stream.
    pub(super) async fn on_request(&mut self, cx: &mut ConnCx<'_, H3Msg>, req: PendingRequest) {
        let Side::Client(c) = &mut self.side else {
            return;
        };
        // Not gated on `peer_streams_left_bidi()`: a request blocked for room has already
        // created its QUIC stream (quiche's `send_request` opens it before finding the headers
        // do not fit), so the count reads 0 while that request still owns the slot. quiche
        // itself answers StreamLimit when there is truly no slot.
        if !c.waiting.is_empty() {
            c.waiting.push_back(req);
        } else {
            self.start_request(cx, req).await;
        }
    }

    /// Whether a client has requests waiting for room on the connection.
    pub(super) fn has_waiting_requests(&self) -> bool {
        matches!(&self.side, Side::Client(c) if !c.waiting.is_empty())
    }

    /// Client: put waiting requests on the wire while the peer allows new streams.
    pub(super) async fn start_waiting_requests(&mut self, cx: &mut ConnCx<'_, H3Msg>) {
        loop {
            let Side::Client(c) = &mut self.side else {
                return;
            };
            let Some(req) = c.waiting.pop_front() else {
                return;
            };
            if self.start_request(cx, req).await == Start::Blocked {
                // quiche has no room for the header section now: retrying at once would spin.
                // Packets (ACKs, MAX_DATA, MAX_STREAMS) bring the next attempt.
                return;
            }
        }
    }

    /// Puts one request on the wire, or back at the head of the queue when quiche has no room
    /// for it yet (`Start::Blocked`).
    async fn start_request(&mut self, cx: &mut ConnCx<'_, H3Msg>, req: PendingRequest) -> Start {
        let Some(h3) = self.h3.as_mut() else {
            let _ = req.reply.send(Err(RequestError::ConnectionClosed(
                "no HTTP/3 connection".into(),
            )));
            return Start::Done;
        };
        let list = match headers::request_headers(&req.head) {
            Ok(l) => l,
            Err(e) => {
                let _ = req.reply.send(Err(RequestError::InvalidRequest(e)));
                return Start::Done;
            }
        };
        let fin = req.body.is_end_stream();
        match h3.send_request(cx.conn, &list, fin) {
            Ok(stream_id) => {
                trace!(stream_id, "request sent");
                // The audit clock starts at the caller's request: the wait for a stream slot
                // is the client's header wait.
                let stats = StreamStats::new(stream_id, req.created);
                stats.set_request(
                    req.head.method.clone(),
                    super::accept::path_of(&req.head.uri),
                );
                let now = cx.clock.now();
                stats.update(|a| a.headers_wait = Some(now.saturating_duration_since(req.created)));
                let flow = req
                    .head
                    .extensions
                    .get::<headers::Protocol>()
                    .is_some()
                    .then(|| {
                        crate::flow::DatagramFlow::new(
                            stream_id,
                            cx.mailbox.clone(),
                            self.datagrams.clone(),
                            cx.trace_id.into(),
                        )
                    });
                let role = Role::Client {
                    body: req.body,
                    fin_sent: fin,
                    reply: req.reply,
                    flow,
                };
                if let Some(new) =
                    self.open_stream(cx, stream_id, role, stats, None, Priority::RESPONSE_DEFAULT)
                {
                    Box::pin(self.spawn_for(cx, new)).await;
                }
            }
            Err(h3::Error::StreamBlocked)
            | Err(h3::Error::TransportError(quiche::Error::StreamLimit)) => {
                // Wait for MAX_STREAMS or flow-control room: retried when packets arrive, no
                // timer.
                if let Side::Client(c) = &mut self.side {
                    c.waiting.push_front(req);
                }
                return Start::Blocked;
            }
            Err(h3::Error::FrameUnexpected) => {
                let _ = req.reply.send(Err(RequestError::GoingAway));
            }
            Err(e) => {
                let _ = req
                    .reply
                    .send(Err(RequestError::ConnectionClosed(e.to_string())));
            }
        }
        Start::Done
    }
}

/// What became of one attempt to start a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    /// It started, or failed for good (its caller has been told).
    Done,
    /// quiche has no room for it yet; it is back at the head of the queue.
    Blocked,
}
