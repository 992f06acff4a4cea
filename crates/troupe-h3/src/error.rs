//! Errors callers branch on.

/// Why a client request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The request could not be encoded (e.g. no host in the URI).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The connection closed before the response arrived.
    #[error("connection closed: {0}")]
    ConnectionClosed(String),
    /// The peer reset the stream before the response arrived.
    #[error("stream reset by peer with code 0x{0:x}")]
    StreamReset(u64),
    /// The response headers were malformed.
    #[error("malformed response: {0}")]
    MalformedResponse(String),
    /// The server refused the request before processing it (H3_REQUEST_REJECTED, e.g. it
    /// arrived after the server's GOAWAY): it may be retried on another connection.
    #[error("the server rejected the request without processing it (H3_REQUEST_REJECTED); it may be retried")]
    Rejected,
    /// The server sent GOAWAY before this request started: it was not processed and may be
    /// retried on another connection.
    #[error(
        "the server is going away; the request was not processed and may be retried elsewhere"
    )]
    GoingAway,
}

/// Why an operator's action on a live connection or stream (see [`crate::Server::goaway`],
/// [`crate::Server::cancel_stream`], [`crate::Server::start_qlog`]) was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// No live connection has this trace id or actor id.
    #[error("no live connection is named {0:?} (the tree lists each connection's trace id)")]
    NoSuchConnection(String),
    /// The connection is live but routes no such stream (never opened, or already ended).
    #[error("connection {connection} has no live stream {stream_id}")]
    NoSuchStream {
        /// The connection, as named.
        connection: String,
        /// The stream.
        stream_id: u64,
    },
    /// The connection ended before it answered.
    #[error("connection {0} ended before it answered")]
    Gone(String),
    /// The action could not be carried out (the reason says why).
    #[error("{0}")]
    Failed(String),
}
