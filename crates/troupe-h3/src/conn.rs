//! The HTTP/3 application inside a connection actor.
//!
//! It owns the `quiche::h3::Connection`, turns `h3::Event`s into stream-actor messages, spawns a
//! linked stream actor per request stream, and moves body bytes between quiche and the stream
//! actors under credit. Per stream it keeps only the route: the actor, the receive credit the
//! actor granted, and the frames the actor handed over that quiche has not taken yet (bounded by
//! the actor's send window).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes};
use quiche::h3::{self, Header};
use ractor::{Actor, ActorId, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;
use tracing::{debug, trace, warn};
use troupe_transport::{AppError, CloseReason, ConnCx, ConnectionApp, ConnectionInfo};

use crate::audit::{StreamEnd, StreamStats};
use crate::body::RecvBody;
use crate::codes::{
    H3_INTERNAL_ERROR, H3_MESSAGE_ERROR, H3_NO_ERROR, H3_REQUEST_CANCELLED, H3_REQUEST_REJECTED,
};
use crate::error::RequestError;
use crate::events::{ConnectionEvent, EventSink};
use crate::headers;
use crate::peer_settings::PeerSettings;
use crate::priority::{Priority, PriorityCell};
use crate::server::Handler;
use crate::settings::H3Settings;
use crate::stream::{Role, StreamActor, StreamArgs, StreamMsg};

/// Largest single read from quiche for one stream. 64 KiB: many packets' worth of body in one
/// chunk and one message.
const MAX_READ: usize = 64 * 1024;

use crate::body::CHUNK_OVERHEAD;

/// Size at which the list of ended-but-unacknowledged streams is pruned. Twice quiche's default
/// concurrent stream limit: pruning is O(n), so it runs about once per hundreds of streams.
const UNACKED_PRUNE_AT: usize = 256;

/// A frame a stream actor hands to the connection for sending.
pub enum OutFrame {
    /// A header section: the first one (request, response, or an interim response), a final
    /// response after interim ones, or trailers.
    Headers {
        /// The header list.
        list: Vec<Header>,
        /// Whether FIN follows the headers.
        fin: bool,
        /// A trailer section.
        trailer: bool,
        /// For a final response: the priority the handler chose (applied when it is sent).
        priority: Option<Priority>,
    },
    /// Body bytes, perhaps empty when only carrying FIN.
    Data {
        /// The bytes.
        bytes: Bytes,
        /// Whether FIN follows.
        fin: bool,
    },
}

/// Messages to the HTTP/3 layer of a connection actor.
pub enum H3Msg {
    /// Frames for a stream, in order.
    Send {
        /// The stream.
        stream_id: u64,
        /// The frames.
        frames: Vec<OutFrame>,
    },
    /// The reader consumed `bytes`: the connection may read that many more.
    Credit {
        /// The stream.
        stream_id: u64,
        /// Bytes of new credit.
        bytes: usize,
    },
    /// Send STOP_SENDING with `code`.
    StopSending {
        /// The stream.
        stream_id: u64,
        /// Error code.
        code: u64,
    },
    /// Send RESET_STREAM with `code`.
    Reset {
        /// The stream.
        stream_id: u64,
        /// Error code.
        code: u64,
    },
    /// Server: begin a graceful shutdown of this connection. Sends GOAWAY naming the first
    /// request stream not processed, lets requests in flight finish, rejects later ones with
    /// H3_REQUEST_REJECTED, and closes the connection (H3_NO_ERROR) once no stream is left.
    GoAway,
    /// Server: the post-accept timeout elapsed; close the connection if no request came.
    PostAcceptTimeout,
    /// After GOAWAY: close the connection if no stream is left (sent to itself, so the close
    /// happens in a later turn than the GOAWAY and never keeps it off the wire).
    DrainCheck,
    /// Client: start a request (boxed: a request head is large, the other messages small).
    Request(Box<PendingRequest>),
    /// Inspection: the stream IDs this connection routes to a stream actor right now.
    RoutedStreams(ractor::RpcReplyPort<Vec<u64>>),
}

/// A client request not yet on the wire.
pub struct PendingRequest {
    pub(crate) head: http::request::Parts,
    pub(crate) body: crate::Body,
    pub(crate) reply: oneshot::Sender<Result<http::Response<RecvBody>, RequestError>>,
    /// When the caller asked.
    pub(crate) created: Instant,
    /// Held until the request is on the wire (or failed): bounds the waiting queue.
    pub(crate) _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Receiving side of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadRoute {
    /// Reading allowed while `credit > 0`; `blocked` = quiche had more when credit ran out
    /// (`h3::Event::Data` is edge-triggered, so we must resume on our own when credit returns).
    Open { credit: usize, blocked: bool },
    /// FIN or RESET delivered, or STOP_SENDING sent: nothing more to read.
    Done,
}

struct Route {
    actor: ActorRef<StreamMsg>,
    read: ReadRoute,
    out: VecDeque<OutFrame>,
    /// Whether this stream is in the write queue.
    queued: bool,
    /// The first header section has been sent.
    headers_sent: bool,
    /// Our FIN or RESET is written, or the peer stopped us: nothing more will be sent.
    send_done: bool,
    /// In `H3App::rescan`.
    rescan: bool,
    /// When the first header section was handed over, until quiche takes it.
    headers_queued: Option<Instant>,
    /// The stream's audit figures, shared with its actor.
    stats: StreamStats,
    /// Server: the client's priority signal, watched by the handler.
    priority: Option<Arc<PriorityCell>>,
    /// The response's effective priority (RFC 9218): the handler's if it chose one, else the
    /// client's latest signal, else the response default. Decides the write order.
    prio: Priority,
}

impl Route {
    /// The stream is over for the connection: its figures are final and reported, and anyone
    /// waiting for a priority change learns no more will come.
    fn retire(self, metrics: &dyn troupe_transport::Metrics) {
        self.stats.end();
        metrics.stream_closed(&self.stats.summary());
        if let Some(p) = &self.priority {
            p.close();
        }
    }
}

/// A server's GOAWAY: not asked for, waiting for stream capacity on the control stream, or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goaway {
    NotSent,
    Pending(u64),
    Sent(u64),
}

impl Goaway {
    /// The first request stream ID that will not be processed, once a GOAWAY is decided.
    fn first_refused(self) -> Option<u64> {
        match self {
            Goaway::NotSent => None,
            Goaway::Pending(id) | Goaway::Sent(id) => Some(id),
        }
    }
}

/// Which side of the connection we are.
enum Side {
    Server {
        handler: Arc<dyn Handler>,
        events: Option<EventSink>,
    },
    Client {
        waiting: VecDeque<PendingRequest>,
        shared: Arc<ClientShared>,
    },
}

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

/// The HTTP/3 application of one connection (see the module docs).
pub struct H3App {
    side: Side,
    settings: Arc<H3Settings>,
    h3: Option<h3::Connection>,
    routes: HashMap<u64, Route>,
    by_actor: HashMap<ActorId, u64>,
    write_queue: Vec<u64>,
    /// Counts `write_streams` calls, to rotate incremental streams of equal urgency.
    write_turn: usize,
    /// Scratch buffer for reads from quiche; chunks are copied out exactly sized.
    read_buf: Vec<u8>,
    /// Server: the highest request stream ID accepted so far.
    max_request_id: Option<u64>,
    /// Server: requests accepted on this connection.
    requests_accepted: u64,
    /// Server: graceful shutdown progress.
    goaway: Goaway,
    /// Streams whose actor ended while quiche may still hold their data unacknowledged; a
    /// graceful close waits for quiche to collect them. Pruned as it grows.
    unacked: Vec<u64>,
    /// A drain check is to be requested at the next flush.
    drain_check_due: bool,
    /// Streams to read again after the next `h3::poll` (see `read_stream`).
    rescan: Vec<u64>,
    /// The peer's SETTINGS have been surfaced.
    settings_seen: bool,
    trace_id: String,
}

impl H3App {
    pub(crate) fn server(
        handler: Arc<dyn Handler>,
        settings: Arc<H3Settings>,
        events: Option<EventSink>,
    ) -> Self {
        Self::new(Side::Server { handler, events }, settings)
    }

    pub(crate) fn client(settings: Arc<H3Settings>, shared: Arc<ClientShared>) -> Self {
        Self::new(
            Side::Client {
                waiting: VecDeque::new(),
                shared,
            },
            settings,
        )
    }

    fn new(side: Side, settings: Arc<H3Settings>) -> Self {
        H3App {
            side,
            settings,
            h3: None,
            routes: HashMap::new(),
            by_actor: HashMap::new(),
            write_queue: Vec::new(),
            write_turn: 0,
            read_buf: vec![0; MAX_READ],
            max_request_id: None,
            requests_accepted: 0,
            goaway: Goaway::NotSent,
            unacked: Vec::new(),
            drain_check_due: false,
            rescan: Vec::new(),
            settings_seen: false,
            trace_id: String::new(),
        }
    }

    fn h3_config(&self) -> Result<h3::Config, AppError> {
        let mut c = h3::Config::new().map_err(internal)?;
        if let Some(n) = self.settings.max_field_section_size {
            c.set_max_field_section_size(n);
        }
        c.set_qpack_max_table_capacity(self.settings.qpack_max_table_capacity);
        c.set_qpack_blocked_streams(self.settings.qpack_blocked_streams);
        Ok(c)
    }

    async fn spawn_stream(
        &mut self,
        cx: &mut ConnCx<'_, H3Msg>,
        stream_id: u64,
        role: Role,
        stats: StreamStats,
        priority: Option<Arc<PriorityCell>>,
        prio: Priority,
    ) -> Result<(), ()> {
        // A client request whose headers carried FIN has nothing more to send.
        let send_done = matches!(role, Role::Client { fin_sent: true, .. });
        let args = StreamArgs {
            stream_id,
            conn: cx.myself.clone(),
            settings: self.settings.clone(),
            trace_id: cx.trace_id.to_string(),
            role,
            stats: stats.clone(),
        };
        match Actor::spawn_linked(None, StreamActor, args, cx.myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), stream_id);
                self.routes.insert(
                    stream_id,
                    Route {
                        actor,
                        read: ReadRoute::Open {
                            credit: self.settings.recv_window,
                            blocked: false,
                        },
                        out: VecDeque::new(),
                        queued: false,
                        headers_sent: matches!(self.side, Side::Client { .. }),
                        send_done,
                        rescan: false,
                        headers_queued: None,
                        stats,
                        priority,
                        prio,
                    },
                );
                cx.metrics.stream_opened();
                Ok(())
            }
            Err(e) => {
                warn!(stream_id, "cannot spawn stream actor: {e}");
                Err(())
            }
        }
    }

    async fn on_request_headers(
        &mut self,
        cx: &mut ConnCx<'_, H3Msg>,
        stream_id: u64,
        list: Vec<Header>,
        more_frames: bool,
    ) {
        let Side::Server { handler, .. } = &self.side else {
            return;
        };
        let handler = handler.clone();
        if let Some(first_refused) = self.goaway.first_refused() {
            if stream_id >= first_refused {
                // RFC 9114 §5.2: not processed; the client may retry it elsewhere.
                debug!(stream_id, "request after GOAWAY: H3_REQUEST_REJECTED");
                shutdown_both(cx.conn, stream_id, H3_REQUEST_REJECTED);
                return;
            }
        }
        self.max_request_id = Some(self.max_request_id.map_or(stream_id, |m| m.max(stream_id)));
        self.requests_accepted += 1;
        if self.goaway == Goaway::NotSent
            && Some(self.requests_accepted) == self.settings.max_requests_per_connection
        {
            // The last request this connection takes: GOAWAY now, drain, close.
            debug!(stream_id, "max requests per connection reached: GOAWAY");
            // The highest accepted request may be above this one (streams can arrive out of
            // order): refuse only what comes after all of them.
            self.goaway = Goaway::Pending(self.max_request_id.map_or(0, |m| m + 4));
            self.try_send_goaway(cx);
        }
        let head = match headers::parse_request(&list) {
            Ok(h) => h,
            Err(e) => {
                // RFC 9114 §4.1.2: a malformed request is a stream error.
                debug!(stream_id, "{e}: H3_MESSAGE_ERROR");
                shutdown_both(cx.conn, stream_id, H3_MESSAGE_ERROR);
                return;
            }
        };
        // RFC 9218: the request's `priority` field, overridden by a PRIORITY_UPDATE that came
        // first; with neither, the response default applies to scheduling.
        let mut signalled = head
            .headers
            .get("priority")
            .and_then(|v| Priority::parse(v.as_bytes()));
        if let Some(p) = self.take_priority_update(stream_id) {
            signalled = Some(p);
        }
        // Applied to quiche's scheduler when the response starts (see `write_streams`).
        let prio = PriorityCell::new(signalled);
        let role = Role::Server {
            head,
            fin: !more_frames,
            handler,
            priority: prio.clone(),
        };
        let stats = StreamStats::new(stream_id, Instant::now());
        if self
            .spawn_stream(
                cx,
                stream_id,
                role,
                stats,
                Some(prio),
                signalled.unwrap_or(Priority::RESPONSE_DEFAULT),
            )
            .await
            .is_err()
        {
            shutdown_both(cx.conn, stream_id, H3_INTERNAL_ERROR);
            return;
        }
        if !more_frames {
            if let Some(r) = self.routes.get_mut(&stream_id) {
                r.read = ReadRoute::Done;
            }
        }
    }

    /// The latest PRIORITY_UPDATE for a request stream, if one is waiting and valid.
    fn take_priority_update(&mut self, stream_id: u64) -> Option<Priority> {
        let h3 = self.h3.as_mut()?;
        let raw = h3.take_last_priority_update(stream_id).ok()?;
        Priority::parse(&raw)
    }

    /// Surfaces the peer's SETTINGS once, when quiche has them.
    fn check_peer_settings(&mut self, cx: &mut ConnCx<'_, H3Msg>) {
        if self.settings_seen {
            return;
        }
        let Some(raw) = self.h3.as_ref().and_then(|h3| h3.peer_settings_raw()) else {
            return;
        };
        self.settings_seen = true;
        let settings = PeerSettings { raw: raw.to_vec() };
        debug!(?settings, "peer SETTINGS");
        match &self.side {
            Side::Server {
                events: Some(sink), ..
            } => sink.emit(ConnectionEvent::PeerSettings {
                conn_id: cx.trace_id.to_string(),
                peer: cx.conn.path_stats().next().map(|p| p.peer_addr),
                settings,
            }),
            Side::Server { events: None, .. } => {}
            Side::Client { shared, .. } => {
                shared.peer_settings.send_replace(Some(settings));
            }
        }
    }

    /// Reads a stream's body from quiche while it has credit, and hands it over in one message.
    fn read_stream(&mut self, conn: &mut quiche::Connection, stream_id: u64) {
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
        let ReadRoute::Open { mut credit, .. } = route.read else {
            return;
        };
        let mut chunks = Vec::new();
        let mut reset = None;
        // Each chunk is charged its length plus CHUNK_OVERHEAD, so even a peer sending 1-byte
        // DATA frames cannot make one stream hold more memory than its window.
        while credit > CHUNK_OVERHEAD {
            let want = (credit - CHUNK_OVERHEAD).min(MAX_READ);
            match h3.recv_body(conn, stream_id, &mut self.read_buf[..want]) {
                Ok(0) => break,
                Ok(n) => {
                    credit -= crate::body::charge(n);
                    // Exactly sized: a small read never pins a large buffer.
                    chunks.push(Bytes::copy_from_slice(&self.read_buf[..n]));
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
        let readable = conn.stream_readable(stream_id);
        // Out of credit with bytes left: the returning credit resumes the read.
        let blocked = credit <= CHUNK_OVERHEAD && readable;
        // quiche's Data event stays "triggered" when a read ends on a partial frame header
        // (bytes readable, no DATA payload yet): no new Data event would come for the rest of
        // the frame. Such a stream is read again after the next h3::poll.
        if readable && !blocked && !fin && reset.is_none() && !route.rescan {
            route.rescan = true;
            self.rescan.push(stream_id);
        }
        route.read = if fin || reset.is_some() {
            ReadRoute::Done
        } else {
            ReadRoute::Open { credit, blocked }
        };
        if !chunks.is_empty() || fin {
            let _ = route.actor.cast(StreamMsg::Body { chunks, fin });
        }
        if let Some(code) = reset {
            let _ = route.actor.cast(StreamMsg::PeerReset(code));
        }
    }

    fn queue_write(&mut self, stream_id: u64) {
        if let Some(r) = self.routes.get_mut(&stream_id) {
            if !r.queued && !r.out.is_empty() {
                r.queued = true;
                self.write_queue.push(stream_id);
            }
        }
    }

    /// Writes queued frames into quiche as far as stream capacity allows.
    fn write_streams(&mut self, conn: &mut quiche::Connection) {
        let Some(h3) = self.h3.as_mut() else { return };
        // quiche schedules by priority only among the bytes in its buffers, and what it accepts
        // is bounded by the congestion window: streams get that room most urgent first (RFC
        // 9218), equal urgencies in stream order, incremental ones taking turns at the front.
        if self.write_queue.len() > 1 {
            let routes = &self.routes;
            let key = |id: &u64| {
                routes
                    .get(id)
                    .map_or((u8::MAX, false), |r| (r.prio.urgency, r.prio.incremental))
            };
            self.write_queue.sort_unstable_by_key(|id| (key(id), *id));
            self.write_turn = self.write_turn.wrapping_add(1);
            let mut start = 0;
            while start < self.write_queue.len() {
                let k = key(&self.write_queue[start]);
                let run = self.write_queue[start..]
                    .iter()
                    .take_while(|id| key(id) == k)
                    .count();
                if k.1 && run > 1 {
                    self.write_queue[start..start + run].rotate_left(self.write_turn % run);
                }
                start += run;
            }
        }
        let mut i = 0;
        while i < self.write_queue.len() {
            let id = self.write_queue[i];
            let Some(route) = self.routes.get_mut(&id) else {
                self.write_queue.swap_remove(i);
                continue;
            };
            let mut written = 0usize;
            let mut fin_written = false;
            let mut stopped = None;
            while let Some(frame) = route.out.front_mut() {
                match frame {
                    OutFrame::Headers {
                        list,
                        fin,
                        trailer,
                        priority,
                    } => {
                        // RFC 9218: the handler's priority if it chose one, else the client's
                        // latest signal, else the response default (u=3, incremental). quiche
                        // would otherwise reset the stream to u=3 non-incremental.
                        let r = match (route.headers_sent, priority) {
                            (true, None) => {
                                h3.send_additional_headers(conn, id, list, *trailer, *fin)
                            }
                            // A final response after interim ones, with its own priority.
                            (true, Some(_)) => h3.send_additional_headers_with_priority(
                                conn,
                                id,
                                list,
                                &quiche_priority(route.prio),
                                *trailer,
                                *fin,
                            ),
                            (false, _) => h3.send_response_with_priority(
                                conn,
                                id,
                                list,
                                &quiche_priority(route.prio),
                                *fin,
                            ),
                        };
                        match r {
                            Ok(()) => {
                                if !route.headers_sent {
                                    let now = Instant::now();
                                    let wait = route.headers_queued.take().map(|q| now - q);
                                    route.stats.first_headers(now, wait);
                                }
                                route.headers_sent = true;
                                fin_written |= *fin;
                                route.out.pop_front();
                            }
                            Err(h3::Error::StreamBlocked) | Err(h3::Error::Done) => break,
                            Err(h3::Error::TransportError(quiche::Error::StreamStopped(code))) => {
                                stopped = Some(code);
                                break;
                            }
                            Err(e) => {
                                debug!(stream_id = id, "sending headers failed: {e}");
                                stopped = Some(H3_INTERNAL_ERROR);
                                let _ = conn.stream_shutdown(
                                    id,
                                    quiche::Shutdown::Write,
                                    H3_INTERNAL_ERROR,
                                );
                                break;
                            }
                        }
                    }
                    OutFrame::Data { bytes, fin } => {
                        if bytes.is_empty() && !*fin {
                            route.out.pop_front();
                            continue;
                        }
                        match h3.send_body(conn, id, bytes, *fin) {
                            Ok(n) if n == bytes.len() => {
                                written += n;
                                fin_written |= *fin;
                                route.out.pop_front();
                            }
                            Ok(n) => {
                                written += n;
                                bytes.advance(n);
                                break;
                            }
                            Err(h3::Error::Done) | Err(h3::Error::StreamBlocked) => break,
                            Err(h3::Error::TransportError(quiche::Error::StreamStopped(code))) => {
                                stopped = Some(code);
                                break;
                            }
                            Err(e) => {
                                debug!(stream_id = id, "sending body failed: {e}");
                                stopped = Some(H3_INTERNAL_ERROR);
                                let _ = conn.stream_shutdown(
                                    id,
                                    quiche::Shutdown::Write,
                                    H3_INTERNAL_ERROR,
                                );
                                break;
                            }
                        }
                    }
                }
            }
            if fin_written {
                route.send_done = true;
            }
            if let Some(code) = stopped {
                route.out.clear();
                route.send_done = true;
                let _ = route.actor.cast(StreamMsg::PeerStopSending(code));
            } else if written > 0 || fin_written {
                let _ = route.actor.cast(StreamMsg::Written {
                    bytes: written,
                    fin: fin_written,
                });
            }
            if route.out.is_empty() {
                route.queued = false;
                self.write_queue.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// quiche reports a peer's STOP_SENDING on a stream only as an error on the next write to
    /// it. A stream with nothing queued (say, a response waiting for data) would never learn of
    /// it and its actor would live on; so after each batch of packets (STOP_SENDING only arrives
    /// in packets), probe the streams whose sending side is open and idle: one map lookup each.
    /// (quiche's STOP_SENDING counter is in `stats()`, which walks every stream: dearer.)
    fn notice_stopped_streams(&mut self, conn: &mut quiche::Connection) {
        for (&id, route) in self.routes.iter_mut() {
            if route.send_done || !route.out.is_empty() {
                continue;
            }
            let code = match conn.stream_capacity(id) {
                Err(quiche::Error::StreamStopped(code)) => code,
                // Stopped, reset in reply, and already collected by quiche.
                Err(quiche::Error::InvalidStreamState(_)) => H3_REQUEST_CANCELLED,
                _ => continue,
            };
            route.send_done = true;
            let _ = route.actor.cast(StreamMsg::PeerStopSending(code));
        }
    }

    /// Puts a decided GOAWAY on the control stream; retried every flush while the connection
    /// has no send capacity for it.
    fn try_send_goaway(&mut self, cx: &mut ConnCx<'_, H3Msg>) {
        let Goaway::Pending(id) = self.goaway else {
            return;
        };
        let Some(h3) = self.h3.as_mut() else { return };
        match h3.send_goaway(cx.conn, id) {
            Ok(()) => {
                debug!(id, "GOAWAY sent");
                self.goaway = Goaway::Sent(id);
                self.check_drained();
            }
            Err(h3::Error::StreamBlocked) | Err(h3::Error::Done) => {}
            Err(e) => {
                debug!("send_goaway: {e}");
                self.goaway = Goaway::Sent(id);
                self.check_drained();
            }
        }
    }

    /// Whether quiche has collected every stream whose actor ended: all our response bytes are
    /// acknowledged (a close before that would discard them).
    fn all_delivered(&mut self, conn: &mut quiche::Connection) -> bool {
        self.unacked.retain(|id| {
            !matches!(
                conn.stream_capacity(*id),
                Err(quiche::Error::InvalidStreamState(_))
            )
        });
        self.unacked.is_empty()
    }

    /// After GOAWAY: ask for a close check. The check message is sent from the next flush
    /// (`before_flush`), so it is handled after that flush put the GOAWAY on the wire.
    fn check_drained(&mut self) {
        if matches!(self.goaway, Goaway::Sent(_)) && self.routes.is_empty() {
            self.drain_check_due = true;
        }
    }

    /// Client: put waiting requests on the wire while the peer allows new streams.
    async fn start_waiting_requests(&mut self, cx: &mut ConnCx<'_, H3Msg>) {
        loop {
            let Side::Client { waiting, .. } = &mut self.side else {
                return;
            };
            if waiting.is_empty() || cx.conn.peer_streams_left_bidi() == 0 {
                return;
            }
            let Some(req) = waiting.pop_front() else {
                return;
            };
            self.start_request(cx, req).await;
        }
    }

    async fn start_request(&mut self, cx: &mut ConnCx<'_, H3Msg>, req: PendingRequest) {
        let Some(h3) = self.h3.as_mut() else {
            let _ = req.reply.send(Err(RequestError::ConnectionClosed(
                "no HTTP/3 connection".into(),
            )));
            return;
        };
        let list = match headers::request_headers(&req.head) {
            Ok(l) => l,
            Err(e) => {
                let _ = req.reply.send(Err(RequestError::InvalidRequest(e)));
                return;
            }
        };
        let fin = req.body.is_end_stream();
        match h3.send_request(cx.conn, &list, fin) {
            Ok(stream_id) => {
                trace!(stream_id, "request sent");
                // The audit clock starts at the caller's request: the wait for a stream slot
                // is the client's header wait.
                let stats = StreamStats::new(stream_id, req.created);
                stats.update(|a| a.headers_wait = Some(req.created.elapsed()));
                let role = Role::Client {
                    body: req.body,
                    fin_sent: fin,
                    reply: req.reply,
                };
                if self
                    .spawn_stream(cx, stream_id, role, stats, None, Priority::RESPONSE_DEFAULT)
                    .await
                    .is_err()
                {
                    shutdown_both(cx.conn, stream_id, H3_INTERNAL_ERROR);
                }
            }
            Err(h3::Error::StreamBlocked)
            | Err(h3::Error::TransportError(quiche::Error::StreamLimit)) => {
                // Wait for MAX_STREAMS: retried when packets arrive, no timer.
                if let Side::Client { waiting, .. } = &mut self.side {
                    waiting.push_front(req);
                }
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
    }
}

/// quiche's HTTP/3 layer maps RFC 9218 urgency 0..=7 onto its stream urgencies 124..=131
/// (below them: its own control and QPACK streams). A direct `stream_priority` call must add
/// the same offset, or the stream would outrank every response.
const QUICHE_URGENCY_OFFSET: u8 = 124;

fn quiche_priority(p: Priority) -> h3::Priority {
    h3::Priority::new(p.urgency, p.incremental)
}

fn internal(e: h3::Error) -> AppError {
    AppError {
        code: H3_INTERNAL_ERROR,
        reason: e.to_string(),
    }
}

/// For a stream quiche reports finished: `Ok` for a real FIN, `Err(code)` if the peer reset it.
///
/// quiche marks a reset stream finished as well, and `h3::Connection::recv_body` can queue a
/// `Finished` event for it; the pending reset is still in quiche's receive buffer, so a
/// zero-length read tells: a reset stream yields `StreamReset`, a finished one nothing.
fn end_of_stream(conn: &mut quiche::Connection, stream_id: u64) -> Result<(), u64> {
    let mut probe = [0u8; 1];
    match conn.stream_recv(stream_id, &mut probe[..0]) {
        Err(quiche::Error::StreamReset(code)) => Err(code),
        _ => Ok(()),
    }
}

fn shutdown_both(conn: &mut quiche::Connection, stream_id: u64, code: u64) {
    let _ = conn.stream_shutdown(stream_id, quiche::Shutdown::Read, code);
    let _ = conn.stream_shutdown(stream_id, quiche::Shutdown::Write, code);
}

impl ConnectionApp for H3App {
    type Msg = H3Msg;

    async fn on_established(&mut self, cx: &mut ConnCx<'_, H3Msg>) -> Result<(), AppError> {
        self.trace_id = cx.trace_id.to_string();
        let config = self.h3_config()?;
        let h3 = h3::Connection::with_transport(cx.conn, &config).map_err(internal)?;
        self.h3 = Some(h3);
        if let (true, Some(t)) = (cx.conn.is_server(), self.settings.post_accept_timeout) {
            // One one-shot timer task per connection; a cast to a stopped actor is a no-op.
            let me = cx.myself.clone();
            tokio::spawn(async move {
                tokio::time::sleep(t).await;
                let _ = me.cast(troupe_transport::ConnMsg::App(H3Msg::PostAcceptTimeout));
            });
        }
        Ok(())
    }

    async fn on_readable(&mut self, cx: &mut ConnCx<'_, H3Msg>) -> Result<(), AppError> {
        loop {
            let Some(h3) = self.h3.as_mut() else {
                return Ok(());
            };
            let (stream_id, event) = match h3.poll(cx.conn) {
                Ok(ev) => ev,
                Err(h3::Error::Done) => break,
                Err(e) => {
                    // quiche has already closed the connection with the right code.
                    debug!("h3 poll: {e}");
                    break;
                }
            };
            match event {
                h3::Event::Headers { list, more_frames } => {
                    if let Some(route) = self.routes.get_mut(&stream_id) {
                        let fin = !more_frames;
                        if fin {
                            route.read = ReadRoute::Done;
                        }
                        let _ = route.actor.cast(StreamMsg::Headers { list, fin });
                    } else if cx.conn.is_server() {
                        self.on_request_headers(cx, stream_id, list, more_frames)
                            .await;
                    }
                }
                h3::Event::Data => self.read_stream(cx.conn, stream_id),
                h3::Event::Finished => {
                    if let Some(route) = self.routes.get_mut(&stream_id) {
                        if matches!(route.read, ReadRoute::Open { .. }) {
                            route.read = ReadRoute::Done;
                            // quiche may report Finished for a stream the peer reset.
                            let msg = match end_of_stream(cx.conn, stream_id) {
                                Ok(()) => StreamMsg::Body {
                                    chunks: Vec::new(),
                                    fin: true,
                                },
                                Err(code) => StreamMsg::PeerReset(code),
                            };
                            let _ = route.actor.cast(msg);
                        }
                    }
                }
                h3::Event::Reset(code) => {
                    if let Some(route) = self.routes.get_mut(&stream_id) {
                        route.read = ReadRoute::Done;
                        let _ = route.actor.cast(StreamMsg::PeerReset(code));
                    }
                }
                h3::Event::PriorityUpdate => {
                    // For a stream not open yet, quiche keeps the update until its request
                    // arrives (taken in on_request_headers).
                    if self.routes.contains_key(&stream_id) {
                        if let Some(p) = self.take_priority_update(stream_id) {
                            trace!(stream_id, ?p, "PRIORITY_UPDATE");
                            // Latest wins, even over the handler's own choice; before the
                            // response starts it is applied then (`Route::prio`).
                            let _ = cx.conn.stream_priority(
                                stream_id,
                                p.urgency.min(crate::priority::URGENCY_MAX) + QUICHE_URGENCY_OFFSET,
                                p.incremental,
                            );
                            if let Some(route) = self.routes.get_mut(&stream_id) {
                                route.prio = p;
                                if let Some(cell) = &route.priority {
                                    cell.set(p);
                                }
                            }
                        }
                    }
                }
                h3::Event::GoAway => {
                    debug!(id = stream_id, "GOAWAY received");
                    if let Side::Client { waiting, shared } = &mut self.side {
                        shared
                            .goaway
                            .store(stream_id, std::sync::atomic::Ordering::Release);
                        for req in waiting.drain(..) {
                            let _ = req.reply.send(Err(RequestError::GoingAway));
                        }
                    }
                }
            }
        }
        for id in std::mem::take(&mut self.rescan) {
            if let Some(route) = self.routes.get_mut(&id) {
                route.rescan = false;
                self.read_stream(cx.conn, id);
            }
        }
        self.check_peer_settings(cx);
        self.notice_stopped_streams(cx.conn);
        self.start_waiting_requests(cx).await;
        // While draining, ACKs may have completed the last streams.
        self.check_drained();
        Ok(())
    }

    async fn on_message(&mut self, cx: &mut ConnCx<'_, H3Msg>, msg: H3Msg) -> Result<(), AppError> {
        match msg {
            H3Msg::Send { stream_id, frames } => {
                if let Some(route) = self.routes.get_mut(&stream_id) {
                    if !route.headers_sent && route.headers_queued.is_none() {
                        route.headers_queued = Some(Instant::now());
                    }
                    // A priority the handler chose (latest wins against the client's).
                    if let Some(p) = frames.iter().find_map(|f| match f {
                        OutFrame::Headers { priority, .. } => *priority,
                        _ => None,
                    }) {
                        route.prio = p;
                    }
                    route.out.extend(frames);
                    self.queue_write(stream_id);
                }
            }
            H3Msg::Credit { stream_id, bytes } => {
                let resume = match self.routes.get_mut(&stream_id) {
                    Some(Route {
                        read: ReadRoute::Open { credit, blocked },
                        ..
                    }) => {
                        *credit += bytes;
                        std::mem::take(blocked)
                    }
                    _ => false,
                };
                if resume {
                    self.read_stream(cx.conn, stream_id);
                    // Reading may have reached a trailer section or the FIN, which only
                    // h3::poll reports; no packet may come to trigger it, so poll now.
                    return self.on_readable(cx).await;
                }
            }
            H3Msg::StopSending { stream_id, code } => {
                let _ = cx
                    .conn
                    .stream_shutdown(stream_id, quiche::Shutdown::Read, code);
                if let Some(route) = self.routes.get_mut(&stream_id) {
                    route.read = ReadRoute::Done;
                }
            }
            H3Msg::Reset { stream_id, code } => {
                let _ = cx
                    .conn
                    .stream_shutdown(stream_id, quiche::Shutdown::Write, code);
                if let Some(route) = self.routes.get_mut(&stream_id) {
                    route.out.clear();
                }
            }
            H3Msg::GoAway => {
                if self.goaway == Goaway::NotSent && cx.conn.is_server() {
                    // RFC 9114 §5.2: the first request stream we will not process.
                    self.goaway = Goaway::Pending(self.max_request_id.map_or(0, |m| m + 4));
                    self.try_send_goaway(cx);
                }
            }
            H3Msg::PostAcceptTimeout => {
                if self.requests_accepted == 0 && self.goaway == Goaway::NotSent {
                    debug!("no request within the post-accept timeout: closing");
                    let _ = cx.conn.close(
                        true,
                        H3_NO_ERROR,
                        b"no request within the post-accept timeout",
                    );
                }
            }
            H3Msg::DrainCheck => {
                if matches!(self.goaway, Goaway::Sent(_))
                    && self.routes.is_empty()
                    && self.all_delivered(cx.conn)
                {
                    debug!("drained after GOAWAY: closing");
                    let _ = cx.conn.close(true, H3_NO_ERROR, b"");
                }
            }
            H3Msg::RoutedStreams(reply) => {
                let mut ids: Vec<u64> = self.routes.keys().copied().collect();
                ids.sort_unstable();
                let _ = reply.send(ids);
            }
            H3Msg::Request(req) => {
                let waiting =
                    matches!(&self.side, Side::Client { waiting, .. } if !waiting.is_empty());
                if waiting || cx.conn.peer_streams_left_bidi() == 0 {
                    if let Side::Client { waiting, .. } = &mut self.side {
                        waiting.push_back(*req);
                    }
                } else {
                    self.start_request(cx, *req).await;
                }
            }
        }
        Ok(())
    }

    async fn on_child_event(
        &mut self,
        cx: &mut ConnCx<'_, H3Msg>,
        event: SupervisionEvent,
    ) -> Result<(), AppError> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(id) = self.by_actor.remove(&cell.get_id()) {
                    // Both directions were terminal; any STOP_SENDING or RESET it asked for
                    // arrives as a message of its own (supervision events overtake messages).
                    if let Some(route) = self.routes.remove(&id) {
                        route.retire(cx.metrics);
                    }
                    if cx.conn.is_server() {
                        self.unacked.push(id);
                        if self.unacked.len() > UNACKED_PRUNE_AT {
                            self.all_delivered(cx.conn);
                        }
                    }
                    trace!(stream_id = id, "stream actor stopped");
                }
                self.check_drained();
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(id) = self.by_actor.remove(&cell.get_id()) {
                    if let Some(route) = self.routes.remove(&id) {
                        route.stats.update(|a| {
                            a.failed = true;
                            a.send_end
                                .get_or_insert(StreamEnd::ResetSent(H3_INTERNAL_ERROR));
                            a.recv_end
                                .get_or_insert(StreamEnd::StopSendingSent(H3_INTERNAL_ERROR));
                        });
                        route.retire(cx.metrics);
                    }
                    warn!(conn_id = %self.trace_id, stream_id = id, "stream actor failed, resetting the stream: {err}");
                    shutdown_both(cx.conn, id, H3_INTERNAL_ERROR);
                }
                self.check_drained();
            }
            _ => {}
        }
        Ok(())
    }

    fn before_flush(&mut self, cx: &mut ConnCx<'_, H3Msg>) -> Result<(), AppError> {
        self.try_send_goaway(cx);
        if std::mem::take(&mut self.drain_check_due) {
            let _ = cx
                .myself
                .cast(troupe_transport::ConnMsg::App(H3Msg::DrainCheck));
        }
        self.write_streams(cx.conn);
        Ok(())
    }

    fn on_closed(&mut self, cx: &mut ConnCx<'_, H3Msg>, info: &ConnectionInfo) {
        let closed = CloseReason::Aborted;
        let reason = info.close.as_ref().unwrap_or(&closed);
        // Bytes quiche already received (and acknowledged: the peer may have closed because of
        // that) still belong to their readers. Hand them over regardless of credit; quiche's
        // stream window bounds them.
        let ids: Vec<u64> = self
            .routes
            .iter()
            .filter(|(_, r)| matches!(r.read, ReadRoute::Open { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(route) = self.routes.get_mut(&id) {
                route.read = ReadRoute::Open {
                    credit: usize::MAX,
                    blocked: false,
                };
            }
            self.read_stream(cx.conn, id);
        }
        if let Side::Client { waiting, .. } = &mut self.side {
            for req in waiting.drain(..) {
                let _ = req
                    .reply
                    .send(Err(RequestError::ConnectionClosed(reason.to_string())));
            }
        }
        // The actors are drained, not supervised, from here: report the streams now.
        self.by_actor.clear();
        for (_, route) in self.routes.drain() {
            route.retire(cx.metrics);
        }
        if let Side::Server {
            events: Some(sink), ..
        } = &self.side
        {
            sink.emit(ConnectionEvent::Closed {
                conn_id: cx.trace_id.to_string(),
                info: Box::new(info.clone()),
            });
        }
    }
}
