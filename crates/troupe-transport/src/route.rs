//! The endpoint's routing table (destination connection ID -> connection inbox) and the bounded
//! per-connection packet queue between the receive loop and a connection actor.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::BytesMut;
use dashmap::DashMap;
use quiche::ConnectionId;
use ractor::ActorId;

use crate::connection::LOCAL_CID_LEN;
use crate::stats::EndpointStats;

/// One received UDP datagram.
#[derive(Debug)]
pub(crate) struct Packet {
    /// The datagram's bytes; quiche decrypts in place, hence mutable.
    pub(crate) data: BytesMut,
    /// Sender address.
    pub(crate) from: SocketAddr,
    /// Local address it arrived on.
    pub(crate) to: SocketAddr,
}

/// What the receive loop does to wake a connection actor: cast it a "packets ready" message.
pub(crate) type Waker = Box<dyn Fn() -> bool + Send + Sync>;

/// The bounded queue of packets for one connection.
///
/// The receive loop pushes; the connection actor drains the whole queue in one turn. A message
/// is cast to the actor only when the queue goes from "nothing scheduled" to "scheduled", so a
/// burst of packets costs one actor message, not one per packet.
pub(crate) struct Inbox {
    queue: Mutex<VecDeque<Packet>>,
    scheduled: AtomicBool,
    capacity: usize,
    wake: OnceLock<Waker>,
    actor: OnceLock<ActorId>,
}

/// Outcome of offering a packet to an inbox.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    Queued,
    /// The queue is full: the packet was dropped.
    Full,
    /// The actor is gone: the packet was dropped.
    Closed,
}

impl Inbox {
    /// An inbox not yet bound to an actor: packets queue up and are drained when the actor
    /// starts.
    pub(crate) fn new(capacity: usize) -> Self {
        Inbox {
            queue: Mutex::new(VecDeque::with_capacity(capacity.min(64))),
            scheduled: AtomicBool::new(false),
            capacity,
            wake: OnceLock::new(),
            actor: OnceLock::new(),
        }
    }

    /// Binds the inbox to its actor. Called from the actor's `pre_start`, before its first
    /// drain, so no wake-up can be lost.
    pub(crate) fn bind(&self, actor: ActorId, wake: Waker) {
        let _ = self.actor.set(actor);
        let _ = self.wake.set(wake);
    }

    pub(crate) fn offer(&self, packet: Packet) -> Offer {
        {
            let mut q = self.queue.lock().expect("inbox lock poisoned");
            if q.len() >= self.capacity {
                return Offer::Full;
            }
            q.push_back(packet);
        }
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            if let Some(wake) = self.wake.get() {
                if !wake() {
                    return Offer::Closed;
                }
            }
        }
        Offer::Queued
    }

    /// Takes every queued packet. Called by the connection actor when woken; clears the
    /// scheduled mark first so a packet pushed during the drain triggers a new wake-up.
    pub(crate) fn drain(&self, into: &mut VecDeque<Packet>) {
        self.scheduled.store(false, Ordering::Release);
        let mut q = self.queue.lock().expect("inbox lock poisoned");
        std::mem::swap(&mut *q, into);
    }
}

/// Destination connection ID -> inbox. Shared by the receive loop (reads) and the connection
/// actors (insert and retire their own IDs).
#[derive(Clone)]
pub(crate) struct Routes {
    map: Arc<DashMap<Box<[u8]>, Arc<Inbox>>>,
    pub(crate) stats: Arc<EndpointStats>,
}

impl Routes {
    pub(crate) fn new(stats: Arc<EndpointStats>) -> Self {
        Routes {
            map: Arc::new(DashMap::new()),
            stats,
        }
    }

    pub(crate) fn get(&self, cid: &[u8]) -> Option<Arc<Inbox>> {
        self.map.get(cid).map(|e| e.value().clone())
    }

    pub(crate) fn insert(&self, cid: &ConnectionId<'_>, inbox: Arc<Inbox>) {
        self.map.insert(cid.as_ref().into(), inbox);
    }

    pub(crate) fn remove(&self, cid: &ConnectionId<'_>) {
        self.map.remove(cid.as_ref());
    }

    /// Drops every route to one actor; used when a connection actor died without cleaning up.
    pub(crate) fn remove_actor(&self, actor: ActorId) -> usize {
        let before = self.map.len();
        self.map
            .retain(|_, inbox| inbox.actor.get() != Some(&actor));
        before - self.map.len()
    }

    /// Number of connection IDs routed.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// The destination connection ID of a short-header packet (RFC 9000 §17.3: header form bit
/// 0, then the ID, whose length the receiver knows because it chose it), read in place.
/// `None` for a long-header packet (the full parse handles those) or a datagram too short to
/// hold the ID.
///
/// Every packet of an established connection has a short header; reading its ID here spares
/// the receive loop `quiche::Header::from_slice`, which copies the ID into a fresh allocation.
pub(crate) fn short_header_dcid(datagram: &[u8]) -> Option<&[u8; LOCAL_CID_LEN]> {
    let (first, rest) = datagram.split_first()?;
    if first & 0x80 != 0 {
        return None;
    }
    rest.first_chunk::<LOCAL_CID_LEN>()
}

/// The route the receive loop took last, kept for the rest of one `recvmmsg` batch.
///
/// A batch mostly holds runs of one connection's packets (a bulk transfer fills it with one
/// connection's), so a run after its first packet is routed by comparing 16 bytes instead of
/// hashing the ID, locking a shard of the table and counting a reference up and down.
///
/// The memo lives for one batch only ([`RouteMemo::clear`] after each): a route removed
/// meanwhile (a connection retiring an ID, or closing) stops being used at the next batch, the
/// same window as a packet that was already in the socket when the route went; and a loop
/// waiting for packets holds no inbox. A closed inbox clears it at once.
#[derive(Default)]
pub(crate) struct RouteMemo {
    last: Option<([u8; LOCAL_CID_LEN], Arc<Inbox>)>,
}

impl RouteMemo {
    /// Forgets the last route; called at the end of every batch.
    pub(crate) fn clear(&mut self) {
        self.last = None;
    }

    /// The inbox for `cid`: the memo's when it names the same ID, else the table's (and
    /// remembered). A miss leaves the memo as it was.
    pub(crate) fn lookup(
        &mut self,
        routes: &Routes,
        cid: &[u8; LOCAL_CID_LEN],
    ) -> Option<&Arc<Inbox>> {
        let hit = matches!(&self.last, Some((last, _)) if last == cid);
        if !hit {
            let inbox = routes.get(cid)?;
            self.last = Some((*cid, inbox));
        }
        self.last.as_ref().map(|(_, inbox)| inbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn packet() -> Packet {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        Packet {
            data: BytesMut::from(&b"x"[..]),
            from: a,
            to: a,
        }
    }

    #[test]
    fn one_wake_per_drain_and_bounded() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = wakes.clone();
        let inbox = Inbox::new(3);
        inbox.bind(
            ActorId::Local(1),
            Box::new(move || {
                w.fetch_add(1, Ordering::SeqCst);
                true
            }),
        );
        assert_eq!(inbox.offer(packet()), Offer::Queued);
        assert_eq!(inbox.offer(packet()), Offer::Queued);
        assert_eq!(inbox.offer(packet()), Offer::Queued);
        assert_eq!(inbox.offer(packet()), Offer::Full);
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        let mut out = VecDeque::new();
        inbox.drain(&mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(inbox.offer(packet()), Offer::Queued);
        assert_eq!(wakes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn closed_actor_is_reported() {
        let inbox = Inbox::new(3);
        inbox.bind(ActorId::Local(1), Box::new(|| false));
        assert_eq!(inbox.offer(packet()), Offer::Closed);
    }

    fn routes() -> Routes {
        Routes::new(Arc::new(EndpointStats::default()))
    }

    fn cid(n: u8) -> [u8; LOCAL_CID_LEN] {
        [n; LOCAL_CID_LEN]
    }

    #[test]
    fn short_header_ids_are_read_in_place() {
        // Zero bytes, and a first byte alone: nothing to read.
        assert_eq!(short_header_dcid(&[]), None);
        assert_eq!(short_header_dcid(&[0x40]), None);
        // One byte short of a whole ID.
        let mut d = vec![0x41];
        d.extend_from_slice(&cid(7)[..LOCAL_CID_LEN - 1]);
        assert_eq!(short_header_dcid(&d), None);
        // Exactly the ID, and the ID followed by a payload.
        d.push(7);
        assert_eq!(short_header_dcid(&d), Some(&cid(7)));
        d.extend_from_slice(&[0xff; 1200]);
        assert_eq!(short_header_dcid(&d), Some(&cid(7)));
        // Long headers (Initial, Handshake, Retry, version negotiation) take the full parse.
        for first in [0x80, 0xc0, 0xe0, 0xff] {
            d[0] = first;
            assert_eq!(short_header_dcid(&d), None, "{first:#x}");
        }
    }

    #[test]
    fn the_memo_answers_a_run_and_follows_a_change_of_connection() {
        let routes = routes();
        let mut memo = RouteMemo::default();
        // Empty table, empty memo: a miss, and the memo stays empty.
        assert!(memo.lookup(&routes, &cid(1)).is_none());
        assert!(memo.last.is_none());
        let a = Arc::new(Inbox::new(4));
        let b = Arc::new(Inbox::new(4));
        routes.insert(&ConnectionId::from_ref(&cid(1)), a.clone());
        routes.insert(&ConnectionId::from_ref(&cid(2)), b.clone());
        // A run of three packets of one connection: the first fills the memo, the rest hit it
        // (still answered after the table forgets the route, until the batch ends).
        assert!(Arc::ptr_eq(memo.lookup(&routes, &cid(1)).unwrap(), &a));
        routes.remove(&ConnectionId::from_ref(&cid(1)));
        assert!(Arc::ptr_eq(memo.lookup(&routes, &cid(1)).unwrap(), &a));
        assert!(Arc::ptr_eq(memo.lookup(&routes, &cid(1)).unwrap(), &a));
        // Another connection replaces it; an unknown ID leaves it in place.
        assert!(Arc::ptr_eq(memo.lookup(&routes, &cid(2)).unwrap(), &b));
        assert!(memo.lookup(&routes, &cid(3)).is_none());
        assert_eq!(memo.last.as_ref().map(|(c, _)| *c), Some(cid(2)));
        // The next batch starts from the table: the removed route is gone.
        memo.clear();
        assert!(memo.lookup(&routes, &cid(1)).is_none());
        assert!(Arc::ptr_eq(memo.lookup(&routes, &cid(2)).unwrap(), &b));
    }

    #[test]
    fn the_memo_holds_one_route_at_most_whatever_the_table_holds() {
        // The largest table a test can cheaply hold: every lookup of a thousand IDs in turn
        // is answered by the table, and the memo only ever holds the last.
        let routes = routes();
        let inboxes: Vec<_> = (0..1000u16)
            .map(|i| {
                let mut id = [0u8; LOCAL_CID_LEN];
                id[..2].copy_from_slice(&i.to_be_bytes());
                let inbox = Arc::new(Inbox::new(1));
                routes.insert(&ConnectionId::from_ref(&id), inbox.clone());
                (id, inbox)
            })
            .collect();
        let mut memo = RouteMemo::default();
        for (id, inbox) in &inboxes {
            assert!(Arc::ptr_eq(memo.lookup(&routes, id).unwrap(), inbox));
            assert_eq!(memo.last.as_ref().map(|(c, _)| c), Some(id));
        }
        // Two references to the last inbox: ours and the memo's (the table's is the third).
        assert_eq!(Arc::strong_count(&inboxes[999].1), 3);
        assert_eq!(Arc::strong_count(&inboxes[998].1), 2);
    }
}
