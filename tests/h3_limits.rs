//! Backpressure, failure to connect, garbage on the wire, idle timeout: loopback UDP, real quiche
//! on both ends.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::RawClient;
use common::*;
use futures::StreamExt;
use troupe::h3::{Body, ClientEndpoint, H3Settings, RecvBody, Server, ServerConfig};
use troupe::transport::{CloseReason, ConnectError, QuicSettings, TlsConfig, Verify};

/// POST 10 MiB to an echo handler that reads slowly: every byte comes back in order, and the
/// bytes buffered for the stream (the stream's own figure) never exceed its receive window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_echo_is_bounded() {
    init_tracing();
    let max_seen = Arc::new(AtomicUsize::new(0));
    let seen = max_seen.clone();
    let h3 = H3Settings::default();
    let window = h3.recv_window;
    let mut config = ServerConfig::default();
    config.h3 = h3;
    let server = Server::bind(loopback(), config, move |req: http::Request<RecvBody>| {
        let seen = seen.clone();
        async move {
            let body = req.into_body();
            let slow = futures::stream::unfold(body, move |mut body| {
                let seen = seen.clone();
                async move {
                    // The slow consumer: a pause before each read lets the sender fill the window.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let chunk = body.chunk().await?;
                    seen.fetch_max(body.stats().max_buffered, Ordering::SeqCst);
                    Some((chunk, body))
                }
            });
            http::Response::new(Body::from_stream(slow))
        }
    })
    .await
    .unwrap();
    let (_ep, client) = connect(&server).await;

    let payload: Bytes = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let chunks: Vec<Result<Bytes, std::io::Error>> = payload
        .chunks(50_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let req = http::Request::post(url(&server, "/echo"))
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let resp = client.send(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::with_capacity(payload.len());
    while let Some(c) = body.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "echoed bytes differ");
    let max = max_seen.load(Ordering::SeqCst);
    assert!(max > 0, "the handler saw no buffered bytes at all");
    assert!(
        max <= window,
        "buffered {max} bytes for one stream, window is {window}"
    );
    // The client side of the echo is bounded the same way.
    assert!(body.stats().max_buffered <= window);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_fails_clearly_within_handshake_timeout() {
    init_tracing();
    // A bound but silent UDP socket: nothing there speaks QUIC.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = silent.local_addr().unwrap();
    let mut quic = QuicSettings::default();
    quic.handshake_timeout = Duration::from_secs(1);
    let tls = TlsConfig {
        identity: None,
        verify: Verify::Insecure,
    };
    let ep = ClientEndpoint::bind(loopback(), quic, tls, H3Settings::default())
        .await
        .unwrap();
    let start = Instant::now();
    let err = match ep.connect(peer, "localhost").await {
        Ok(_) => panic!("connected to a silent socket"),
        Err(e) => e,
    };
    let took = start.elapsed();
    assert!(
        matches!(err, ConnectError::HandshakeTimeout { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("no QUIC server answered at {peer} within 1 s")
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    eventually(
        Duration::from_secs(2),
        "client connection actor gone",
        || async { ep.endpoint().connection_count() == 0 && ep.endpoint().route_count() == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_are_counted_and_harmless() {
    let server = builtin_server(ServerConfig::default()).await;
    let (_ep, client) = connect(&server).await;
    let target = server.local_addr();
    let n = 20 << 20;
    // The exchange is held in progress: the response body is not read until the garbage is
    // through, so credit and flow control keep the transfer mid-way.
    let resp = client
        .send(get(&server, &format!("/bytes/{n}")))
        .await
        .unwrap();
    let body = resp.into_body();
    let garbage = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let before = server.stats().dropped_total();
    // 50 bursts of 20: each burst must be counted before the next is sent, so the kernel's
    // socket buffer never overflows and every datagram reaches the receive loop.
    for burst in 0..50usize {
        for i in 0..20usize {
            // Sizes under 1200 bytes: never a valid Initial, so every one must be dropped.
            let len = 1 + ((burst * 20 + i) * 37) % 1100;
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            garbage.send_to(&buf, target).unwrap();
        }
        let want = before + 20 * (burst as u64 + 1);
        eventually(Duration::from_secs(5), "garbage burst counted", || async {
            server.stats().dropped_total() >= want
        })
        .await;
    }
    assert!(
        body.stats().received < n as u64,
        "the transfer should still be in progress"
    );
    let body = body.collect().await.unwrap();
    check_pattern(&body, n);
    assert_eq!(server.stats().dropped_total(), before + 1000);
    // The connection is still usable afterwards.
    let resp = client.send(get(&server, "/")).await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_closes_and_leaves_no_actor() {
    let mut config = ServerConfig::default();
    config.quic.idle_timeout = Duration::from_secs(1);
    let server = builtin_server(config).await;
    let (ep, client) = connect(&server).await;
    let resp = client.send(get(&server, "/bytes/10")).await.unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().len(), 10);
    assert_eq!(server.endpoint().connection_count(), 1);
    let reason = tokio::time::timeout(Duration::from_secs(5), client.closed())
        .await
        .unwrap();
    assert_eq!(reason, CloseReason::IdleTimeout);
    eventually(
        Duration::from_secs(5),
        "server connection actor gone",
        || async {
            server.endpoint().connection_count() == 0 && server.endpoint().route_count() == 0
        },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "client connection actor gone",
        || async { ep.endpoint().connection_count() == 0 && ep.endpoint().route_count() == 0 },
    )
    .await;
    assert_eq!(server.stats().connections_closed, 1);
}

/// A request body in DATA frames of many sizes, written below quiche's HTTP/3 layer: 2,000
/// one-byte frames (a read is mostly frame headers, so its chunk is copied out exactly sized),
/// then frames around the size where a chunk starts being handed on as read, up to 16,000
/// bytes. The echo must match byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_in_tiny_and_large_data_frames_echoes_exactly() {
    init_tracing();
    let mut config = ServerConfig::default();
    config.quic.retry = false;
    let server = builtin_server(config).await;
    let mut client = RawClient::connect(server.local_addr()).await;
    let id = client.request_open(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/echo"),
    ]);
    let sizes = std::iter::repeat_n(1usize, 2000).chain([2, 31, 32, 95, 96, 97, 1000, 3000, 16000]);
    let (mut body, mut wire) = (Vec::new(), Vec::new());
    for size in sizes {
        let payload: Vec<u8> = (body.len()..body.len() + size)
            .map(|i| (i % 251) as u8)
            .collect();
        wire.push(0x00); // DATA
        if size < 64 {
            wire.push(size as u8);
        } else {
            wire.extend_from_slice(&(0x4000 | size as u16).to_be_bytes());
        }
        wire.extend_from_slice(&payload);
        body.extend_from_slice(&payload);
    }
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while sent < wire.len() {
        assert!(
            Instant::now() < deadline,
            "{sent} of {} bytes sent",
            wire.len()
        );
        sent += client
            .conn
            .stream_send(id, &wire[sent..], true)
            .unwrap_or(0);
        client.exchange().await;
    }
    let o = client.outcome(id).await;
    assert_eq!(o.status.as_deref(), Some("200"));
    assert!(o.finished, "{o:?}");
    assert_eq!(o.data.len(), body.len());
    assert!(o.data == body, "the echo differs from the body sent");
}
