//! Endpoint-wide counters, readable at any time without messaging an actor.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters kept by an endpoint's receive loop and its connections.
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub(crate) dropped_unparseable: AtomicU64,
    pub(crate) dropped_unknown_connection: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_invalid_token: AtomicU64,
    pub(crate) version_negotiations: AtomicU64,
    pub(crate) retries_sent: AtomicU64,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_closed: AtomicU64,
    pub(crate) connections_failed: AtomicU64,
    pub(crate) handshake_timeouts: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) receive_loop_restarts: AtomicU64,
    /// Gauge: server connections still in their handshake.
    pub(crate) handshaking: AtomicU64,
    /// Datagrams read by each worker's receive loop (one entry per worker, each on a cache
    /// line of its own: the workers count on different cores, every datagram).
    pub(crate) worker_datagrams: Box<[crossbeam_utils::CachePadded<AtomicU64>]>,
    /// Short-header datagrams read by a worker other than the one their connection ID names.
    pub(crate) datagrams_misrouted: AtomicU64,
    /// The sink every event is also reported to.
    pub(crate) metrics: crate::metrics::SharedMetrics,
    /// The endpoint's supervision record: the receive loop's restart budget and the last
    /// failures of everything below the endpoint (receive loop, connections, streams).
    pub(crate) supervision: std::sync::Mutex<Supervision>,
}

/// What an endpoint's supervisor keeps.
#[derive(Debug, Default)]
pub(crate) struct Supervision {
    pub(crate) budget: crate::supervision::RestartBudget,
    pub(crate) failures: crate::supervision::FailureRing,
}

impl EndpointStats {
    /// Runs `f` on the supervision record.
    pub(crate) fn supervision<R>(&self, f: impl FnOnce(&mut Supervision) -> R) -> R {
        f(&mut self.supervision.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records the failure of something below the endpoint.
    pub(crate) fn record_failure(
        &self,
        who: impl Into<String>,
        child: crate::observe::ActorKind,
        kind: crate::supervision::FailureKind,
        why: &str,
    ) {
        self.supervision(|s| s.failures.record(who, child, kind, why));
    }
}

/// A point-in-time copy of [`EndpointStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct EndpointStatsSnapshot {
    /// UDP datagrams read from the socket.
    pub datagrams_received: u64,
    /// Datagrams whose QUIC header could not be parsed (garbage).
    pub dropped_unparseable: u64,
    /// Datagrams for no known connection that could not start one.
    pub dropped_unknown_connection: u64,
    /// Datagrams dropped because their connection's queue was full.
    pub dropped_queue_full: u64,
    /// Initials with an invalid or expired Retry token.
    pub dropped_invalid_token: u64,
    /// Version Negotiation packets sent.
    pub version_negotiations: u64,
    /// Retry packets sent.
    pub retries_sent: u64,
    /// Server connections created.
    pub connections_accepted: u64,
    /// Connections whose actor stopped normally.
    pub connections_closed: u64,
    /// Connection actors that failed (panic or error).
    pub connections_failed: u64,
    /// Connections abandoned because the handshake did not finish in time.
    pub handshake_timeouts: u64,
    /// New clients refused with CONNECTION_REFUSED (`max_connections` or `max_handshakes`
    /// reached).
    pub connections_refused: u64,
    /// Times the receive loop panicked and was restarted by the endpoint actor.
    pub receive_loop_restarts: u64,
    /// Server connections in their handshake right now.
    pub handshaking: u64,
    /// Datagrams read by each worker (`QuicSettings::workers`), in worker order.
    pub worker_datagrams: Vec<u64>,
    /// Short-header datagrams that reached a worker other than the one their connection ID
    /// names (and were handed on to their connection all the same). Stays 0 while the
    /// kernel's steering program works; a client whose address changed is the test of it.
    pub datagrams_misrouted: u64,
}

impl EndpointStatsSnapshot {
    /// Every datagram dropped before reaching a connection.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_unparseable
            + self.dropped_unknown_connection
            + self.dropped_queue_full
            + self.dropped_invalid_token
    }
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl EndpointStats {
    pub(crate) fn with_metrics(metrics: crate::metrics::SharedMetrics, workers: usize) -> Self {
        EndpointStats {
            metrics,
            worker_datagrams: (0..workers).map(|_| Default::default()).collect(),
            ..Default::default()
        }
    }

    /// Counts a dropped datagram here and in the metrics sink.
    pub(crate) fn dropped(&self, reason: crate::metrics::DropReason) {
        use crate::metrics::DropReason::*;
        bump(match reason {
            Unparseable => &self.dropped_unparseable,
            UnknownConnection => &self.dropped_unknown_connection,
            QueueFull => &self.dropped_queue_full,
            InvalidToken => &self.dropped_invalid_token,
        });
        self.metrics.datagram_dropped(reason);
    }

    /// A server connection left its handshake (established, or closed before that).
    pub(crate) fn handshake_over(&self) {
        let _ = self
            .handshaking
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> EndpointStatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EndpointStatsSnapshot {
            datagrams_received: self.worker_datagrams.iter().map(|c| r(c)).sum(),
            dropped_unparseable: r(&self.dropped_unparseable),
            dropped_unknown_connection: r(&self.dropped_unknown_connection),
            dropped_queue_full: r(&self.dropped_queue_full),
            dropped_invalid_token: r(&self.dropped_invalid_token),
            version_negotiations: r(&self.version_negotiations),
            retries_sent: r(&self.retries_sent),
            connections_accepted: r(&self.connections_accepted),
            connections_closed: r(&self.connections_closed),
            connections_failed: r(&self.connections_failed),
            handshake_timeouts: r(&self.handshake_timeouts),
            connections_refused: r(&self.connections_refused),
            receive_loop_restarts: r(&self.receive_loop_restarts),
            handshaking: r(&self.handshaking),
            worker_datagrams: self.worker_datagrams.iter().map(|c| r(c)).collect(),
            datagrams_misrouted: r(&self.datagrams_misrouted),
        }
    }
}
