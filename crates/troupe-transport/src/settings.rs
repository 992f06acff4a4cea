//! QUIC settings with documented defaults, turned into a `quiche::Config`.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::ConfigError;
use crate::tls::TlsConfig;

/// Congestion-control algorithm, mirrored from quiche so callers need not depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CongestionControl {
    /// CUBIC (RFC 9438): quiche's default and the safe choice on shared paths.
    #[default]
    Cubic,
    /// Reno (RFC 9002's reference controller).
    Reno,
    /// BBRv2 as implemented by quiche.
    Bbr2,
}

impl CongestionControl {
    fn to_quiche(self) -> quiche::CongestionControlAlgorithm {
        match self {
            CongestionControl::Cubic => quiche::CongestionControlAlgorithm::CUBIC,
            CongestionControl::Reno => quiche::CongestionControlAlgorithm::Reno,
            CongestionControl::Bbr2 => quiche::CongestionControlAlgorithm::Bbr2Gcongestion,
        }
    }
}

/// Transport settings for an endpoint and every connection it owns.
///
/// Every field has a default chosen for a general-purpose HTTP/3 server on the open internet; the
/// reason for each value is on the field. Build with `QuicSettings::default()` and change fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QuicSettings {
    /// ALPN protocols offered (client) or accepted (server), most preferred first.
    /// Default `["h3"]`: HTTP/3 is the only application this crate family speaks.
    pub alpn: Vec<Vec<u8>>,
    /// Idle timeout advertised in the transport parameters. Default 30 s: long enough for a
    /// browser tab between clicks, short enough that dead peers do not pin memory.
    pub idle_timeout: Duration,
    /// A connection not established within this time is abandoned. Default 5 s: several
    /// Initial retransmissions (PTO starts at ~1 s) and still a prompt error for a dead address.
    pub handshake_timeout: Duration,
    /// Client, connecting to a name with several addresses: the time between starting one
    /// address's handshake and the next while the earlier ones still run (RFC 8305's
    /// "Connection Attempt Delay"). Default 250 ms, RFC 8305 §8's recommendation: a handshake
    /// on a working path is done by then, and a dead first address costs a quarter second.
    /// Must be within 10 ms..=2 s (RFC 8305 §5's bounds).
    pub connection_attempt_delay: Duration,
    /// How often the endpoint restarts a failed UDP receive loop before it fails itself, to
    /// its own supervisor (the application's, see `docs/supervision.md`). Default OTP's: 1
    /// restart within 5 s.
    pub receive_loop_restarts: crate::supervision::RestartPolicy,
    /// Connection-level receive window (`initial_max_data`). Default 10 MiB: fills a
    /// ~1 Gbit/s x 80 ms path without waiting on MAX_DATA.
    pub initial_max_data: u64,
    /// Per-stream receive window for bidirectional streams (both local and remote initiated).
    /// Default 1 MiB: one stream can use a good share of the connection window.
    pub initial_max_stream_data_bidi: u64,
    /// Per-stream receive window for unidirectional streams (HTTP/3 control and QPACK streams).
    /// Default 1 MiB.
    pub initial_max_stream_data_uni: u64,
    /// Concurrent bidirectional streams the peer may open. Default 100: the value RFC 9114
    /// §6.1 recommends as the minimum a server should allow.
    pub initial_max_streams_bidi: u64,
    /// Concurrent unidirectional streams the peer may open. Default 3 would be the bare
    /// HTTP/3 minimum (control + 2 QPACK); 16 leaves room for GREASE and extensions.
    pub initial_max_streams_uni: u64,
    /// Largest UDP payload we send and advertise for receiving. Default 1350: fits typical
    /// tunnelled paths (PPPoE, VPN) without relying on PMTU discovery.
    pub max_udp_payload: usize,
    /// Whether QUIC DATAGRAM frames (RFC 9221) are enabled. Default off: nothing in troupe reads
    /// datagrams yet, and with them on any peer could park up to the receive queue's worth
    /// (about 1.3 MiB) of unread datagrams in quiche per connection.
    pub datagrams: bool,
    /// Whether runs of equal-size packets go out as one GSO send (`UDP_SEGMENT`) when the
    /// kernel supports it. Default on: about three times the packets per second on Linux.
    /// Turn it off for paths where segmentation offload misbehaves (some virtual NICs and
    /// tunnels); every packet is then its own send.
    pub gso: bool,
    /// Congestion control algorithm. Default CUBIC.
    pub congestion_control: CongestionControl,
    /// Server: validate client addresses with a stateless Retry before creating any connection
    /// state. Default on: it stops spoofed-source floods from allocating connection actors, at
    /// the cost of one round trip on the first connection.
    pub retry: bool,
    /// Server: connections at most (handshaking or established). A new client beyond it is
    /// refused with CONNECTION_REFUSED. Default 10,000: an idle connection with its actor costs
    /// tens of KB, so this bounds a server's connection state to well under a GB.
    pub max_connections: usize,
    /// Server: connections at most in their handshake at once. Each costs a key exchange and
    /// its TLS state before the client proved anything; past half of this, clients without a
    /// Retry token are asked for one (address validation, even with `retry` off), and past
    /// it new clients are refused with CONNECTION_REFUSED. Default 1,024.
    pub max_handshakes: usize,
    /// Where to append TLS secrets in NSS key-log format (for Wireshark). Default none.
    pub keylog_file: Option<PathBuf>,
    /// Directory for one qlog file per connection. Default none.
    pub qlog_dir: Option<PathBuf>,
    /// Packets queued for one connection between the receive loop and its actor before new ones
    /// are dropped (and counted). Default 1024: about 1.3 MB per connection at full size, far
    /// more than one loop turn produces, so only a stalled actor ever hits it.
    pub connection_queue: usize,
    /// Server: endpoint workers, each a thread with its own single-thread tokio runtime, its
    /// own UDP socket (all bound to the one port in an `SO_REUSEPORT` group) and its own
    /// receive loop; every actor of a connection (connection, streams, flows) runs on the
    /// worker that accepted it. Connection IDs name their worker, and a classic BPF program
    /// steers short-header packets to it, so a client whose address changes stays on its
    /// worker (see `cid.rs`). Default 1: the endpoint runs on the caller's runtime, with one
    /// socket and no threads of its own, as an embedded server expects; `troupe serve`
    /// asks for one per core. At most 256 (the worker is one byte of the connection ID).
    pub workers: usize,
    /// Server: the host id every connection ID carries after its first octet, for a
    /// QUIC-LB-style load balancer that routes on it (see ARCHITECTURE.md). Default empty
    /// (one host); at most 6 bytes, so 8 random bytes stay in each 16-byte ID.
    pub cid_host_id: Vec<u8>,
    /// Where connection, stream and dropped-datagram events are reported. Default: nowhere
    /// ([`crate::NoMetrics`]); use [`crate::PrometheusMetrics`] for Prometheus text.
    pub metrics: crate::metrics::SharedMetrics,
}

impl Default for QuicSettings {
    fn default() -> Self {
        QuicSettings {
            alpn: vec![b"h3".to_vec()],
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(5),
            connection_attempt_delay: Duration::from_millis(250),
            receive_loop_restarts: Default::default(),
            initial_max_data: 10 * 1024 * 1024,
            initial_max_stream_data_bidi: 1024 * 1024,
            initial_max_stream_data_uni: 1024 * 1024,
            initial_max_streams_bidi: 100,
            initial_max_streams_uni: 16,
            max_udp_payload: 1350,
            datagrams: false,
            gso: true,
            congestion_control: CongestionControl::Cubic,
            retry: true,
            max_connections: 10_000,
            max_handshakes: 1024,
            keylog_file: None,
            qlog_dir: None,
            connection_queue: 1024,
            workers: 1,
            cid_host_id: Vec::new(),
            metrics: Default::default(),
        }
    }
}

/// Length of quiche's receive and send queues for QUIC DATAGRAM frames, per connection.
/// 1024: bursts of small tunnelled packets fit; the connection drains the receive queue every
/// turn, and shares the send queue fairly among its flows.
pub const DATAGRAM_QUEUE_LEN: usize = 1024;

impl QuicSettings {
    /// Checks the settings for values quiche would reject or that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.alpn.is_empty() || self.alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
            return Err(ConfigError::Invalid {
                field: "alpn",
                why: "give at least one protocol, each 1 to 255 bytes long (e.g. \"h3\")".into(),
            });
        }
        if !(1200..=65527).contains(&self.max_udp_payload) {
            return Err(ConfigError::Invalid {
                field: "max_udp_payload",
                why: format!(
                    "{} is outside 1200..=65527 (QUIC needs at least 1200, UDP allows at most 65527)",
                    self.max_udp_payload
                ),
            });
        }
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                field: "handshake_timeout",
                why: "must be greater than zero".into(),
            });
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(2))
            .contains(&self.connection_attempt_delay)
        {
            return Err(ConfigError::Invalid {
                field: "connection_attempt_delay",
                why: format!(
                    "{:?} is outside 10 ms..=2 s (RFC 8305 §5: shorter floods the network \
                     with attempts, longer makes a dead first address felt)",
                    self.connection_attempt_delay
                ),
            });
        }
        self.receive_loop_restarts
            .validate("receive_loop_restarts")?;
        for (field, v) in [
            ("max_connections", self.max_connections),
            ("max_handshakes", self.max_handshakes),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    field,
                    why: "must be at least 1".into(),
                });
            }
        }
        crate::cid::CidLayout::new(&self.cid_host_id, self.workers)?;
        if self.connection_queue == 0 {
            return Err(ConfigError::Invalid {
                field: "connection_queue",
                why: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// Builds the `quiche::Config` for these settings on top of a TLS context. A client
    /// connecting to a server named by IP address passes `ip`: its certificate's IP address
    /// entries are checked instead of a host name.
    pub(crate) fn to_quiche(
        &self,
        tls: &TlsConfig,
        is_server: bool,
        ip: Option<&crate::tls::IpIdentity>,
    ) -> Result<quiche::Config, ConfigError> {
        self.validate()?;
        let ctx = match ip {
            Some(id) if !is_server => tls.client_context_for_ip(id)?,
            _ => tls.context_builder(is_server)?,
        };
        let mut c = quiche::Config::with_boring_ssl_ctx_builder(quiche::PROTOCOL_VERSION, ctx)
            .map_err(|e| ConfigError::Quiche(e.to_string()))?;
        let alpn: Vec<&[u8]> = self.alpn.iter().map(|p| p.as_slice()).collect();
        c.set_application_protos(&alpn)
            .map_err(|e| ConfigError::Quiche(format!("alpn: {e}")))?;
        c.set_max_idle_timeout(self.idle_timeout.as_millis() as u64);
        c.set_initial_max_data(self.initial_max_data);
        c.set_initial_max_stream_data_bidi_local(self.initial_max_stream_data_bidi);
        c.set_initial_max_stream_data_bidi_remote(self.initial_max_stream_data_bidi);
        c.set_initial_max_stream_data_uni(self.initial_max_stream_data_uni);
        c.set_initial_max_streams_bidi(self.initial_max_streams_bidi);
        c.set_initial_max_streams_uni(self.initial_max_streams_uni);
        c.set_max_recv_udp_payload_size(self.max_udp_payload);
        c.set_max_send_udp_payload_size(self.max_udp_payload);
        c.set_disable_active_migration(true);
        c.set_cc_algorithm(self.congestion_control.to_quiche());
        if self.datagrams {
            c.enable_dgram(true, DATAGRAM_QUEUE_LEN, DATAGRAM_QUEUE_LEN);
        }
        if self.keylog_file.is_some() {
            c.log_keys();
        }
        // With an IP identity the context's own callback verifies; quiche's verify_peer would
        // replace it.
        if !is_server && ip.is_none() {
            c.verify_peer(tls.verifies_peer());
        }
        Ok(c)
    }
}
