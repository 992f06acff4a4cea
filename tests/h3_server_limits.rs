//! Server limits: max requests per connection (then GOAWAY), the post-accept timeout.

mod common;

use std::time::Duration;

use common::*;
use troupe::h3::{ClientEndpoint, H3Settings, RequestError, ServerConfig};
use troupe::transport::CloseReason;
use troupe::transport::QuicSettings;

fn closed_cleanly(reason: &CloseReason) -> bool {
    matches!(reason, CloseReason::Peer { space: troupe::transport::ErrorSpace::Application, code, .. } if *code == troupe::h3::codes::H3_NO_ERROR)
}

/// As in tokio-quiche's suite: 10 requests allowed, then GOAWAY; the 11th is not processed (it
/// may be retried elsewhere), and the connection closes once drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_requests_then_goaway() {
    let mut config = ServerConfig::default();
    config.h3.max_requests_per_connection = Some(10);
    let server = builtin_server(config).await;
    let (_ep, client) = connect(&server).await;
    for i in 0..10 {
        let resp = client
            .send(get(&server, "/bytes/10"))
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(resp.into_body().collect().await.unwrap().len(), 10);
    }
    match client.send(get(&server, "/")).await {
        Err(RequestError::GoingAway) | Err(RequestError::Rejected) => {}
        Err(RequestError::ConnectionClosed(_)) => {}
        other => panic!("the 11th request must not be processed, got {other:?}"),
    }
    // The 10th request was on stream 36: the first one not processed is 40.
    eventually(Duration::from_secs(5), "GOAWAY 40 received", || async {
        client.goaway_received() == Some(40)
    })
    .await;
    let reason = tokio::time::timeout(Duration::from_secs(5), client.closed())
        .await
        .unwrap();
    assert!(closed_cleanly(&reason), "{reason:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_accept_timeout_closes_a_silent_connection() {
    let mut config = ServerConfig::default();
    config.h3.post_accept_timeout = Some(Duration::from_millis(300));
    let server = builtin_server(config).await;
    let (_ep, client) = connect(&server).await;
    let reason = tokio::time::timeout(Duration::from_secs(5), client.closed())
        .await
        .unwrap();
    assert!(closed_cleanly(&reason), "{reason:?}");
    eventually(Duration::from_secs(5), "server connection gone", || async {
        server.endpoint().connection_count() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_accept_timeout_is_cancelled_by_a_request() {
    let mut config = ServerConfig::default();
    config.h3.post_accept_timeout = Some(Duration::from_millis(300));
    let server = builtin_server(config).await;
    let (_ep, client) = connect(&server).await;
    let resp = client.send(get(&server, "/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Absence check: well past the timeout, the connection is still open and usable.
    let still_open = tokio::time::timeout(Duration::from_millis(900), client.closed()).await;
    assert!(
        still_open.is_err(),
        "closed although a request came: {still_open:?}"
    );
    let resp = client.send(get(&server, "/")).await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// As in tokio-quiche's suite: a 4000-byte header is accepted; a header list over the limit is
/// refused with H3_EXCESSIVE_LOAD (quiche closes the connection with that code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_list_over_the_limit_is_excessive_load() {
    let mut config = ServerConfig::default();
    config.h3.max_field_section_size = Some(8 * 1024);
    let server = builtin_server(config).await;
    let (_ep, client) = connect(&server).await;
    let big = |n: usize| {
        http::Request::get(url(&server, "/"))
            .header("x-big", "a".repeat(n))
            .body(troupe::h3::Body::empty())
            .unwrap()
    };
    let resp = client.send(big(4000)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(client.send(big(10_000)).await.is_err());
    let reason = tokio::time::timeout(Duration::from_secs(5), client.closed())
        .await
        .unwrap();
    assert!(
        matches!(reason, CloseReason::Peer { space: troupe::transport::ErrorSpace::Application, code, .. } if code == troupe::h3::codes::H3_EXCESSIVE_LOAD),
        "{reason:?}"
    );
}

/// As in tokio-quiche's suite: the server allows two concurrent streams; the client's third
/// request waits for MAX_STREAMS (no polling timer) and then all three succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_request_waits_for_stream_credit() {
    let mut config = ServerConfig::default();
    config.quic.initial_max_streams_bidi = 2;
    let server = builtin_server(config).await;
    let (_ep, client) = connect(&server).await;
    let n = 2 << 20;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let client = client.clone();
        let req = get(&server, &format!("/bytes/{n}"));
        tasks.push(tokio::spawn(async move {
            let resp = client.send(req).await?;
            resp.into_body()
                .collect()
                .await
                .map_err(|e| RequestError::ConnectionClosed(e.to_string()))
        }));
    }
    for t in tasks {
        let body = t.await.unwrap().unwrap();
        check_pattern(&body, n);
    }
    let info = client.connection().info().await.unwrap();
    assert!(info.stats.recv > 0);
    assert!(info.rtt.is_some() && info.cwnd.is_some() && info.handshake_time.is_some());
}

/// Client commands are bounded: with one stream allowed by the server and room for two
/// waiting requests, a fourth `send` waits in the caller, not in the connection actor; all
/// complete once streams free up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_client_requests_are_bounded() {
    let (server, release) = one_stream_gated_server().await;
    let mut h3 = H3Settings::default();
    h3.max_pending_requests = 2;
    let ep = ClientEndpoint::bind(loopback(), QuicSettings::default(), trusting(&server), h3)
        .await
        .unwrap();
    let client = ep.connect(server.local_addr(), "localhost").await.unwrap();
    // One request on the wire, two waiting in the connection actor; the fourth waits in send.
    let tasks = send_until_waiting(&server, &client, 4, 2).await;
    release.add_permits(4);
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r.into_body().collect().await.unwrap(), "done");
    }
    assert_eq!(client.waiting_requests(), 0);
}

/// Past `max_connections`, a new client is refused with CONNECTION_REFUSED (it learns it at
/// once, not at its handshake timeout), and no connection state is created for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused() {
    let mut config = ServerConfig::default();
    config.quic.max_connections = 1;
    let server = builtin_server(config).await;
    let (_ep1, first) = connect(&server).await;
    let ep2 = client_endpoint(&server, QuicSettings::default()).await;
    let started = std::time::Instant::now();
    let Err(err) = ep2.connect(server.local_addr(), "localhost").await else {
        panic!("a second connection must be refused");
    };
    assert!(
        err.to_string().contains("transport error 0x2"),
        "expected CONNECTION_REFUSED, got: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused only at the timeout: {:?}",
        started.elapsed()
    );
    // Each Initial datagram the client sends before it sees the refusal is refused.
    assert!(server.stats().connections_refused >= 1);
    assert_eq!(server.endpoint().connection_count(), 1);
    // The first connection carries on; once it is gone, a new client is accepted.
    let r = first.send(get(&server, "/")).await.unwrap();
    assert_eq!(r.status(), 200);
    first.close();
    eventually(Duration::from_secs(5), "first connection gone", || async {
        server.endpoint().connection_count() == 0
    })
    .await;
    let (_ep3, third) = connect(&server).await;
    assert_eq!(third.send(get(&server, "/")).await.unwrap().status(), 200);
}

/// Handshakes in flight are bounded: past half of `max_handshakes` a client must prove its
/// address with a Retry even with Retry off; past the bound it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_under_load_demand_retry_then_are_refused() {
    let mut config = ServerConfig::default();
    config.quic.retry = false;
    config.quic.max_handshakes = 2;
    let server = builtin_server(config).await;
    // One client that never finishes its handshake.
    let _stuck = common::raw::RawClient::start(server.local_addr()).await;
    eventually(
        Duration::from_secs(5),
        "one handshake in flight",
        || async { server.stats().handshaking == 1 },
    )
    .await;
    assert_eq!(server.stats().retries_sent, 0);
    // Half the bound reached: the next client gets a Retry first, then connects.
    let (_ep, c) = connect(&server).await;
    assert!(server.stats().retries_sent >= 1);
    assert_eq!(c.send(get(&server, "/")).await.unwrap().status(), 200);
    assert_eq!(
        server.stats().handshaking,
        1,
        "established connections do not count"
    );
    // A second stuck handshake reaches the bound: it answers the Retry it gets (so its address
    // is validated and a connection is made) and then goes quiet. The next client is refused.
    let retries = server.stats().retries_sent;
    let mut stuck2 = common::raw::RawClient::start(server.local_addr()).await;
    eventually(
        Duration::from_secs(5),
        "the Retry for the second",
        || async { server.stats().retries_sent > retries },
    )
    .await;
    stuck2.exchange().await;
    stuck2.flush().await;
    eventually(
        Duration::from_secs(5),
        "two handshakes in flight",
        || async { server.stats().handshaking == 2 },
    )
    .await;
    let ep = client_endpoint(&server, QuicSettings::default()).await;
    let Err(err) = ep.connect(server.local_addr(), "localhost").await else {
        panic!("past max_handshakes a client must be refused");
    };
    assert!(err.to_string().contains("transport error 0x2"), "{err}");
}

/// QUIC DATAGRAM is off until something reads datagrams (a peer could otherwise park about
/// 1.3 MiB per connection in quiche's queue): the server does not advertise it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_datagrams_are_off_by_default() {
    let server = builtin_server(ServerConfig::default()).await;
    let c = common::raw::RawClient::connect(server.local_addr()).await;
    assert_eq!(c.conn.dgram_max_writable_len(), None);
}
