//! Shared helpers: a loopback server with the built-in routes, a client that trusts it, and a
//! polling check with a deadline (never a bare sleep).

#![allow(dead_code)]

pub mod raw;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use troupe::h3::{Client, ClientEndpoint, H3Settings, Server, ServerConfig};
use troupe::service::Builtin;
use troupe::transport::{QuicSettings, TlsConfig, Verify};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TROUPE_TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A loopback TCP address with a free port (for the admin endpoint).
pub fn loopback_tcp() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub async fn builtin_server(config: ServerConfig) -> Server {
    init_tracing();
    let svc = Builtin::new();
    Server::bind(loopback(), config, move |req| {
        let svc = svc.clone();
        async move { svc.handle(req).await }
    })
    .await
    .expect("bind server")
}

pub fn trusting(server: &Server) -> TlsConfig {
    TlsConfig {
        identity: None,
        verify: Verify::CaPem(server.identity().certificate_pem().to_vec()),
    }
}

pub async fn client_endpoint(server: &Server, quic: QuicSettings) -> ClientEndpoint {
    ClientEndpoint::bind(loopback(), quic, trusting(server), H3Settings::default())
        .await
        .expect("bind client")
}

pub async fn connect(server: &Server) -> (ClientEndpoint, Client) {
    let ep = client_endpoint(server, QuicSettings::default()).await;
    let c = ep
        .connect(server.local_addr(), "localhost")
        .await
        .expect("connect");
    (ep, c)
}

pub fn url(server: &Server, path: &str) -> String {
    format!("https://localhost:{}{}", server.local_addr().port(), path)
}

pub fn get(server: &Server, path: &str) -> http::Request<troupe::h3::Body> {
    http::Request::get(url(server, path))
        .body(troupe::h3::Body::empty())
        .unwrap()
}

/// A server that allows one request stream per connection and answers each request "done"
/// once it takes a permit from the returned gate.
pub async fn one_stream_gated_server() -> (Server, std::sync::Arc<tokio::sync::Semaphore>) {
    init_tracing();
    let mut config = ServerConfig::default();
    config.quic.initial_max_streams_bidi = 1;
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let server = Server::bind(
        loopback(),
        config,
        move |_req: http::Request<troupe::h3::RecvBody>| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                http::Response::new(troupe::h3::Body::from("done"))
            }
        },
    )
    .await
    .unwrap();
    (server, release)
}

/// A server whose `/busy` handler blocks its stream actor for 2 s (CPU-bound work in its poll,
/// as a buggy handler would); every other path answers "done" at once.
pub async fn busy_server() -> Server {
    init_tracing();
    Server::bind(
        loopback(),
        ServerConfig::default(),
        |req: http::Request<troupe::h3::RecvBody>| async move {
            if req.uri().path() == "/busy" {
                // Deliberately blocking: the stream actor is stuck in this poll.
                std::thread::sleep(Duration::from_secs(2));
            }
            http::Response::new(troupe::h3::Body::from("done"))
        },
    )
    .await
    .unwrap()
}

/// Sends `n` requests to `/` one after another, reading each response whole.
pub async fn ordinary_requests(server: &Server, client: &Client, n: usize) {
    for _ in 0..n {
        let r = client.send(get(server, "/")).await.unwrap();
        r.into_body().collect().await.unwrap();
    }
}

/// Sends `n` requests concurrently; then waits until one is at the server and `waiting` wait
/// in the client for a stream.
pub async fn send_until_waiting(
    server: &Server,
    client: &Client,
    n: usize,
    waiting: usize,
) -> Vec<
    tokio::task::JoinHandle<Result<http::Response<troupe::h3::RecvBody>, troupe::h3::RequestError>>,
> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let client = client.clone();
        let req = get(server, "/held");
        tasks.push(tokio::spawn(async move { client.send(req).await }));
    }
    eventually(
        Duration::from_secs(5),
        "one request at the server",
        || async { routed_count(server).await == 1 },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "requests waiting in the client",
        || async { client.waiting_requests() == waiting },
    )
    .await;
    tasks
}

/// How many request streams the server's connections route to stream actors right now.
pub async fn routed_count(server: &Server) -> usize {
    server.routed_streams().await.iter().map(Vec::len).sum()
}

/// The server connections' figures, asked of each connection actor.
pub async fn server_connection_infos(server: &Server) -> Vec<troupe::transport::ConnectionInfo> {
    let mut out = Vec::new();
    for conn in server.endpoint().connections() {
        if let Ok(ractor::rpc::CallResult::Success(info)) = conn
            .call(
                troupe::transport::ConnMsg::Info,
                Some(Duration::from_secs(5)),
            )
            .await
        {
            out.push(info);
        }
    }
    out
}

/// Parked stream actors in `server`'s worker pools, from its snapshot.
pub async fn parked_stream_actors(server: &troupe::h3::Server) -> usize {
    server.snapshot().await.parked_stream_actors
}

/// Polls `check` until it returns true or `deadline` passes; panics with `what` on timeout.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `watch` on a thread and a runtime of its own, as an operator's tool would, and returns
/// what it returns (a panic in it fails the caller's test). For tests that observe a handler
/// blocking a worker thread: while it blocks, tokio may leave the whole runtime's timers and
/// sockets undriven (the idle worker can sleep on a condvar while no worker holds the driver),
/// so a watcher on that runtime would stall with it and see nothing until the block ends.
pub async fn from_another_runtime<F, Fut, T>(watch: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the watcher");
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(watch())));
        let _ = tx.send(out);
    });
    // A oneshot wakes this task's thread directly: no timer or socket of this runtime is needed.
    match rx
        .await
        .expect("the watcher's thread ended without an answer")
    {
        Ok(out) => out,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

pub fn check_pattern(body: &[u8], n: usize) {
    assert_eq!(body.len(), n, "body length");
    if let Some(i) = body
        .iter()
        .enumerate()
        .position(|(i, b)| *b != troupe::service::pattern_byte(i as u64))
    {
        panic!(
            "byte {i} of {n} is {} not {}",
            body[i],
            troupe::service::pattern_byte(i as u64)
        );
    }
}
