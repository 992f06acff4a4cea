//! HTTP/3 error codes (RFC 9114 §8.1) used on the wire.

/// No error; used for graceful closes.
pub const H3_NO_ERROR: u64 = 0x100;
/// Peer violated the protocol in a way without a more specific code.
pub const H3_GENERAL_PROTOCOL_ERROR: u64 = 0x101;
/// An internal error (e.g. a handler panicked).
pub const H3_INTERNAL_ERROR: u64 = 0x102;
/// The peer created a stream we will not accept.
pub const H3_STREAM_CREATION_ERROR: u64 = 0x103;
/// A critical stream was closed.
pub const H3_CLOSED_CRITICAL_STREAM: u64 = 0x104;
/// A frame not permitted in the current state.
pub const H3_FRAME_UNEXPECTED: u64 = 0x105;
/// A malformed frame.
pub const H3_FRAME_ERROR: u64 = 0x106;
/// The peer generates excessive load.
pub const H3_EXCESSIVE_LOAD: u64 = 0x107;
/// A stream or push ID was used incorrectly.
pub const H3_ID_ERROR: u64 = 0x108;
/// SETTINGS error.
pub const H3_SETTINGS_ERROR: u64 = 0x109;
/// No SETTINGS frame at the start of the control stream.
pub const H3_MISSING_SETTINGS: u64 = 0x10a;
/// A request was rejected before any processing (safe to retry).
pub const H3_REQUEST_REJECTED: u64 = 0x10b;
/// The request or its response is cancelled.
pub const H3_REQUEST_CANCELLED: u64 = 0x10c;
/// The stream ended before the request was complete.
pub const H3_REQUEST_INCOMPLETE: u64 = 0x10d;
/// A malformed HTTP message.
pub const H3_MESSAGE_ERROR: u64 = 0x10e;
/// A CONNECT tunnel failed.
pub const H3_CONNECT_ERROR: u64 = 0x10f;
/// Retry over HTTP/1.1.
pub const H3_VERSION_FALLBACK: u64 = 0x110;
/// A malformed HTTP Datagram or capsule (RFC 9297 §5.2).
pub const H3_DATAGRAM_ERROR: u64 = 0x33;
