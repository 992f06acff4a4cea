//! The per-direction state machines of one request stream, free of I/O so they are unit-tested
//! without sockets. The stream actor holds one [`SendState`] and one [`RecvState`]; the actor
//! stops exactly when both are terminal.

/// Our sending direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendState {
    /// Nothing handed to the connection yet (a server's handler is still running).
    Idle,
    /// Server: interim (1xx) responses handed over; the final response is still to come.
    Informational,
    /// Headers handed over; body bytes flow. `inflight` = bytes handed to the connection and
    /// not yet written into quiche.
    Open {
        /// Bytes handed over, not yet written.
        inflight: usize,
    },
    /// FIN handed to the connection, not yet written into quiche.
    FinQueued {
        /// Bytes handed over, not yet written.
        inflight: usize,
    },
    /// FIN written: the direction is done.
    FinSent,
    /// We reset the stream (RESET_STREAM) with this code.
    ResetSent(u64),
    /// The peer asked us to stop (STOP_SENDING) with this code; quiche resets for us.
    Stopped(u64),
}

/// Our receiving direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvState {
    /// A client waiting for the response headers.
    AwaitingHeaders,
    /// Body bytes may arrive.
    Open,
    /// The peer's FIN arrived: the direction is done.
    FinReceived,
    /// The peer reset the stream (RESET_STREAM) with this code.
    ResetReceived(u64),
    /// We asked the peer to stop (STOP_SENDING) with this code.
    StopSendingSent(u64),
}

/// An event that is not allowed in the current state (a bug or a peer violation); the
/// transition is refused and the state is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

impl SendState {
    /// The state's name, for the live tree.
    pub fn name(self) -> &'static str {
        match self {
            SendState::Idle => "idle",
            SendState::Informational => "informational",
            SendState::Open { .. } => "open",
            SendState::FinQueued { .. } => "fin_queued",
            SendState::FinSent => "fin_sent",
            SendState::ResetSent(_) => "reset_sent",
            SendState::Stopped(_) => "stopped",
        }
    }

    /// How the direction ended, once it did.
    pub fn end(self) -> Option<crate::audit::StreamEnd> {
        use crate::audit::StreamEnd;
        match self {
            SendState::FinSent => Some(StreamEnd::Fin),
            SendState::ResetSent(c) => Some(StreamEnd::ResetSent(c)),
            SendState::Stopped(c) => Some(StreamEnd::StopSendingReceived(c)),
            _ => None,
        }
    }

    /// Whether the direction is finished.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SendState::FinSent | SendState::ResetSent(_) | SendState::Stopped(_)
        )
    }

    /// Whether body bytes may still be handed to the connection.
    pub fn can_send(self) -> bool {
        matches!(
            self,
            SendState::Idle | SendState::Informational | SendState::Open { .. }
        )
    }

    /// An interim (1xx) response was handed over; allowed only before the final response.
    pub fn on_interim(&mut self) -> Result<(), Refused> {
        match *self {
            SendState::Idle | SendState::Informational => {
                *self = SendState::Informational;
                Ok(())
            }
            _ => Err(Refused),
        }
    }

    /// Headers (and perhaps body bytes) were handed over; with `fin` the direction ends there.
    pub fn on_handed(&mut self, bytes: usize, fin: bool) -> Result<(), Refused> {
        let inflight = match *self {
            SendState::Idle | SendState::Informational => 0,
            SendState::Open { inflight } => inflight,
            _ => return Err(Refused),
        } + bytes;
        *self = if fin {
            SendState::FinQueued { inflight }
        } else {
            SendState::Open { inflight }
        };
        Ok(())
    }

    /// The connection wrote `bytes` into quiche, and the FIN if `fin`.
    pub fn on_written(&mut self, bytes: usize, fin: bool) -> Result<(), Refused> {
        match *self {
            SendState::Open { inflight } if !fin && bytes <= inflight => {
                *self = SendState::Open {
                    inflight: inflight - bytes,
                };
                Ok(())
            }
            // The FIN is written only with the last byte: everything handed is then written.
            SendState::FinQueued { inflight }
                if bytes == inflight || (!fin && bytes < inflight) =>
            {
                *self = if fin {
                    SendState::FinSent
                } else {
                    SendState::FinQueued {
                        inflight: inflight - bytes,
                    }
                };
                Ok(())
            }
            _ => Err(Refused),
        }
    }

    /// Bytes handed over and not yet written.
    pub fn inflight(self) -> usize {
        match self {
            SendState::Open { inflight } | SendState::FinQueued { inflight } => inflight,
            _ => 0,
        }
    }

    /// We reset the direction. Refused once it is terminal: nothing is sent after FIN or RESET.
    pub fn on_reset(&mut self, code: u64) -> Result<(), Refused> {
        if self.is_terminal() {
            return Err(Refused);
        }
        *self = SendState::ResetSent(code);
        Ok(())
    }

    /// The peer sent STOP_SENDING. After our FIN was written it changes nothing.
    pub fn on_stop_sending(&mut self, code: u64) -> Result<(), Refused> {
        if self.is_terminal() {
            return Err(Refused);
        }
        *self = SendState::Stopped(code);
        Ok(())
    }
}

impl RecvState {
    /// The state's name, for the live tree.
    pub fn name(self) -> &'static str {
        match self {
            RecvState::AwaitingHeaders => "awaiting_headers",
            RecvState::Open => "open",
            RecvState::FinReceived => "fin_received",
            RecvState::ResetReceived(_) => "reset_received",
            RecvState::StopSendingSent(_) => "stop_sending_sent",
        }
    }

    /// How the direction ended, once it did.
    pub fn end(self) -> Option<crate::audit::StreamEnd> {
        use crate::audit::StreamEnd;
        match self {
            RecvState::FinReceived => Some(StreamEnd::Fin),
            RecvState::ResetReceived(c) => Some(StreamEnd::ResetReceived(c)),
            RecvState::StopSendingSent(c) => Some(StreamEnd::StopSendingSent(c)),
            _ => None,
        }
    }

    /// Whether the direction is finished.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RecvState::FinReceived | RecvState::ResetReceived(_) | RecvState::StopSendingSent(_)
        )
    }

    /// Response headers arrived (client).
    pub fn on_headers(&mut self, fin: bool) -> Result<(), Refused> {
        if *self != RecvState::AwaitingHeaders {
            return Err(Refused);
        }
        *self = if fin {
            RecvState::FinReceived
        } else {
            RecvState::Open
        };
        Ok(())
    }

    /// Body bytes arrived; accepted only while open.
    pub fn on_data(self) -> Result<(), Refused> {
        if self == RecvState::Open {
            Ok(())
        } else {
            Err(Refused)
        }
    }

    /// The peer's FIN arrived.
    pub fn on_fin(&mut self) -> Result<(), Refused> {
        if *self != RecvState::Open {
            return Err(Refused);
        }
        *self = RecvState::FinReceived;
        Ok(())
    }

    /// The peer reset the stream.
    pub fn on_reset(&mut self, code: u64) -> Result<(), Refused> {
        if !matches!(self, RecvState::Open | RecvState::AwaitingHeaders) {
            return Err(Refused);
        }
        *self = RecvState::ResetReceived(code);
        Ok(())
    }

    /// We ask the peer to stop sending.
    pub fn on_stop_sending(&mut self, code: u64) -> Result<(), Refused> {
        if !matches!(self, RecvState::Open | RecvState::AwaitingHeaders) {
            return Err(Refused);
        }
        *self = RecvState::StopSendingSent(code);
        Ok(())
    }
}

/// Decides when the stream actor stops: exactly once, the first time both directions are
/// terminal (the actor asks ractor to stop then; later turns must not ask again).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StopLatch {
    fired: bool,
}

impl StopLatch {
    /// Whether the actor must stop now.
    pub fn check(&mut self, send: SendState, recv: RecvState) -> bool {
        if !self.fired && send.is_terminal() && recv.is_terminal() {
            self.fired = true;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum SendEv {
        Interim,
        Hand(usize, bool),
        Written(usize, bool),
        Reset(u64),
        Stop(u64),
    }

    fn send_ev() -> impl Strategy<Value = SendEv> {
        prop_oneof![
            Just(SendEv::Interim),
            (0usize..5000, any::<bool>()).prop_map(|(n, f)| SendEv::Hand(n, f)),
            (0usize..5000, any::<bool>()).prop_map(|(n, f)| SendEv::Written(n, f)),
            (0u64..0x200).prop_map(SendEv::Reset),
            (0u64..0x200).prop_map(SendEv::Stop),
        ]
    }

    #[test]
    fn happy_path() {
        let mut s = SendState::Idle;
        s.on_handed(10, false).unwrap();
        s.on_handed(5, true).unwrap();
        assert_eq!(s, SendState::FinQueued { inflight: 15 });
        s.on_written(15, false).unwrap();
        s.on_written(0, true).unwrap();
        assert!(s.is_terminal());
        assert_eq!(s.on_handed(1, false), Err(Refused));
    }

    #[test]
    fn interim_responses_only_before_the_final_one() {
        let mut s = SendState::Idle;
        s.on_interim().unwrap();
        s.on_interim().unwrap();
        assert_eq!(s, SendState::Informational);
        assert!(s.can_send());
        s.on_handed(0, false).unwrap();
        assert_eq!(s.on_interim(), Err(Refused));
        assert_eq!(s, SendState::Open { inflight: 0 });
    }

    proptest! {
        /// Whatever the order of events: no second FIN, nothing handed after FIN or RESET,
        /// and once terminal the state never changes again (so the actor stops exactly once).
        #[test]
        fn send_terminal_is_absorbing(evs in proptest::collection::vec(send_ev(), 0..40)) {
            let mut s = SendState::Idle;
            let mut fins_queued = 0;
            let mut terminal_at: Option<SendState> = None;
            for ev in evs {
                let before = s;
                let r = match ev {
                    SendEv::Interim => s.on_interim(),
                    SendEv::Hand(n, f) => {
                        let r = s.on_handed(n, f);
                        if r.is_ok() && f { fins_queued += 1; }
                        r
                    }
                    SendEv::Written(n, f) => s.on_written(n, f),
                    SendEv::Reset(c) => s.on_reset(c),
                    SendEv::Stop(c) => s.on_stop_sending(c),
                };
                if r.is_err() { prop_assert_eq!(s, before); }
                if let Some(t) = terminal_at { prop_assert_eq!(s, t); }
                if s.is_terminal() && terminal_at.is_none() { terminal_at = Some(s); }
                prop_assert!(fins_queued <= 1);
            }
        }

        /// Both directions together, with the actor's stop decision after every event: it stops
        /// at most once, and exactly once if both directions end.
        #[test]
        fn the_actor_stops_exactly_once(
            evs in proptest::collection::vec((any::<bool>(), send_ev(), 0u8..5), 0..60),
        ) {
            let mut s = SendState::Idle;
            let mut r = RecvState::Open;
            let mut latch = StopLatch::default();
            let mut stops = 0;
            for (to_send, sev, rev) in evs {
                if to_send {
                    let _ = match sev {
                        SendEv::Interim => s.on_interim(),
                        SendEv::Hand(n, f) => s.on_handed(n, f),
                        SendEv::Written(n, f) => s.on_written(n, f),
                        SendEv::Reset(c) => s.on_reset(c),
                        SendEv::Stop(c) => s.on_stop_sending(c),
                    };
                } else {
                    let _ = match rev {
                        0 => r.on_headers(false),
                        1 => r.on_data(),
                        2 => r.on_fin(),
                        3 => r.on_reset(7),
                        _ => r.on_stop_sending(0x10c),
                    };
                }
                if latch.check(s, r) { stops += 1; }
                prop_assert!(stops <= 1);
            }
            prop_assert_eq!(stops, usize::from(s.is_terminal() && r.is_terminal()));
        }

        /// A FIN is written only with every handed byte: never while bytes are outstanding.
        #[test]
        fn fin_is_written_last(evs in proptest::collection::vec(send_ev(), 0..40)) {
            let mut s = SendState::Idle;
            for ev in evs {
                let before = s;
                let r = match ev {
                    SendEv::Interim => s.on_interim(),
                    SendEv::Hand(n, f) => s.on_handed(n, f),
                    SendEv::Written(n, f) => s.on_written(n, f),
                    SendEv::Reset(c) => s.on_reset(c),
                    SendEv::Stop(c) => s.on_stop_sending(c),
                };
                if r.is_ok() && s == SendState::FinSent && before != SendState::FinSent {
                    if let SendEv::Written(n, _) = ev {
                        prop_assert_eq!(before, SendState::FinQueued { inflight: n });
                    }
                }
            }
        }

        #[test]
        fn recv_terminal_is_absorbing(evs in proptest::collection::vec(0u8..5, 0..40), start_open in any::<bool>()) {
            let mut r = if start_open { RecvState::Open } else { RecvState::AwaitingHeaders };
            let mut terminal_at: Option<RecvState> = None;
            for e in evs {
                let before = r;
                let res = match e {
                    0 => r.on_headers(false),
                    1 => r.on_data(),
                    2 => r.on_fin(),
                    3 => r.on_reset(7),
                    _ => r.on_stop_sending(0x10c),
                };
                if res.is_err() { prop_assert_eq!(r, before); }
                if let Some(t) = terminal_at { prop_assert_eq!(r, t); }
                if r.is_terminal() && terminal_at.is_none() { terminal_at = Some(r); }
            }
        }
    }
}
