//! What the live tree costs (`cargo bench --bench live_tree`, also run by `cargo xtask bench`):
//!
//! 1. the actor meters' counters per message (one counted send, one handled message), and per
//!    request: times the messages a request costs, counted on a real connection;
//! 2. the time to snapshot a server carrying 10,000 live streams (100 connections x 100
//!    streams, each parked in its handler), while they stay open.
//!
//! Environment: `BENCH_TREE_STREAMS` (default 10000, a multiple of 100).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use troupe::h3::{Body, ClientEndpoint, H3Settings, RecvBody, Server, ServerConfig};
use troupe::transport::{ActorKind, ActorMeter, QuicSettings, TlsConfig, Verify};

fn meter_cost() -> f64 {
    const N: u32 = 5_000_000;
    let m = ActorMeter::new(ActorKind::Stream, &["msg"]);
    // Warm up.
    for _ in 0..100_000 {
        m.on_send();
        drop(m.begin(0));
    }
    let t = Instant::now();
    for _ in 0..N {
        m.on_send();
        drop(std::hint::black_box(m.begin(0)));
    }
    t.elapsed().as_nanos() as f64 / f64::from(N)
}

fn main() {
    let per_message_ns = meter_cost();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let streams: usize = std::env::var("BENCH_TREE_STREAMS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        let gate = Arc::new(Semaphore::new(0));
        let g = gate.clone();
        let server = Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerConfig::default(),
            move |req: http::Request<RecvBody>| {
                let gate = g.clone();
                async move {
                    if req.uri().path() == "/park" {
                        let _p = gate.acquire().await;
                    }
                    http::Response::new(Body::from("ok"))
                }
            },
        )
        .await
        .unwrap();
        let tls = TlsConfig {
            identity: None,
            verify: Verify::CaPem(server.identity().certificate_pem().to_vec()),
        };
        let ep = ClientEndpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            QuicSettings::default(),
            tls,
            H3Settings::default(),
        )
        .await
        .unwrap();
        let url = |p: &str| format!("https://localhost:{}{p}", server.local_addr().port());

        // Messages per request, on one connection: what its meter and its streams' meters
        // handled, over many sequential requests.
        let one = ep.connect(server.local_addr(), "localhost").await.unwrap();
        let before = server.snapshot().await;
        let handled_before: u64 = before
            .connections
            .iter()
            .map(|c| c.actor.meter.messages_handled)
            .sum();
        const REQS: u64 = 2000;
        for _ in 0..REQS {
            let r = one
                .send(http::Request::get(url("/")).body(Body::empty()).unwrap())
                .await
                .unwrap();
            r.into_body().collect().await.unwrap();
        }
        let after = server.snapshot().await;
        let conn_msgs: u64 = after
            .connections
            .iter()
            .map(|c| c.actor.meter.messages_handled)
            .sum::<u64>()
            - handled_before;
        let conn_per_req = conn_msgs as f64 / REQS as f64;
        one.close();

        // Stream actor messages per request: read from streams parked mid-request (their
        // meters count what they handled up to the response), plus the one that finishes it.
        let mut clients = Vec::new();
        for _ in 0..streams / 100 {
            clients.push(ep.connect(server.local_addr(), "localhost").await.unwrap());
        }
        let mut tasks = Vec::new();
        for c in &clients {
            for _ in 0..100 {
                let c = c.clone();
                let req = http::Request::get(url("/park"))
                    .body(Body::empty())
                    .unwrap();
                tasks.push(tokio::spawn(async move {
                    let r = c.send(req).await.unwrap();
                    r.into_body().collect().await.unwrap();
                }));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let n: usize = server
                .snapshot()
                .await
                .connections
                .iter()
                .map(|c| c.streams.len())
                .sum();
            if n == streams {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {n} of {streams} streams open"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut times = Vec::new();
        let mut stream_msgs = 0u64;
        for _ in 0..7 {
            let t = Instant::now();
            let snap = server.snapshot().await;
            times.push(t.elapsed());
            let listed: usize = snap.connections.iter().map(|c| c.streams.len()).sum();
            assert_eq!(listed, streams);
            stream_msgs = snap
                .connections
                .iter()
                .flat_map(|c| &c.streams)
                .map(|s| s.actor.meter.messages_handled)
                .sum();
        }
        times.sort();
        let stream_per_req = stream_msgs as f64 / streams as f64 + 1.0;
        let per_request_ns = per_message_ns * (conn_per_req + stream_per_req);
        println!("live tree");
        println!("  counters per message (send + handle): {per_message_ns:.1} ns");
        println!(
            "  messages per request: connection {conn_per_req:.2}, stream {stream_per_req:.2} \
             (stream: what a parked stream handled, plus the one that finishes it)"
        );
        println!(
            "  counters per request: {:.3} us (aim < 0.3 us)",
            per_request_ns / 1000.0
        );
        println!(
            "  snapshot of {streams} live streams: median {:.2} ms, min {:.2} ms, max {:.2} ms \
             (aim < 10 ms)",
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3
        );
        gate.add_permits(streams);
        for t in tasks {
            t.await.unwrap();
        }
        // Orderly, so no actor is cut off mid-stop when the runtime goes.
        for c in &clients {
            c.close();
        }
        ep.endpoint().shutdown().await;
        server.endpoint().shutdown().await;
    });
}
