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
            app: true,
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
