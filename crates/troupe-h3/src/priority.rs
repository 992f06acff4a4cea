//! Extensible priorities (RFC 9218): the `priority` field and PRIORITY_UPDATE frames.
//!
//! A server request carries a [`PrioritySignal`] (in the [`crate::StreamControl`] among its
//! extensions): the client's current priority for the stream, from the request's `priority`
//! header and then from each PRIORITY_UPDATE frame (the latest wins). The connection applies
//! that priority to quiche's stream scheduler. A handler may set the response's own priority
//! by putting a [`Priority`] in the response's extensions; it is applied when the response
//! starts and sent as the response's `priority` header.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// The lowest urgency value (least urgent) RFC 9218 §4.1 allows.
pub const URGENCY_MAX: u8 = 7;

/// An RFC 9218 priority: urgency 0 (most urgent) to 7, and whether the response may be
/// interleaved with others of the same urgency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Priority {
    /// 0..=7, lower is more urgent.
    pub urgency: u8,
    /// Whether bytes of this response can be interleaved with others of the same urgency.
    pub incremental: bool,
}

impl Priority {
    /// RFC 9218 §4's defaults for a request that signals nothing: urgency 3, not incremental.
    pub const REQUEST_DEFAULT: Priority = Priority {
        urgency: 3,
        incremental: false,
    };

    /// What a response gets when its handler sets nothing and the client signalled nothing:
    /// urgency 3, incremental, so concurrent responses of equal urgency share the connection
    /// instead of running one after another (tokio-quiche's default too).
    pub const RESPONSE_DEFAULT: Priority = Priority {
        urgency: 3,
        incremental: true,
    };

    /// A priority; an urgency above 7 is clamped to 7 (RFC 9218 §4.1).
    pub fn new(urgency: u8, incremental: bool) -> Self {
        Priority {
            urgency: urgency.min(URGENCY_MAX),
            incremental,
        }
    }

    /// Parses a `priority` field value or PRIORITY_UPDATE payload (a Structured Fields
    /// Dictionary). Per RFC 9218 §4, unknown parameters are ignored, omitted ones take their
    /// defaults, and an out-of-range or mistyped `u` is ignored; a value that is not a valid
    /// dictionary yields `None` (the field is ignored as a whole).
    pub fn parse(value: &[u8]) -> Option<Priority> {
        let mut p = Priority::REQUEST_DEFAULT;
        let mut parser = sfparse::Parser::new(value);
        loop {
            match parser.parse_dict() {
                Ok(None) => return Some(p),
                Ok(Some(("u", sfparse::Value::Integer(u)))) if (0..=7).contains(&u) => {
                    p.urgency = u as u8
                }
                Ok(Some(("i", sfparse::Value::Bool(i)))) => p.incremental = i,
                Ok(Some(_)) => {}
                Err(_) => return None,
            }
        }
    }

    /// The field value: `u=N` and `, i` when incremental (defaults are still written: the
    /// response default differs from the request default).
    pub fn to_field_value(self) -> String {
        if self.incremental {
            format!("u={}, i", self.urgency)
        } else {
            format!("u={}", self.urgency)
        }
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::REQUEST_DEFAULT
    }
}

#[derive(Debug)]
struct PriorityState {
    current: Priority,
    /// Bumped by every update, so a watcher knows what it has seen.
    version: u64,
    /// The stream is gone: no update will come.
    closed: bool,
    /// Someone has waited in `changed()`: only then do updates and the close notify.
    watched: bool,
}

/// One request's priority, shared by the connection (writer) and the application's
/// [`PrioritySignal`]s. A small mutex and one `Notify`: cheaper per stream than a watch
/// channel, and only an update (rare) or the stream's end wakes anyone.
#[derive(Debug)]
pub(crate) struct PriorityCell {
    state: Mutex<PriorityState>,
    notify: Notify,
}

impl PriorityCell {
    /// The cell for a request whose client signalled `signalled` (`None`: nothing, and the
    /// RFC 9218 defaults stand).
    pub(crate) fn new(signalled: Option<Priority>) -> Arc<Self> {
        Arc::new(PriorityCell {
            state: Mutex::new(PriorityState {
                current: signalled.unwrap_or(Priority::REQUEST_DEFAULT),
                version: 0,
                closed: false,
                watched: false,
            }),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PriorityState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The client sent a PRIORITY_UPDATE.
    pub(crate) fn set(&self, p: Priority) {
        let watched = {
            let mut s = self.lock();
            s.current = p;
            s.version += 1;
            s.watched
        };
        if watched {
            self.notify.notify_waiters();
        }
    }

    /// The stream is gone.
    pub(crate) fn close(&self) {
        let watched = {
            let mut s = self.lock();
            s.closed = true;
            s.watched
        };
        if watched {
            self.notify.notify_waiters();
        }
    }
}

/// The client's current priority for one request, as the server sees it: the request's
/// `priority` header, then the latest PRIORITY_UPDATE. Every server request has one:
/// [`crate::StreamControl::priority_signal`] on the [`crate::StreamControl`] in its
/// extensions.
#[derive(Debug, Clone)]
pub struct PrioritySignal {
    cell: Arc<PriorityCell>,
    seen: u64,
}

impl PrioritySignal {
    pub(crate) fn new(cell: Arc<PriorityCell>) -> Self {
        PrioritySignal { cell, seen: 0 }
    }

    /// The latest priority the client signalled (RFC 9218 defaults if it signalled none).
    pub fn current(&self) -> Priority {
        self.cell.lock().current
    }

    /// Waits for the client's next PRIORITY_UPDATE (one this handle has not returned yet)
    /// and returns the new priority; `None` once the stream is gone.
    ///
    /// Cancel safety: cancel-safe; an update that arrives while no one waits is returned by
    /// the next call (and shown by [`PrioritySignal::current`]).
    pub async fn changed(&mut self) -> Option<Priority> {
        loop {
            let notified = self.cell.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so an update between the two is not missed.
            notified.as_mut().enable();
            {
                let mut s = self.cell.lock();
                s.watched = true;
                if s.version != self.seen {
                    self.seen = s.version;
                    return Some(s.current);
                }
                if s.closed {
                    return None;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc9218_examples() {
        assert_eq!(Priority::parse(b"u=5, i"), Some(Priority::new(5, true)));
        assert_eq!(Priority::parse(b"u=0"), Some(Priority::new(0, false)));
        assert_eq!(Priority::parse(b"i"), Some(Priority::new(3, true)));
        assert_eq!(Priority::parse(b"i=?0"), Some(Priority::new(3, false)));
        assert_eq!(Priority::parse(b""), Some(Priority::REQUEST_DEFAULT));
        // Unknown parameters are ignored; an out-of-range urgency is ignored.
        assert_eq!(Priority::parse(b"u=2, x=1"), Some(Priority::new(2, false)));
        assert_eq!(Priority::parse(b"u=9"), Some(Priority::REQUEST_DEFAULT));
        assert_eq!(Priority::parse(b"u=\"1\""), Some(Priority::REQUEST_DEFAULT));
        // Not a dictionary.
        assert_eq!(Priority::parse(b"u=1,,"), None);
    }

    #[test]
    fn field_value_round_trips() {
        for u in 0..=7 {
            for i in [false, true] {
                let p = Priority::new(u, i);
                assert_eq!(Priority::parse(p.to_field_value().as_bytes()), Some(p));
            }
        }
        assert_eq!(Priority::new(200, false).urgency, 7);
    }
}
