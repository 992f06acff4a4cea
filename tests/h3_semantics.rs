//! HTTP semantics across the actors: interim responses, trailers both ways.

mod common;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderValue, StatusCode};
use troupe::h3::{Body, Frame, InterimResponses, RecvBody, Server, ServerConfig, StreamControl};

async fn server(handler: fn(http::Request<RecvBody>) -> http::Response<Body>) -> Server {
    init_tracing();
    Server::bind(loopback(), ServerConfig::default(), move |req| async move {
        handler(req)
    })
    .await
    .unwrap()
}

/// As in tokio-quiche's suite: 103, then 200, then FIN; and the client gets the final response
/// (tokio-quiche's client drops it after a 1xx), with the 103 alongside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_hints_then_final_response() {
    let server = server(|req| {
        let interim = req
            .extensions()
            .get::<StreamControl>()
            .and_then(StreamControl::interim)
            .expect("Interim in the StreamControl")
            .clone();
        let mut hints = HeaderMap::new();
        hints.insert(
            "link",
            HeaderValue::from_static("</style.css>; rel=preload; as=style"),
        );
        // Any number of interim responses: 100 Continue, then 103 Early Hints.
        interim
            .send(StatusCode::CONTINUE, HeaderMap::new())
            .unwrap();
        interim.send(StatusCode::EARLY_HINTS, hints).unwrap();
        assert!(
            interim.send(StatusCode::OK, HeaderMap::new()).is_err(),
            "200 is not interim"
        );
        http::Response::new(Body::from("final"))
    })
    .await;
    let (_ep, client) = connect(&server).await;
    let resp = client.send(get(&server, "/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let interim = resp
        .extensions()
        .get::<InterimResponses>()
        .expect("the 103 was received")
        .clone();
    assert_eq!(interim.0.len(), 2);
    assert_eq!(interim.0[0].status, StatusCode::CONTINUE);
    assert_eq!(interim.0[1].status, StatusCode::EARLY_HINTS);
    assert_eq!(
        interim.0[1].headers["link"],
        "</style.css>; rel=preload; as=style"
    );
    assert_eq!(
        resp.into_body().collect().await.unwrap(),
        Bytes::from_static(b"final")
    );
}

/// As in tokio-quiche's suite, and better: request trailers reach the handler (tokio-quiche drops
/// them), response trailers reach the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_both_ways() {
    // The handler passes the request body on, trailers included.
    let server = server(|req| http::Response::new(Body::from(req.into_body()))).await;
    let (_ep, client) = connect(&server).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
    let frames: Vec<Result<Frame, std::io::Error>> = vec![
        Ok(Frame::Data(Bytes::from(vec![1u8; 100_000]))),
        Ok(Frame::Data(Bytes::from(vec![2u8; 1000]))),
        Ok(Frame::Trailers(trailers)),
    ];
    let req = http::Request::post(url(&server, "/echo"))
        .body(Body::from_frames(futures::stream::iter(frames)))
        .unwrap();
    let resp = client.send(req).await.unwrap();
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(c) = body.chunk().await {
        n += c.unwrap().len();
    }
    assert_eq!(n, 101_000);
    let got = body.trailers().expect("response trailers");
    assert_eq!(got["x-checksum"], "abc123");
}

/// Trailers that reach the server in the same packet batch as the end of a body the connection
/// deferred to that batch's end (it reads bodies once per batch) are still reported: quiche
/// parses what follows a DATA frame only once the frame is read, and reports it only from its
/// poll. Sixteen requests at once, each body many packets long, make such a batch near certain;
/// a missed trailer section leaves its request hanging, caught by the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_behind_a_body_read_at_the_batch_end() {
    let server = server(|req| http::Response::new(Body::from(req.into_body()))).await;
    let (_ep, client) = connect(&server).await;
    let requests = (0..16u8).map(|i| {
        let client = client.clone();
        let uri = url(&server, "/echo");
        async move {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-request", HeaderValue::from(u16::from(i)));
            let frames: Vec<Result<Frame, std::io::Error>> = vec![
                Ok(Frame::Data(Bytes::from(vec![i; 30_000]))),
                Ok(Frame::Data(Bytes::from(vec![i; 500]))),
                Ok(Frame::Trailers(trailers)),
            ];
            let req = http::Request::post(uri)
                .body(Body::from_frames(futures::stream::iter(frames)))
                .unwrap();
            let mut body = client.send(req).await.unwrap().into_body();
            let mut n = 0;
            while let Some(c) = body.chunk().await {
                n += c.unwrap().len();
            }
            assert_eq!(n, 30_500, "request {i}");
            let got = body.trailers().expect("response trailers");
            assert_eq!(got["x-request"], i.to_string().as_str(), "request {i}");
        }
    });
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        futures::future::join_all(requests),
    )
    .await
    .expect("every request's trailers arrived within 10 s");
}

/// A peer's frames split across packets at awkward places: a trailer section whose first bytes
/// come with the body and the rest later, and a DATA frame header cut after its type. Each
/// time the server has read the body before the split (its echo arrives), so the rest arrives
/// in a later packet batch, and after the last packet the client sends nothing more: a
/// trailer section or an end left unreported would leave the request hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_split_across_packets_still_end_the_request() {
    use common::raw::{RawClient, StreamOutcome};
    let server = server(|req| http::Response::new(Body::from(req.into_body()))).await;
    // QPACK: no dynamic table (two zero bytes), then `x-c: abc` as a literal name and value.
    let section: &[u8] = &[0x00, 0x00, 0x23, b'x', b'-', b'c', 0x03, b'a', b'b', b'c'];
    let trailers = [&[0x01, section.len() as u8][..], section].concat();
    let data = |body: &[u8]| [&[0x00, body.len() as u8][..], body].concat();
    let authority = format!("localhost:{}", server.local_addr().port());
    // (what goes with the body, what follows later)
    let splits: [(Vec<u8>, Vec<u8>); 2] = [
        // The trailer section cut after its first three bytes.
        (
            [data(b"hello"), trailers[..3].to_vec()].concat(),
            trailers[3..].to_vec(),
        ),
        // The next DATA frame's header cut after its type, then that frame and the trailers.
        (
            [data(b"hello"), vec![0x00]].concat(),
            [&data(b"abc")[1..], &trailers[..]].concat(),
        ),
    ];
    for (i, (first, rest)) in splits.into_iter().enumerate() {
        let mut c = RawClient::connect(server.local_addr()).await;
        let id = c.request_open(&[
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", &authority),
            (":path", "/echo"),
        ]);
        c.conn.stream_send(id, &first, false).unwrap();
        let mut o = StreamOutcome::default();
        c.drive_until(id, &mut o, "echo of the first part", |o| o.data.len() >= 5)
            .await;
        c.conn.stream_send(id, &rest, true).unwrap();
        c.drive_until(id, &mut o, "end of the response", |o| o.finished)
            .await;
        let want: &[u8] = if i == 0 { b"hello" } else { b"helloabc" };
        assert_eq!(o.data, want, "split {i}");
        assert_eq!(o.status.as_deref(), Some("200"), "split {i}");
    }
}

/// An error that belongs to one request fails that request alone, reported to its caller: a
/// request the client cannot encode, and a response the server resets, leave the connection
/// and a concurrent request untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_requests_error_is_its_own() {
    init_tracing();
    let server = Server::bind(
        loopback(),
        ServerConfig::default(),
        |req: http::Request<RecvBody>| async move {
            if req.uri().path() == "/reset" {
                let control = req.extensions().get::<StreamControl>().unwrap();
                control.shutdown_write(0x42);
                // No response will follow the reset.
                std::future::pending::<()>().await;
            }
            http::Response::new(Body::from("fine"))
        },
    )
    .await
    .unwrap();
    let (_ep, client) = connect(&server).await;
    let slow = tokio::spawn({
        let client = client.clone();
        let req = get(&server, "/concurrent");
        async move { client.send(req).await }
    });
    let no_host = http::Request::get("/relative-only")
        .body(Body::empty())
        .unwrap();
    match client.send(no_host).await {
        Err(troupe::h3::RequestError::InvalidRequest(why)) => {
            assert!(why.contains("no authority"), "{why}")
        }
        other => panic!(
            "expected InvalidRequest, got {:?}",
            other.map(|r| r.status())
        ),
    }
    match client.send(get(&server, "/reset")).await {
        Err(troupe::h3::RequestError::StreamReset(code)) => assert_eq!(code, 0x42),
        other => panic!("expected StreamReset, got {:?}", other.map(|r| r.status())),
    }
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.into_body().collect().await.unwrap(), "fine");
    let r = client.send(get(&server, "/after")).await.unwrap();
    assert_eq!(r.into_body().collect().await.unwrap(), "fine");
    assert!(client.connection().close_reason().is_none());
}

/// HEAD gets GET's status and headers (content-length included) and no body, on every
/// built-in route and on files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_get_without_a_body() {
    use futures::StreamExt;
    let dir = std::env::temp_dir().join(format!("troupe-head-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f.txt"), b"twelve bytes").unwrap();
    let svc = troupe::service::Builtin::with_root(&dir).unwrap();
    init_tracing();
    let server = Server::bind(loopback(), ServerConfig::default(), move |req| {
        let svc = svc.clone();
        async move { svc.handle(req).await }
    })
    .await
    .unwrap();
    let (_ep, client) = connect(&server).await;
    for (path, len) in [
        ("/", troupe::service::GREETING.len()),
        ("/bytes/100000", 100_000),
        ("/f.txt", 12),
    ] {
        let full = client.send(get(&server, path)).await.unwrap();
        let mut head_req = get(&server, path);
        *head_req.method_mut() = http::Method::HEAD;
        let head = client.send(head_req).await.unwrap();
        assert_eq!(head.status(), full.status(), "{path}");
        assert_eq!(head.status(), StatusCode::OK, "{path}");
        for name in [http::header::CONTENT_LENGTH, http::header::CONTENT_TYPE] {
            assert_eq!(
                head.headers().get(&name),
                full.headers().get(&name),
                "{path} {name}"
            );
        }
        assert_eq!(
            head.headers()[http::header::CONTENT_LENGTH],
            len.to_string().as_str()
        );
        let mut body = head.into_body();
        assert!(body.next().await.is_none(), "HEAD {path} had a body");
        let mut got = 0;
        let mut body = full.into_body();
        while let Some(c) = body.next().await {
            got += c.unwrap().len();
        }
        assert_eq!(got, len, "GET {path}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that sends interim responses without end cannot grow the client's memory: past
/// 16 the client resets the stream with H3_EXCESSIVE_LOAD and the request fails; 16 are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_interim_responses_are_cut_off() {
    let server = server(|req| {
        let interim = req
            .extensions()
            .get::<StreamControl>()
            .and_then(StreamControl::interim)
            .unwrap()
            .clone();
        let n: usize = req.uri().path().trim_start_matches('/').parse().unwrap();
        for _ in 0..n {
            interim
                .send(StatusCode::EARLY_HINTS, HeaderMap::new())
                .unwrap();
        }
        http::Response::new(Body::from("final"))
    })
    .await;
    let (_ep, client) = connect(&server).await;
    let ok = client.send(get(&server, "/16")).await.unwrap();
    assert_eq!(
        ok.extensions().get::<InterimResponses>().unwrap().0.len(),
        16
    );
    assert_eq!(ok.into_body().collect().await.unwrap(), "final");
    match client.send(get(&server, "/17")).await {
        Err(troupe::h3::RequestError::MalformedResponse(why)) => {
            assert!(why.contains("interim"), "{why}")
        }
        other => panic!(
            "expected the 17th interim to be refused, got {:?}",
            other.map(|r| r.status())
        ),
    }
    // The server saw the stream reset with H3_EXCESSIVE_LOAD; the connection carries on.
    let again = client.send(get(&server, "/1")).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}
