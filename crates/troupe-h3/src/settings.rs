//! HTTP/3 settings with documented defaults.

/// HTTP/3 settings shared by the server and the client.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct H3Settings {
    /// Per-stream receive window of the actor protocol: at most this many body bytes are
    /// buffered for one stream between quiche and the reader. Default 256 KiB: a quarter of the
    /// default QUIC stream window, so quiche keeps the peer busy while the reader catches up.
    pub recv_window: usize,
    /// Per-stream send window: at most this many body bytes are handed to the connection actor
    /// and not yet written into quiche. Default 256 KiB.
    pub send_window: usize,
    /// SETTINGS_MAX_FIELD_SECTION_SIZE we advertise: the largest header section a peer may
    /// send us (a larger one is refused with H3_EXCESSIVE_LOAD). `None` = quiche's default,
    /// 32 KiB today: roomy for browsers' cookies, small enough to bound a decoder's work.
    pub max_field_section_size: Option<u64>,
    /// SETTINGS_QPACK_MAX_TABLE_CAPACITY. Must be 0 (the default): quiche's QPACK decoder has
    /// no dynamic table, so a non-zero capacity would invite peers to send header blocks that
    /// cannot be decoded (a connection error). [`H3Settings::validate`] refuses anything else.
    pub qpack_max_table_capacity: u64,
    /// SETTINGS_QPACK_BLOCKED_STREAMS, advertised as given. Default 0: with no dynamic table
    /// no stream can block on it, so any value is harmless but 0 is the honest one.
    pub qpack_blocked_streams: u64,
    /// Server: requests accepted on one connection before it sends GOAWAY and drains (later
    /// requests get H3_REQUEST_REJECTED). Default `None`: unlimited. Bounds how long one client
    /// can pin one connection (and its state) to one server.
    pub max_requests_per_connection: Option<u64>,
    /// Server: a connection that sends no request within this time after its handshake is
    /// closed (H3_NO_ERROR). Default `None`. Frees connections opened only to hold a slot.
    pub post_accept_timeout: Option<std::time::Duration>,
    /// Client: requests on one connection that may wait for a stream (the server's
    /// MAX_STREAMS) inside the connection actor; further `Client::send` calls wait before
    /// queueing anything. Default 1024: ten times the default stream limit, so bursts queue
    /// without bound only up to a few MB of request heads.
    pub max_pending_requests: usize,
    /// Server with an application actor ([`crate::Server::bind_actor`]): requests delivered
    /// to the actor and not yet answered. Further requests wait in their own stream actors,
    /// unread. Shared fairly among connections: each may hold `ceil(total / (active + 1))`,
    /// so one client cannot starve the others. Default 1024: ten connections' worth of the
    /// default stream limit.
    pub max_unanswered_requests: usize,
    /// Show request paths as `<redacted>` in snapshots (and everything built on them: the
    /// admin endpoint, `troupe tree`). Default off: an operator usually needs to see which
    /// request is stuck; turn it on where paths carry secrets (tokens in query strings).
    pub redact_paths: bool,
    /// Advertise SETTINGS_ENABLE_CONNECT_PROTOCOL and accept extended CONNECT requests
    /// (`:protocol`, RFC 9220), such as CONNECT-UDP. Default off: without it a request carrying
    /// `:protocol` is malformed (H3_MESSAGE_ERROR), as RFC 9220 requires.
    pub extended_connect: bool,
    /// Parked stream actors each endpoint worker may keep for later streams (a client endpoint
    /// keeps one pool for its connections). A stream actor whose stream ended cleanly parks instead
    /// of stopping and serves a later stream of any connection of its worker (one stream at a
    /// time), so a spawn and a teardown (about a third of a small request's cost) are paid once for
    /// many streams, and the actor taken is the one parked last, whose memory is still in cache. An
    /// actor that failed never serves again, and one with children (a datagram flow) stops. Each
    /// second a worker keeps at most as many as its streams took in the second before, and at least
    /// two, so a quiet worker holds two parked actors (about 8 KB each) within two seconds. Default
    /// 1024: a busy worker's streams in flight at once (every connection's window of requests
    /// arriving in one burst, say 50 connections of 10 or 10 of the default stream limit of 100)
    /// find parked actors, within 8 MB; 0: every stream actor stops when its stream ends.
    pub stream_actor_pool: usize,
}

impl Default for H3Settings {
    fn default() -> Self {
        H3Settings {
            recv_window: 256 * 1024,
            send_window: 256 * 1024,
            max_field_section_size: None,
            qpack_max_table_capacity: 0,
            qpack_blocked_streams: 0,
            max_requests_per_connection: None,
            post_accept_timeout: None,
            max_pending_requests: 1024,
            max_unanswered_requests: 1024,
            redact_paths: false,
            extended_connect: false,
            stream_actor_pool: 1024,
        }
    }
}

impl H3Settings {
    /// Checks the settings for values that cannot work, naming the field and the fix.
    pub fn validate(&self) -> Result<(), troupe_transport::ConfigError> {
        let invalid = |field: &'static str, why: String| {
            Err(troupe_transport::ConfigError::Invalid { field, why })
        };
        let min_window = 2 * crate::body::CHUNK_OVERHEAD + 1;
        if self.recv_window < min_window {
            return invalid(
                "h3.recv_window",
                format!(
                    "{} is too small: each chunk is charged its length plus {} bytes, so use at \
                     least {min_window} (the default is 256 KiB)",
                    self.recv_window,
                    crate::body::CHUNK_OVERHEAD
                ),
            );
        }
        if self.send_window == 0 {
            return invalid(
                "h3.send_window",
                "must be at least 1 byte (the default is 256 KiB)".into(),
            );
        }
        if self.qpack_max_table_capacity != 0 {
            return invalid(
                "h3.qpack_max_table_capacity",
                format!(
                    "{} is not supported: quiche's QPACK decoder has no dynamic table, so peers \
                     using one would break the connection; leave it at 0",
                    self.qpack_max_table_capacity
                ),
            );
        }
        if self.max_pending_requests == 0 {
            return invalid(
                "h3.max_pending_requests",
                "must be at least 1, or no request could ever start".into(),
            );
        }
        if self.max_unanswered_requests == 0 {
            return invalid(
                "h3.max_unanswered_requests",
                "must be at least 1, or no request could ever be delivered".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        H3Settings::default().validate().unwrap();
    }

    #[test]
    fn unusable_values_name_their_field() {
        type Breaker = fn(&mut H3Settings);
        let cases: [(&str, Breaker); 5] = [
            ("h3.recv_window", |s| s.recv_window = 64),
            ("h3.send_window", |s| s.send_window = 0),
            ("h3.qpack_max_table_capacity", |s| {
                s.qpack_max_table_capacity = 4096
            }),
            ("h3.max_pending_requests", |s| s.max_pending_requests = 0),
            ("h3.max_unanswered_requests", |s| {
                s.max_unanswered_requests = 0
            }),
        ];
        for (field, break_it) in cases {
            let mut s = H3Settings::default();
            break_it(&mut s);
            match s.validate() {
                Err(troupe_transport::ConfigError::Invalid { field: f, .. }) => {
                    assert_eq!(f, field)
                }
                other => panic!("{field}: expected Invalid, got {other:?}"),
            }
        }
    }
}
