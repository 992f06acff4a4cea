//! Connection-level events for the application: the peer's SETTINGS (once per connection) and
//! each connection's final figures.
//!
//! # Backpressure
//!
//! A connection actor never waits for the application: waiting would stall every stream on
//! the connection. Events therefore go out with a non-blocking send. A connection produces at
//! most two events in its life (SETTINGS, then Closed). Delivered to an actor
//! ([`EventSink::actor`]), they queue in its (unbounded) mailbox: an actor that falls behind
//! holds at most two events per connection opened meanwhile, so the backlog is bounded by
//! connection churn, not by traffic. A channel sink ([`EventSink::channel`]) is a bounded
//! `tokio::sync::mpsc` channel: when it is full the event is dropped and counted in
//! [`EventSink::dropped`]; size it for the churn you expect between reads. (Request events are
//! different: see [`crate::Server::bind_actor`].)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ractor::{ActorRef, DerivedActorRef, Message};
use tokio::sync::mpsc;
use troupe_transport::ConnectionInfo;

use crate::peer_settings::PeerSettings;

/// Something that happened to one connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The peer's SETTINGS frame arrived. Sent once per connection.
    PeerSettings {
        /// The connection's trace id (the `conn_id` in tracing spans).
        conn_id: String,
        /// The peer's address.
        peer: Option<SocketAddr>,
        /// What the peer sent.
        settings: PeerSettings,
    },
    /// The connection closed; `info.close` says how.
    Closed {
        /// The connection's trace id.
        conn_id: String,
        /// The final figures: handshake time, RTT, cwnd, quiche's counters, close reason.
        info: Box<ConnectionInfo>,
    },
}

type Deliver = Arc<dyn Fn(ConnectionEvent) -> bool + Send + Sync>;

#[derive(Clone)]
enum Target {
    Channel(mpsc::Sender<ConnectionEvent>),
    Actor(Deliver),
}

/// Where connection events go: a bounded channel or an actor. Cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    target: Target,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl EventSink {
    /// Events into a bounded channel; an event that finds it full is dropped and counted.
    pub fn channel(tx: mpsc::Sender<ConnectionEvent>) -> Self {
        EventSink {
            target: Target::Channel(tx),
            dropped: Arc::default(),
        }
    }

    /// Events cast to an actor whose message type converts from [`ConnectionEvent`].
    pub fn actor<M>(actor: ActorRef<M>) -> Self
    where
        M: Message + From<ConnectionEvent>,
    {
        Self::deliver(Arc::new(move |ev| actor.cast(M::from(ev)).is_ok()))
    }

    /// Events cast to a derived actor reference.
    pub fn derived(actor: DerivedActorRef<ConnectionEvent>) -> Self {
        Self::deliver(Arc::new(move |ev| actor.send_message(ev).is_ok()))
    }

    fn deliver(f: Deliver) -> Self {
        EventSink {
            target: Target::Actor(f),
            dropped: Arc::default(),
        }
    }

    /// Events dropped because the channel was full or the actor gone.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn emit(&self, ev: ConnectionEvent) {
        let ok = match &self.target {
            Target::Channel(tx) => tx.try_send(ev).is_ok(),
            Target::Actor(deliver) => deliver(ev),
        };
        if !ok {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
