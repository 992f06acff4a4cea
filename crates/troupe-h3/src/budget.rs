//! The budget of unanswered requests an actor server ([`crate::Server::bind_actor`]) shares
//! among its connections: fairly, so one client holding many requests open cannot starve the
//! others.
//!
//! The policy ([`Ledger`], a pure type): a connection may take a place while the total is not
//! spent and it holds fewer than its fair share, `ceil(total / (active + 1))`, where `active`
//! counts the connections holding or waiting for places (the asking one included). The `+ 1`
//! keeps room for the next connection: even a client that never answers its requests holds at
//! most half the budget alone, so a newcomer is served at once. A connection over its share
//! (because others arrived) gets no new place until it is back under it, and freed places go
//! to the first waiter that is under its own.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The fair-share bookkeeping (see the module docs). `K` names a connection.
#[derive(Debug)]
pub(crate) struct Ledger<K> {
    total: usize,
    used: usize,
    held: HashMap<K, usize>,
    /// Waiters in arrival order: connection and ticket.
    waiting: VecDeque<(K, u64)>,
}

impl<K: Copy + Eq + Hash> Ledger<K> {
    pub(crate) fn new(total: usize) -> Self {
        Ledger {
            total,
            used: 0,
            held: HashMap::new(),
            waiting: VecDeque::new(),
        }
    }

    fn held(&self, k: K) -> usize {
        self.held.get(&k).copied().unwrap_or(0)
    }

    /// Connections holding or waiting for places, counting `asking` too.
    fn active(&self, asking: K) -> usize {
        let mut n = self.held.len();
        let mut seen: Vec<K> = Vec::new();
        for (k, _) in &self.waiting {
            if !self.held.contains_key(k) && !seen.contains(k) {
                seen.push(*k);
                n += 1;
            }
        }
        if !self.held.contains_key(&asking) && !seen.contains(&asking) {
            n += 1;
        }
        n
    }

    /// `k`'s fair share now: `ceil(total / (active + 1))`, at least 1.
    pub(crate) fn share(&self, k: K) -> usize {
        self.total.div_ceil(self.active(k) + 1).max(1)
    }

    /// Takes a place for `k` if the policy allows it now.
    pub(crate) fn try_take(&mut self, k: K) -> bool {
        if self.used < self.total && self.held(k) < self.share(k) {
            self.used += 1;
            *self.held.entry(k).or_insert(0) += 1;
            true
        } else {
            false
        }
    }

    /// `k` gave a place back.
    pub(crate) fn release(&mut self, k: K) {
        if let Some(h) = self.held.get_mut(&k) {
            *h -= 1;
            self.used -= 1;
            if *h == 0 {
                self.held.remove(&k);
            }
        }
    }

    /// `k` waits, with `ticket` to find it again.
    pub(crate) fn wait(&mut self, k: K, ticket: u64) {
        self.waiting.push_back((k, ticket));
    }

    /// A waiter gave up.
    pub(crate) fn cancel(&mut self, ticket: u64) {
        self.waiting.retain(|(_, t)| *t != ticket);
    }

    /// The first waiter the policy lets take a place now, with its place taken.
    pub(crate) fn next_grant(&mut self) -> Option<(K, u64)> {
        let i = (0..self.waiting.len()).find(|&i| {
            let k = self.waiting[i].0;
            self.used < self.total && self.held(k) < self.share(k)
        })?;
        let (k, t) = self.waiting.remove(i)?;
        self.used += 1;
        *self.held.entry(k).or_insert(0) += 1;
        Some((k, t))
    }

    /// Places in use.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used
    }
}

/// The budget behind an actor server: [`Ledger`] with waiting callers.
pub(crate) struct FairBudget<K> {
    inner: Mutex<Inner<K>>,
}

struct Inner<K> {
    ledger: Ledger<K>,
    next_ticket: u64,
    wakers: HashMap<u64, oneshot::Sender<()>>,
}

/// A place in the budget, given back when dropped.
pub(crate) struct FairPermit<K: Copy + Eq + Hash> {
    budget: Arc<FairBudget<K>>,
    key: K,
}

impl<K: Copy + Eq + Hash> Drop for FairPermit<K> {
    fn drop(&mut self) {
        self.budget.release(self.key);
    }
}

/// Cancels a wait that was dropped before its place came.
struct WaitGuard<K: Copy + Eq + Hash> {
    budget: Arc<FairBudget<K>>,
    key: K,
    ticket: Option<u64>,
}

impl<K: Copy + Eq + Hash> Drop for WaitGuard<K> {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket else { return };
        let mut g = self.budget.lock();
        g.ledger.cancel(ticket);
        if g.wakers.remove(&ticket).is_none() {
            // Granted while being dropped: the place was taken for us; give it back.
            drop(g);
            self.budget.release(self.key);
        }
    }
}

impl<K: Copy + Eq + Hash> FairBudget<K> {
    pub(crate) fn new(total: usize) -> Arc<Self> {
        Arc::new(FairBudget {
            inner: Mutex::new(Inner {
                ledger: Ledger::new(total),
                next_ticket: 0,
                wakers: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a place for connection `key`.
    ///
    /// Cancel safety: cancel-safe; a dropped wait leaves the queue (and a place granted at the
    /// same moment is given back).
    pub(crate) async fn acquire(self: &Arc<Self>, key: K) -> FairPermit<K> {
        let rx = {
            let mut g = self.lock();
            if g.ledger.try_take(key) {
                return FairPermit {
                    budget: self.clone(),
                    key,
                };
            }
            let ticket = g.next_ticket;
            g.next_ticket += 1;
            let (tx, rx) = oneshot::channel();
            g.wakers.insert(ticket, tx);
            g.ledger.wait(key, ticket);
            (rx, ticket)
        };
        let mut guard = WaitGuard {
            budget: self.clone(),
            key,
            ticket: Some(rx.1),
        };
        // The sender lives in `wakers` until a grant sends on it, so this only ends granted.
        let _ = rx.0.await;
        guard.ticket = None;
        FairPermit {
            budget: self.clone(),
            key,
        }
    }

    fn release(&self, key: K) {
        let mut g = self.lock();
        g.ledger.release(key);
        while let Some((k, ticket)) = g.ledger.next_grant() {
            let woken = g
                .wakers
                .remove(&ticket)
                .is_some_and(|tx| tx.send(()).is_ok());
            if !woken {
                // Its wait is being dropped: undo and try the next one.
                g.ledger.release(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_connections_and_an_empty_budget() {
        let mut l: Ledger<u8> = Ledger::new(0);
        assert!(!l.try_take(1));
        assert_eq!(l.next_grant(), None);
        l.release(1); // nothing held: no effect
        assert_eq!(l.used(), 0);
    }

    #[test]
    fn one_connection_alone_leaves_room_for_another() {
        let mut l = Ledger::new(4);
        assert!(l.try_take(1));
        assert!(l.try_take(1));
        assert!(!l.try_take(1), "alone, a connection holds at most half");
        // A newcomer is served at once, up to its own share (ceil(4 / 3) = 2).
        assert!(l.try_take(2));
        assert!(l.try_take(2));
        assert_eq!(l.used(), 4);
        // A third waits for the next freed place, which goes to it (under its share of 1),
        // not to a waiter of connection 1 (at its share).
        assert!(!l.try_take(3));
        l.wait(1, 10);
        l.wait(3, 11);
        l.release(1);
        assert_eq!(l.next_grant(), Some((3, 11)));
        assert_eq!(l.next_grant(), None);
    }

    #[test]
    fn three_connections_converge_to_equal_shares() {
        // A greedy connection takes what it can; two more arrive and keep asking; everyone
        // answers one request and asks again, in turn. Shares are ceil(9 / 4) = 3.
        let mut l = Ledger::new(9);
        let mut held = HashMap::from([(1, 0), (2, 0), (3, 0)]);
        while l.try_take(1) {
            *held.get_mut(&1).unwrap() += 1;
        }
        assert_eq!(held[&1], 5, "alone: ceil(9 / 2)");
        let mut ticket = 0;
        for k in [2, 3] {
            while l.try_take(k) {
                *held.get_mut(&k).unwrap() += 1;
            }
            l.wait(k, ticket);
            ticket += 1;
        }
        for round in 0..30 {
            let k = [1, 2, 3][round % 3];
            if held[&k] > 0 {
                l.release(k);
                *held.get_mut(&k).unwrap() -= 1;
            }
            while let Some((g, _)) = l.next_grant() {
                *held.get_mut(&g).unwrap() += 1;
                l.wait(g, ticket);
                ticket += 1;
            }
            if l.try_take(k) {
                *held.get_mut(&k).unwrap() += 1;
            }
        }
        assert_eq!(held, HashMap::from([(1, 3), (2, 3), (3, 3)]));
        assert_eq!(l.used(), 9);
    }

    #[test]
    fn a_cancelled_waiter_is_skipped() {
        let mut l = Ledger::new(1);
        assert!(l.try_take(1));
        l.wait(2, 7);
        l.wait(3, 8);
        l.cancel(7);
        l.release(1);
        assert_eq!(l.next_grant(), Some((3, 8)));
    }

    #[test]
    fn the_share_is_never_below_one() {
        let mut l = Ledger::new(2);
        assert_eq!(l.share(1), 1);
        assert!(l.try_take(1));
        for k in 2..10 {
            l.wait(k, k as u64);
        }
        // Nine connections for two places: every share rounds up to 1, never 0.
        assert_eq!(l.share(1), 1);
        assert!(!l.try_take(1));
        // A newcomer under its share takes the last place.
        assert!(l.try_take(20));
        assert_eq!(l.used(), 2);
        assert!(!l.try_take(21));
    }

    #[tokio::test]
    async fn waiting_callers_are_woken_fairly_and_cancel_cleanly() {
        let b: Arc<FairBudget<u8>> = FairBudget::new(2);
        let p1 = b.acquire(1).await;
        let p2 = b.acquire(2).await;
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.acquire(3).await });
        // A wait that is given up leaves no trace.
        let b3 = b.clone();
        let cancelled = tokio::spawn(async move { b3.acquire(4).await });
        cancelled.abort();
        let _ = cancelled.await;
        drop(p1);
        let p3 = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter was not woken")
            .unwrap();
        drop((p2, p3));
        assert_eq!(b.lock().ledger.used(), 0);
        assert!(b.lock().wakers.is_empty());
    }
}
