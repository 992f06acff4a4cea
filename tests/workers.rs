//! Endpoint workers (`QuicSettings::workers`): sockets sharing one port in an `SO_REUSEPORT`
//! group, each worker a thread running its receive loop and every actor of its connections;
//! connection IDs that name their worker, and the kernel's steering program that keeps a
//! connection's packets on that worker even after the client's address changes.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use troupe::h3::{Body, ClientEndpoint, H3Settings, RecvBody, Server, ServerConfig};
use troupe::transport::{ConfigError, EndpointError, QuicSettings};

/// The tests here count the process's worker threads: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A server with `workers` workers whose handler answers with the name of the thread it runs
/// on (the stream actor polls the handler, so that is the thread of the connection's worker).
async fn thread_naming_server(workers: usize) -> Server {
    init_tracing();
    let mut config = ServerConfig::default();
    config.quic.workers = workers;
    Server::bind(
        loopback(),
        config,
        |_req: http::Request<RecvBody>| async move {
            let name = std::thread::current().name().unwrap_or("?").to_string();
            http::Response::new(Body::from(name))
        },
    )
    .await
    .expect("bind server")
}

async fn thread_of(client: &troupe::h3::Client, server: &Server) -> String {
    let resp = client.send(get(server, "/")).await.expect("request");
    assert_eq!(resp.status(), 200);
    String::from_utf8(resp.into_body().collect().await.unwrap().to_vec()).unwrap()
}

/// This process's threads named `troupe-worker-*`.
fn worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("troupe-worker-"))
        .count()
}

/// Sixteen clients (sixteen source ports, which the kernel hashes over the group) land on both
/// workers; every request of a connection runs on the thread of the worker that accepted it,
/// and no packet reached the other worker. After shutdown the worker threads are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_the_workers_and_stay_on_their_own() {
    let _one = ONE_AT_A_TIME.lock().await;
    let before = worker_threads();
    let server = thread_naming_server(2).await;
    assert_eq!(worker_threads(), before + 2);
    let mut seen = std::collections::BTreeSet::new();
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (ep, client) = connect(&server).await;
        let first = thread_of(&client, &server).await;
        assert!(first.starts_with("troupe-worker-"), "{first}");
        for _ in 0..3 {
            assert_eq!(thread_of(&client, &server).await, first);
        }
        seen.insert(first);
        clients.push((ep, client));
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["troupe-worker-0", "troupe-worker-1"],
        "16 clients should land on both workers"
    );
    // The live tree says which worker runs each connection, and each connection's streams ran
    // on that worker's thread: the parked stream actors that served them, one after another
    // across connections, are the worker's own (an actor of the other worker would have run
    // the handler on its thread).
    let snapshot = server.snapshot().await;
    assert_eq!(snapshot.connections.len(), 16);
    let mut on = [0, 0];
    for c in &snapshot.connections {
        on[c.worker.expect("a server connection has a worker")] += 1;
    }
    assert!(on.iter().all(|n| *n > 0), "{on:?}");
    for (ep, client) in &clients {
        let port = ep.endpoint().local_addr().port();
        let conn = snapshot
            .connections
            .iter()
            .find(|c| c.peer.map(|p| p.port()) == Some(port))
            .expect("every client's connection is in the tree");
        let worker = conn.worker.unwrap();
        assert_eq!(
            thread_of(client, &server).await,
            format!("troupe-worker-{worker}"),
            "a stream ran off its connection's worker"
        );
    }
    assert!(
        snapshot.parked_stream_actors >= 2,
        "both workers keep parked actors: {}",
        snapshot.parked_stream_actors
    );
    let stats = server.stats();
    assert_eq!(stats.worker_datagrams.len(), 2);
    assert!(stats.worker_datagrams.iter().all(|n| *n > 0), "{stats:?}");
    assert_eq!(
        stats.worker_datagrams.iter().sum::<u64>(),
        stats.datagrams_received
    );
    assert_eq!(stats.datagrams_misrouted, 0, "{stats:?}");
    drop(clients);
    server.shutdown().await;
    eventually(Duration::from_secs(10), "worker threads to end", || async {
        worker_threads() == before
    })
    .await;
}

/// A UDP relay between one client and the server, standing in for a NAT: it forwards from a
/// "back" socket whose port changes (a NAT rebinding) when told to. The old mapping still
/// delivers what the server sends to it, as NATs keep one for a while: quiche may fall back to
/// the old path when validating the new one times out on a loaded machine, and the test is
/// about where the new path's packets land, not about quiche's validation.
struct Relay {
    front: SocketAddr,
    rebind: watch::Sender<u32>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(server: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let (rebind, mut rebinds) = watch::channel(0u32);
        let task = tokio::spawn(async move {
            let mut back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut old: Option<UdpSocket> = None;
            let mut client: Option<SocketAddr> = None;
            let (mut a, mut b, mut c) = (vec![0u8; 65_536], vec![0u8; 65_536], vec![0u8; 65_536]);
            loop {
                let from_old = async {
                    match &old {
                        Some(s) => s.recv_from(&mut c).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let (n, from) = r.unwrap();
                        client = Some(from);
                        let _ = back.send_to(&a[..n], server).await;
                    }
                    r = back.recv_from(&mut b) => {
                        let (n, _) = r.unwrap();
                        if let Some(to) = client {
                            let _ = front.send_to(&b[..n], to).await;
                        }
                    }
                    r = from_old => {
                        let (n, _) = r.unwrap();
                        if let Some(to) = client {
                            let _ = front.send_to(&c[..n], to).await;
                        }
                    }
                    r = rebinds.changed() => {
                        if r.is_err() {
                            return;
                        }
                        // A new source port toward the server, as a NAT that rebound.
                        let new = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                        old = Some(std::mem::replace(&mut back, new));
                    }
                }
            }
        });
        Relay {
            front: addr,
            rebind,
            task,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Eight clients behind "NATs" that rebind to new ports mid-connection: the kernel's hash
/// alone would put about half of them on the other worker afterwards (all eight staying put by
/// chance: 1 in 256). The steering program reads the worker from the connection ID: every
/// request after the rebinding still runs on the worker that accepted the connection, the
/// server saw each new address (a second path), and no packet reached the wrong worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_address_changes_stays_on_its_worker() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = thread_naming_server(2).await;
    let mut conns = Vec::new();
    for _ in 0..8 {
        let relay = Relay::start(server.local_addr()).await;
        let ep = client_endpoint(&server, QuicSettings::default()).await;
        let client = ep.connect(relay.front, "localhost").await.expect("connect");
        let worker = thread_of(&client, &server).await;
        conns.push((relay, ep, client, worker));
    }
    let infos = server_connection_infos(&server).await;
    assert!(infos.iter().all(|i| i.stats.paths_count == 1), "{infos:?}");
    for (relay, _, _, _) in &conns {
        relay.rebind.send_modify(|n| *n += 1);
    }
    for (_, _, client, worker) in &conns {
        for _ in 0..3 {
            assert_eq!(&thread_of(client, &server).await, worker);
        }
    }
    // Each connection's server side saw the new address: quiche opened a second path for it
    // (whether it then validated it, or fell back to the old one, is quiche's business).
    let infos = server_connection_infos(&server).await;
    assert_eq!(infos.len(), 8);
    for i in &infos {
        assert!(i.stats.paths_count >= 2, "{}: {:?}", i.trace_id, i.stats);
    }
    let stats = server.stats();
    assert_eq!(stats.datagrams_misrouted, 0, "{stats:?}");
    server.shutdown().await;
}

/// Settings a worker layout cannot have are refused at bind, naming the field.
#[tokio::test]
async fn impossible_worker_settings_are_refused_naming_the_field() {
    init_tracing();
    let refused = |r: Result<(), EndpointError>| match r {
        Err(EndpointError::Config(ConfigError::Invalid { field, why })) => (field, why),
        other => panic!("expected a refusal, got {other:?}"),
    };
    for (workers, host, field) in [
        (0, vec![], "workers"),
        (257, vec![], "workers"),
        (2, vec![0; 7], "cid_host_id"),
    ] {
        let mut config = ServerConfig::default();
        config.quic.workers = workers;
        config.quic.cid_host_id = host;
        let r = Server::bind(loopback(), config, |_req: http::Request<RecvBody>| async {
            http::Response::new(Body::empty())
        })
        .await
        .map(|_| ());
        let (f, why) = refused(r);
        assert_eq!(f, field, "{why}");
    }
    let mut quic = QuicSettings::default();
    quic.workers = 2;
    let r = ClientEndpoint::bind(loopback(), quic, Default::default(), H3Settings::default())
        .await
        .map(|_| ());
    let (f, why) = refused(r);
    assert_eq!(f, "workers");
    assert!(why.contains("set it to 1"), "{why}");
}
