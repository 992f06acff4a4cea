//! The Capsule Protocol (RFC 9297 §3): type-length-value capsules carried in the DATA of an
//! HTTP message whose `capsule-protocol` is `?1`. [`CapsuleReader`] takes the body in whatever
//! chunks it arrives and yields DATAGRAM capsules; every other type is skipped without being
//! buffered, whatever its length. A pure type, unit-tested without sockets.

use bytes::{Buf, Bytes, BytesMut};

/// The DATAGRAM capsule (RFC 9297 §3.5): its value is an HTTP Datagram payload.
pub const DATAGRAM: u64 = 0x00;

/// H3_DATAGRAM_ERROR (RFC 9297 §5.2): a malformed datagram or capsule.
pub const H3_DATAGRAM_ERROR: u64 = 0x33;

/// H3_MESSAGE_ERROR (RFC 9114 §8.1): the stream ended in the middle of a capsule.
pub const H3_MESSAGE_ERROR: u64 = 0x10e;

/// Largest DATAGRAM capsule value accepted: a whole UDP payload (65,527 bytes) behind a context
/// id of up to 8 bytes, with room to spare. A larger one cannot carry anything a UDP flow could
/// use, so it is treated as malformed rather than buffered.
pub const MAX_DATAGRAM_CAPSULE: u64 = 65_600;

/// Why a capsule stream is malformed; each maps to the code the stream is reset with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CapsuleError {
    /// A DATAGRAM capsule longer than [`MAX_DATAGRAM_CAPSULE`].
    #[error("DATAGRAM capsule of {0} bytes is larger than the {MAX_DATAGRAM_CAPSULE} accepted")]
    Oversized(u64),
    /// The stream ended inside a capsule.
    #[error("the stream ended inside a capsule ({0} bytes of it received)")]
    Truncated(usize),
}

impl CapsuleError {
    /// The HTTP/3 error code the stream is reset with: H3_DATAGRAM_ERROR for a malformed
    /// capsule, H3_MESSAGE_ERROR for one cut short by the end of the stream.
    pub fn code(&self) -> u64 {
        match self {
            CapsuleError::Oversized(_) => H3_DATAGRAM_ERROR,
            CapsuleError::Truncated(_) => H3_MESSAGE_ERROR,
        }
    }
}

/// Reads capsules from a body that arrives in chunks.
#[derive(Debug, Default)]
pub struct CapsuleReader {
    /// Bytes of a capsule not yet complete (its header, or a DATAGRAM's value).
    buf: BytesMut,
    /// Bytes of an unknown capsule still to be skipped.
    skipping: u64,
    /// Unknown capsules skipped so far.
    skipped: u64,
}

/// A QUIC variable-length integer at the start of `b`, and its length; `None` if `b` does not
/// yet hold all of it.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = octets::varint_parse_len(first);
    if b.len() < len {
        return None;
    }
    let mut o = octets::Octets::with_slice(&b[..len]);
    o.get_varint().ok().map(|v| (v, len))
}

impl CapsuleReader {
    /// A reader at the start of a body.
    pub fn new() -> CapsuleReader {
        CapsuleReader::default()
    }

    /// Unknown capsules skipped so far (whole or in part).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Adds a chunk of the body and returns the DATAGRAM capsules' values it completes, in
    /// order. After an error the stream is to be reset with [`CapsuleError::code`].
    pub fn push(&mut self, mut chunk: Bytes) -> Result<Vec<Bytes>, CapsuleError> {
        let mut out = Vec::new();
        loop {
            if self.skipping > 0 {
                let n = self.skipping.min(chunk.len() as u64) as usize;
                chunk.advance(n);
                self.skipping -= n as u64;
                if self.skipping > 0 {
                    return Ok(out);
                }
            }
            if chunk.is_empty() {
                return Ok(out);
            }
            // The common case, a whole capsule in one chunk with nothing held back, is taken
            // straight from the chunk: no copy.
            let (ty, len, header, from_chunk) = if self.buf.is_empty() {
                match header(&chunk) {
                    Some((ty, len, h)) => (ty, len, h, true),
                    None => {
                        self.buf.extend_from_slice(&chunk);
                        return Ok(out);
                    }
                }
            } else {
                // Complete the header held back first, a byte at a time (it is at most 16).
                while header(&self.buf).is_none() {
                    if chunk.is_empty() {
                        return Ok(out);
                    }
                    self.buf.extend_from_slice(&chunk[..1]);
                    chunk.advance(1);
                }
                let (ty, len, h) = header(&self.buf).expect("complete");
                (ty, len, h, false)
            };
            if ty != DATAGRAM {
                self.skipped += 1;
                if from_chunk {
                    chunk.advance(header);
                } else {
                    self.buf.clear();
                }
                self.skipping = len;
                continue;
            }
            if len > MAX_DATAGRAM_CAPSULE {
                return Err(CapsuleError::Oversized(len));
            }
            let len = len as usize;
            if from_chunk {
                if chunk.len() >= header + len {
                    chunk.advance(header);
                    out.push(chunk.split_to(len));
                    continue;
                }
                self.buf.extend_from_slice(&chunk);
                return Ok(out);
            }
            let have = self.buf.len() - header;
            let need = len - have.min(len);
            let take = need.min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk.advance(take);
            if self.buf.len() - header < len {
                return Ok(out);
            }
            let mut whole = std::mem::take(&mut self.buf);
            whole.advance(header);
            out.push(whole.freeze());
        }
    }

    /// The body ended (FIN): an error if it ended inside a capsule.
    pub fn finish(&self) -> Result<(), CapsuleError> {
        if !self.buf.is_empty() {
            return Err(CapsuleError::Truncated(self.buf.len()));
        }
        if self.skipping > 0 {
            return Err(CapsuleError::Truncated(0));
        }
        Ok(())
    }
}

/// A capsule header at the start of `b`: type, length, and the header's size.
fn header(b: &[u8]) -> Option<(u64, u64, usize)> {
    let (ty, a) = varint(b)?;
    let (len, c) = varint(&b[a..])?;
    Some((ty, len, a + c))
}

/// The header of a DATAGRAM capsule whose value is `len` bytes: the bytes to send before the
/// value (at most 9), so the value itself is never copied.
pub fn datagram_header(len: usize) -> Bytes {
    let mut b = [0u8; 9];
    let n = {
        let mut o = octets::OctetsMut::with_slice(&mut b);
        // A one-byte type, then the length: 8 bytes hold any length below 2^62.
        let _ = o.put_varint(DATAGRAM);
        let _ = o.put_varint(len as u64);
        o.off()
    };
    Bytes::copy_from_slice(&b[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capsule(ty: u64, value: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        let n = {
            let mut o = octets::OctetsMut::with_slice(&mut b);
            o.put_varint(ty).unwrap();
            o.put_varint(value.len() as u64).unwrap();
            o.off()
        };
        b.truncate(n);
        b.extend_from_slice(value);
        b
    }

    fn datagram(value: &[u8]) -> Vec<u8> {
        let mut b = datagram_header(value.len()).to_vec();
        b.extend_from_slice(value);
        b
    }

    #[test]
    fn nothing_in_nothing_out() {
        let mut r = CapsuleReader::new();
        assert!(r.push(Bytes::new()).unwrap().is_empty());
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn one_datagram_in_one_chunk_is_not_copied() {
        let mut r = CapsuleReader::new();
        let body = Bytes::from(datagram(b"\x00hello"));
        let got = r.push(body.clone()).unwrap();
        assert_eq!(got, [Bytes::from_static(b"\x00hello")]);
        // The value points into the chunk it came in.
        assert_eq!(got[0].as_ptr(), body[2..].as_ptr());
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn three_capsules_split_at_every_byte_come_out_whole_and_in_order() {
        let mut body = datagram(b"\x00one");
        body.extend(capsule(0x2a, b"unknown, skipped"));
        body.extend(datagram(&[7u8; 300]));
        body.extend(datagram(b""));
        for split in 1..body.len() {
            let mut r = CapsuleReader::new();
            let mut got = r.push(Bytes::copy_from_slice(&body[..split])).unwrap();
            got.extend(r.push(Bytes::copy_from_slice(&body[split..])).unwrap());
            assert_eq!(got.len(), 3, "split at {split}");
            assert_eq!(&got[0][..], b"\x00one");
            assert_eq!(&got[1][..], &[7u8; 300][..]);
            assert!(got[2].is_empty());
            assert_eq!(r.skipped(), 1);
            assert_eq!(r.finish(), Ok(()), "split at {split}");
        }
        // And a byte at a time.
        let mut r = CapsuleReader::new();
        let mut got = Vec::new();
        for b in &body {
            got.extend(r.push(Bytes::copy_from_slice(&[*b])).unwrap());
        }
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn the_largest_datagram_passes_and_one_byte_more_is_malformed() {
        let max = MAX_DATAGRAM_CAPSULE as usize;
        let mut r = CapsuleReader::new();
        let got = r.push(Bytes::from(datagram(&vec![1u8; max]))).unwrap();
        assert_eq!(got[0].len(), max);
        let mut r = CapsuleReader::new();
        let e = r.push(datagram_header(max + 1)).unwrap_err();
        assert_eq!(e, CapsuleError::Oversized(max as u64 + 1));
        assert_eq!(e.code(), H3_DATAGRAM_ERROR);
    }

    #[test]
    fn a_huge_unknown_capsule_is_skipped_without_buffering() {
        let mut r = CapsuleReader::new();
        let mut head = capsule(0x1234, b"");
        // Claim 1 GiB: only the header is kept, the value is counted off as it arrives.
        head.truncate(head.len() - 1);
        let mut o = vec![0u8; 8];
        let n = {
            let mut w = octets::OctetsMut::with_slice(&mut o);
            w.put_varint(1 << 30).unwrap();
            w.off()
        };
        head.extend_from_slice(&o[..n]);
        assert!(r.push(Bytes::from(head)).unwrap().is_empty());
        for _ in 0..16 {
            assert!(r.push(Bytes::from(vec![0u8; 1 << 20])).unwrap().is_empty());
            assert!(r.buf.is_empty());
        }
        assert_eq!(r.finish(), Err(CapsuleError::Truncated(0)));
    }

    #[test]
    fn a_stream_ending_inside_a_capsule_is_a_message_error() {
        let body = datagram(b"\x00abc");
        for cut in 1..body.len() {
            let mut r = CapsuleReader::new();
            assert!(r
                .push(Bytes::copy_from_slice(&body[..cut]))
                .unwrap()
                .is_empty());
            let e = r.finish().unwrap_err();
            assert_eq!(e.code(), H3_MESSAGE_ERROR, "cut at {cut}");
        }
    }
}
