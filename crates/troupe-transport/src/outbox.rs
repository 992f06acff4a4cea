//! The per-connection queue of application messages ([`ConnMsg::App`]) between the
//! connection's children (stream and flow actors, the application's handles) and the
//! connection actor, and [`ConnMailbox`], the counted reference through which they send.
//!
//! Why: on many connections of small requests each response used to reach the connection actor
//! as one ractor message of its own, and a ractor message costs its box, a channel push and pop
//! and a turn of the actor's receive loop over its ports. The responses of one burst (the
//! streams a batch of packets started) are ready within one scheduler pass, so they now share
//! one wake-up, as the receive loop's packets share one in the connection's inbox.
//!
//! Ordering: a sender's messages are handled in the order it sent them, and in order with what
//! the same sender casts to the connection's mailbox directly (a `Close` after a `send`): a
//! post that finds the queue empty casts [`ConnMsg::Outbox`] while it holds the queue's lock,
//! so the wake-up is in the mailbox before any later cast of that sender, and a post that
//! finds it non-empty rides on a wake-up already there.

use std::sync::{Arc, Mutex};

use ractor::{ActorRef, MessagingErr};

use crate::connection::ConnMsg;
use crate::observe::{ActorMeter, Tracked};

/// The queue behind [`ConnMailbox`]: messages in the order posted, with at most one wake-up
/// outstanding. Free of actors, so its rules are tested on their own: the first post into an
/// empty queue wakes the consumer; later posts ride on that wake-up until the consumer drains;
/// a closed queue refuses every post and holds nothing.
pub struct Outbox<M> {
    state: Mutex<OutboxState<M>>,
}

struct OutboxState<M> {
    /// Non-empty exactly when a wake-up is outstanding (a post into an empty queue wakes the
    /// consumer, a drain empties the queue), so no separate mark is needed.
    queue: Vec<M>,
    /// Whether the consumer is gone.
    stage: OutboxStage,
}

/// Whether an outbox's consumer still takes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutboxStage {
    Open,
    Closed,
}

/// Why a post was refused; the message comes back.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused<M>(pub M);

impl<M> Default for Outbox<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> Outbox<M> {
    /// An empty, open outbox.
    pub fn new() -> Self {
        Outbox {
            state: Mutex::new(OutboxState {
                queue: Vec::new(),
                stage: OutboxStage::Open,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState<M>> {
        // A panic while the lock is held leaves a well-formed Vec: carry on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `msg`. When the queue was empty, `wake` runs (under the queue's lock, so the
    /// wake-up is ordered before anything the caller sends afterwards) and must return whether
    /// the consumer can still be woken; if not, the outbox closes and `msg` comes back.
    pub fn post(&self, msg: M, wake: impl FnOnce() -> bool) -> Result<(), Refused<M>> {
        let mut st = self.lock();
        if st.stage == OutboxStage::Closed {
            return Err(Refused(msg));
        }
        let first = st.queue.is_empty();
        st.queue.push(msg);
        if first && !wake() {
            st.stage = OutboxStage::Closed;
            let msg = st.queue.pop().expect("the message just queued");
            return Err(Refused(msg));
        }
        Ok(())
    }

    /// Moves every queued message, in the order posted, to the end of `into` (whose capacity
    /// the caller keeps between turns). Afterwards the queue is empty, so the next post wakes
    /// the consumer again.
    pub fn drain(&self, into: &mut Vec<M>) {
        let mut st = self.lock();
        if into.is_empty() {
            std::mem::swap(&mut st.queue, into);
        } else {
            into.append(&mut st.queue);
        }
    }

    /// The consumer is gone: refuse every later post and drop what is queued (outside the
    /// lock, so a message's drop may post again without deadlock). Returns how many were
    /// dropped.
    pub fn close(&self) -> usize {
        let left = {
            let mut st = self.lock();
            st.stage = OutboxStage::Closed;
            std::mem::take(&mut st.queue)
        };
        let n = left.len();
        drop(left);
        n
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A counted reference to a connection actor whose application messages go through the
/// connection's [`Outbox`]: [`ConnMailbox::cast`] of a [`ConnMsg::App`] queues it there (one
/// [`ConnMsg::Outbox`] wake-up per burst), any other message goes to the actor's mailbox. Each
/// application message counts in the actor's meter as sent when posted and as handled when the
/// connection actor has handled it, so the snapshot's mailbox depth includes the outbox.
pub struct ConnMailbox<M> {
    tracked: Tracked<ConnMsg<M>>,
    outbox: Arc<Outbox<M>>,
}

impl<M> Clone for ConnMailbox<M> {
    fn clone(&self) -> Self {
        ConnMailbox {
            tracked: self.tracked.clone(),
            outbox: self.outbox.clone(),
        }
    }
}

impl<M: Send + 'static> ConnMailbox<M> {
    /// The connection actor `tracked`, whose application messages queue in `outbox`.
    pub fn new(tracked: Tracked<ConnMsg<M>>, outbox: Arc<Outbox<M>>) -> Self {
        ConnMailbox { tracked, outbox }
    }

    /// Sends `msg`, counted: an application message through the outbox, anything else to the
    /// mailbox. An error (the connection actor is gone) gives the message back.
    #[inline]
    pub fn cast(&self, msg: ConnMsg<M>) -> Result<(), MessagingErr<ConnMsg<M>>> {
        match msg {
            ConnMsg::App(m) => self
                .post(m)
                .map_err(|Refused(m)| MessagingErr::SendErr(ConnMsg::App(m))),
            other => self.tracked.cast(other),
        }
    }

    /// Queues an application message for the connection actor. Refused (the message comes
    /// back) when the connection actor is gone.
    pub fn post(&self, msg: M) -> Result<(), Refused<M>> {
        let meter = self.tracked.meter();
        meter.on_send();
        let actor = self.tracked.actor();
        let r = self
            .outbox
            .post(msg, || actor.cast(ConnMsg::Outbox).is_ok());
        if r.is_err() {
            meter.unsend();
        }
        r
    }

    /// The connection actor.
    pub fn actor(&self) -> &ActorRef<ConnMsg<M>> {
        self.tracked.actor()
    }

    /// The connection actor's meter.
    pub fn meter(&self) -> &Arc<ActorMeter> {
        self.tracked.meter()
    }

    /// The connection's outbox (what a connection actor drains on [`ConnMsg::Outbox`]).
    pub fn outbox(&self) -> &Arc<Outbox<M>> {
        &self.outbox
    }
}

#[cfg(test)]
mod tests {
    use super::{Outbox, Refused};
    use std::cell::Cell;

    /// A consumer that counts its wake-ups and can be made to have gone away.
    struct Consumer {
        wakes: Cell<usize>,
        alive: Cell<bool>,
    }

    impl Consumer {
        fn new() -> Self {
            Consumer {
                wakes: Cell::new(0),
                alive: Cell::new(true),
            }
        }
        fn wake(&self) -> bool {
            self.wakes.set(self.wakes.get() + 1);
            self.alive.get()
        }
    }

    #[test]
    fn an_empty_drain_takes_nothing_and_wakes_nobody() {
        let (o, c) = (Outbox::<u32>::new(), Consumer::new());
        let mut got = Vec::new();
        o.drain(&mut got);
        assert!(got.is_empty());
        assert!(o.is_empty());
        assert_eq!(c.wakes.get(), 0);
    }

    #[test]
    fn one_post_wakes_once_and_is_drained() {
        let (o, c) = (Outbox::new(), Consumer::new());
        o.post(7, || c.wake()).unwrap();
        assert_eq!(c.wakes.get(), 1);
        assert_eq!(o.len(), 1);
        let mut got = Vec::new();
        o.drain(&mut got);
        assert_eq!(got, [7]);
        assert!(o.is_empty());
    }

    #[test]
    fn a_burst_shares_one_wake_up_and_keeps_its_order() {
        let (o, c) = (Outbox::new(), Consumer::new());
        for i in 0..3 {
            o.post(i, || c.wake()).unwrap();
        }
        assert_eq!(
            c.wakes.get(),
            1,
            "three posts before a drain share one wake-up"
        );
        let mut got = Vec::new();
        o.drain(&mut got);
        assert_eq!(got, [0, 1, 2]);
        // Each burst after a drain wakes the consumer once more.
        for burst in 1..=3u32 {
            for i in 0..1000 {
                o.post(burst * 1000 + i, || c.wake()).unwrap();
            }
            assert_eq!(c.wakes.get(), 1 + burst as usize);
            let mut got = Vec::new();
            o.drain(&mut got);
            assert_eq!(got, (burst * 1000..burst * 1000 + 1000).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_drain_appends_behind_what_the_caller_still_holds() {
        let (o, c) = (Outbox::new(), Consumer::new());
        let mut got = vec![1];
        o.post(2, || c.wake()).unwrap();
        o.post(3, || c.wake()).unwrap();
        o.drain(&mut got);
        assert_eq!(got, [1, 2, 3]);
        // An emptied buffer takes the next burst whole.
        got.clear();
        o.post(4, || c.wake()).unwrap();
        o.drain(&mut got);
        assert_eq!(got, [4]);
        assert_eq!(c.wakes.get(), 2);
    }

    #[test]
    fn a_consumer_gone_at_the_wake_up_refuses_the_post_and_every_later_one() {
        let (o, c) = (Outbox::new(), Consumer::new());
        c.alive.set(false);
        assert_eq!(o.post(1, || c.wake()), Err(Refused(1)));
        assert!(o.is_empty(), "a refused message is not kept");
        assert_eq!(o.post(2, || c.wake()), Err(Refused(2)));
        assert_eq!(c.wakes.get(), 1, "a closed outbox wakes nobody");
    }

    #[test]
    fn close_drops_what_waits_and_refuses_later_posts() {
        let (o, c) = (Outbox::new(), Consumer::new());
        let held = std::sync::Arc::new(());
        let o2 = Outbox::new();
        for _ in 0..3 {
            o2.post(held.clone(), || c.wake()).unwrap();
        }
        assert_eq!(std::sync::Arc::strong_count(&held), 4);
        assert_eq!(o2.close(), 3, "close counts what it dropped");
        assert_eq!(
            std::sync::Arc::strong_count(&held),
            1,
            "closing frees what was queued"
        );
        assert!(o2.post(held.clone(), || c.wake()).is_err());
        assert_eq!(std::sync::Arc::strong_count(&held), 1);
        // Closing an empty outbox, twice, is fine too.
        assert_eq!(o.close(), 0);
        assert_eq!(o.close(), 0);
        assert_eq!(o.post(5, || c.wake()), Err(Refused(5)));
        let mut got = Vec::new();
        o.drain(&mut got);
        assert!(got.is_empty());
    }

    /// A stand-in connection actor: records, in order, each mailbox message it handles and
    /// each burst it drains from the outbox.
    mod stand_in {
        use super::super::{ConnMailbox, Outbox};
        use crate::connection::ConnMsg;
        use crate::observe::{ActorKind, ActorMeter, Tracked};
        use ractor::{Actor, ActorProcessingErr, ActorRef};
        use std::sync::{Arc, Mutex};

        /// What the stand-in saw: `Burst(messages)` per outbox wake-up, `Timeout` for a
        /// mailbox message.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub(super) enum Seen {
            Burst(Vec<u32>),
            Direct(u32),
            Timeout,
        }

        pub(super) struct StandIn;

        pub(super) struct Args {
            pub(super) outbox: Arc<Outbox<u32>>,
            pub(super) seen: Arc<Mutex<Vec<Seen>>>,
            /// Held until released, so posts pile up while the actor is "busy".
            pub(super) gate: Arc<tokio::sync::Semaphore>,
        }

        impl Actor for StandIn {
            type Msg = ConnMsg<u32>;
            type State = Args;
            type Arguments = Args;

            async fn pre_start(
                &self,
                _: ActorRef<Self::Msg>,
                args: Args,
            ) -> Result<Args, ActorProcessingErr> {
                Ok(args)
            }

            async fn handle(
                &self,
                _: ActorRef<Self::Msg>,
                msg: Self::Msg,
                st: &mut Args,
            ) -> Result<(), ActorProcessingErr> {
                let _permit = st.gate.acquire().await?;
                let seen = match msg {
                    ConnMsg::Outbox => {
                        let mut batch = Vec::new();
                        st.outbox.drain(&mut batch);
                        Seen::Burst(batch)
                    }
                    ConnMsg::App(m) => Seen::Direct(m),
                    ConnMsg::Timeout => Seen::Timeout,
                    _ => return Ok(()),
                };
                st.seen.lock().unwrap().push(seen);
                Ok(())
            }
        }

        /// A running stand-in, its mailbox, what it saw and its gate (closed: it waits).
        pub(super) async fn start() -> (
            ConnMailbox<u32>,
            Arc<Mutex<Vec<Seen>>>,
            Arc<tokio::sync::Semaphore>,
            tokio::task::JoinHandle<()>,
        ) {
            let outbox = Arc::new(Outbox::new());
            let seen = Arc::new(Mutex::new(Vec::new()));
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            let (actor, handle) = Actor::spawn(
                None,
                StandIn,
                Args {
                    outbox: outbox.clone(),
                    seen: seen.clone(),
                    gate: gate.clone(),
                },
            )
            .await
            .unwrap();
            let meter = ActorMeter::new(ActorKind::Connection, crate::connection::CONN_MESSAGES);
            (
                ConnMailbox::new(Tracked::new(actor, meter), outbox),
                seen,
                gate,
                handle,
            )
        }
    }

    /// Polls `check` until it holds, failing after five seconds.
    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn a_burst_posted_while_the_actor_is_busy_arrives_as_one_wake_up_in_order() {
        use stand_in::Seen;
        let (mailbox, seen, gate, handle) = stand_in::start().await;
        // The actor waits at its gate before it drains: the first post's wake-up is in its
        // mailbox (or being handled), so the next two ride on it, one burst of three.
        for m in [1, 2, 3] {
            mailbox.post(m).unwrap();
        }
        assert_eq!(
            mailbox.meter().queued(),
            3,
            "each posted message is counted"
        );
        // A direct mailbox message after the posts: handled after the burst.
        mailbox.cast(crate::connection::ConnMsg::Timeout).unwrap();
        gate.add_permits(1000);
        until("the burst and the timeout", || {
            seen.lock().unwrap().len() >= 2
        })
        .await;
        assert_eq!(
            *seen.lock().unwrap(),
            [Seen::Burst(vec![1, 2, 3]), Seen::Timeout],
            "one wake-up for the burst, in order, before the later cast"
        );
        // The next post after a drain wakes the actor again; `cast` of an `App` takes the
        // outbox too.
        mailbox.cast(crate::connection::ConnMsg::App(4)).unwrap();
        until("the second burst", || seen.lock().unwrap().len() >= 3).await;
        assert_eq!(seen.lock().unwrap()[2], Seen::Burst(vec![4]));
        assert!(seen
            .lock()
            .unwrap()
            .iter()
            .all(|s| !matches!(s, Seen::Direct(_))));
        mailbox.actor().stop(None);
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn a_post_to_a_stopped_connection_is_refused_and_not_counted() {
        let (mailbox, _seen, gate, handle) = stand_in::start().await;
        gate.add_permits(1000);
        mailbox.actor().stop(None);
        handle.await.unwrap();
        let before = mailbox.meter().queued();
        assert_eq!(mailbox.post(9), Err(Refused(9)));
        assert_eq!(
            mailbox.meter().queued(),
            before,
            "a refused post is not counted"
        );
        assert!(
            mailbox.outbox().is_empty(),
            "nothing is kept for a gone actor"
        );
        // And every later post is refused without trying the actor again.
        assert!(matches!(
            mailbox.cast(crate::connection::ConnMsg::App(10)),
            Err(ractor::MessagingErr::SendErr(
                crate::connection::ConnMsg::App(10)
            ))
        ));
    }

    #[test]
    fn posts_from_many_threads_all_arrive_in_each_senders_order() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let o = Arc::new(Outbox::new());
        let wakes = Arc::new(AtomicUsize::new(0));
        let senders = 4;
        let per = 2000u32;
        let threads: Vec<_> = (0..senders)
            .map(|s| {
                let (o, wakes) = (o.clone(), wakes.clone());
                std::thread::spawn(move || {
                    for i in 0..per {
                        o.post((s, i), || {
                            wakes.fetch_add(1, Ordering::Relaxed);
                            true
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        let mut got = Vec::new();
        let mut drains = 0;
        while threads.iter().any(|t| !t.is_finished()) || !o.is_empty() {
            let before = got.len();
            o.drain(&mut got);
            drains += usize::from(got.len() > before);
        }
        for t in threads {
            t.join().unwrap();
        }
        o.drain(&mut got);
        assert_eq!(got.len(), (senders * per) as usize);
        for s in 0..senders {
            let mine: Vec<u32> = got.iter().filter(|m| m.0 == s).map(|m| m.1).collect();
            assert_eq!(
                mine,
                (0..per).collect::<Vec<_>>(),
                "sender {s} out of order"
            );
        }
        // Every wake-up announced a non-empty queue, and no drain that took something went
        // without a wake-up before it.
        let wakes = wakes.load(Ordering::Relaxed);
        assert!(
            wakes >= drains.max(1),
            "{wakes} wake-ups for {drains} drains"
        );
    }
}
