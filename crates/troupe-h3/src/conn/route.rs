//! What a connection keeps per stream: the route to its actor and what quiche forces on the
//! connection (the read credit, the unwritten rest of one hand-over, the scheduling key, and a
//! count of the body bytes quiche took, which the stream's figures need once its actor parked
//! with its last hand-over). Each direction's state lives in the stream actor alone.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use troupe_transport::Tracked;

use super::msg::OutFrame;
use crate::audit::StreamStats;
use crate::priority::{Priority, PriorityCell};
use crate::stream::{SendState, StreamMsg};

/// The receiving side of a route: how many more body bytes may be read from quiche for the
/// actor, or closed once the connection delivered the end (FIN or RESET) or sent STOP_SENDING
/// (nothing more is routed to the actor, so quiche's events for the stream are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadCredit {
    Open(usize),
    Closed,
}

/// The sending side of a route, as the credit protocol sees it.
#[derive(Debug)]
pub(super) enum Outbound {
    /// Nothing held here; the actor holds whatever credit it was granted.
    Idle,
    /// What quiche has not taken yet of what the actor handed over. At most the credit granted
    /// (plus the header sections handed with it); nothing more arrives before it is written,
    /// unless the actor still had credit left.
    Held {
        frames: VecDeque<OutFrame>,
        /// What follows once it is all written.
        then: AfterHeld,
    },
    /// The actor spent its credit and has more: a grant waits for quiche to report room.
    Wants,
    /// Credit was granted in answer to `more`; the actor's bytes (or its word that it has
    /// none yet) are on their way. Holds back less urgent streams' grants meanwhile.
    Granted,
    /// Nothing more goes out: our FIN or RESET is written.
    Closed,
    /// Nothing more goes out: the peer's STOP_SENDING (with this code) was handed to the
    /// actor, or recorded for it when it had already parked.
    Stopped(u64),
}

/// What a held hand-over turns into once quiche took all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterHeld {
    /// The actor still has credit, or nothing more to send.
    Idle,
    /// The actor asked for more credit.
    Grant,
    /// It was the actor's last hand-over (`H3Msg::Send { last: true }`): the actor parked, and
    /// the stream is over once it is written.
    Park,
}

/// One routed stream.
pub(super) struct Route {
    /// The stream actor, its sends counted in its meter.
    pub(super) actor: Tracked<StreamMsg>,
    pub(super) read: ReadCredit,
    pub(super) write: Outbound,
    /// The scheduling key (RFC 9218): the handler's priority if it chose one, else the
    /// client's latest signal, else the response default.
    pub(super) key: Priority,
    /// Handle to the stream's audit figures (the actor writes them; the connection stamps the
    /// header wait, and a failed actor's ends).
    pub(super) stats: StreamStats,
    /// Server: handle to the client's priority signal, watched by the handler.
    pub(super) signal: Option<Arc<PriorityCell>>,
    /// Where the stream's HTTP datagrams go, once a flow is attached.
    pub(super) flow: Option<Arc<dyn crate::flow::DatagramSink>>,
    /// Body bytes written into quiche for the stream: the figure the connection records
    /// itself once the actor parked with its last hand-over (reports of writes still on their
    /// way to the actor when it parked are lost with it).
    pub(super) written: u64,
}

impl Route {
    /// Whether the actor parked with its last hand-over, which the connection still writes.
    pub(super) fn is_tail(&self) -> bool {
        matches!(
            self.write,
            Outbound::Held {
                then: AfterHeld::Park,
                ..
            }
        )
    }

    /// The peer stopped our sending side: nothing more goes out, and the actor hears it once.
    /// Returns how the sending direction ended when the actor already parked with its last
    /// hand-over: it hears nothing then; the connection records the end and retires the stream.
    pub(super) fn peer_stopped(&mut self, code: u64) -> Option<SendState> {
        let tail = self.is_tail();
        self.write = Outbound::Stopped(code);
        if tail {
            return Some(SendState::Stopped(code));
        }
        let _ = self.actor.cast(StreamMsg::PeerStopSending(code));
        None
    }

    /// The stream is over for the connection (at `now`, the turn's time): its figures are
    /// final and reported, and anyone waiting for a priority change learns no more will come.
    pub(super) fn retire(self, metrics: &dyn troupe_transport::Metrics, now: Instant) {
        self.stats.end(now);
        metrics.stream_closed(&self.stats.summary());
        if let Some(p) = &self.signal {
            p.close();
        }
        if let Some(f) = &self.flow {
            f.close(crate::flow::FlowEnd::StreamEnded);
        }
    }
}
