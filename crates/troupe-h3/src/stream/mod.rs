//! The stream actor: one per HTTP/3 request stream, on both the server and the client.
//!
//! It owns the stream's two directions as explicit state machines ([`SendState`],
//! [`RecvState`]), the buffer of received body bytes (through [`BodyWriter`]), the outgoing
//! body, and — on a server — the handler's future, which it polls itself: a panic in the handler
//! is a panic of this actor, which its supervisor (the connection actor) turns into a reset of
//! this stream alone.

pub mod state;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use quiche::h3::Header;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;
use tracing::{debug, info_span, trace, warn, Instrument};
use troupe_transport::{ActorMeter, ConnMailbox, ConnMsg, Tracked};

use crate::audit::StreamStats;
use crate::body::{Body, BodyCancelled, BodyWriter, End, Frame, RecvBody};
use crate::codes::{
    H3_EXCESSIVE_LOAD, H3_INTERNAL_ERROR, H3_MESSAGE_ERROR, H3_NO_ERROR, H3_REQUEST_CANCELLED,
};
use crate::conn::{H3Msg, OutFrame, Section};
use crate::error::RequestError;
use crate::headers;
use crate::priority::{Priority, PrioritySignal};
use crate::server::Handler;
use crate::settings::H3Settings;
pub use state::{RecvState, SendState};

/// Largest chunk taken from a body stream in one poll is whatever it yields; this bounds how
/// many chunks are batched into one message to the connection. 64: one message per ~1 MB of
/// 16 KB chunks, keeping per-message latency low.
const MAX_CHUNKS_PER_MESSAGE: usize = 64;

/// Interim (1xx) responses a client accepts before the final one; past it the stream is reset
/// with H3_EXCESSIVE_LOAD. HTTP sets no limit, and header sections bypass body credit; real
/// servers send one or two (100 Continue, 103 Early Hints). 16 sections, each at most the
/// advertised field-section size, bound what a server can make one stream hold.
pub(crate) const MAX_INTERIM_RESPONSES: usize = 16;

/// Client: the interim (1xx) responses that preceded a final response, in order; in the final
/// response's extensions when there were any.
#[derive(Debug, Clone)]
pub struct InterimResponses(pub Vec<http::response::Parts>);

/// The declared content-length, if there is exactly one valid value.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Messages to a stream actor.
pub enum StreamMsg {
    /// Body bytes read from quiche (within credit), and whether the peer's FIN followed.
    Body {
        /// The chunks, in order.
        chunks: Vec<Bytes>,
        /// The peer's FIN was read.
        fin: bool,
    },
    /// A header section arrived after the first (client: the response; either side: trailers).
    Headers {
        /// The header list.
        list: Vec<Header>,
        /// Whether it ended the stream.
        fin: bool,
    },
    /// The peer reset its sending direction (RESET_STREAM).
    PeerReset(u64),
    /// The peer asked us to stop sending (STOP_SENDING).
    PeerStopSending(u64),
    /// The connection wrote `bytes` of our body into quiche (and our FIN if `fin`), and grants
    /// `credit` more body bytes to hand over.
    Written {
        /// Body bytes written.
        bytes: usize,
        /// FIN written.
        fin: bool,
        /// New write credit.
        credit: usize,
    },
    /// A future or body stream this actor polls for the stream is ready to make progress.
    /// Ignored unless it names the actor's turn now (a parked actor serves later streams;
    /// wakers of an earlier one may still fire).
    Poll(Turn),
    /// The application dropped the stream's received body before its end (ignored unless it
    /// names the actor's turn now).
    RecvDropped(Turn),
    /// The application shuts the stream down: stop receiving with `read`, reset sending with
    /// `write` (each an HTTP/3 error code), either or both. Ignored unless it names the actor's
    /// turn now.
    Shutdown {
        /// The stream's turn.
        turn: Turn,
        /// STOP_SENDING code.
        read: Option<u64>,
        /// RESET_STREAM code.
        write: Option<u64>,
    },
    /// From the connection to a parked actor: serve this new stream.
    Start(StreamStart),
    /// From the connection (an operator's cancel): shut the stream `stream_id` down both ways
    /// with `code`. Ignored unless the actor serves that stream now. An ID is enough here,
    /// unlike for the application's handles: a connection casts this before it gives the actor
    /// back to the pool, so it arrives before any later stream's `Start`.
    Cancel {
        /// The stream.
        stream_id: u64,
        /// STOP_SENDING and RESET_STREAM code.
        code: u64,
    },
}

/// Which of the streams one stream actor served a handle belongs to: the actor counts the
/// streams it takes. A stream ID would not do: a parked actor serves streams of any
/// connection of its worker, and every connection numbers its streams from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn(pub(crate) u64);

/// A new stream for a parked stream actor (opaque: only the connection makes one).
pub struct StreamStart(pub(crate) Box<StreamArgs>);

/// Names of the stream actor's messages, for its meter (indexed by `StreamMsg::code`).
pub(crate) const STREAM_MESSAGES: &[&str] = &[
    "body",
    "headers",
    "peer reset",
    "peer stop sending",
    "written",
    "poll",
    "body dropped",
    "shutdown",
    "start",
    "cancel",
];

impl StreamMsg {
    fn code(&self) -> u8 {
        match self {
            StreamMsg::Body { .. } => 0,
            StreamMsg::Headers { .. } => 1,
            StreamMsg::PeerReset(_) => 2,
            StreamMsg::PeerStopSending(_) => 3,
            StreamMsg::Written { .. } => 4,
            StreamMsg::Poll(_) => 5,
            StreamMsg::RecvDropped(_) => 6,
            StreamMsg::Shutdown { .. } => 7,
            StreamMsg::Start(_) => 8,
            StreamMsg::Cancel { .. } => 9,
        }
    }
}

/// The application's handle to one request stream, found in every server request's
/// extensions and every client response's extensions (`req.extensions().get::<StreamControl>()`):
/// explicit control of the stream (shutting either direction down, linking actors under its
/// actor), its live figures ([`StreamControl::stats`]) and, on a server, the client's priority
/// signal ([`StreamControl::priority_signal`]) and the interim-response sender
/// ([`StreamControl::interim`]).
///
/// One extension rather than one per handle: every extension of a request is an allocation,
/// a hash-map insert and, when the request is dropped, a free (together about a thousand
/// instructions per request for four of them).
#[derive(Clone)]
pub struct StreamControl {
    actor: Tracked<StreamMsg>,
    stream_id: u64,
    turn: Turn,
    /// The connection actor the stream belongs to (the actor server's budget is shared
    /// fairly by connection).
    conn: ractor::ActorId,
    stats: StreamStats,
    /// Server only.
    priority: Option<PrioritySignal>,
    /// Server only.
    interim: Option<Interim>,
}

impl std::fmt::Debug for StreamControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamControl")
            .field("stream_id", &self.stream_id)
            .finish()
    }
}

impl StreamControl {
    /// The QUIC stream ID.
    pub fn stream_id(&self) -> u64 {
        self.stream_id
    }

    /// The connection actor the stream belongs to.
    pub(crate) fn conn(&self) -> ractor::ActorId {
        self.conn
    }

    /// The stream's live figures (bytes, how each direction ended, time to first byte); cheap
    /// to clone, and readable after the stream ended.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// Server: the client's priority signal for this request (RFC 9218). Clone it to wait for
    /// updates ([`PrioritySignal::changed`] takes `&mut self`). `None` on a client's response.
    pub fn priority_signal(&self) -> Option<&PrioritySignal> {
        self.priority.as_ref()
    }

    /// Server: sends interim (1xx) responses before the final one. `None` on a client's
    /// response.
    pub fn interim(&self) -> Option<&Interim> {
        self.interim.as_ref()
    }

    /// Stops receiving: STOP_SENDING with `code`; the received body ends with an error.
    pub fn shutdown_read(&self, code: u64) {
        self.shutdown(Some(code), None);
    }

    /// Stops sending: RESET_STREAM with `code`; the outgoing body (or a response not yet
    /// produced) is dropped.
    pub fn shutdown_write(&self, code: u64) {
        self.shutdown(None, Some(code));
    }

    /// Either or both. A direction already finished is left as it is.
    pub fn shutdown(&self, read: Option<u64>, write: Option<u64>) {
        let _ = self.actor.cast(StreamMsg::Shutdown {
            turn: self.turn,
            read,
            write,
        });
    }

    /// The stream actor, to link children under (a CONNECT-UDP stream's flow actor, say). A
    /// child that fails resets the stream both ways with H3_INTERNAL_ERROR and is recorded in
    /// the failure rings; a child that stops leaves the stream as it is. An actor with a live
    /// child stops with its stream; one without may serve a later stream (of any connection of
    /// its worker) once this one ended (see [`crate::H3Settings::stream_actor_pool`]), so link
    /// children only while the stream is live: one linked later would belong to whichever
    /// stream the actor serves then.
    pub fn actor_cell(&self) -> ractor::ActorCell {
        self.stats.lend_cell();
        self.actor.actor().get_cell()
    }
}

type HandlerFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
type ReplyTx = oneshot::Sender<Result<Response<RecvBody>, RequestError>>;

/// What a stream actor starts with.
pub(crate) struct StreamArgs {
    pub(crate) stream_id: u64,
    pub(crate) conn: ConnMailbox<H3Msg>,
    /// This actor's meter (made by the connection, which keeps a counted reference).
    pub(crate) meter: Arc<ActorMeter>,
    pub(crate) settings: Arc<H3Settings>,
    pub(crate) trace_id: Arc<str>,
    pub(crate) role: Role,
    pub(crate) stats: StreamStats,
    /// The first write credit: body bytes it may hand over before asking.
    pub(crate) credit: usize,
}

pub(crate) enum Role {
    /// A server stream: the request head arrived; run the handler.
    Server {
        head: http::request::Parts,
        /// The request headers carried FIN (no body).
        fin: bool,
        handler: Arc<dyn Handler>,
        /// The client's priority signal for this stream.
        priority: Arc<crate::priority::PriorityCell>,
        /// An extended CONNECT's access to HTTP datagrams.
        flow: Option<crate::flow::DatagramFlow>,
    },
    /// A client stream: the request headers are on the wire; send the body, await the reply.
    Client {
        body: Body,
        /// The request headers carried FIN.
        fin_sent: bool,
        reply: ReplyTx,
        /// An extended CONNECT's access to HTTP datagrams, put in the response.
        flow: Option<crate::flow::DatagramFlow>,
    },
}

/// Which end of the request this actor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Server,
    Client,
}

/// A server stream's handler call, made when the stream starts, in the actor's own task (a
/// handler may do work before its first await; never inside the connection's turn).
struct Call {
    handler: Arc<dyn Handler>,
    request: Request<RecvBody>,
    /// The request headers carried FIN.
    fin: bool,
    /// The client's priority signal, handed to the handler in its [`StreamControl`].
    priority: Arc<crate::priority::PriorityCell>,
}

/// What produces the bytes of our sending direction.
enum Producer {
    /// Server, between a new actor's `pre_start` and `post_start`: the call to make (boxed:
    /// only a spawned actor keeps it in its state; a parked actor taking a stream makes the
    /// call in the same message, and the request never leaves the stack).
    Call(Box<Call>),
    /// Server: the handler runs; the interim responses it queues go out before the final one.
    Handler {
        future: HandlerFuture,
        interim: Arc<InterimQueue>,
    },
    /// The outgoing body (a server's response body, a client's request body).
    Body(Body),
    /// Nothing (more) to produce.
    Done,
}

/// Where the bytes of our receiving direction go.
enum Consumer {
    /// Client: the final response head is awaited; the interim ones so far.
    AwaitingResponse {
        reply: ReplyTx,
        interim: Vec<http::response::Parts>,
    },
    /// The received body's writer (the application holds the `RecvBody`).
    Body(BodyWriter),
    /// Nothing takes received bytes (a response refused before its body existed).
    Nobody,
}

/// Body bytes the connection lets us hand over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteCredit {
    /// This many more.
    Has(usize),
    /// Spent, and more was asked for with the last hand-over.
    Asked,
    /// This many, granted in answer to asking and not yet answered: the connection holds less
    /// urgent streams back until our bytes (or word that there are none yet) arrive.
    Fresh(usize),
}

pub(crate) struct StreamActor;

/// Whether a stream actor serves a stream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// It serves the stream `StreamState::id`.
    Serving,
    /// Its stream ended cleanly; the connection may hand it another ([`StreamMsg::Start`]).
    /// Everything else it is sent is about an earlier stream and is ignored.
    Parked,
    /// Parked with its last hand-over, which the connection may still be writing: as
    /// `Parked`, except that a reset asked for through a handle of that stream
    /// ([`StreamControl::shutdown_write`], an operator's cancel) is passed on to the
    /// connection, which resets what it still holds (or nothing, if it wrote it all).
    HandedOver,
}

pub(crate) struct StreamState {
    life: Life,
    /// Client: an extended CONNECT's datagram flow, until the response carries it.
    flow: Option<crate::flow::DatagramFlow>,
    id: u64,
    /// Which of this actor's streams it is: what handles name.
    turn: Turn,
    kind: Kind,
    conn: ConnMailbox<H3Msg>,
    /// Counted references to this actor, for what it hands out (waker, body, control).
    me: Tracked<StreamMsg>,
    settings: Arc<H3Settings>,
    send: SendState,
    recv: RecvState,
    producer: Producer,
    consumer: Consumer,
    credit: WriteCredit,
    /// The rest of a body chunk cut at the credit boundary: handed over first when credit
    /// returns (at most one chunk is held here).
    carry: Option<Bytes>,
    waker: Arc<ActorWaker>,
    span: tracing::Span,
    stop_latch: state::StopLatch,
    /// The received message's content-length, if it declared one.
    content_length: Option<u64>,
    /// Body bytes received so far.
    body_received: u64,
    /// Body bytes written into quiche so far.
    body_sent: u64,
    /// Audit figures, shared with the connection and the application.
    stats: StreamStats,
    /// What was last copied into `stats` (sent, received, send state, receive state): the
    /// shared figures are only locked when something changed.
    synced: Synced,
}

/// What a stream actor last copied into its shared figures: they are locked only when
/// something changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Synced {
    sent: u64,
    received: u64,
    send: SendState,
    recv: RecvState,
    credit: u64,
    pending_out: u64,
}

impl Default for Synced {
    fn default() -> Self {
        Synced {
            sent: 0,
            received: 0,
            send: SendState::Idle,
            recv: RecvState::AwaitingHeaders,
            credit: 0,
            pending_out: 0,
        }
    }
}

/// Interim responses waiting in a stream actor.
#[derive(Default)]
struct InterimQueue(std::sync::Mutex<Vec<http::response::Parts>>);

impl InterimQueue {
    fn take(&self) -> Vec<http::response::Parts> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Sends interim (1xx) responses before the final one, e.g. 103 Early Hints. Every server
/// request has one: [`StreamControl::interim`].
#[derive(Clone)]
pub struct Interim {
    queue: Arc<InterimQueue>,
    waker: Arc<ActorWaker>,
}

impl std::fmt::Debug for Interim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interim")
    }
}

/// Why an interim response was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not an interim status: use 100 or 102..=199 (101 does not exist in HTTP/3)")]
pub struct NotInterim(pub http::StatusCode);

impl Interim {
    /// Queues an interim response; it is sent before the final response. Sending after the
    /// final response has no effect.
    pub fn send(
        &self,
        status: http::StatusCode,
        headers: http::HeaderMap,
    ) -> Result<(), NotInterim> {
        if !status.is_informational() || status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(NotInterim(status));
        }
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = status;
        parts.headers = headers;
        self.queue
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(parts);
        self.waker.wake_by_ref();
        Ok(())
    }
}

/// Wakes the stream actor by casting it `Poll` for its stream, at most once until it is
/// handled. One per stream: a waker of an earlier stream of a reused actor wakes nothing.
struct ActorWaker {
    actor: Tracked<StreamMsg>,
    turn: Turn,
    scheduled: AtomicBool,
}

impl Wake for ActorWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            let _ = self.actor.cast(StreamMsg::Poll(self.turn));
        }
    }
}

impl Actor for StreamActor {
    type Msg = StreamMsg;
    type State = StreamState;
    type Arguments = StreamArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<StreamMsg>,
        args: StreamArgs,
    ) -> Result<StreamState, ActorProcessingErr> {
        // Runs inside the connection actor's handler (spawn_linked): keep it trivial (no user
        // code, no I/O; a few allocations). The handler is called in `post_start`.
        let (mut st, call) = StreamState::new(&myself, args, Turn(0));
        if let Some(call) = call {
            st.producer = Producer::Call(Box::new(call));
        }
        Ok(st)
    }

    async fn post_start(
        &self,
        myself: ActorRef<StreamMsg>,
        st: &mut StreamState,
    ) -> Result<(), ActorProcessingErr> {
        // The handler's first poll runs here: busy time, and a handler stuck in it, count.
        let meter = st.me.meter().clone();
        let _busy = meter.begin_event(8);
        st.start(&myself);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<StreamMsg>,
        msg: StreamMsg,
        st: &mut StreamState,
    ) -> Result<(), ActorProcessingErr> {
        let meter = st.me.meter().clone();
        let _busy = meter.begin(msg.code());
        if let StreamMsg::Start(next) = msg {
            // A parked actor takes a new stream (of any connection of its worker): a fresh
            // state, as a new actor's would be.
            let turn = Turn(st.turn.0 + 1);
            let (fresh, call) = StreamState::new(&myself, *next.0, turn);
            *st = fresh;
            st.begin(call, &myself);
            return Ok(());
        }
        if !st.concerns(&msg) {
            st.after_hand_over(msg);
            return Ok(());
        }
        let span = st.span.clone();
        async {
            st.on_message(msg);
            st.drive(&myself);
            st.sync_audit();
        }
        .instrument(span)
        .await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<StreamMsg>,
        evt: SupervisionEvent,
        st: &mut StreamState,
    ) -> Result<(), ActorProcessingErr> {
        // A child (a datagram flow) never stops its stream by exiting; a failed one resets it,
        // as a panicking handler would, and is recorded where operators look. A parked actor
        // has no stream to reset (a child linked through a stale handle): only the record.
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            let why = err.to_string();
            let _g = st.span.clone().entered();
            warn!(child = %cell.get_id(), "child of the stream failed, resetting the stream: {why}");
            let _ = st.conn.cast(ConnMsg::App(H3Msg::ChildFailed {
                stream_id: st.id,
                who: format!("flow {}", cell.get_id()),
                why,
            }));
            if st.life == Life::Serving {
                st.abort_both(H3_INTERNAL_ERROR);
                st.drive(&myself);
                st.sync_audit();
            }
        }
        Ok(())
    }
}

impl StreamState {
    /// The state for serving the stream `args` describe (a new actor's, or a parked actor's
    /// next: nothing of an earlier stream is kept), and on a server the handler call that
    /// starts it ([`StreamState::begin`]).
    fn new(
        myself: &ActorRef<StreamMsg>,
        args: StreamArgs,
        turn: Turn,
    ) -> (StreamState, Option<Call>) {
        let span = info_span!(parent: None, "stream", conn_id = %args.trace_id, stream_id = args.stream_id);
        let me = Tracked::new(myself.clone(), args.meter);
        let waker = Arc::new(ActorWaker {
            actor: me.clone(),
            turn,
            scheduled: AtomicBool::new(false),
        });
        let mut st = StreamState {
            life: Life::Serving,
            id: args.stream_id,
            turn,
            kind: Kind::Client,
            conn: args.conn,
            me,
            settings: args.settings,
            send: SendState::Idle,
            recv: RecvState::AwaitingHeaders,
            producer: Producer::Done,
            consumer: Consumer::Nobody,
            credit: WriteCredit::Has(args.credit),
            carry: None,
            waker,
            span,
            stop_latch: state::StopLatch::default(),
            content_length: None,
            body_received: 0,
            body_sent: 0,
            stats: args.stats,
            synced: Synced::default(),
            flow: None,
        };
        match args.role {
            Role::Server {
                head,
                fin,
                handler,
                priority,
                flow,
            } => {
                st.kind = Kind::Server;
                st.content_length = content_length(&head.headers);
                let body = if fin { st.ended_recv() } else { st.open_recv() };
                let mut request = Request::from_parts(head, body);
                if let Some(flow) = flow {
                    request.extensions_mut().insert(flow);
                }
                return (
                    st,
                    Some(Call {
                        handler,
                        request,
                        fin,
                        priority,
                    }),
                );
            }
            Role::Client {
                body,
                fin_sent,
                reply,
                flow,
            } => {
                st.flow = flow;
                st.consumer = Consumer::AwaitingResponse {
                    reply,
                    interim: Vec::new(),
                };
                if fin_sent {
                    // The connection wrote the request head with FIN: handed and written.
                    let _ = st.send.on_handed(0, true);
                    let _ = st.send.on_written(0, true);
                } else {
                    let _ = st.send.on_handed(0, false);
                    st.producer = Producer::Body(body);
                }
            }
        }
        (st, None)
    }

    /// Starts the stream of a new actor (`post_start`): the handler call `pre_start` kept, if
    /// any.
    fn start(&mut self, myself: &ActorRef<StreamMsg>) {
        let call = match std::mem::replace(&mut self.producer, Producer::Done) {
            Producer::Call(call) => Some(*call),
            other => {
                self.producer = other;
                None
            }
        };
        self.begin(call, myself);
    }

    /// Starts the stream: the handler's first poll (server, `call`) or the request body
    /// (client).
    fn begin(&mut self, call: Option<Call>, myself: &ActorRef<StreamMsg>) {
        let span = self.span.clone();
        let _g = span.enter();
        if let Some(Call {
            handler,
            mut request,
            fin,
            priority,
        }) = call
        {
            if fin && self.content_length.is_some_and(|n| n != 0) {
                // A declared body that never came: malformed (RFC 9114 §4.1.2).
                debug!("content-length without a body: H3_MESSAGE_ERROR");
                self.abort_both(H3_MESSAGE_ERROR);
                self.drive(myself);
                return;
            }
            if fin {
                self.recv_fin();
            }
            let interim = Arc::new(InterimQueue::default());
            // Everything the handler may use of its stream, in one extension.
            let control = self.control(
                Some(PrioritySignal::new(priority)),
                Some(Interim {
                    queue: interim.clone(),
                    waker: self.waker.clone(),
                }),
            );
            request.extensions_mut().insert(control);
            self.producer = Producer::Handler {
                // Boxed by the handler already.
                future: handler.call(request),
                interim,
            };
        }
        self.drive(myself);
        self.sync_audit();
    }

    /// The application's handle to this stream (a server's carries the priority signal and
    /// the interim sender).
    fn control(&self, priority: Option<PrioritySignal>, interim: Option<Interim>) -> StreamControl {
        StreamControl {
            actor: self.me.clone(),
            stream_id: self.id,
            turn: self.turn,
            conn: self.conn.actor().get_id(),
            stats: self.stats.clone(),
            priority,
            interim,
        }
    }

    /// The request body of a server stream whose HEADERS frame carried FIN: over before it
    /// began, so no buffer is shared (`begin` then takes the FIN as its own event).
    fn ended_recv(&mut self) -> RecvBody {
        let _ = self.recv.on_headers(false);
        RecvBody::ended(self.id, self.turn)
    }

    fn open_recv(&mut self) -> RecvBody {
        let (writer, shared) = BodyWriter::new();
        self.stats.set_recv_buffer(shared.clone());
        self.consumer = Consumer::Body(writer);
        // The message head arrived; a FIN behind it is taken as its own event (`recv_fin`).
        let _ = self.recv.on_headers(false);
        RecvBody::new(
            shared,
            self.id,
            self.turn,
            self.conn.clone(),
            self.me.clone(),
            self.settings.recv_window,
        )
    }

    /// The received body's writer, once there is one.
    fn writer(&self) -> Option<&BodyWriter> {
        match &self.consumer {
            Consumer::Body(w) => Some(w),
            _ => None,
        }
    }

    /// Client: fails the request still waiting for its response head, if any.
    fn fail_reply(&mut self, err: RequestError) {
        if let Consumer::AwaitingResponse { .. } = self.consumer {
            if let Consumer::AwaitingResponse { reply, .. } =
                std::mem::replace(&mut self.consumer, Consumer::Nobody)
            {
                let _ = reply.send(Err(err));
            }
        }
    }

    /// Copies the byte counts and how each direction ended into the shared audit figures.
    fn sync_audit(&mut self) {
        if self.life != Life::Serving {
            // The figures are no longer this actor's (the connection may finish them).
            return;
        }
        let credit = match self.credit {
            WriteCredit::Has(n) | WriteCredit::Fresh(n) => n as u64,
            WriteCredit::Asked => 0,
        };
        let pending_out =
            self.carry.as_ref().map_or(0, |c| c.len() as u64) + self.send.inflight() as u64;
        let now = Synced {
            sent: self.body_sent,
            received: self.body_received,
            send: self.send,
            recv: self.recv,
            credit,
            pending_out,
        };
        if now == self.synced {
            return;
        }
        self.synced = now;
        let (send_state, recv_state) = (self.send.name(), self.recv.name());
        let (send_end, recv_end) = (self.send.end(), self.recv.end());
        let (sent, received) = (self.body_sent, self.body_received);
        self.stats.update(|a| {
            a.bytes_sent = sent;
            a.bytes_received = received;
            a.send_end = send_end;
            a.recv_end = recv_end;
            a.send_state = send_state;
            a.recv_state = recv_state;
            a.write_credit = credit;
            a.pending_out = pending_out;
        });
        // The end is stamped by the connection when it retires the route (one clock read
        // per stream, not two).
    }

    fn recv_fin(&mut self) {
        if self.recv.on_fin().is_ok() {
            self.sync_audit();
            if let Some(w) = self.writer() {
                w.end(End::Fin);
            }
        }
    }

    fn to_conn(&self, msg: H3Msg) {
        let _ = self.conn.cast(ConnMsg::App(msg));
    }

    fn on_message(&mut self, msg: StreamMsg) {
        match msg {
            StreamMsg::Body { chunks, fin } => {
                if self.recv.on_data().is_ok() {
                    self.body_received += chunks.iter().map(|c| c.len() as u64).sum::<u64>();
                    // RFC 9114 §4.1.2: a body longer than its content-length is malformed.
                    if self.content_length.is_some_and(|n| self.body_received > n) {
                        debug!("body longer than content-length: H3_MESSAGE_ERROR");
                        return self.abort_both(H3_MESSAGE_ERROR);
                    }
                    // Figures first: a reader woken by the push may read them at once.
                    self.sync_audit();
                    if let Some(w) = self.writer() {
                        w.push(chunks);
                    }
                }
                if fin {
                    if self
                        .content_length
                        .is_some_and(|n| self.body_received != n && self.recv == RecvState::Open)
                    {
                        debug!("body shorter than content-length: H3_MESSAGE_ERROR");
                        return self.abort_both(H3_MESSAGE_ERROR);
                    }
                    self.recv_fin();
                }
            }
            StreamMsg::Headers { list, fin } => self.on_headers(list, fin),
            StreamMsg::PeerReset(code) => {
                if self.recv.on_reset(code).is_ok() {
                    debug!(code, "peer reset the stream");
                    self.sync_audit();
                    if let Some(w) = self.writer() {
                        w.end(End::Reset(code));
                    }
                    self.fail_reply(if code == crate::codes::H3_REQUEST_REJECTED {
                        RequestError::Rejected
                    } else {
                        RequestError::StreamReset(code)
                    });
                }
            }
            StreamMsg::PeerStopSending(code) => {
                if self.send.on_stop_sending(code).is_ok() {
                    debug!(code, "peer sent STOP_SENDING");
                    // The handler may still read the request; only the body goes.
                    self.drop_body();
                }
            }
            StreamMsg::Written { bytes, fin, credit } => {
                self.body_sent += bytes as u64;
                if self.send.on_written(bytes, fin).is_err() {
                    trace!(bytes, fin, state = ?self.send, "late write report ignored");
                }
                if credit > 0 {
                    self.credit = match self.credit {
                        WriteCredit::Has(n) => WriteCredit::Has(n.saturating_add(credit)),
                        WriteCredit::Asked => WriteCredit::Fresh(credit),
                        WriteCredit::Fresh(n) => WriteCredit::Fresh(n.saturating_add(credit)),
                    };
                }
            }
            StreamMsg::Poll(_) => self.waker.scheduled.store(false, Ordering::Release),
            StreamMsg::Shutdown { read, write, .. } => self.shut_down(read, write),
            StreamMsg::Cancel { code, .. } => self.shut_down(Some(code), Some(code)),
            StreamMsg::RecvDropped(_) => {
                // RFC 9114 §4.1.2: once a server's response is under way, the rest of the
                // request is simply not needed (H3_NO_ERROR); otherwise (a server that has not
                // answered, a client dropping a response) it is cancelled.
                let started = !matches!(self.send, SendState::Idle | SendState::Informational);
                let code = if self.kind == Kind::Server && started {
                    H3_NO_ERROR
                } else {
                    H3_REQUEST_CANCELLED
                };
                if self.recv.on_stop_sending(code).is_ok() {
                    self.to_conn(H3Msg::StopSending {
                        stream_id: self.id,
                        code,
                    });
                }
            }
            // Taken in `handle`.
            StreamMsg::Start(_) => {}
        }
    }

    /// A message this actor does not take (it serves no stream, or another one): a reset of
    /// the stream it parked with its last hand-over goes on to the connection; the rest is
    /// about an earlier stream and is dropped.
    fn after_hand_over(&self, msg: StreamMsg) {
        if let (
            Life::HandedOver,
            StreamMsg::Shutdown {
                turn,
                write: Some(code),
                ..
            },
        ) = (self.life, msg)
        {
            if turn == self.turn {
                self.to_conn(H3Msg::Reset {
                    stream_id: self.id,
                    code,
                });
            }
        }
    }

    /// The application or an operator shuts the stream down: stop receiving with `read`, reset
    /// sending with `write`; a direction already finished is left as it is.
    fn shut_down(&mut self, read: Option<u64>, write: Option<u64>) {
        if let Some(code) = write {
            self.drop_body();
            self.abort_send(code);
        }
        if let Some(code) = read {
            if self.recv.on_stop_sending(code).is_ok() {
                if let Some(w) = self.writer() {
                    w.end(End::Aborted(format!(
                        "receiving shut down by the application (0x{code:x})"
                    )));
                }
                self.to_conn(H3Msg::StopSending {
                    stream_id: self.id,
                    code,
                });
            }
        }
    }

    /// Whether `msg` is about the stream this actor serves now. The connection only routes the
    /// current stream, so its messages are, unless the actor is parked; handles of an earlier
    /// stream (a waker, a dropped body, a `StreamControl`) name its turn, which no later
    /// stream has (a stream ID could: the next stream may be another connection's, with the
    /// same ID).
    fn concerns(&self, msg: &StreamMsg) -> bool {
        match msg {
            StreamMsg::Poll(turn)
            | StreamMsg::RecvDropped(turn)
            | StreamMsg::Shutdown { turn, .. } => self.life == Life::Serving && *turn == self.turn,
            StreamMsg::Cancel { stream_id, .. } => {
                self.life == Life::Serving && *stream_id == self.id
            }
            _ => self.life == Life::Serving,
        }
    }

    /// Whether this actor may serve a later stream once this one ended: parking is on, and it
    /// has no live child (a datagram flow), which would otherwise outlive its stream. Only a
    /// stream whose control lent out the actor's cell can have children to ask ractor about.
    fn may_park(&self, myself: &ActorRef<StreamMsg>) -> bool {
        self.settings.stream_actor_pool > 0
            && self.flow.is_none()
            && (!self.stats.cell_lent() || myself.get_children().is_empty())
    }

    /// Both directions ended: park, to serve a later stream, or stop. An actor with a live
    /// child (a datagram flow) stops, taking its children with it.
    fn finish(&mut self, myself: &ActorRef<StreamMsg>) {
        if !self.may_park(myself) {
            myself.stop(None);
            return;
        }
        self.park(Life::Parked);
        self.to_conn(H3Msg::Parked { stream_id: self.id });
    }

    /// Drops what the stream held, as stopping would, and waits for a connection's next
    /// stream; the figures synced now are the last this actor writes.
    fn park(&mut self, life: Life) {
        self.stop_producing();
        self.consumer = Consumer::Nobody;
        self.sync_audit();
        self.life = life;
    }

    /// Nothing more will be sent and nothing more read: drop the handler (a server that has not
    /// answered) or the outgoing body.
    fn stop_producing(&mut self) {
        self.producer = Producer::Done;
        self.carry = None;
    }

    /// Nothing more will be sent: drop the outgoing body. A handler still running keeps going
    /// (it may still read the request); its response will not be sent.
    fn drop_body(&mut self) {
        if let Producer::Body(_) = self.producer {
            self.producer = Producer::Done;
        }
        self.carry = None;
    }

    fn on_headers(&mut self, list: Vec<Header>, fin: bool) {
        if self.recv == RecvState::AwaitingHeaders {
            // The first response byte: an interim or the final response.
            self.stats.first_headers(Instant::now(), None);
            let parts = match headers::parse_response(&list) {
                Ok(p) => p,
                Err(e) => {
                    debug!("malformed response: {e}");
                    self.abort_both(H3_MESSAGE_ERROR);
                    self.fail_reply(RequestError::MalformedResponse(e.0));
                    return;
                }
            };
            if parts.status.is_informational() {
                // Interim responses (1xx) precede the final one; it is still awaited. They are
                // handed to the caller with the final response, up to a bound.
                trace!(status = %parts.status, "interim response");
                let over = match &mut self.consumer {
                    Consumer::AwaitingResponse { interim, .. } => {
                        interim.push(parts);
                        interim.len() > MAX_INTERIM_RESPONSES
                    }
                    _ => false,
                };
                if over {
                    debug!(
                        "more than {MAX_INTERIM_RESPONSES} interim responses: H3_EXCESSIVE_LOAD"
                    );
                    self.abort_both(H3_EXCESSIVE_LOAD);
                    self.fail_reply(RequestError::MalformedResponse(format!(
                        "more than {MAX_INTERIM_RESPONSES} interim (1xx) responses"
                    )));
                }
                return;
            }
            let Consumer::AwaitingResponse { reply, interim } =
                std::mem::replace(&mut self.consumer, Consumer::Nobody)
            else {
                return;
            };
            let body = self.open_recv();
            if fin {
                self.recv_fin();
            }
            let mut resp = Response::from_parts(parts, body);
            resp.extensions_mut().insert(self.control(None, None));
            if let Some(flow) = self.flow.take() {
                resp.extensions_mut().insert(flow);
            }
            if !interim.is_empty() {
                resp.extensions_mut().insert(InterimResponses(interim));
            }
            let _ = reply.send(Ok(resp));
        } else if self.recv == RecvState::Open {
            match headers::parse_trailers(&list) {
                Ok(t) => {
                    if let Some(w) = self.writer() {
                        w.set_trailers(t);
                    }
                    if fin {
                        self.recv_fin();
                    }
                }
                Err(e) => {
                    debug!("malformed trailers: {e}");
                    self.abort_both(H3_MESSAGE_ERROR);
                }
            }
        }
    }

    /// Resets our sending direction and stops the peer's, with one code.
    fn abort_both(&mut self, code: u64) {
        if self.send.on_reset(code).is_ok() {
            self.stop_producing();
            self.to_conn(H3Msg::Reset {
                stream_id: self.id,
                code,
            });
        }
        if self.recv.on_stop_sending(code).is_ok() {
            if let Some(w) = self.writer() {
                w.end(End::Aborted(format!("stream aborted with code 0x{code:x}")));
            }
            self.to_conn(H3Msg::StopSending {
                stream_id: self.id,
                code,
            });
        }
    }

    /// Polls what this actor drives (the handler, then the outgoing body, within the write
    /// credit) and hands whatever is ready to the connection in one message; stops the actor
    /// once both directions end.
    fn drive(&mut self, myself: &ActorRef<StreamMsg>) {
        let waker = Waker::from(self.waker.clone());
        let mut cx = Context::from_waker(&waker);
        let mut frames: Vec<OutFrame> = Vec::new();
        let mut more = false;

        if let Producer::Handler { future, interim } = &mut self.producer {
            let ready = future.as_mut().poll(&mut cx);
            // Interim responses the handler sent go out before anything else.
            for parts in interim.take() {
                let opening = (self.send == SendState::Idle).then(Instant::now);
                if self.send.on_interim().is_ok() {
                    frames.push(OutFrame::Headers {
                        list: headers::response_headers(parts.status, parts.headers),
                        section: Section::Interim,
                        opening,
                    });
                }
            }
            if let Poll::Ready(resp) = ready {
                self.producer = Producer::Done;
                if self.send.can_send() {
                    let (mut parts, body) = resp.into_parts();
                    let fin = body.is_end_stream();
                    // RFC 9218 §5: a priority the handler chose is applied to the stream and
                    // signalled in the response's `priority` field.
                    let priority = parts.extensions.get::<Priority>().copied();
                    if let Some(p) = priority {
                        if !parts.headers.contains_key("priority") {
                            if let Ok(v) = http::HeaderValue::from_str(&p.to_field_value()) {
                                parts.headers.insert("priority", v);
                            }
                        }
                    }
                    let opening = (self.send == SendState::Idle).then(Instant::now);
                    frames.push(OutFrame::Headers {
                        list: headers::response_headers(parts.status, parts.headers),
                        section: Section::Final { priority, fin },
                        opening,
                    });
                    let _ = self.send.on_handed(0, fin);
                    if !fin {
                        self.producer = Producer::Body(body);
                    }
                }
            }
        }

        if let Producer::Body(body) = &mut self.producer {
            let mut budget = match self.credit {
                WriteCredit::Has(n) | WriteCredit::Fresh(n) => n,
                WriteCredit::Asked => 0,
            };
            let answer_due = matches!(self.credit, WriteCredit::Fresh(_));
            let mut handed = 0usize;
            let mut fin = false;
            let mut failed = None;
            // The rest of a chunk cut at the last credit boundary goes first.
            if let Some(mut rest) = self.carry.take() {
                let n = rest.len().min(budget);
                if n < rest.len() {
                    self.carry = Some(rest.split_off(n));
                }
                if n > 0 {
                    budget -= n;
                    handed += n;
                    frames.push(OutFrame::Data {
                        bytes: rest,
                        fin: false,
                    });
                }
            }
            while self.carry.is_none() && budget > 0 && frames.len() < MAX_CHUNKS_PER_MESSAGE {
                match body.poll_frame(&mut cx) {
                    Poll::Ready(Some(Ok(Frame::Data(mut chunk)))) => {
                        if chunk.is_empty() {
                            continue;
                        }
                        if chunk.len() > budget {
                            // Within credit: the rest waits here for the next grant.
                            self.carry = Some(chunk.split_off(budget));
                        }
                        budget -= chunk.len();
                        handed += chunk.len();
                        frames.push(OutFrame::Data {
                            bytes: chunk,
                            fin: false,
                        });
                    }
                    Poll::Ready(Some(Ok(Frame::Trailers(t)))) => {
                        // Trailers end the body: the section carries FIN.
                        frames.push(OutFrame::Headers {
                            list: headers::trailer_headers(t),
                            section: Section::Trailers,
                            opening: None,
                        });
                        fin = true;
                        break;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        debug!("body stream failed: {e}");
                        failed = Some(if e.downcast_ref::<BodyCancelled>().is_some() {
                            H3_REQUEST_CANCELLED
                        } else {
                            H3_INTERNAL_ERROR
                        });
                        break;
                    }
                    Poll::Ready(None) => {
                        fin = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if !fin && failed.is_none() && self.carry.is_none() && body.is_end_stream() {
                // Credit ran out exactly at the body's end: the FIN goes with these bytes, not
                // in a hand-over of its own after another grant.
                fin = true;
            }
            if let Some(code) = failed {
                self.drop_body();
                // What was produced before the failure goes first, then the reset.
                if !frames.is_empty() {
                    self.to_conn(H3Msg::Send {
                        stream_id: self.id,
                        frames: std::mem::take(&mut frames),
                        more: false,
                        last: false,
                    });
                }
                self.abort_send(code);
            } else {
                if fin {
                    self.producer = Producer::Done;
                    match frames.last_mut() {
                        Some(OutFrame::Data { fin: f, .. }) => *f = true,
                        Some(OutFrame::Headers {
                            section: Section::Trailers,
                            ..
                        }) => {}
                        _ => frames.push(OutFrame::Data {
                            bytes: Bytes::new(),
                            fin: true,
                        }),
                    }
                }
                if handed > 0 || fin {
                    let _ = self.send.on_handed(handed, fin);
                }
                self.credit = if budget > 0 || fin {
                    WriteCredit::Has(budget)
                } else {
                    // Spent, with more to come: ask once, with this hand-over.
                    more = self.credit != WriteCredit::Asked;
                    WriteCredit::Asked
                };
                if answer_due && frames.is_empty() && !more {
                    // A grant we cannot use yet (the body is pending): say so, so the
                    // connection stops holding room for us.
                    self.to_conn(H3Msg::Send {
                        stream_id: self.id,
                        frames: Vec::new(),
                        more: false,
                        last: false,
                    });
                }
            }
        }

        if !frames.is_empty() || more {
            // The FIN handed over with the receiving direction already over: nothing more can
            // happen to the stream that this actor must hear of, so it parks now and the
            // connection finishes the stream (no `Written`, no `Parked`).
            let last = self.recv.is_terminal()
                && frames.iter().any(OutFrame::ends_stream)
                && self.may_park(myself);
            if last {
                // Parked (its figures final as far as it knows) before the connection can
                // take the stream's figures over: on a multi-thread runtime it may at once.
                trace!("stream done: last hand-over");
                self.park(Life::HandedOver);
            }
            self.to_conn(H3Msg::Send {
                stream_id: self.id,
                frames,
                more,
                last,
            });
            if last {
                return;
            }
        }

        if self.stop_latch.check(self.send, self.recv) {
            trace!("stream done");
            self.finish(myself);
        }
    }

    fn abort_send(&mut self, code: u64) {
        if self.send.on_reset(code).is_ok() {
            self.to_conn(H3Msg::Reset {
                stream_id: self.id,
                code,
            });
        }
    }
}
