//! The messages a connection's HTTP/3 layer takes: from its stream actors (frames, credit,
//! shutdowns), from handles (requests, GOAWAY, inspection) and from itself (drain checks).

use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::body::RecvBody;
use crate::error::RequestError;
use crate::headers::Field;
use crate::priority::Priority;

/// Which header section a [`OutFrame::Headers`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Section {
    /// An interim (1xx) response; the final one follows.
    Interim,
    /// The final response head.
    Final {
        /// The priority the handler chose, applied to the stream when the head is written
        /// (RFC 9218); `None` keeps the client's signal or the default.
        priority: Option<Priority>,
        /// The body is empty: FIN follows the head.
        fin: bool,
    },
    /// Trailers: they end the stream (FIN).
    Trailers,
}

impl Section {
    /// Whether FIN follows this section.
    pub fn ends_stream(self) -> bool {
        matches!(self, Section::Final { fin: true, .. } | Section::Trailers)
    }
}

/// A frame a stream actor hands to the connection for sending.
#[derive(Debug)]
#[non_exhaustive]
pub enum OutFrame {
    /// A header section.
    Headers {
        /// The header list.
        list: Vec<Field>,
        /// Which section.
        section: Section,
        /// Set on the stream's first header section: when the actor handed it over (the
        /// connection measures how long it waited for quiche from there).
        opening: Option<Instant>,
    },
    /// Body bytes, perhaps empty when only carrying FIN.
    Data {
        /// The bytes.
        bytes: Bytes,
        /// Whether FIN follows.
        fin: bool,
    },
}

impl OutFrame {
    /// Whether FIN follows this frame.
    pub fn ends_stream(&self) -> bool {
        match self {
            OutFrame::Headers { section, .. } => section.ends_stream(),
            OutFrame::Data { fin, .. } => *fin,
        }
    }
}

/// Messages to the HTTP/3 layer of a connection actor.
#[non_exhaustive]
pub enum H3Msg {
    /// Frames for a stream, in order, within the write credit the connection granted (header
    /// sections are not counted: quiche takes a section whole or not at all).
    #[non_exhaustive]
    Send {
        /// The stream.
        stream_id: u64,
        /// The frames.
        frames: Vec<OutFrame>,
        /// The actor spent its credit and has more to send: grant more once these are in
        /// quiche and quiche has room.
        more: bool,
        /// The actor's last word on the stream: these frames carry its FIN, its receiving
        /// direction is over, and it parked as it sent them. The connection writes them,
        /// records how the sending direction ended (FIN written, or the peer's STOP_SENDING
        /// first) in the stream's figures, retires the stream and keeps the actor for a later
        /// one. No `Written` answers it, and no `Parked` follows: two messages less for a
        /// request whose response ends it.
        last: bool,
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
    /// After GOAWAY: the timed re-check of a drain check that found bytes unacknowledged.
    DrainRecheck,
    /// Route the stream's HTTP datagrams to `sink` (see [`crate::DatagramFlow::attach`]).
    AttachFlow {
        /// The stream.
        stream_id: u64,
        /// Where they go.
        sink: std::sync::Arc<dyn crate::flow::DatagramSink>,
    },
    /// Send HTTP datagrams for the stream in QUIC DATAGRAM frames.
    SendDatagrams {
        /// The stream.
        stream_id: u64,
        /// The datagrams, each already behind the stream's Quarter Stream ID.
        frames: Vec<crate::flow::DatagramFrame>,
        /// The sender's count of datagrams on their way, lowered as these are taken.
        pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    },
    /// A stream actor's child (a datagram flow) failed: record it where operators look.
    ChildFailed {
        /// The stream whose child it was.
        stream_id: u64,
        /// What failed (`"flow"`).
        who: String,
        /// Why.
        why: String,
    },
    /// A stream actor's stream ended cleanly (both directions) and the actor parked, ready to
    /// serve another stream: unroute the stream, give the actor back to the worker's pool.
    Parked {
        /// The stream that ended.
        stream_id: u64,
    },
    /// Client: start a request (boxed: a request head is large, the other messages small).
    Request(Box<PendingRequest>),
    /// Inspection: the stream IDs this connection routes to a stream actor right now.
    RoutedStreams(ractor::RpcReplyPort<Vec<u64>>),
    /// An operator cancels one stream: its actor shuts both directions with `code`
    /// (STOP_SENDING and RESET_STREAM for what is still open). The reply says whether the
    /// stream was routed here.
    Cancel {
        /// The stream.
        stream_id: u64,
        /// Error code.
        code: u64,
        /// Whether the stream was live.
        reply: ractor::RpcReplyPort<bool>,
    },
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
