//! Malformed requests from a raw quiche peer: each is a stream error (H3_MESSAGE_ERROR) and the
//! connection goes on.

mod common;

use common::raw::RawClient;
use common::*;
use troupe::h3::ServerConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_stream_errors() {
    let mut config = ServerConfig::default();
    config.quic.retry = false;
    let server = builtin_server(config).await;
    let mut client = RawClient::connect(server.local_addr()).await;
    let ok = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/"),
    ];
    let cases: Vec<Vec<(&str, &str)>> = vec![
        // missing :path
        vec![
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "localhost"),
        ],
        // (An uppercase header name cannot be sent with quiche: its QPACK encoder lowercases
        // names. `headers::tests::malformed_requests` covers the rule.)
        // pseudo-header after a regular one
        vec![
            (":method", "GET"),
            ("a", "b"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", "/"),
        ],
        // connection-specific header
        vec![
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", "/"),
            ("connection", "close"),
        ],
    ];
    for case in cases {
        let id = client.request(&case);
        let o = client.outcome(id).await;
        assert_eq!(
            o.reset,
            Some(troupe::h3::codes::H3_MESSAGE_ERROR),
            "{case:?}: {o:?}"
        );
        assert_eq!(o.status, None, "{case:?} got a response");
        // The connection goes on: a good request right after succeeds.
        let id = client.request(&ok);
        let o = client.outcome(id).await;
        assert_eq!(o.status.as_deref(), Some("200"), "{o:?}");
        assert!(o.finished);
        assert_eq!(o.body, troupe::service::GREETING.len());
    }
    assert!(!client.conn.is_closed());
}

/// content-length that disagrees with the body, either way, is malformed; a matching one is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_mismatch_is_a_stream_error() {
    let mut config = ServerConfig::default();
    config.quic.retry = false;
    let server = builtin_server(config).await;
    let mut client = RawClient::connect(server.local_addr()).await;
    let head = |len: &'static str| {
        vec![
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", "/echo"),
            ("content-length", len),
        ]
    };
    for (declared, body) in [("10", &b"abc"[..]), ("2", &b"abcdef"[..])] {
        let id = client.request_with_body(&head(declared), body);
        let o = client.outcome(id).await;
        assert_eq!(
            o.reset,
            Some(troupe::h3::codes::H3_MESSAGE_ERROR),
            "content-length {declared}: {o:?}"
        );
    }
    // Declared, but no body at all.
    let id = client.request(&head("5"));
    let o = client.outcome(id).await;
    assert_eq!(o.reset, Some(troupe::h3::codes::H3_MESSAGE_ERROR), "{o:?}");
    // Matching: echoed back.
    let id = client.request_with_body(&head("3"), b"abc");
    let o = client.outcome(id).await;
    assert_eq!(
        (o.status.as_deref(), o.body, o.reset),
        (Some("200"), 3, None)
    );
}
