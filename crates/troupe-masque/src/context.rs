//! Context ids the application registers (RFC 9298 §4). Context id 0 carries UDP payloads;
//! any other is an extension's. A proxy drops and counts datagrams whose context id nobody
//! registered; one registered in [`crate::ProxyConfig::contexts`] goes to its handler, with a
//! way to answer on the same flow and context id.

use bytes::Bytes;
use troupe_h3::{DatagramFlow, PeerDatagrams};

/// An HTTP datagram of a flow with a context id the application registered.
#[derive(Debug)]
pub struct ContextDatagram {
    /// Its context id.
    pub context: u64,
    /// What followed the context id.
    pub payload: Bytes,
    /// The CONNECT-UDP stream's target, as checked and opened.
    pub target: std::net::SocketAddr,
    flow: DatagramFlow,
}

impl ContextDatagram {
    pub(crate) fn new(
        context: u64,
        payload: Bytes,
        target: std::net::SocketAddr,
        flow: DatagramFlow,
    ) -> Self {
        ContextDatagram {
            context,
            payload,
            target,
            flow,
        }
    }

    /// The CONNECT-UDP stream the datagram came on.
    pub fn stream_id(&self) -> u64 {
        self.flow.stream_id()
    }

    /// Sends `payload` back to the client on the same flow, with the same context id, in a
    /// QUIC DATAGRAM frame. `false` when it cannot go: the client takes no HTTP datagrams,
    /// it is too large for a frame, or the connection is gone. A reply the connection then
    /// drops (its queue full) is counted in the connection's datagram drops.
    pub fn reply(&self, payload: &[u8]) -> bool {
        let context_len = octets::varint_len(self.context);
        if self.flow.connection().peer() != PeerDatagrams::Supported
            || context_len + payload.len() > self.flow.max_payload()
        {
            return false;
        }
        self.flow
            .send_frames(vec![self.flow.frame(self.context, payload)])
    }
}

/// What the application does with datagrams of a context id it registered. Called inside the
/// flow's actor, in order: it must not block (queue, count, cast, or [`ContextDatagram::reply`]).
pub trait ContextHandler: Send + Sync + 'static {
    /// One datagram.
    fn datagram(&self, d: ContextDatagram);
}

impl<F> ContextHandler for F
where
    F: Fn(ContextDatagram) + Send + Sync + 'static,
{
    fn datagram(&self, d: ContextDatagram) {
        self(d)
    }
}
