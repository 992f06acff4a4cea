//! Reading the live tree: warnings that span actors and QUIC, and top-N over a sliding
//! window (the way recon's `proc_window` does it for Erlang). Pure functions of snapshots, so
//! they are unit-tested without sockets; the admin endpoint and `troupe tree` call them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::observe::ActorKind;
use crate::snapshot::{ActorNode, EndpointSnapshot};

/// When a condition becomes a warning.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Thresholds {
    /// A mailbox that has grown at every observation for this long. Default 5 s: longer than
    /// any burst a healthy actor absorbs.
    pub mailbox_growing_for: Duration,
    /// A handler running for this long. Default 1 s: a turn should take microseconds; a
    /// second means something blocks inside an actor.
    pub handler_busy_for: Duration,
    /// A stream held by flow control (or congestion) for this long with bytes to send.
    /// Default 5 s: a peer that stopped reading.
    pub stream_blocked_for: Duration,
    /// Share of a restart budget used. Default 0.8: one more failure may escalate.
    pub budget_used: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            mailbox_growing_for: Duration::from_secs(5),
            handler_busy_for: Duration::from_secs(1),
            stream_blocked_for: Duration::from_secs(5),
            budget_used: 0.8,
        }
    }
}

/// What a warning is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WarningKind {
    /// An actor's mailbox has grown at every observation for a while.
    MailboxGrowing,
    /// A handler has been running too long.
    HandlerBusy,
    /// A stream has been blocked by flow control too long.
    StreamBlocked,
    /// A restart budget is nearly spent.
    RestartBudget,
    /// An endpoint runs without a supervisor of the application's.
    Unsupervised,
    /// A connection actor did not answer the snapshot in time: a handler may be blocking the
    /// thread it runs on (its streams are not listed).
    ConnectionUnanswered,
}

/// How much a warning matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing (a default configuration, say).
    Info,
    /// Needs a look.
    Warning,
}

/// One warning.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Warning {
    /// What it is about.
    pub kind: WarningKind,
    /// How much it matters.
    pub severity: Severity,
    /// The actor it concerns (its id), if one.
    pub actor: Option<String>,
    /// A sentence for a person.
    pub message: String,
}

/// Remembers, per actor, since when its mailbox has been growing; turns snapshots into
/// warnings.
#[derive(Debug, Default)]
pub struct Warnings {
    thresholds: Thresholds,
    /// Actor id -> (depth last seen, growing since).
    growth: HashMap<String, (u64, Option<Instant>)>,
}

impl Warnings {
    /// A tracker with these thresholds.
    pub fn new(thresholds: Thresholds) -> Self {
        Warnings {
            thresholds,
            growth: HashMap::new(),
        }
    }

    /// The warnings for `snap`, taken at `now`. Feed every snapshot in order: mailbox growth
    /// is judged across them (an actor missing from a snapshot is forgotten).
    pub fn observe(&mut self, snap: &EndpointSnapshot, now: Instant) -> Vec<Warning> {
        let t = self.thresholds;
        let mut out = Vec::new();
        let mut seen = HashMap::with_capacity(self.growth.len());
        let mut actor = |node: &ActorNode, what: String, out: &mut Vec<Warning>| {
            let depth = node.meter.mailbox_depth;
            let since = match self.growth.get(&node.id) {
                Some(&(last, since)) if depth > last && depth > 0 => since.or(Some(now)),
                // Not growing (but not drained either): the streak holds while it does not
                // shrink; drained or shrinking ends it.
                Some(&(last, since)) if depth == last && depth > 0 => since,
                _ => None,
            };
            seen.insert(node.id.clone(), (depth, since));
            if let Some(s) = since {
                let growing = now.saturating_duration_since(s);
                if growing >= t.mailbox_growing_for {
                    out.push(Warning {
                        kind: WarningKind::MailboxGrowing,
                        severity: Severity::Warning,
                        actor: Some(node.id.clone()),
                        message: format!(
                            "{what}: mailbox has grown for {:.1} s, {depth} messages waiting",
                            growing.as_secs_f64()
                        ),
                    });
                }
            }
            if let Some(h) = &node.meter.handling {
                if h.for_secs >= t.handler_busy_for.as_secs_f64() {
                    out.push(Warning {
                        kind: WarningKind::HandlerBusy,
                        severity: Severity::Warning,
                        actor: Some(node.id.clone()),
                        message: format!(
                            "{what}: busy handling {} for {:.1} s",
                            h.what, h.for_secs
                        ),
                    });
                }
            }
        };
        actor(
            &snap.actor,
            format!("endpoint {}", snap.local_addr),
            &mut out,
        );
        for c in &snap.connections {
            actor(&c.actor, format!("connection {}", c.trace_id), &mut out);
            if !c.answered {
                out.push(Warning {
                    kind: WarningKind::ConnectionUnanswered,
                    severity: Severity::Warning,
                    actor: Some(c.actor.id.clone()),
                    message: format!(
                        "connection {}: did not answer within {} ms; something may be blocking \
                         the thread it runs on (a handler doing blocking work: move it to \
                         tokio::task::spawn_blocking); its streams are not listed",
                        c.trace_id,
                        crate::snapshot::SNAPSHOT_CONNECTION_TIMEOUT.as_millis()
                    ),
                });
            }
            for s in &c.streams {
                let what = format!("stream {} on connection {}", s.stream_id, c.trace_id);
                actor(&s.actor, what.clone(), &mut out);
                for f in &s.flows {
                    actor(
                        &f.actor,
                        format!("flow of {what} to {}", f.target),
                        &mut out,
                    );
                }
                if let Some(b) = s.blocked_for_secs {
                    if b >= t.stream_blocked_for.as_secs_f64() {
                        out.push(Warning {
                            kind: WarningKind::StreamBlocked,
                            severity: Severity::Warning,
                            actor: Some(s.actor.id.clone()),
                            message: format!("{what}: blocked by flow control for {b:.1} s"),
                        });
                    }
                }
            }
        }
        self.growth = seen;
        let budget = &snap.receive_loop.budget;
        if budget.fraction_used() >= t.budget_used {
            out.push(Warning {
                kind: WarningKind::RestartBudget,
                severity: Severity::Warning,
                actor: Some(snap.actor.id.clone()),
                message: format!(
                    "endpoint {}: receive loop restart budget {} of {} used (window {} s); one \
                     more failure may escalate",
                    snap.local_addr, budget.used, budget.max_restarts, budget.within_secs
                ),
            });
        }
        if snap.supervisor.is_none() {
            out.push(Warning {
                kind: WarningKind::Unsupervised,
                severity: Severity::Info,
                actor: Some(snap.actor.id.clone()),
                message: format!(
                    "endpoint {}: no application supervisor; an escalation is only logged \
                     (set ServerConfig::supervisor)",
                    snap.local_addr
                ),
            });
        }
        out
    }
}

/// What top-N ranks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TopBy {
    /// Busy time within the window (seconds).
    Busy,
    /// Mailbox depth now.
    Mailbox,
    /// Bytes moved within the window (connections: UDP bytes both ways; streams: body bytes).
    Bytes,
    /// Packets lost within the window (connections).
    Lost,
}

impl std::str::FromStr for TopBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "busy" => Ok(TopBy::Busy),
            "mailbox" => Ok(TopBy::Mailbox),
            "bytes" => Ok(TopBy::Bytes),
            "lost" => Ok(TopBy::Lost),
            other => Err(format!(
                "{other:?} is not a top-N key: use busy, mailbox, bytes or lost"
            )),
        }
    }
}

/// One row of a top-N.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TopEntry {
    /// The actor's kind.
    pub kind: ActorKind,
    /// The actor's id.
    pub actor: String,
    /// A name for a person (`connection <trace id>`, `stream 4 on <trace id>`).
    pub name: String,
    /// The figure ranked by.
    pub value: f64,
}

/// One actor's cumulative figures in one snapshot.
struct Figures {
    kind: ActorKind,
    name: String,
    busy: f64,
    mailbox: f64,
    bytes: f64,
    lost: f64,
}

fn figures(snap: &EndpointSnapshot) -> HashMap<String, Figures> {
    let mut m = HashMap::new();
    m.insert(
        snap.actor.id.clone(),
        Figures {
            kind: ActorKind::Endpoint,
            name: format!("endpoint {}", snap.local_addr),
            busy: snap.actor.meter.busy_secs,
            mailbox: snap.actor.meter.mailbox_depth as f64,
            bytes: 0.0,
            lost: 0.0,
        },
    );
    for c in &snap.connections {
        m.insert(
            c.actor.id.clone(),
            Figures {
                kind: ActorKind::Connection,
                name: format!("connection {}", c.trace_id),
                busy: c.actor.meter.busy_secs,
                mailbox: c.actor.meter.mailbox_depth as f64,
                bytes: (c.bytes_sent + c.bytes_received) as f64,
                lost: c.packets_lost as f64,
            },
        );
        for s in &c.streams {
            m.insert(
                s.actor.id.clone(),
                Figures {
                    kind: ActorKind::Stream,
                    name: format!("stream {} on {}", s.stream_id, c.trace_id),
                    busy: s.actor.meter.busy_secs,
                    mailbox: s.actor.meter.mailbox_depth as f64,
                    bytes: (s.send.bytes + s.recv.bytes) as f64,
                    lost: 0.0,
                },
            );
            for f in &s.flows {
                m.insert(
                    f.actor.id.clone(),
                    Figures {
                        kind: ActorKind::Flow,
                        name: format!(
                            "flow of stream {} on {} to {}",
                            s.stream_id, c.trace_id, f.target
                        ),
                        busy: f.actor.meter.busy_secs,
                        mailbox: f.actor.meter.mailbox_depth as f64,
                        bytes: (f.to_target_bytes + f.from_target_bytes) as f64,
                        lost: 0.0,
                    },
                );
            }
        }
    }
    m
}

/// The `n` actors of `newer` with the highest figure `by`, over the window since `older` (an
/// earlier snapshot of the same endpoint; `None` ranks cumulative figures since each actor
/// started). An actor born within the window counts from zero. Ties rank by actor id, so the
/// order is stable. Actors with a zero figure are left out.
pub fn top(
    older: Option<&EndpointSnapshot>,
    newer: &EndpointSnapshot,
    by: TopBy,
    n: usize,
) -> Vec<TopEntry> {
    let before = older.map(figures).unwrap_or_default();
    let pick = |f: &Figures| match by {
        TopBy::Busy => f.busy,
        TopBy::Mailbox => f.mailbox,
        TopBy::Bytes => f.bytes,
        TopBy::Lost => f.lost,
    };
    let mut rows: Vec<TopEntry> = figures(newer)
        .into_iter()
        .map(|(id, f)| {
            let value = match (by, before.get(&id)) {
                // Depth is a level, not a counter.
                (TopBy::Mailbox, _) | (_, None) => pick(&f),
                (_, Some(b)) => (pick(&f) - pick(b)).max(0.0),
            };
            TopEntry {
                kind: f.kind,
                actor: id,
                name: f.name,
                value,
            }
        })
        .filter(|r| r.value > 0.0)
        .collect();
    rows.sort_by(|a, b| {
        b.value
            .total_cmp(&a.value)
            .then_with(|| a.actor.cmp(&b.actor))
    });
    rows.truncate(n);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Handling;
    use crate::snapshot::fixtures::{conn, endpoint, stream};

    #[test]
    fn a_quiet_supervised_endpoint_has_no_warning() {
        let mut w = Warnings::default();
        assert!(w.observe(&endpoint(vec![]), Instant::now()).is_empty());
        let one = endpoint(vec![conn("c1", 0.0, 10, 0, vec![stream("s1", 0, 0.0, 5)])]);
        assert!(w.observe(&one, Instant::now()).is_empty());
    }

    #[test]
    fn a_busy_handler_a_blocked_stream_a_spent_budget_and_no_supervisor_warn() {
        let mut s = stream("s1", 4, 2.0, 5);
        s.actor.meter.handling = Some(Handling {
            what: "poll",
            for_secs: 2.0,
        });
        let s = s.with_blocked_for(Some(6.0));
        let mut e = endpoint(vec![conn("c1", 0.0, 10, 0, vec![s])]);
        e.supervisor = None;
        e.receive_loop.budget.used = 1;
        let kinds: Vec<WarningKind> = Warnings::default()
            .observe(&e, Instant::now())
            .iter()
            .map(|w| w.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                WarningKind::HandlerBusy,
                WarningKind::StreamBlocked,
                WarningKind::RestartBudget,
                WarningKind::Unsupervised
            ]
        );
    }

    /// A connection that did not answer is warned about once per snapshot, naming it; the
    /// ones that answered are not.
    #[test]
    fn only_a_connection_that_did_not_answer_is_warned_about() {
        let mut w = Warnings::default();
        let mut stuck = conn("c2", 0.0, 0, 0, vec![]);
        stuck.answered = false;
        let mut e = endpoint(vec![conn("c1", 0.0, 10, 0, vec![]), stuck]);
        let warned: Vec<(WarningKind, Option<String>)> = w
            .observe(&e, Instant::now())
            .into_iter()
            .map(|w| (w.kind, w.actor))
            .collect();
        assert_eq!(
            warned,
            [(WarningKind::ConnectionUnanswered, Some("c2".to_string()))]
        );
        // Once it answers again, nothing.
        e.connections[1].answered = true;
        assert!(w.observe(&e, Instant::now()).is_empty());
    }

    #[test]
    fn a_mailbox_warns_only_after_growing_for_the_threshold() {
        let mut w = Warnings::default();
        let t0 = Instant::now();
        let at = |depth: u64| {
            let mut c = conn("c1", 0.0, 0, 0, vec![]);
            c.actor.meter.mailbox_depth = depth;
            endpoint(vec![c])
        };
        let s = Duration::from_secs;
        assert!(w.observe(&at(1), t0).is_empty());
        assert!(w.observe(&at(5), t0 + s(1)).is_empty());
        assert!(w.observe(&at(9), t0 + s(3)).is_empty());
        // Level, not shrinking: the streak holds.
        assert!(w.observe(&at(9), t0 + s(5)).is_empty());
        let got = w.observe(&at(12), t0 + s(7));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].kind, WarningKind::MailboxGrowing);
        assert!(got[0].message.contains("12 messages"), "{}", got[0].message);
        // Shrinking ends the streak.
        assert!(w.observe(&at(3), t0 + s(8)).is_empty());
        assert!(w.observe(&at(4), t0 + s(9)).is_empty());
    }

    #[test]
    fn top_of_nothing_is_empty_and_n_zero_is_empty() {
        assert!(top(None, &endpoint(vec![]), TopBy::Busy, 10).is_empty());
        let e = endpoint(vec![conn("c1", 1.0, 10, 1, vec![])]);
        assert!(top(None, &e, TopBy::Busy, 0).is_empty());
    }

    #[test]
    fn top_ranks_over_the_window_and_keeps_n() {
        let older = endpoint(vec![
            conn("c1", 5.0, 1000, 3, vec![stream("s1", 0, 1.0, 100)]),
            conn("c2", 1.0, 10, 0, vec![]),
        ]);
        let newer = endpoint(vec![
            // c1 was busy long ago but little within the window.
            conn("c1", 5.5, 1500, 3, vec![stream("s1", 0, 1.2, 400)]),
            conn("c2", 3.0, 5000, 7, vec![]),
            // Born within the window: counts from zero.
            conn("c3", 0.75, 20, 0, vec![stream("s9", 4, 0.7, 50)]),
        ]);
        let busy = top(Some(&older), &newer, TopBy::Busy, 3);
        let ids: Vec<&str> = busy.iter().map(|r| r.actor.as_str()).collect();
        assert_eq!(ids, ["c2", "c3", "s9"]);
        assert!((busy[0].value - 2.0).abs() < 1e-9);
        let lost = top(Some(&older), &newer, TopBy::Lost, 10);
        assert_eq!(lost.len(), 1);
        assert_eq!((lost[0].actor.as_str(), lost[0].value), ("c2", 7.0));
        let bytes = top(Some(&older), &newer, TopBy::Bytes, 10);
        assert_eq!(bytes[0].actor, "c2");
        assert_eq!(bytes.iter().find(|r| r.actor == "s1").unwrap().value, 300.0);
        // Cumulative without a window.
        assert_eq!(top(None, &newer, TopBy::Busy, 1)[0].actor, "c1");
    }

    #[test]
    fn ties_rank_by_id_and_mailbox_is_a_level() {
        let mut a = conn("b", 0.0, 0, 0, vec![]);
        a.actor.meter.mailbox_depth = 4;
        let mut b = conn("a", 0.0, 0, 0, vec![]);
        b.actor.meter.mailbox_depth = 4;
        let e = endpoint(vec![a, b]);
        let rows = top(Some(&e), &e, TopBy::Mailbox, 5);
        let ids: Vec<&str> = rows.iter().map(|r| r.actor.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!("bogus"
            .parse::<TopBy>()
            .unwrap_err()
            .contains("busy, mailbox"));
    }
}
