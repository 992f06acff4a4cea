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
