//! What an actor is doing, readable from outside without messaging it.
//!
//! ractor's mailboxes have no length, so every actor in the tree carries an [`ActorMeter`]:
//! its senders count what they send (through [`Tracked::cast`]), the actor counts what it
//! handles and for how long (through [`ActorMeter::begin`]). The snapshot reads the meters
//! with relaxed atomic loads while traffic runs.
//!
//! Cost, the reason for each choice: a send is one relaxed `fetch_add` and, only when the
//! mailbox was empty, one clock read; a handled message is two clock reads and a few relaxed
//! atomics. The clock is coarse ([`CLOCK_TICK`]), so a read costs a few nanoseconds and no
//! thread keeps it. No lock is taken on any path but a failure.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ractor::{ActorRef, MessagingErr};
use serde::Serialize;

/// Resolution of the meters' clock, the kernel's coarse monotonic clock
/// (`CLOCK_MONOTONIC_COARSE`): it advances once per kernel timer tick, 4 ms with `HZ=250` (this
/// machine's), 1 ms with `HZ=1000`. A read is a vDSO call of a few nanoseconds that touches no
/// timer hardware (`Instant::now()` is ~45 ns here, and a request takes several messages, each
/// read twice); busy-time sums stay unbiased (a turn's start and end fall at random phases of
/// the tick); "handling for 2 s" needs no finer grain. No thread keeps it: an upkeep thread
/// waking every millisecond cost an idle server about 1% of a core, and about 0.3 ms of CPU
/// per handshake at a low connection rate.
pub const CLOCK_TICK: Duration = Duration::from_millis(4);

/// The coarse monotonic clock, as a duration since an arbitrary start.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn coarse_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Elsewhere: the precise clock (there is no coarse one to read as cheaply).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn coarse_now() -> Duration {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// Nanoseconds since the meters' clock started, at [`CLOCK_TICK`] resolution; never 0 (used
/// as "none").
fn ticks() -> u64 {
    static BASE: OnceLock<Duration> = OnceLock::new();
    let now = coarse_now();
    let base = *BASE.get_or_init(|| now);
    now.saturating_sub(base).as_nanos() as u64 + 1
}

fn since(from: u64, to: u64) -> Duration {
    if from == 0 || to <= from {
        return Duration::ZERO;
    }
    Duration::from_nanos(to - from)
}

/// What kind of actor a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ActorKind {
    /// A UDP endpoint (the supervisor of its connections and receive loop).
    Endpoint,
    /// A QUIC connection.
    Connection,
    /// An HTTP/3 request stream.
    Stream,
    /// An HTTP datagram flow.
    Flow,
    /// An endpoint's UDP receive loop: a supervised task, not an actor, restarted by its
    /// endpoint within a budget.
    ReceiveLoop,
}

impl ActorKind {
    /// `"endpoint"`, `"connection"`, `"stream"`, `"flow"`, `"receive_loop"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Endpoint => "endpoint",
            ActorKind::Connection => "connection",
            ActorKind::Stream => "stream",
            ActorKind::Flow => "flow",
            ActorKind::ReceiveLoop => "receive_loop",
        }
    }
}

/// Counters of one actor, shared by its senders, the actor and the snapshot.
#[derive(Debug)]
pub struct ActorMeter {
    kind: ActorKind,
    /// Names of the messages the actor handles, indexed by the code given to `begin`.
    messages: &'static [&'static str],
    born: u64,
    sent: AtomicU64,
    handled: AtomicU64,
    busy_nanos: AtomicU64,
    /// Clock reading when the handler now running began; 0 when idle.
    handling_since: AtomicU64,
    handling_what: AtomicU8,
    /// Since when the head of the mailbox has waited: set by a send into an empty mailbox and
    /// by the end of each handled message that leaves others waiting.
    head_since: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ActorMeter {
    /// A meter for a new actor of `kind`, whose message codes name `messages`.
    pub fn new(kind: ActorKind, messages: &'static [&'static str]) -> Arc<Self> {
        Arc::new(ActorMeter {
            kind,
            messages,
            born: ticks(),
            sent: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            handling_since: AtomicU64::new(0),
            handling_what: AtomicU8::new(0),
            head_since: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    /// The actor's kind.
    pub fn kind(&self) -> ActorKind {
        self.kind
    }

    /// Counts one message sent to the actor.
    #[inline]
    pub fn on_send(&self) {
        let before = self.sent.fetch_add(1, Relaxed);
        if before <= self.handled.load(Relaxed) {
            self.head_since.store(ticks(), Relaxed);
        }
    }

    /// Takes back the count of a message whose send failed (never to be handled).
    #[inline]
    pub(crate) fn unsend(&self) {
        self.sent.fetch_sub(1, Relaxed);
    }

    /// Counts `n` messages handled outside a [`Busy`] guard of their own (the application
    /// messages of one outbox wake-up, handled in one turn).
    #[inline]
    pub(crate) fn handled(&self, n: u64) {
        if n == 0 {
            return;
        }
        let handled = self.handled.fetch_add(n, Relaxed) + n;
        if self.sent.load(Relaxed) > handled {
            self.head_since.store(ticks(), Relaxed);
        }
    }

    /// Messages sent and not yet handled, the one being handled included (a handler that sees
    /// 1 knows nothing else is waiting).
    #[inline]
    pub fn queued(&self) -> u64 {
        self.sent
            .load(Relaxed)
            .saturating_sub(self.handled.load(Relaxed))
    }

    /// The actor starts handling a message (`what` indexes the names given to `new`); the
    /// returned guard ends it when dropped.
    #[inline]
    pub fn begin(&self, what: u8) -> Busy<'_> {
        let start = ticks();
        self.handling_what.store(what, Relaxed);
        self.handling_since.store(start, Relaxed);
        Busy {
            meter: self,
            start,
            counted: true,
        }
    }

    /// As [`ActorMeter::begin`], for an event that did not come through a counted send (a
    /// supervision event from ractor): busy time is counted, the mailbox is not touched.
    #[inline]
    pub fn begin_event(&self, what: u8) -> Busy<'_> {
        let mut b = self.begin(what);
        b.counted = false;
        b
    }

    /// Records why the actor failed (or what last went wrong in it).
    pub fn failed(&self, why: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
    }

    /// The actor's figures now.
    pub fn view(&self) -> MeterView {
        let now = ticks();
        let sent = self.sent.load(Relaxed);
        let handled = self.handled.load(Relaxed);
        let depth = sent.saturating_sub(handled);
        let handling_since = self.handling_since.load(Relaxed);
        let handling = (handling_since != 0).then(|| Handling {
            what: self
                .messages
                .get(self.handling_what.load(Relaxed) as usize)
                .copied()
                .unwrap_or("message"),
            for_secs: since(handling_since, now).as_secs_f64(),
        });
        MeterView {
            age_secs: since(self.born, now).as_secs_f64(),
            mailbox_depth: depth,
            oldest_message_age_secs: (depth > 0)
                .then(|| since(self.head_since.load(Relaxed), now).as_secs_f64()),
            messages_handled: handled,
            busy_secs: (self.busy_nanos.load(Relaxed) as f64
                + handling.as_ref().map_or(0.0, |h| h.for_secs * 1e9))
                / 1e9,
            handling,
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// A message being handled; ends (and is counted) when dropped.
pub struct Busy<'a> {
    meter: &'a ActorMeter,
    start: u64,
    counted: bool,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let end = ticks();
        let m = self.meter;
        m.busy_nanos
            .fetch_add(since(self.start, end).as_nanos() as u64, Relaxed);
        m.handling_since.store(0, Relaxed);
        if !self.counted {
            return;
        }
        let handled = m.handled.fetch_add(1, Relaxed) + 1;
        if m.sent.load(Relaxed) > handled {
            m.head_since.store(end, Relaxed);
        }
    }
}

/// The message handler running now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Handling {
    /// Which message.
    pub what: &'static str,
    /// For how long, seconds.
    pub for_secs: f64,
}

/// One actor's figures, as the snapshot shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MeterView {
    /// Since the actor was created, seconds.
    pub age_secs: f64,
    /// Messages sent to it and not yet handled.
    pub mailbox_depth: u64,
    /// How long the head of the mailbox has waited without the actor taking a message (a
    /// lower bound on the oldest message's age; exact when the actor is stuck). `None` when
    /// the mailbox is empty.
    pub oldest_message_age_secs: Option<f64>,
    /// Messages handled.
    pub messages_handled: u64,
    /// Time spent in handlers, seconds (including the one running now).
    pub busy_secs: f64,
    /// The handler running now, if any.
    pub handling: Option<Handling>,
    /// The last error (a failure's reason).
    pub last_error: Option<String>,
}

/// An actor reference whose sends are counted in the actor's meter.
pub struct Tracked<M> {
    actor: ActorRef<M>,
    meter: Arc<ActorMeter>,
}

impl<M> Clone for Tracked<M> {
    fn clone(&self) -> Self {
        Tracked {
            actor: self.actor.clone(),
            meter: self.meter.clone(),
        }
    }
}

impl<M: ractor::Message> Tracked<M> {
    /// Wraps `actor`, whose meter is `meter`.
    pub fn new(actor: ActorRef<M>, meter: Arc<ActorMeter>) -> Self {
        Tracked { actor, meter }
    }

    /// Sends `msg`, counted.
    #[inline]
    pub fn cast(&self, msg: M) -> Result<(), MessagingErr<M>> {
        self.meter.on_send();
        let r = self.actor.cast(msg);
        if r.is_err() {
            // Never delivered: never to be handled either.
            self.meter.unsend();
        }
        r
    }

    /// The actor.
    pub fn actor(&self) -> &ActorRef<M> {
        &self.actor
    }

    /// The meter.
    pub fn meter(&self) -> &Arc<ActorMeter> {
        &self.meter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSGS: &[&str] = &["ping", "pong"];

    #[test]
    fn a_new_meter_is_idle_and_empty() {
        let m = ActorMeter::new(ActorKind::Stream, MSGS);
        let v = m.view();
        assert_eq!(v.mailbox_depth, 0);
        assert_eq!(v.oldest_message_age_secs, None);
        assert_eq!(v.messages_handled, 0);
        assert_eq!(v.handling, None);
        assert_eq!(v.busy_secs, 0.0);
    }

    #[test]
    fn depth_is_sent_minus_handled_and_the_head_ages_while_it_waits() {
        let m = ActorMeter::new(ActorKind::Connection, MSGS);
        m.on_send();
        let v = m.view();
        assert_eq!(v.mailbox_depth, 1);
        let age = v.oldest_message_age_secs.expect("a message waits");
        std::thread::sleep(Duration::from_millis(20));
        assert!(m.view().oldest_message_age_secs.unwrap() >= age + 0.015);
        m.on_send();
        m.on_send();
        assert_eq!(m.view().mailbox_depth, 3);
        {
            let _b = m.begin(1);
            let v = m.view();
            assert_eq!(v.handling.as_ref().map(|h| h.what), Some("pong"));
        }
        let v = m.view();
        assert_eq!((v.mailbox_depth, v.messages_handled), (2, 1));
        // The next head has waited since the last message ended, not since the first send.
        assert!(v.oldest_message_age_secs.unwrap() < 0.015);
        drop(m.begin(0));
        drop(m.begin(0));
        let v = m.view();
        assert_eq!((v.mailbox_depth, v.messages_handled), (0, 3));
        assert_eq!(v.oldest_message_age_secs, None);
    }

    #[test]
    fn busy_time_counts_the_running_handler_too() {
        let m = ActorMeter::new(ActorKind::Stream, MSGS);
        let b = m.begin(0);
        std::thread::sleep(Duration::from_millis(30));
        let v = m.view();
        let h = v.handling.expect("running");
        assert_eq!(h.what, "ping");
        assert!(h.for_secs >= 0.025, "{h:?}");
        assert!(v.busy_secs >= 0.025);
        drop(b);
        let v = m.view();
        assert!(v.handling.is_none());
        assert!(v.busy_secs >= 0.025);
        // An unknown code is named generically, never a panic.
        let _b = m.begin(200);
        assert_eq!(m.view().handling.unwrap().what, "message");
    }

    #[test]
    fn the_last_error_is_kept() {
        let m = ActorMeter::new(ActorKind::Stream, MSGS);
        m.failed("first");
        m.failed("handler panicked");
        assert_eq!(m.view().last_error.as_deref(), Some("handler panicked"));
    }
}
