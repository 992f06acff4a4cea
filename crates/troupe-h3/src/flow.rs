//! HTTP Datagram flows (RFC 9297) as the HTTP/3 layer sees them: a request stream may have one
//! flow attached, and the connection routes the stream's datagrams to it. What a flow does with
//! them (CONNECT-UDP forwarding, say) belongs to the flow's owner, in its own actor; the
//! connection keeps only `stream id -> sink`, next to `stream id -> stream actor`.
//!
//! A server request that is an extended CONNECT carries a [`DatagramFlow`] in its extensions:
//! the handler attaches a [`DatagramSink`] (its flow actor's handle) and sends through it.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use troupe_transport::{ConnMailbox, ConnMsg};

use crate::conn::H3Msg;

/// An HTTP datagram in its QUIC DATAGRAM frame's form, Quarter Stream ID first (see
/// [`DatagramFlow::frame`]); only a flow makes one, so the connection sends it without
/// rewriting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatagramFrame {
    bytes: Vec<u8>,
    stream_id: u64,
}

impl DatagramFrame {
    /// The whole frame payload, Quarter Stream ID included.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never: a frame holds at least its Quarter Stream ID.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The stream it belongs to.
    pub fn stream_id(&self) -> u64 {
        self.stream_id
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Why a flow's sink is closed by the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlowEnd {
    /// Its request stream ended (both directions), or its stream actor failed.
    StreamEnded,
    /// The connection sent or received GOAWAY: finish up.
    GoingAway,
    /// The connection closed.
    ConnectionClosed,
}

/// Where the connection delivers a stream's HTTP datagrams: implemented by a flow actor's
/// handle. Called inside the connection actor: it must not block (count, queue, cast).
pub trait DatagramSink: Send + Sync + 'static {
    /// Datagrams received for the stream in one connection turn, in order (each is the HTTP
    /// Datagram payload: what follows the Quarter Stream ID). Returns `false` when the flow is
    /// gone, and the connection forgets the sink.
    fn deliver(&self, batch: Vec<Bytes>) -> bool;
    /// The connection is done with this flow (see [`FlowEnd`]).
    fn close(&self, why: FlowEnd);
    /// The flow's node of the live tree, read from shared figures (never by messaging the
    /// flow). Default: none.
    fn snapshot(&self) -> Option<troupe_transport::FlowSnapshot> {
        None
    }
}

/// What the peer said about HTTP datagrams, as far as the connection knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerDatagrams {
    /// Its SETTINGS have not arrived yet.
    Unknown,
    /// It sent SETTINGS_H3_DATAGRAM=1 and QUIC DATAGRAM frames are on.
    Supported,
    /// It did not (or QUIC DATAGRAM frames are off here): use DATAGRAM capsules.
    Unsupported,
}

/// Datagrams the connection dropped, by reason (all flows of one connection).
#[derive(Debug, Default)]
pub struct DatagramDrops {
    /// Received for a stream that is not open (never opened, or ended).
    pub unknown_stream: AtomicU64,
    /// Received for an open stream with no flow attached (not an accepted CONNECT-UDP stream,
    /// or its flow not ready yet).
    pub no_flow: AtomicU64,
    /// To send, but the peer did not enable HTTP datagrams.
    pub not_negotiated: AtomicU64,
    /// To send, but larger than a DATAGRAM frame can carry on the path now.
    pub too_large: AtomicU64,
    /// To send, but quiche's send queue held this flow's fair share already.
    pub queue_full: AtomicU64,
    /// To send, but the flow already had [`MAX_PENDING_DATAGRAMS`] on their way to the
    /// connection actor (a sender faster than the connection).
    pub send_backlog: AtomicU64,
}

impl DatagramDrops {
    /// The counts, in the order of the fields.
    pub fn counts(&self) -> [(&'static str, u64); 6] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("unknown_stream", g(&self.unknown_stream)),
            ("no_flow", g(&self.no_flow)),
            ("not_negotiated", g(&self.not_negotiated)),
            ("too_large", g(&self.too_large)),
            ("queue_full", g(&self.queue_full)),
            ("send_backlog", g(&self.send_backlog)),
        ]
    }
}

/// A connection's datagram figures, shared with its flows.
#[derive(Debug)]
pub struct ConnDatagrams {
    peer: AtomicU8,
    /// The largest DATAGRAM frame payload the path takes now (0: none).
    max_frame: AtomicUsize,
    /// What was dropped.
    pub drops: DatagramDrops,
    /// Flows reserved on this connection (see [`ConnDatagrams::try_reserve_flow`]).
    flows: AtomicUsize,
}

impl Default for ConnDatagrams {
    fn default() -> Self {
        ConnDatagrams {
            peer: AtomicU8::new(0),
            max_frame: AtomicUsize::new(0),
            drops: DatagramDrops::default(),
            flows: AtomicUsize::new(0),
        }
    }
}

impl ConnDatagrams {
    /// What the peer said about HTTP datagrams.
    pub fn peer(&self) -> PeerDatagrams {
        match self.peer.load(Ordering::Acquire) {
            1 => PeerDatagrams::Supported,
            2 => PeerDatagrams::Unsupported,
            _ => PeerDatagrams::Unknown,
        }
    }

    pub(crate) fn set_peer(&self, p: PeerDatagrams) {
        let v = match p {
            PeerDatagrams::Unknown => 0,
            PeerDatagrams::Supported => 1,
            PeerDatagrams::Unsupported => 2,
        };
        self.peer.store(v, Ordering::Release);
    }

    /// The largest DATAGRAM frame payload the path takes now (Quarter Stream ID included);
    /// 0 when datagrams cannot be sent.
    pub fn max_frame(&self) -> usize {
        self.max_frame.load(Ordering::Relaxed)
    }

    pub(crate) fn set_max_frame(&self, n: usize) {
        self.max_frame.store(n, Ordering::Relaxed);
    }

    /// Takes one of at most `max` flow places on this connection; `false` when all are taken.
    /// Give it back with [`ConnDatagrams::release_flow`].
    pub fn try_reserve_flow(&self, max: usize) -> bool {
        self.flows
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a place taken by [`ConnDatagrams::try_reserve_flow`].
    pub fn release_flow(&self) {
        let _ = self
            .flows
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Flow places taken now.
    pub fn flows(&self) -> usize {
        self.flows.load(Ordering::Acquire)
    }
}

/// Most datagrams one flow may have on their way to its connection actor (sent and not yet
/// put into quiche). 256: a quarter of quiche's send queue, which one connection turn empties
/// into quiche; past it [`DatagramFlow::send`] drops and counts instead of growing the
/// connection's (unbounded) mailbox, so a flood in one flow never delays the connection's
/// packets, its streams or its other flows.
pub const MAX_PENDING_DATAGRAMS: usize = 256;

/// One request stream's access to HTTP datagrams, found in an extended CONNECT request's
/// extensions (server) or an extended CONNECT response's (client).
#[derive(Clone)]
pub struct DatagramFlow {
    stream_id: u64,
    conn: ConnMailbox<H3Msg>,
    shared: Arc<ConnDatagrams>,
    trace_id: Arc<str>,
    /// Datagrams sent and not yet taken by the connection actor (shared by clones).
    pending: Arc<AtomicUsize>,
}

impl std::fmt::Debug for DatagramFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramFlow")
            .field("stream_id", &self.stream_id)
            .finish()
    }
}

impl DatagramFlow {
    pub(crate) fn new(
        stream_id: u64,
        conn: ConnMailbox<H3Msg>,
        shared: Arc<ConnDatagrams>,
        trace_id: Arc<str>,
    ) -> DatagramFlow {
        DatagramFlow {
            stream_id,
            conn,
            shared,
            trace_id,
            pending: Arc::default(),
        }
    }

    /// The connection's trace id (for log fields).
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// The connection's datagram figures, shared (to keep beyond this handle).
    pub fn shared(&self) -> Arc<ConnDatagrams> {
        self.shared.clone()
    }

    /// The request stream.
    pub fn stream_id(&self) -> u64 {
        self.stream_id
    }

    /// Routes this stream's datagrams to `sink` from now on (replacing any earlier sink).
    /// Returns `false` if the connection is gone.
    pub fn attach(&self, sink: Arc<dyn DatagramSink>) -> bool {
        self.conn
            .cast(ConnMsg::App(H3Msg::AttachFlow {
                stream_id: self.stream_id,
                sink,
            }))
            .is_ok()
    }

    /// Sends HTTP datagrams (payloads, each sent behind this stream's Quarter Stream ID) in
    /// QUIC DATAGRAM frames. Those past [`MAX_PENDING_DATAGRAMS`] on their way, and those the
    /// peer cannot take, are dropped and counted in [`DatagramFlow::connection`]'s drops.
    /// Returns `false` if the connection is gone. Each payload is copied once, here, into its
    /// frame; [`frame`](Self::frame) and [`send_frames`](Self::send_frames) let a sender that
    /// writes the payload anyway write it straight into the frame.
    pub fn send(&self, payloads: Vec<Bytes>) -> bool {
        let frames = payloads.iter().map(|p| self.frame_raw(&[], p)).collect();
        self.send_frames(frames)
    }

    /// An HTTP datagram for this stream, ready for a QUIC DATAGRAM frame: the Quarter Stream
    /// ID, `context` (a context id, as CONNECT-UDP's 0) and `payload`, in one buffer that the
    /// connection hands to quiche as it is.
    pub fn frame(&self, context: u64, payload: &[u8]) -> DatagramFrame {
        let mut ctx = [0u8; 8];
        let n = {
            let mut o = octets::OctetsMut::with_slice(&mut ctx);
            let _ = o.put_varint(context);
            o.off()
        };
        self.frame_raw(&ctx[..n], payload)
    }

    fn frame_raw(&self, context: &[u8], payload: &[u8]) -> DatagramFrame {
        let qsid = self.stream_id / 4;
        let q = octets::varint_len(qsid);
        let mut bytes = vec![0u8; q + context.len() + payload.len()];
        let _ = octets::OctetsMut::with_slice(&mut bytes[..q]).put_varint_with_len(qsid, q);
        bytes[q..q + context.len()].copy_from_slice(context);
        bytes[q + context.len()..].copy_from_slice(payload);
        DatagramFrame {
            bytes,
            stream_id: self.stream_id,
        }
    }

    /// Sends frames made by [`frame`](Self::frame), with the same bound and counting as
    /// [`send`](Self::send). Frames of another stream's flow are dropped and counted
    /// (`not_negotiated`): a frame goes only where its Quarter Stream ID says.
    pub fn send_frames(&self, mut frames: Vec<DatagramFrame>) -> bool {
        let room = MAX_PENDING_DATAGRAMS.saturating_sub(self.pending.load(Ordering::Acquire));
        if frames.len() > room {
            let excess = (frames.len() - room) as u64;
            self.shared
                .drops
                .send_backlog
                .fetch_add(excess, Ordering::Relaxed);
            frames.truncate(room);
        }
        if frames.is_empty() {
            return true;
        }
        self.pending.fetch_add(frames.len(), Ordering::AcqRel);
        self.conn
            .cast(ConnMsg::App(H3Msg::SendDatagrams {
                stream_id: self.stream_id,
                frames,
                pending: self.pending.clone(),
            }))
            .is_ok()
    }

    /// The connection's datagram figures: the peer's support, the largest frame, drops.
    pub fn connection(&self) -> &ConnDatagrams {
        &self.shared
    }

    /// The largest HTTP Datagram payload a DATAGRAM frame carries for this stream now (0:
    /// none; send it in a capsule instead).
    pub fn max_payload(&self) -> usize {
        let prefix = octets::varint_len(self.stream_id / 4);
        self.shared.max_frame().saturating_sub(prefix)
    }
}
