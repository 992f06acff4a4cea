//! The second way to write a server: requests delivered to the application's own ractor
//! actor, answered through a `Responder`, with a bounded number outstanding.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use troupe::h3::codes::{H3_REQUEST_CANCELLED, H3_REQUEST_REJECTED};
use troupe::h3::{Body, IncomingRequest, RequestError, Responder, Server, ServerConfig};

/// The application actor's messages: requests from the server, and test commands.
enum AppMsg {
    /// Boxed: a request head is a few hundred bytes, the other messages small.
    Request(Box<IncomingRequest>),
    /// Answer every request held so far.
    ReleaseHeld,
    /// How many held responders report their stream gone.
    HeldClosed(tokio::sync::oneshot::Sender<usize>),
}

impl From<IncomingRequest> for AppMsg {
    fn from(r: IncomingRequest) -> Self {
        AppMsg::Request(Box::new(r))
    }
}

/// What `get_derived` needs to turn an `ActorRef<AppMsg>` into a
/// `DerivedActorRef<IncomingRequest>`.
impl TryFrom<AppMsg> for IncomingRequest {
    type Error = ();
    fn try_from(m: AppMsg) -> Result<Self, ()> {
        match m {
            AppMsg::Request(r) => Ok(*r),
            _ => Err(()),
        }
    }
}

struct App {
    delivered: Arc<AtomicUsize>,
}

impl Actor for App {
    type Msg = AppMsg;
    type State = Vec<Responder>;
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ActorRef<AppMsg>,
        _: (),
    ) -> Result<Vec<Responder>, ActorProcessingErr> {
        Ok(Vec::new())
    }

    async fn handle(
        &self,
        _: ActorRef<AppMsg>,
        msg: AppMsg,
        held: &mut Vec<Responder>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AppMsg::Request(incoming) => {
                let IncomingRequest { request, responder } = *incoming;
                self.delivered.fetch_add(1, Ordering::SeqCst);
                match request.uri().path() {
                    // Echo: read the body off the actor's thread, answer from there.
                    "/echo" => {
                        tokio::spawn(async move {
                            let body = request.into_body().collect().await.unwrap_or_default();
                            let _ = responder.respond(http::Response::new(Body::from(body)));
                        });
                    }
                    "/drop" => drop(responder),
                    "/hold" => held.push(responder),
                    path => {
                        let text = format!("actor saw {path} on stream {}", responder.stream_id());
                        let _ = responder.respond(http::Response::new(Body::from(text)));
                    }
                }
            }
            AppMsg::HeldClosed(reply) => {
                let _ = reply.send(held.iter().filter(|r| r.is_closed()).count());
            }
            AppMsg::ReleaseHeld => {
                for r in held.drain(..) {
                    let _ = r.respond(http::Response::new(Body::from("released")));
                }
            }
        }
        Ok(())
    }
}

async fn start(max_unanswered: usize) -> (Server, ActorRef<AppMsg>, Arc<AtomicUsize>) {
    init_tracing();
    let delivered = Arc::new(AtomicUsize::new(0));
    let (actor, _) = Actor::spawn(
        None,
        App {
            delivered: delivered.clone(),
        },
        (),
    )
    .await
    .unwrap();
    let mut config = ServerConfig::default();
    config.h3.max_unanswered_requests = max_unanswered;
    let server = Server::bind_actor(loopback(), config, actor.clone())
        .await
        .unwrap();
    (server, actor, delivered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_answers_requests() {
    let (server, actor, _) = start(16).await;
    let (_ep, client) = connect(&server).await;
    let r = client.send(get(&server, "/hello")).await.unwrap();
    assert_eq!(
        r.into_body().collect().await.unwrap(),
        "actor saw /hello on stream 0"
    );
    let req = http::Request::post(url(&server, "/echo"))
        .body(Body::from(vec![4u8; 100_000]))
        .unwrap();
    let r = client.send(req).await.unwrap();
    assert_eq!(r.into_body().collect().await.unwrap(), vec![4u8; 100_000]);
    actor.stop(None);
}

/// A responder dropped unanswered resets the response with H3_REQUEST_CANCELLED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_responder_cancels_the_request() {
    let (server, actor, _) = start(16).await;
    let (_ep, client) = connect(&server).await;
    match client.send(get(&server, "/drop")).await {
        Err(RequestError::StreamReset(code)) => assert_eq!(code, H3_REQUEST_CANCELLED),
        other => panic!("expected a reset, got {:?}", other.map(|r| r.status())),
    }
    eventually(Duration::from_secs(5), "stream actor gone", || async {
        server.endpoint().serving_stream_actors().await == 0
    })
    .await;
    // The connection carries on.
    let r = client.send(get(&server, "/after")).await.unwrap();
    assert_eq!(r.status(), 200);
    actor.stop(None);
}

/// With the budget of unanswered requests spent, further requests wait in their stream
/// actors (not in the application's mailbox) until one is answered. (A connection alone holds
/// at most half the budget: the rest is kept for other connections.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_requests_are_bounded() {
    let (server, actor, delivered) = start(4).await;
    let (_ep, client) = connect(&server).await;
    let mut pending = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        let req = get(&server, "/hold");
        pending.push(tokio::spawn(async move { client.send(req).await }));
    }
    // All four streams exist on the server...
    eventually(Duration::from_secs(5), "four request streams", || async {
        routed_count(&server).await == 4
    })
    .await;
    // ...and two were delivered: this connection's share of the budget.
    eventually(Duration::from_secs(5), "two delivered", || async {
        delivered.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(delivered.load(Ordering::SeqCst), 2);
    actor.cast(AppMsg::ReleaseHeld).unwrap();
    eventually(
        Duration::from_secs(5),
        "the other two delivered",
        || async { delivered.load(Ordering::SeqCst) == 4 },
    )
    .await;
    actor.cast(AppMsg::ReleaseHeld).unwrap();
    for p in pending {
        let r = tokio::time::timeout(Duration::from_secs(5), p)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r.into_body().collect().await.unwrap(), "released");
    }
    actor.stop(None);
}

/// With the application actor gone, requests are refused as not processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_actor_means_rejected_requests() {
    let (server, actor, _) = start(16).await;
    actor.stop(None);
    eventually(Duration::from_secs(5), "actor stopped", || async {
        actor.get_status() == ractor::ActorStatus::Stopped
    })
    .await;
    let (_ep, client) = connect(&server).await;
    match client.send(get(&server, "/x")).await {
        Err(RequestError::Rejected) => {}
        other => panic!("expected Rejected, got {:?}", other.map(|r| r.status())),
    }
    // Both directions carry the same code: STOP_SENDING and RESET_STREAM, H3_REQUEST_REJECTED.
    let mut raw = common::raw::RawClient::connect(server.local_addr()).await;
    let id = raw.request_open(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/y"),
    ]);
    raw.send_body(id, b"body", false);
    assert_eq!(raw.wait_stopped(id).await, H3_REQUEST_REJECTED);
    assert_eq!(raw.outcome(id).await.reset, Some(H3_REQUEST_REJECTED));
}

/// The same actor reached through a `DerivedActorRef<IncomingRequest>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_derived_actor_ref_answers_requests() {
    init_tracing();
    let delivered = Arc::new(AtomicUsize::new(0));
    let (actor, _) = Actor::spawn(
        None,
        App {
            delivered: delivered.clone(),
        },
        (),
    )
    .await
    .unwrap();
    let server = Server::bind_derived(loopback(), ServerConfig::default(), actor.get_derived())
        .await
        .unwrap();
    let (_ep, client) = connect(&server).await;
    let r = client.send(get(&server, "/derived")).await.unwrap();
    assert_eq!(
        r.into_body().collect().await.unwrap(),
        "actor saw /derived on stream 0"
    );
    assert_eq!(delivered.load(Ordering::SeqCst), 1);
    actor.stop(None);
}

/// A held responder learns that its stream is gone (the client reset it and stopped the
/// response), so the application can drop it and free its place in the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_learns_its_stream_is_gone() {
    let (server, actor, delivered) = start(16).await;
    let mut raw = common::raw::RawClient::connect(server.local_addr()).await;
    let id = raw.request_open(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/hold"),
    ]);
    raw.send_body(id, b"x", false);
    let d = delivered.clone();
    raw.drive_while_waiting("delivery", move || d.load(Ordering::SeqCst) == 1)
        .await;
    let closed = |actor: ActorRef<AppMsg>| async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        actor.cast(AppMsg::HeldClosed(tx)).unwrap();
        rx.await.unwrap()
    };
    assert_eq!(closed(actor.clone()).await, 0);
    raw.reset(id, H3_REQUEST_CANCELLED);
    raw.stop_sending(id, H3_REQUEST_CANCELLED);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while closed(actor.clone()).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the responder never saw its stream go"
        );
        raw.exchange().await;
    }
    actor.stop(None);
}

/// The budget of unanswered requests is shared fairly: a client that holds its requests open
/// (its application never answers) cannot starve another connection, which is served at once.
/// With one budget for the whole server, the first client took every place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_starve_another() {
    let (server, actor, delivered) = start(4).await;
    let (_ep_a, greedy) = connect(&server).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let c = greedy.clone();
        let req = get(&server, "/hold");
        held.push(tokio::spawn(async move { c.send(req).await }));
    }
    eventually(Duration::from_secs(5), "eight request streams", || async {
        routed_count(&server).await == 8
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "the greedy share delivered",
        || async { delivered.load(Ordering::SeqCst) == 2 },
    )
    .await;
    // Another client, on its own connection, is answered while the greedy one holds on.
    let (_ep_b, other) = connect(&server).await;
    let r = tokio::time::timeout(Duration::from_secs(5), other.send(get(&server, "/hello")))
        .await
        .expect("the second client was starved")
        .unwrap();
    assert_eq!(
        r.into_body().collect().await.unwrap(),
        "actor saw /hello on stream 0"
    );
    actor.cast(AppMsg::ReleaseHeld).unwrap();
    drop(held);
    actor.stop(None);
}
