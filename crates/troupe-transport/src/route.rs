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
}
