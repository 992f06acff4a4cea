//! Stream lifecycle, one test per ordering: the peer's STOP_SENDING before, during and after
//! our response; the peer's RESET_STREAM during and after the request body, before and after
//! our FIN; a handler dropping the request body unread. Each checks that the right side ends
//! with the right code, that the other side keeps working, and that the stream actor stops
//! and its routing entry goes. The peer is a raw quiche client driven by hand.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::raw::{RawClient, StreamOutcome};
use common::*;
use tokio::sync::{mpsc, Notify};
use troupe::h3::codes::H3_REQUEST_CANCELLED;
use troupe::h3::codes::{H3_INTERNAL_ERROR, H3_REQUEST_REJECTED};
use troupe::h3::{
    Body, BodyError, RecvBody, Server, ServerConfig, StreamControl, StreamEnd, StreamStats,
};

/// What the handlers report to the test.
#[derive(Debug)]
enum Seen {
    /// The request body ended: its length, or the error.
    Body(Result<usize, BodyError>),
    /// Body bytes started arriving.
    FirstBytes,
    /// A streamed response could not be sent further.
    SendFailed,
}

struct Probe {
    server: Server,
    stats: Arc<Mutex<HashMap<u64, StreamStats>>>,
    seen: mpsc::UnboundedReceiver<Seen>,
    go: Arc<Notify>,
}

impl Probe {
    async fn start() -> Probe {
        init_tracing();
        let stats: Arc<Mutex<HashMap<u64, StreamStats>>> = Arc::default();
        let (tx, seen) = mpsc::unbounded_channel();
        let go = Arc::new(Notify::new());
        let (s, g) = (stats.clone(), go.clone());
        let server = Server::bind(loopback(), ServerConfig::default(), move |req| {
            let (stats, tx, go) = (s.clone(), tx.clone(), g.clone());
            async move { handle(req, stats, tx, go).await }
        })
        .await
        .unwrap();
        Probe {
            server,
            stats,
            seen,
            go,
        }
    }

    fn stats(&self, stream: u64) -> StreamStats {
        self.stats.lock().unwrap()[&stream].clone()
    }

    /// The stream's actor stopped and the connection no longer routes it; returns its ends.
    async fn ended(&self, stream: u64) -> (Option<StreamEnd>, Option<StreamEnd>) {
        eventually(Duration::from_secs(5), "stream actor stopped", || async {
            self.server.endpoint().serving_stream_actors().await == 0
        })
        .await;
        eventually(Duration::from_secs(5), "routing entry gone", || async {
            self.server
                .routed_streams()
                .await
                .iter()
                .all(|ids| !ids.contains(&stream))
        })
        .await;
        let a = self.stats(stream).snapshot();
        (a.send_end, a.recv_end)
    }
}

async fn read_body(
    mut body: RecvBody,
    tx: &mpsc::UnboundedSender<Seen>,
) -> Result<usize, BodyError> {
    let mut n = 0;
    while let Some(c) = body.chunk().await {
        let c = c?;
        if n == 0 && !c.is_empty() {
            let _ = tx.send(Seen::FirstBytes);
        }
        n += c.len();
    }
    Ok(n)
}

async fn handle(
    req: http::Request<RecvBody>,
    stats: Arc<Mutex<HashMap<u64, StreamStats>>>,
    tx: mpsc::UnboundedSender<Seen>,
    go: Arc<Notify>,
) -> http::Response<Body> {
    let s = req
        .extensions()
        .get::<StreamControl>()
        .unwrap()
        .stats()
        .clone();
    stats.lock().unwrap().insert(s.snapshot().stream_id, s);
    let path = req.uri().path().to_owned();
    let control = req.extensions().get::<StreamControl>().unwrap().clone();
    let body = req.into_body();
    match path.as_str() {
        // Read the whole request body, then answer.
        "/collect" => {
            let r = read_body(body, &tx).await;
            let _ = tx.send(Seen::Body(r));
            http::Response::new(Body::from("collected"))
        }
        // Read the body, wait for the test's go, then answer.
        "/hold" => {
            let r = read_body(body, &tx).await;
            let _ = tx.send(Seen::Body(r));
            go.notified().await;
            http::Response::new(Body::from("held"))
        }
        // Answer at once; keep reading the body in the background.
        "/early" => {
            let tx = tx.clone();
            tokio::spawn(async move {
                let r = read_body(body, &tx).await;
                let _ = tx.send(Seen::Body(r));
            });
            http::Response::new(Body::from("early"))
        }
        // Stream a response until it can go no further.
        "/stream" => {
            drop(body);
            let (sender, out) = Body::channel(4);
            tokio::spawn(async move {
                loop {
                    if sender
                        .send_data(Bytes::from(vec![7u8; 16 * 1024]))
                        .await
                        .is_err()
                    {
                        let _ = tx.send(Seen::SendFailed);
                        return;
                    }
                }
            });
            http::Response::new(out)
        }
        // A response that fits the client's window but takes several round trips to deliver:
        // our FIN is written into quiche at once, long before the client has it.
        "/600k" => {
            drop(body);
            http::Response::new(Body::from(vec![6u8; 600_000]))
        }
        // Stop receiving with our own code; answer.
        "/shutdown-read" => {
            let _keep = body;
            control.shutdown_read(0x77);
            http::Response::new(Body::from("answered"))
        }
        // A response that fits the stream actor's first credit: handed over whole, FIN
        // included, in one message.
        "/12k" => {
            drop(body);
            http::Response::new(Body::from(vec![5u8; 12 * 1024]))
        }
        // The same, and on the test's go the application resets the response (after the
        // actor handed it over).
        "/12k-then-reset" => {
            drop(body);
            tokio::spawn(async move {
                go.notified().await;
                control.shutdown_write(0x61);
            });
            http::Response::new(Body::from(vec![5u8; 12 * 1024]))
        }
        "/panic" => panic!("handler bug (expected by this test)"),
        // Drop the request body unread, wait for go, then answer.
        "/drop-body" => {
            drop(body);
            go.notified().await;
            http::Response::new(Body::from("dropped"))
        }
        _ => http::Response::new(Body::from("small")),
    }
}

fn req(path: &str) -> Vec<(&str, &str)> {
    vec![
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
    ]
}

/// STOP_SENDING before the response exists: the response side ends (the handler's answer is
/// dropped), while the request body keeps flowing to the handler to its FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sending_before_response() {
    let mut p = Probe::start().await;
    let mut c = RawClient::connect(p.server.local_addr()).await;
    let id = c.request_open(&req("/collect"));
    c.send_body(id, &[1u8; 1000], false);
    c.exchange().await;
    assert!(matches!(p.next_after(&mut c).await, Seen::FirstBytes));
    c.stop_sending(id, H3_REQUEST_CANCELLED);
    c.exchange().await;
    c.send_body(id, &[2u8; 500], true);
    c.exchange().await;
    match p.next_after(&mut c).await {
        Seen::Body(Ok(n)) => assert_eq!(n, 1500),
        other => panic!("request body did not complete: {other:?}"),
    }
    let (send, recv) = p.ended(id).await;
    assert_eq!(
        send,
        Some(StreamEnd::StopSendingReceived(H3_REQUEST_CANCELLED))
    );
    assert_eq!(recv, Some(StreamEnd::Fin));
    assert_eq!(p.stats(id).snapshot().bytes_received, 1500);
}

/// STOP_SENDING in the middle of a streamed response: our sending side ends with the peer's
/// code (quiche answers with RESET_STREAM), the producer learns it cannot send, the actor stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sending_during_response() {
    let mut p = Probe::start().await;
    let mut c = RawClient::connect(p.server.local_addr()).await;
    let id = c.request(&req("/stream"));
    let mut o = StreamOutcome::default();
    c.drive_until(id, &mut o, "64 KiB of response", |o| o.body >= 64 * 1024)
        .await;
    c.stop_sending(id, 0x42);
    c.exchange().await;
    assert!(matches!(p.next_after(&mut c).await, Seen::SendFailed));
    let (send, recv) = p.ended(id).await;
    assert_eq!(send, Some(StreamEnd::StopSendingReceived(0x42)));
    assert_eq!(recv, Some(StreamEnd::Fin));
    let a = p.stats(id).snapshot();
    assert!(a.bytes_sent >= 64 * 1024, "{a:?}");
}

/// STOP_SENDING after our FIN: written into quiche, not yet received (the client loses the
/// response's packets, so its receiving side is still open and it can send STOP_SENDING).
/// Nothing changes for us: our side ended with FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sending_after_response() {
    let p = Probe::start().await;
    let mut c = RawClient::connect(p.server.local_addr()).await;
    c.drop_incoming = true;
    let id = c.request(&req("/small"));
    c.flush().await;
    // Our FIN is written: the stream actor ended, its route is gone. The client stays idle
    // meanwhile (no timers run, so no retransmission backs off its sending).
    let server = &p.server;
    let stats = p.stats.clone();
    eventually(Duration::from_secs(5), "the response written", || {
        let stats = stats.clone();
        async move {
            let registered = stats.lock().unwrap().contains_key(&id);
            registered && routed_count(server).await == 0
        }
    })
    .await;
    c.stop_sending(id, 0x42);
    c.flush().await;
    wait_for_server(&mut c, server, "the STOP_SENDING", |s| {
        s.stopped_stream_count_remote == 1
    })
    .await;
    c.drop_incoming = false;
    // The per-connection figures saw what the path did: the packets our client lost.
    wait_for_server(&mut c, server, "loss detected", |s| s.lost > 0).await;
    let (send, recv) = p.ended(id).await;
    assert_eq!(send, Some(StreamEnd::Fin));
    assert_eq!(recv, Some(StreamEnd::Fin));
    assert_eq!(p.stats(id).snapshot().bytes_sent, 5);
}

/// RESET_STREAM in the middle of the request body, before our response: the handler sees the
/// reset with its code, and its answer still reaches the client complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_during_request_body_before_our_fin() {
    let mut p = Probe::start().await;
    let mut c = RawClient::connect(p.server.local_addr()).await;
    let id = c.request_open(&req("/collect"));
    c.send_body(id, &[1u8; 1000], false);
    c.exchange().await;
    assert!(matches!(p.next_after(&mut c).await, Seen::FirstBytes));
    c.reset(id, H3_REQUEST_CANCELLED);
    match p.next_after(&mut c).await {
        Seen::Body(Err(BodyError::Reset(code))) => assert_eq!(code, H3_REQUEST_CANCELLED),
        other => panic!("expected the reset, got {other:?}"),
    }
    let o = c.outcome(id).await;
    assert_eq!(o.status.as_deref(), Some("200"));
    assert!(o.finished && o.data == b"collected", "{o:?}");
    let (send, recv) = p.ended(id).await;
    assert_eq!(send, Some(StreamEnd::Fin));
    assert_eq!(recv, Some(StreamEnd::ResetReceived(H3_REQUEST_CANCELLED)));
}

/// RESET_STREAM of the request body after our FIN: the response already ended cleanly; the
/// reader of the body sees the reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_during_request_body_after_our_fin() {
    let mut p = Probe::start().await;
    let mut c = RawClient::connect(p.server.local_addr()).await;
    let id = c.request_open(&req("/early"));
    c.send_body(id, &[1u8; 1000], false);
    let mut o = StreamOutcome::default();
    c.drive_until(id, &mut o, "the whole response", |o| o.finished)
        .await;
    assert_eq!(o.data, b"early");
    c.reset(id, 0x42);
    loop {
        match p.next_after(&mut c).await {
            Seen::FirstBytes => continue,
            Seen::Body(Err(BodyError::Reset(code))) => {
                assert_eq!(code, 0x42);
                break;
            }
            other => panic!("expected the reset, got {other:?}"),
        }
    }
    let (send, recv) = p.ended(id).await;
    assert_eq!(send, Some(StreamEnd::Fin));
    assert_eq!(recv, Some(StreamEnd::ResetReceived(0x42)));
}

/// RESET_STREAM after the request body's FIN was read: the body stays complete, the
/// response goes out whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_after_request_body() {
    let mut p = Probe::start().await;
    let mut c = RawClient::connect(p.server.local_addr()).await;
    let id = c.request_with_body(&req("/hold"), &[3u8; 700]);
    loop {
        match p.next_after(&mut c).await {
            Seen::FirstBytes => continue,
            Seen::Body(Ok(n)) => {
                assert_eq!(n, 700);
                break;
            }
            other => panic!("expected the whole body, got {other:?}"),
        }
    }
    c.reset(id, 0x42);
    // The RESET_STREAM reached the server before it answers.
    wait_for_server(&mut c, &p.server, "the RESET_STREAM", |s| {
        s.reset_stream_count_remote == 1
    })
    .await;
    p.go.notify_one();
    let o = c.outcome(id).await;
    assert_eq!(o.status.as_deref(), Some("200"));
    assert!(o.finished && o.data == b"held", "{o:?}");
    let (send, recv) = p.ended(id).await;
    assert_eq!(send, Some(StreamEnd::Fin));
    assert_eq!(recv, Some(StreamEnd::Fin));
    assert_eq!(p.stats(id).snapshot().bytes_received, 700);
}

/// A handler that drops the request body unread before answering: STOP_SENDING with
/// H3_REQUEST_CANCELLED; the response still goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_drops_request_body_unread() {
    let p = Probe::start().await;
    let mut c = RawClient::connect(p.server.local_addr()).await;
    let id = c.request_open(&req("/drop-body"));
    c.send_body(id, &[1u8; 100], false);
    assert_eq!(c.wait_stopped(id).await, H3_REQUEST_CANCELLED);
    p.go.notify_one();
    let o = c.outcome(id).await;
    assert_eq!(o.status.as_deref(), Some("200"));
    assert!(o.finished && o.data == b"dropped", "{o:?}");
    let (send, recv) = p.ended(id).await;
    assert_eq!(send, Some(StreamEnd::Fin));
    assert_eq!(recv, Some(StreamEnd::StopSendingSent(H3_REQUEST_CANCELLED)));
}

impl Probe {
    /// Drives the raw client until the server wrote part of `stream`'s response and holds the
    /// rest, FIN included, for lack of room in the client's stream window (the client reads
    /// nothing, so the window never opens): the stream actor's last hand-over waits in the
    /// connection.
    async fn tail_held(&self, c: &mut RawClient, stream: u64) -> troupe::h3::StreamAudit {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let a = self
                .stats
                .lock()
                .unwrap()
                .get(&stream)
                .map(|s| s.snapshot());
            if let Some(a) = a.filter(|a| a.bytes_sent > 0 && a.pending_out > 0) {
                // The actor parked as it handed the response over: it heard nothing since (no
                // `Written` for what the connection wrote).
                let node = self.server.snapshot().await.connections[0]
                    .streams
                    .iter()
                    .find(|n| n.stream_id == stream)
                    .map(|n| n.actor.meter.messages_handled);
                assert_eq!(
                    node,
                    Some(0),
                    "the stream actor took messages after its last hand-over"
                );
                return a;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the response was not held within 5 s"
            );
            c.exchange().await;
        }
    }

    async fn parked_actors(&self) -> usize {
        parked_stream_actors(&self.server).await
    }

    /// Waits for the next report while driving the raw client (its packets must flow for the
    /// server to learn anything).
    async fn next_after(&mut self, c: &mut RawClient) -> Seen {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(s) = self.seen.try_recv() {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the handler reported nothing within 5 s"
            );
            c.exchange().await;
        }
    }
}

/// The application stops receiving with its own code: STOP_SENDING with exactly that code;
/// the response still goes out whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_shuts_down_reading_only() {
    let p = Probe::start().await;
    let mut c = RawClient::connect(p.server.local_addr()).await;
    let id = c.request_open(&req("/shutdown-read"));
    c.send_body(id, &[1u8; 100], false);
    assert_eq!(c.wait_stopped(id).await, 0x77);
    let o = c.outcome(id).await;
    assert!(o.finished && o.data == b"answered", "{o:?}");
    let (send, recv) = p.ended(id).await;
    assert_eq!(send, Some(StreamEnd::Fin));
    assert_eq!(recv, Some(StreamEnd::StopSendingSent(0x77)));
}

/// A handler panic resets its stream both ways with H3_INTERNAL_ERROR: RESET_STREAM on the
/// response and STOP_SENDING on the request body; the audit records the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_resets_both_directions() {
    let p = Probe::start().await;
    let mut c = RawClient::connect(p.server.local_addr()).await;
    let id = c.request_open(&req("/panic"));
    c.send_body(id, &[1u8; 100], false);
    assert_eq!(c.wait_stopped(id).await, H3_INTERNAL_ERROR);
    let o = c.outcome(id).await;
    assert_eq!(o.reset, Some(H3_INTERNAL_ERROR));
    let (send, recv) = p.ended(id).await;
    assert_eq!(send, Some(StreamEnd::ResetSent(H3_INTERNAL_ERROR)));
    assert_eq!(recv, Some(StreamEnd::StopSendingSent(H3_INTERNAL_ERROR)));
    assert!(p.stats(id).snapshot().failed);
    // The connection carries on.
    let id2 = c.request(&req("/small"));
    let o = c.outcome(id2).await;
    assert!(o.finished && o.data == b"small", "{o:?}");
}

/// A request on a stream at or above the GOAWAY's ID (sent by a client that had not yet read
/// the GOAWAY) is refused with H3_REQUEST_REJECTED; the one in flight completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_after_goaway_is_rejected() {
    init_tracing();
    let mut config = ServerConfig::default();
    // GOAWAY(4) is decided the moment the first request is accepted.
    config.h3.max_requests_per_connection = Some(1);
    let go = Arc::new(Notify::new());
    let (tx, mut started) = mpsc::unbounded_channel();
    let g = go.clone();
    let server = Server::bind(loopback(), config, move |_req: http::Request<RecvBody>| {
        let (go, tx) = (g.clone(), tx.clone());
        async move {
            let _ = tx.send(());
            go.notified().await;
            http::Response::new(Body::from("first"))
        }
    })
    .await
    .unwrap();
    let mut c = RawClient::connect(server.local_addr()).await;
    let first = c.request(&req("/first"));
    c.drive_while_waiting("the first handler to start", || started.try_recv().is_ok())
        .await;
    // The raw client has not polled HTTP/3, so it sends regardless of the GOAWAY.
    let second = c.request(&req("/second"));
    assert_eq!(second, 4);
    let o = c.outcome(second).await;
    assert_eq!(o.reset, Some(H3_REQUEST_REJECTED));
    go.notify_one();
    let o = c.outcome(first).await;
    assert!(o.finished && o.data == b"first", "{o:?}");
}

/// Drives the raw client (its packets must flow) until the server's quiche counters satisfy
/// `done`.
async fn wait_for_server(
    c: &mut RawClient,
    server: &Server,
    what: &str,
    done: impl Fn(&troupe::transport::quiche::Stats) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        c.exchange().await;
        let infos = server_connection_infos(server).await;
        if infos.iter().any(|i| done(&i.stats)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server never got {what}"
        );
    }
}

/// STOP_SENDING while our whole response, FIN included, waits in the connection for room in
/// the client's stream window. The stream actor handed it over as its last word and parked, so
/// the connection ends the stream itself: the sending side ends with the peer's code, the
/// figures count only the bytes quiche took, and the actor serves the connection's next stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sending_while_the_last_hand_over_waits_for_room() {
    let p = Probe::start().await;
    let mut c = RawClient::connect_with_windows(p.server.local_addr(), 4096, 10 << 20).await;
    let id = c.request(&get("/12k"));
    let held = p.tail_held(&mut c, id).await;
    assert_eq!(held.send_end, None, "{held:?}");
    assert!(held.bytes_sent < 4096, "{held:?}");
    c.stop_sending(id, 0x51);
    c.exchange().await;
    let (send, recv) = p.ended(id).await;
    assert_eq!(send, Some(StreamEnd::StopSendingReceived(0x51)));
    assert_eq!(recv, Some(StreamEnd::Fin));
    let a = p.stats(id).snapshot();
    assert_eq!(
        (a.bytes_sent, a.pending_out, a.send_state),
        (held.bytes_sent, 0, "stopped"),
        "{a:?}"
    );
    assert_eq!(p.parked_actors().await, 1, "the actor was not kept");
    // The parked actor serves the next stream, whole.
    let next = c.request(&get("/small"));
    let o = c.outcome(next).await;
    assert!(o.finished && o.data == b"small", "{o:?}");
    let (send, _) = p.ended(next).await;
    assert_eq!(send, Some(StreamEnd::Fin));
    assert_eq!(p.parked_actors().await, 1);
}

/// The same held last hand-over, cancelled by an operator: the connection resets what it
/// holds (the client sees RESET_STREAM with H3_REQUEST_CANCELLED), records it, and keeps the
/// actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cancels_a_held_last_hand_over() {
    let p = Probe::start().await;
    let mut c = RawClient::connect_with_windows(p.server.local_addr(), 4096, 10 << 20).await;
    let id = c.request(&get("/12k"));
    let held = p.tail_held(&mut c, id).await;
    let conn = p.server.snapshot().await.connections[0].trace_id.clone();
    p.server.cancel_stream(&conn, id).await.unwrap();
    let o = c.outcome(id).await;
    assert_eq!(o.reset, Some(H3_REQUEST_CANCELLED), "{o:?}");
    let (send, recv) = p.ended(id).await;
    assert_eq!(send, Some(StreamEnd::ResetSent(H3_REQUEST_CANCELLED)));
    assert_eq!(recv, Some(StreamEnd::Fin));
    let a = p.stats(id).snapshot();
    assert_eq!((a.bytes_sent, a.pending_out), (held.bytes_sent, 0), "{a:?}");
    assert_eq!(p.parked_actors().await, 1, "the actor was not kept");
}

/// The same held last hand-over, reset by the application through its `StreamControl`: the
/// parked actor passes the reset on, the connection resets what it holds, records it, and keeps
/// the actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_resets_a_held_last_hand_over() {
    let p = Probe::start().await;
    let mut c = RawClient::connect_with_windows(p.server.local_addr(), 4096, 10 << 20).await;
    let id = c.request(&get("/12k-then-reset"));
    let held = p.tail_held(&mut c, id).await;
    p.go.notify_one();
    let o = c.outcome(id).await;
    assert_eq!(o.reset, Some(0x61), "{o:?}");
    let (send, recv) = p.ended(id).await;
    assert_eq!(send, Some(StreamEnd::ResetSent(0x61)));
    assert_eq!(recv, Some(StreamEnd::Fin));
    let a = p.stats(id).snapshot();
    assert_eq!((a.bytes_sent, a.pending_out), (held.bytes_sent, 0), "{a:?}");
    assert_eq!(p.parked_actors().await, 1, "the actor was not kept");
}

/// A response held the same way, delivered once the client reads: the connection records the
/// FIN and every byte, and keeps the actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_last_hand_over_completes_when_the_window_opens() {
    let p = Probe::start().await;
    let mut c = RawClient::connect_with_windows(p.server.local_addr(), 4096, 10 << 20).await;
    let id = c.request(&get("/12k"));
    p.tail_held(&mut c, id).await;
    let o = c.outcome(id).await;
    assert!(o.finished && o.data.len() == 12 * 1024, "{o:?}");
    let (send, recv) = p.ended(id).await;
    assert_eq!((send, recv), (Some(StreamEnd::Fin), Some(StreamEnd::Fin)));
    let a = p.stats(id).snapshot();
    assert_eq!(
        (a.bytes_sent, a.pending_out, a.send_state),
        (12 * 1024, 0, "fin_sent"),
        "{a:?}"
    );
    assert_eq!(p.parked_actors().await, 1, "the actor was not kept");
}

fn get(path: &str) -> Vec<(&str, &str)> {
    vec![
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
    ]
}
