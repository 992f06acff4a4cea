//! The HTTP/3 application inside a connection actor.
//!
//! It owns the `quiche::h3::Connection`, turns `h3::Event`s into stream-actor messages, spawns a
//! linked stream actor per request stream, and moves body bytes between quiche and the stream
//! actors under credit. Per stream it keeps only the route ([`route`]): the actor, the read
//! credit, the unwritten rest of one hand-over, and the scheduling key.
//!
//! One concept per module:
//! - [`msg`]: the messages it takes;
//! - [`route`]: what it keeps per stream;
//! - [`read`]: body bytes from quiche to stream actors, and quiche's read-side subtleties;
//! - [`write`]: body bytes from stream actors into quiche, pulled by credit, and STOP_SENDING;
//! - [`scheduler`]: the RFC 9218 order in which streams are served (a pure type);
//! - [`pool`]: the worker's parked stream actors, kept for later streams (and its policy, a
//!   pure type);
//! - [`accept`]: the server side (accepting requests, limits);
//! - [`goaway`]: graceful shutdown of a server connection;
//! - [`client`]: the client side (requests waiting for a stream).

mod accept;
mod client;
mod datagrams;
mod goaway;
mod msg;
pub(crate) mod pool;
pub(crate) mod read;
mod route;
mod scheduler;
mod unacked;
mod write;

use rustc_hash::FxHashMap;
use std::sync::Arc;

use quiche::h3::{self, Header};
use ractor::{Actor, ActorId, SupervisionEvent};
use tracing::{debug, trace, warn};
use troupe_transport::{AppError, CloseReason, ConnCx, ConnectionApp, ConnectionInfo};

pub(crate) use client::ClientShared;
pub use msg::{H3Msg, OutFrame, PendingRequest, Section};

use crate::audit::{StreamEnd, StreamStats};
use crate::codes::H3_INTERNAL_ERROR;
use crate::error::RequestError;
use crate::events::{ConnectionEvent, EventSink};
use crate::peer_settings::PeerSettings;
use crate::priority::{Priority, PriorityCell};
use crate::server::Handler;
use crate::settings::H3Settings;
use crate::stream::{Role, StreamActor, StreamArgs, StreamMsg, StreamStart};
use accept::ServerSide;
use client::ClientSide;
use route::{Outbound, ReadCredit, Route};
use scheduler::WriteScheduler;
use write::{INITIAL_CREDIT, QUICHE_URGENCY_OFFSET};

/// Which side of the connection we are, with what only that side keeps.
enum Side {
    Server(ServerSide),
    Client(ClientSide),
}

/// The HTTP/3 application of one connection (see the module docs).
pub struct H3App {
    side: Side,
    settings: Arc<H3Settings>,
    h3: Option<h3::Connection>,
    // Fx hashing: a few map operations per stream, keys a peer can shape only within its
    // stream limit (a handful of collisions at worst), so SipHash's flood resistance buys
    // nothing here.
    routes: FxHashMap<u64, Route>,
    by_actor: FxHashMap<ActorId, u64>,
    /// Streams with something to write, in RFC 9218 order.
    scheduler: WriteScheduler,
    /// Scratch for the scheduler's order (kept so a flush allocates nothing).
    order: Vec<u64>,
    /// Streams whose actors parked with their last hand-over and whose sending direction has
    /// now ended, with how: retired at the end of the write pass (kept so it allocates
    /// nothing).
    tails: Vec<(u64, crate::stream::SendState)>,
    /// Streams whose body data came between the packets of this batch (`Bodies::Defer`): read
    /// at the batch's end, before its last HTTP/3 poll, which reports what lies behind the
    /// body (trailers, the end).
    deferred: Vec<u64>,
    /// Streams whose last read stopped with bytes still readable and quiche's `Data` event
    /// still armed (see `read_stream`): before a frame only `h3::poll` takes (the trailer
    /// section behind a body), or on a partial frame. Read at the batch's end after its last
    /// HTTP/3 poll, which takes that frame or completes the partial one.
    rescan: Vec<u64>,
    /// The connection's trace id, shared with its stream actors' spans.
    trace_id: Arc<str>,
    /// HTTP datagram figures shared with this connection's flows.
    datagrams: Arc<crate::flow::ConnDatagrams>,
    /// Routes with a flow attached (kept with the routes, so a send need not count them).
    flows_attached: usize,
    /// Parked stream actors for later streams: the endpoint worker's (server), or the client
    /// endpoint's.
    pool: Arc<pool::ActorPool>,
}

fn internal(e: h3::Error) -> AppError {
    AppError {
        code: H3_INTERNAL_ERROR,
        reason: e.to_string(),
    }
}

/// What a new stream's route holds besides its actor ([`H3App::route`]).
struct RouteSeed {
    read: ReadCredit,
    write: Outbound,
    key: Priority,
    stats: StreamStats,
    signal: Option<Arc<PriorityCell>>,
}

/// A stream no parked actor took: what a new stream actor starts with, and its route's seed
/// ([`H3App::open_stream`], [`H3App::spawn_for`]).
struct NewStream {
    args: Box<StreamArgs>,
    seed: RouteSeed,
}

/// A new stream actor's meter.
fn new_stream_meter() -> Arc<troupe_transport::ActorMeter> {
    troupe_transport::ActorMeter::new(
        troupe_transport::ActorKind::Stream,
        crate::stream::STREAM_MESSAGES,
    )
}

fn shutdown_both(conn: &mut troupe_transport::QuicConnection, stream_id: u64, code: u64) {
    let _ = conn.stream_shutdown(stream_id, quiche::Shutdown::Read, code);
    let _ = conn.stream_shutdown(stream_id, quiche::Shutdown::Write, code);
}

impl H3App {
    pub(crate) fn server(
        handler: Arc<dyn Handler>,
        settings: Arc<H3Settings>,
        events: Option<EventSink>,
        pool: Arc<pool::ActorPool>,
    ) -> Self {
        Self::new(
            Side::Server(ServerSide::new(handler, events)),
            settings,
            pool,
        )
    }

    pub(crate) fn client(
        settings: Arc<H3Settings>,
        shared: Arc<ClientShared>,
        pool: Arc<pool::ActorPool>,
    ) -> Self {
        Self::new(
            Side::Client(ClientSide {
                waiting: Default::default(),
                shared,
            }),
            settings,
            pool,
        )
    }

    fn new(side: Side, settings: Arc<H3Settings>, pool: Arc<pool::ActorPool>) -> Self {
        H3App {
            side,
            h3: None,
            routes: FxHashMap::default(),
            by_actor: FxHashMap::default(),
            scheduler: WriteScheduler::default(),
            order: Vec::new(),
            tails: Vec::new(),
            deferred: Vec::new(),
            rescan: Vec::new(),
            trace_id: Arc::from(""),
            datagrams: Default::default(),
            flows_attached: 0,
            pool,
            settings,
        }
    }

    fn h3_config(&self) -> Result<h3::Config, AppError> {
        let mut c = h3::Config::new().map_err(internal)?;
        if let Some(n) = self.settings.max_field_section_size {
            c.set_max_field_section_size(n);
        }
        c.set_qpack_max_table_capacity(self.settings.qpack_max_table_capacity);
        c.set_qpack_blocked_streams(self.settings.qpack_blocked_streams);
        c.enable_extended_connect(self.settings.extended_connect);
        Ok(c)
    }

    /// Gives a new stream to a stream actor: a parked one from the pool when there is one (one
    /// cast, no await), and routes it. Without one it returns what a new actor starts with: the
    /// caller spawns it with [`H3App::spawn_for`], boxing that future. Only that path awaits,
    /// and its future is large (about 2 KB with ractor's spawn and its arguments): kept off the
    /// common path, a request served by a parked actor neither allocates nor copies it, and the
    /// callers' own futures stay small (the actor runtime moves them with every message). A
    /// stream that no actor can take is reset here with H3_INTERNAL_ERROR.
    fn open_stream(
        &mut self,
        cx: &mut ConnCx<'_, H3Msg>,
        stream_id: u64,
        role: Role,
        stats: StreamStats,
        signal: Option<Arc<PriorityCell>>,
        key: Priority,
    ) -> Option<Box<NewStream>> {
        // A request whose headers carried FIN has no body to read (server), or nothing more to
        // send (client).
        let read = match role {
            Role::Server { fin: true, .. } => ReadCredit::Closed,
            _ => ReadCredit::Open(self.settings.recv_window),
        };
        let write = match role {
            Role::Client { fin_sent: true, .. } => Outbound::Closed,
            _ => Outbound::Idle,
        };
        // The first credit: what quiche can take now, but at least enough for a small response
        // in one hand-over.
        let room = cx.conn.stream_capacity(stream_id).unwrap_or(0);
        let credit = room.max(INITIAL_CREDIT).min(self.settings.send_window);
        let me = cx.myself.get_cell();
        let mut parked = self.pool.take(&me);
        let mut args = Box::new(StreamArgs {
            stream_id,
            conn: cx.mailbox.clone(),
            meter: parked
                .as_ref()
                .map_or_else(new_stream_meter, |p| p.meter().clone()),
            settings: self.settings.clone(),
            trace_id: self.trace_id.clone(),
            role,
            stats: stats.clone(),
            credit,
        });
        let seed = RouteSeed {
            read,
            write,
            key,
            stats,
            signal,
        };
        loop {
            let Some(p) = parked.take() else {
                return Some(Box::new(NewStream { args, seed }));
            };
            match p.cast(StreamMsg::Start(StreamStart(args))) {
                Ok(()) => {
                    self.route(cx, stream_id, p, seed);
                    return None;
                }
                // Gone meanwhile: the next parked one, or a new one.
                Err(ractor::MessagingErr::SendErr(StreamMsg::Start(StreamStart(back)))) => {
                    args = back;
                    parked = self.pool.take(&me);
                    args.meter = parked
                        .as_ref()
                        .map_or_else(new_stream_meter, |p| p.meter().clone());
                }
                Err(_) => {
                    shutdown_both(cx.conn, stream_id, H3_INTERNAL_ERROR);
                    return None;
                }
            }
        }
    }

    /// Spawns a stream actor for a stream no parked actor took ([`H3App::open_stream`]), and
    /// routes it; resets the stream with H3_INTERNAL_ERROR if the spawn fails. Callers box this
    /// future (see `open_stream`).
    async fn spawn_for(&mut self, cx: &mut ConnCx<'_, H3Msg>, new: Box<NewStream>) {
        let NewStream { args, seed } = *new;
        let stream_id = args.stream_id;
        let meter = args.meter.clone();
        match Actor::spawn_linked(None, StreamActor, *args, cx.myself.get_cell()).await {
            Ok((actor, _)) => {
                cx.metrics.stream_actor_spawned();
                let actor = troupe_transport::Tracked::new(actor, meter);
                self.route(cx, stream_id, actor, seed);
            }
            Err(e) => {
                warn!(stream_id, "cannot spawn stream actor: {e}");
                shutdown_both(cx.conn, stream_id, H3_INTERNAL_ERROR);
            }
        }
    }

    /// Routes a stream to the actor that took it.
    fn route(
        &mut self,
        cx: &mut ConnCx<'_, H3Msg>,
        stream_id: u64,
        actor: troupe_transport::Tracked<StreamMsg>,
        seed: RouteSeed,
    ) {
        let RouteSeed {
            read,
            write,
            key,
            stats,
            signal,
        } = seed;
        self.by_actor.insert(actor.actor().get_id(), stream_id);
        self.routes.insert(
            stream_id,
            Route {
                actor,
                read,
                write,
                key,
                stats,
                signal,
                flow: None,
                written: 0,
            },
        );
        cx.metrics.stream_opened();
    }

    /// Retires the streams whose actors parked with their last hand-over and whose sending
    /// direction ended since: records how it ended, then keeps or stops the actor as
    /// [`H3Msg::Parked`] would.
    fn retire_tails(&mut self, cx: &mut ConnCx<'_, H3Msg>) {
        if self.tails.is_empty() {
            return;
        }
        let mut tails = std::mem::take(&mut self.tails);
        for (id, end) in tails.drain(..) {
            if let Some(route) = self.routes.get(&id) {
                route.stats.tail_ended(end, route.written);
                self.on_parked(cx, id);
            }
        }
        self.tails = tails;
    }

    /// A stream actor's stream ended cleanly and the actor parked: unroute the stream, then
    /// give the actor back to the pool, which keeps it for a later stream or stops it (see
    /// [`pool`]).
    fn on_parked(&mut self, cx: &mut ConnCx<'_, H3Msg>, stream_id: u64) {
        let Some(actor_id) = self
            .routes
            .get(&stream_id)
            .map(|r| r.actor.actor().get_id())
        else {
            return;
        };
        if let Some((id, route)) = self.unroute(actor_id) {
            let actor = route.actor.clone();
            route.retire(cx.metrics, cx.clock.now());
            self.note_ended(cx.conn, id);
            trace!(stream_id = id, "stream actor parked");
            // Even after GOAWAY: the worker's other connections take it.
            self.pool.put(actor, &cx.myself.get_cell());
        }
        self.check_drained();
    }

    /// The latest PRIORITY_UPDATE for a request stream, if one is waiting and valid.
    fn take_priority_update(&mut self, stream_id: u64) -> Option<Priority> {
        let h3 = self.h3.as_mut()?;
        let raw = h3.take_last_priority_update(stream_id).ok()?;
        Priority::parse(&raw)
    }

    /// A PRIORITY_UPDATE for a routed stream: latest wins, even over the handler's own choice.
    fn on_priority_update(&mut self, conn: &mut troupe_transport::QuicConnection, stream_id: u64) {
        // For a stream not open yet, quiche keeps the update until its request arrives (taken
        // in on_request_headers).
        if !self.routes.contains_key(&stream_id) {
            return;
        }
        let Some(p) = self.take_priority_update(stream_id) else {
            return;
        };
        trace!(stream_id, ?p, "PRIORITY_UPDATE");
        let _ = conn.stream_priority(
            stream_id,
            p.urgency.min(crate::priority::URGENCY_MAX) + QUICHE_URGENCY_OFFSET,
            p.incremental,
        );
        if let Some(route) = self.routes.get_mut(&stream_id) {
            route.key = p;
            if let Some(cell) = &route.signal {
                cell.set(p);
            }
        }
        self.scheduler.reprioritise(stream_id, p);
    }

    /// Surfaces the peer's SETTINGS once, when quiche has them.
    fn check_peer_settings(&mut self, cx: &mut ConnCx<'_, H3Msg>) {
        let seen = match &self.side {
            Side::Server(s) => s.settings_seen,
            Side::Client(c) => c.shared.peer_settings.borrow().is_some(),
        };
        if seen {
            return;
        }
        let Some(raw) = self.h3.as_ref().and_then(|h3| h3.peer_settings_raw()) else {
            return;
        };
        let settings = PeerSettings { raw: raw.to_vec() };
        debug!(?settings, "peer SETTINGS");
        let dgram = self
            .h3
            .as_ref()
            .is_some_and(|h3| h3.dgram_enabled_by_peer(cx.conn));
        self.datagrams.set_peer(if dgram {
            crate::flow::PeerDatagrams::Supported
        } else {
            crate::flow::PeerDatagrams::Unsupported
        });
        match &mut self.side {
            Side::Server(s) => {
                s.settings_seen = true;
                if let Some(sink) = &s.events {
                    sink.emit(ConnectionEvent::PeerSettings {
                        conn_id: cx.trace_id.to_string(),
                        peer: cx.conn.path_stats().find(|p| p.active).map(|p| p.peer_addr),
                        settings,
                    });
                }
            }
            Side::Client(c) => {
                c.shared.peer_settings.send_replace(Some(settings));
            }
        }
    }

    /// The stream's end as quiche reports it (FIN, or a reset that looks like one).
    fn on_finished(&mut self, conn: &mut troupe_transport::QuicConnection, stream_id: u64) {
        if let Some(route) = self.routes.get_mut(&stream_id) {
            if route.read != ReadCredit::Closed {
                route.read = ReadCredit::Closed;
                let msg = match read::end_of_stream(conn, stream_id) {
                    Ok(()) => StreamMsg::Body {
                        chunks: Vec::new(),
                        fin: true,
                    },
                    Err(code) => StreamMsg::PeerReset(code),
                };
                let _ = route.actor.cast(msg);
            }
        }
        // A peer that ended its side may have stopped ours too, and quiche may have collected
        // the stream already: learn it now, not never.
        self.probe_stopped(conn, stream_id);
    }

    fn on_peer_reset(
        &mut self,
        conn: &mut troupe_transport::QuicConnection,
        stream_id: u64,
        code: u64,
    ) {
        if let Some(route) = self.routes.get_mut(&stream_id) {
            if route.read != ReadCredit::Closed {
                route.read = ReadCredit::Closed;
                let _ = route.actor.cast(StreamMsg::PeerReset(code));
            }
        }
        self.probe_stopped(conn, stream_id);
    }

    /// A stream actor is gone: drop its route (the one place routes are removed while the
    /// connection runs). Returns the route if it was still there.
    fn unroute(&mut self, actor: ActorId) -> Option<(u64, Route)> {
        let id = self.by_actor.remove(&actor)?;
        self.scheduler.remove(id);
        self.deferred.retain(|s| *s != id);
        self.rescan.retain(|s| *s != id);
        let route = self.routes.remove(&id)?;
        if route.flow.is_some() {
            self.flows_attached -= 1;
        }
        Some((id, route))
    }
}

impl ConnectionApp for H3App {
    type Msg = H3Msg;

    async fn on_established(&mut self, cx: &mut ConnCx<'_, H3Msg>) -> Result<(), AppError> {
        self.trace_id = Arc::from(cx.trace_id);
        let config = self.h3_config()?;
        let h3 = h3::Connection::with_transport(cx.conn, &config).map_err(internal)?;
        self.h3 = Some(h3);
        if let (true, Some(t)) = (cx.conn.is_server(), self.settings.post_accept_timeout) {
            // One one-shot timer task per connection; a cast to a stopped actor is a no-op.
            let me = cx.mailbox.clone();
            tokio::spawn(async move {
                tokio::time::sleep(t).await;
                let _ = me.cast(troupe_transport::ConnMsg::App(H3Msg::PostAcceptTimeout));
            });
        }
        Ok(())
    }

    /// New requests are taken packet by packet (quiche's `poll` lists every readable stream on
    /// each call: 100 new requests read at the end of their batch cost 100 passes over up to
    /// 100 streams); body reads wait for the batch's end, so a stream's body still goes to
    /// its actor in one message per batch, not one per packet. A packet that made nothing
    /// readable (an ACK, say) costs one check, and one that only added to bodies already
    /// noted (an upload's next packet) a listing of the readable streams, not a poll.
    async fn on_packet_fed(&mut self, cx: &mut ConnCx<'_, H3Msg>) -> Result<(), AppError> {
        let noted = self.deferred.len() + self.rescan.len();
        if cx.conn.is_readable() && cx.conn.readable().len() > noted {
            self.poll_events(cx, Bodies::Defer).await;
        }
        Ok(())
    }

    /// The batch's end. Order matters: a deferred body is read before the poll (quiche parses
    /// what follows a DATA frame, trailers or the end, only once its payload has been read,
    /// and reports it only from `poll`); a stream in `rescan` is read after it (the poll takes
    /// the frame its last read stopped before).
    async fn on_readable(&mut self, cx: &mut ConnCx<'_, H3Msg>) -> Result<(), AppError> {
        let mut deferred = std::mem::take(&mut self.deferred);
        for &id in &deferred {
            self.read_stream(cx.conn, id);
        }
        deferred.clear();
        // Keep the allocation for the next batch.
        self.deferred = deferred;
        self.poll_events(cx, Bodies::Read).await;
        for id in std::mem::take(&mut self.rescan) {
            self.read_stream(cx.conn, id);
        }
        self.check_peer_settings(cx);
        self.read_datagrams(cx)?;
        self.notice_stopped_streams(cx.conn);
        if self.has_waiting_requests() {
            // A client's path, boxed and taken only with requests waiting, so it does not
            // size every server turn's future (ARCHITECTURE.md, "Future sizes").
            Box::pin(self.start_waiting_requests(cx)).await;
        }
        // While draining, ACKs may have completed the last streams.
        self.check_drained();
        Ok(())
    }

    async fn on_message(&mut self, cx: &mut ConnCx<'_, H3Msg>, msg: H3Msg) -> Result<(), AppError> {
        match msg {
            H3Msg::Send {
                stream_id,
                frames,
                more,
                last,
            } => {
                self.on_send(stream_id, frames, more, last);
                self.retire_tails(cx);
            }
            H3Msg::Credit { stream_id, bytes } => {
                if self.add_read_credit(stream_id, bytes) {
                    self.read_stream(cx.conn, stream_id);
                    // Reading may have reached a trailer section or the FIN, which only
                    // h3::poll reports; no packet may come to trigger it, so poll now (boxed:
                    // it keeps this future, and so every message's, small).
                    return Box::pin(self.on_readable(cx)).await;
                }
            }
            H3Msg::StopSending { stream_id, code } => {
                let _ = cx
                    .conn
                    .stream_shutdown(stream_id, quiche::Shutdown::Read, code);
                if let Some(route) = self.routes.get_mut(&stream_id) {
                    route.read = ReadCredit::Closed;
                }
            }
            H3Msg::Reset { stream_id, code } => {
                // Only a routed stream: an actor that parked with its last hand-over forwards a
                // reset asked for later, and if the connection already wrote that hand-over
                // whole (FIN included) the response is complete and stays so.
                if self.routes.contains_key(&stream_id) {
                    let _ = cx
                        .conn
                        .stream_shutdown(stream_id, quiche::Shutdown::Write, code);
                    self.close_write(stream_id, code);
                    self.retire_tails(cx);
                }
            }
            H3Msg::GoAway => {
                self.start_goaway(cx);
                // Tunnels never finish on their own: GOAWAY tells their flows to end.
                self.close_flows(crate::flow::FlowEnd::GoingAway);
            }
            H3Msg::PostAcceptTimeout => self.on_post_accept_timeout(cx),
            H3Msg::DrainCheck => self.drain_check(cx),
            H3Msg::DrainRecheck => {
                if let Side::Server(s) = &mut self.side {
                    s.recheck_armed = false;
                }
                self.drain_check(cx)
            }
            H3Msg::RoutedStreams(reply) => {
                let mut ids: Vec<u64> = self.routes.keys().copied().collect();
                ids.sort_unstable();
                let _ = reply.send(ids);
            }
            H3Msg::Cancel {
                stream_id,
                code,
                reply,
            } => {
                // Through the actor, which owns both directions' states: it sends what each
                // still-open direction needs and ends the same way a handler's shutdown does.
                // An actor that parked with its last hand-over owns nothing any more: the
                // connection resets what it still holds of it.
                let live = match self.routes.get(&stream_id) {
                    Some(route) if route.is_tail() => {
                        let _ = cx
                            .conn
                            .stream_shutdown(stream_id, quiche::Shutdown::Write, code);
                        self.tails
                            .push((stream_id, crate::stream::SendState::ResetSent(code)));
                        self.retire_tails(cx);
                        true
                    }
                    Some(route) => route
                        .actor
                        .cast(StreamMsg::Cancel { stream_id, code })
                        .is_ok(),
                    None => false,
                };
                let _ = reply.send(live);
            }
            H3Msg::AttachFlow { stream_id, sink } => match self.routes.get_mut(&stream_id) {
                Some(route) => {
                    if route.flow.replace(sink).is_none() {
                        self.flows_attached += 1;
                    }
                }
                // The stream ended first: the flow is over before it began.
                None => sink.close(crate::flow::FlowEnd::StreamEnded),
            },
            H3Msg::SendDatagrams {
                stream_id,
                frames,
                pending,
            } => {
                pending.fetch_sub(frames.len(), std::sync::atomic::Ordering::AcqRel);
                self.send_datagrams(cx, stream_id, frames)
            }
            H3Msg::ChildFailed {
                stream_id,
                who,
                why,
            } => {
                cx.record_child_failure(
                    troupe_transport::ActorKind::Flow,
                    &format!("{who} of stream {stream_id}"),
                    &why,
                );
            }
            // Boxed: a client's own path, which would otherwise size every server message's
            // future (ARCHITECTURE.md, "Future sizes").
            H3Msg::Request(req) => Box::pin(self.on_request(cx, *req)).await,
            H3Msg::Parked { stream_id } => self.on_parked(cx, stream_id),
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
                if let Some((id, route)) = self.unroute(cell.get_id()) {
                    // Both directions were terminal; any STOP_SENDING or RESET it asked for
                    // arrives as a message of its own (supervision events overtake messages).
                    route.retire(cx.metrics, cx.clock.now());
                    self.note_ended(cx.conn, id);
                    trace!(stream_id = id, "stream actor stopped");
                }
                self.check_drained();
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some((id, route)) = self.unroute(cell.get_id()) {
                    let why = err.to_string();
                    route.actor.meter().failed(&why);
                    cx.record_child_failure(
                        troupe_transport::ActorKind::Stream,
                        &format!("stream {id}"),
                        &why,
                    );
                    route.stats.update(|a| {
                        a.failed = true;
                        a.send_end
                            .get_or_insert(StreamEnd::ResetSent(H3_INTERNAL_ERROR));
                        a.recv_end
                            .get_or_insert(StreamEnd::StopSendingSent(H3_INTERNAL_ERROR));
                    });
                    route.retire(cx.metrics, cx.clock.now());
                    warn!(conn_id = %self.trace_id, stream_id = id, "stream actor failed, resetting the stream: {err}");
                    shutdown_both(cx.conn, id, H3_INTERNAL_ERROR);
                }
                self.check_drained();
            }
            _ => {}
        }
        Ok(())
    }

    fn datagram_drops(&self) -> Vec<(&'static str, u64)> {
        self.datagrams.drops.counts().to_vec()
    }

    fn streams_snapshot(&self) -> Vec<troupe_transport::StreamSnapshot> {
        let mut out: Vec<_> = self
            .routes
            .values()
            .map(|r| {
                let actor = troupe_transport::ActorNode::of(
                    &r.actor.actor().get_cell(),
                    troupe_transport::ActorKind::Stream,
                    r.actor.meter().view(),
                );
                let read = match r.read {
                    ReadCredit::Open(n) => Some(n as u64),
                    ReadCredit::Closed => None,
                };
                let node = r.stats.tree_node(actor, read, self.settings.redact_paths);
                match r.flow.as_ref().and_then(|f| f.snapshot()) {
                    Some(f) => node.with_flows(vec![f]),
                    None => node,
                }
            })
            .collect();
        out.sort_by_key(|s| s.stream_id);
        out
    }

    fn before_flush(&mut self, cx: &mut ConnCx<'_, H3Msg>) -> Result<(), AppError> {
        self.try_send_goaway(cx);
        self.datagrams
            .set_max_frame(cx.conn.dgram_max_writable_len().unwrap_or(0));
        if let Side::Server(s) = &mut self.side {
            if std::mem::take(&mut s.drain_check_due) {
                let _ = cx
                    .mailbox
                    .cast(troupe_transport::ConnMsg::App(H3Msg::DrainCheck));
            }
        }
        self.write_streams(cx.conn, cx.clock);
        self.retire_tails(cx);
        Ok(())
    }

    fn on_closed(&mut self, cx: &mut ConnCx<'_, H3Msg>, info: &ConnectionInfo) {
        let closed = CloseReason::Aborted;
        let reason = info.close.as_ref().unwrap_or(&closed);
        // Bytes quiche already received (and acknowledged: the peer may have closed because of
        // that) still belong to their readers. Hand them over regardless of credit; quiche's
        // stream window bounds them.
        let open: Vec<u64> = self
            .routes
            .iter()
            .filter(|(_, r)| matches!(r.read, ReadCredit::Open(_)))
            .map(|(id, _)| *id)
            .collect();
        for id in open {
            if let Some(route) = self.routes.get_mut(&id) {
                route.read = ReadCredit::Open(usize::MAX);
            }
            self.read_stream(cx.conn, id);
        }
        if let Side::Client(c) = &mut self.side {
            for req in c.waiting.drain(..) {
                let _ = req
                    .reply
                    .send(Err(RequestError::ConnectionClosed(reason.to_string())));
            }
        }
        self.close_flows(crate::flow::FlowEnd::ConnectionClosed);
        self.tails.clear();
        // The actors are drained, not supervised, from here: report the streams now.
        self.by_actor.clear();
        for (_, route) in self.routes.drain() {
            route.retire(cx.metrics, cx.clock.now());
        }
        if let Side::Server(ServerSide {
            events: Some(sink), ..
        }) = &self.side
        {
            sink.emit(ConnectionEvent::Closed {
                conn_id: cx.trace_id.to_string(),
                info: Box::new(info.clone()),
            });
        }
    }
}

impl H3App {
    /// A header section: a new request (server), or a response or trailers for a routed
    /// stream.
    async fn on_headers(
        &mut self,
        cx: &mut ConnCx<'_, H3Msg>,
        stream_id: u64,
        list: Vec<Header>,
        more_frames: bool,
    ) {
        if let Some(route) = self.routes.get_mut(&stream_id) {
            let fin = !more_frames;
            if fin {
                route.read = ReadCredit::Closed;
            }
            let _ = route.actor.cast(StreamMsg::Headers { list, fin });
        } else if cx.conn.is_server() {
            self.on_request_headers(cx, stream_id, list, more_frames)
                .await;
        }
    }

    /// Handles every event quiche's HTTP/3 layer has for what was fed so far (new requests,
    /// body data, ends, resets, priority updates, GOAWAY). With [`Bodies::Defer`] a stream
    /// with body data is noted for the batch's end (`deferred`) instead of read now: quiche
    /// reports no new `Data` for it until it is read, and no `Finished` while its data waits.
    async fn poll_events(&mut self, cx: &mut ConnCx<'_, H3Msg>, bodies: Bodies) {
        loop {
            let Some(h3) = self.h3.as_mut() else {
                return;
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
                    self.on_headers(cx, stream_id, list, more_frames).await
                }
                h3::Event::Data => match bodies {
                    Bodies::Read => self.read_stream(cx.conn, stream_id),
                    Bodies::Defer => read::note_once(&mut self.deferred, stream_id),
                },
                h3::Event::Finished => self.on_finished(cx.conn, stream_id),
                h3::Event::Reset(code) => self.on_peer_reset(cx.conn, stream_id, code),
                h3::Event::PriorityUpdate => self.on_priority_update(cx.conn, stream_id),
                h3::Event::GoAway => {
                    debug!(id = stream_id, "GOAWAY received");
                    if let Side::Client(c) = &mut self.side {
                        c.on_goaway(stream_id);
                    }
                    self.close_flows(crate::flow::FlowEnd::GoingAway);
                }
            }
        }
    }
}

/// Whether [`H3App::poll_events`] reads a stream's body when quiche reports data, or leaves it
/// for the end of the packet batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bodies {
    Read,
    Defer,
}
