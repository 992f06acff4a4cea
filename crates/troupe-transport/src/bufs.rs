//! The buffers quiche queues stream data in: [`Bytes`], so a body chunk the application hands
//! over (`h3::Connection::send_body_zc`) is queued as it is, by reference count, not copied.
//!
//! quiche's default factory copies every `stream_send` into a fresh `Arc<[u8]>`; with this one
//! a response body goes from the application's `Bytes` to the packet it is encrypted into
//! without another copy. What quiche copies itself (headers, control streams) costs the same as
//! before: one allocation and copy per write.

use bytes::Bytes;
use quiche::{BufFactory, BufSplit};

/// troupe's `quiche::Connection`: stream data in [`QuicBuf`]s.
pub type QuicConnection = quiche::Connection<BytesFactory>;

/// The factory quiche makes stream buffers with ([`QuicBuf`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesFactory;

/// A stream buffer in quiche: a [`Bytes`] (cheap to clone and to split, as quiche does when it
/// sends part of one and when it retransmits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuicBuf(pub Bytes);

impl AsRef<[u8]> for QuicBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Bytes> for QuicBuf {
    fn from(b: Bytes) -> Self {
        QuicBuf(b)
    }
}

impl BufSplit for QuicBuf {
    /// Keeps the first `at` bytes, returns the rest. `at` past the end keeps all and returns an
    /// empty buffer (quiche never asks for that; `Bytes::split_off` would panic).
    fn split_at(&mut self, at: usize) -> Self {
        QuicBuf(self.0.split_off(at.min(self.0.len())))
    }
}

impl BufFactory for BytesFactory {
    type Buf = QuicBuf;
    type DgramBuf = Vec<u8>;

    fn buf_from_slice(buf: &[u8]) -> QuicBuf {
        QuicBuf(Bytes::copy_from_slice(buf))
    }

    fn dgram_buf_from_slice(buf: &[u8]) -> Vec<u8> {
        buf.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_keep_the_front_and_return_the_rest() {
        let mut b = QuicBuf::from(Bytes::from_static(b"abcdef"));
        let rest = b.split_at(2);
        assert_eq!((b.as_ref(), rest.as_ref()), (&b"ab"[..], &b"cdef"[..]));
        // At the start, at the end, past the end.
        let mut b = QuicBuf::from(Bytes::from_static(b"abc"));
        assert_eq!(b.split_at(0).as_ref(), b"abc");
        assert!(b.as_ref().is_empty());
        let mut b = QuicBuf::from(Bytes::from_static(b"abc"));
        assert!(b.split_at(3).as_ref().is_empty());
        assert!(b.split_at(10).as_ref().is_empty());
        assert_eq!(b.as_ref(), b"abc");
        // An empty buffer.
        let mut b = QuicBuf::default();
        assert!(b.split_at(0).as_ref().is_empty());
    }

    #[test]
    fn a_split_shares_the_allocation() {
        let whole = Bytes::from(vec![7u8; 4096]);
        let mut b = QuicBuf::from(whole.clone());
        let rest = b.split_at(1000);
        assert_eq!(b.as_ref().as_ptr(), whole.as_ptr());
        assert_eq!(rest.as_ref().as_ptr(), whole[1000..].as_ptr());
    }

    #[test]
    fn slices_are_copied() {
        let src = [1u8, 2, 3];
        let b = BytesFactory::buf_from_slice(&src);
        assert_eq!(b.as_ref(), &src);
        assert_ne!(b.as_ref().as_ptr(), src.as_ptr());
        assert_eq!(BytesFactory::dgram_buf_from_slice(&src), src.to_vec());
    }
}
