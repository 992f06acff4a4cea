//! The [`Metrics`] sink: every connection, stream and dropped datagram of an endpoint reported
//! as it happens, and [`PrometheusMetrics`], a default sink that renders the Prometheus text
//! exposition format.
//!
//! Hooks are called from inside the actors (the receive loop, connection actors), so an
//! implementation must be cheap and must not block: count, do not log or do I/O.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::connection::{CloseReason, ConnectionInfo};

/// Why the receive loop dropped a datagram before it reached a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Its QUIC header could not be parsed.
    Unparseable,
    /// It named no known connection and could not start one.
    UnknownConnection,
    /// Its connection's inbox was full.
    QueueFull,
    /// An Initial with an invalid or expired Retry token.
    InvalidToken,
}

impl DropReason {
    /// A short label (`unparseable`, `unknown_connection`, `queue_full`, `invalid_token`).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Unparseable => "unparseable",
            DropReason::UnknownConnection => "unknown_connection",
            DropReason::QueueFull => "queue_full",
            DropReason::InvalidToken => "invalid_token",
        }
    }
}

/// How one direction of a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamEnd {
    /// The sender's FIN: the direction completed.
    Fin,
    /// RESET_STREAM with this code, sent by us (our sending direction).
    ResetSent(u64),
    /// RESET_STREAM with this code, sent by the peer (our receiving direction).
    ResetReceived(u64),
    /// STOP_SENDING with this code, sent by us (our receiving direction).
    StopSendingSent(u64),
    /// STOP_SENDING with this code, sent by the peer (our sending direction; quiche answers it
    /// with a RESET_STREAM of the same code).
    StopSendingReceived(u64),
}

impl StreamEnd {
    /// The end's name (`fin`, `reset_sent`, ...) and its error code, if it has one.
    pub fn parts(self) -> (&'static str, Option<u64>) {
        match self {
            StreamEnd::Fin => ("fin", None),
            StreamEnd::ResetSent(c) => ("reset_sent", Some(c)),
            StreamEnd::ResetReceived(c) => ("reset_received", Some(c)),
            StreamEnd::StopSendingSent(c) => ("stop_sending_sent", Some(c)),
            StreamEnd::StopSendingReceived(c) => ("stop_sending_received", Some(c)),
        }
    }
}

/// What a stream did, reported once when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StreamSummary {
    /// The QUIC stream ID.
    pub stream_id: u64,
    /// Body bytes written into quiche.
    pub bytes_sent: u64,
    /// Body bytes received.
    pub bytes_received: u64,
    /// How our sending direction ended; `None` if it never ended (the connection closed).
    pub send: Option<StreamEnd>,
    /// How our receiving direction ended; `None` if it never ended.
    pub recv: Option<StreamEnd>,
    /// The application's code for the stream panicked or failed.
    pub failed: bool,
}

/// A sink for endpoint, connection and stream events. Every method has an empty default, so an
/// implementation picks what it needs. Called inside actors: keep it cheap and non-blocking.
pub trait Metrics: Send + Sync + 'static {
    /// A server endpoint created a connection for a new client.
    fn connection_accepted(&self) {}
    /// A connection completed its handshake.
    fn connection_established(&self, handshake_time: Duration) {
        let _ = handshake_time;
    }
    /// A connection that never completed its handshake ended.
    fn handshake_failed(&self, reason: &CloseReason) {
        let _ = reason;
    }
    /// A connection ended; `info.close` says how, `info.stats` what it carried.
    fn connection_closed(&self, info: &ConnectionInfo) {
        let _ = info;
    }
    /// The receive loop dropped a datagram.
    fn datagram_dropped(&self, reason: DropReason) {
        let _ = reason;
    }
    /// A request stream started.
    fn stream_opened(&self) {}
    /// A new stream actor was spawned for a stream (no parked one was free): with
    /// `stream_opened`, how often streams reuse a parked actor.
    fn stream_actor_spawned(&self) {}
    /// A request stream ended.
    fn stream_closed(&self, summary: &StreamSummary) {
        let _ = summary;
    }
}

/// The sink that counts nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMetrics;

impl Metrics for NoMetrics {}

/// A shared [`Metrics`] sink, as held in [`crate::QuicSettings::metrics`].
#[derive(Clone)]
pub struct SharedMetrics(pub Arc<dyn Metrics>);

impl SharedMetrics {
    /// Wraps a sink.
    pub fn new(m: impl Metrics) -> Self {
        SharedMetrics(Arc::new(m))
    }
}

impl Default for SharedMetrics {
    fn default() -> Self {
        SharedMetrics(Arc::new(NoMetrics))
    }
}

impl std::fmt::Debug for SharedMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedMetrics")
    }
}

impl std::ops::Deref for SharedMetrics {
    type Target = dyn Metrics;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabel {
    /// `local`, `peer`, `idle_timeout`, `handshake_timeout`, `aborted`.
    by: &'static str,
    /// `application` or `transport` (empty when no code).
    space: &'static str,
    /// The error code in hex, e.g. `0x100`.
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamEndLabel {
    /// `reset_sent`, `reset_received`, `stop_sending_sent`, `stop_sending_received`.
    kind: &'static str,
    /// The error code in hex.
    code: String,
}

/// A [`Metrics`] sink that keeps Prometheus counters and renders them in the text exposition
/// format (`text/plain; version=0.0.4`) with [`PrometheusMetrics::render`]. Every series is
/// prefixed `troupe_`. Clone it to keep a handle after handing it to the settings.
#[derive(Clone)]
pub struct PrometheusMetrics {
    inner: Arc<Prom>,
}

struct Prom {
    registry: Registry,
    connections_accepted: Counter,
    connections_established: Counter,
    connections_open: Gauge,
    connections_closed: Family<CloseLabel, Counter>,
    handshake_failures: Family<ReasonLabel, Counter>,
    handshake_seconds: Histogram,
    bytes_sent: Counter,
    bytes_received: Counter,
    packets_lost: Counter,
    datagrams_dropped: Family<ReasonLabel, Counter>,
    streams_opened: Counter,
    stream_actors_spawned: Counter,
    streams_closed: Counter,
    stream_ends: Family<StreamEndLabel, Counter>,
    stream_failures: Counter,
    stream_bytes_sent: Counter,
    stream_bytes_received: Counter,
}

impl Default for PrometheusMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for PrometheusMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrometheusMetrics")
    }
}

impl PrometheusMetrics {
    /// A fresh set of counters.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("troupe");
        let p = Prom {
            connections_accepted: Counter::default(),
            connections_established: Counter::default(),
            connections_open: Gauge::default(),
            connections_closed: Family::default(),
            handshake_failures: Family::default(),
            // 1 ms .. ~4 s: loopback to intercontinental with a lost Initial.
            handshake_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 13),
            ),
            bytes_sent: Counter::default(),
            bytes_received: Counter::default(),
            packets_lost: Counter::default(),
            datagrams_dropped: Family::default(),
            streams_opened: Counter::default(),
            stream_actors_spawned: Counter::default(),
            streams_closed: Counter::default(),
            stream_ends: Family::default(),
            stream_failures: Counter::default(),
            stream_bytes_sent: Counter::default(),
            stream_bytes_received: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "connections_accepted",
            "Connections a server endpoint created for new clients",
            p.connections_accepted.clone(),
        );
        r.register(
            "connections_established",
            "Connections that completed their handshake",
            p.connections_established.clone(),
        );
        r.register(
            "connections_open",
            "Established connections not yet closed",
            p.connections_open.clone(),
        );
        r.register(
            "connections_closed",
            "Established connections closed, by who closed them and the close code",
            p.connections_closed.clone(),
        );
        r.register(
            "handshake_failures",
            "Connections that ended before completing the handshake",
            p.handshake_failures.clone(),
        );
        r.register(
            "handshake_duration_seconds",
            "Time from the first packet to handshake completion",
            p.handshake_seconds.clone(),
        );
        r.register(
            "quic_bytes_sent",
            "QUIC payload bytes sent by closed connections",
            p.bytes_sent.clone(),
        );
        r.register(
            "quic_bytes_received",
            "QUIC payload bytes received by closed connections",
            p.bytes_received.clone(),
        );
        r.register(
            "packets_lost",
            "Packets declared lost by closed connections",
            p.packets_lost.clone(),
        );
        r.register(
            "datagrams_dropped",
            "Datagrams dropped before reaching a connection, by reason",
            p.datagrams_dropped.clone(),
        );
        r.register(
            "streams_opened",
            "Request streams started",
            p.streams_opened.clone(),
        );
        r.register(
            "stream_actors_spawned",
            "Stream actors spawned (a stream that found no parked actor)",
            p.stream_actors_spawned.clone(),
        );
        r.register(
            "streams_closed",
            "Request streams ended (any way)",
            p.streams_closed.clone(),
        );
        r.register(
            "stream_aborts",
            "Stream directions ended by RESET_STREAM or STOP_SENDING, by kind and code",
            p.stream_ends.clone(),
        );
        r.register(
            "stream_failures",
            "Streams whose application code panicked or failed",
            p.stream_failures.clone(),
        );
        r.register(
            "stream_body_bytes_sent",
            "Body bytes sent on ended streams",
            p.stream_bytes_sent.clone(),
        );
        r.register(
            "stream_body_bytes_received",
            "Body bytes received on ended streams",
            p.stream_bytes_received.clone(),
        );
        let p = Prom { registry, ..p };
        PrometheusMetrics { inner: Arc::new(p) }
    }

    /// Writes every counter to `out` in the text exposition format, without the closing
    /// `# EOF` line: for an exporter that appends series of its own (then `# EOF`).
    pub fn encode_series(&self, out: &mut String) {
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(out, &self.inner.registry);
    }

    /// Renders every counter in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    /// This sink as settings take it.
    pub fn shared(&self) -> SharedMetrics {
        SharedMetrics(Arc::new(self.clone()))
    }
}

fn hex(code: u64) -> String {
    format!("0x{code:x}")
}

fn close_label(reason: Option<&CloseReason>) -> CloseLabel {
    let (by, space, code) = match reason {
        Some(CloseReason::Local { space, code, .. }) => ("local", space.as_str(), hex(*code)),
        Some(CloseReason::Peer { space, code, .. }) => ("peer", space.as_str(), hex(*code)),
        Some(CloseReason::IdleTimeout) => ("idle_timeout", "", String::new()),
        Some(CloseReason::HandshakeTimeout) => ("handshake_timeout", "", String::new()),
        Some(CloseReason::Aborted) | None => ("aborted", "", String::new()),
    };
    CloseLabel { by, space, code }
}

impl Metrics for PrometheusMetrics {
    fn connection_accepted(&self) {
        self.inner.connections_accepted.inc();
    }

    fn connection_established(&self, handshake_time: Duration) {
        self.inner.connections_established.inc();
        self.inner.connections_open.inc();
        self.inner
            .handshake_seconds
            .observe(handshake_time.as_secs_f64());
    }

    fn handshake_failed(&self, reason: &CloseReason) {
        let reason = match reason {
            CloseReason::HandshakeTimeout => "timeout",
            CloseReason::Local { .. } => "local_error",
            CloseReason::Peer { .. } => "peer_error",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Aborted => "aborted",
        };
        self.inner
            .handshake_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    fn connection_closed(&self, info: &ConnectionInfo) {
        let p = &self.inner;
        if info.handshake_time.is_some() {
            p.connections_open.dec();
            p.connections_closed
                .get_or_create(&close_label(info.close.as_ref()))
                .inc();
        }
        p.bytes_sent.inc_by(info.stats.sent_bytes);
        p.bytes_received.inc_by(info.stats.recv_bytes);
        p.packets_lost.inc_by(info.stats.lost as u64);
    }

    fn datagram_dropped(&self, reason: DropReason) {
        self.inner
            .datagrams_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    fn stream_opened(&self) {
        self.inner.streams_opened.inc();
    }

    fn stream_actor_spawned(&self) {
        self.inner.stream_actors_spawned.inc();
    }

    fn stream_closed(&self, s: &StreamSummary) {
        let p = &self.inner;
        p.streams_closed.inc();
        p.stream_bytes_sent.inc_by(s.bytes_sent);
        p.stream_bytes_received.inc_by(s.bytes_received);
        if s.failed {
            p.stream_failures.inc();
        }
        for end in [s.send, s.recv].into_iter().flatten() {
            let (kind, code) = match end {
                StreamEnd::Fin => continue,
                StreamEnd::ResetSent(c) => ("reset_sent", c),
                StreamEnd::ResetReceived(c) => ("reset_received", c),
                StreamEnd::StopSendingSent(c) => ("stop_sending_sent", c),
                StreamEnd::StopSendingReceived(c) => ("stop_sending_received", c),
            };
            p.stream_ends
                .get_or_create(&StreamEndLabel {
                    kind,
                    code: hex(code),
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_stream_aborts_by_code() {
        let m = PrometheusMetrics::new();
        m.stream_opened();
        m.stream_closed(&StreamSummary {
            stream_id: 0,
            bytes_sent: 10,
            bytes_received: 3,
            send: Some(StreamEnd::ResetSent(0x102)),
            recv: Some(StreamEnd::Fin),
            failed: true,
        });
        m.datagram_dropped(DropReason::Unparseable);
        let text = m.render();
        assert!(text.contains("troupe_streams_opened_total 1"), "{text}");
        assert!(
            text.contains("troupe_stream_aborts_total{kind=\"reset_sent\",code=\"0x102\"} 1"),
            "{text}"
        );
        assert!(text.contains("troupe_stream_failures_total 1"), "{text}");
        assert!(
            text.contains("troupe_datagrams_dropped_total{reason=\"unparseable\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
