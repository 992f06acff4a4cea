//! Supervision bookkeeping, as pure types beside the supervisors that use them:
//! - [`RestartPolicy`]: how often a long-lived child may restart (OTP's intensity and period);
//! - [`RestartBudget`]: the restarts used in the current window, and the verdict for the next
//!   failure (restart, or escalate to the supervisor's own supervisor);
//! - [`FailureRing`]: the last N restarts and failures (who, when, why), for the snapshot.
//!
//! See `docs/supervision.md` for the guarantees and the tests that show them.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::error::ConfigError;
use crate::observe::ActorKind;

/// How often a long-lived child (a UDP receive loop) may fail and be restarted: at most
/// `max_restarts` times within any `within`; the next failure escalates (the supervisor fails
/// to its own supervisor). Connections, streams and flows are temporary children: never
/// restarted, always reported.
///
/// Default: 1 restart in 5 s, OTP's default intensity and period: a child that fails once is
/// given a second chance; one that fails twice in a row is a bug to surface, not to hide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RestartPolicy {
    /// Restarts allowed within `within`. 0: every failure escalates.
    pub max_restarts: u32,
    /// The sliding window restarts are counted in.
    #[serde(with = "crate::supervision::secs")]
    pub within: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 1,
            within: Duration::from_secs(5),
        }
    }
}

impl RestartPolicy {
    /// A policy of `max_restarts` within `within`.
    pub fn new(max_restarts: u32, within: Duration) -> Self {
        RestartPolicy {
            max_restarts,
            within,
        }
    }

    pub(crate) fn validate(&self, field: &'static str) -> Result<(), ConfigError> {
        if self.within.is_zero() && self.max_restarts > 0 {
            return Err(ConfigError::Invalid {
                field,
                why: "the window `within` must be longer than zero when restarts are allowed \
                      (OTP's default is 1 restart within 5 s)"
                    .into(),
            });
        }
        Ok(())
    }
}

/// What a supervisor does with a child's failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Restart the child (the budget had room; the restart is now counted).
    Restart,
    /// The budget is spent: the supervisor fails to its own supervisor.
    Escalate,
}

/// The restarts a supervisor has used in its policy's sliding window.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    policy: RestartPolicy,
    /// When each restart in the window happened, oldest first; at most `max_restarts`.
    used: VecDeque<Instant>,
}

impl Default for RestartBudget {
    fn default() -> Self {
        RestartBudget::new(RestartPolicy::default())
    }
}

impl RestartBudget {
    /// A fresh budget under `policy`.
    pub fn new(policy: RestartPolicy) -> Self {
        RestartBudget {
            policy,
            used: VecDeque::with_capacity(policy.max_restarts.min(64) as usize),
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(t) = self.used.front() {
            if now.saturating_duration_since(*t) >= self.policy.within {
                self.used.pop_front();
            } else {
                break;
            }
        }
    }

    /// A child failed at `now`: restart it if the window has room (and count it), else
    /// escalate.
    pub fn on_failure(&mut self, now: Instant) -> Verdict {
        self.expire(now);
        if self.used.len() < self.policy.max_restarts as usize {
            self.used.push_back(now);
            Verdict::Restart
        } else {
            Verdict::Escalate
        }
    }

    /// Restarts used in the window that contains `now`.
    pub fn used(&mut self, now: Instant) -> u32 {
        self.expire(now);
        self.used.len() as u32
    }

    /// The policy.
    pub fn policy(&self) -> RestartPolicy {
        self.policy
    }

    /// A serializable view at `now`.
    pub fn view(&mut self, now: Instant) -> BudgetView {
        BudgetView {
            used: self.used(now),
            max_restarts: self.policy.max_restarts,
            within_secs: self.policy.within.as_secs_f64(),
        }
    }
}

/// A restart budget as the snapshot shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct BudgetView {
    /// Restarts used in the current window.
    pub used: u32,
    /// Restarts allowed per window.
    pub max_restarts: u32,
    /// The window, seconds.
    pub within_secs: f64,
}

impl BudgetView {
    /// Share of the budget used, 0.0..=1.0 (1.0 when no restart is allowed at all).
    pub fn fraction_used(&self) -> f64 {
        if self.max_restarts == 0 {
            1.0
        } else {
            f64::from(self.used) / f64::from(self.max_restarts)
        }
    }
}

/// What happened to a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// It failed and was restarted.
    Restarted,
    /// It failed and, the budget being spent, the supervisor escalated.
    Escalated,
    /// A temporary child (connection, stream, flow) failed; it is reported, never restarted.
    Failed,
}

/// One entry of a [`FailureRing`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Failure {
    /// Which child: `"receive loop"`, `"connection <trace id>"`, `"stream <id> on <trace id>"`.
    pub who: String,
    /// What kind of child it was.
    pub child: ActorKind,
    /// What became of it.
    pub kind: FailureKind,
    /// When, as seconds since the Unix epoch.
    pub at_unix_secs: f64,
    /// Why (the panic message or error).
    pub why: String,
}

/// Most characters of a failure reason kept: a panic message can be arbitrarily long, and the
/// ring is meant to be read by a person.
pub const MAX_REASON_CHARS: usize = 512;

/// The last `capacity` failures, oldest first; older ones are forgotten and counted.
#[derive(Debug, Clone)]
pub struct FailureRing {
    capacity: usize,
    entries: VecDeque<Failure>,
    /// Every failure ever recorded, including the forgotten ones.
    total: u64,
    /// Every failure ever recorded, by kind of child and outcome (a handful of entries).
    counts: Vec<FailureCount>,
}

/// How many failures of one kind of child had one outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FailureCount {
    /// The kind of child.
    pub child: ActorKind,
    /// What became of it.
    pub outcome: FailureKind,
    /// How many, ever.
    pub total: u64,
}

/// Failures each ring keeps by default. 32: enough to see a pattern (one route, one peer),
/// small enough to snapshot for thousands of connections.
pub const FAILURE_RING_LEN: usize = 32;

impl Default for FailureRing {
    fn default() -> Self {
        FailureRing::new(FAILURE_RING_LEN)
    }
}

impl FailureRing {
    /// A ring keeping the last `capacity` failures (0 keeps none, but still counts).
    pub fn new(capacity: usize) -> Self {
        FailureRing {
            capacity,
            entries: VecDeque::with_capacity(capacity.min(FAILURE_RING_LEN)),
            total: 0,
            counts: Vec::new(),
        }
    }

    /// Records a failure now: `who` (a `child` kind of actor or task) failed, `kind` says
    /// what became of it, `why` is the reason.
    pub fn record(
        &mut self,
        who: impl Into<String>,
        child: ActorKind,
        kind: FailureKind,
        why: &str,
    ) {
        self.record_at(SystemTime::now(), who, child, kind, why);
    }

    /// Records a failure at `at`.
    pub fn record_at(
        &mut self,
        at: SystemTime,
        who: impl Into<String>,
        child: ActorKind,
        kind: FailureKind,
        why: &str,
    ) {
        self.total += 1;
        match self
            .counts
            .iter_mut()
            .find(|c| c.child == child && c.outcome == kind)
        {
            Some(c) => c.total += 1,
            None => self.counts.push(FailureCount {
                child,
                outcome: kind,
                total: 1,
            }),
        }
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        let why = match why.char_indices().nth(MAX_REASON_CHARS) {
            Some((cut, _)) => format!("{}…", &why[..cut]),
            None => why.to_string(),
        };
        self.entries.push_back(Failure {
            who: who.into(),
            child,
            kind,
            at_unix_secs: at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            why,
        });
    }

    /// The failures kept, oldest first.
    pub fn entries(&self) -> Vec<Failure> {
        self.entries.iter().cloned().collect()
    }

    /// Every failure recorded, including those no longer kept.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Every failure recorded, by kind of child and outcome, in the order each pair first
    /// occurred.
    pub fn counts(&self) -> Vec<FailureCount> {
        self.counts.clone()
    }

    /// The most recent failure.
    pub fn last(&self) -> Option<&Failure> {
        self.entries.back()
    }
}

/// Serializes a `Duration` as seconds (f64).
pub(crate) mod secs {
    pub(crate) fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max: u32, secs: u64) -> RestartBudget {
        RestartBudget::new(RestartPolicy::new(max, Duration::from_secs(secs)))
    }

    #[test]
    fn a_zero_budget_escalates_the_first_failure() {
        let mut b = budget(0, 5);
        let t = Instant::now();
        assert_eq!(b.on_failure(t), Verdict::Escalate);
        assert_eq!(b.used(t), 0);
        assert_eq!(b.view(t).fraction_used(), 1.0);
    }

    #[test]
    fn the_default_is_otps_one_in_five_seconds() {
        let p = RestartPolicy::default();
        assert_eq!((p.max_restarts, p.within), (1, Duration::from_secs(5)));
        let mut b = RestartBudget::new(p);
        let t = Instant::now();
        assert_eq!(b.on_failure(t), Verdict::Restart);
        assert_eq!(b.on_failure(t + Duration::from_secs(4)), Verdict::Escalate);
        // The window slides: 5 s after the restart, there is room again.
        assert_eq!(b.used(t + Duration::from_secs(5)), 0);
        assert_eq!(b.on_failure(t + Duration::from_secs(5)), Verdict::Restart);
    }

    #[test]
    fn three_restarts_then_escalation_then_room_as_the_window_slides() {
        let mut b = budget(3, 10);
        let t = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(b.on_failure(t), Verdict::Restart);
        assert_eq!(b.on_failure(t + s(1)), Verdict::Restart);
        assert_eq!(b.view(t + s(1)).used, 2);
        assert_eq!(b.on_failure(t + s(2)), Verdict::Restart);
        assert_eq!(b.view(t + s(2)).fraction_used(), 1.0);
        assert_eq!(b.on_failure(t + s(3)), Verdict::Escalate);
        // An escalation is not a restart: it uses nothing.
        assert_eq!(b.used(t + s(3)), 3);
        // The first restart leaves the window at t+10.
        assert_eq!(b.used(t + s(10)), 2);
        assert_eq!(b.on_failure(t + s(10)), Verdict::Restart);
        assert_eq!(b.on_failure(t + s(10)), Verdict::Escalate);
    }

    #[test]
    fn a_large_budget_counts_up_to_its_maximum() {
        let mut b = budget(1000, 60);
        let t = Instant::now();
        for i in 0..1000 {
            assert_eq!(b.on_failure(t), Verdict::Restart, "restart {i}");
        }
        assert_eq!(b.on_failure(t), Verdict::Escalate);
        assert_eq!(b.used(t), 1000);
    }

    #[test]
    fn a_zero_window_is_refused_when_restarts_are_allowed() {
        let bad = RestartPolicy::new(1, Duration::ZERO);
        let e = bad
            .validate("receive_loop_restarts")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("receive_loop_restarts") && e.contains("within"),
            "{e}"
        );
        assert!(RestartPolicy::new(0, Duration::ZERO).validate("x").is_ok());
    }

    #[test]
    fn an_empty_ring_has_nothing() {
        let r = FailureRing::default();
        assert!(r.entries().is_empty());
        assert_eq!(r.total(), 0);
        assert!(r.last().is_none());
        assert!(r.counts().is_empty());
    }

    #[test]
    fn a_ring_keeps_one_then_several_in_order() {
        let mut r = FailureRing::new(4);
        r.record("stream 0", ActorKind::Stream, FailureKind::Failed, "boom");
        assert_eq!(r.entries().len(), 1);
        assert_eq!(r.last().unwrap().why, "boom");
        r.record("stream 4", ActorKind::Stream, FailureKind::Failed, "b");
        r.record(
            "receive loop",
            ActorKind::ReceiveLoop,
            FailureKind::Restarted,
            "c",
        );
        let e = r.entries();
        assert_eq!(
            e.iter().map(|f| f.who.as_str()).collect::<Vec<_>>(),
            ["stream 0", "stream 4", "receive loop"]
        );
        assert_eq!(e[2].kind, FailureKind::Restarted);
        assert_eq!(e[2].child, ActorKind::ReceiveLoop);
        assert!(e[0].at_unix_secs > 1.6e9);
        let c = r.counts();
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(
            (c[0].child, c[0].outcome, c[0].total),
            (ActorKind::Stream, FailureKind::Failed, 2)
        );
        assert_eq!(
            (c[1].child, c[1].outcome, c[1].total),
            (ActorKind::ReceiveLoop, FailureKind::Restarted, 1)
        );
    }

    #[test]
    fn a_full_ring_forgets_the_oldest_and_counts_everything() {
        let mut r = FailureRing::new(3);
        for i in 0..10 {
            r.record(
                format!("stream {i}"),
                ActorKind::Stream,
                FailureKind::Failed,
                "x",
            );
        }
        let e = r.entries();
        assert_eq!(
            e.iter().map(|f| f.who.as_str()).collect::<Vec<_>>(),
            ["stream 7", "stream 8", "stream 9"]
        );
        assert_eq!(r.total(), 10);
        // Counts keep what the ring forgot.
        assert_eq!(r.counts()[0].total, 10);
        let mut none = FailureRing::new(0);
        none.record("a", ActorKind::Stream, FailureKind::Failed, "x");
        assert!(none.entries().is_empty());
        assert_eq!(none.total(), 1);
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let mut r = FailureRing::new(1);
        let long = "é".repeat(MAX_REASON_CHARS + 10);
        r.record("s", ActorKind::Stream, FailureKind::Failed, &long);
        let why = &r.last().unwrap().why;
        assert_eq!(why.chars().count(), MAX_REASON_CHARS + 1);
        assert!(why.ends_with('…'));
    }
}
