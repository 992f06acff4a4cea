//! Stream endings across the actor boundary: resets, STOP_SENDING, a handler that panics.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use tokio::sync::mpsc;
use troupe::h3::{Body, BodyError, RecvBody, Server, ServerConfig};

async fn server_with(
    handler: impl Fn(http::Request<RecvBody>) -> futures::future::BoxFuture<'static, http::Response<Body>>
        + Send
        + Sync
        + 'static,
) -> Server {
    init_tracing();
    let handler = Arc::new(handler);
    Server::bind(loopback(), ServerConfig::default(), move |req| {
        let h = handler.clone();
        async move { h(req).await }
    })
    .await
    .unwrap()
}

/// The client's request body fails half-way: its stream actor resets the stream
/// (H3_INTERNAL_ERROR), and the server's handler sees a reset, never a clean end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_reset_is_not_a_clean_end() {
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<usize, BodyError>>();
    let first_bytes = Arc::new(tokio::sync::Notify::new());
    let notify = first_bytes.clone();
    let server = server_with(move |req| {
        let tx = tx.clone();
        let notify = notify.clone();
        Box::pin(async move {
            let mut body = req.into_body();
            let mut n = 0;
            let end = loop {
                match body.chunk().await {
                    Some(Ok(c)) => {
                        n += c.len();
                        notify.notify_one();
                    }
                    Some(Err(e)) => break Err(e),
                    None => break Ok(n),
                }
            };
            let _ = tx.send(end);
            http::Response::new(Body::from("seen"))
        })
    })
    .await;
    let (_ep, client) = connect(&server).await;
    // Two chunks; then, once the handler has seen bytes, the upload source fails.
    let body = futures::stream::unfold(0u8, move |step| {
        let first_bytes = first_bytes.clone();
        async move {
            match step {
                0 | 1 => Some((Ok(Bytes::from(vec![step; 100_000])), step + 1)),
                2 => {
                    first_bytes.notified().await;
                    Some((Err(std::io::Error::other("upload source failed")), 3))
                }
                _ => None,
            }
        }
    });
    let req = http::Request::post(url(&server, "/up"))
        .body(Body::from_stream(body))
        .unwrap();
    let sending = tokio::spawn({
        let client = client.clone();
        async move { client.send(req).await.map(|r| r.status()) }
    });
    let seen = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen,
        Err(BodyError::Reset(troupe::h3::codes::H3_INTERNAL_ERROR))
    );
    // Our request failed on our side; the server's answer may still arrive. Either way the
    // client call ends.
    let _ = tokio::time::timeout(Duration::from_secs(10), sending)
        .await
        .unwrap();
}

/// A response body that never produces anything, and a client that cancels it: the peer's
/// STOP_SENDING reaches the idle stream actor, which stops; nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sending_reaches_an_idle_response() {
    let server = server_with(|_req| {
        Box::pin(async move {
            http::Response::new(Body::from_stream(futures::stream::pending::<
                Result<Bytes, std::io::Error>,
            >()))
        })
    })
    .await;
    let (_ep, client) = connect(&server).await;
    let resp = client.send(get(&server, "/forever")).await.unwrap();
    assert_eq!(resp.status(), 200);
    eventually(
        Duration::from_secs(5),
        "server stream actor running",
        || async { server.endpoint().serving_stream_actors().await == 1 },
    )
    .await;
    drop(resp); // RecvBody dropped unread: STOP_SENDING(H3_REQUEST_CANCELLED)
    eventually(
        Duration::from_secs(5),
        "server stream actor stopped",
        || async { server.endpoint().serving_stream_actors().await == 0 },
    )
    .await;
    // The connection itself is fine.
    let resp = client.send(get(&server, "/again")).await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// One handler panics among many concurrent requests: that stream is reset, the others complete
/// byte for byte, and the failure shows in the snapshot (the connection's and the endpoint's
/// failure rings, the stream actor's last error) and in the Prometheus text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_resets_only_its_stream() {
    init_tracing();
    let metrics = troupe::transport::PrometheusMetrics::new();
    let mut config = ServerConfig::default();
    config.quic.metrics = metrics.shared();
    let server = Server::bind(
        loopback(),
        config,
        |req: http::Request<RecvBody>| async move {
            if req.uri().path() == "/panic" {
                panic!("handler bug (expected by this test)");
            }
            let n: u64 = req.uri().path().trim_start_matches('/').parse().unwrap();
            http::Response::new(troupe::service::pattern_body(n))
        },
    )
    .await
    .unwrap();
    let (_ep, client) = connect(&server).await;
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let client = client.clone();
        let path = if i == 37 {
            "/panic".to_string()
        } else {
            format!("/{}", 1000 + i)
        };
        let req = get(&server, &path);
        tasks.push(tokio::spawn(async move {
            match client.send(req).await {
                Ok(resp) => resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_vec())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        if i == 37 {
            let e = r.expect_err("the panicking request must fail");
            assert!(e.contains("0x102"), "reset with H3_INTERNAL_ERROR, got {e}");
        } else {
            // The right body, byte for byte.
            check_pattern(&r.unwrap(), 1000 + i);
        }
    }
    eventually(Duration::from_secs(5), "all stream actors gone", || async {
        server.endpoint().serving_stream_actors().await == 0
    })
    .await;
    assert_eq!(server.endpoint().connection_count(), 1);
    let snap = server.snapshot().await;
    assert_eq!(snap.failures_total, 1);
    let f = &snap.failures[0];
    assert!(
        f.who.starts_with("stream ") && f.who.contains("on connection"),
        "{f:?}"
    );
    assert!(f.why.contains("handler bug"), "{f:?}");
    let conn = &snap.connections[0];
    assert_eq!(conn.failures.len(), 1);
    assert_eq!(conn.failures[0].why, f.why);
    assert!(
        conn.streams.is_empty(),
        "the failed stream is no longer routed"
    );
    let text = metrics.render();
    assert!(
        text.lines().any(|l| l == "troupe_stream_failures_total 1"),
        "{text}"
    );
    // And as an operator reads it: the admin endpoint's /metrics, which adds the failures by
    // kind of child to the server's counters.
    let server = std::sync::Arc::new(server);
    let mut ac = troupe::admin::AdminConfig::new(loopback_tcp());
    ac.metrics = Some(metrics.clone());
    let admin = troupe::admin::Admin::serve_servers(ac, std::slice::from_ref(&server))
        .await
        .unwrap();
    let text = troupe::admin::AdminClient::new(admin.local_addr(), None)
        .get("/metrics")
        .await
        .unwrap();
    for want in [
        "troupe_stream_failures_total 1",
        r#"troupe_failures_total{child="stream",outcome="failed"} 1"#,
        r#"troupe_actors_live{kind="connection"} 1.0"#,
        r#"troupe_actors_live{kind="stream"} 0.0"#,
    ] {
        assert!(text.lines().any(|l| l == want), "{want} missing:\n{text}");
    }
    admin.shutdown().await;
}

/// The handler's producer drops its body sender without finishing: the stream is reset with
/// H3_REQUEST_CANCELLED, and the client sees a reset, never a clean (truncated) end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_body_sender_resets_with_request_cancelled() {
    let server = server_with(|_req| {
        Box::pin(async move {
            let (tx, body) = Body::channel(4);
            tokio::spawn(async move {
                tx.send_data(Bytes::from_static(b"partial")).await.unwrap();
                drop(tx); // not finished
            });
            http::Response::new(body)
        })
    })
    .await;
    let (_ep, client) = connect(&server).await;
    let cancelled = troupe::h3::codes::H3_REQUEST_CANCELLED;
    // RESET_STREAM may overtake the response head (a reset discards unsent data): either way
    // the client sees the reset, with H3_REQUEST_CANCELLED.
    match client.send(get(&server, "/")).await {
        Ok(resp) => {
            assert_eq!(resp.status(), 200);
            let err = resp.into_body().collect().await.unwrap_err();
            assert_eq!(err, BodyError::Reset(cancelled));
        }
        Err(e) => assert_eq!(e, troupe::h3::RequestError::StreamReset(cancelled)),
    }

    // A finished sender ends the body cleanly.
    let server = server_with(|_req| {
        Box::pin(async move {
            let (tx, body) = Body::channel(4);
            tokio::spawn(async move {
                tx.send_data(Bytes::from_static(b"whole")).await.unwrap();
                tx.finish();
            });
            http::Response::new(body)
        })
    })
    .await;
    let (_ep2, client) = connect(&server).await;
    let resp = client.send(get(&server, "/")).await.unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap(),
        Bytes::from_static(b"whole")
    );
}

/// The application shuts a stream down explicitly, both directions with chosen codes: the peer
/// sees exactly those codes, both sides' stream actors stop, the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_shutdown_of_both_directions() {
    const READ_CODE: u64 = 0x10c; // H3_REQUEST_CANCELLED, as STOP_SENDING
    const WRITE_CODE: u64 = 0x10f; // H3_CONNECT_ERROR, as RESET_STREAM: any code the app picks
    let server = server_with(|req| {
        Box::pin(async move {
            if req.uri().path() != "/up" {
                return http::Response::new(Body::from("ok"));
            }
            let ctl = req
                .extensions()
                .get::<troupe::h3::StreamControl>()
                .expect("StreamControl in extensions")
                .clone();
            let mut body = req.into_body();
            // Wait for the first bytes, then shut both directions.
            let _ = body.chunk().await;
            ctl.shutdown(Some(READ_CODE), Some(WRITE_CODE));
            // The rest of the body ends with an error; the response is never sent.
            let rest = body.collect().await;
            assert!(rest.is_err(), "receiving was shut down");
            http::Response::new(Body::from("never sent"))
        })
    })
    .await;
    let (ep, client) = connect(&server).await;
    // An upload that never ends on its own.
    let endless =
        futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(b"first"))])
            .chain(futures::stream::pending());
    let req = http::Request::post(url(&server, "/up"))
        .body(Body::from_stream(endless))
        .unwrap();
    let err = client.send(req).await.unwrap_err();
    assert_eq!(err, troupe::h3::RequestError::StreamReset(WRITE_CODE));
    // Our sending side learned of the STOP_SENDING: both stream actors are gone.
    eventually(
        Duration::from_secs(5),
        "stream actors gone on both sides",
        || async {
            server.endpoint().serving_stream_actors().await == 0
                && ep.endpoint().serving_stream_actors().await == 0
        },
    )
    .await;
    let resp = client
        .send(get(&server, "/"))
        .await
        .expect("the connection goes on");
    assert_eq!(
        resp.into_body().collect().await.unwrap(),
        Bytes::from_static(b"ok")
    );
}
