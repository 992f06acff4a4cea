//! Stateless Retry tokens (RFC 9000 §8.1.2): the server proves a client owns its address before
//! creating any connection state.
//!
//! Token layout: `issued_at_secs (8, BE) | odcid_len (1) | odcid | HMAC-SHA256 tag (32)`; the tag
//! covers the timestamp, the client's address, the original destination connection ID and the
//! connection ID the Retry told the client to use (so a token only opens that connection).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quiche::ConnectionId;
use ring::hmac;

/// How long a Retry token is accepted. 10 s: a client answers a Retry within one round trip;
/// a short life limits replay from another host behind the same address.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(10);

const TAG_LEN: usize = 32;

/// Mints and checks Retry tokens with a key that lives as long as the endpoint (clones share
/// it: every worker accepts every worker's tokens).
#[derive(Clone)]
pub(crate) struct RetryTokens {
    key: hmac::Key,
}

impl RetryTokens {
    pub(crate) fn new() -> Self {
        let secret: [u8; 32] = rand::random();
        RetryTokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        }
    }

    fn signed(issued: u64, addr: &SocketAddr, odcid: &[u8], retry_scid: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(8 + 18 + odcid.len() + 1 + retry_scid.len());
        m.extend_from_slice(&issued.to_be_bytes());
        match addr {
            SocketAddr::V4(a) => m.extend_from_slice(&a.ip().octets()),
            SocketAddr::V6(a) => m.extend_from_slice(&a.ip().octets()),
        }
        m.extend_from_slice(&addr.port().to_be_bytes());
        m.push(odcid.len() as u8);
        m.extend_from_slice(odcid);
        m.extend_from_slice(retry_scid);
        m
    }

    /// A token for a client at `addr` whose first Initial had `odcid`, told to use `retry_scid`.
    pub(crate) fn mint(&self, addr: &SocketAddr, odcid: &[u8], retry_scid: &[u8]) -> Vec<u8> {
        self.mint_at(now_secs(), addr, odcid, retry_scid)
    }

    fn mint_at(&self, issued: u64, addr: &SocketAddr, odcid: &[u8], retry_scid: &[u8]) -> Vec<u8> {
        let tag = hmac::sign(&self.key, &Self::signed(issued, addr, odcid, retry_scid));
        let mut t = Vec::with_capacity(9 + odcid.len() + TAG_LEN);
        t.extend_from_slice(&issued.to_be_bytes());
        t.push(odcid.len() as u8);
        t.extend_from_slice(odcid);
        t.extend_from_slice(tag.as_ref());
        t
    }

    /// Returns the original destination connection ID if the token is ours, fresh, issued to
    /// this address, and the Initial carrying it is addressed to `dcid` (the Retry's SCID).
    pub(crate) fn validate(
        &self,
        addr: &SocketAddr,
        dcid: &[u8],
        token: &[u8],
    ) -> Option<ConnectionId<'static>> {
        self.validate_at(now_secs(), addr, dcid, token)
    }

    fn validate_at(
        &self,
        now: u64,
        addr: &SocketAddr,
        dcid: &[u8],
        token: &[u8],
    ) -> Option<ConnectionId<'static>> {
        if token.len() < 9 + TAG_LEN {
            return None;
        }
        let issued = u64::from_be_bytes(token[..8].try_into().ok()?);
        let len = token[8] as usize;
        if len > quiche::MAX_CONN_ID_LEN || token.len() != 9 + len + TAG_LEN {
            return None;
        }
        let odcid = &token[9..9 + len];
        let tag = &token[9 + len..];
        hmac::verify(&self.key, &Self::signed(issued, addr, odcid, dcid), tag).ok()?;
        if now < issued || now - issued > TOKEN_LIFETIME.as_secs() {
            return None;
        }
        Some(ConnectionId::from_vec(odcid.to_vec()))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        let t = RetryTokens::new();
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let tok = t.mint(&a, b"abcdefgh", b"retry-scid");
        assert_eq!(
            t.validate(&a, b"retry-scid", &tok).unwrap().as_ref(),
            b"abcdefgh"
        );
        assert!(
            t.validate(&a, b"other-scid", &tok).is_none(),
            "bound to the Retry's SCID"
        );
    }

    #[test]
    fn token_bound_to_address_key_and_time() {
        let t = RetryTokens::new();
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let s = b"scid";
        let tok = t.mint_at(1000, &a, b"abcdefgh", s);
        assert!(t.validate_at(1000, &b, s, &tok).is_none(), "other port");
        assert!(
            RetryTokens::new().validate_at(1000, &a, s, &tok).is_none(),
            "other key"
        );
        let late = 1000 + TOKEN_LIFETIME.as_secs() + 1;
        assert!(t.validate_at(late, &a, s, &tok).is_none(), "expired");
        assert!(t.validate_at(1000, &a, s, &tok).is_some());
        let mut bad = tok.clone();
        bad[10] ^= 1;
        assert!(t.validate_at(1000, &a, s, &bad).is_none(), "tampered");
        assert!(
            t.validate_at(1000, &a, s, &tok[..20]).is_none(),
            "truncated"
        );
    }
}
