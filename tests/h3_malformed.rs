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
        // (An uppercase header name cannot be sent through quiche's encoder, which lowercases
        // names: `uppercase_header_name_is_a_stream_error` encodes its own HEADERS frame.)
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

/// QPACK integer with an `n`-bit prefix (RFC 9204 §4.1.1, RFC 7541 §5.1), `flags` in the
/// bits above the prefix.
fn qpack_int(out: &mut Vec<u8>, flags: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A QPACK field section of literal names and values, no Huffman, no table: what any encoder
/// may send, including names quiche's own encoder would have lowercased.
fn literal_field_section(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = vec![0, 0]; // Required Insert Count 0, Delta Base 0.
    for (name, value) in headers {
        // Literal Field Line with Literal Name: 001 N H, 3-bit name length prefix.
        qpack_int(&mut out, 0b0010_0000, 3, name.len());
        out.extend_from_slice(name.as_bytes());
        qpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn varint(out: &mut Vec<u8>, v: u64) {
    assert!(v < 16384);
    if v < 64 {
        out.push(v as u8);
    } else {
        out.extend_from_slice(&(0x4000 | v as u16).to_be_bytes());
    }
}

/// An uppercase header name, sent by a peer that encodes its own HEADERS frame (quiche's encoder
/// would lowercase it): H3_MESSAGE_ERROR on that stream, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uppercase_header_name_is_a_stream_error() {
    let mut config = ServerConfig::default();
    config.quic.retry = false;
    let server = builtin_server(config).await;
    let mut client = RawClient::connect(server.local_addr()).await;
    let raw_request = |headers: &[(&str, &str)]| {
        let section = literal_field_section(headers);
        let mut frame = Vec::new();
        varint(&mut frame, 0x01); // HEADERS
        varint(&mut frame, section.len() as u64);
        frame.extend_from_slice(&section);
        frame
    };
    let good = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/"),
    ];
    let mut upper = good.to_vec();
    upper.push(("X-Upper", "1"));
    // Client-initiated bidirectional streams 0 and 4, written below quiche's HTTP/3 layer: the
    // uppercase request, then a well-formed one with the same encoder.
    for (id, headers) in [(0u64, upper.as_slice()), (4, &good[..])] {
        let frame = raw_request(headers);
        assert_eq!(
            client.conn.stream_send(id, &frame, true).unwrap(),
            frame.len()
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (mut reset, mut answered) = (None, false);
    while reset.is_none() || !answered {
        assert!(
            std::time::Instant::now() < deadline,
            "reset {reset:?}, answered {answered}"
        );
        client.exchange().await;
        let mut buf = [0u8; 4096];
        if reset.is_none() {
            match client.conn.stream_recv(0, &mut buf) {
                Err(troupe::transport::quiche::Error::StreamReset(code)) => reset = Some(code),
                Ok((_, true)) => panic!("the uppercase request was answered"),
                _ => {}
            }
        }
        while let Ok((n, fin)) = client.conn.stream_recv(4, &mut buf) {
            assert!(n > 0 || fin);
            answered |= fin;
            if fin {
                break;
            }
        }
    }
    assert_eq!(reset, Some(troupe::h3::codes::H3_MESSAGE_ERROR));
    assert!(client.conn.peer_error().is_none() && client.conn.local_error().is_none());
}
