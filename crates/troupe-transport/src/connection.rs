//! The connection actor: sole owner of one `crate::QuicConnection`.
//!
//! One turn of the actor = one message: packets fed in (all that were queued), or a timer
//! expiry, or an application message; then the application is given a chance to read and
//! write, then everything quiche wants to send is flushed, then the single timer is re-armed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info_span, trace, warn, Instrument};

use crate::app::{AppError, ConnCx, ConnectionApp, TurnClock};
use crate::gso::{GsoBatcher, Ready};
use crate::observe::{ActorMeter, Tracked};
use crate::outbox::{ConnMailbox, Outbox};
use crate::route::{Inbox, Packet, Routes};
use crate::stats::bump;
use crate::supervision::FailureRing;
use crate::udp::Socket;

/// Length of the connection IDs this endpoint issues. 16 bytes: unguessable, and well under the
/// 20-byte maximum so routing keys stay small.
pub const LOCAL_CID_LEN: usize = 16;

/// Application messages kept for a connection still in its handshake; more are dropped (and
/// logged). 64: only control messages (shutdown, close) reach a connection that early.
const EARLY_APP_MESSAGES: usize = 64;

/// How long a closing connection waits for its child actors to stop before it exits anyway.
/// 2 s: children only flush state on stop, so anything slower is stuck.
const CHILD_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Handshake in progress; abandoned at the deadline.
    Handshake {
        /// When the handshake timeout fires.
        deadline: Instant,
    },
    /// Handshake complete; application data flows.
    Established {
        /// When the handshake completed.
        since: Instant,
    },
    /// A CONNECTION_CLOSE was sent or received; waiting out the draining period.
    Draining,
    /// Closed; the actor is stopping.
    Closed,
}

/// Which error space a CONNECTION_CLOSE code belongs to (RFC 9000 §19.19): QUIC's own
/// transport errors, or the application protocol's (HTTP/3's `H3_*` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorSpace {
    /// A QUIC transport error code (frame type 0x1c).
    Transport,
    /// An application protocol error code (frame type 0x1d).
    Application,
}

impl ErrorSpace {
    fn from_is_app(is_app: bool) -> Self {
        if is_app {
            ErrorSpace::Application
        } else {
            ErrorSpace::Transport
        }
    }

    /// `"application"` or `"transport"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorSpace::Application => "application",
            ErrorSpace::Transport => "transport",
        }
    }
}

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The handshake did not complete within the handshake timeout.
    HandshakeTimeout,
    /// No packet within the idle timeout.
    IdleTimeout,
    /// We closed it.
    Local {
        /// The code's error space.
        space: ErrorSpace,
        /// Error code.
        code: u64,
        /// Reason phrase.
        reason: String,
    },
    /// The peer closed it.
    Peer {
        /// The code's error space.
        space: ErrorSpace,
        /// Error code.
        code: u64,
        /// Reason phrase.
        reason: String,
    },
    /// The actor stopped without a QUIC close (endpoint shutdown).
    Aborted,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::HandshakeTimeout => write!(f, "handshake timeout"),
            CloseReason::IdleTimeout => write!(f, "idle timeout"),
            CloseReason::Local {
                space,
                code,
                reason,
            } => {
                write!(f, "closed locally ({} error 0x{code:x}", space.as_str())?;
                reason_suffix(f, reason)
            }
            CloseReason::Peer {
                space,
                code,
                reason,
            } => {
                write!(f, "closed by peer ({} error 0x{code:x}", space.as_str())?;
                reason_suffix(f, reason)
            }
            CloseReason::Aborted => write!(f, "aborted"),
        }
    }
}

fn reason_suffix(f: &mut std::fmt::Formatter<'_>, reason: &str) -> std::fmt::Result {
    if reason.is_empty() {
        write!(f, ")")
    } else {
        write!(f, ": {reason})")
    }
}

fn close_reason(conn: &crate::QuicConnection) -> CloseReason {
    let text = |r: &[u8]| String::from_utf8_lossy(r).into_owned();
    if let Some(e) = conn.peer_error() {
        CloseReason::Peer {
            space: ErrorSpace::from_is_app(e.is_app),
            code: e.error_code,
            reason: text(&e.reason),
        }
    } else if let Some(e) = conn.local_error() {
        CloseReason::Local {
            space: ErrorSpace::from_is_app(e.is_app),
            code: e.error_code,
            reason: text(&e.reason),
        }
    } else if conn.is_timed_out() {
        CloseReason::IdleTimeout
    } else {
        CloseReason::Aborted
    }
}

/// A point-in-time view of one connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// quiche's trace id.
    pub trace_id: String,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Current stage.
    pub stage: Stage,
    /// Time from the first packet to handshake completion, once established.
    pub handshake_time: Option<Duration>,
    /// Smoothed RTT of the active path.
    pub rtt: Option<Duration>,
    /// Congestion window of the active path, bytes.
    pub cwnd: Option<usize>,
    /// quiche's counters (bytes, packets sent, received and lost).
    pub stats: quiche::Stats,
    /// Whether the TLS session was resumed (a shorter handshake with a server talked to
    /// before).
    pub resumed: bool,
    /// How the connection ended; `None` while it is open.
    pub close: Option<CloseReason>,
}

/// Messages to a connection actor.
pub enum ConnMsg<M> {
    /// The receive loop queued packets in this connection's inbox.
    PacketsReady,
    /// The timer fired.
    Timeout,
    /// Flush what application messages queued (sent to self to coalesce flushes).
    Flush,
    /// For the application layer. Sent through a [`ConnMailbox`] it waits in the connection's
    /// [`crate::Outbox`] and arrives with the rest of its burst; cast to the actor directly it
    /// is handled on its own.
    App(M),
    /// Application messages wait in the connection's outbox (cast by the first post into an
    /// empty outbox; see [`crate::outbox`]).
    Outbox,
    /// Close the connection.
    Close {
        /// The code's error space.
        space: ErrorSpace,
        /// Error code.
        code: u64,
        /// Reason phrase.
        reason: Vec<u8>,
    },
    /// Ask for a snapshot.
    Info(RpcReplyPort<ConnectionInfo>),
    /// Ask for this connection's node of the live tree (with its streams).
    Snapshot(RpcReplyPort<crate::snapshot::ConnectionSnapshot>),
    /// Start writing a qlog of this live connection into `dir` (one `.sqlog` file named after
    /// the trace id); the reply is the file's path, or why not.
    StartQlog {
        /// The directory (must exist).
        dir: std::path::PathBuf,
        /// Where the answer goes.
        reply: RpcReplyPort<Result<std::path::PathBuf, String>>,
    },
}

/// Names of the connection actor's messages, for its meter (indexed by [`ConnMsg::code`]).
pub(crate) const CONN_MESSAGES: &[&str] = &[
    "packets ready",
    "timeout",
    "flush",
    "application message",
    "close",
    "info",
    "snapshot",
    "child event",
    "start qlog",
    "application messages",
];

impl<M> ConnMsg<M> {
    fn code(&self) -> u8 {
        match self {
            ConnMsg::PacketsReady => 0,
            ConnMsg::Timeout => 1,
            ConnMsg::Flush => 2,
            ConnMsg::App(_) => 3,
            ConnMsg::Close { .. } => 4,
            ConnMsg::Info(_) => 5,
            ConnMsg::Snapshot(_) => 6,
            ConnMsg::StartQlog { .. } => 8,
            ConnMsg::Outbox => 9,
        }
    }
}

/// The live connection actors of one endpoint, by actor id, with counted mailboxes. Each
/// connection actor registers itself when it starts and leaves when it stops; the endpoint
/// removes one that failed (a failed actor skips its `post_stop`).
pub(crate) type Registry<M> = Arc<dashmap::DashMap<ractor::ActorId, Registered<M>>>;

/// A live connection actor as the endpoint's registry holds it.
pub(crate) struct Registered<M> {
    /// Its counted mailbox.
    pub(crate) mailbox: ConnMailbox<M>,
    /// quiche's trace id (how logs, the snapshot and admin actions name it).
    pub(crate) trace_id: Arc<str>,
}

impl<M> Clone for Registered<M> {
    fn clone(&self) -> Self {
        Registered {
            mailbox: self.mailbox.clone(),
            trace_id: self.trace_id.clone(),
        }
    }
}

/// What a connection's closed-watch holds: nothing while it is open, then its final figures
/// (with [`ConnectionInfo::close`] set).
pub(crate) type Closed = Option<Arc<ConnectionInfo>>;

/// Handle to a live connection: its actor and a way to learn how it ended.
pub struct Connection<M: Send + 'static> {
    mailbox: ConnMailbox<M>,
    closed: watch::Receiver<Closed>,
    peer: SocketAddr,
}

impl<M: Send + 'static> Clone for Connection<M> {
    fn clone(&self) -> Self {
        Connection {
            mailbox: self.mailbox.clone(),
            closed: self.closed.clone(),
            peer: self.peer,
        }
    }
}

impl<M: Send + 'static> Connection<M> {
    pub(crate) fn new(
        mailbox: ConnMailbox<M>,
        closed: watch::Receiver<Closed>,
        peer: SocketAddr,
    ) -> Self {
        Connection {
            mailbox,
            closed,
            peer,
        }
    }

    /// The connection actor.
    pub fn actor(&self) -> &ActorRef<ConnMsg<M>> {
        self.mailbox.actor()
    }

    /// The connection actor's mailbox, its sends counted in its meter (application messages
    /// through the connection's outbox).
    pub fn mailbox(&self) -> &ConnMailbox<M> {
        &self.mailbox
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Sends a message to the application layer of this connection (through its outbox:
    /// handled in the order sent, with the rest of its burst).
    pub fn send(&self, msg: M) -> Result<(), CloseReason> {
        self.mailbox
            .post(msg)
            .map_err(|_| self.close_reason().unwrap_or(CloseReason::Aborted))
    }

    /// Closes the connection with an application error code.
    pub fn close(&self, code: u64, reason: &str) {
        let _ = self.mailbox.cast(ConnMsg::Close {
            space: ErrorSpace::Application,
            code,
            reason: reason.as_bytes().to_vec(),
        });
    }

    /// The close reason, if the connection is closed.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed.borrow().as_ref().and_then(|i| i.close.clone())
    }

    /// Waits until the connection is closed and returns why.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.closed.clone();
        let r = match rx.wait_for(|r| r.is_some()).await {
            Ok(r) => r.as_ref().and_then(|i| i.close.clone()),
            Err(_) => None,
        };
        r.unwrap_or(CloseReason::Aborted)
    }

    /// The connection's final figures (handshake time, RTT, cwnd, bytes, packets lost, close
    /// reason) once it has closed; `None` while it is open.
    pub fn final_info(&self) -> Option<ConnectionInfo> {
        self.closed.borrow().as_ref().map(|i| (**i).clone())
    }

    /// A snapshot of the connection's figures: live from the actor while it runs, its final
    /// figures once closed. `None` only if the actor vanished without reporting (a panic).
    pub async fn info(&self) -> Option<ConnectionInfo> {
        if let Some(i) = self.final_info() {
            return Some(i);
        }
        self.mailbox.meter().on_send();
        let live = self
            .actor()
            .call(ConnMsg::Info, Some(Duration::from_secs(5)))
            .await
            .ok()
            .and_then(|r| r.success_or(()).ok());
        live.or_else(|| self.final_info())
    }
}

/// Result sent to whoever waits for a client connection to come up.
pub(crate) type EstablishedTx = oneshot::Sender<Result<(), CloseReason>>;

/// Everything a connection actor starts with.
pub(crate) struct ConnArgs<A: ConnectionApp> {
    /// Boxed: quiche's connection is several kilobytes, and spawning an actor moves its
    /// arguments and state more than once (a quarter of the non-TLS work of a handshake went
    /// to those copies).
    pub(crate) conn: Box<crate::QuicConnection>,
    pub(crate) app: A,
    pub(crate) inbox: Arc<Inbox>,
    /// Where the application's messages wait (shared with the handle the spawner returns).
    pub(crate) outbox: Arc<Outbox<A::Msg>>,
    pub(crate) routes: Routes,
    pub(crate) socket: Arc<Socket>,
    pub(crate) handshake_timeout: Duration,
    /// Routes this connection owns besides its source connection IDs (the client's original
    /// destination connection ID on a server without Retry).
    pub(crate) extra_routes: Vec<quiche::ConnectionId<'static>>,
    pub(crate) established: Option<EstablishedTx>,
    pub(crate) closed_tx: watch::Sender<Closed>,
    pub(crate) max_udp_payload: usize,
    /// Whether runs of packets go out as GSO sends (when the kernel supports it).
    pub(crate) gso: bool,
    pub(crate) session_cache: Option<crate::sessions::SessionSlot>,
    pub(crate) keylog: Option<std::path::PathBuf>,
    pub(crate) qlog_dir: Option<std::path::PathBuf>,
    /// This actor's meter (made by the spawner, which hands out counted references).
    pub(crate) meter: Arc<ActorMeter>,
    pub(crate) registry: Registry<A::Msg>,
    /// The idle timeout we advertised, for the time-left figure.
    pub(crate) idle_timeout: Duration,
    /// The bidirectional streams the peer may have open at once (our limit), for the tree.
    pub(crate) max_streams_bidi: u64,
    /// Where this connection's further source connection IDs come from.
    pub(crate) cids: crate::cid::CidSource,
}

pub(crate) struct ConnState<A: ConnectionApp> {
    conn: Box<crate::QuicConnection>,
    app: A,
    stage: Stage,
    started: Instant,
    handshake_time: Option<Duration>,
    inbox: Arc<Inbox>,
    routes: Routes,
    socket: Arc<Socket>,
    cids: crate::cid::CidSource,
    extra_routes: Vec<quiche::ConnectionId<'static>>,
    established: Option<EstablishedTx>,
    closed_tx: watch::Sender<Closed>,
    close_reason: Option<CloseReason>,
    packets: VecDeque<Packet>,
    /// Outgoing packets, grouped into GSO sends.
    batcher: GsoBatcher,
    /// Client: where to keep the server's session ticket once it arrives, for resumption.
    session_cache: Option<crate::sessions::SessionSlot>,
    /// Key-log file and qlog directory, opened in `post_start` (off the receive loop, which
    /// awaits `pre_start`), before the first packet is processed.
    log_files: Option<(Option<std::path::PathBuf>, Option<std::path::PathBuf>)>,
    /// Where this connection's qlog goes, once one was started.
    qlog_path: Option<std::path::PathBuf>,
    timer: watch::Sender<Option<Instant>>,
    armed: Option<Instant>,
    flush_scheduled: bool,
    /// Application messages that arrived during the handshake (a graceful shutdown's GOAWAY,
    /// say), handed over once established. Bounded by `EARLY_APP_MESSAGES`.
    early: Vec<A::Msg>,
    trace_id: String,
    span: tracing::Span,
    /// Counted references to this actor (timer, inbox, self-casts, children), with the
    /// outbox its application messages wait in.
    mailbox: ConnMailbox<A::Msg>,
    /// The application messages of the outbox wake-up being handled (capacity kept).
    outbox_batch: Vec<A::Msg>,
    registry: Registry<A::Msg>,
    /// The last failures of this connection's children.
    failures: FailureRing,
    /// When a packet last arrived (the idle timer restarts then).
    last_recv: Instant,
    /// This turn's time, read at most once per turn (reset as each turn and the close begin).
    clock: TurnClock,
    idle_timeout: Duration,
    max_streams_bidi: u64,
}

/// Borrows the connection for an application hook, leaving `self.app` free to borrow.
macro_rules! cx {
    ($st:ident, $me:ident) => {
        ConnCx {
            conn: &mut $st.conn,
            myself: $me,
            mailbox: &$st.mailbox,
            trace_id: &$st.trace_id,
            metrics: &*$st.routes.stats.metrics,
            failures: &mut $st.failures,
            endpoint: &$st.routes.stats,
            clock: &mut $st.clock,
        }
    };
}

/// The connection actor. Generic over the application protocol running on the connection.
pub(crate) struct ConnectionActor<A>(std::marker::PhantomData<fn() -> A>);

impl<A> Default for ConnectionActor<A> {
    fn default() -> Self {
        ConnectionActor(std::marker::PhantomData)
    }
}

/// The one timer of a connection: a task that sleeps until the deadline in the watch channel
/// and casts `Timeout`. Re-arming is a watch update, never a new task; a *later* deadline is
/// stored without waking the task (it re-reads the deadline when its sleep ends), so the common
/// case — quiche pushing its loss timer back after every packet — costs no wake-up at all.
fn spawn_timer<M: Send + 'static>(me: ConnMailbox<M>) -> watch::Sender<Option<Instant>> {
    let (tx, mut rx) = watch::channel::<Option<Instant>>(None);
    tokio::spawn(async move {
        loop {
            let deadline = *rx.borrow_and_update();
            match deadline {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(d.into()) => {
                            // The deadline may have moved later while we slept.
                            let now = *rx.borrow();
                            if matches!(now, Some(t) if t > Instant::now()) {
                                continue;
                            }
                            if me.cast(ConnMsg::Timeout).is_err() {
                                return;
                            }
                            // Wait for the actor to re-arm before sleeping again.
                            if rx.changed().await.is_err() {
                                return;
                            }
                        }
                        r = rx.changed() => if r.is_err() { return },
                    }
                }
                None => {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    tx
}

impl<A: ConnectionApp> Actor for ConnectionActor<A> {
    type Msg = ConnMsg<A::Msg>;
    type State = ConnState<A>;
    type Arguments = ConnArgs<A>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ConnArgs<A>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mailbox = ConnMailbox::new(Tracked::new(myself.clone(), args.meter), args.outbox);
        let me = mailbox.clone();
        args.inbox.bind(
            myself.get_id(),
            Box::new(move || me.cast(ConnMsg::PacketsReady).is_ok()),
        );
        let trace_id = args.conn.trace_id().to_string();
        args.registry.insert(
            myself.get_id(),
            Registered {
                mailbox: mailbox.clone(),
                trace_id: trace_id.as_str().into(),
            },
        );
        let span = info_span!("conn", conn_id = %trace_id, peer = %args.conn.path_stats().next().map(|p| p.peer_addr.to_string()).unwrap_or_default());
        let now = Instant::now();
        let batcher = GsoBatcher::new(
            args.max_udp_payload,
            args.socket.max_gso_segments(),
            args.gso,
        );
        Ok(ConnState {
            conn: args.conn,
            app: args.app,
            stage: Stage::Handshake {
                deadline: now + args.handshake_timeout,
            },
            started: now,
            handshake_time: None,
            inbox: args.inbox,
            routes: args.routes,
            socket: args.socket,
            cids: args.cids,
            extra_routes: args.extra_routes,
            established: args.established,
            closed_tx: args.closed_tx,
            close_reason: None,
            packets: VecDeque::new(),
            batcher,
            session_cache: args.session_cache,
            log_files: (args.keylog.is_some() || args.qlog_dir.is_some())
                .then(|| (args.keylog.clone(), args.qlog_dir.clone())),
            qlog_path: None,
            timer: spawn_timer(mailbox.clone()),
            outbox_batch: Vec::new(),
            armed: None,
            flush_scheduled: false,
            early: Vec::new(),
            trace_id,
            span,
            mailbox,
            registry: args.registry,
            failures: FailureRing::default(),
            last_recv: now,
            clock: TurnClock::default(),
            idle_timeout: args.idle_timeout,
            max_streams_bidi: args.max_streams_bidi,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((keylog, qlog_dir)) = st.log_files.take() {
            st.open_log_files(keylog, qlog_dir).await;
        }
        // Packets that arrived before the actor existed (a server's first Initial).
        let span = st.span.clone();
        st.turn(&myself, Event::Packets).instrument(span).await;
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Reached on every orderly stop (closed connection or endpoint shutdown).
        st.registry.remove(&_myself.get_id());
        st.leave_handshake();
        if matches!(st.stage, Stage::Handshake { .. }) {
            st.stage = Stage::Closed;
        }
        let info = if st.close_reason.is_none() {
            st.close_reason = Some(CloseReason::Aborted);
            let info = st.info();
            let myself = &_myself;
            let mut cx = cx!(st, myself);
            st.app.on_closed(&mut cx, &info);
            Some(info)
        } else {
            None
        };
        st.remove_routes();
        st.report_closed(info);
        if let Some(tx) = st.established.take() {
            let _ = tx.send(Err(st.close_reason.clone().unwrap_or(CloseReason::Aborted)));
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let meter = st.mailbox.meter().clone();
        // The outbox's wake-up is not counted (its messages are, one by one, in `turn`).
        let _busy = match msg {
            ConnMsg::Outbox => meter.begin_event(msg.code()),
            _ => meter.begin(msg.code()),
        };
        let span = st.span.clone();
        let ev = match msg {
            ConnMsg::PacketsReady => Event::Packets,
            ConnMsg::Outbox => Event::Outbox,
            ConnMsg::Timeout => Event::Timeout,
            ConnMsg::Flush => {
                st.flush_scheduled = false;
                Event::Flush
            }
            ConnMsg::App(m) => Event::App(m),
            ConnMsg::Close {
                space,
                code,
                reason,
            } => Event::Close {
                space,
                code,
                reason,
            },
            ConnMsg::Info(reply) => {
                let _ = reply.send(st.info());
                return Ok(());
            }
            ConnMsg::Snapshot(reply) => {
                let _ = reply.send(st.snapshot(&myself));
                return Ok(());
            }
            ConnMsg::StartQlog { dir, reply } => {
                let r = st.start_qlog(dir).instrument(span).await;
                let _ = reply.send(r);
                return Ok(());
            }
        };
        st.turn(&myself, ev).instrument(span).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Never stop because a child did: the application decides what a child's exit means.
        if matches!(evt, SupervisionEvent::ActorStarted(_)) {
            return Ok(());
        }
        let meter = st.mailbox.meter().clone();
        let _busy = meter.begin_event(7);
        let span = st.span.clone();
        // Boxed: a child's exit is rare (parked stream actors do not exit), and a turn's
        // future inline here would make every message's future ractor builds this large.
        Box::pin(st.turn(&myself, Event::Child(evt)).instrument(span)).await;
        Ok(())
    }
}

enum Event<M> {
    Packets,
    Timeout,
    Flush,
    App(M),
    /// The outbox has application messages.
    Outbox,
    Child(SupervisionEvent),
    Close {
        space: ErrorSpace,
        code: u64,
        reason: Vec<u8>,
    },
}

impl<A: ConnectionApp> Drop for ConnState<A> {
    /// However the actor ends (a panic skips `post_stop`), its outbox refuses later posts and
    /// frees what waits in it.
    fn drop(&mut self) {
        let _ = self.mailbox.outbox().close();
    }
}

impl<A: ConnectionApp> ConnState<A> {
    /// Client: keeps the server's session ticket (it arrives after the handshake), each time a
    /// newer one came, so the next connection to that server resumes.
    fn keep_session(&mut self) {
        if let (Some(slot), Some(ticket)) = (&mut self.session_cache, self.conn.session()) {
            slot.keep(ticket);
        }
    }

    /// Opens the key-log file and the qlog file on a blocking thread and hands them to quiche.
    async fn open_log_files(
        &mut self,
        keylog: Option<std::path::PathBuf>,
        qlog_dir: Option<std::path::PathBuf>,
    ) {
        let role = if self.conn.is_server() {
            "server"
        } else {
            "client"
        };
        let qlog_path = qlog_dir.map(|d| d.join(format!("{role}-{}.sqlog", self.trace_id)));
        let opened = tokio::task::spawn_blocking(move || {
            let keylog = keylog.map(|path| {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path);
                (path, f)
            });
            let qlog = qlog_path.map(|path| {
                let f = std::fs::File::create(&path);
                (path, f)
            });
            (keylog, qlog)
        })
        .await;
        let Ok((keylog, qlog)) = opened else { return };
        match keylog {
            Some((_, Ok(f))) => self.conn.set_keylog(Box::new(f)),
            Some((path, Err(e))) => warn!(path = %path.display(), "cannot open keylog file: {e}"),
            None => {}
        }
        match qlog {
            Some((path, Ok(f))) => {
                self.conn.set_qlog(
                    Box::new(std::io::BufWriter::new(f)),
                    "troupe".into(),
                    format!("troupe {role} {}", self.trace_id),
                );
                self.qlog_path = Some(path);
            }
            Some((path, Err(e))) => warn!(path = %path.display(), "cannot create qlog file: {e}"),
            None => {}
        }
    }

    /// Starts a qlog of this live connection in `dir` (an operator's request, through the
    /// admin endpoint). The file is written line by line, so it can be followed while the
    /// connection runs. One qlog per connection: a second request names the first file.
    async fn start_qlog(&mut self, dir: std::path::PathBuf) -> Result<std::path::PathBuf, String> {
        if let Some(path) = &self.qlog_path {
            return Err(format!(
                "connection {} already writes its qlog to {}",
                self.trace_id,
                path.display()
            ));
        }
        let role = if self.conn.is_server() {
            "server"
        } else {
            "client"
        };
        let path = dir.join(format!("{role}-{}.sqlog", self.trace_id));
        let p = path.clone();
        let f = tokio::task::spawn_blocking(move || std::fs::File::create(&p))
            .await
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        self.conn.set_qlog(
            Box::new(std::io::LineWriter::new(f)),
            "troupe".into(),
            format!("troupe {role} {} (started live)", self.trace_id),
        );
        tracing::info!(path = %path.display(), "qlog started");
        self.qlog_path = Some(path.clone());
        Ok(path)
    }

    fn info(&self) -> ConnectionInfo {
        // The path in use: after a migration quiche still lists the old one first.
        let path = self.conn.path_stats().find(|p| p.active);
        ConnectionInfo {
            trace_id: self.trace_id.clone(),
            peer: path
                .as_ref()
                .map(|p| p.peer_addr)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            stage: self.stage,
            handshake_time: self.handshake_time,
            rtt: path.as_ref().map(|p| p.rtt),
            cwnd: path.as_ref().map(|p| p.cwnd),
            stats: self.conn.stats(),
            resumed: self.conn.is_resumed(),
            close: self.close_reason.clone(),
        }
    }

    /// This connection's node of the live tree, streams included (the application reads
    /// them from its routes' shared figures).
    fn snapshot(&self, myself: &ActorRef<ConnMsg<A::Msg>>) -> crate::snapshot::ConnectionSnapshot {
        use crate::snapshot::{hex, BlockedCounts, StageName};
        let path = self.conn.path_stats().find(|p| p.active);
        let stats = self.conn.stats();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let streams = self.app.streams_snapshot();
        let peer_idle = self
            .conn
            .peer_transport_params()
            .map(|p| Duration::from_millis(p.max_idle_timeout))
            .filter(|d| !d.is_zero());
        let idle = match peer_idle {
            Some(p) if !self.idle_timeout.is_zero() => Some(p.min(self.idle_timeout)),
            Some(p) => Some(p),
            None => (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
        };
        crate::snapshot::ConnectionSnapshot {
            actor: crate::snapshot::ActorNode::of(
                &myself.get_cell(),
                crate::observe::ActorKind::Connection,
                self.mailbox.meter().view(),
            ),
            answered: true,
            trace_id: self.trace_id.clone(),
            source_ids: self.conn.source_ids().map(|c| hex(c.as_ref())).collect(),
            worker: match &self.cids {
                crate::cid::CidSource::Worker { worker, .. } => Some(*worker),
                crate::cid::CidSource::Random => None,
            },
            destination_id: hex(self.conn.destination_id().as_ref()),
            peer: path.as_ref().map(|p| p.peer_addr),
            local: path.as_ref().map(|p| p.local_addr),
            alpn: String::from_utf8_lossy(self.conn.application_proto()).into_owned(),
            stage: Some(match self.stage {
                Stage::Handshake { .. } => StageName::Handshake,
                Stage::Established { .. } => StageName::Established,
                Stage::Draining => StageName::Draining,
                Stage::Closed => StageName::Closing,
            }),
            rtt_ms: path.as_ref().map(|p| ms(p.rtt)),
            min_rtt_ms: path.as_ref().and_then(|p| p.min_rtt).map(ms),
            cwnd: path.as_ref().map(|p| p.cwnd),
            bytes_in_flight: stats
                .sent_bytes
                .saturating_sub(stats.acked_bytes)
                .saturating_sub(stats.lost_bytes),
            pmtu: path.as_ref().map(|p| p.pmtu),
            packets_sent: stats.sent as u64,
            packets_received: stats.recv as u64,
            packets_lost: stats.lost as u64,
            bytes_sent: stats.sent_bytes,
            bytes_received: stats.recv_bytes,
            blocked: BlockedCounts {
                data_blocked_sent: stats.data_blocked_sent_count,
                stream_data_blocked_sent: stats.stream_data_blocked_sent_count,
                data_blocked_received: stats.data_blocked_recv_count,
                stream_data_blocked_received: stats.stream_data_blocked_recv_count,
            },
            streams_open: streams.len(),
            child_actors: myself.get_cell().get_children().len(),
            streams_limit_bidi: self.max_streams_bidi,
            peer_streams_left_bidi: self.conn.peer_streams_left_bidi(),
            idle_timeout_left_secs: idle
                .map(|d| d.saturating_sub(self.last_recv.elapsed()).as_secs_f64()),
            close: (self.conn.is_draining() || self.conn.is_closed())
                .then(|| close_reason(&self.conn).to_string()),
            failures: self.failures.entries(),
            failures_total: self.failures.total(),
            datagram_drops: self
                .app
                .datagram_drops()
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(reason, count)| crate::snapshot::DropCount { reason, count })
                .collect(),
            streams,
        }
    }

    /// Gives one packet to quiche; whether quiche took it.
    fn feed(&mut self, mut p: crate::route::Packet) -> bool {
        let info = quiche::RecvInfo {
            from: p.from,
            to: p.to,
        };
        match self.conn.recv(&mut p.data, info) {
            Ok(_) => true,
            Err(quiche::Error::Done) => false,
            Err(e) => {
                trace!("packet rejected by quiche: {e}");
                false
            }
        }
    }

    /// One actor turn: apply the event, let the application react, flush, re-arm the timer.
    async fn turn(&mut self, myself: &ActorRef<ConnMsg<A::Msg>>, ev: Event<A::Msg>) {
        if self.stage == Stage::Closed {
            // The outbox closed with the connection: nothing waits in it.
            return;
        }
        self.clock.reset();
        let mut force_rearm = false;
        let mut app_result = Ok(());
        match ev {
            Event::Packets => {
                self.inbox.drain(&mut self.packets);
                let mut fed = 0usize;
                // Between the packets of a batch the application may read what each made
                // readable (`ConnectionApp::on_packet_fed`); after the last, `on_readable`.
                let interleave = self.is_established();
                loop {
                    // The packet is gone before the await below: a packet held across it
                    // would enlarge the future of every turn.
                    let Some(p) = self.packets.pop_front() else {
                        break;
                    };
                    let took = self.feed(p);
                    fed += usize::from(took);
                    if took && interleave && app_result.is_ok() && !self.packets.is_empty() {
                        let mut cx = cx!(self, myself);
                        app_result = self.app.on_packet_fed(&mut cx).await;
                    }
                }
                trace!(packets = fed, "fed packets");
                if fed > 0 {
                    self.last_recv = self.clock.now();
                }
                self.keep_session();
                if matches!(self.stage, Stage::Handshake { .. }) && self.conn.is_established() {
                    // Boxed: it runs once, and its future (the application's first messages
                    // included) would otherwise enlarge every turn's.
                    Box::pin(self.check_established(myself)).await;
                }
                if self.is_established() && app_result.is_ok() {
                    let mut cx = cx!(self, myself);
                    app_result = self.app.on_readable(&mut cx).await;
                }
            }
            Event::Timeout => {
                force_rearm = true;
                if let Stage::Handshake { deadline } = self.stage {
                    if Instant::now() >= deadline && !self.conn.is_established() {
                        debug!("handshake timeout");
                        let _ = self.conn.close(false, 0x0, b"handshake timeout");
                        self.flush_packets().await;
                        Box::pin(self.finish(myself, CloseReason::HandshakeTimeout)).await;
                        return;
                    }
                }
                self.conn.on_timeout();
            }
            Event::Flush => {}
            Event::App(m) => {
                app_result = self.app_message(myself, m).await;
                return self.after_app(myself, app_result, 1).await;
            }
            Event::Outbox => {
                // The whole burst in one turn, in the order posted, then one flush.
                let mut batch = std::mem::take(&mut self.outbox_batch);
                self.mailbox.outbox().drain(&mut batch);
                let n = batch.len() as u64;
                for m in batch.drain(..) {
                    if self.stage == Stage::Closed {
                        // An earlier message's error closed the connection: the rest are
                        // dropped, as messages behind a close are.
                        continue;
                    }
                    if let Err(e) = self.app_message(myself, m).await {
                        self.app_error(e);
                        self.flush(myself, false).await;
                    }
                }
                self.outbox_batch = batch;
                self.mailbox.meter().handled(n);
                // This wake-up itself is not counted: nothing else waits when the count is 0.
                return self.after_app(myself, Ok(()), 0).await;
            }
            Event::Child(evt) => {
                let mut cx = cx!(self, myself);
                app_result = self.app.on_child_event(&mut cx, evt).await;
                return self.after_app(myself, app_result, 1).await;
            }
            Event::Close {
                space,
                code,
                reason,
            } => {
                // Before the handshake completes only transport closes can be sent.
                let app = space == ErrorSpace::Application && self.is_established();
                let _ = self.conn.close(app, code, &reason);
            }
        }
        if let Err(e) = app_result {
            self.app_error(e);
        }
        self.flush(myself, force_rearm).await;
    }

    /// After an application message or a child's event: flush once after the messages already
    /// queued are handled. Nothing else waiting (the common case under light load): now, with
    /// no message; otherwise one `Flush` queued behind them. An application error closes the
    /// connection, which is flushed at once.
    ///
    /// `alone` is the mailbox count at which nothing else waits: 1 while a counted message is
    /// being handled, 0 after an outbox burst (whose messages are counted handled by then).
    async fn after_app(
        &mut self,
        myself: &ActorRef<ConnMsg<A::Msg>>,
        r: Result<(), AppError>,
        alone: u64,
    ) {
        if let Err(e) = r {
            self.app_error(e);
            self.flush(myself, false).await;
            return;
        }
        if self.flush_scheduled {
            return;
        }
        if self.mailbox.meter().queued() <= alone {
            self.flush(myself, false).await;
        } else {
            self.flush_scheduled = true;
            let _ = self.mailbox.cast(ConnMsg::Flush);
        }
    }

    /// One application message: to the application once established; kept for it (up to
    /// `EARLY_APP_MESSAGES`) during the handshake; dropped otherwise.
    async fn app_message(
        &mut self,
        myself: &ActorRef<ConnMsg<A::Msg>>,
        m: A::Msg,
    ) -> Result<(), AppError> {
        if self.is_established() {
            let mut cx = cx!(self, myself);
            return self.app.on_message(&mut cx, m).await;
        }
        if matches!(self.stage, Stage::Handshake { .. }) && self.early.len() < EARLY_APP_MESSAGES {
            self.early.push(m);
        } else {
            debug!("application message dropped: connection not established");
        }
        Ok(())
    }

    fn app_error(&mut self, e: AppError) {
        debug!(code = e.code, reason = %e.reason, "application closes the connection");
        let _ = self.conn.close(true, e.code, e.reason.as_bytes());
    }

    /// A server connection leaving its handshake (established, or closed before) no longer
    /// counts against `QuicSettings::max_handshakes`. Called before every stage change away
    /// from `Handshake`, so the gauge drops exactly once.
    fn leave_handshake(&mut self) {
        if matches!(self.stage, Stage::Handshake { .. }) && self.conn.is_server() {
            self.routes.stats.handshake_over();
        }
    }

    fn is_established(&self) -> bool {
        matches!(self.stage, Stage::Established { .. })
    }

    async fn check_established(&mut self, myself: &ActorRef<ConnMsg<A::Msg>>) {
        if !matches!(self.stage, Stage::Handshake { .. }) || !self.conn.is_established() {
            return;
        }
        let now = Instant::now();
        self.leave_handshake();
        self.stage = Stage::Established { since: now };
        self.handshake_time = Some(now - self.started);
        self.routes
            .stats
            .metrics
            .connection_established(now - self.started);
        debug!(
            handshake_ms = (now - self.started).as_secs_f64() * 1e3,
            "established"
        );
        self.issue_scids();
        let mut cx = cx!(self, myself);
        let mut r = self.app.on_established(&mut cx).await;
        // Messages that came during the handshake, in order.
        for m in std::mem::take(&mut self.early) {
            if r.is_err() {
                break;
            }
            let mut cx = cx!(self, myself);
            r = self.app.on_message(&mut cx, m).await;
        }
        if let Err(e) = r {
            self.app_error(e);
        } else if let Some(tx) = self.established.take() {
            let _ = tx.send(Ok(()));
        }
    }

    /// Issue as many spare connection IDs as the peer accepts, and route them here.
    fn issue_scids(&mut self) {
        while self.conn.scids_left() > 0 {
            let cid = self.cids.mint();
            match self.conn.new_scid(&cid, rand::random::<u128>(), false) {
                Ok(_) => self.routes.insert(&cid, self.inbox.clone()),
                Err(_) => break,
            }
        }
    }

    fn retire_scids(&mut self) {
        while let Some(cid) = self.conn.retired_scid_next() {
            self.routes.remove(&cid);
        }
    }

    fn remove_routes(&mut self) {
        self.retire_scids();
        let ids: Vec<Vec<u8>> = self
            .conn
            .source_ids()
            .map(|c| c.as_ref().to_vec())
            .collect();
        for id in ids {
            self.routes.remove(&quiche::ConnectionId::from_vec(id));
        }
        for id in self.extra_routes.drain(..) {
            self.routes.remove(&id);
        }
    }

    async fn flush(&mut self, myself: &ActorRef<ConnMsg<A::Msg>>, force_rearm: bool) {
        if self.is_established() {
            let mut cx = cx!(self, myself);
            if let Err(e) = self.app.before_flush(&mut cx) {
                self.app_error(e);
            }
            self.retire_scids();
            self.issue_scids();
        }
        self.flush_packets().await;
        if self.conn.is_closed() {
            let reason = close_reason(&self.conn);
            Box::pin(self.finish(myself, reason)).await;
            return;
        }
        if self.conn.is_draining() && self.stage != Stage::Draining {
            debug!("draining");
            self.leave_handshake();
            self.stage = Stage::Draining;
            // A client waiting for its handshake learns of a close now, not after the draining
            // period (three PTOs: seconds, when the server refused it at once).
            if let Some(tx) = self.established.take() {
                let _ = tx.send(Err(close_reason(&self.conn)));
            }
        }
        self.rearm(force_rearm);
    }

    /// Sends everything quiche has, runs of equal-size packets to one destination as GSO
    /// sends (one syscall for up to `max_segments` packets; see [`GsoBatcher`]).
    async fn flush_packets(&mut self) {
        // The worker thread's send buffer, not one per connection (see `gso`).
        self.batcher.attach(crate::gso::borrow_buffer());
        loop {
            let ready = match self.conn.send(self.batcher.slot()) {
                Ok((n, info)) => self.batcher.commit(n, info.to),
                Err(quiche::Error::Done) => break,
                Err(e) => {
                    warn!("quiche send failed: {e}");
                    let _ = self.conn.close(false, 0x1, b"internal error");
                    break;
                }
            };
            self.send_ready(ready).await;
        }
        let last = self.batcher.finish();
        self.send_ready(last).await;
        crate::gso::return_buffer(self.batcher.detach());
    }

    /// Sends the batch the batcher completed, and any that completes right after it.
    async fn send_ready(&mut self, mut ready: Option<Ready>) {
        while let Some(r) = ready {
            let contents = &self.batcher.buffer()[..r.len];
            if let Err(e) = self.socket.send(r.to, contents, Some(r.segment)).await {
                debug!("send failed: {e}");
            }
            ready = self.batcher.sent();
        }
    }

    fn rearm(&mut self, force: bool) {
        let mut next = self.conn.timeout_instant();
        if let Stage::Handshake { deadline } = self.stage {
            next = Some(next.map_or(deadline, |t| t.min(deadline)));
        }
        if force || next.is_none() || self.armed.is_none() || next < self.armed {
            // Earlier (or first, or cleared): wake the timer task.
            self.armed = next;
            self.timer.send_replace(next);
        } else if next != self.armed {
            // Later: store silently; the sleeping task re-reads it when it wakes.
            self.armed = next;
            self.timer.send_if_modified(|d| {
                *d = next;
                false
            });
        }
    }

    /// Publishes the final figures (the ones the application was given, if any) to handles and
    /// the metrics sink, once.
    fn report_closed(&mut self, info: Option<ConnectionInfo>) {
        if self.closed_tx.borrow().is_some() {
            return;
        }
        let info = info.unwrap_or_else(|| self.info());
        let metrics = &self.routes.stats.metrics;
        if info.handshake_time.is_none() {
            metrics.handshake_failed(info.close.as_ref().unwrap_or(&CloseReason::Aborted));
        }
        metrics.connection_closed(&info);
        self.closed_tx.send_replace(Some(Arc::new(info)));
    }

    /// The connection is over: tell the application, stop the children in order, stop.
    async fn finish(&mut self, myself: &ActorRef<ConnMsg<A::Msg>>, reason: CloseReason) {
        self.clock.reset();
        self.leave_handshake();
        self.stage = Stage::Closed;
        self.close_reason = Some(reason.clone());
        let info = self.info();
        let rtt = self.conn.path_stats().find(|p| p.active).map(|p| p.rtt);
        debug!(
            %reason,
            packets_sent = info.stats.sent,
            packets_received = info.stats.recv,
            packets_lost = info.stats.lost,
            packets_retransmitted = info.stats.retrans,
            bytes_received = info.stats.recv_bytes,
            peer_data_blocked = info.stats.data_blocked_recv_count,
            peer_stream_data_blocked = info.stats.stream_data_blocked_recv_count,
            data_blocked = info.stats.data_blocked_sent_count,
            stream_data_blocked = info.stats.stream_data_blocked_sent_count,
            rtt_ms = rtt.map_or(0.0, |r| r.as_secs_f64() * 1e3),
            "connection closed"
        );
        let mut cx = cx!(self, myself);
        self.app.on_closed(&mut cx, &info);
        // From now on a post is refused (its sender learns the connection closed) and what
        // waits is freed, counted as handled so the tree shows no depth that never drains.
        let dropped = self.mailbox.outbox().close();
        self.mailbox.meter().handled(dropped as u64);
        if matches!(reason, CloseReason::HandshakeTimeout) {
            bump(&self.routes.stats.handshake_timeouts);
        }
        self.remove_routes();
        self.report_closed(Some(info));
        if let Some(tx) = self.established.take() {
            let _ = tx.send(Err(reason));
        }
        self.timer.send_replace(None);
        // Drain, not stop: children first handle what on_closed handed them (the last body
        // bytes), then exit and run post_stop.
        myself
            .drain_children_and_wait(Some(CHILD_STOP_TIMEOUT))
            .await;
        myself.stop(None);
    }
}
