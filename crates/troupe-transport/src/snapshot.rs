//! The live tree: endpoint -> connections -> streams, as plain serializable data.
//!
//! Taken by [`crate::Endpoint::snapshot`] while traffic runs: each connection actor answers
//! one `Snapshot` message between two turns (its streams' figures are read from shared
//! counters, never by messaging the stream actors); a connection too busy to answer within
//! [`SNAPSHOT_CONNECTION_TIMEOUT`] still appears, from its meter, with `answered: false`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::observe::{ActorKind, MeterView};
use crate::supervision::{BudgetView, Failure};

/// How long a snapshot waits for one connection actor's answer. 100 ms: a connection turn
/// takes microseconds; one that takes this long is stuck, and the snapshot says so rather
/// than wait for it.
pub const SNAPSHOT_CONNECTION_TIMEOUT: Duration = Duration::from_millis(100);

/// An actor's identity and figures, common to every node of the tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ActorNode {
    /// What kind of actor.
    pub kind: ActorKind,
    /// ractor's actor id.
    pub id: String,
    /// ractor's status (`Running`, `Stopping`, ...).
    pub status: String,
    /// Mailbox, busy time, current handler, last error.
    #[serde(flatten)]
    pub meter: MeterView,
}

impl ActorNode {
    /// The node of `cell`, with `meter`'s figures.
    pub fn of(cell: &ractor::ActorCell, kind: ActorKind, meter: MeterView) -> Self {
        ActorNode {
            kind,
            id: cell.get_id().to_string(),
            status: format!("{:?}", cell.get_status()),
            meter,
        }
    }
}

/// The whole tree under one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct EndpointSnapshot {
    /// When the snapshot was taken, seconds since the Unix epoch.
    pub taken_at_unix_secs: f64,
    /// The endpoint actor.
    pub actor: ActorNode,
    /// `"server"` or `"client"`.
    pub role: &'static str,
    /// The bound address.
    pub local_addr: SocketAddr,
    /// The application's actor supervising the endpoint, if any.
    pub supervisor: Option<String>,
    /// The UDP receive loop: its restart budget.
    pub receive_loop: ReceiveLoopNode,
    /// The last failures under this endpoint (receive loop, connections, streams), oldest
    /// first.
    pub failures: Vec<Failure>,
    /// Failures ever recorded, including those no longer in `failures`.
    pub failures_total: u64,
    /// Failures ever recorded, by kind of child and outcome.
    pub failure_counts: Vec<crate::supervision::FailureCount>,
    /// The endpoint's counters.
    pub counters: crate::stats::EndpointStatsSnapshot,
    /// Stream actors parked for later streams, in the workers' pools (alive, serving none,
    /// under no connection: a connection's tree holds only the actors serving its streams).
    pub parked_stream_actors: usize,
    /// Every live connection.
    pub connections: Vec<ConnectionSnapshot>,
}

/// The receive loop, a long-lived child of the endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ReceiveLoopNode {
    /// Restarts ever.
    pub restarts: u64,
    /// Restarts used in the current window, and the policy.
    pub budget: BudgetView,
}

/// Where a connection is, as a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StageName {
    /// Handshake in progress.
    Handshake,
    /// Established.
    Established,
    /// Draining after a CONNECTION_CLOSE.
    Draining,
    /// Closed; the actor is stopping.
    Closing,
}

impl StageName {
    /// `handshake`, `established`, `draining` or `closing` (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            StageName::Handshake => "handshake",
            StageName::Established => "established",
            StageName::Draining => "draining",
            StageName::Closing => "closing",
        }
    }
}

/// One connection and its streams.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ConnectionSnapshot {
    /// The connection actor.
    pub actor: ActorNode,
    /// Whether the actor answered in time; if not, only `actor` is filled in.
    pub answered: bool,
    /// quiche's trace id.
    pub trace_id: String,
    /// Our connection ids (hex).
    pub source_ids: Vec<String>,
    /// The server worker that accepted the connection and runs its actors (`None` on a
    /// client).
    pub worker: Option<usize>,
    /// The peer's connection id in use (hex).
    pub destination_id: String,
    /// The peer's address.
    pub peer: Option<SocketAddr>,
    /// Our address on the active path.
    pub local: Option<SocketAddr>,
    /// The negotiated ALPN (empty before the handshake completes).
    pub alpn: String,
    /// Where the connection is.
    pub stage: Option<StageName>,
    /// Smoothed RTT, ms.
    pub rtt_ms: Option<f64>,
    /// Minimum RTT, ms.
    pub min_rtt_ms: Option<f64>,
    /// Congestion window, bytes.
    pub cwnd: Option<usize>,
    /// Bytes sent and neither acknowledged nor declared lost (an estimate from quiche's
    /// counters, which do not expose the congestion controller's own figure).
    pub bytes_in_flight: u64,
    /// Path MTU, bytes.
    pub pmtu: Option<usize>,
    /// Packets sent.
    pub packets_sent: u64,
    /// Packets received.
    pub packets_received: u64,
    /// Packets lost.
    pub packets_lost: u64,
    /// Bytes sent (UDP payload).
    pub bytes_sent: u64,
    /// Bytes received (UDP payload).
    pub bytes_received: u64,
    /// Flow control: DATA_BLOCKED and STREAM_DATA_BLOCKED frames sent (we were blocked by the
    /// peer) and received (the peer was blocked by us).
    pub blocked: BlockedCounts,
    /// Streams open now (routed to a stream actor).
    pub streams_open: usize,
    /// Actors linked under this connection now: its streams' actors (an actor told to stop
    /// counts until it has).
    pub child_actors: usize,
    /// Bidirectional streams the peer may open at once (our limit).
    pub streams_limit_bidi: u64,
    /// Bidirectional streams we may still open (the peer's limit).
    pub peer_streams_left_bidi: u64,
    /// Time until the idle timeout closes the connection if nothing arrives, seconds.
    pub idle_timeout_left_secs: Option<f64>,
    /// How it closed (set while draining or closing).
    pub close: Option<String>,
    /// The last failures of this connection's children, oldest first.
    pub failures: Vec<Failure>,
    /// Child failures ever.
    pub failures_total: u64,
    /// HTTP datagrams dropped on this connection, by reason (reasons with none left out).
    pub datagram_drops: Vec<DropCount>,
    /// Its streams.
    pub streams: Vec<StreamSnapshot>,
}

impl ConnectionSnapshot {
    /// A connection that did not answer in time: its actor's figures only.
    pub(crate) fn unanswered(actor: ActorNode) -> Self {
        ConnectionSnapshot {
            actor,
            answered: false,
            trace_id: String::new(),
            source_ids: Vec::new(),
            worker: None,
            destination_id: String::new(),
            peer: None,
            local: None,
            alpn: String::new(),
            stage: None,
            rtt_ms: None,
            min_rtt_ms: None,
            cwnd: None,
            bytes_in_flight: 0,
            pmtu: None,
            packets_sent: 0,
            packets_received: 0,
            packets_lost: 0,
            bytes_sent: 0,
            bytes_received: 0,
            blocked: BlockedCounts::default(),
            streams_open: 0,
            child_actors: 0,
            streams_limit_bidi: 0,
            peer_streams_left_bidi: 0,
            idle_timeout_left_secs: None,
            close: None,
            failures: Vec::new(),
            failures_total: 0,
            datagram_drops: Vec::new(),
            streams: Vec::new(),
        }
    }
}

/// Flow-control blocked counts of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BlockedCounts {
    /// DATA_BLOCKED sent.
    pub data_blocked_sent: u64,
    /// STREAM_DATA_BLOCKED sent.
    pub stream_data_blocked_sent: u64,
    /// DATA_BLOCKED received.
    pub data_blocked_received: u64,
    /// STREAM_DATA_BLOCKED received.
    pub stream_data_blocked_received: u64,
}

/// One stream (its actor and both directions).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StreamSnapshot {
    /// The stream actor.
    pub actor: ActorNode,
    /// The QUIC stream id.
    pub stream_id: u64,
    /// Request method, if known.
    pub method: Option<String>,
    /// Request path, if known (`"<redacted>"` when the settings say so).
    pub path: Option<String>,
    /// Our sending direction.
    pub send: DirectionSnapshot,
    /// Our receiving direction.
    pub recv: DirectionSnapshot,
    /// Body bytes the actor may still hand to the connection (write credit).
    pub write_credit: u64,
    /// Body bytes the connection may still read from quiche for the actor; `None` once the
    /// receiving side is closed.
    pub read_credit: Option<u64>,
    /// Body bytes waiting: received and not yet taken by the application, plus produced and
    /// not yet handed to the connection, plus handed and not yet taken by quiche.
    pub buffered: u64,
    /// Seconds the stream has been blocked by flow control with bytes to send, if it is.
    pub blocked_for_secs: Option<f64>,
    /// Its datagram flows (MASQUE: a CONNECT-UDP stream has one).
    pub flows: Vec<FlowSnapshot>,
}

/// One HTTP datagram flow (MASQUE), under its CONNECT stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct FlowSnapshot {
    /// The flow actor.
    pub actor: ActorNode,
    /// Where it sends (the resolved address that passed the egress check).
    pub target: String,
    /// HTTP datagrams from the client (frames and capsules).
    pub from_client: u64,
    /// UDP payloads sent to the target.
    pub to_target: u64,
    /// UDP payloads received from the target.
    pub from_target: u64,
    /// Payloads sent to the client (frames and capsules).
    pub to_client: u64,
    /// UDP payload bytes sent to the target.
    pub to_target_bytes: u64,
    /// UDP payload bytes received from the target.
    pub from_target_bytes: u64,
    /// Datagrams dropped, by reason (reasons with none left out).
    pub drops: Vec<DropCount>,
}

/// How many datagrams were dropped for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DropCount {
    /// The reason (`rate`, `queue_full`, `context`, ...).
    pub reason: &'static str,
    /// How many.
    pub count: u64,
}

impl FlowSnapshot {
    /// A flow's node: its actor and target, no traffic yet.
    pub fn new(actor: ActorNode, target: String) -> Self {
        FlowSnapshot {
            actor,
            target,
            from_client: 0,
            to_target: 0,
            from_target: 0,
            to_client: 0,
            to_target_bytes: 0,
            from_target_bytes: 0,
            drops: Vec::new(),
        }
    }

    /// Datagrams each way: from the client, to the target, from the target, to the client.
    pub fn with_datagrams(
        mut self,
        from_client: u64,
        to_target: u64,
        from_target: u64,
        to_client: u64,
    ) -> Self {
        self.from_client = from_client;
        self.to_target = to_target;
        self.from_target = from_target;
        self.to_client = to_client;
        self
    }

    /// Payload bytes to and from the target.
    pub fn with_bytes(mut self, to_target: u64, from_target: u64) -> Self {
        self.to_target_bytes = to_target;
        self.from_target_bytes = from_target;
        self
    }

    /// Drops by reason; zero counts are left out.
    pub fn with_drops(mut self, drops: impl IntoIterator<Item = (&'static str, u64)>) -> Self {
        self.drops = drops
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(reason, count)| DropCount { reason, count })
            .collect();
        self
    }
}

/// One direction of a stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DirectionSnapshot {
    /// Its state, as the stream actor's state machine names it.
    pub state: &'static str,
    /// Body bytes carried.
    pub bytes: u64,
    /// How it ended: `fin`, `reset_sent`, `reset_received`, `stop_sending_sent`,
    /// `stop_sending_received`.
    pub end: Option<&'static str>,
    /// The error code of a reset or STOP_SENDING end.
    pub code: Option<u64>,
}

impl StreamSnapshot {
    /// A stream's node (for application layers building their streams' nodes).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        actor: ActorNode,
        stream_id: u64,
        method: Option<String>,
        path: Option<String>,
        send: DirectionSnapshot,
        recv: DirectionSnapshot,
        write_credit: u64,
        read_credit: Option<u64>,
        buffered: u64,
    ) -> Self {
        StreamSnapshot {
            actor,
            stream_id,
            method,
            path,
            send,
            recv,
            write_credit,
            read_credit,
            buffered,
            blocked_for_secs: None,
            flows: Vec::new(),
        }
    }

    /// Adds the stream's datagram flows.
    pub fn with_flows(mut self, flows: Vec<FlowSnapshot>) -> Self {
        self.flows = flows;
        self
    }

    /// Marks the stream blocked by flow control for `secs`.
    pub fn with_blocked_for(mut self, secs: Option<f64>) -> Self {
        self.blocked_for_secs = secs;
        self
    }
}

impl DirectionSnapshot {
    /// One direction's node.
    pub fn new(
        state: &'static str,
        bytes: u64,
        end: Option<&'static str>,
        code: Option<u64>,
    ) -> Self {
        DirectionSnapshot {
            state,
            bytes,
            end,
            code,
        }
    }
}

/// Renders a connection id as lowercase hex.
pub(crate) fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Snapshots built by hand, for the unit tests of what reads them.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::supervision::BudgetView;

    pub(crate) fn node(kind: ActorKind, id: &str, busy: f64, depth: u64) -> ActorNode {
        ActorNode {
            kind,
            id: id.into(),
            status: "Running".into(),
            meter: MeterView {
                age_secs: 1.0,
                mailbox_depth: depth,
                oldest_message_age_secs: (depth > 0).then_some(0.1),
                messages_handled: 1,
                busy_secs: busy,
                handling: None,
                last_error: None,
            },
        }
    }

    pub(crate) fn stream(id: &str, stream_id: u64, busy: f64, bytes: u64) -> StreamSnapshot {
        StreamSnapshot::new(
            node(ActorKind::Stream, id, busy, 0),
            stream_id,
            Some("GET".into()),
            Some("/".into()),
            DirectionSnapshot::new("open", bytes, None, None),
            DirectionSnapshot::new("open", 0, None, None),
            0,
            Some(0),
            0,
        )
    }

    pub(crate) fn conn(
        id: &str,
        busy: f64,
        bytes: u64,
        lost: u64,
        streams: Vec<StreamSnapshot>,
    ) -> ConnectionSnapshot {
        let mut c = ConnectionSnapshot::unanswered(node(ActorKind::Connection, id, busy, 0));
        c.answered = true;
        c.trace_id = format!("t-{id}");
        c.bytes_sent = bytes;
        c.packets_lost = lost;
        c.streams = streams;
        c
    }

    pub(crate) fn endpoint(conns: Vec<ConnectionSnapshot>) -> EndpointSnapshot {
        EndpointSnapshot {
            taken_at_unix_secs: 0.0,
            actor: node(ActorKind::Endpoint, "e", 0.0, 0),
            role: "server",
            local_addr: "127.0.0.1:1".parse().unwrap(),
            supervisor: Some("sup".into()),
            receive_loop: ReceiveLoopNode {
                restarts: 0,
                budget: BudgetView {
                    used: 0,
                    max_restarts: 1,
                    within_secs: 5.0,
                },
            },
            failures: Vec::new(),
            failures_total: 0,
            failure_counts: Vec::new(),
            counters: Default::default(),
            parked_stream_actors: 0,
            connections: conns,
        }
    }
}
