//! Version negotiation and stateless Retry at the endpoint, on loopback UDP.

mod common;

use std::time::Duration;

use common::*;
use troupe::h3::ServerConfig;
use troupe::transport::quiche;

/// An Initial with a version we do not speak gets a Version Negotiation packet, and no
/// connection is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_version_gets_version_negotiation() {
    let server = builtin_server(ServerConfig::default()).await;
    version_negotiation_from(server.local_addr());
    let stats = server.stats();
    assert_eq!(stats.version_negotiations, 1);
    assert_eq!(stats.connections_accepted, 0);
    assert_eq!(server.endpoint().connection_count(), 0);
}

/// Sends an Initial with a reserved ("greasing") version that no server supports, and checks the
/// Version Negotiation that must come back.
fn version_negotiation_from(server: std::net::SocketAddr) {
    let version = 0x1a2a_3a4a;
    let mut config = quiche::Config::new(version).unwrap();
    config.set_application_protos(&[b"h3"]).unwrap();
    config.verify_peer(false);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let scid = quiche::ConnectionId::from_ref(&[7u8; 16]);
    let mut conn = quiche::connect(
        Some("localhost"),
        &scid,
        sock.local_addr().unwrap(),
        server,
        &mut config,
    )
    .unwrap();
    let mut out = [0u8; 1500];
    let (n, _) = conn.send(&mut out).unwrap();
    assert!(n >= 1200, "an Initial is padded to 1200 bytes");
    sock.send_to(&out[..n], server).unwrap();

    let mut buf = [0u8; 1500];
    let (len, _) = sock
        .recv_from(&mut buf)
        .expect("a Version Negotiation packet");
    let hdr = quiche::Header::from_slice(&mut buf[..len], 16).unwrap();
    assert_eq!(hdr.ty, quiche::Type::VersionNegotiation);
    assert_eq!(
        hdr.dcid.as_ref(),
        scid.as_ref(),
        "echoes our source connection ID"
    );
}

/// A key-log file that blocks on open (a FIFO nobody reads yet) holds up only its own
/// connection: the receive loop, which spawns connection actors, keeps answering. (The file
/// used to be opened in the actor's `pre_start`, which the receive loop awaits: the whole
/// endpoint went deaf.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_key_log_does_not_stall_the_endpoint() {
    let dir = std::env::temp_dir().join(format!("troupe-keylog-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("keys.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let mut config = ServerConfig::default();
    config.quic.keylog_file = Some(fifo.clone());
    let server = builtin_server(config).await;
    let ep = client_endpoint(&server, troupe::transport::QuicSettings::default()).await;
    let addr = server.local_addr();
    let first = tokio::spawn(async move { ep.connect(addr, "localhost").await.map(|_| ()) });
    eventually(
        Duration::from_secs(5),
        "the connection accepted",
        || async { server.stats().connections_accepted == 1 },
    )
    .await;
    // Its actor waits for the FIFO; the endpoint still answers.
    tokio::task::spawn_blocking(move || version_negotiation_from(addr))
        .await
        .unwrap();
    // A reader arrives: the connection goes on, and its secrets are logged.
    let reader = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&fifo).unwrap();
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&text).contains("TRAFFIC_SECRET") {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("the first connection never completed")
        .unwrap()
        .unwrap();
    let keys = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .unwrap()
        .unwrap();
    assert!(keys.contains("TRAFFIC_SECRET"), "{keys}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Retry is on by default: the first Initial is answered statelessly, the second (with the
/// token) creates the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_validates_before_accepting() {
    let server = builtin_server(ServerConfig::default()).await;
    let (_ep, client) = connect(&server).await;
    let resp = client.send(get(&server, "/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let stats = server.stats();
    // Every Initial without a token is answered with a Retry (a client may send more than one
    // before the first Retry arrives); exactly one connection results.
    assert!(stats.retries_sent >= 1, "{stats:?}");
    assert_eq!(stats.connections_accepted, 1);
    // Routed: the handshake connection ID plus the spare one issued once established (the
    // client allows two active connection IDs, quiche's default).
    assert_eq!(server.endpoint().route_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_can_be_turned_off() {
    let mut config = ServerConfig::default();
    config.quic.retry = false;
    let server = builtin_server(config).await;
    let (ep, client) = connect(&server).await;
    let resp = client.send(get(&server, "/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let stats = server.stats();
    assert_eq!(stats.retries_sent, 0);
    assert_eq!(stats.connections_accepted, 1);
    // The client's original DCID route is removed with the connection.
    client.close();
    eventually(
        Duration::from_secs(5),
        "routes gone after close",
        || async {
            server.endpoint().connection_count() == 0 && server.endpoint().route_count() == 0
        },
    )
    .await;
    drop(ep);
}

/// A CA file is read once, when the client endpoint binds (not on every connect, on an async
/// thread): a missing or invalid file is reported there, naming it; a good one is used for
/// every connection without being read again (it is deleted after bind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_is_read_once_at_bind() {
    use troupe::h3::{ClientEndpoint, H3Settings};
    use troupe::transport::{QuicSettings, TlsConfig, Verify};
    let server = builtin_server(ServerConfig::default()).await;
    let dir = std::env::temp_dir().join(format!("troupe-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tls = |path: &std::path::Path| TlsConfig {
        identity: None,
        verify: Verify::CaFile(path.to_path_buf()),
    };
    let bind = |tls| {
        ClientEndpoint::bind(
            loopback(),
            QuicSettings::default(),
            tls,
            H3Settings::default(),
        )
    };
    let missing = dir.join("missing.pem");
    let err = bind(tls(&missing))
        .await
        .err()
        .expect("a missing CA file must fail at bind");
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, b"not a certificate").unwrap();
    let err = bind(tls(&garbage))
        .await
        .err()
        .expect("an invalid CA file must fail at bind");
    assert!(err.to_string().contains("garbage.pem"), "{err}");
    let good = dir.join("ca.pem");
    std::fs::write(&good, server.identity().certificate_pem()).unwrap();
    let ep = bind(tls(&good)).await.unwrap();
    std::fs::remove_file(&good).unwrap();
    for _ in 0..2 {
        let c = ep.connect(server.local_addr(), "localhost").await.unwrap();
        assert_eq!(c.send(get(&server, "/")).await.unwrap().status(), 200);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server named by IP address is verified against its certificate's IP address entries (the
/// generated certificate names 127.0.0.1 and ::1), over IPv4 and IPv6; a certificate that does
/// not name the address is refused, and the error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_named_by_ip_address_are_verified() {
    use troupe::h3::{ClientEndpoint, H3Settings, Server};
    use troupe::transport::{Identity, QuicSettings, TlsConfig, Verify};
    let server = builtin_server(ServerConfig::default()).await;
    let ep = client_endpoint(&server, QuicSettings::default()).await;
    let c = ep.connect(server.local_addr(), "127.0.0.1").await.unwrap();
    assert_eq!(c.send(get(&server, "/")).await.unwrap().status(), 200);
    // Another address in the name is refused, though the chain is trusted.
    let Err(e) = ep.connect(server.local_addr(), "127.0.0.2").await else {
        panic!("a certificate without 127.0.0.2 must be refused");
    };
    assert!(
        e.to_string()
            .contains("does not name the address 127.0.0.2"),
        "{e}"
    );

    // IPv6, by bracketed or bare literal.
    let svc = troupe::service::Builtin::new();
    let server6 = Server::bind(
        "[::1]:0".parse().unwrap(),
        ServerConfig::default(),
        move |req| {
            let svc = svc.clone();
            async move { svc.handle(req).await }
        },
    )
    .await
    .unwrap();
    let ep6 = ClientEndpoint::bind(
        "[::1]:0".parse().unwrap(),
        QuicSettings::default(),
        trusting(&server6),
        H3Settings::default(),
    )
    .await
    .unwrap();
    for name in ["::1", "[::1]"] {
        let c = ep6.connect(server6.local_addr(), name).await.unwrap();
        let r = c
            .send(
                http::Request::get(format!("https://[::1]:{}/", server6.local_addr().port()))
                    .body(troupe::h3::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    // A certificate for a host name only: connecting by address is refused, clearly.
    let named = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let id = Identity::from_pem(
        named.cert.pem().as_bytes(),
        named.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let mut config = ServerConfig::default();
    config.tls.identity = Some(id);
    let svc = troupe::service::Builtin::new();
    let hostname_only = Server::bind(loopback(), config, move |req| {
        let svc = svc.clone();
        async move { svc.handle(req).await }
    })
    .await
    .unwrap();
    let ep = ClientEndpoint::bind(
        loopback(),
        QuicSettings::default(),
        TlsConfig {
            identity: None,
            verify: Verify::CaPem(named.cert.pem().into_bytes()),
        },
        H3Settings::default(),
    )
    .await
    .unwrap();
    let Err(e) = ep.connect(hostname_only.local_addr(), "127.0.0.1").await else {
        panic!("a certificate without IP address entries must be refused for an address");
    };
    assert!(
        e.to_string()
            .contains("does not name the address 127.0.0.1"),
        "{e}"
    );
    // By its host name it is fine.
    assert!(ep
        .connect(hostname_only.local_addr(), "localhost")
        .await
        .is_ok());
}

/// A second connection from the same client endpoint to a server it has talked to resumes the
/// TLS session (a shorter handshake; 0-RTT stays off); the first does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_resumes_the_session() {
    let server = builtin_server(ServerConfig::default()).await;
    let ep = client_endpoint(&server, troupe::transport::QuicSettings::default()).await;
    let first = ep.connect(server.local_addr(), "localhost").await.unwrap();
    assert_eq!(first.send(get(&server, "/")).await.unwrap().status(), 200);
    let info = first.connection().info().await.unwrap();
    assert!(!info.resumed, "nothing to resume yet");
    let second = ep.connect(server.local_addr(), "localhost").await.unwrap();
    assert_eq!(second.send(get(&server, "/")).await.unwrap().status(), 200);
    let info = second.connection().info().await.unwrap();
    assert!(info.resumed, "the second connection did not resume");
}

/// Short-header packets nobody can read are dropped where they belong: one naming no
/// connection is counted as an unknown connection, one too short to hold a connection ID as
/// unparseable, and one naming a live connection (from another address, with a payload that
/// does not decrypt) reaches that connection, which drops it and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_short_header_packets_are_dropped_where_they_belong() {
    let server = builtin_server(ServerConfig::default()).await;
    let (_ep, client) = connect(&server).await;
    ordinary_requests(&server, &client, 1).await;
    let infos = server_connection_infos(&server).await;
    assert_eq!(infos.len(), 1);
    // A server connection's trace id is its first connection ID, in hex.
    let live: Vec<u8> = (0..infos[0].trace_id.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&infos[0].trace_id[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(live.len(), 16, "a server connection ID is 16 bytes");
    let before = server.stats();

    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let short = |dcid: &[u8]| {
        let mut d = vec![0x40];
        d.extend_from_slice(dcid);
        d.extend_from_slice(&[0x5a; 40]);
        d
    };
    sock.send_to(&short(&[0xee; 16]), server.local_addr())
        .unwrap();
    sock.send_to(&[0x40, 1, 2, 3, 4], server.local_addr())
        .unwrap();
    for _ in 0..3 {
        sock.send_to(&short(&live), server.local_addr()).unwrap();
    }
    eventually(
        Duration::from_secs(5),
        "all five datagrams received",
        || async { server.stats().datagrams_received >= before.datagrams_received + 5 },
    )
    .await;
    let after = server.stats();
    assert_eq!(
        after.dropped_unknown_connection,
        before.dropped_unknown_connection + 1
    );
    assert_eq!(after.dropped_unparseable, before.dropped_unparseable + 1);
    assert_eq!(after.dropped_queue_full, before.dropped_queue_full);
    // The connection took the three it was sent and is none the worse.
    ordinary_requests(&server, &client, 3).await;
    assert_eq!(server.endpoint().connection_count(), 1);
    assert_eq!(server.stats().connections_closed, 0);
}
