//! Parked stream actors, kept to serve later streams.
//!
//! A stream actor whose stream ended cleanly parks instead of stopping: it goes back to its
//! endpoint worker's [`ActorPool`], and the next stream any connection of that worker opens
//! takes it, so an actor's spawn and teardown are paid once for many streams, one stream at a
//! time. An actor that failed never comes back (it is dead), and one that had children (a
//! datagram flow) stops instead of parking.
//!
//! The pool is the worker's, not a connection's: the actor parked last is the one whose memory
//! is in cache, and with many connections each taking turns (50 connections of 10 streams),
//! a pool per connection would hand each stream an actor untouched since that connection's
//! previous turn. A parked actor is linked under no connection: the connection it served
//! unlinks it when it parks, and the one it serves next links it when it takes it, so the
//! live tree shows under each connection exactly the actors serving its streams, and the
//! parked ones as the endpoint's count. A connection that closes leaves the pool as it was.
//!
//! The policy ([`StreamPool`], a pure type):
//! - at most `max` parked actors; when full, the one parked longest ago stops;
//! - requests come in bursts (a client's whole window in one flight, then nothing for a round
//!   trip), so the pool is not sized by the streams open at one instant but by use over an
//!   interval: every [`TRIM_INTERVAL`] it stops the actors that sat parked through the whole
//!   interval before (as many as the fewest parked at any moment of it: the oldest, since the
//!   newest are taken first), keeping at least [`SPARE`]. A busy worker keeps as many as its
//!   streams in flight at their peak, not as many as it served; one that went quiet is down to
//!   [`SPARE`] within two intervals (an idle actor costs about 8 KB).
//!
//! A client endpoint has one pool for all its connections, as a server worker has.
//!
//! Lifetime: the endpoint stopping closes every pool of its server ([`ServerPools::close`]):
//! the parked actors stop, and an actor that parks later stops at once. A pool dropped
//! unclosed (a client endpoint's, once it and its connections are gone) stops its actors too.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use ractor::ActorCell;
use troupe_transport::Tracked;

use crate::stream::StreamMsg;

use std::collections::VecDeque;
use std::time::Duration;

/// Parked actors a quiet worker keeps: enough for a client that sends one request at a time,
/// or a small burst, without a spawn.
pub(crate) const SPARE: usize = 2;

/// How often a pool with more than [`SPARE`] parked actors is trimmed. One second: long
/// against the gaps between bursts of a client (round trips), short against how long a server
/// goes quiet.
pub(crate) const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Parked stream actors (the policy, without the actors): the most recently parked is taken
/// first (its memory is the most likely to be in cache), the one parked longest ago goes first.
#[derive(Debug)]
pub(crate) struct StreamPool<T> {
    idle: VecDeque<T>,
    max: usize,
    /// The fewest parked at any moment since the interval began: that many, the oldest, were
    /// not needed in it.
    low: usize,
}

impl<T> StreamPool<T> {
    /// A pool that never holds more than `max` actors (0: no reuse).
    pub(crate) fn new(max: usize) -> Self {
        StreamPool {
            idle: VecDeque::new(),
            max,
            low: 0,
        }
    }

    /// The most recently parked actor, if any.
    pub(crate) fn take(&mut self) -> Option<T> {
        let a = self.idle.pop_back();
        self.low = self.low.min(self.idle.len());
        a
    }

    /// Keeps `actor` for a later stream. Returns the actor that must stop when the pool is
    /// full: the one parked longest ago (`actor` itself when `max` is 0).
    #[must_use = "the actor returned must be stopped"]
    pub(crate) fn put(&mut self, actor: T) -> Option<T> {
        if self.max == 0 {
            return Some(actor);
        }
        self.idle.push_back(actor);
        if self.idle.len() > self.max {
            self.idle.pop_front()
        } else {
            None
        }
    }

    /// Whether the pool holds more than a quiet worker keeps (a trim is due in
    /// [`TRIM_INTERVAL`]).
    pub(crate) fn needs_trim(&self) -> bool {
        self.idle.len() > SPARE
    }

    /// An interval begins (the trim timer is armed): what is parked now is what it may find
    /// unused at its end.
    pub(crate) fn start_interval(&mut self) {
        self.low = self.idle.len();
    }

    /// A trim, at the end of an interval: stops the actors parked through all of it (the
    /// oldest), keeping at least [`SPARE`], and begins the next interval; returns the ones
    /// that must stop.
    #[must_use = "the actors returned must be stopped"]
    pub(crate) fn trim(&mut self) -> Vec<T> {
        let excess = self.low.min(self.idle.len()).saturating_sub(SPARE);
        let stop = self.idle.drain(..excess).collect();
        self.start_interval();
        stop
    }

    /// Everything parked (the pool is closing).
    pub(crate) fn drain(&mut self) -> Vec<T> {
        self.low = 0;
        self.idle.drain(..).collect()
    }

    /// Parked actors now.
    pub(crate) fn len(&self) -> usize {
        self.idle.len()
    }
}

/// Whether a pool takes actors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolStage {
    /// Parking and taking.
    Open,
    /// Its endpoint stopped: nothing is kept, an actor that parks stops.
    Closed,
}

/// The pool's trim timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrimTimer {
    /// None pending.
    Idle,
    /// A trim runs within [`TRIM_INTERVAL`].
    Armed,
}

struct PoolState {
    idle: StreamPool<Tracked<StreamMsg>>,
    stage: PoolStage,
    trim: TrimTimer,
}

/// One endpoint worker's parked stream actors (a client endpoint has one for all its
/// connections).
///
/// Shared by the worker's connections, which all run on the worker's runtime; the lock is held
/// only to push or pop, never across linking, stopping or an await.
pub(crate) struct ActorPool {
    state: Mutex<PoolState>,
}

impl ActorPool {
    /// A pool that never holds more than `max` actors (0: no reuse).
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(ActorPool {
            state: Mutex::new(PoolState {
                idle: StreamPool::new(max),
                stage: PoolStage::Open,
                trim: TrimTimer::Idle,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // Nothing panics while holding it; a poisoned pool is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The actor parked last, linked under `supervisor` (the connection whose stream it will
    /// serve), if any. An actor that cannot be linked (it is stopping, or the connection's
    /// children are being stopped) must not serve a stream unsupervised: it stops, and the
    /// caller gets none.
    pub(crate) fn take(&self, supervisor: &ActorCell) -> Option<Tracked<StreamMsg>> {
        let actor = self.lock().idle.take()?;
        let cell = actor.actor().get_cell();
        cell.link(supervisor.clone());
        let linked = cell
            .try_get_supervisor()
            .is_some_and(|s| s.get_id() == supervisor.get_id());
        if linked {
            Some(actor)
        } else {
            actor.actor().stop(None);
            None
        }
    }

    /// Parks `actor`, unlinking it from `supervisor` (the connection whose stream it served):
    /// kept for a later stream, or stopped (the pool is full, or closed). Arms the trim when
    /// the pool holds more than a quiet worker keeps; the trim runs on the caller's runtime.
    pub(crate) fn put(self: &Arc<Self>, actor: Tracked<StreamMsg>, supervisor: &ActorCell) {
        actor.actor().get_cell().unlink(supervisor.clone());
        let (stop, arm) = {
            let mut st = self.lock();
            let stop = match st.stage {
                PoolStage::Open => st.idle.put(actor),
                PoolStage::Closed => Some(actor),
            };
            let arm = st.trim == TrimTimer::Idle && st.idle.needs_trim();
            if arm {
                st.trim = TrimTimer::Armed;
                st.idle.start_interval();
            }
            (stop, arm)
        };
        if let Some(a) = stop {
            a.actor().stop(None);
        }
        if arm {
            self.arm_trim();
        }
    }

    fn arm_trim(self: &Arc<Self>) {
        let pool: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(TRIM_INTERVAL).await;
            if let Some(p) = pool.upgrade() {
                p.trim();
            }
        });
    }

    /// The timed trim (see [`StreamPool::trim`]); re-arms while the pool holds more than a
    /// quiet worker keeps.
    fn trim(self: &Arc<Self>) {
        let (stop, arm) = {
            let mut st = self.lock();
            let stop = st.idle.trim();
            let arm = st.stage == PoolStage::Open && st.idle.needs_trim();
            st.trim = if arm {
                TrimTimer::Armed
            } else {
                TrimTimer::Idle
            };
            (stop, arm)
        };
        for a in stop {
            a.actor().stop(None);
        }
        if arm {
            self.arm_trim();
        }
    }

    /// Stops every parked actor, and every actor that parks from now on.
    pub(crate) fn close(&self) {
        let stop = {
            let mut st = self.lock();
            st.stage = PoolStage::Closed;
            st.idle.drain()
        };
        for a in stop {
            a.actor().stop(None);
        }
    }

    /// Parked actors now.
    pub(crate) fn len(&self) -> usize {
        self.lock().idle.len()
    }
}

impl Drop for ActorPool {
    fn drop(&mut self) {
        self.close();
    }
}

/// A server's pools, one per endpoint worker.
pub(crate) struct ServerPools {
    pools: Vec<Arc<ActorPool>>,
}

impl ServerPools {
    /// `workers` pools (at least one) of at most `max` actors each.
    pub(crate) fn new(workers: usize, max: usize) -> Self {
        ServerPools {
            pools: (0..workers.max(1)).map(|_| ActorPool::new(max)).collect(),
        }
    }

    /// Worker `worker`'s pool (the endpoint numbers its workers below the count it was given;
    /// a number past it wraps rather than fails).
    pub(crate) fn for_worker(&self, worker: usize) -> Arc<ActorPool> {
        self.pools[worker % self.pools.len()].clone()
    }

    /// Parked actors in all the workers' pools.
    pub(crate) fn parked(&self) -> usize {
        self.pools.iter().map(|p| p.len()).sum()
    }

    /// Closes every worker's pool (see [`ActorPool::close`]).
    pub(crate) fn close(&self) {
        for p in &self.pools {
            p.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_max_keeps_nothing() {
        let mut p = StreamPool::new(0);
        assert_eq!(p.put(1), Some(1));
        assert_eq!(p.len(), 0);
        assert_eq!(p.take(), None);
        assert!(!p.needs_trim());
        assert!(p.trim().is_empty());
    }

    #[test]
    fn an_empty_pool_gives_nothing() {
        let mut p: StreamPool<u32> = StreamPool::new(8);
        assert_eq!(p.take(), None);
        assert!(p.trim().is_empty());
        assert!(p.drain().is_empty());
    }

    #[test]
    fn one_actor_comes_back() {
        let mut p = StreamPool::new(8);
        assert_eq!(p.put(7), None);
        assert_eq!(p.take(), Some(7));
        assert_eq!(p.take(), None);
    }

    #[test]
    fn the_last_parked_is_the_first_out() {
        let mut p = StreamPool::new(8);
        for a in 1..=3 {
            assert_eq!(p.put(a), None);
        }
        assert_eq!(p.take(), Some(3));
        assert_eq!(p.take(), Some(2));
        assert_eq!(p.take(), Some(1));
    }

    #[test]
    fn when_full_the_oldest_goes() {
        let mut p = StreamPool::new(3);
        for a in 0..3 {
            assert_eq!(p.put(a), None);
        }
        assert_eq!(p.put(3), Some(0));
        assert_eq!(p.len(), 3);
        assert_eq!(p.drain(), vec![1, 2, 3]);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn a_quiet_worker_is_trimmed_to_the_spare() {
        let mut p = StreamPool::new(64);
        for a in 0..10 {
            assert_eq!(p.put(a), None);
        }
        assert!(p.needs_trim());
        p.start_interval();
        // Nothing was taken in the interval: the oldest eight go.
        assert_eq!(p.trim(), (0..8).collect::<Vec<_>>());
        assert_eq!(p.len(), SPARE);
        assert!(!p.needs_trim());
        assert_eq!(p.take(), Some(9));
    }

    #[test]
    fn a_busy_worker_keeps_what_it_used() {
        let mut p = StreamPool::new(64);
        // A burst of 50 streams, twice: the second takes the first's actors.
        for a in 0..50 {
            assert_eq!(p.put(a), None);
        }
        p.start_interval();
        for _ in 0..50 {
            assert!(p.take().is_some());
        }
        for a in 0..50 {
            assert_eq!(p.put(a), None);
        }
        assert!(p.trim().is_empty(), "50 were in use at once: 50 stay");
        assert_eq!(p.len(), 50);
        // The load ends: the next trim leaves the spare only.
        assert_eq!(p.trim().len(), 50 - SPARE);
        assert_eq!(p.len(), SPARE);
    }

    #[test]
    fn a_trim_keeps_what_was_in_use_at_the_peak_not_what_was_served() {
        let mut p = StreamPool::new(64);
        for a in 0..20 {
            assert_eq!(p.put(a), None);
        }
        p.start_interval();
        // Five streams one after another: one actor in use at a time.
        for _ in 0..5 {
            let a = p.take().unwrap();
            assert_eq!(p.put(a), None);
        }
        // Then three at once.
        let three: Vec<_> = (0..3).map(|_| p.take().unwrap()).collect();
        for a in three {
            assert_eq!(p.put(a), None);
        }
        // 17 sat parked through the interval: all but the spare two stop, the oldest first.
        assert_eq!(p.trim(), (0..15).collect::<Vec<_>>());
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn a_trim_without_a_begun_interval_or_after_a_drain_stops_nothing_it_did_not_see() {
        let mut p = StreamPool::new(8);
        for a in 0..8 {
            assert_eq!(p.put(a), None);
        }
        // No interval began: nothing was seen unused.
        assert!(p.trim().is_empty());
        // The trim began one: a quiet one stops all but the spare.
        assert_eq!(p.trim().len(), 6);
        assert_eq!(p.drain().len(), 2);
        assert_eq!(p.put(9), None);
        assert!(p.trim().is_empty());
    }

    /// A parent to link under, as a connection would be (an idle actor will do).
    async fn parent() -> ractor::ActorRef<StreamMsg> {
        crate::test_actors::sink().await
    }

    async fn idle_actor(parent: &ActorCell) -> Tracked<StreamMsg> {
        let (a, _) = ractor::Actor::spawn_linked(
            None,
            crate::test_actors::Sink::<StreamMsg>::new(),
            (),
            parent.clone(),
        )
        .await
        .unwrap();
        let meter = troupe_transport::ActorMeter::new(troupe_transport::ActorKind::Stream, &[]);
        Tracked::new(a, meter)
    }

    async fn stopped(a: &Tracked<StreamMsg>) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if a.actor().get_status() == ractor::ActorStatus::Stopped {
                return true;
            }
            tokio::task::yield_now().await;
        }
        false
    }

    #[tokio::test]
    async fn a_parked_actor_moves_from_one_parent_to_the_next_through_its_workers_pool() {
        let one = parent().await;
        let two = parent().await;
        let pools = ServerPools::new(2, 8);
        let (w0, w1) = (pools.for_worker(0), pools.for_worker(1));
        assert!(
            Arc::ptr_eq(&w0, &pools.for_worker(0)),
            "one pool per worker"
        );
        assert!(!Arc::ptr_eq(&w0, &w1));
        let a = idle_actor(&one.get_cell()).await;
        assert_eq!(one.get_children().len(), 1);
        w0.put(a.clone(), &one.get_cell());
        assert!(one.get_children().is_empty(), "parked under no parent");
        assert_eq!((w0.len(), w1.len(), pools.parked()), (1, 0, 1));
        assert!(w1.take(&two.get_cell()).is_none(), "another worker's pool");
        let b = w0.take(&two.get_cell()).unwrap();
        assert_eq!(b.actor().get_id(), a.actor().get_id());
        assert_eq!(
            two.get_children().len(),
            1,
            "linked under the one that took it"
        );
        assert_eq!(pools.parked(), 0);
        one.stop(None);
        two.stop(None);
    }

    #[tokio::test]
    async fn closing_stops_the_parked_actors_and_any_that_park_later() {
        let parent = parent().await;
        let cell = parent.get_cell();
        let pools = ServerPools::new(2, 8);
        let w0 = pools.for_worker(0);
        let mut parked = Vec::new();
        for _ in 0..3 {
            let a = idle_actor(&cell).await;
            w0.put(a.clone(), &cell);
            parked.push(a);
        }
        assert_eq!(pools.parked(), 3);
        pools.close();
        assert_eq!(pools.parked(), 0);
        for a in &parked {
            assert!(stopped(a).await);
        }
        let late = idle_actor(&cell).await;
        w0.put(late.clone(), &cell);
        assert!(stopped(&late).await, "parked after the close");
        // Every worker's pool closed.
        let later = idle_actor(&cell).await;
        pools.for_worker(1).put(later.clone(), &cell);
        assert!(stopped(&later).await);
        assert_eq!(pools.parked(), 0);
        parent.stop(None);
    }

    #[tokio::test]
    async fn a_full_pool_stops_the_actor_parked_longest_ago_and_a_dropped_one_stops_all() {
        let parent = parent().await;
        let cell = parent.get_cell();
        let pool = ActorPool::new(2);
        let mut parked = Vec::new();
        for _ in 0..3 {
            let a = idle_actor(&cell).await;
            pool.put(a.clone(), &cell);
            parked.push(a);
        }
        assert_eq!(pool.len(), 2);
        assert!(stopped(&parked[0]).await, "the oldest goes when full");
        drop(pool);
        assert!(stopped(&parked[1]).await && stopped(&parked[2]).await);
        parent.stop(None);
    }
}
