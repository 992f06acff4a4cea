//! Presenting the live tree: a `pstree`-like text tree with each node's figures, and totals per
//! kind of actor (what the admin endpoint's `/metrics` exports, so the number of series stays
//! bounded however many connections and streams are live). Pure functions of snapshots.

use std::fmt::Write;

use serde::Serialize;

use crate::observe::{ActorKind, MeterView};
use crate::snapshot::{ActorNode, ConnectionSnapshot, EndpointSnapshot, StreamSnapshot};
use crate::supervision::FailureCount;

/// The kinds of actor the tree holds, in the order totals list them.
pub const TREE_KINDS: [ActorKind; 4] = [
    ActorKind::Endpoint,
    ActorKind::Connection,
    ActorKind::Stream,
    ActorKind::Flow,
];

/// The tree as text: one line per endpoint, connection and stream, drawn like `pstree`, with
/// each node's figures. Ends with a newline.
pub fn tree_text(snaps: &[EndpointSnapshot]) -> String {
    let mut out = String::new();
    if snaps.is_empty() {
        out.push_str("(no endpoint)\n");
    }
    for e in snaps {
        endpoint_line(&mut out, e);
        if e.connections.is_empty() {
            out.push_str("└─ (no connection)\n");
        }
        let n = e.connections.len();
        for (i, c) in e.connections.iter().enumerate() {
            let last = i + 1 == n;
            out.push_str(if last { "└─ " } else { "├─ " });
            connection_line(&mut out, c);
            let indent = if last { "   " } else { "│  " };
            let m = c.streams.len();
            for (j, s) in c.streams.iter().enumerate() {
                let last_stream = j + 1 == m;
                out.push_str(indent);
                out.push_str(if last_stream { "└─ " } else { "├─ " });
                stream_line(&mut out, s);
                let below = format!("{indent}{}", if last_stream { "   " } else { "│  " });
                let k = s.flows.len();
                for (f_i, f) in s.flows.iter().enumerate() {
                    out.push_str(&below);
                    out.push_str(if f_i + 1 == k { "└─ " } else { "├─ " });
                    flow_line(&mut out, f);
                }
            }
        }
    }
    out
}

fn endpoint_line(out: &mut String, e: &EndpointSnapshot) {
    let b = &e.receive_loop.budget;
    let _ = write!(
        out,
        "endpoint {} {}  receive loop restarts {} (budget {}/{} per {}s)  failures {}",
        e.local_addr,
        e.role,
        e.receive_loop.restarts,
        b.used,
        b.max_restarts,
        b.within_secs,
        e.failures_total
    );
    if let Some(f) = e.failures.last() {
        let _ = write!(out, " (last: {}: {})", f.who, one_line(&f.why));
    }
    if e.parked_stream_actors > 0 {
        let _ = write!(out, "  parked stream actors {}", e.parked_stream_actors);
    }
    match &e.supervisor {
        Some(s) => {
            let _ = write!(out, "  supervisor {s}");
        }
        None => out.push_str("  unsupervised"),
    }
    actor_part(out, &e.actor);
    out.push('\n');
}

fn connection_line(out: &mut String, c: &ConnectionSnapshot) {
    let _ = write!(out, "connection {}", c.trace_id);
    if !c.answered {
        out.push_str(" (did not answer in time)");
        actor_part(out, &c.actor);
        out.push('\n');
        return;
    }
    if let Some(p) = c.peer {
        let _ = write!(out, " peer {p}");
    }
    if let Some(stage) = c.stage {
        let _ = write!(out, " {}", stage.as_str());
    }
    if let Some(w) = c.worker {
        let _ = write!(out, " worker {w}");
    }
    if !c.alpn.is_empty() {
        let _ = write!(out, " {}", c.alpn);
    }
    if let (Some(rtt), Some(min)) = (c.rtt_ms, c.min_rtt_ms) {
        let _ = write!(out, "  rtt {rtt:.2}ms (min {min:.2})");
    }
    if let Some(cwnd) = c.cwnd {
        let _ = write!(out, "  cwnd {cwnd}");
    }
    let _ = write!(
        out,
        "  inflight {}  packets sent {} received {} lost {}  streams {}/{}",
        c.bytes_in_flight,
        c.packets_sent,
        c.packets_received,
        c.packets_lost,
        c.streams_open,
        c.streams_limit_bidi
    );
    if let Some(idle) = c.idle_timeout_left_secs {
        let _ = write!(out, "  idle timeout in {idle:.1}s");
    }
    if let Some(close) = &c.close {
        let _ = write!(out, "  closed: {}", one_line(close));
    }
    if c.failures_total > 0 {
        let _ = write!(out, "  failures {}", c.failures_total);
    }
    actor_part(out, &c.actor);
    out.push('\n');
}

fn stream_line(out: &mut String, s: &StreamSnapshot) {
    let _ = write!(out, "stream {}", s.stream_id);
    if let Some(m) = &s.method {
        let _ = write!(out, " {m}");
    }
    if let Some(p) = &s.path {
        let _ = write!(out, " {}", one_line(p));
    }
    for (name, d) in [("send", &s.send), ("recv", &s.recv)] {
        let _ = write!(out, "  {name} {} {}B", d.state, d.bytes);
        if let Some(end) = d.end {
            let _ = write!(out, " ({end}");
            if let Some(code) = d.code {
                let _ = write!(out, " 0x{code:x}");
            }
            out.push(')');
        }
    }
    let _ = write!(out, "  credit {}", s.write_credit);
    if let Some(r) = s.read_credit {
        let _ = write!(out, "/{r}");
    }
    let _ = write!(out, "  buffered {}", s.buffered);
    if let Some(b) = s.blocked_for_secs {
        let _ = write!(out, "  blocked {b:.1}s");
    }
    actor_part(out, &s.actor);
    out.push('\n');
}

fn flow_line(out: &mut String, f: &crate::snapshot::FlowSnapshot) {
    let _ = write!(
        out,
        "flow to {}  client->target {} ({}B)  target->client {} ({}B)  in {} out {}",
        f.target,
        f.to_target,
        f.to_target_bytes,
        f.from_target,
        f.from_target_bytes,
        f.from_client,
        f.to_client
    );
    if !f.drops.is_empty() {
        out.push_str("  dropped");
        for d in &f.drops {
            let _ = write!(out, " {}={}", d.reason, d.count);
        }
    }
    actor_part(out, &f.actor);
    out.push('\n');
}

fn actor_part(out: &mut String, a: &ActorNode) {
    let m: &MeterView = &a.meter;
    let _ = write!(
        out,
        "  [actor {} {} up {:.1}s mailbox {}",
        a.id, a.status, m.age_secs, m.mailbox_depth
    );
    if let Some(age) = m.oldest_message_age_secs {
        let _ = write!(out, " (oldest {age:.3}s)");
    }
    let _ = write!(
        out,
        " handled {} busy {:.3}s",
        m.messages_handled, m.busy_secs
    );
    if let Some(h) = &m.handling {
        let _ = write!(out, " handling {} for {:.3}s", h.what, h.for_secs);
    }
    if let Some(e) = &m.last_error {
        let _ = write!(out, " error: {}", one_line(e));
    }
    out.push(']');
}

/// Keeps a text on one line (a panic message may hold newlines).
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// What the live actors of one kind add up to, across endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct KindTotals {
    /// The kind.
    pub kind: ActorKind,
    /// Live actors.
    pub live: u64,
    /// Messages waiting in their mailboxes, all together.
    pub mailbox_depth: u64,
    /// The deepest mailbox.
    pub mailbox_depth_max: u64,
    /// The longest a mailbox head has waited, seconds.
    pub oldest_message_secs: f64,
    /// Handlers running now.
    pub handlers_running: u64,
    /// The longest-running handler now, seconds.
    pub longest_handler_secs: f64,
    /// Messages the live actors have handled.
    pub messages_handled: u64,
    /// Time the live actors have spent in handlers, seconds.
    pub busy_secs: f64,
}

impl KindTotals {
    fn zero(kind: ActorKind) -> Self {
        KindTotals {
            kind,
            live: 0,
            mailbox_depth: 0,
            mailbox_depth_max: 0,
            oldest_message_secs: 0.0,
            handlers_running: 0,
            longest_handler_secs: 0.0,
            messages_handled: 0,
            busy_secs: 0.0,
        }
    }

    fn add(&mut self, a: &ActorNode) {
        let m = &a.meter;
        self.live += 1;
        self.mailbox_depth += m.mailbox_depth;
        self.mailbox_depth_max = self.mailbox_depth_max.max(m.mailbox_depth);
        self.oldest_message_secs = self
            .oldest_message_secs
            .max(m.oldest_message_age_secs.unwrap_or(0.0));
        if let Some(h) = &m.handling {
            self.handlers_running += 1;
            self.longest_handler_secs = self.longest_handler_secs.max(h.for_secs);
        }
        self.messages_handled += m.messages_handled;
        self.busy_secs += m.busy_secs;
    }
}

/// Totals per kind of actor over every node of `snaps`: one entry per kind of
/// [`TREE_KINDS`], in that order, zero when none is live.
pub fn kind_totals(snaps: &[EndpointSnapshot]) -> Vec<KindTotals> {
    let mut t: Vec<KindTotals> = TREE_KINDS.iter().map(|&k| KindTotals::zero(k)).collect();
    let mut add = |a: &ActorNode| {
        if let Some(slot) = t.iter_mut().find(|s| s.kind == a.kind) {
            slot.add(a);
        }
    };
    for e in snaps {
        add(&e.actor);
        for c in &e.connections {
            add(&c.actor);
            for s in &c.streams {
                add(&s.actor);
                for f in &s.flows {
                    add(&f.actor);
                }
            }
        }
    }
    t
}

/// Failures ever recorded by the endpoints of `snaps`, by kind of child and outcome, summed
/// across endpoints, in the order each pair first occurs.
pub fn failure_totals(snaps: &[EndpointSnapshot]) -> Vec<FailureCount> {
    let mut out: Vec<FailureCount> = Vec::new();
    for c in snaps.iter().flat_map(|e| &e.failure_counts) {
        match out
            .iter_mut()
            .find(|o| o.child == c.child && o.outcome == c.outcome)
        {
            Some(o) => o.total += c.total,
            None => out.push(*c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Handling;
    use crate::snapshot::fixtures::{conn, endpoint, stream};
    use crate::supervision::{FailureKind, FailureRing};

    #[test]
    fn no_endpoint_and_an_empty_endpoint_say_so() {
        assert_eq!(tree_text(&[]), "(no endpoint)\n");
        let t = tree_text(&[endpoint(vec![])]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2, "{t}");
        assert!(lines[0].starts_with("endpoint 127.0.0.1:1 server"), "{t}");
        assert!(lines[0].contains("supervisor sup"), "{t}");
        assert_eq!(lines[1], "└─ (no connection)");
        let totals = kind_totals(&[]);
        assert_eq!(totals.len(), 4);
        assert!(totals.iter().all(|k| k.live == 0));
        assert!(failure_totals(&[]).is_empty());
    }

    #[test]
    fn one_connection_with_one_stream_draws_each_node_and_its_figures() {
        let mut s = stream("s1", 4, 2.0, 5);
        s.actor.meter.handling = Some(Handling {
            what: "poll",
            for_secs: 2.0,
        });
        s.actor.meter.last_error = Some("line one\nline two".into());
        let t = tree_text(&[endpoint(vec![conn("c1", 0.5, 10, 0, vec![s])])]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[1].starts_with("└─ connection t-c1"), "{t}");
        assert!(lines[1].contains("[actor c1 Running"), "{t}");
        assert!(lines[2].starts_with("   └─ stream 4 GET /"), "{t}");
        assert!(lines[2].contains("send open 5B"), "{t}");
        assert!(lines[2].contains("handling poll for 2.000s"), "{t}");
        // A reason never breaks the one-line-per-node shape.
        assert!(lines[2].contains("error: line one line two"), "{t}");
    }

    #[test]
    fn several_connections_and_streams_nest_like_pstree() {
        let e = endpoint(vec![
            conn(
                "c1",
                0.0,
                0,
                0,
                vec![
                    stream("s1", 0, 0.0, 0),
                    stream("s2", 4, 0.0, 0),
                    stream("s3", 8, 0.0, 0),
                ],
            ),
            conn("c2", 0.0, 0, 0, vec![stream("s4", 0, 0.0, 0)]),
        ]);
        let t = tree_text(&[e.clone(), e]);
        let heads: Vec<String> = t
            .lines()
            .map(|l| l.chars().take(6).collect::<String>())
            .collect();
        let one = [
            "endpoi",
            "├─ con",
            "│  ├─ ",
            "│  ├─ ",
            "│  └─ ",
            "└─ con",
            "   └─ ",
        ];
        let want: Vec<String> = one
            .iter()
            .chain(one.iter())
            .map(|s| s.to_string())
            .collect();
        assert_eq!(heads, want, "{t}");
        let k = kind_totals(&[endpoint(vec![
            conn("c1", 1.0, 0, 0, vec![stream("s1", 0, 0.5, 0); 3]),
            conn("c2", 2.0, 0, 0, vec![]),
        ])]);
        let by = |kind| k.iter().find(|t| t.kind == kind).unwrap();
        assert_eq!(by(ActorKind::Endpoint).live, 1);
        assert_eq!(by(ActorKind::Connection).live, 2);
        assert_eq!(by(ActorKind::Stream).live, 3);
        assert_eq!(by(ActorKind::Flow).live, 0);
        assert!((by(ActorKind::Connection).busy_secs - 3.0).abs() < 1e-9);
        assert!((by(ActorKind::Stream).busy_secs - 1.5).abs() < 1e-9);
    }

    #[test]
    fn totals_take_maxima_and_sum_failures_across_endpoints() {
        let deep = |id: &str, depth: u64| {
            let mut s = stream(id, 0, 0.0, 0);
            s.actor.meter.mailbox_depth = depth;
            s.actor.meter.oldest_message_age_secs = Some(depth as f64 / 10.0);
            s
        };
        let mut a = endpoint(vec![conn(
            "c1",
            0.0,
            0,
            0,
            vec![deep("s1", 3), deep("s2", 7)],
        )]);
        let mut ring = FailureRing::new(2);
        for _ in 0..5 {
            ring.record("stream 0", ActorKind::Stream, FailureKind::Failed, "x");
        }
        ring.record(
            "receive loop",
            ActorKind::ReceiveLoop,
            FailureKind::Restarted,
            "y",
        );
        a.failure_counts = ring.counts();
        let mut b = endpoint(vec![]);
        b.failure_counts = ring.counts();
        let k = kind_totals(&[a.clone(), b.clone()]);
        let s = k.iter().find(|t| t.kind == ActorKind::Stream).unwrap();
        assert_eq!((s.mailbox_depth, s.mailbox_depth_max), (10, 7));
        assert!((s.oldest_message_secs - 0.7).abs() < 1e-9);
        let f = failure_totals(&[a, b]);
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].child, f[0].total), (ActorKind::Stream, 10));
        assert_eq!((f[1].child, f[1].total), (ActorKind::ReceiveLoop, 2));
    }

    #[test]
    fn a_flow_hangs_under_its_stream_and_counts_as_a_flow() {
        let flow = crate::snapshot::FlowSnapshot::new(
            crate::snapshot::fixtures::node(ActorKind::Flow, "f1", 0.0, 0),
            "192.0.2.1:53".into(),
        )
        .with_datagrams(5, 4, 3, 3)
        .with_drops([("rate", 1), ("context", 0)]);
        let s1 = stream("s1", 0, 0.0, 0).with_flows(vec![flow]);
        let e = endpoint(vec![conn(
            "c1",
            0.0,
            0,
            0,
            vec![s1, stream("s2", 4, 0.0, 0)],
        )]);
        let t = tree_text(std::slice::from_ref(&e));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[3].starts_with("   │  └─ flow to 192.0.2.1:53"), "{t}");
        assert!(
            lines[3].contains("dropped rate=1") && !lines[3].contains("context"),
            "{t}"
        );
        assert!(lines[4].starts_with("   └─ stream 4"), "{t}");
        let k = kind_totals(&[e]);
        assert_eq!(
            k.iter().find(|t| t.kind == ActorKind::Flow).unwrap().live,
            1
        );
    }

    #[test]
    fn a_thousand_streams_are_a_thousand_lines() {
        let streams: Vec<StreamSnapshot> = (0..1000)
            .map(|i| stream(&format!("s{i}"), i * 4, 0.0, 1))
            .collect();
        let t = tree_text(&[endpoint(vec![conn("c1", 0.0, 0, 0, streams)])]);
        assert_eq!(t.lines().count(), 1002);
        assert_eq!(t.lines().filter(|l| l.contains("└─ stream")).count(), 1);
    }
}
