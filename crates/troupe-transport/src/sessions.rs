//! TLS session tickets a client endpoint keeps per server name, so that a second connection to
//! a server resumes its session (a shorter handshake). 0-RTT stays off: only the handshake is
//! shortened, no request is sent before it completes.

use std::sync::Arc;

use dashmap::DashMap;

/// Server names whose tickets are kept at most; past it an arbitrary one is dropped. 256: a
/// client endpoint talks to a handful of servers; the bound keeps a crawler's memory flat.
const MAX_SESSIONS: usize = 256;

/// Session tickets by server name.
#[derive(Debug, Default, Clone)]
pub(crate) struct SessionCache(Arc<DashMap<String, Vec<u8>>>);

impl SessionCache {
    /// The ticket for `server_name`, if one was kept.
    pub(crate) fn get(&self, server_name: &str) -> Option<Vec<u8>> {
        self.0.get(server_name).map(|t| t.clone())
    }

    /// Where one connection keeps the ticket it gets for `server_name`.
    pub(crate) fn slot(&self, server_name: &str) -> SessionSlot {
        SessionSlot {
            cache: self.clone(),
            server_name: server_name.to_string(),
            kept: Vec::new(),
        }
    }

    fn insert(&self, server_name: &str, ticket: &[u8]) {
        if self.0.len() >= MAX_SESSIONS && !self.0.contains_key(server_name) {
            let victim = self.0.iter().next().map(|e| e.key().clone());
            if let Some(v) = victim {
                self.0.remove(&v);
            }
        }
        self.0.insert(server_name.to_string(), ticket.to_vec());
    }
}

/// One connection's place in the [`SessionCache`].
#[derive(Debug)]
pub(crate) struct SessionSlot {
    cache: SessionCache,
    server_name: String,
    /// The ticket last kept, so an unchanged one is not copied again.
    kept: Vec<u8>,
}

impl SessionSlot {
    /// Keeps `ticket` if it is new.
    pub(crate) fn keep(&mut self, ticket: &[u8]) {
        if self.kept != ticket {
            self.kept = ticket.to_vec();
            self.cache.insert(&self.server_name, ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_kept_per_name_and_bounded() {
        let c = SessionCache::default();
        assert_eq!(c.get("a"), None);
        let mut slot = c.slot("a");
        slot.keep(b"t1");
        assert_eq!(c.get("a").as_deref(), Some(&b"t1"[..]));
        slot.keep(b"t2");
        assert_eq!(c.get("a").as_deref(), Some(&b"t2"[..]));
        for i in 0..MAX_SESSIONS + 10 {
            c.slot(&format!("host{i}")).keep(b"x");
        }
        assert_eq!(c.0.len(), MAX_SESSIONS);
    }
}
