//! The flow actor: one per accepted CONNECT-UDP stream, linked under that stream's actor. It
//! owns the flow's UDP socket (connected to the one target address that was checked), its
//! bounded queues, its rate limits and its counters, and forwards both ways:
//!
//! - client -> target: HTTP datagrams the connection routes to the flow's [`FlowHandle`]
//!   (QUIC DATAGRAM frames) and DATAGRAM capsules read from the CONNECT stream's body; context
//!   id 0 carries UDP payloads, any other is dropped and counted;
//! - target -> client: a receive task reads the socket and sends each payload as an HTTP
//!   datagram when the peer takes them and it fits in a DATAGRAM frame, else as a DATAGRAM
//!   capsule on the response body.
//!
//! The target side uses the kernel's batching (quinn-udp: GSO sends, `recvmmsg` and GRO
//! receives, with one datagram per call where the system has none). Client datagrams of one
//! size go out as one GSO send ([`GsoBatcher`] groups them); the target's datagrams are read
//! many per call into a per-thread buffer and copied once, straight into the QUIC DATAGRAM
//! frame (Quarter Stream ID and context id in front) that the connection hands to quiche.
//!
//! The flow ends when its stream ends (the client's FIN or reset, the connection closing or
//! going away) or after [`FlowLimits::idle_timeout`] without traffic; ending, it finishes the
//! response (FIN) and stops reading the request, so the CONNECT stream ends too.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, info_span, trace};
use troupe_h3::datagram::{split_context, UDP_PAYLOAD_CONTEXT};
use troupe_h3::{
    BodySender, DatagramFlow, DatagramSink, FlowEnd, PeerDatagrams, RecvBody, TrySend,
};

use troupe_transport::gso::{GsoBatcher, Ready, MAX_GSO_SEGMENTS};
use troupe_transport::udp::{RecvMeta, Socket as BatchSocket, BATCH_SIZE};
use troupe_transport::{ActorKind, ActorMeter, ActorNode, Tracked};

use crate::capsule::{datagram_header, CapsuleReader};
use crate::context::{ContextDatagram, ContextHandler};
use crate::rate::{Admit, FlowRate, RateGate};

/// A flow's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlowLimits {
    /// A flow with no datagram either way for this long ends. Default 30 s, RFC 9298's
    /// suggestion for UDP bindings without keepalives being at least 2 minutes for NATs; a
    /// proxy that holds a socket per flow wants shorter, and clients that need longer send.
    pub idle_timeout: Duration,
    /// Client-to-target rate limits. Default none.
    pub rate: FlowRate,
    /// Datagrams handed to the flow actor and not yet forwarded, at most. Default 1024: one
    /// full quiche receive queue; past it the connection's deliveries are dropped and counted
    /// instead of growing the actor's mailbox.
    pub queue: usize,
    /// Datagrams kept from before the flow is ready (the target being resolved and checked),
    /// at most. Default 64: RFC 9298 lets clients send before the response; a handful covers
    /// a handshake's first flight.
    pub early: usize,
}

impl Default for FlowLimits {
    fn default() -> Self {
        FlowLimits {
            idle_timeout: Duration::from_secs(30),
            rate: FlowRate::default(),
            queue: 1024,
            early: 64,
        }
    }
}

/// Counters of one flow. Every datagram the flow was given is either forwarded or counted in
/// exactly one drop counter.
#[derive(Debug, Default)]
pub struct FlowStats {
    /// HTTP datagrams received from the client (frames and capsules).
    pub from_client: AtomicU64,
    /// Of those, DATAGRAM capsules.
    pub from_client_capsules: AtomicU64,
    /// UDP payloads sent to the target.
    pub to_target: AtomicU64,
    /// UDP payload bytes sent to the target.
    pub to_target_bytes: AtomicU64,
    /// Datagrams with a context id the application registered, handed to its handler.
    pub to_application: AtomicU64,
    /// UDP payloads received from the target.
    pub from_target: AtomicU64,
    /// UDP payload bytes received from the target.
    pub from_target_bytes: AtomicU64,
    /// Payloads sent to the client as QUIC DATAGRAM frames.
    pub to_client_datagrams: AtomicU64,
    /// Payloads sent to the client as DATAGRAM capsules.
    pub to_client_capsules: AtomicU64,
    /// Dropped: arrived before the flow was ready, past [`FlowLimits::early`].
    pub drop_early: AtomicU64,
    /// Dropped: held from before the flow was ready, and the request was refused.
    pub drop_refused: AtomicU64,
    /// Dropped: the flow's queue was full.
    pub drop_queue_full: AtomicU64,
    /// Dropped: over the rate limit.
    pub drop_rate: AtomicU64,
    /// Dropped: a context id neither 0 nor registered, or a payload too short for one.
    pub drop_context: AtomicU64,
    /// Dropped: the socket would not take it (buffer full, or an ICMP error reported).
    pub drop_socket: AtomicU64,
    /// Dropped: from the target, but the capsule channel to the client was full.
    pub drop_to_client: AtomicU64,
    /// Dropped: arrived after the flow ended.
    pub drop_after_end: AtomicU64,
    /// Dropped by the kernel: the target's datagrams found the flow socket's receive buffer
    /// full. Read from the system's table when the flow ends (Linux only).
    pub drop_kernel: AtomicU64,
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

impl FlowStats {
    /// Every drop counter, by name.
    pub fn drops(&self) -> [(&'static str, u64); 9] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("early", g(&self.drop_early)),
            ("refused", g(&self.drop_refused)),
            ("queue_full", g(&self.drop_queue_full)),
            ("rate", g(&self.drop_rate)),
            ("context", g(&self.drop_context)),
            ("socket", g(&self.drop_socket)),
            ("to_client", g(&self.drop_to_client)),
            ("after_end", g(&self.drop_after_end)),
            ("kernel", g(&self.drop_kernel)),
        ]
    }

    /// All drops together.
    pub fn dropped(&self) -> u64 {
        self.drops().iter().map(|(_, n)| n).sum()
    }
}

/// Messages to a flow actor.
pub enum FlowMsg {
    /// HTTP datagram payloads from the client (context id still in front).
    FromClient(Vec<Bytes>),
    /// The client's half of the CONNECT stream ended (FIN, reset) or a capsule was malformed
    /// (the code to reset with).
    ClientEnded(Option<u64>),
    /// The connection is done with the flow.
    End(FlowEnd),
    /// Check whether the flow has been idle too long.
    IdleCheck,
}

/// Where the handle sends: nowhere yet (buffering), the live actor, or nowhere any more.
enum Target {
    Pending(VecDeque<Bytes>),
    Live {
        actor: Tracked<FlowMsg>,
        /// Where the flow sends.
        to: SocketAddr,
    },
    Closed,
}

/// Names of the flow actor's messages, for its meter (indexed by [`FlowMsg::code`]).
pub(crate) const FLOW_MESSAGES: &[&str] = &["from client", "client ended", "end", "idle check"];

impl FlowMsg {
    fn code(&self) -> u8 {
        match self {
            FlowMsg::FromClient(_) => 0,
            FlowMsg::ClientEnded(_) => 1,
            FlowMsg::End(_) => 2,
            FlowMsg::IdleCheck => 3,
        }
    }
}

/// The flow's face to the connection: attached as the stream's [`DatagramSink`] as soon as the
/// request is accepted, it keeps early datagrams (bounded) until the actor starts, then hands
/// them over and forwards, never letting the actor's mailbox hold more than
/// [`FlowLimits::queue`] datagrams.
pub struct FlowHandle {
    target: Mutex<Target>,
    /// Datagrams cast to the actor and not yet handled.
    queued: AtomicUsize,
    limits: FlowLimits,
    stats: Arc<FlowStats>,
    /// Gives the connection's flow place back when the flow is over.
    conn: Arc<troupe_h3::flow::ConnDatagrams>,
}

impl FlowHandle {
    /// A handle buffering early datagrams, holding one of the connection's flow places.
    pub(crate) fn new(
        limits: FlowLimits,
        stats: Arc<FlowStats>,
        conn: Arc<troupe_h3::flow::ConnDatagrams>,
    ) -> Arc<FlowHandle> {
        Arc::new(FlowHandle {
            target: Mutex::new(Target::Pending(VecDeque::new())),
            queued: AtomicUsize::new(0),
            limits,
            stats,
            conn,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Target> {
        self.target.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The actor started: from now on datagrams go to it; returns those kept until now.
    fn go_live(&self, actor: Tracked<FlowMsg>, to: SocketAddr) -> Vec<Bytes> {
        let mut t = self.lock();
        match std::mem::replace(&mut *t, Target::Live { actor, to }) {
            Target::Pending(early) => early.into(),
            // Closed before it started: stay closed.
            other => {
                *t = other;
                Vec::new()
            }
        }
    }

    /// The request was refused, or the flow ended: nothing more is taken; what was kept is
    /// dropped and counted. Gives the flow place back (once).
    pub(crate) fn shut(&self) {
        let mut t = self.lock();
        if let Target::Pending(early) = &*t {
            add(&self.stats.drop_refused, early.len() as u64);
        }
        if !matches!(*t, Target::Closed) {
            *t = Target::Closed;
            self.conn.release_flow();
        }
    }

    /// The actor handled `n` datagrams.
    fn took(&self, n: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(n))
            });
    }

    /// Hands client datagrams (from frames or capsules) to the flow, within its queue.
    fn offer(&self, mut batch: Vec<Bytes>) -> bool {
        match &mut *self.lock() {
            Target::Closed => {
                add(&self.stats.drop_after_end, batch.len() as u64);
                false
            }
            Target::Pending(early) => {
                for d in batch {
                    if early.len() < self.limits.early {
                        early.push_back(d);
                    } else {
                        bump(&self.stats.drop_early);
                    }
                }
                true
            }
            Target::Live { actor, .. } => {
                let room = self
                    .limits
                    .queue
                    .saturating_sub(self.queued.load(Ordering::Acquire));
                if batch.len() > room {
                    add(&self.stats.drop_queue_full, (batch.len() - room) as u64);
                    batch.truncate(room);
                }
                if batch.is_empty() {
                    return true;
                }
                self.queued.fetch_add(batch.len(), Ordering::AcqRel);
                actor.cast(FlowMsg::FromClient(batch)).is_ok()
            }
        }
    }
}

impl DatagramSink for FlowHandle {
    fn deliver(&self, batch: Vec<Bytes>) -> bool {
        add(&self.stats.from_client, batch.len() as u64);
        self.offer(batch)
    }

    fn close(&self, why: FlowEnd) {
        let t = self.lock();
        match &*t {
            Target::Live { actor, .. } => {
                let _ = actor.cast(FlowMsg::End(why));
            }
            Target::Pending(_) if why != FlowEnd::GoingAway => {
                drop(t);
                self.shut();
            }
            _ => {}
        }
    }

    fn snapshot(&self) -> Option<troupe_transport::FlowSnapshot> {
        let (actor, to) = match &*self.lock() {
            Target::Live { actor: a, to } => (
                ActorNode::of(&a.actor().get_cell(), ActorKind::Flow, a.meter().view()),
                to.to_string(),
            ),
            _ => return None,
        };
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.stats;
        Some(
            troupe_transport::FlowSnapshot::new(actor, to)
                .with_datagrams(
                    g(&s.from_client),
                    g(&s.to_target),
                    g(&s.from_target),
                    g(&s.to_client_datagrams) + g(&s.to_client_capsules),
                )
                .with_bytes(g(&s.to_target_bytes), g(&s.from_target_bytes))
                .with_drops(s.drops()),
        )
    }
}

/// What a flow actor starts with.
pub(crate) struct FlowArgs {
    pub(crate) flow: DatagramFlow,
    pub(crate) handle: Arc<FlowHandle>,
    pub(crate) socket: Arc<BatchSocket>,
    pub(crate) target: SocketAddr,
    /// Context ids the application registered, and their handlers.
    pub(crate) contexts: HashMap<u64, Arc<dyn ContextHandler>>,
    pub(crate) request: RecvBody,
    pub(crate) response: BodySender,
    pub(crate) limits: FlowLimits,
    pub(crate) stats: Arc<FlowStats>,
    pub(crate) trace_id: String,
    /// The CONNECT stream, to reset it on a malformed capsule.
    pub(crate) control: troupe_h3::StreamControl,
    /// The flow actor's meter.
    pub(crate) meter: Arc<ActorMeter>,
}

/// The flow actor.
pub(crate) struct FlowActor;

pub(crate) struct FlowState {
    meter: Arc<ActorMeter>,
    target: SocketAddr,
    handle: Arc<FlowHandle>,
    socket: Arc<BatchSocket>,
    /// Registered context ids, and the flow (for their replies).
    contexts: HashMap<u64, Arc<dyn ContextHandler>>,
    flow: DatagramFlow,
    stats: Arc<FlowStats>,
    rate: RateGate<governor::clock::QuantaClock>,
    limits: FlowLimits,
    /// Milliseconds since `started` of the last datagram either way.
    last_activity: Arc<AtomicU64>,
    started: Instant,
    /// Taken by `post_start`.
    io: Option<(DatagramFlow, RecvBody, BodySender)>,
    response: Option<BodySender>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    control: troupe_h3::StreamControl,
    span: tracing::Span,
}

impl Actor for FlowActor {
    type Msg = FlowMsg;
    type State = FlowState;
    type Arguments = FlowArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<FlowMsg>,
        a: FlowArgs,
    ) -> Result<FlowState, ActorProcessingErr> {
        // Runs inside the stream actor's handler: trivial, no I/O.
        let span = info_span!(parent: None, "flow", conn_id = %a.trace_id, stream_id = a.flow.stream_id(), target = %a.target);
        let response = a.response;
        Ok(FlowState {
            meter: a.meter,
            target: a.target,
            handle: a.handle,
            socket: a.socket,
            contexts: a.contexts,
            flow: a.flow.clone(),
            rate: RateGate::new(a.limits.rate, governor::clock::QuantaClock::default()),
            stats: a.stats,
            limits: a.limits,
            last_activity: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
            io: Some((a.flow, a.request, response.clone())),
            response: Some(response),
            tasks: Vec::new(),
            control: a.control,
            span,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<FlowMsg>,
        st: &mut FlowState,
    ) -> Result<(), ActorProcessingErr> {
        let _g = st.span.clone().entered();
        let Some((flow, request, response)) = st.io.take() else {
            return Ok(());
        };
        let me = Tracked::new(myself.clone(), st.meter.clone());
        st.tasks.push(tokio::spawn(target_to_client(
            st.socket.clone(),
            flow,
            response,
            st.stats.clone(),
            st.last_activity.clone(),
            st.started,
        )));
        st.tasks.push(tokio::spawn(read_capsules(
            request,
            st.handle.clone(),
            me.clone(),
            st.control.clone(),
        )));
        let every = (st.limits.idle_timeout / 4).max(Duration::from_millis(10));
        st.tasks.push(tokio::spawn({
            let me = me.clone();
            async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if me.cast(FlowMsg::IdleCheck).is_err() {
                        return;
                    }
                }
            }
        }));
        let early = st.handle.go_live(me, st.target);
        if !early.is_empty() {
            trace!(
                n = early.len(),
                "forwarding datagrams kept from before the flow was ready"
            );
            st.forward(early, false);
        }
        debug!("flow open");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<FlowMsg>,
        msg: FlowMsg,
        st: &mut FlowState,
    ) -> Result<(), ActorProcessingErr> {
        let meter = st.meter.clone();
        let _busy = meter.begin(msg.code());
        match msg {
            FlowMsg::FromClient(batch) => st.forward(batch, true),
            FlowMsg::ClientEnded(code) => {
                let _g = st.span.clone().entered();
                match code {
                    Some(code) => {
                        // A malformed capsule: the reader reset the stream both ways; the
                        // response is not finished.
                        debug!(code, "malformed capsule: stream reset");
                        st.response = None;
                    }
                    None => debug!("the client's half of the stream ended: flow over"),
                }
                myself.stop(Some("client ended".into()));
            }
            FlowMsg::End(why) => {
                let _g = st.span.clone().entered();
                debug!(?why, "flow over");
                myself.stop(Some(format!("{why:?}")));
            }
            FlowMsg::IdleCheck => {
                let last = Duration::from_millis(st.last_activity.load(Ordering::Relaxed));
                let idle = st.started.elapsed().saturating_sub(last);
                if idle >= st.limits.idle_timeout {
                    let _g = st.span.clone().entered();
                    debug!(idle_secs = idle.as_secs_f64(), "flow idle: closing");
                    myself.stop(Some("idle".into()));
                }
            }
        }
        Ok(())
    }
}

/// Cleanup runs when the state is dropped: after `post_stop` on an orderly stop, and also when
/// ractor kills the flow (its stream actor stopped: ractor kills a stopping actor's children,
/// skipping their `post_stop`).
impl Drop for FlowState {
    fn drop(&mut self) {
        let _g = self.span.clone().entered();
        debug!(tasks = self.tasks.len(), "flow state dropped");
        for t in self.tasks.drain(..) {
            t.abort();
        }
        // The socket's kernel drops, read while it still exists (its last reference may be
        // the aborted receive task's, released by now or soon: the table keeps the line as
        // long as the socket is open, and this state still holds it).
        if let Some(n) = crate::kernel_drops::read(self.socket.local_addr().port(), self.target) {
            add(&self.stats.drop_kernel, n);
        }
        self.handle.shut();
        // Finish the response: FIN once the target task's clone of the sender is dropped too.
        // The request body is dropped with its reader task, which stops reading it
        // (STOP_SENDING with H3_NO_ERROR once the response started): the CONNECT stream ends
        // both ways.
        if let Some(r) = self.response.take() {
            r.finish();
        }
    }
}

impl FlowState {
    /// Sends client datagrams on to the target: context 0 only, within the rate limits.
    fn forward(&mut self, batch: Vec<Bytes>, counted: bool) {
        if counted {
            self.handle.took(batch.len());
        }
        for d in batch {
            let Ok((ctx, payload)) = split_context(d) else {
                bump(&self.stats.drop_context);
                continue;
            };
            if ctx != UDP_PAYLOAD_CONTEXT {
                match self.contexts.get(&ctx) {
                    Some(h) => {
                        bump(&self.stats.to_application);
                        h.datagram(ContextDatagram::new(
                            ctx,
                            payload,
                            self.target,
                            self.flow.clone(),
                        ));
                    }
                    None => bump(&self.stats.drop_context),
                }
                continue;
            }
            if self.rate.admit(payload.len()) != Admit::Yes {
                bump(&self.stats.drop_rate);
                continue;
            }
            // GSO needs the kernel's support on this socket; where it has none (or refused it),
            // every datagram goes alone, as a batch of one.
            let gso = self.socket.max_gso_segments() > 1;
            if payload.len() > GSO_SEGMENT_MAX || !gso {
                // Too large to batch: the open batch goes first, to keep the order.
                self.flush_batch();
                let one = Ready {
                    to: self.target,
                    len: payload.len(),
                    segment: payload.len(),
                    segments: 1,
                };
                send_counted(&self.socket, &self.stats, one, &payload);
                continue;
            }
            SEND_BATCHER.with_borrow_mut(|b| {
                b.slot()[..payload.len()].copy_from_slice(&payload);
                let mut ready = b.commit(payload.len(), self.target);
                while let Some(r) = ready {
                    send_counted(&self.socket, &self.stats, r, &b.buffer()[..r.len]);
                    ready = b.sent();
                }
            });
        }
        self.flush_batch();
        self.touch();
    }

    /// Sends what the thread's batcher still holds. It is empty between handler calls (every
    /// `forward` ends here, and nothing awaits in between), so flows on one thread share it.
    fn flush_batch(&self) {
        SEND_BATCHER.with_borrow_mut(|b| {
            if let Some(r) = b.finish() {
                send_counted(&self.socket, &self.stats, r, &b.buffer()[..r.len]);
            }
        });
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_activity.store(ms, Ordering::Relaxed);
    }
}

/// Largest client datagram that joins a GSO batch: an Ethernet-sized UDP payload. Datagrams
/// that come in QUIC DATAGRAM frames are smaller still; larger ones (from capsules) are sent
/// alone. Sizes the batcher's buffer (at most 65,000 bytes).
const GSO_SEGMENT_MAX: usize = 1500;

thread_local! {
    /// The GSO batcher, one per runtime thread rather than per flow (its buffer is ~64 KB):
    /// a flow fills and empties it within one handler call, without awaiting.
    static SEND_BATCHER: std::cell::RefCell<GsoBatcher> =
        std::cell::RefCell::new(GsoBatcher::new(GSO_SEGMENT_MAX, MAX_GSO_SEGMENTS, true));
}

/// Sends `bytes` (one datagram, or `r.segments` GSO segments of `r.segment` bytes) to the
/// target without waiting, counting each datagram sent or, when the socket refuses, dropped.
fn send_counted(socket: &BatchSocket, stats: &FlowStats, r: Ready, bytes: &[u8]) {
    let n = r.segments as u64;
    let payload = bytes.len() as u64;
    // Counted before the send: the target's answer may be counted (on another thread)
    // before this one returns, and a reader must never see more answers than sends.
    add(&stats.to_target, n);
    add(&stats.to_target_bytes, payload);
    let segment = (r.segments > 1).then_some(r.segment);
    if let Err(e) = socket.try_send(r.to, bytes, segment) {
        trace!("send to target: {e}");
        stats.to_target.fetch_sub(n, Ordering::Relaxed);
        stats.to_target_bytes.fetch_sub(payload, Ordering::Relaxed);
        add(&stats.drop_socket, n);
    }
}

/// Receive buffers per `recvmmsg` call on a flow socket (quinn-udp's batch, at most 8): each
/// holds one datagram, or with GRO several of one size.
const RECV_SLOTS: usize = if BATCH_SIZE < 8 { BATCH_SIZE } else { 8 };
/// One receive buffer: the largest UDP payload, or a GRO train of them.
const RECV_SLOT: usize = 65_536;

thread_local! {
    /// The receive buffers, one set per runtime thread rather than per flow (8 x 64 KiB): a
    /// flow reads into them and copies each datagram out before it next awaits.
    static RECV_BUFFERS: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(vec![0u8; RECV_SLOTS * RECV_SLOT]);
}

/// What one receive call brought: frames ready for the connection, and payloads too large for
/// a DATAGRAM frame (or for a peer without them) to go in capsules.
#[derive(Default)]
struct Received {
    frames: Vec<troupe_h3::DatagramFrame>,
    capsules: Vec<Bytes>,
    datagrams: u64,
    bytes: u64,
}

/// Reads what the target sent, without waiting: many datagrams per call, each copied once
/// into its QUIC DATAGRAM frame (or capsule). Nothing received when nothing was queued.
fn receive_batch(
    socket: &BatchSocket,
    flow: &DatagramFlow,
    max_payload: usize,
) -> std::io::Result<Received> {
    RECV_BUFFERS.with_borrow_mut(|buf| {
        let mut meta = [RecvMeta::default(); RECV_SLOTS];
        let mut chunks = buf.chunks_mut(RECV_SLOT);
        let mut slots: [std::io::IoSliceMut<'_>; RECV_SLOTS] = std::array::from_fn(|_| {
            std::io::IoSliceMut::new(chunks.next().expect("RECV_SLOTS slots in the buffer"))
        });
        let n = match socket.try_recv(&mut slots, &mut meta) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Received::default()),
            Err(e) => return Err(e),
        };
        let mut got = Received::default();
        for (slot, m) in slots.iter().zip(&meta).take(n) {
            for d in gro_segments(&slot[..m.len], m.stride) {
                got.datagrams += 1;
                got.bytes += d.len() as u64;
                // The context id (one byte, 0) goes in front of the payload.
                if d.len() < max_payload {
                    got.frames.push(flow.frame(UDP_PAYLOAD_CONTEXT, d));
                } else {
                    let mut c = BytesMut::with_capacity(9 + 1 + d.len());
                    c.extend_from_slice(&datagram_header(1 + d.len()));
                    c.extend_from_slice(&[0]);
                    c.extend_from_slice(d);
                    got.capsules.push(c.freeze());
                }
            }
        }
        Ok(got)
    })
}

/// The datagrams in one receive buffer: with GRO, `len` bytes of segments of `stride` bytes
/// each (the last may be shorter); without, one datagram (`stride == len`). An empty
/// datagram is one datagram.
fn gro_segments(filled: &[u8], stride: usize) -> impl Iterator<Item = &[u8]> {
    let empty = filled.is_empty().then_some(filled);
    filled.chunks(stride.max(1)).chain(empty)
}

/// Reads the target's datagrams and sends each to the client: in a QUIC DATAGRAM frame when
/// the peer takes them and it fits, else in a DATAGRAM capsule on the response.
async fn target_to_client(
    socket: Arc<BatchSocket>,
    flow: DatagramFlow,
    response: BodySender,
    stats: Arc<FlowStats>,
    last_activity: Arc<AtomicU64>,
    started: Instant,
) {
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        let frames = flow.connection().peer() == PeerDatagrams::Supported;
        let max = if frames { flow.max_payload() } else { 0 };
        let got = match receive_batch(&socket, &flow, max) {
            Ok(got) if got.datagrams == 0 => continue,
            Ok(got) => got,
            Err(e) => {
                // An ICMP error (port unreachable) is reported on the next call: count it
                // against the datagram it answered, and carry on.
                trace!("receive from target: {e}");
                bump(&stats.drop_socket);
                if response.is_closed() {
                    return;
                }
                continue;
            }
        };
        add(&stats.from_target, got.datagrams);
        add(&stats.from_target_bytes, got.bytes);
        last_activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        if !got.frames.is_empty() {
            add(&stats.to_client_datagrams, got.frames.len() as u64);
            if !flow.send_frames(got.frames) {
                return;
            }
        }
        for c in got.capsules {
            match response.try_send_data(c) {
                Ok(()) => bump(&stats.to_client_capsules),
                Err(TrySend::Full) => bump(&stats.drop_to_client),
                Err(_) => {
                    bump(&stats.drop_to_client);
                    return;
                }
            }
        }
    }
}

/// Reads the request body (the client's half of the CONNECT stream) as capsules and hands
/// their DATAGRAM values to the flow; tells the flow when the body ends.
async fn read_capsules(
    mut body: RecvBody,
    handle: Arc<FlowHandle>,
    flow: Tracked<FlowMsg>,
    control: troupe_h3::StreamControl,
) {
    let mut reader = CapsuleReader::new();
    let end = loop {
        match body.chunk().await {
            Some(Ok(chunk)) => match reader.push(chunk) {
                Ok(values) if values.is_empty() => {}
                Ok(values) => {
                    add(&handle.stats.from_client, values.len() as u64);
                    add(&handle.stats.from_client_capsules, values.len() as u64);
                    handle.offer(values);
                }
                Err(e) => break Some(e.code()),
            },
            Some(Err(_)) => break None,
            None => break reader.finish().err().map(|e| e.code()),
        }
    };
    if let Some(code) = end {
        // Reset before the body is dropped here: dropping it unread would stop the stream
        // with H3_NO_ERROR first.
        control.shutdown(Some(code), Some(code));
    }
    drop(body);
    let _ = flow.cast(FlowMsg::ClientEnded(end));
}

#[cfg(test)]
mod tests {
    use super::gro_segments;

    fn cut(filled: &[u8], stride: usize) -> Vec<Vec<u8>> {
        gro_segments(filled, stride).map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn an_empty_datagram_is_one_datagram() {
        assert_eq!(cut(&[], 0), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn without_gro_a_buffer_is_one_datagram() {
        assert_eq!(cut(&[1, 2, 3], 3), vec![vec![1, 2, 3]]);
    }

    #[test]
    fn a_gro_train_splits_at_the_stride_with_a_shorter_last() {
        let filled: Vec<u8> = (0..10).collect();
        assert_eq!(
            cut(&filled, 4),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
        );
        assert_eq!(cut(&filled[..8], 4).len(), 2);
    }

    #[test]
    fn the_largest_train_is_64_segments() {
        let filled = vec![7u8; 64 * 1200];
        let parts = cut(&filled, 1200);
        assert_eq!(parts.len(), 64);
        assert!(parts.iter().all(|p| p.len() == 1200));
    }
}
