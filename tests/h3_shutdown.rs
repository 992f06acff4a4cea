//! Graceful shutdown: GOAWAY with the right ID, requests in flight finish, later ones are
//! refused, the connection closes once drained.

mod common;

use std::time::Duration;

use common::*;
use troupe::h3::{RequestError, ServerConfig};
use troupe::transport::CloseReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_lets_in_flight_finish_and_refuses_later_requests() {
    let server = std::sync::Arc::new(builtin_server(ServerConfig::default()).await);
    let (_ep, client) = connect(&server).await;
    let n = 8 << 20;
    // In flight on stream 0, and held there: its body is not read yet.
    let resp = client
        .send(get(&server, &format!("/bytes/{n}")))
        .await
        .unwrap();
    let body = resp.into_body();

    let shutdown = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown_gracefully(Duration::from_secs(20)).await }
    });
    eventually(Duration::from_secs(5), "GOAWAY received", || async {
        client.goaway_received().is_some()
    })
    .await;
    // The first request stream not processed: the one after stream 0.
    assert_eq!(client.goaway_received(), Some(4));
    match client.send(get(&server, "/")).await {
        Err(RequestError::GoingAway) => {}
        other => panic!("a request after GOAWAY must not start, got {other:?}"),
    }
    assert!(
        !shutdown.is_finished(),
        "the server must wait for the request in flight"
    );

    let got = body.collect().await.unwrap();
    check_pattern(&got, n);
    assert!(shutdown.await.unwrap(), "drained before the deadline");
    let reason = tokio::time::timeout(Duration::from_secs(5), client.closed())
        .await
        .unwrap();
    assert_eq!(
        reason,
        CloseReason::Peer {
            space: troupe::transport::ErrorSpace::Application,
            code: troupe::h3::codes::H3_NO_ERROR,
            reason: String::new()
        }
    );
    assert_eq!(server.endpoint().connection_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_on_an_idle_connection_closes_it_at_once() {
    let server = builtin_server(ServerConfig::default()).await;
    let (_ep, client) = connect(&server).await;
    let resp = client.send(get(&server, "/")).await.unwrap();
    resp.into_body().collect().await.unwrap();
    let drained = tokio::time::timeout(
        Duration::from_secs(5),
        server.shutdown_gracefully(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    assert!(drained);
    eventually(Duration::from_secs(5), "client saw GOAWAY 4", || async {
        client.goaway_received() == Some(4)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_closes_what_is_left() {
    let server = builtin_server(ServerConfig::default()).await;
    let (_ep, client) = connect(&server).await;
    // Held forever: never read.
    let resp = client
        .send(get(&server, &format!("/bytes/{}", 64 << 20)))
        .await
        .unwrap();
    let drained = tokio::time::timeout(
        Duration::from_secs(10),
        server.shutdown_gracefully(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    assert!(!drained);
    let err = resp.into_body().collect().await.unwrap_err();
    assert!(matches!(err, troupe::h3::BodyError::Aborted(_)), "{err:?}");
}

/// Requests still waiting in the client for a stream when GOAWAY arrives fail with
/// `GoingAway` (not processed: retry elsewhere); the one in flight completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_fails_requests_still_waiting_for_a_stream() {
    let (server, release) = one_stream_gated_server().await;
    let server = std::sync::Arc::new(server);
    let (_ep, client) = connect(&server).await;
    // One on the wire, two waiting in the client for MAX_STREAMS.
    let tasks = send_until_waiting(&server, &client, 3, 2).await;
    let shutdown = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown_gracefully(Duration::from_secs(10)).await }
    });
    eventually(Duration::from_secs(5), "GOAWAY received", || async {
        client.goaway_received().is_some()
    })
    .await;
    release.add_permits(1);
    let mut done = 0;
    let mut going_away = 0;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap()
            .unwrap()
        {
            Ok(r) => {
                assert_eq!(r.into_body().collect().await.unwrap(), "done");
                done += 1;
            }
            Err(RequestError::GoingAway) => going_away += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((done, going_away), (1, 2));
    assert!(shutdown.await.unwrap(), "drained before the deadline");
}

/// A connection still in its handshake when the graceful shutdown starts gets its GOAWAY once
/// established, and closes at once (idle), long before the drain deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshaking_connection_is_drained_too() {
    let mut config = ServerConfig::default();
    config.quic.retry = false;
    let server = builtin_server(config).await;
    let mut c = common::raw::RawClient::start(server.local_addr()).await;
    eventually(
        Duration::from_secs(5),
        "a connection in its handshake",
        || async { server.endpoint().connection_count() == 1 },
    )
    .await;
    let mut shutdown = Box::pin(server.shutdown_gracefully(Duration::from_secs(30)));
    // The first poll stops accepting and broadcasts GOAWAY, then waits for the drain.
    assert!(futures::poll!(&mut shutdown).is_pending());
    c.complete_handshake().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let drained = loop {
        c.exchange().await;
        if let std::task::Poll::Ready(d) = futures::poll!(&mut shutdown) {
            break d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the handshaking connection was not drained"
        );
    };
    assert!(drained, "closed by the drain, not by the deadline");
}
