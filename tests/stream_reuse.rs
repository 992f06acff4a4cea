//! Parked stream actors (`H3Settings::stream_actor_pool`): an actor whose stream ended cleanly
//! parks in its worker's pool, under no connection, and serves a later stream of any connection
//! of that worker, one stream at a time; handles of its earlier stream reach nothing; an actor
//! that failed never serves again; the pool outlives a connection and stops its actors with the
//! server; with the pool off, every stream actor stops with its stream.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::sync::{mpsc, Notify};
use troupe::h3::codes::H3_REQUEST_CANCELLED;
use troupe::h3::{Body, RecvBody, Server, ServerConfig, StreamControl};

/// What a handler saw: the path, and the actor serving it.
type Seen = (String, ractor::ActorCell);

/// A server whose handler reports each request's actor, keeps `/first`'s `StreamControl`,
/// panics on `/panic`, and holds `/held` until `go` is notified.
async fn probe_server(
    pool: usize,
) -> (
    Server,
    mpsc::UnboundedReceiver<Seen>,
    Arc<Mutex<Option<StreamControl>>>,
    Arc<Notify>,
) {
    init_tracing();
    let (tx, rx) = mpsc::unbounded_channel();
    let kept: Arc<Mutex<Option<StreamControl>>> = Arc::default();
    let go = Arc::new(Notify::new());
    let mut config = ServerConfig::default();
    config.h3.stream_actor_pool = pool;
    let (k, g) = (kept.clone(), go.clone());
    let server = Server::bind(loopback(), config, move |req: http::Request<RecvBody>| {
        let (tx, kept, go) = (tx.clone(), k.clone(), g.clone());
        async move {
            let control = req.extensions().get::<StreamControl>().unwrap().clone();
            let path = req.uri().path().to_string();
            let _ = tx.send((path.clone(), control.actor_cell()));
            match path.as_str() {
                "/first" => *kept.lock().unwrap() = Some(control),
                "/panic" => panic!("handler panics on purpose"),
                "/held" => go.notified().await,
                _ => {}
            }
            http::Response::new(Body::from(format!("answer to {path}")))
        }
    })
    .await
    .unwrap();
    (server, rx, kept, go)
}

async fn body_of(client: &troupe::h3::Client, server: &Server, path: &str) -> String {
    let resp = client.send(get(server, path)).await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    let body = resp.into_body().collect().await.unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

/// Sends `/held` on `client` in the background; the task ends with the body, once the handler
/// is let go.
fn held_request(
    client: &troupe::h3::Client,
    server: &Server,
) -> tokio::task::JoinHandle<Result<String, String>> {
    let (client, url) = (client.clone(), url(server, "/held"));
    tokio::spawn(async move {
        let req = http::Request::get(url).body(Body::empty()).unwrap();
        let resp = client.send(req).await.map_err(|e| e.to_string())?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8(body.to_vec()).unwrap())
    })
}

/// Shuts both directions down through `old`, the handle of a stream that ended, while its actor
/// serves `/held` (the one stream of the server's one connection): once the actor's mailbox is
/// empty it has handled that message, and `/held` is still open and unharmed.
async fn an_old_handle_reaches_nothing(server: &Server, old: StreamControl) {
    old.shutdown(Some(H3_REQUEST_CANCELLED), Some(H3_REQUEST_CANCELLED));
    eventually(
        Duration::from_secs(5),
        "the old handle's message is handled",
        || async {
            let snap = server.snapshot().await;
            snap.connections[0].streams.len() == 1
                && snap.connections[0].streams[0].actor.meter.mailbox_depth == 0
        },
    )
    .await;
    let snap = server.snapshot().await;
    let stream = &snap.connections[0].streams[0];
    assert_eq!(stream.path.as_deref(), Some("/held"));
    assert_eq!(stream.send.end, None, "{stream:?}");
    assert_eq!(stream.recv.end, Some("fin"), "{stream:?}");
}

/// The actor of `/first` parks, then serves `/held`; the `StreamControl` the first handler
/// kept now names an ended stream, and shutting it down leaves the second stream untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_actor_serves_the_next_stream_and_old_handles_reach_nothing() {
    let (server, mut seen, kept, go) = probe_server(8).await;
    let (ep, client) = connect(&server).await;
    assert_eq!(
        body_of(&client, &server, "/first").await,
        "answer to /first"
    );
    let first = seen.recv().await.unwrap().1.get_id();
    eventually(Duration::from_secs(5), "the first actor parks", || async {
        server.endpoint().serving_stream_actors().await == 0
            && parked_stream_actors(&server).await == 1
    })
    .await;
    // Alive (it serves the next stream), linked under no connection.
    assert_eq!(server.endpoint().connection_children(), 0);
    // The client's stream actor parks too, in its endpoint's pool.
    eventually(
        Duration::from_secs(5),
        "the client's actor parks",
        || async {
            ep.snapshot().await.parked_stream_actors == 1
                && ep.endpoint().connection_children() == 0
        },
    )
    .await;

    let held = held_request(&client, &server);
    let (path, second) = seen.recv().await.unwrap();
    assert_eq!(path, "/held");
    assert_eq!(
        second.get_id(),
        first,
        "the parked actor took the next stream"
    );
    assert_eq!(parked_stream_actors(&server).await, 0);
    // Linked under the connection again while it serves.
    assert_eq!(server.endpoint().connection_children(), 1);
    // The first stream's handle, used now: both directions of an ended stream.
    let old = kept.lock().unwrap().take().unwrap();
    an_old_handle_reaches_nothing(&server, old).await;
    go.notify_one();
    assert_eq!(held.await.unwrap().unwrap(), "answer to /held");
}

/// A handler's panic fails its actor: the stream is reset, the actor is gone for good, and the
/// next stream gets another actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_actor_never_serves_again() {
    let (server, mut seen, _kept, _go) = probe_server(8).await;
    let (_ep, client) = connect(&server).await;
    assert_eq!(body_of(&client, &server, "/a").await, "answer to /a");
    let a = seen.recv().await.unwrap().1.get_id();
    eventually(Duration::from_secs(5), "the actor parks", || async {
        parked_stream_actors(&server).await == 1
    })
    .await;
    let err = client.send(get(&server, "/panic")).await.unwrap_err();
    assert_eq!(
        err,
        troupe::h3::RequestError::StreamReset(troupe::h3::codes::H3_INTERNAL_ERROR)
    );
    let panicked = seen.recv().await.unwrap().1;
    assert_eq!(
        panicked.get_id(),
        a,
        "the parked actor took the stream, then failed"
    );
    eventually(
        Duration::from_secs(5),
        "the failed actor is gone",
        || async { server.endpoint().connection_children() == 0 },
    )
    .await;
    assert_eq!(body_of(&client, &server, "/b").await, "answer to /b");
    let b = seen.recv().await.unwrap().1.get_id();
    assert_ne!(b, a, "a failed actor is never reused");
    assert_eq!(panicked.get_status(), ractor::ActorStatus::Stopped);
    let snap = server.snapshot().await;
    assert_eq!(snap.connections[0].failures_total, 1);
}

/// Pool off: every stream actor stops when its stream ends, and each stream gets a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_pool_off_every_stream_actor_stops() {
    let (server, mut seen, _kept, _go) = probe_server(0).await;
    let (_ep, client) = connect(&server).await;
    let mut ids = Vec::new();
    for path in ["/one", "/two", "/three"] {
        assert_eq!(
            body_of(&client, &server, path).await,
            format!("answer to {path}")
        );
        let actor = seen.recv().await.unwrap().1;
        ids.push(actor.get_id());
        eventually(Duration::from_secs(5), "the stream actor stops", || async {
            actor.get_status() == ractor::ActorStatus::Stopped
        })
        .await;
        assert_eq!(server.endpoint().connection_children(), 0);
        assert_eq!(parked_stream_actors(&server).await, 0);
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "three streams, three actors");
}

/// Many streams at once, then none: the pool keeps the spare two, which outlive the
/// connection; stopping the server stops every actor that ever served it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_shrinks_when_the_load_ends_outlives_its_connection_and_stops_with_the_server() {
    let (server, mut seen, _kept, _go) = probe_server(64).await;
    let (ep, client) = connect(&server).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (client, url) = (client.clone(), url(&server, &format!("/n{i}")));
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(url).body(Body::empty()).unwrap();
            let resp = client.send(req).await.unwrap();
            resp.into_body().collect().await.unwrap().len()
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap() > 0);
    }
    // Every actor that served a request (some served several).
    let mut actors = Vec::new();
    let mut requests = 0;
    while let Ok((_, cell)) = seen.try_recv() {
        requests += 1;
        if !actors
            .iter()
            .any(|a: &ractor::ActorCell| a.get_id() == cell.get_id())
        {
            actors.push(cell);
        }
    }
    assert_eq!(requests, 50);
    assert!(actors.len() >= 2, "{} actors", actors.len());
    eventually(Duration::from_secs(5), "two spare actors stay", || async {
        server.endpoint().serving_stream_actors().await == 0
            && parked_stream_actors(&server).await == 2
            && server.endpoint().connection_children() == 0
    })
    .await;
    // The trimmed ones have stopped (a stopped actor's cell says so); the spare two live on.
    eventually(
        Duration::from_secs(5),
        "the trimmed actors stop",
        || async {
            let running = actors
                .iter()
                .filter(|a| a.get_status() != ractor::ActorStatus::Stopped)
                .count();
            running == 2
        },
    )
    .await;
    client.close();
    client.closed().await;
    server.endpoint().wait_idle().await;
    drop(ep);
    assert_eq!(server.endpoint().connection_count(), 0);
    assert_eq!(
        parked_stream_actors(&server).await,
        2,
        "the pool is the worker's"
    );
    server.shutdown().await;
    eventually(Duration::from_secs(5), "no actor is left", || async {
        actors
            .iter()
            .all(|a| a.get_status() == ractor::ActorStatus::Stopped)
    })
    .await;
}

/// An actor parked by one connection serves the next stream of another connection of the same
/// worker, even once its first connection has closed, and moves under the new connection. Both
/// streams have ID 0 (each connection numbers its own): the first stream's `StreamControl`,
/// used while the actor serves the second, still reaches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_actor_serves_another_connection_after_its_own_closed() {
    let (server, mut seen, kept, go) = probe_server(8).await;
    let (ep1, one) = connect(&server).await;
    assert_eq!(body_of(&one, &server, "/first").await, "answer to /first");
    let first = seen.recv().await.unwrap().1;
    eventually(Duration::from_secs(5), "the actor parks", || async {
        parked_stream_actors(&server).await == 1
    })
    .await;
    one.close();
    one.closed().await;
    server.endpoint().wait_idle().await;
    drop(ep1);
    assert_ne!(first.get_status(), ractor::ActorStatus::Stopped);

    let (_ep2, two) = connect(&server).await;
    let held = held_request(&two, &server);
    let (path, second) = seen.recv().await.unwrap();
    assert_eq!(path, "/held");
    assert_eq!(
        second.get_id(),
        first.get_id(),
        "the other connection's stream took the parked actor"
    );
    // The tree shows it under the connection it serves now.
    let snap = server.snapshot().await;
    assert_eq!(snap.parked_stream_actors, 0);
    assert_eq!(snap.connections.len(), 1);
    assert_eq!(snap.connections[0].child_actors, 1);
    let stream = &snap.connections[0].streams[0];
    assert_eq!(stream.actor.id, first.get_id().to_string());
    assert_eq!(
        stream.stream_id, 0,
        "the same ID as the first connection's stream"
    );
    // The first connection's handle, for its stream 0, used now.
    let old = kept.lock().unwrap().take().unwrap();
    assert_eq!(old.stream_id(), 0);
    an_old_handle_reaches_nothing(&server, old).await;
    go.notify_one();
    assert_eq!(held.await.unwrap().unwrap(), "answer to /held");
}

/// An endpoint killed (no orderly stop, no `post_stop`) still stops the actors parked in its
/// workers' pools, though the `Server` handle that keeps the pools lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_endpoint_stops_its_parked_actors() {
    let (server, mut seen, _kept, _go) = probe_server(8).await;
    let (_ep, client) = connect(&server).await;
    assert_eq!(body_of(&client, &server, "/a").await, "answer to /a");
    let actor = seen.recv().await.unwrap().1;
    eventually(Duration::from_secs(5), "the actor parks", || async {
        parked_stream_actors(&server).await == 1
    })
    .await;
    server.endpoint().actor().kill();
    eventually(
        Duration::from_secs(5),
        "the parked actor stops with its endpoint",
        || async { actor.get_status() == ractor::ActorStatus::Stopped },
    )
    .await;
}

/// A handler links a child actor under its stream actor: when the stream ends, the actor stops
/// instead of parking (the child would otherwise outlive its stream), and the child stops with
/// it. A handler that only asked for the cell and linked nothing leaves its actor free to park.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_with_a_linked_child_stops_with_its_stream_and_the_child_too() {
    struct Child;
    impl ractor::Actor for Child {
        type Msg = ();
        type State = ();
        type Arguments = ();
        async fn pre_start(
            &self,
            _: ractor::ActorRef<()>,
            _: (),
        ) -> Result<(), ractor::ActorProcessingErr> {
            Ok(())
        }
    }
    init_tracing();
    let (tx, mut children) = mpsc::unbounded_channel::<ractor::ActorRef<()>>();
    let mut config = ServerConfig::default();
    config.h3.stream_actor_pool = 8;
    let server = Server::bind(loopback(), config, move |req: http::Request<RecvBody>| {
        let tx = tx.clone();
        async move {
            let control = req.extensions().get::<StreamControl>().unwrap().clone();
            let cell = control.actor_cell();
            if req.uri().path() == "/child" {
                let (child, _) = ractor::Actor::spawn_linked(None, Child, (), cell)
                    .await
                    .unwrap();
                let _ = tx.send(child);
            }
            http::Response::new(Body::from("ok"))
        }
    })
    .await
    .unwrap();
    let (_ep, client) = connect(&server).await;
    assert_eq!(body_of(&client, &server, "/cell").await, "ok");
    eventually(
        Duration::from_secs(5),
        "the actor that only lent its cell parks",
        || async {
            server.endpoint().serving_stream_actors().await == 0
                && parked_stream_actors(&server).await == 1
        },
    )
    .await;
    // The parked actor takes this stream, links a child, and must not park again.
    assert_eq!(body_of(&client, &server, "/child").await, "ok");
    let child = children.recv().await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the actor with a child stops, and the child with it",
        || async {
            server.endpoint().connection_children() == 0
                && parked_stream_actors(&server).await == 0
                && child.get_status() == ractor::ActorStatus::Stopped
        },
    )
    .await;
}
