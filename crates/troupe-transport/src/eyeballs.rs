//! Connecting to a name with several addresses, the way Happy Eyeballs (RFC 8305) does.
//!
//! Two pure parts, beside the endpoint that drives them:
//! - [`order`]: which address to try first (RFC 8305 §4: families interleaved, IPv6 first);
//! - `Race`: when to start the next attempt (RFC 8305 §5: after the Connection Attempt
//!   Delay, or at once when the latest attempt failed) and when to give up (every attempt
//!   failed).
//!
//! And [`resolve`], which turns a host name into addresses: an IP literal is itself,
//! `localhost` and `*.localhost` are the loopback addresses of both families without asking
//! any resolver (RFC 6761 §6.3, as curl does), anything else goes to the system resolver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::error::ConnectError;

/// Most addresses one connect tries. A name with more is cut here (in [`order`]'s order): each
/// attempt is a connection actor and a handshake, and a name with dozens of addresses is a
/// misconfiguration or an attack rather than a reason to open dozens of connections.
pub const MAX_ADDRESSES: usize = 16;

/// The addresses to try, in the order to try them: duplicates removed (the first occurrence
/// keeps its place), then IPv6 and IPv4 interleaved starting with IPv6 (RFC 8305 §4, with a
/// "First Address Family Count" of one), each family keeping the resolver's order, at most
/// [`MAX_ADDRESSES`].
pub fn order(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut seen = Vec::with_capacity(addrs.len());
    for a in addrs {
        if !seen.contains(a) {
            seen.push(*a);
        }
    }
    let (v6, v4): (Vec<_>, Vec<_>) = seen.into_iter().partition(SocketAddr::is_ipv6);
    let mut out = Vec::with_capacity((v6.len() + v4.len()).min(MAX_ADDRESSES));
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        let (x, y) = (a.next(), b.next());
        if x.is_none() && y.is_none() {
            break;
        }
        out.extend(x);
        out.extend(y);
    }
    out.truncate(MAX_ADDRESSES);
    out
}

/// Where one attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    NotStarted,
    Running,
    Failed,
}

/// What the driver of a [`Race`] does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Start the attempt on this address (an index into the ordered list).
    Start(usize),
    /// Wait for a running attempt to finish, or until this instant, then ask again.
    WaitUntil(Instant),
    /// Every attempt has started: wait for one to finish.
    Wait,
    /// Every attempt failed (or there was none).
    Exhausted,
}

/// The schedule of a Happy Eyeballs race over `n` ordered addresses. The first attempt starts
/// at once; each next one when the Connection Attempt Delay has passed since the latest
/// start, or at once when the latest started attempt has failed (RFC 8305 §5). Attempts that
/// are running keep running: the first to complete wins, and the driver abandons the others.
#[derive(Debug)]
pub(crate) struct Race {
    delay: Duration,
    attempts: Vec<Attempt>,
    /// The next attempt to start.
    next: usize,
    /// When the latest attempt started.
    last_start: Option<Instant>,
}

impl Race {
    pub(crate) fn new(n: usize, delay: Duration) -> Race {
        Race {
            delay,
            attempts: vec![Attempt::NotStarted; n],
            next: 0,
            last_start: None,
        }
    }

    /// What to do at `now`. A `Start(i)` marks attempt `i` running.
    pub(crate) fn step(&mut self, now: Instant) -> Step {
        if self.next < self.attempts.len() {
            let latest_failed = self
                .next
                .checked_sub(1)
                .is_some_and(|i| self.attempts[i] == Attempt::Failed);
            let due = self.last_start.map_or(now, |at| at + self.delay);
            if latest_failed || due <= now {
                let i = self.next;
                self.attempts[i] = Attempt::Running;
                self.next += 1;
                self.last_start = Some(now);
                Step::Start(i)
            } else {
                Step::WaitUntil(due)
            }
        } else if self.attempts.contains(&Attempt::Running) {
            Step::Wait
        } else {
            Step::Exhausted
        }
    }

    /// Attempt `i` failed (a handshake error or timeout, or it could not start).
    pub(crate) fn failed(&mut self, i: usize) {
        if let Some(a) = self.attempts.get_mut(i) {
            *a = Attempt::Failed;
        }
    }
}

/// The addresses of `host` at `port`: an IP literal (bracketed or not) is itself;
/// `localhost` and any name under `.localhost` are `[::1]` and `127.0.0.1` (RFC 6761 §6.3:
/// loopback whatever the resolver says, as curl does); anything else goes to the system
/// resolver.
///
/// Cancel safety: cancel-safe (a dropped lookup only wastes the resolver's answer).
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ConnectError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let lower = bare.trim_end_matches('.').to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Ok(vec![
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        ]);
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|source| ConnectError::Resolve {
            name: bare.to_string(),
            source,
        })?
        .collect();
    if found.is_empty() {
        return Err(ConnectError::NoAddress {
            name: bare.to_string(),
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(last: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), port)
    }
    fn v6(last: u16, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, last)), port)
    }

    #[test]
    fn order_of_nothing_is_nothing() {
        assert!(order(&[]).is_empty());
    }

    #[test]
    fn order_of_one_is_itself() {
        assert_eq!(order(&[v4(1, 1)]), vec![v4(1, 1)]);
        assert_eq!(order(&[v6(1, 1)]), vec![v6(1, 1)]);
    }

    #[test]
    fn order_interleaves_families_starting_with_ipv6() {
        let got = order(&[v4(1, 1), v4(2, 1), v4(3, 1), v6(1, 1), v6(2, 1)]);
        assert_eq!(got, vec![v6(1, 1), v4(1, 1), v6(2, 1), v4(2, 1), v4(3, 1)]);
        // One family only keeps the resolver's order.
        assert_eq!(
            order(&[v4(3, 1), v4(1, 1), v4(2, 1)]),
            vec![v4(3, 1), v4(1, 1), v4(2, 1)]
        );
    }

    #[test]
    fn order_drops_duplicates_keeping_the_first() {
        let got = order(&[v4(1, 1), v6(1, 1), v4(1, 1), v4(1, 2), v6(1, 1)]);
        assert_eq!(got, vec![v6(1, 1), v4(1, 1), v4(1, 2)]);
    }

    #[test]
    fn order_stops_at_the_maximum() {
        let many: Vec<_> = (0..40u8).map(|i| v4(i, 1)).collect();
        let got = order(&many);
        assert_eq!(got.len(), MAX_ADDRESSES);
        assert_eq!(got, many[..MAX_ADDRESSES]);
        let exact: Vec<_> = (0..MAX_ADDRESSES as u8).map(|i| v4(i, 1)).collect();
        assert_eq!(order(&exact), exact);
    }

    #[test]
    fn a_race_over_nothing_is_lost_at_once() {
        let mut r = Race::new(0, Duration::from_millis(250));
        assert_eq!(r.step(Instant::now()), Step::Exhausted);
    }

    #[test]
    fn a_race_of_one_starts_it_then_waits_then_is_lost_when_it_fails() {
        let t0 = Instant::now();
        let mut r = Race::new(1, Duration::from_millis(250));
        assert_eq!(r.step(t0), Step::Start(0));
        assert_eq!(r.step(t0), Step::Wait);
        assert_eq!(r.step(t0 + Duration::from_secs(9)), Step::Wait);
        r.failed(0);
        assert_eq!(r.step(t0), Step::Exhausted);
    }

    #[test]
    fn attempts_start_one_delay_apart_while_the_earlier_ones_run() {
        let d = Duration::from_millis(250);
        let t0 = Instant::now();
        let mut r = Race::new(3, d);
        assert_eq!(r.step(t0), Step::Start(0));
        assert_eq!(r.step(t0), Step::WaitUntil(t0 + d));
        assert_eq!(r.step(t0 + d / 2), Step::WaitUntil(t0 + d));
        assert_eq!(r.step(t0 + d), Step::Start(1));
        // Late wake-ups count from the actual start, not the planned one.
        let t1 = t0 + d + Duration::from_millis(40);
        assert_eq!(r.step(t0 + d), Step::WaitUntil(t0 + 2 * d));
        assert_eq!(r.step(t1 + d), Step::Start(2));
        assert_eq!(r.step(t1 + d), Step::Wait);
        r.failed(1);
        assert_eq!(r.step(t1 + d), Step::Wait);
        r.failed(0);
        r.failed(2);
        assert_eq!(r.step(t1 + d), Step::Exhausted);
    }

    #[test]
    fn a_failure_of_the_latest_attempt_starts_the_next_at_once() {
        let d = Duration::from_millis(250);
        let t0 = Instant::now();
        let mut r = Race::new(3, d);
        assert_eq!(r.step(t0), Step::Start(0));
        r.failed(0);
        let t = t0 + Duration::from_millis(5);
        assert_eq!(r.step(t), Step::Start(1));
        // An earlier attempt failing does not hurry the next: the latest still runs.
        assert_eq!(r.step(t + d), Step::Start(2));
        let mut r = Race::new(3, d);
        assert_eq!(r.step(t0), Step::Start(0));
        assert_eq!(r.step(t0 + d), Step::Start(1));
        r.failed(0);
        assert_eq!(r.step(t0 + d), Step::WaitUntil(t0 + 2 * d));
    }

    #[test]
    fn a_race_at_the_maximum_starts_every_address_once() {
        let d = Duration::from_millis(100);
        let t0 = Instant::now();
        let mut r = Race::new(MAX_ADDRESSES, d);
        let mut started = Vec::new();
        let mut now = t0;
        loop {
            match r.step(now) {
                Step::Start(i) => started.push(i),
                Step::WaitUntil(at) => now = at,
                Step::Wait => break,
                Step::Exhausted => panic!("nothing failed"),
            }
        }
        assert_eq!(started, (0..MAX_ADDRESSES).collect::<Vec<_>>());
        assert_eq!(now, t0 + d * (MAX_ADDRESSES as u32 - 1));
        for i in 0..MAX_ADDRESSES {
            assert_ne!(r.step(now), Step::Exhausted);
            r.failed(i);
        }
        assert_eq!(r.step(now), Step::Exhausted);
    }

    #[tokio::test]
    async fn literals_and_localhost_need_no_resolver() {
        assert_eq!(resolve("127.0.0.9", 5).await.unwrap(), vec![v4(9, 5)]);
        assert_eq!(resolve("[::1]", 5).await.unwrap(), vec![v6(1, 5)]);
        assert_eq!(resolve("::1", 5).await.unwrap(), vec![v6(1, 5)]);
        for name in ["localhost", "LocalHost.", "app.localhost"] {
            assert_eq!(
                resolve(name, 7).await.unwrap(),
                vec![v6(1, 7), v4(1, 7)],
                "{name}"
            );
        }
    }
}
