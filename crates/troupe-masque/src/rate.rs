//! A flow's rate limits: packets per second and bytes per second, each a token bucket
//! (`governor`'s GCRA) whose burst is one second's worth. Over either limit the datagram is
//! dropped and counted, never queued. The clock is a parameter, so the policy is unit-tested
//! without waiting.

use std::num::NonZeroU32;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// A flow's limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlowRate {
    /// Datagrams per second.
    pub packets_per_sec: Option<u32>,
    /// Payload bytes per second.
    pub bytes_per_sec: Option<u32>,
}

impl FlowRate {
    /// Limits of `packets_per_sec` and `bytes_per_sec`.
    pub fn new(packets_per_sec: Option<u32>, bytes_per_sec: Option<u32>) -> FlowRate {
        FlowRate {
            packets_per_sec,
            bytes_per_sec,
        }
    }
}

/// What the limiter decided about one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Within both limits.
    Yes,
    /// Over the packet rate.
    OverPackets,
    /// Over the byte rate.
    OverBytes,
}

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One flow's limiter, in one direction.
pub struct RateGate<C: Clock> {
    packets: Option<Limiter<C>>,
    bytes: Option<Limiter<C>>,
}

impl<C: Clock> std::fmt::Debug for RateGate<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateGate")
            .field("packets", &self.packets.is_some())
            .field("bytes", &self.bytes.is_some())
            .finish()
    }
}

impl<C: Clock + Clone> RateGate<C> {
    /// A limiter for `rate`, reading `clock`. A limit of 0 admits nothing.
    pub fn new(rate: FlowRate, clock: C) -> RateGate<C> {
        let make = |per_sec: Option<u32>| {
            per_sec
                .and_then(NonZeroU32::new)
                .map(|n| RateLimiter::direct_with_clock(Quota::per_second(n), clock.clone()))
        };
        RateGate {
            packets: make(rate.packets_per_sec),
            bytes: make(rate.bytes_per_sec),
        }
    }

    /// Whether a datagram of `len` bytes passes now. A datagram larger than one second of the
    /// byte rate never passes.
    pub fn admit(&self, len: usize) -> Admit {
        if let Some(p) = &self.packets {
            if p.check().is_err() {
                return Admit::OverPackets;
            }
        }
        if let Some(b) = &self.bytes {
            let Some(n) = u32::try_from(len).ok().and_then(NonZeroU32::new) else {
                return Admit::Yes;
            };
            if !matches!(b.check_n(n), Ok(Ok(()))) {
                return Admit::OverBytes;
            }
        }
        Admit::Yes
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn gate(
        pps: Option<u32>,
        bps: Option<u32>,
    ) -> (RateGate<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (RateGate::new(FlowRate::new(pps, bps), clock.clone()), clock)
    }

    #[test]
    fn no_limit_admits_everything() {
        let (g, _) = gate(None, None);
        for _ in 0..100_000 {
            assert_eq!(g.admit(1200), Admit::Yes);
        }
    }

    #[test]
    fn a_zero_limit_admits_nothing_but_empty_bytes() {
        let (g, _) = gate(Some(0), None);
        assert_eq!(g.admit(1), Admit::Yes, "0 means no packet limit set");
        let (g, _) = gate(None, Some(0));
        assert_eq!(g.admit(1), Admit::Yes, "0 means no byte limit set");
    }

    #[test]
    fn one_second_of_burst_then_the_rate() {
        let (g, clock) = gate(Some(3), None);
        assert_eq!(g.admit(10), Admit::Yes);
        assert_eq!(g.admit(10), Admit::Yes);
        assert_eq!(g.admit(10), Admit::Yes);
        assert_eq!(g.admit(10), Admit::OverPackets);
        clock.advance(Duration::from_millis(334));
        assert_eq!(g.admit(10), Admit::Yes);
        assert_eq!(g.admit(10), Admit::OverPackets);
        clock.advance(Duration::from_secs(10));
        for _ in 0..3 {
            assert_eq!(g.admit(10), Admit::Yes);
        }
        assert_eq!(g.admit(10), Admit::OverPackets);
    }

    #[test]
    fn the_byte_rate_counts_sizes_and_refuses_more_than_a_second() {
        let (g, clock) = gate(None, Some(3000));
        assert_eq!(g.admit(1200), Admit::Yes);
        assert_eq!(g.admit(1200), Admit::Yes);
        assert_eq!(g.admit(1200), Admit::OverBytes);
        assert_eq!(g.admit(600), Admit::Yes);
        clock.advance(Duration::from_secs(1));
        assert_eq!(g.admit(3001), Admit::OverBytes, "never fits");
        assert_eq!(g.admit(3000), Admit::Yes);
        assert_eq!(g.admit(0), Admit::Yes, "an empty datagram costs no bytes");
    }

    #[test]
    fn the_packet_limit_is_checked_first() {
        let (g, _) = gate(Some(1), Some(1));
        assert_eq!(g.admit(1), Admit::Yes);
        assert_eq!(g.admit(1), Admit::OverPackets);
    }
}
