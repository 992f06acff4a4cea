//! The client connects the way curl does: a name is resolved (`localhost` is both loopback
//! addresses), every address is tried Happy Eyeballs style (IPv6 first, the next after the
//! Connection Attempt Delay), the first handshake wins and the others are closed, and the
//! error when none answers names every address tried. On loopback UDP only.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use troupe::h3::{ClientEndpoint, H3Settings, Server, ServerConfig};
use troupe::transport::{ConnectError, QuicSettings};

async fn builtin_server_on(addr: &str) -> Server {
    init_tracing();
    let svc = troupe::service::Builtin::new();
    Server::bind(addr.parse().unwrap(), ServerConfig::default(), move |req| {
        let svc = svc.clone();
        async move { svc.handle(req).await }
    })
    .await
    .expect("bind server")
}

/// A client endpoint on `[::]:0`: one dual-stack socket for both families.
async fn dual_stack_client(server: &Server, quic: QuicSettings) -> ClientEndpoint {
    ClientEndpoint::bind(
        "[::]:0".parse().unwrap(),
        quic,
        trusting(server),
        H3Settings::default(),
    )
    .await
    .expect("bind a dual-stack client")
}

fn get_from(port: u16) -> http::Request<troupe::h3::Body> {
    http::Request::get(format!("https://localhost:{port}/"))
        .body(troupe::h3::Body::empty())
        .unwrap()
}

/// A server on `[::1]` only, and another on `127.0.0.1` only: `localhost:PORT` reaches each
/// (and the certificate is checked for `localhost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_reaches_a_server_on_either_family() {
    for listen in ["[::1]:0", "127.0.0.1:0"] {
        let server = builtin_server_on(listen).await;
        let port = server.local_addr().port();
        let ep = dual_stack_client(&server, QuicSettings::default()).await;
        let c = ep
            .connect_to(&format!("localhost:{port}"))
            .await
            .unwrap_or_else(|e| panic!("server on {listen}: {e}"));
        assert_eq!(c.connection().peer(), server.local_addr(), "{listen}");
        let r = c.send(get_from(port)).await.unwrap();
        assert_eq!(r.status(), 200, "{listen}");
        let body = r.into_body().collect().await.unwrap();
        assert_eq!(&body[..], troupe::service::GREETING.as_bytes());
        // The loser (the other family, where nothing listens) is closed, not left to time out.
        eventually(
            Duration::from_secs(4),
            "only the winning connection left",
            || {
                let n = ep.endpoint().connection_count();
                async move { n == 1 }
            },
        )
        .await;
        c.close();
    }
}

/// The first address does not answer at all (a socket that never reads), the second is the
/// server: the connection is up within a second, not after the 5 s handshake timeout, and
/// the silent attempt is closed instead of retransmitting until its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_first_address_costs_one_attempt_delay() {
    let server = builtin_server(ServerConfig::default()).await;
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ep = dual_stack_client(&server, QuicSettings::default()).await;
    let addrs = [silent.local_addr().unwrap(), server.local_addr()];
    let started = Instant::now();
    let c = ep.connect_addrs("localhost", &addrs).await.unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "connected after {took:?}: the second address waited for the first's timeout"
    );
    assert_eq!(c.connection().peer(), server.local_addr());
    let mut first = [0u8; 2048];
    let n = silent
        .try_recv(&mut first)
        .expect("the first address was tried first");
    assert!(n >= 1200, "an Initial is padded to 1200 bytes, got {n}");
    let r = c.send(get(&server, "/")).await.unwrap();
    assert_eq!(r.status(), 200);
    eventually(
        Duration::from_secs(4),
        "the abandoned attempt's actor stopped",
        || {
            let n = ep.endpoint().connection_count();
            async move { n == 1 }
        },
    )
    .await;
}

/// No address answers: the error names every address tried, and the attempts overlapped
/// (the whole thing takes about one handshake timeout, not one per address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_no_address_answers_the_error_names_each() {
    let server = builtin_server(ServerConfig::default()).await;
    let silent4 = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent6 = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
    let mut quic = QuicSettings::default();
    quic.handshake_timeout = Duration::from_secs(1);
    let ep = dual_stack_client(&server, quic).await;
    let (a4, a6) = (silent4.local_addr().unwrap(), silent6.local_addr().unwrap());
    let started = Instant::now();
    let Err(e) = ep.connect_addrs("localhost", &[a4, a6]).await else {
        panic!("nothing answers");
    };
    let took = started.elapsed();
    match &e {
        ConnectError::AllAddressesFailed { name, tried } => {
            assert_eq!(name, "localhost");
            assert_eq!(tried.len(), 2, "{e}");
            assert!(
                tried
                    .iter()
                    .all(|t| matches!(t, ConnectError::HandshakeTimeout { .. })),
                "{e}"
            );
        }
        other => panic!("unexpected error {other}"),
    }
    let text = e.to_string();
    // IPv6 first, then IPv4, each named.
    let (p6, p4) = (
        text.find(&a6.to_string()).expect("names the IPv6 address"),
        text.find(&a4.to_string()).expect("names the IPv4 address"),
    );
    assert!(p6 < p4, "{text}");
    assert!(
        took < Duration::from_millis(1900),
        "attempts ran one after another ({took:?})"
    );
    eventually(Duration::from_secs(4), "no connection left", || {
        let n = ep.endpoint().connection_count();
        async move { n == 0 }
    })
    .await;
}

/// An IPv4-only client endpoint cannot reach an IPv6 address: the error says so and how to
/// fix it, and the name's IPv4 address is still tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_endpoint_says_why_it_skips_ipv6() {
    let server = builtin_server_on("[::1]:0").await;
    let port = server.local_addr().port();
    let mut quic = QuicSettings::default();
    quic.handshake_timeout = Duration::from_secs(1);
    let ep = ClientEndpoint::bind(loopback(), quic, trusting(&server), H3Settings::default())
        .await
        .unwrap();
    let Err(e) = ep.connect_to(&format!("localhost:{port}")).await else {
        panic!("the server is on IPv6 only");
    };
    let text = e.to_string();
    assert!(
        text.contains(&format!("[::1]:{port} cannot be reached")),
        "{text}"
    );
    assert!(text.contains("bind the client to [::]:0"), "{text}");
    assert!(
        text.contains(&format!("no QUIC server answered at 127.0.0.1:{port}")),
        "{text}"
    );
    // A bad authority is a clear error before any packet.
    for bad in ["", "user@localhost:1", "localhost:port"] {
        let Err(e) = ep.connect_to(bad).await else {
            panic!("{bad:?} accepted");
        };
        assert!(e.to_string().contains("authority"), "{bad:?}: {e}");
    }
    let one: Vec<SocketAddr> = Vec::new();
    assert!(matches!(
        ep.connect_addrs("localhost", &one).await,
        Err(ConnectError::NoAddress { .. })
    ));
}
