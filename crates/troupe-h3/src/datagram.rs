//! HTTP Datagrams on QUIC DATAGRAM frames (RFC 9297 §2.1) and the context id that starts a
//! CONNECT-UDP payload (RFC 9298 §4). Parsing slices the received `Bytes`: the payload is never
//! copied. A pure module, unit-tested without sockets.

use bytes::{Buf, Bytes};

use crate::codes::H3_DATAGRAM_ERROR;

/// The largest Quarter Stream ID: stream ids stop at 2^62 - 1.
pub const MAX_QUARTER_STREAM_ID: u64 = ((1u64 << 62) - 1) / 4;

/// The context id of a UDP payload (RFC 9298 §4).
pub const UDP_PAYLOAD_CONTEXT: u64 = 0;

/// Why a datagram could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// It ended before its Quarter Stream ID did.
    #[error("HTTP datagram too short for its quarter stream id")]
    NoStreamId,
    /// Its Quarter Stream ID names no possible stream (a connection error, H3_DATAGRAM_ERROR).
    #[error("quarter stream id {0} is past the largest stream id")]
    StreamIdTooLarge(u64),
    /// The payload ended before its context id did.
    #[error("HTTP datagram payload too short for its context id")]
    NoContextId,
}

impl DatagramError {
    /// The code for closing the connection (RFC 9297 §2.1: H3_DATAGRAM_ERROR).
    pub fn code(&self) -> u64 {
        H3_DATAGRAM_ERROR
    }
}

/// Reads a varint at the start of `b`, advancing past it.
fn take_varint(b: &mut Bytes) -> Option<u64> {
    let first = *b.first()?;
    let len = octets::varint_parse_len(first);
    if b.len() < len {
        return None;
    }
    let v = octets::Octets::with_slice(&b[..len]).get_varint().ok()?;
    b.advance(len);
    Some(v)
}

/// Splits a QUIC DATAGRAM frame's payload into the request stream it belongs to and the HTTP
/// Datagram payload.
pub fn parse(mut frame: Bytes) -> Result<(u64, Bytes), DatagramError> {
    let q = take_varint(&mut frame).ok_or(DatagramError::NoStreamId)?;
    if q > MAX_QUARTER_STREAM_ID {
        return Err(DatagramError::StreamIdTooLarge(q));
    }
    Ok((q * 4, frame))
}

/// Splits an HTTP Datagram payload of a CONNECT-UDP stream into its context id and the rest.
pub fn split_context(mut payload: Bytes) -> Result<(u64, Bytes), DatagramError> {
    let ctx = take_varint(&mut payload).ok_or(DatagramError::NoContextId)?;
    Ok((ctx, payload))
}

/// The bytes that go before a payload: the Quarter Stream ID of `stream_id` (QUIC DATAGRAM
/// frames only; capsules name no stream) and then `context`. At most 16 bytes.
pub fn prefix(stream_id: Option<u64>, context: u64) -> Bytes {
    let mut b = [0u8; 16];
    let n = {
        let mut o = octets::OctetsMut::with_slice(&mut b);
        if let Some(id) = stream_id {
            let _ = o.put_varint(id / 4);
        }
        let _ = o.put_varint(context);
        o.off()
    };
    Bytes::copy_from_slice(&b[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream_id: u64, ctx: u64, payload: &[u8]) -> Bytes {
        let mut v = prefix(Some(stream_id), ctx).to_vec();
        v.extend_from_slice(payload);
        Bytes::from(v)
    }

    #[test]
    fn an_empty_frame_or_payload_is_malformed() {
        assert_eq!(parse(Bytes::new()), Err(DatagramError::NoStreamId));
        assert_eq!(split_context(Bytes::new()), Err(DatagramError::NoContextId));
        // A two-byte varint cut after one byte.
        assert_eq!(
            parse(Bytes::from_static(&[0x40])),
            Err(DatagramError::NoStreamId)
        );
        assert_eq!(DatagramError::NoStreamId.code(), 0x33);
    }

    #[test]
    fn one_datagram_round_trips_without_copying_its_payload() {
        let f = frame(4, 0, b"payload");
        let (id, rest) = parse(f.clone()).unwrap();
        assert_eq!(id, 4);
        let (ctx, udp) = split_context(rest).unwrap();
        assert_eq!(ctx, UDP_PAYLOAD_CONTEXT);
        assert_eq!(&udp[..], b"payload");
        assert_eq!(udp.as_ptr(), f[2..].as_ptr());
        // An empty UDP payload is a payload.
        let (_, rest) = parse(frame(0, 0, b"")).unwrap();
        assert!(split_context(rest).unwrap().1.is_empty());
    }

    #[test]
    fn several_stream_ids_and_contexts_of_every_varint_size() {
        for (id, ctx) in [
            (0u64, 0u64),
            (4 * 63, 2),
            (4 * 64, 63),
            (4 * 16_383, 64),
            (4 * 16_384, 16_383),
            (4 * 1_073_741_823, 1_073_741_824),
            (4 * MAX_QUARTER_STREAM_ID, (1 << 62) - 1),
        ] {
            let (got_id, rest) = parse(frame(id, ctx, b"x")).unwrap();
            assert_eq!(got_id, id);
            let (got_ctx, p) = split_context(rest).unwrap();
            assert_eq!((got_ctx, &p[..]), (ctx, &b"x"[..]));
        }
    }

    #[test]
    fn the_largest_quarter_stream_id_passes_and_past_it_does_not() {
        // 2^62 - 1 encodes in 8 bytes; as a quarter stream id it names no stream.
        let mut b = [0u8; 8];
        octets::OctetsMut::with_slice(&mut b)
            .put_varint((1 << 62) - 1)
            .unwrap();
        assert_eq!(
            parse(Bytes::copy_from_slice(&b)),
            Err(DatagramError::StreamIdTooLarge((1 << 62) - 1))
        );
        octets::OctetsMut::with_slice(&mut b)
            .put_varint_with_len(MAX_QUARTER_STREAM_ID, 8)
            .unwrap();
        assert!(parse(Bytes::copy_from_slice(&b)).is_ok());
    }
}
