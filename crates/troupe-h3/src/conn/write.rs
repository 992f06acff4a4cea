//! The write path, pulled by credit: a stream actor hands over at most the credit the
//! connection granted it; the connection writes what it was handed into quiche in RFC 9218
//! order ([`WriteScheduler`](super::scheduler::WriteScheduler)) and grants more only once
//! quiche took everything and reports room. Nothing here grows with a stream's send window.

use std::collections::VecDeque;

use bytes::Buf;
use quiche::h3;
use tracing::debug;
use troupe_transport::bufs::QuicBuf;
use troupe_transport::TurnClock;

use super::msg::{OutFrame, Section};
use super::route::{AfterHeld, Outbound};
use super::scheduler::Gate;
use super::H3App;
use crate::codes::{H3_INTERNAL_ERROR, H3_REQUEST_CANCELLED};
use crate::priority::Priority;
use crate::stream::{SendState, StreamMsg};

/// quiche's HTTP/3 layer maps RFC 9218 urgency 0..=7 onto its stream urgencies 124..=131
/// (below them: its own control and QPACK streams). A direct `stream_priority` call must add
/// the same offset, or the stream would outrank every response.
pub(super) const QUICHE_URGENCY_OFFSET: u8 = 124;

/// The credit a stream actor starts with, before quiche was asked: a small response (headers
/// and a body of up to 16 KiB) goes out in the actor's first hand-over, with no round trip.
/// Bounded by `H3Settings::send_window`.
pub(super) const INITIAL_CREDIT: usize = 16 * 1024;

fn quiche_priority(p: Priority) -> h3::Priority {
    h3::Priority::new(p.urgency, p.incremental)
}

/// What writing one stream's held frames did.
#[derive(Debug, Default)]
struct Wrote {
    bytes: usize,
    fin: bool,
    /// The peer stopped the stream (or writing failed): the code to hand the actor.
    stopped: Option<u64>,
}

/// Writes `frames` into quiche in order until quiche takes no more; the frames it took are
/// removed (a partly written chunk keeps its rest).
fn write_frames(
    h3: &mut h3::Connection,
    conn: &mut troupe_transport::QuicConnection,
    id: u64,
    route_key: Priority,
    stats: &crate::audit::StreamStats,
    frames: &mut VecDeque<OutFrame>,
    clock: &mut TurnClock,
) -> Wrote {
    let mut w = Wrote::default();
    while let Some(frame) = frames.front_mut() {
        let result = match frame {
            OutFrame::Headers {
                list,
                section,
                opening,
            } => {
                // RFC 9218: the route's key (the handler's priority if it chose one, else the
                // client's latest signal, else the response default); quiche would otherwise
                // reset the stream to u=3 non-incremental.
                let fin = section.ends_stream();
                let r = match (*opening, *section) {
                    (Some(_), Section::Interim | Section::Final { .. }) => h3
                        .send_response_with_priority(
                            conn,
                            id,
                            list,
                            &quiche_priority(route_key),
                            fin,
                        ),
                    (
                        None,
                        Section::Final {
                            priority: Some(_), ..
                        },
                    ) => h3.send_additional_headers_with_priority(
                        conn,
                        id,
                        list,
                        &quiche_priority(route_key),
                        false,
                        fin,
                    ),
                    (_, section) => h3.send_additional_headers(
                        conn,
                        id,
                        list,
                        section == Section::Trailers,
                        fin,
                    ),
                };
                r.map(|()| {
                    if let Some(handed) = *opening {
                        let now = clock.now();
                        stats.first_headers(now, Some(now.saturating_duration_since(handed)));
                    }
                    w.fin |= fin;
                    true
                })
            }
            OutFrame::Data { bytes, fin } => {
                if bytes.is_empty() && !*fin {
                    frames.pop_front();
                    continue;
                }
                // Queued in quiche by reference, not copied (`troupe_transport::bufs`); on a
                // partial write quiche keeps the front of its handle, `bytes` moves past it.
                let mut queued = QuicBuf::from(bytes.clone());
                match h3.send_body_zc(conn, id, &mut queued, *fin) {
                    Ok(n) if n == bytes.len() => {
                        w.bytes += n;
                        w.fin |= *fin;
                        Ok(true)
                    }
                    Ok(n) => {
                        w.bytes += n;
                        bytes.advance(n);
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(true) => {
                frames.pop_front();
            }
            Ok(false) | Err(h3::Error::StreamBlocked) | Err(h3::Error::Done) => break,
            Err(h3::Error::TransportError(quiche::Error::StreamStopped(code))) => {
                w.stopped = Some(code);
                break;
            }
            Err(e) => {
                debug!(stream_id = id, "sending failed: {e}");
                w.stopped = Some(H3_INTERNAL_ERROR);
                let _ = conn.stream_shutdown(id, quiche::Shutdown::Write, H3_INTERNAL_ERROR);
                break;
            }
        }
    }
    w
}

impl H3App {
    /// A stream actor handed over `frames` (within its credit); `more`: it wants more credit;
    /// `last`: it parked with them (see [`H3Msg::Send`](super::H3Msg::Send)).
    pub(super) fn on_send(
        &mut self,
        stream_id: u64,
        frames: Vec<OutFrame>,
        more: bool,
        last: bool,
    ) {
        let Some(route) = self.routes.get_mut(&stream_id) else {
            return;
        };
        // A priority the handler chose for its final response (latest wins against the
        // client's).
        if let Some(p) = frames.iter().find_map(|f| match f {
            OutFrame::Headers {
                section: Section::Final { priority, .. },
                ..
            } => *priority,
            _ => None,
        }) {
            route.key = p;
        }
        let then = match (last, more) {
            (true, _) => AfterHeld::Park,
            (false, true) => AfterHeld::Grant,
            (false, false) => AfterHeld::Idle,
        };
        match (&mut route.write, frames.is_empty()) {
            (Outbound::Stopped(code), _) => {
                // The peer stopped the stream while the actor produced these; it parked
                // before hearing so.
                if last {
                    self.tails.push((stream_id, SendState::Stopped(*code)));
                }
                return;
            }
            (Outbound::Closed, _) => {
                // A last hand-over carries the FIN, which comes once, and never follows a
                // reset: this cannot be one. Retire it all the same, so nothing leaks.
                debug_assert!(!last, "last hand-over on a closed stream {stream_id}");
                if last {
                    self.tails.push((stream_id, SendState::FinSent));
                }
                return;
            }
            (
                Outbound::Held {
                    frames: held,
                    then: t,
                },
                _,
            ) => {
                held.extend(frames);
                if then != AfterHeld::Idle {
                    *t = then;
                }
            }
            (w, true) => {
                // Nothing handed over: the actor asks for more, or answers a grant it cannot
                // use yet (its producer is pending).
                if !more {
                    *w = Outbound::Idle;
                    self.scheduler.remove(stream_id);
                    return;
                }
                *w = Outbound::Wants;
            }
            (w, false) => {
                *w = Outbound::Held {
                    frames: frames.into(),
                    then,
                }
            }
        }
        self.scheduler.insert(stream_id, route.key);
    }

    /// The actor reset its sending side with `code`: nothing it handed over goes out any more.
    /// If it had parked with its last hand-over (it forwards a reset asked for after it), the
    /// stream is over: it is recorded, and retired with the other tails.
    pub(super) fn close_write(&mut self, stream_id: u64, code: u64) {
        if let Some(route) = self.routes.get_mut(&stream_id) {
            if route.is_tail() {
                self.tails.push((stream_id, SendState::ResetSent(code)));
            }
            route.write = Outbound::Closed;
        }
        self.scheduler.remove(stream_id);
    }

    /// Serves the scheduled streams in RFC 9218 order: writes what they handed over into
    /// quiche as far as it takes it, and grants more credit, most urgent first, from the room
    /// quiche reports. Each actor hears at most once per flush.
    pub(super) fn write_streams(
        &mut self,
        conn: &mut troupe_transport::QuicConnection,
        clock: &mut TurnClock,
    ) {
        if self.scheduler.is_empty() {
            return;
        }
        let Some(h3) = self.h3.as_mut() else { return };
        let mut order = std::mem::take(&mut self.order);
        self.scheduler.order_into(&mut order);
        // Room granted in this flush and not yet written: later (less urgent) streams get
        // what is left of quiche's connection-level room, and neither credit nor writes while a
        // more urgent stream's bytes are on their way (`Gate`).
        let mut granted = 0usize;
        let mut gate = Gate::default();
        for &id in &order {
            let Some(route) = self.routes.get_mut(&id) else {
                self.scheduler.remove(id);
                continue;
            };
            let mut wrote = Wrote::default();
            let tail = route.is_tail();
            // A less urgent stream does not write either while a more urgent one's bytes are on
            // their way: the room is theirs.
            let admitted = gate.admits(route.key);
            if let (true, Outbound::Held { frames, then }) = (admitted, &mut route.write) {
                wrote = write_frames(h3, conn, id, route.key, &route.stats, frames, clock);
                if wrote.fin {
                    route.write = Outbound::Closed;
                } else if wrote.stopped.is_none() && frames.is_empty() {
                    route.write = match then {
                        AfterHeld::Idle => Outbound::Idle,
                        AfterHeld::Grant => Outbound::Wants,
                        AfterHeld::Park => {
                            // A last hand-over ends with its FIN, written with its last frame:
                            // all written and no FIN cannot be. Retire it all the same.
                            if cfg!(debug_assertions) {
                                unreachable!("last hand-over of {id} written without its FIN");
                            }
                            self.tails.push((id, SendState::FinSent));
                            Outbound::Closed
                        }
                    };
                }
            }
            route.written += wrote.bytes as u64;
            let mut credit = 0;
            if matches!(route.write, Outbound::Wants) && admitted {
                match conn.stream_capacity(id) {
                    Ok(room) => {
                        credit = room.saturating_sub(granted).min(self.settings.send_window);
                        if credit > 0 {
                            granted += credit;
                            route.write = Outbound::Granted;
                        }
                    }
                    Err(quiche::Error::StreamStopped(code)) => wrote.stopped = Some(code),
                    Err(_) => wrote.stopped = Some(H3_REQUEST_CANCELLED),
                }
            }
            if tail {
                // The actor parked with these frames: the connection keeps its figures.
                if wrote.fin {
                    self.tails.push((id, SendState::FinSent));
                } else if wrote.bytes > 0 {
                    route.stats.tail_written(route.written);
                }
            }
            if let Some(code) = wrote.stopped {
                if let Some(end) = route.peer_stopped(code) {
                    self.tails.push((id, end));
                }
            } else if !tail && (wrote.bytes > 0 || wrote.fin || credit > 0) {
                let _ = route.actor.cast(StreamMsg::Written {
                    bytes: wrote.bytes,
                    fin: wrote.fin,
                    credit,
                });
            }
            // Bytes waiting (or wanting room) that quiche had no room for: flow control (or
            // congestion) holds the stream; the live tree shows for how long.
            let waiting =
                admitted && matches!(route.write, Outbound::Held { .. } | Outbound::Wants);
            route.stats.set_blocked(waiting);
            match route.write {
                Outbound::Granted => {
                    gate.block(route.key);
                    self.scheduler.served(id);
                }
                Outbound::Held { .. } | Outbound::Wants => self.scheduler.served(id),
                Outbound::Idle | Outbound::Closed | Outbound::Stopped(_) => {
                    self.scheduler.remove(id)
                }
            }
        }
        self.order = order;
    }

    /// quiche reports a peer's STOP_SENDING only as an error on the next write. A stream with
    /// nothing handed over (a response waiting for its handler or its body) would never learn
    /// of it and its actor would live on; so after each batch of packets (STOP_SENDING only
    /// arrives in packets) the routes whose sending side is idle are probed: one lookup each.
    /// (quiche's own counter is in `stats()`, which walks every stream; and its writable set
    /// re-reports a stopped stream only if the stream had no send capacity before.)
    pub(super) fn notice_stopped_streams(&mut self, conn: &mut troupe_transport::QuicConnection) {
        for (&id, route) in self.routes.iter_mut() {
            if matches!(route.write, Outbound::Idle | Outbound::Granted) {
                if let Some(code) = stop_sending_code(conn, id) {
                    // Idle or granted: never a parked actor's last hand-over.
                    let _ = route.peer_stopped(code);
                    self.scheduler.remove(id);
                }
            }
        }
    }

    /// Hands the actor the peer's STOP_SENDING if quiche has one for `id` and the connection
    /// still routes writes for it.
    pub(super) fn probe_stopped(&mut self, conn: &mut troupe_transport::QuicConnection, id: u64) {
        let Some(route) = self.routes.get_mut(&id) else {
            return;
        };
        if !matches!(route.write, Outbound::Closed | Outbound::Stopped(_)) {
            if let Some(code) = stop_sending_code(conn, id) {
                if let Some(end) = route.peer_stopped(code) {
                    self.tails.push((id, end));
                }
                self.scheduler.remove(id);
            }
        }
    }
}

/// The code of the peer's STOP_SENDING on `id`, if quiche has one.
fn stop_sending_code(conn: &mut troupe_transport::QuicConnection, id: u64) -> Option<u64> {
    match conn.stream_capacity(id) {
        Err(quiche::Error::StreamStopped(code)) => Some(code),
        // Stopped, reset in reply, and already collected by quiche.
        Err(quiche::Error::InvalidStreamState(_)) => Some(H3_REQUEST_CANCELLED),
        _ => None,
    }
}
