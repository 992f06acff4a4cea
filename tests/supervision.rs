//! Supervision and the live tree, on loopback UDP with real quiche on both sides: the receive
//! loop's restart budget and its escalation to the application's supervisor, failure rings,
//! and snapshots taken while traffic runs.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{mpsc, Semaphore};
use troupe::h3::{Body, ClientEndpoint, H3Settings, RecvBody, Server, ServerConfig};
use troupe::transport::{FailureKind, QuicSettings, RestartPolicy};

/// An application actor that supervises a troupe endpoint and reports what it hears.
struct TestSupervisor;

impl Actor for TestSupervisor {
    type Msg = ();
    type State = mpsc::UnboundedSender<SupervisionEvent>;
    type Arguments = mpsc::UnboundedSender<SupervisionEvent>;

    async fn pre_start(
        &self,
        _: ActorRef<()>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        evt: SupervisionEvent,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = tx.send(evt);
        Ok(())
    }
}

/// The receive loop made to panic repeatedly: it restarts up to the policy's limit (traffic
/// works between restarts, the budget and the ring show each restart), then the failure
/// escalates: the application's supervising actor gets `ActorFailed` for the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receive_loop_restarts_then_escalates_to_the_application() {
    init_tracing();
    let (tx, mut events) = mpsc::unbounded_channel();
    let (sup, _) = Actor::spawn(None, TestSupervisor, tx).await.unwrap();
    let mut config = ServerConfig::default();
    config.quic.receive_loop_restarts = RestartPolicy::new(2, Duration::from_secs(60));
    config.supervisor = Some(sup.get_cell());
    let svc = troupe::service::Builtin::new();
    let server = Server::bind(loopback(), config, move |req| {
        let svc = svc.clone();
        async move { svc.handle(req).await }
    })
    .await
    .unwrap();
    let before = server.snapshot().await;
    assert_eq!(before.supervisor, Some(sup.get_id().to_string()));
    assert_eq!(before.receive_loop.budget.used, 0);
    assert_eq!(before.receive_loop.budget.max_restarts, 2);

    let (_ep, client) = connect(&server).await;
    for i in 1..=2u32 {
        server.endpoint().inject_receive_loop_panic();
        // The next datagram makes the loop panic; QUIC retransmits what was lost with it.
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            client.send(get(&server, "/bytes/5000")),
        )
        .await
        .unwrap_or_else(|_| panic!("request after restart {i} timed out"))
        .unwrap();
        assert_eq!(r.into_body().collect().await.unwrap().len(), 5000);
        let snap = server.snapshot().await;
        assert_eq!(snap.receive_loop.budget.used, i, "restart {i}");
        assert_eq!(snap.receive_loop.restarts, u64::from(i));
        let last = snap.failures.last().expect("the restart is in the ring");
        assert_eq!(last.who, "receive loop");
        assert_eq!(last.kind, FailureKind::Restarted);
        assert!(last.why.contains("injected receive loop panic"), "{last:?}");
    }
    // Nothing escalated so far (the supervisor only heard the endpoint start).
    while let Ok(evt) = events.try_recv() {
        assert!(
            matches!(evt, SupervisionEvent::ActorStarted(_)),
            "unexpected {evt:?}"
        );
    }

    // One more within the window: the endpoint fails to its supervisor.
    server.endpoint().inject_receive_loop_panic();
    let poke = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    poke.send_to(b"wake up", server.local_addr()).unwrap();
    let escalation = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await.expect("supervisor alive") {
                SupervisionEvent::ActorFailed(cell, err) => return (cell, err.to_string()),
                _ => continue,
            }
        }
    })
    .await
    .expect("the escalation reached the supervisor");
    assert_eq!(escalation.0.get_id(), server.endpoint().actor().get_id());
    assert!(
        escalation.1.contains("restart budget") && escalation.1.contains("injected"),
        "{}",
        escalation.1
    );
    let snap = server.snapshot().await;
    let kinds: Vec<FailureKind> = snap.failures.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [
            FailureKind::Restarted,
            FailureKind::Restarted,
            FailureKind::Escalated
        ]
    );
    assert_eq!(snap.receive_loop.budget.fraction_used(), 1.0);
    sup.stop(None);
}

/// Each request uploads `up(i)` bytes and gets `down(i)` bytes back, the first `first(i)` of
/// them at once and the rest when the gate opens.
fn up(i: u64) -> u64 {
    100 + i
}
fn first(i: u64) -> u64 {
    200 + i
}
fn down(i: u64) -> u64 {
    first(i) + 50
}

/// A snapshot taken during 1,000 active streams (10 connections x 100) lists all of them,
/// each with the byte counts the peers sent and received so far, and its request line; after
/// every connection closes, the snapshot is empty, no route is left and no actor is alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_during_a_thousand_streams_lists_each_with_its_bytes() {
    const CONNS: u64 = 10;
    const PER_CONN: u64 = 100;
    init_tracing();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let server = Server::bind(
        loopback(),
        ServerConfig::default(),
        move |req: http::Request<RecvBody>| {
            let gate = g.clone();
            async move {
                let i: u64 = req.uri().path()[3..].parse().unwrap();
                let got = req.into_body().collect().await.unwrap();
                assert_eq!(got.len() as u64, up(i));
                let (tx, body) = Body::channel(4);
                tokio::spawn(async move {
                    let head = vec![b'a'; first(i) as usize];
                    tx.send_data(Bytes::from(head)).await.ok();
                    let _permit = gate.acquire().await;
                    let rest = vec![b'b'; (down(i) - first(i)) as usize];
                    tx.send_data(Bytes::from(rest)).await.ok();
                    tx.finish();
                });
                http::Response::new(body)
            }
        },
    )
    .await
    .unwrap();
    let ep = ClientEndpoint::bind(
        loopback(),
        QuicSettings::default(),
        trusting(&server),
        H3Settings::default(),
    )
    .await
    .unwrap();
    let ready = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for c in 0..CONNS {
        let client = ep.connect(server.local_addr(), "localhost").await.unwrap();
        clients.push(client.clone());
        for k in 0..PER_CONN {
            let i = c * PER_CONN + k;
            let client = client.clone();
            let ready = ready.clone();
            let req = http::Request::post(url(&server, &format!("/s/{i}")))
                .body(Body::from(vec![b'u'; up(i) as usize]))
                .unwrap();
            tasks.push(tokio::spawn(async move {
                let mut body = client.send(req).await.unwrap().into_body();
                let mut got = 0u64;
                while got < first(i) {
                    got += body.chunk().await.unwrap().unwrap().len() as u64;
                }
                assert_eq!(got, first(i), "the server sent only the first part");
                ready.fetch_add(1, Ordering::Release);
                while let Some(c) = body.chunk().await {
                    got += c.unwrap().len() as u64;
                }
                assert_eq!(got, down(i));
            }));
        }
    }
    let total = (CONNS * PER_CONN) as usize;
    // Well inside the idle timeout (30 s), so a stall shows as itself, not as idle closes.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ready.load(Ordering::Acquire) < total {
        if std::time::Instant::now() > deadline {
            // Say where each side's streams are: which ids each connection routes.
            let mut report = String::new();
            for (side, snap) in [
                ("client", ep.snapshot().await),
                ("server", server.snapshot().await),
            ] {
                for c in &snap.connections {
                    let ids: Vec<u64> = c.streams.iter().map(|s| s.stream_id).collect();
                    report += &format!(
                        "{side} connection {} answered {} streams {} last id {:?}\n",
                        c.trace_id,
                        c.answered,
                        ids.len(),
                        ids.last()
                    );
                }
            }
            let waiting: Vec<_> = clients.iter().map(|c| c.waiting_requests()).collect();
            panic!(
                "only {} of {total} streams got their first part; requests waiting per \
                 connection {waiting:?}\n{report}",
                ready.load(Ordering::Acquire)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = std::time::Instant::now();
    let snap = server.snapshot().await;
    let took = started.elapsed();
    assert_eq!(snap.role, "server");
    assert_eq!(snap.connections.len(), CONNS as usize);
    let mut seen = vec![false; total];
    for conn in &snap.connections {
        assert!(conn.answered, "connection {} did not answer", conn.trace_id);
        assert_eq!(conn.alpn, "h3");
        assert_eq!(conn.streams_open, PER_CONN as usize);
        assert!(conn.rtt_ms.is_some() && conn.cwnd.is_some());
        assert!(conn.packets_received > 0 && conn.bytes_sent > 0);
        for s in &conn.streams {
            assert_eq!(s.method.as_deref(), Some("POST"));
            let path = s.path.as_deref().unwrap();
            let i: u64 = path[3..].parse().unwrap();
            assert!(!seen[i as usize], "stream for {path} listed twice");
            seen[i as usize] = true;
            // What the client sent, and what the client has received.
            assert_eq!(s.recv.bytes, up(i), "{path} received");
            assert_eq!(s.recv.end, Some("fin"), "{path}");
            assert_eq!(s.send.bytes, first(i), "{path} sent");
            assert_eq!(s.send.state, "open", "{path}");
            assert_eq!(s.actor.status, "Running");
            assert!(s.actor.meter.messages_handled > 0);
        }
    }
    assert!(seen.iter().all(|s| *s), "every stream is in the snapshot");
    // The whole tree serializes.
    let json = serde_json::to_string(&snap).unwrap();
    assert!(json.contains("\"kind\":\"stream\""));
    eprintln!("snapshot of {total} streams took {took:?}");

    gate.add_permits(total);
    for t in tasks {
        t.await.unwrap();
    }
    for c in &clients {
        c.close();
    }
    for c in &clients {
        c.closed().await;
    }
    server.endpoint().wait_idle().await;
    let after = server.snapshot().await;
    assert!(after.connections.is_empty(), "{:?}", after.connections);
    assert_eq!(server.endpoint().route_count(), 0, "no route is left");
    assert_eq!(
        server.endpoint().connection_count(),
        0,
        "no connection actor"
    );
    assert_eq!(
        server.endpoint().connection_children(),
        0,
        "no stream actor"
    );
    assert_eq!(after.counters.connections_closed, CONNS);
}

/// A handler that blocks its stream actor for 2 s (CPU-bound work in its poll) shows up while it
/// runs: the stream's node says what it is handling and for how long, the warnings name it,
/// and it is first in the top-N by busy time over the window. Watched from a runtime of its
/// own, as the admin endpoint watches: the blocked thread can stall this runtime's timers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_busy_for_two_seconds_is_warned_about_and_tops_busy() {
    use troupe::transport::diagnose::{top, TopBy, WarningKind, Warnings};
    let server = Arc::new(busy_server().await);
    let (_ep, client) = connect(&server).await;
    // Some ordinary traffic first, so the window has other actors in it.
    ordinary_requests(&server, &client, 5).await;
    let older = server.snapshot().await;
    let busy = {
        let client = client.clone();
        let req = get(&server, "/busy");
        tokio::spawn(async move { client.send(req).await.unwrap().into_body().collect().await })
    };
    let watched = server.clone();
    let (warning, snap) = from_another_runtime(move || async move {
        let mut warnings = Warnings::default();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let snap = watched.snapshot().await;
            let w = warnings.observe(&snap, std::time::Instant::now());
            if let Some(hit) = w.into_iter().find(|w| w.kind == WarningKind::HandlerBusy) {
                break (hit, snap);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no warning for the busy handler"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let stream = snap.connections[0]
        .streams
        .iter()
        .find(|s| s.path.as_deref() == Some("/busy"))
        .expect("the busy stream is listed");
    let handling = stream
        .actor
        .meter
        .handling
        .as_ref()
        .expect("it is in a handler");
    assert!(handling.for_secs >= 1.0, "{handling:?}");
    assert_eq!(warning.actor.as_deref(), Some(stream.actor.id.as_str()));
    assert!(
        warning.message.contains("busy handling"),
        "{}",
        warning.message
    );
    let ranked = top(Some(&older), &snap, TopBy::Busy, 3);
    assert_eq!(ranked[0].actor, stream.actor.id, "{ranked:?}");
    assert!(ranked[0].value >= 1.0);
    assert_eq!(&busy.await.unwrap().unwrap()[..], b"done");
}
