//! HTTP datagrams through the connection: QUIC DATAGRAM frames read from quiche and routed by
//! Quarter Stream ID to the stream's flow, and flows' datagrams put into quiche, each flow
//! within its share of quiche's send queue so a flood in one flow never crowds out the others.

use bytes::Bytes;
use tracing::debug;
use troupe_transport::{AppError, ConnCx};

use super::{H3App, H3Msg};
use crate::codes::H3_DATAGRAM_ERROR;
use crate::flow::FlowEnd;

/// Most datagrams read from quiche in one turn: quiche's receive queue holds at most this many
/// (the transport's queue length), so one turn empties it.
const MAX_READ_PER_TURN: usize = troupe_transport::DATAGRAM_QUEUE_LEN;

/// Groups `(stream, payload)` in arrival order into one batch per stream, streams in order of
/// their first datagram. A pure function, so the batching is unit-tested.
pub(super) fn batch_by_stream(items: Vec<(u64, Bytes)>) -> Vec<(u64, Vec<Bytes>)> {
    let mut out: Vec<(u64, Vec<Bytes>)> = Vec::new();
    for (id, p) in items {
        match out.iter_mut().find(|(s, _)| *s == id) {
            Some((_, v)) => v.push(p),
            None => out.push((id, vec![p])),
        }
    }
    out
}

/// How many of `wanted` datagrams one flow may add to quiche's send queue now: an equal share of
/// the free slots among the flows attached (at least one while any slot is free).
pub(super) fn fair_share(free: usize, flows: usize, wanted: usize) -> usize {
    if free == 0 {
        return 0;
    }
    (free / flows.max(1)).max(1).min(wanted)
}

impl H3App {
    /// Reads every datagram quiche holds and hands each flow its batch. A Quarter Stream ID
    /// past the largest stream id closes the connection with H3_DATAGRAM_ERROR (RFC 9297
    /// §2.1); one naming a stream that is not open or has no flow is dropped and counted.
    pub(super) fn read_datagrams(&mut self, cx: &mut ConnCx<'_, H3Msg>) -> Result<(), AppError> {
        let mut got = Vec::new();
        for _ in 0..MAX_READ_PER_TURN {
            let Ok(buf) = cx.conn.dgram_recv_buf() else {
                break;
            };
            // A Quarter Stream ID names a client-initiated bidirectional stream by construction.
            match crate::datagram::parse(Bytes::from(buf)) {
                Ok((id, payload)) => got.push((id, payload)),
                Err(e) => {
                    return Err(AppError {
                        code: H3_DATAGRAM_ERROR,
                        reason: e.to_string(),
                    })
                }
            }
        }
        if got.is_empty() {
            return Ok(());
        }
        let drops = &self.datagrams.drops;
        for (id, batch) in batch_by_stream(got) {
            let n = batch.len() as u64;
            let Some(route) = self.routes.get_mut(&id) else {
                drops
                    .unknown_stream
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                continue;
            };
            let Some(sink) = &route.flow else {
                drops
                    .no_flow
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                continue;
            };
            if !sink.deliver(batch) {
                debug!(stream_id = id, "flow gone: detached");
                route.flow = None;
                self.flows_attached -= 1;
                drops
                    .no_flow
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Puts a flow's datagrams into quiche, within its fair share of the send queue; what the
    /// peer cannot take is dropped and counted.
    pub(super) fn send_datagrams(
        &mut self,
        cx: &mut ConnCx<'_, H3Msg>,
        stream_id: u64,
        frames: Vec<crate::flow::DatagramFrame>,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        let drops = &self.datagrams.drops;
        let total = frames.len() as u64;
        if self.datagrams.peer() != crate::flow::PeerDatagrams::Supported
            || !self.routes.contains_key(&stream_id)
        {
            drops.not_negotiated.fetch_add(total, Relaxed);
            return;
        }
        let flows = self.flows_attached;
        let free =
            troupe_transport::DATAGRAM_QUEUE_LEN.saturating_sub(cx.conn.dgram_send_queue_len());
        let share = fair_share(free, flows, frames.len());
        let max = cx.conn.dgram_max_writable_len().unwrap_or(0);
        let mut sent = 0usize;
        for f in frames {
            if f.stream_id() != stream_id {
                // Not this flow's frame: it would go out under another stream's id.
                drops.not_negotiated.fetch_add(1, Relaxed);
                continue;
            }
            if f.len() > max {
                drops.too_large.fetch_add(1, Relaxed);
                continue;
            }
            if sent == share {
                drops.queue_full.fetch_add(1, Relaxed);
                continue;
            }
            // The frame is quiche's buffer as it is: no copy here.
            match cx.conn.dgram_send_buf(f.into_bytes()) {
                Ok(()) => sent += 1,
                Err(quiche::Error::BufferTooShort) => {
                    drops.too_large.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    drops.queue_full.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// Tells every attached flow the connection is done with it (or going away).
    pub(super) fn close_flows(&mut self, why: FlowEnd) {
        for route in self.routes.values_mut() {
            let sink = if why == FlowEnd::GoingAway {
                route.flow.clone()
            } else {
                let taken = route.flow.take();
                if taken.is_some() {
                    self.flows_attached -= 1;
                }
                taken
            };
            if let Some(f) = sink {
                f.close(why);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn no_datagram_no_batch() {
        assert!(batch_by_stream(Vec::new()).is_empty());
    }

    #[test]
    fn one_stream_keeps_its_order() {
        let got = batch_by_stream(vec![(4, b("a")), (4, b("b")), (4, b("c"))]);
        assert_eq!(got, vec![(4, vec![b("a"), b("b"), b("c")])]);
    }

    #[test]
    fn three_streams_interleaved_come_out_grouped_in_first_seen_order() {
        let got = batch_by_stream(vec![
            (8, b("1")),
            (0, b("2")),
            (8, b("3")),
            (4, b("4")),
            (0, b("5")),
        ]);
        assert_eq!(
            got,
            vec![
                (8, vec![b("1"), b("3")]),
                (0, vec![b("2"), b("5")]),
                (4, vec![b("4")]),
            ]
        );
    }

    #[test]
    fn the_largest_batch_is_one_per_datagram_of_a_full_queue() {
        let items: Vec<(u64, Bytes)> = (0..MAX_READ_PER_TURN as u64)
            .map(|i| (i * 4, b("x")))
            .collect();
        let got = batch_by_stream(items);
        assert_eq!(got.len(), MAX_READ_PER_TURN);
        assert!(got.iter().all(|(_, v)| v.len() == 1));
    }

    #[test]
    fn shares_are_equal_at_least_one_and_never_more_than_wanted() {
        assert_eq!(fair_share(0, 1, 10), 0);
        assert_eq!(fair_share(0, 0, 10), 0);
        assert_eq!(fair_share(1024, 1, 10), 10);
        assert_eq!(fair_share(1024, 1, 5000), 1024);
        assert_eq!(fair_share(900, 3, 5000), 300);
        assert_eq!(fair_share(2, 3, 5000), 1);
        assert_eq!(fair_share(100, 0, 7), 7);
        assert_eq!(fair_share(1024, 1024, 0), 0);
    }
}
