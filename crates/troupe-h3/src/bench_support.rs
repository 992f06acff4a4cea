//! Real stream actors driven through the connection's message protocol by a stand-in connection
//! actor, without quiche or sockets: what the criterion microbenches (`benches/stream_path.rs`)
//! measure. Not part of the API.
//!
//! The stand-in plays the connection's side as a connection with unlimited room would: it
//! starts each request on a stream actor (a spawn for the first, then `Start` on the parked
//! actor, as the pool does), answers every `Send` with `Written` at once, granting `grant` more
//! bytes whenever the actor says it has more, and takes `Parked`, or a `Send` marked `last`, as
//! the end of a request.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;
use troupe_transport::{ActorKind, ActorMeter, ConnMailbox, ConnMsg, Outbox, Tracked};

use crate::audit::StreamStats;
use crate::conn::{H3Msg, OutFrame};
use crate::server::Handler;
use crate::stream::{Role, StreamActor, StreamArgs, StreamMsg, StreamStart, STREAM_MESSAGES};
use crate::{Body, H3Settings, RecvBody};

/// Runs `requests` GET requests, one after another, on stream actors of one stand-in
/// connection; each handler answers with `body` bytes, which the actor hands over within a
/// first credit of `first_credit` bytes and grants of `grant` bytes. Returns when the last
/// stream's actor parked (or one stopped instead), with what the run took.
pub async fn run_requests(requests: usize, body: usize, first_credit: usize, grant: usize) -> Run {
    let payload = Bytes::from(vec![7u8; body]);
    let handler: Arc<dyn Handler> = Arc::new(move |_req: http::Request<RecvBody>| {
        let payload = payload.clone();
        async move { http::Response::new(Body::from(payload)) }
    });
    let (done, finished) = oneshot::channel();
    let args = StandInArgs {
        requests,
        handler,
        first_credit,
        grant,
        done,
    };
    let (conn, handle) = Actor::spawn(None, StandIn, args)
        .await
        .expect("spawn the stand-in connection");
    let run = finished.await.unwrap_or_default();
    conn.stop(None);
    let _ = handle.await;
    run
}

/// What a run took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Streams whose actor parked.
    pub parked: usize,
    /// Of those, the streams whose actor parked with its last hand-over (no `Written` for it,
    /// no `Parked`).
    pub last_hand_overs: usize,
    /// `Written` reports the stand-in sent.
    pub written: usize,
}

struct StandIn;

struct StandInArgs {
    requests: usize,
    handler: Arc<dyn Handler>,
    first_credit: usize,
    grant: usize,
    done: oneshot::Sender<Run>,
}

struct StandInState {
    left: usize,
    next_id: u64,
    handler: Arc<dyn Handler>,
    first_credit: usize,
    grant: usize,
    settings: Arc<H3Settings>,
    trace_id: Arc<str>,
    mailbox: ConnMailbox<H3Msg>,
    /// The actor serving the current stream.
    actor: Option<ActorRef<StreamMsg>>,
    run: Run,
    done: Option<oneshot::Sender<Run>>,
}

impl StandInState {
    fn stream_args(&mut self) -> StreamArgs {
        let id = self.next_id;
        self.next_id += 4;
        self.left -= 1;
        let (head, ()) = http::Request::get("https://localhost/")
            .body(())
            .unwrap()
            .into_parts();
        StreamArgs {
            stream_id: id,
            conn: self.mailbox.clone(),
            meter: ActorMeter::new(ActorKind::Stream, STREAM_MESSAGES),
            settings: self.settings.clone(),
            trace_id: self.trace_id.clone(),
            role: Role::Server {
                head,
                fin: true,
                handler: self.handler.clone(),
                priority: crate::priority::PriorityCell::new(None),
                flow: None,
            },
            stats: StreamStats::new(id, Instant::now()),
            credit: self.first_credit,
        }
    }

    /// The actor parked: the next request starts on it, or the run is over.
    fn next_request(&mut self) {
        self.run.parked += 1;
        if self.left == 0 {
            self.finished();
        } else {
            let args = self.stream_args();
            if let Some(a) = &self.actor {
                let _ = a.cast(StreamMsg::Start(StreamStart(Box::new(args))));
            }
        }
    }

    /// One message from the stream actor.
    fn on_app(&mut self, msg: H3Msg) {
        match msg {
            H3Msg::Send {
                frames, more, last, ..
            } => {
                let (mut bytes, mut fin) = (0, false);
                for f in &frames {
                    match f {
                        OutFrame::Data { bytes: b, fin: f } => {
                            bytes += b.len();
                            fin |= *f;
                        }
                        OutFrame::Headers { section, .. } => fin |= section.ends_stream(),
                    }
                }
                let credit = if more { self.grant } else { 0 };
                if last {
                    // The actor parked with these frames: the request is over.
                    self.run.last_hand_overs += 1;
                    self.next_request();
                } else if let Some(a) = &self.actor {
                    if bytes > 0 || fin || credit > 0 {
                        self.run.written += 1;
                        let _ = a.cast(StreamMsg::Written { bytes, fin, credit });
                    }
                }
            }
            H3Msg::Parked { .. } => self.next_request(),
            _ => {}
        }
    }

    fn finished(&mut self) {
        if let Some(d) = self.done.take() {
            let _ = d.send(self.run);
        }
    }
}

impl Actor for StandIn {
    type Msg = ConnMsg<H3Msg>;
    type State = StandInState;
    type Arguments = StandInArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: StandInArgs,
    ) -> Result<StandInState, ActorProcessingErr> {
        Ok(StandInState {
            left: args.requests,
            next_id: 0,
            handler: args.handler,
            first_credit: args.first_credit,
            grant: args.grant,
            settings: Arc::new(H3Settings::default()),
            trace_id: "bench".into(),
            mailbox: ConnMailbox::new(
                Tracked::new(myself, ActorMeter::new(ActorKind::Connection, &["message"])),
                Arc::new(Outbox::new()),
            ),
            actor: None,
            run: Run::default(),
            done: Some(args.done),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        st: &mut StandInState,
    ) -> Result<(), ActorProcessingErr> {
        if st.left == 0 {
            st.finished();
            return Ok(());
        }
        let args = st.stream_args();
        let (actor, _) = Actor::spawn_linked(None, StreamActor, args, myself.get_cell()).await?;
        st.actor = Some(actor);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut StandInState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConnMsg::App(m) => st.on_app(m),
            ConnMsg::Outbox => {
                // As the connection actor does: the whole burst, in the order posted.
                let mut batch = Vec::new();
                st.mailbox.outbox().drain(&mut batch);
                for m in batch {
                    st.on_app(m);
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        st: &mut StandInState,
    ) -> Result<(), ActorProcessingErr> {
        // A stream actor that stops or fails ends the run (and the bench shows no result).
        if matches!(
            evt,
            SupervisionEvent::ActorTerminated(..) | SupervisionEvent::ActorFailed(..)
        ) {
            st.finished();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zero, one, three and many requests, with bodies that fit the first credit, need one
    /// grant, and need many: every stream's actor parks, so the next can start on it, and it
    /// parks with its last hand-over (the FIN), which nothing answers.
    #[tokio::test]
    async fn every_request_parks_its_actor_with_its_last_hand_over() {
        // (requests, body, first credit, grant, `Written` reports per request)
        for (requests, body, first, grant, written) in [
            (0, 10, 16_384, 16_384, 0),
            (1, 10, 16_384, 16_384, 0),
            (3, 20_000, 16_384, 16_384, 1),
            (50, 262_144, 16_384, 16_384, 15),
            (5, 100_000, 1, 1_000, 100),
        ] {
            let run = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                run_requests(requests, body, first, grant),
            )
            .await
            .unwrap_or_else(|_| panic!("{requests} x {body} B did not finish"));
            assert_eq!(
                run,
                Run {
                    parked: requests,
                    last_hand_overs: requests,
                    written: requests * written,
                },
                "{requests} x {body} B"
            );
        }
    }
}
