//! QUIC transport for troupe: a UDP [`Endpoint`] whose receive loop routes datagrams to one
//! connection actor per `quiche::Connection`, and the [`ConnectionApp`] contract an
//! application protocol (HTTP/3 in `troupe-h3`) implements to run inside that actor.
//!
//! See `ARCHITECTURE.md` at the repository root for the actor tree and the path of a packet.

#![warn(missing_docs)]
#![deny(unsafe_code)]

mod app;
pub mod bufs;
pub mod cid;
mod connection;
pub mod diagnose;
mod endpoint;
mod error;
pub mod eyeballs;
pub mod gso;
pub mod metrics;
pub mod observe;
pub mod outbox;
mod recv_storage;
pub mod render;
mod retry;
mod route;
mod sessions;
mod settings;
pub mod snapshot;
mod stats;
pub mod supervision;
mod tls;
pub mod udp;

pub use app::{AppError, ConnCx, ConnectionApp, TurnClock};
pub use bufs::QuicConnection;
pub use connection::{
    CloseReason, ConnMsg, Connection, ConnectionInfo, ErrorSpace, Stage, LOCAL_CID_LEN,
};
pub use endpoint::{AppFactory, Endpoint, EndpointMsg};
pub use error::{ConfigError, ConnectError, EndpointError};
pub use eyeballs::resolve;
pub use metrics::{
    DropReason, Metrics, NoMetrics, PrometheusMetrics, SharedMetrics, StreamEnd, StreamSummary,
};
pub use observe::{ActorKind, ActorMeter, MeterView, Tracked};
pub use outbox::{ConnMailbox, Outbox};
pub use retry::TOKEN_LIFETIME;
pub use settings::{CongestionControl, QuicSettings, DATAGRAM_QUEUE_LEN};
pub use snapshot::{
    ActorNode, ConnectionSnapshot, DirectionSnapshot, DropCount, EndpointSnapshot, FlowSnapshot,
    StreamSnapshot,
};
pub use stats::{EndpointStats, EndpointStatsSnapshot};
pub use supervision::{
    BudgetView, Failure, FailureCount, FailureKind, FailureRing, RestartBudget, RestartPolicy,
    Verdict,
};
pub use tls::{Identity, TlsConfig, Verify, SELF_SIGNED_NAMES};

// With `ractor/cluster` enabled anywhere in the graph, message types need explicit impls.
#[cfg(feature = "cluster")]
impl<M: Send + 'static> ractor::Message for ConnMsg<M> {}
#[cfg(feature = "cluster")]
impl ractor::Message for EndpointMsg {}

/// Re-export of the quiche version this crate is built on.
pub use quiche;
