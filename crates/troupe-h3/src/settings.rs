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
    /// SETTINGS_MAX_FIELD_SECTION_SIZE we advertise; `None` = unlimited (quiche's default).
    pub max_field_section_size: Option<u64>,
    /// SETTINGS_QPACK_MAX_TABLE_CAPACITY. Default 0: quiche's QPACK encoder does not use the
    /// dynamic table, and a 0 capacity makes decoding independent of stream order.
    pub qpack_max_table_capacity: u64,
    /// SETTINGS_QPACK_BLOCKED_STREAMS. Default 0 (consistent with a 0 table capacity).
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
    /// unread. Default 1024: ten connections' worth of the default stream limit.
    pub max_unanswered_requests: usize,
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
        }
    }
}
