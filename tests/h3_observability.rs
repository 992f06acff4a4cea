//! What an operator can read: the peer's SETTINGS (once), per-connection final figures,
//! per-stream audit figures during and after a stream, Prometheus metrics, and RFC 9218
//! priorities as a handler sees them.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::{RawClient, StreamOutcome};
use common::*;
use tokio::sync::mpsc;
use troupe::h3::codes::{H3_INTERNAL_ERROR, H3_NO_ERROR};
use troupe::h3::{
    Body, ClientEndpoint, ConnectionEvent, EventSink, H3Settings, Priority, RecvBody, Server,
    ServerConfig, StreamControl, StreamEnd, StreamStats,
};
use troupe::transport::{CloseReason, PrometheusMetrics, QuicSettings};

/// The client's SETTINGS reach the server's event sink exactly once, the server's reach the
/// client, and a closed connection reports its final figures with the close code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_settings_once_and_final_connection_figures() {
    let (tx, mut events) = mpsc::channel(16);
    let mut config = ServerConfig::default();
    config.h3.max_field_section_size = Some(12_345);
    config.h3.qpack_blocked_streams = 10;
    config.events = Some(EventSink::channel(tx));
    let server = builtin_server(config).await;

    let mut client_h3 = H3Settings::default();
    client_h3.max_field_section_size = Some(54_321);
    let ep = ClientEndpoint::bind(
        loopback(),
        QuicSettings::default(),
        trusting(&server),
        client_h3,
    )
    .await
    .unwrap();
    let client = ep.connect(server.local_addr(), "localhost").await.unwrap();

    // The client sees what the server advertised.
    let theirs = tokio::time::timeout(Duration::from_secs(5), client.peer_settings())
        .await
        .unwrap()
        .expect("server SETTINGS");
    assert_eq!(theirs.max_field_section_size(), Some(12_345));
    assert_eq!(theirs.qpack_max_table_capacity(), 0);
    assert_eq!(theirs.qpack_blocked_streams(), 10);

    for _ in 0..3 {
        let r = client.send(get(&server, "/bytes/10")).await.unwrap();
        r.into_body().collect().await.unwrap();
    }
    let first = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    let conn_id = match first {
        ConnectionEvent::PeerSettings {
            conn_id,
            settings,
            peer,
        } => {
            assert_eq!(settings.max_field_section_size(), Some(54_321));
            assert_eq!(peer, Some(ep.endpoint().local_addr()));
            conn_id
        }
        other => panic!("expected the peer's SETTINGS first, got {other:?}"),
    };

    client.close();
    let reason = client.closed().await;
    assert!(
        matches!(reason, CloseReason::Local { space: troupe::transport::ErrorSpace::Application, code, .. } if code == H3_NO_ERROR),
        "{reason}"
    );
    // The client's own final figures.
    let info = client.connection().info().await.expect("final figures");
    assert_eq!(info.close, Some(reason));
    assert!(info.handshake_time.is_some() && info.rtt.is_some() && info.cwnd.is_some());
    assert!(info.stats.sent > 0 && info.stats.recv > 0);

    // The server's: the next (and only other) event is the close, with the peer's code.
    let next = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    match next {
        ConnectionEvent::Closed { conn_id: id, info } => {
            assert_eq!(id, conn_id);
            assert!(
                matches!(info.close, Some(CloseReason::Peer { space: troupe::transport::ErrorSpace::Application, code, .. }) if code == H3_NO_ERROR),
                "{:?}",
                info.close
            );
            assert!(info.handshake_time.is_some());
            assert!(info.stats.recv_bytes > 0);
        }
        other => panic!("expected Closed, got {other:?} (SETTINGS surfaced twice?)"),
    }
    assert!(events.try_recv().is_err());
}

/// A server request carries exactly one extension of ours, the `StreamControl`, with every
/// handle a handler uses (stats, priority signal, interim sender); a client response's
/// `StreamControl` carries the stats and neither server-only handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_extension_carries_every_stream_handle() {
    init_tracing();
    let server = Server::bind(
        loopback(),
        ServerConfig::default(),
        |req: http::Request<RecvBody>| async move {
            let control = req.extensions().get::<StreamControl>();
            let seen = format!(
                "{} {} {} {}",
                req.extensions().len(),
                control.is_some_and(|c| c.priority_signal().is_some()),
                control.is_some_and(|c| c.interim().is_some()),
                control.map_or(u64::MAX, |c| c.stats().snapshot().bytes_received),
            );
            http::Response::new(Body::from(seen))
        },
    )
    .await
    .unwrap();
    let (_ep, client) = connect(&server).await;
    let resp = client
        .send(
            http::Request::get(url(&server, "/"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let control = resp.extensions().get::<StreamControl>().unwrap().clone();
    assert!(control.priority_signal().is_none());
    assert!(control.interim().is_none());
    let body = resp.into_body().collect().await.unwrap();
    assert_eq!(std::str::from_utf8(&body).unwrap(), "1 true true 0");
    let len = body.len() as u64;
    eventually(
        Duration::from_secs(5),
        "client stats count the body",
        || {
            let stats = control.stats().clone();
            async move { stats.snapshot().bytes_received == len }
        },
    )
    .await;
}

/// Audit figures on both ends, read while the response streams and after it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_audit_figures_during_and_after() {
    init_tracing();
    let server_stats: Arc<Mutex<Option<StreamStats>>> = Arc::default();
    let slot = server_stats.clone();
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let server = Server::bind(
        loopback(),
        ServerConfig::default(),
        move |req: http::Request<RecvBody>| {
            let slot = slot.clone();
            let mut go = go_rx.clone();
            async move {
                *slot.lock().unwrap() = req
                    .extensions()
                    .get::<StreamControl>()
                    .map(|c| c.stats().clone());
                let got = req.into_body().collect().await.unwrap();
                assert_eq!(got.len(), 3000);
                let (tx, body) = Body::channel(2);
                tokio::spawn(async move {
                    tx.send_data(Bytes::from(vec![1u8; 10_000])).await.unwrap();
                    // The second half waits for the test's go.
                    go.wait_for(|g| *g).await.unwrap();
                    tx.send_data(Bytes::from(vec![2u8; 5_000])).await.unwrap();
                    tx.finish();
                });
                http::Response::new(body)
            }
        },
    )
    .await
    .unwrap();
    let (_ep, client) = connect(&server).await;
    let req = http::Request::post(url(&server, "/audit"))
        .body(Body::from(vec![9u8; 3000]))
        .unwrap();
    let resp = client.send(req).await.unwrap();
    let client_stats = resp
        .extensions()
        .get::<StreamControl>()
        .unwrap()
        .stats()
        .clone();
    let mut body = resp.into_body();
    let mut n = 0;
    while n < 10_000 {
        n += body.chunk().await.unwrap().unwrap().len();
    }
    // During: the client has sent everything and received part; the response is open.
    let during = client_stats.snapshot();
    assert_eq!(during.bytes_sent, 3000);
    assert!(during.bytes_received >= 10_000, "{during:?}");
    assert_eq!(during.send_end, Some(StreamEnd::Fin));
    assert_eq!(during.recv_end, None);
    assert!(during.time_to_first_byte.is_some());
    let s = server_stats.lock().unwrap().clone().unwrap();
    let during = s.snapshot();
    assert_eq!(during.bytes_received, 3000);
    assert_eq!(during.recv_end, Some(StreamEnd::Fin));
    assert_eq!(during.send_end, None);

    go_tx.send_replace(true);
    while let Some(c) = body.chunk().await {
        n += c.unwrap().len();
    }
    assert_eq!(n, 15_000);
    // After: both ends closed with FIN, full counts, a time to first byte, a header wait.
    eventually(Duration::from_secs(5), "server stream retired", || async {
        routed_count(&server).await == 0
    })
    .await;
    let after = s.snapshot();
    assert_eq!(
        (after.bytes_sent, after.bytes_received),
        (15_000, 3000),
        "{after:?}"
    );
    assert_eq!(after.send_end, Some(StreamEnd::Fin));
    let ttfb = after.time_to_first_byte.expect("server time to first byte");
    assert!(after.headers_wait.is_some());
    assert!(after.duration >= ttfb);
    let finished = after.duration;
    eventually(Duration::from_secs(5), "client stream ended", || async {
        client_stats.snapshot().recv_end == Some(StreamEnd::Fin)
    })
    .await;
    let c = client_stats.snapshot();
    assert_eq!((c.bytes_sent, c.bytes_received), (3000, 15_000));
    // Ended streams keep their figures: the duration no longer grows.
    assert_eq!(s.snapshot().duration, finished);
}

/// The first response header section waits for connection flow control while the client
/// leaves another response unread; the wait is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_wait_under_flow_control_is_measured() {
    init_tracing();
    let stats: Arc<Mutex<Vec<(String, StreamStats)>>> = Arc::default();
    let (answered_tx, mut answered) = mpsc::unbounded_channel::<Instant>();
    let slot = stats.clone();
    let server = Server::bind(
        loopback(),
        ServerConfig::default(),
        move |req: http::Request<RecvBody>| {
            let slot = slot.clone();
            let answered = answered_tx.clone();
            async move {
                let s = req
                    .extensions()
                    .get::<StreamControl>()
                    .unwrap()
                    .stats()
                    .clone();
                slot.lock().unwrap().push((req.uri().path().to_owned(), s));
                if req.uri().path() == "/big" {
                    http::Response::new(Body::from(vec![5u8; 1 << 20]))
                } else {
                    let _ = answered.send(Instant::now());
                    http::Response::new(Body::from("small"))
                }
            }
        },
    )
    .await
    .unwrap();
    // A client with a 64 KiB connection window and a 16 KiB per-stream reader window.
    let mut quic = QuicSettings::default();
    quic.initial_max_data = 64 * 1024;
    let mut h3 = H3Settings::default();
    h3.recv_window = 16 * 1024;
    let ep = ClientEndpoint::bind(loopback(), quic, trusting(&server), h3)
        .await
        .unwrap();
    let client = ep.connect(server.local_addr(), "localhost").await.unwrap();
    let big = client.send(get(&server, "/big")).await.unwrap();
    // The unread response holds the whole connection window. The small one asks for the lowest
    // urgency, so the big one is always first in line for any room that opens.
    let small = tokio::spawn({
        let client = client.clone();
        let mut req = get(&server, "/small");
        req.extensions_mut().insert(Priority::new(7, false));
        async move { client.send(req).await.unwrap() }
    });
    let answered_at = tokio::time::timeout(Duration::from_secs(5), answered.recv())
        .await
        .unwrap()
        .unwrap();
    let small_stats = || {
        stats
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| p == "/small")
            .map(|(_, s)| s.clone())
            .unwrap()
    };
    // The handler answered, but its headers cannot be written: for as long as the client
    // holds the big response unread (the stimulus whose length the figure must show), they
    // stay unwritten.
    let hold = answered_at + Duration::from_millis(150);
    while Instant::now() < hold {
        let early = small_stats().snapshot();
        assert_eq!(early.time_to_first_byte, None, "{early:?}");
        assert!(!small.is_finished());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let released_at = Instant::now();
    let n = big.into_body().collect().await.unwrap().len();
    assert_eq!(n, 1 << 20);
    let small = tokio::time::timeout(Duration::from_secs(5), small)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(small.into_body().collect().await.unwrap(), "small");
    let wait = small_stats().snapshot().headers_wait.expect("header wait");
    assert!(
        wait >= released_at - answered_at,
        "headers waited {wait:?}, but were blocked for at least {:?}",
        released_at - answered_at
    );
}

/// The default Prometheus sink counts connections, streams, resets by code, handler failures
/// and dropped datagrams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_text_counts_what_happened() {
    init_tracing();
    let metrics = PrometheusMetrics::new();
    let mut config = ServerConfig::default();
    config.quic.metrics = metrics.shared();
    let server = Server::bind(
        loopback(),
        config,
        |req: http::Request<RecvBody>| async move {
            if req.uri().path() == "/panic" {
                panic!("handler failure for the metrics test");
            }
            http::Response::new(Body::from("ok"))
        },
    )
    .await
    .unwrap();
    let (_ep, client) = connect(&server).await;
    for _ in 0..3 {
        let r = client.send(get(&server, "/ok")).await.unwrap();
        r.into_body().collect().await.unwrap();
    }
    let failed = client.send(get(&server, "/panic")).await;
    assert!(failed.is_err());
    // A datagram no connection can take.
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    junk.send_to(&[0x40, 1, 2, 3], server.local_addr()).unwrap();
    client.close();
    client.closed().await;
    let has = |line: &str| {
        let line = line.to_owned();
        let m = metrics.clone();
        move || {
            let text = m.render();
            let ok = text.lines().any(|l| l == line);
            async move { ok }
        }
    };
    for line in [
        "troupe_connections_accepted_total 1",
        "troupe_connections_established_total 1",
        "troupe_streams_opened_total 4",
        "troupe_streams_closed_total 4",
        "troupe_stream_failures_total 1",
        "troupe_stream_body_bytes_sent_total 6",
        "troupe_connections_open 0",
        &format!(
            "troupe_stream_aborts_total{{kind=\"reset_sent\",code=\"0x{H3_INTERNAL_ERROR:x}\"}} 1"
        ),
        "troupe_connections_closed_total{by=\"peer\",space=\"application\",code=\"0x100\"} 1",
    ] {
        eventually(Duration::from_secs(5), line, has(line)).await;
    }
    eventually(Duration::from_secs(5), "a dropped datagram", || {
        let text = metrics.render();
        async move { text.contains("troupe_datagrams_dropped_total{reason=") }
    })
    .await;
}

/// RFC 9218: the request's `priority` field and then the client's PRIORITY_UPDATE reach the
/// handler; the handler's own response priority goes out in the response's `priority` field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_signals_reach_the_handler() {
    init_tracing();
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = started.clone();
    let server = Server::bind(
        loopback(),
        ServerConfig::default(),
        move |req: http::Request<RecvBody>| {
            let flag = flag.clone();
            async move {
                let mut signal = req
                    .extensions()
                    .get::<StreamControl>()
                    .and_then(StreamControl::priority_signal)
                    .unwrap()
                    .clone();
                let initial = signal.current();
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                let updated = if req.uri().path() == "/wait-update" {
                    tokio::time::timeout(Duration::from_secs(5), signal.changed())
                        .await
                        .ok()
                        .flatten()
                } else {
                    None
                };
                let text = format!("initial={initial:?} updated={updated:?}");
                let mut resp = http::Response::new(Body::from(text));
                resp.extensions_mut().insert(Priority::new(1, false));
                resp
            }
        },
    )
    .await
    .unwrap();
    let mut c = RawClient::connect(server.local_addr()).await;
    let id = c.request(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/wait-update"),
        ("priority", "u=5"),
    ]);
    // The update is sent once the handler runs (one sent earlier would simply be the
    // priority the request starts with).
    c.drive_while_waiting("the handler to start", || {
        started.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    c.priority_update(id, 2, true);
    let mut o = StreamOutcome::default();
    c.drive_until(id, &mut o, "the response", |o| o.finished)
        .await;
    assert_eq!(o.header("priority"), Some("u=1"));
    let text = String::from_utf8(o.data.clone()).unwrap();
    assert_eq!(
        text,
        format!(
            "initial={:?} updated={:?}",
            Priority::new(5, false),
            Some(Priority::new(2, true))
        )
    );

    // Our own client sends a request's Priority extension as its `priority` field; without
    // one, the handler sees RFC 9218's defaults.
    let (_ep, client) = connect(&server).await;
    let mut req = get(&server, "/plain");
    req.extensions_mut().insert(Priority::new(6, true));
    let r = client.send(req).await.unwrap();
    assert_eq!(r.headers().get("priority").unwrap(), "u=1");
    let body = r.into_body().collect().await.unwrap();
    assert_eq!(
        body,
        format!("initial={:?} updated=None", Priority::new(6, true))
    );
    let r = client.send(get(&server, "/plain")).await.unwrap();
    let body = r.into_body().collect().await.unwrap();
    assert_eq!(
        body,
        format!("initial={:?} updated=None", Priority::REQUEST_DEFAULT)
    );
}

/// A full event channel never stalls a connection: the event is dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_event_channel_drops_and_counts() {
    let (tx, mut events) = mpsc::channel(1);
    let sink = EventSink::channel(tx);
    let mut config = ServerConfig::default();
    config.events = Some(sink.clone());
    let server = builtin_server(config).await;
    let (_ep1, a) = connect(&server).await;
    let (_ep2, b) = connect(&server).await;
    // Both connections work while nobody reads the events.
    for c in [&a, &b] {
        let r = c.send(get(&server, "/bytes/100")).await.unwrap();
        assert_eq!(r.into_body().collect().await.unwrap().len(), 100);
    }
    eventually(Duration::from_secs(5), "one event dropped", || async {
        sink.dropped() == 1
    })
    .await;
    assert!(matches!(
        events.try_recv(),
        Ok(ConnectionEvent::PeerSettings { .. })
    ));
}

/// A QPACK dynamic table quiche cannot decode is refused at bind, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qpack_dynamic_table_is_refused_with_a_clear_error() {
    let mut config = ServerConfig::default();
    config.h3.qpack_max_table_capacity = 4096;
    let err = match Server::bind(loopback(), config, |_req: http::Request<RecvBody>| async {
        http::Response::new(Body::empty())
    })
    .await
    {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a non-zero QPACK table capacity was accepted"),
    };
    assert!(
        err.contains("h3.qpack_max_table_capacity") && err.contains("leave it at 0"),
        "{err}"
    );
}

/// A client that refuses the server's certificate: the server counts a handshake failure
/// (the peer's TLS alert), not an established connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_failures_are_counted() {
    let metrics = PrometheusMetrics::new();
    let mut config = ServerConfig::default();
    config.quic.metrics = metrics.shared();
    let server = builtin_server(config).await;
    let mut quic = QuicSettings::default();
    quic.handshake_timeout = Duration::from_secs(2);
    // The system roots do not include the server's self-signed certificate.
    let ep = ClientEndpoint::bind(
        loopback(),
        quic,
        troupe::transport::TlsConfig::default(),
        H3Settings::default(),
    )
    .await
    .unwrap();
    assert!(ep.connect(server.local_addr(), "localhost").await.is_err());
    eventually(
        Duration::from_secs(5),
        "a counted handshake failure",
        || {
            let text = metrics.render();
            async move {
                text.lines()
                    .any(|l| l == "troupe_handshake_failures_total{reason=\"peer_error\"} 1")
                    && text
                        .lines()
                        .any(|l| l == "troupe_connections_established_total 0")
            }
        },
    )
    .await;
}

/// RFC 9218 on the wire: once two responses both have bytes to send, the more urgent one goes
/// first, even on the later stream. Stream 0 asks for urgency 7 and its body is handed over just
/// after stream 4's response started; stream 4 signals nothing and gets the response default
/// (urgency 3): when stream 4 has arrived whole, stream 0 has barely started (without the
/// priorities, stream order would send stream 0 first, all of it).
/// (A raw client, which records arrival without any reader pacing it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_responses_are_sent_first() {
    // Windows big enough that flow control never holds the urgent stream back: quiche's own
    // scheduler orders what is buffered.
    urgent_first(Lazy::ClientSignal).await;
}

/// The handler chooses the low urgency itself, on a final response that follows a 103: the
/// priority still reaches the scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_priority_after_interim_is_applied() {
    urgent_first(Lazy::HandlerAfterInterim).await;
}

/// How the first stream comes to have urgency 7.
#[derive(Clone, Copy, PartialEq)]
enum Lazy {
    /// The request's `priority: u=7`.
    ClientSignal,
    /// The handler's `Priority` on the final response, after a 103.
    HandlerAfterInterim,
}

async fn urgent_first(how: Lazy) {
    init_tracing();
    const SIZE: usize = 32 << 20;
    // The default response's figures, once it started.
    let default_stats: Arc<Mutex<Option<StreamStats>>> = Arc::default();
    let slot = default_stats.clone();
    let server = Server::bind(
        loopback(),
        ServerConfig::default(),
        move |req: http::Request<RecvBody>| {
            let slot = slot.clone();
            async move {
                if req.uri().path() == "/default" {
                    *slot.lock().unwrap() = req
                        .extensions()
                        .get::<StreamControl>()
                        .map(|c| c.stats().clone());
                    return http::Response::new(Body::from(vec![1u8; SIZE]));
                }
                let chooses = req.uri().path() == "/lazy-interim";
                if chooses {
                    let interim = req
                        .extensions()
                        .get::<StreamControl>()
                        .and_then(StreamControl::interim)
                        .unwrap();
                    interim
                        .send(http::StatusCode::EARLY_HINTS, http::HeaderMap::new())
                        .unwrap();
                }
                // The lazy body is handed over only once the default response has started:
                // from then on both streams have bytes to send, and only priority decides.
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                loop {
                    let started = slot
                        .lock()
                        .unwrap()
                        .as_ref()
                        .is_some_and(|s| s.snapshot().time_to_first_byte.is_some());
                    if started {
                        break;
                    }
                    assert!(std::time::Instant::now() < deadline, "no default response");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let mut resp = http::Response::new(Body::from(vec![1u8; SIZE]));
                if chooses {
                    resp.extensions_mut().insert(Priority::new(7, false));
                }
                resp
            }
        },
    )
    .await
    .unwrap();
    let mut c = RawClient::connect_with_windows(server.local_addr(), 64 << 20, 256 << 20).await;
    let request = |path: &'static str, priority: Option<&'static str>| {
        let mut h = vec![
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", path),
        ];
        if let Some(p) = priority {
            h.push(("priority", p));
        }
        h
    };
    let lazy = match how {
        Lazy::ClientSignal => c.request(&request("/lazy", Some("u=7"))),
        Lazy::HandlerAfterInterim => c.request(&request("/lazy-interim", None)),
    };
    c.exchange().await;
    eventually(
        Duration::from_secs(5),
        "the first request at the server",
        || async { routed_count(&server).await == 1 },
    )
    .await;
    let default = c.request(&request("/default", None));
    assert_eq!((lazy, default), (0, 4));
    let mut o = StreamOutcome::default();
    c.drive_until(default, &mut o, "the default response", |o| o.finished)
        .await;
    assert_eq!(o.body, SIZE);
    let lazy_arrived = c.read_available(lazy);
    assert!(
        lazy_arrived < SIZE / 8,
        "the urgency-7 response had {lazy_arrived} of {SIZE} bytes when the default one was \
         complete: it was not sent after it"
    );
}

/// RFC 9218 end to end through the write scheduler: four large downloads requested least
/// urgent first (urgencies 7, 5, 3, 1, all on one connection, in one flight) complete most
/// urgent first. The client reads every byte the moment it arrives, so the order is the server's.
/// With three or more streams queued, the old scheduler's `swap_remove` put a less urgent
/// stream in front of more urgent ones; and without the gate, every gap between a grant and its
/// bytes let a less urgent stream take the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_downloads_complete_in_urgency_order() {
    const SIZE: usize = 6 << 20;
    let server = builtin_server(ServerConfig::default()).await;
    // Windows large enough that flow control, not priority, never decides the order.
    let mut c = RawClient::connect_with_windows(server.local_addr(), 16 << 20, 64 << 20).await;
    let path = format!("/bytes/{SIZE}");
    let mut ids = Vec::new();
    for urgency in [7u8, 5, 3, 1] {
        let p = format!("u={urgency}");
        let id = c.request(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", &path),
            ("priority", &p),
        ]);
        ids.push((id, urgency));
    }
    let order = c
        .finish_order(
            &ids.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            Duration::from_secs(30),
        )
        .await;
    assert!(order.iter().all(|(_, n)| *n == SIZE), "{order:?}");
    let urgencies: Vec<u8> = order
        .iter()
        .map(|(id, _)| ids.iter().find(|(i, _)| i == id).unwrap().1)
        .collect();
    assert_eq!(urgencies, vec![1, 3, 5, 7]);
}
