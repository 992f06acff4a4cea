//! GET and POST over real quiche on loopback UDP, both ends ours.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use troupe::h3::{Body, ServerConfig};
use troupe::transport::QuicSettings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_root_and_bytes_exact() {
    let server = builtin_server(ServerConfig::default()).await;
    let (_ep, client) = connect(&server).await;

    let resp = client.send(get(&server, "/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap();
    assert_eq!(
        body,
        Bytes::from_static(troupe::service::GREETING.as_bytes())
    );

    for n in [0usize, 1, 1200, 1 << 20, 100 << 20] {
        let resp = client
            .send(get(&server, &format!("/bytes/{n}")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-length"], n.to_string().as_str());
        let body = resp.into_body().collect().await.unwrap();
        check_pattern(&body, n);
    }
    let resp = client.send(get(&server, "/nope")).await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_renew_stream_credit() {
    let mut config = ServerConfig::default();
    config.quic.initial_max_streams_bidi = 100;
    let server = builtin_server(config).await;
    let (_ep, client) = connect(&server).await;
    for i in 0..500 {
        let resp = client
            .send(get(&server, "/bytes/100"))
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        let body = resp.into_body().collect().await.unwrap();
        check_pattern(&body, 100);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_connections_hundred_concurrent_each() {
    let server = builtin_server(ServerConfig::default()).await;
    let ep = client_endpoint(&server, QuicSettings::default()).await;
    let mut tasks = Vec::new();
    for c in 0..5 {
        let client = ep.connect(server.local_addr(), "localhost").await.unwrap();
        for r in 0..100 {
            let client = client.clone();
            // Distinct sizes per (connection, request): a crossed response shows as a wrong length.
            let n = 1000 + c * 100 + r;
            let req = get(&server, &format!("/bytes/{n}"));
            tasks.push(tokio::spawn(async move {
                let resp = client.send(req).await.unwrap();
                let body = resp.into_body().collect().await.unwrap();
                check_pattern(&body, n);
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(server.endpoint().connection_count(), 5);
}

/// POSTs `body` to `path` and returns the response, within 20 s.
async fn post(
    server: &troupe::h3::Server,
    client: &troupe::h3::Client,
    path: &str,
    body: Bytes,
) -> http::Response<troupe::h3::RecvBody> {
    let req = http::Request::post(url(server, path))
        .body(Body::from(body))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), client.send(req))
        .await
        .unwrap()
        .unwrap()
}

/// `/discard` reads the whole body and answers with its length; GET is not allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_discard_counts_the_body() {
    let server = builtin_server(ServerConfig::default()).await;
    let (_ep, client) = connect(&server).await;
    for n in [0usize, 1, 3, 2_000_000] {
        let resp = post(&server, &client, "/discard", Bytes::from(vec![1u8; n])).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.into_body().collect().await.unwrap(),
            Bytes::from(format!("{n}\n"))
        );
    }
    let resp = client.send(get(&server, "/discard")).await.unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_echo_small_and_empty() {
    let server = builtin_server(ServerConfig::default()).await;
    let (_ep, client) = connect(&server).await;
    for payload in [
        Bytes::new(),
        Bytes::from_static(b"ping"),
        Bytes::from(vec![7u8; 300_000]),
    ] {
        let resp = post(&server, &client, "/echo", payload.clone()).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.into_body().collect().await.unwrap(), payload);
    }
}
