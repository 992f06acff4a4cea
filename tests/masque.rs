//! CONNECT-UDP end to end on loopback: a troupe proxy, a troupe client tunnel, and a UDP echo
//! server as the target. Datagrams round trip intact over QUIC DATAGRAM frames and, with those
//! off, over DATAGRAM capsules; every loss is matched by a drop counter; refusals carry the
//! right status and Proxy-Status; the flow actor lives and dies with its CONNECT stream.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use troupe::h3::{ClientEndpoint, H3Settings, Server, ServerConfig};
use troupe::masque::egress::{Allow, EgressPolicy};
use troupe::masque::template::{TargetHost, UdpTemplate, DEFAULT_TEMPLATE};
use troupe::masque::{ConnectUdp, ProxyConfig, TunnelError, UdpTunnel};
use troupe::transport::QuicSettings;

/// A UDP echo server on 127.0.0.1; returns its address.
async fn echo_server() -> SocketAddr {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, from)) = s.recv_from(&mut buf).await else {
                return;
            };
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// A proxy allowing `allow` (loopback is refused by default), with QUIC datagrams on or off.
async fn proxy(
    allow: &[&str],
    datagrams: bool,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> (Server, ConnectUdp) {
    init_tracing();
    let mut pc = ProxyConfig::default();
    pc.egress = EgressPolicy::new(
        allow.iter().map(|a| a.parse::<Allow>().unwrap()).collect(),
        Vec::new(),
        Vec::new(),
    );
    tweak(&mut pc);
    let handler = ConnectUdp::new(pc);
    let mut config = ServerConfig::default();
    config.quic.datagrams = datagrams;
    config.h3.extended_connect = true;
    let server = Server::bind(loopback(), config, handler.clone())
        .await
        .unwrap();
    (server, handler)
}

async fn client_to(server: &Server, datagrams: bool) -> (ClientEndpoint, troupe::h3::Client) {
    let mut quic = QuicSettings::default();
    quic.datagrams = datagrams;
    let ep = ClientEndpoint::bind(loopback(), quic, trusting(server), H3Settings::default())
        .await
        .unwrap();
    let c = ep.connect(server.local_addr(), "localhost").await.unwrap();
    (ep, c)
}

fn template() -> UdpTemplate {
    UdpTemplate::parse(DEFAULT_TEMPLATE).unwrap()
}

async fn tunnel(
    server: &Server,
    client: &troupe::h3::Client,
    target: SocketAddr,
) -> Result<UdpTunnel, TunnelError> {
    UdpTunnel::open(
        client,
        &format!("localhost:{}", server.local_addr().port()),
        &template(),
        &TargetHost::Ip(target.ip()),
        target.port(),
        None,
    )
    .await
}

/// The status and Proxy-Status of a refused tunnel; panics on anything else.
fn refusal(r: Result<UdpTunnel, TunnelError>) -> (http::StatusCode, String) {
    match r {
        Err(TunnelError::Refused {
            status,
            proxy_status,
            ..
        }) => (status, proxy_status.unwrap_or_default()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A payload of `len` bytes (at least 4) carrying sequence number `seq`.
fn payload(seq: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len.max(4)];
    p[..4].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p.iter_mut().enumerate().skip(4) {
        *b = (seq as usize + i) as u8;
    }
    p
}

/// Sends `n` datagrams of mixed sizes (1 to 1200 bytes) through `t`, at most `window` in
/// flight, and returns how many came back intact.
async fn round_trip(t: &mut UdpTunnel, n: u32, window: u32) -> u32 {
    let size = |seq: u32| 1 + (seq as usize * 7919) % 1200;
    let mut next = 0u32;
    let mut got = 0u32;
    let mut seen = vec![false; n as usize];
    while got < n {
        while next < n && next - got < window {
            let len = size(next);
            let mut p = payload(next, len);
            p.truncate(len);
            t.send(&p).unwrap();
            next += 1;
        }
        match tokio::time::timeout(Duration::from_millis(500), t.recv()).await {
            Ok(Some(p)) => {
                let seq = if p.len() >= 4 {
                    u32::from_be_bytes(p[..4].try_into().unwrap())
                } else {
                    // Short payloads carry a prefix of the sequence number only: match by size.
                    (0..next)
                        .find(|s| !seen[*s as usize] && size(*s) == p.len())
                        .unwrap()
                };
                let mut want = payload(seq, size(seq));
                want.truncate(size(seq));
                assert_eq!(&p[..], &want[..], "datagram {seq} came back changed");
                assert!(!seen[seq as usize], "datagram {seq} came back twice");
                seen[seq as usize] = true;
                got += 1;
            }
            Ok(None) => panic!("tunnel closed"),
            // Lost: stop waiting for it; the counters must account for it.
            Err(_) if next == n => break,
            Err(_) => {}
        }
    }
    got
}

/// Every drop counter along the path: client tunnel, both connections, the proxy's flows.
fn counted_drops(t: &UdpTunnel, proxy: &ConnectUdp) -> u64 {
    let tunnel = t.stats().dropped_in.load(Ordering::Relaxed)
        + t.stats().dropped_out.load(Ordering::Relaxed);
    let client_conn: u64 = t.connection().drops.counts().iter().map(|(_, n)| n).sum();
    let flows: u64 = proxy.stats().live_flows().iter().map(|f| f.dropped()).sum();
    tunnel + client_conn + flows
}

async fn ten_thousand_datagrams(datagrams: bool) {
    let echo = echo_server().await;
    let (server, handler) = proxy(&[&echo.to_string()], datagrams, |_| {}).await;
    let (_ep, client) = client_to(&server, datagrams).await;
    let mut t = tunnel(&server, &client, echo).await.unwrap();
    let got = round_trip(&mut t, 10_000, 32).await;
    let lost = 10_000 - got;
    let drops = counted_drops(&t, &handler);
    assert!(
        u64::from(lost) <= drops,
        "{lost} datagrams lost but only {drops} counted"
    );
    {
        let flows = handler.stats().live_flows();
        assert_eq!(flows.len(), 1);
        let f = &flows[0];
        if datagrams {
            assert!(t.stats().sent_datagrams.load(Ordering::Relaxed) > 9_000);
            assert!(f.to_client_datagrams.load(Ordering::Relaxed) > 9_000);
        } else {
            assert_eq!(t.stats().sent_datagrams.load(Ordering::Relaxed), 0);
            assert_eq!(t.stats().sent_capsules.load(Ordering::Relaxed), 10_000);
            assert!(f.from_client_capsules.load(Ordering::Relaxed) > 9_000);
            assert!(f.to_client_capsules.load(Ordering::Relaxed) > 9_000);
        }
    }
    eprintln!("datagrams={datagrams}: {got} of 10000 came back; {drops} counted drops");
    t.close();
    eventually(
        Duration::from_secs(5),
        "the flow ends with its stream",
        || async {
            handler.stats().live_flows().is_empty()
                && server.endpoint().serving_stream_actors().await == 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_datagrams_round_trip_over_quic_datagrams() {
    ten_thousand_datagrams(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_datagrams_round_trip_over_capsules_when_datagrams_are_off() {
    ten_thousand_datagrams(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_status_and_proxy_status_and_open_nothing() {
    let echo = echo_server().await;
    let (server, handler) = proxy(&[], true, |c| c.token = None).await;
    let (_ep, client) = client_to(&server, true).await;
    // Loopback is refused by default.
    match tunnel(&server, &client, echo).await {
        Err(TunnelError::Refused {
            status,
            proxy_status,
            body,
        }) => {
            assert_eq!(status, 403);
            let ps = proxy_status.unwrap();
            assert!(
                ps.starts_with("troupe;error=destination_ip_prohibited"),
                "{ps}"
            );
            assert!(
                ps.contains("loopback") && body.contains("loopback"),
                "{ps} {body}"
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }
    // IPv4-mapped loopback too.
    let mapped = TargetHost::Ip("::ffff:127.0.0.1".parse().unwrap());
    let r = UdpTunnel::open(
        &client,
        &format!("localhost:{}", server.local_addr().port()),
        &template(),
        &mapped,
        echo.port(),
        None,
    )
    .await;
    assert!(
        matches!(r, Err(TunnelError::Refused { status, .. }) if status == 403),
        "{r:?}"
    );
    // A host name that resolves to loopback: the resolved address is what is checked.
    let (status, ps) = refusal(
        UdpTunnel::open(
            &client,
            &format!("localhost:{}", server.local_addr().port()),
            &template(),
            &TargetHost::Name("localhost".into()),
            echo.port(),
            None,
        )
        .await,
    );
    assert_eq!(status, 403);
    assert!(
        ps.contains("destination_ip_prohibited") && ps.contains("loopback"),
        "{ps}"
    );
    assert_eq!(handler.stats().flows_opened.load(Ordering::Relaxed), 0);
    assert_eq!(handler.stats().refused.load(Ordering::Relaxed), 3);

    // A token: none or a wrong one is 401; the right one opens.
    let (server, handler) = proxy(&[&echo.to_string()], true, |c| {
        c.token = Some("s3cret".into())
    })
    .await;
    let (_ep, client) = client_to(&server, true).await;
    let authority = format!("localhost:{}", server.local_addr().port());
    let host = TargetHost::Ip(echo.ip());
    for token in [None, Some("wrong")] {
        let r = UdpTunnel::open(&client, &authority, &template(), &host, echo.port(), token).await;
        let (status, ps) = refusal(r);
        assert_eq!(status, 401);
        assert!(ps.contains("http_request_denied"), "{ps}");
    }
    let mut t = UdpTunnel::open(
        &client,
        &authority,
        &template(),
        &host,
        echo.port(),
        Some("s3cret"),
    )
    .await
    .unwrap();
    t.send(b"hello").unwrap();
    assert_eq!(&t.recv().await.unwrap()[..], b"hello");
    assert_eq!(handler.stats().flows_opened.load(Ordering::Relaxed), 1);

    // A path the template does not match: 404; a bad port: 400.
    let other = UdpTemplate::parse("/elsewhere/{target_host}/{target_port}").unwrap();
    let r = UdpTunnel::open(
        &client,
        &authority,
        &other,
        &host,
        echo.port(),
        Some("s3cret"),
    )
    .await;
    assert!(
        matches!(r, Err(TunnelError::Refused { status, .. }) if status == 404),
        "{r:?}"
    );
    let r = UdpTunnel::open(&client, &authority, &template(), &host, 0, Some("s3cret")).await;
    assert!(
        matches!(r, Err(TunnelError::Refused { status, .. }) if status == 400),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fin_and_reset_of_the_connect_stream_each_stop_the_flow() {
    let echo = echo_server().await;
    let (server, handler) = proxy(&[&echo.to_string()], true, |_| {}).await;
    let (_ep, client) = client_to(&server, true).await;
    for reset in [false, true] {
        let mut t = tunnel(&server, &client, echo).await.unwrap();
        t.send(b"ping").unwrap();
        assert_eq!(&t.recv().await.unwrap()[..], b"ping");
        assert_eq!(handler.stats().live_flows().len(), 1);
        assert_eq!(server.endpoint().serving_stream_actors().await, 1);
        if reset {
            t.reset(troupe::h3::codes::H3_REQUEST_CANCELLED);
        } else {
            t.close();
        }
        eventually(
            Duration::from_secs(5),
            "the flow actor and its stream actor stop",
            || async {
                handler.stats().live_flows().is_empty()
                    && server.endpoint().serving_stream_actors().await == 0
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flow_closes_its_stream() {
    let echo = echo_server().await;
    let (server, handler) = proxy(&[&echo.to_string()], true, |c| {
        c.flow.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let (_ep, client) = client_to(&server, true).await;
    let mut t = tunnel(&server, &client, echo).await.unwrap();
    t.send(b"x").unwrap();
    assert_eq!(&t.recv().await.unwrap()[..], b"x");
    eventually(Duration::from_secs(5), "the idle flow ends", || async {
        handler.stats().live_flows().is_empty()
            && server.endpoint().serving_stream_actors().await == 0
    })
    .await;
    // The tunnel learns it: nothing more comes.
    assert!(tokio::time::timeout(Duration::from_secs(2), t.recv())
        .await
        .unwrap()
        .is_none());
    let _ = Arc::new(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_is_a_node_under_its_stream_in_the_live_tree() {
    let echo = echo_server().await;
    let (server, _handler) = proxy(&[&echo.to_string()], true, |_| {}).await;
    let (_ep, client) = client_to(&server, true).await;
    let mut t = tunnel(&server, &client, echo).await.unwrap();
    for i in 0..10u8 {
        t.send(&[i; 100]).unwrap();
        assert_eq!(t.recv().await.unwrap().len(), 100);
    }
    let snap = server.snapshot().await;
    let stream = &snap.connections[0].streams[0];
    assert_eq!(stream.method.as_deref(), Some("CONNECT"));
    assert_eq!(stream.flows.len(), 1, "{stream:?}");
    let f = &stream.flows[0];
    assert_eq!(f.target, echo.to_string());
    assert_eq!(f.actor.kind, troupe::transport::ActorKind::Flow);
    assert_eq!(
        (f.from_client, f.to_target, f.from_target, f.to_client),
        (10, 10, 10, 10)
    );
    assert_eq!((f.to_target_bytes, f.from_target_bytes), (1000, 1000));
    assert!(f.actor.meter.messages_handled >= 1);
    let text = troupe::transport::render::tree_text(std::slice::from_ref(&snap));
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("└─ flow to {echo}"))),
        "{text}"
    );
    // Operators see it through the admin endpoint: in /tree.txt, and counted in /metrics.
    let server = Arc::new(server);
    let admin = troupe::admin::Admin::serve_servers(
        troupe::admin::AdminConfig::new(loopback_tcp()),
        std::slice::from_ref(&server),
    )
    .await
    .unwrap();
    let ac = troupe::admin::AdminClient::new(admin.local_addr(), None);
    assert!(ac.get("/tree.txt").await.unwrap().contains("flow to "));
    let metrics = ac.get("/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"troupe_actors_live{kind="flow"} 1.0"#),
        "{metrics}"
    );
    admin.shutdown().await;
}

/// GOAWAY (what a graceful shutdown sends first) ends every flow: the flow actor stops, its
/// stream ends both ways, and the tunnel learns the proxy closed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_ends_the_flows_and_their_streams() {
    let echo = echo_server().await;
    let (server, handler) = proxy(&[&echo.to_string()], true, |_| {}).await;
    let (_ep, client) = client_to(&server, true).await;
    let mut t = tunnel(&server, &client, echo).await.unwrap();
    t.send(b"before").unwrap();
    assert_eq!(&t.recv().await.unwrap()[..], b"before");
    server.endpoint().stop_accepting();
    server.endpoint().broadcast(|| troupe::h3::H3Msg::GoAway);
    eventually(
        Duration::from_secs(5),
        "the flow and its stream end",
        || async {
            handler.stats().live_flows().is_empty()
                && server.endpoint().serving_stream_actors().await == 0
        },
    )
    .await;
    assert!(tokio::time::timeout(Duration::from_secs(2), t.recv())
        .await
        .unwrap()
        .is_none());
}

/// Opens a CONNECT-UDP stream to `target` by hand on `raw` and waits for its flow; returns the
/// stream id.
async fn raw_connect_udp(
    raw: &mut common::raw::RawClient,
    target: SocketAddr,
    handler: &ConnectUdp,
) -> u64 {
    let before = handler.stats().flows_opened.load(Ordering::Relaxed);
    let path = template().expand(&TargetHost::Ip(target.ip()), target.port());
    let s = raw.request_open(&[
        (":method", "CONNECT"),
        (":protocol", "connect-udp"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", &path),
        ("capsule-protocol", "?1"),
    ]);
    raw.exchange().await;
    eventually(Duration::from_secs(5), "the flow opens", || async {
        handler.stats().flows_opened.load(Ordering::Relaxed) == before + 1
    })
    .await;
    s
}

/// The connection's datagram drops, from the snapshot.
async fn drops(server: &Server) -> Vec<(String, u64)> {
    let snap = server.snapshot().await;
    snap.connections
        .iter()
        .flat_map(|c| {
            c.datagram_drops
                .iter()
                .map(|d| (d.reason.to_string(), d.count))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_for_no_connect_udp_stream_create_nothing_and_are_counted() {
    // Plain requests read their whole body first, so a GET whose body never ends stays open.
    let (server, handler) = proxy(&[], true, |c| {
        c.fallback = Some(Arc::new(
            |req: http::Request<troupe::h3::RecvBody>| async move {
                let _ = req.into_body().collect().await;
                http::Response::new(troupe::h3::Body::from("done"))
            },
        ));
    })
    .await;
    let mut raw = common::raw::RawClient::connect_with_datagrams(server.local_addr()).await;
    // A stream never opened.
    for _ in 0..3 {
        raw.send_datagram(8, b"\x00hello");
    }
    // An open stream that is not CONNECT-UDP (a GET whose body never ends).
    let get = raw.request_open(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/"),
    ]);
    raw.exchange().await;
    eventually(Duration::from_secs(5), "the GET is routed", || async {
        routed_count(&server).await == 1
    })
    .await;
    for _ in 0..2 {
        raw.send_datagram(get, b"\x00hello");
    }
    let want = vec![
        ("unknown_stream".to_string(), 3),
        ("no_flow".to_string(), 2),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        raw.exchange().await;
        let got = drops(&server).await;
        if got == want {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "drops {got:?}");
    }
    assert!(handler.stats().live_flows().is_empty());
    assert_eq!(handler.stats().flows_opened.load(Ordering::Relaxed), 0);
    // No flow actor was made for anything.
    let snap = server.snapshot().await;
    assert!(snap.connections[0]
        .streams
        .iter()
        .all(|s| s.flows.is_empty()));
}

/// FIN and RESET of the CONNECT stream, each by a raw client: the flow ends, and the
/// datagrams the client sends for that stream afterwards are dropped and counted (as
/// `unknown_stream` once the stream is gone, `no_flow` while it lingers), forwarding nothing
/// and opening no flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_after_the_connect_stream_ends_are_dropped_and_counted() {
    let echo = echo_server().await;
    let (server, handler) = proxy(&[&echo.to_string()], true, |_| {}).await;
    for (round, reset) in [false, true].into_iter().enumerate() {
        let mut raw = common::raw::RawClient::connect_with_datagrams(server.local_addr()).await;
        let s = raw_connect_udp(&mut raw, echo, &handler).await;
        let flow = handler.stats().live_flows().pop().expect("a live flow");
        raw.send_datagram(s, b"\x00ping");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while flow.from_target.load(Ordering::Relaxed) < 1 {
            assert!(std::time::Instant::now() < deadline, "no echo");
            raw.exchange().await;
        }
        if reset {
            raw.reset(s, troupe::h3::codes::H3_REQUEST_CANCELLED);
        } else {
            raw.send_body(s, b"", true);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            raw.exchange().await;
            // The stream actor and the flow actor under it are gone (`flow` keeps only the
            // counters alive).
            if server.endpoint().serving_stream_actors().await == 0
                && routed_count(&server).await == 0
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the flow and its stream linger (reset {reset})"
            );
        }
        let ended = |d: &[(String, u64)]| -> u64 {
            d.iter()
                .filter(|(r, _)| r == "unknown_stream" || r == "no_flow")
                .map(|(_, n)| n)
                .sum()
        };
        let before = ended(&drops(&server).await);
        for _ in 0..4 {
            raw.send_datagram(s, b"\x00late");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            raw.exchange().await;
            if ended(&drops(&server).await) == before + 4 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "late datagrams not counted: {:?}",
                drops(&server).await
            );
        }
        // Nothing went on to the target, and no flow came back for the stream.
        assert_eq!(flow.to_target.load(Ordering::Relaxed), 1);
        assert_eq!(server.endpoint().serving_stream_actors().await, 0);
        assert_eq!(
            handler.stats().flows_opened.load(Ordering::Relaxed),
            round as u64 + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarter_stream_id_past_every_stream_closes_the_connection_with_h3_datagram_error() {
    let (server, _handler) = proxy(&[], true, |_| {}).await;
    let mut raw = common::raw::RawClient::connect_with_datagrams(server.local_addr()).await;
    // 2^62 - 1 in eight bytes: as a Quarter Stream ID it names no possible stream.
    raw.send_raw_datagram(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while raw.conn.peer_error().is_none() {
        assert!(std::time::Instant::now() < deadline, "no CONNECTION_CLOSE");
        raw.exchange().await;
    }
    let e = raw.conn.peer_error().unwrap();
    assert!(e.is_app);
    assert_eq!(e.error_code, troupe::h3::codes::H3_DATAGRAM_ERROR);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_capsule_resets_the_stream_with_h3_datagram_error() {
    let echo = echo_server().await;
    let (server, handler) = proxy(&[&echo.to_string()], true, |_| {}).await;
    let mut raw = common::raw::RawClient::connect_with_datagrams(server.local_addr()).await;
    let s = raw_connect_udp(&mut raw, echo, &handler).await;
    // A DATAGRAM capsule claiming 100,000 bytes: more than any UDP payload.
    raw.send_body(s, &[0x00, 0x80, 0x01, 0x86, 0xa0], false);
    let code = raw.wait_stopped(s).await;
    assert_eq!(code, troupe::h3::codes::H3_DATAGRAM_ERROR);
    eventually(Duration::from_secs(5), "the flow ends", || async {
        handler.stats().live_flows().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_per_connection_are_capped_and_the_rate_limit_drops_and_counts() {
    let echo = echo_server().await;
    let (server, handler) = proxy(&[&echo.to_string()], true, |c| {
        c.max_flows_per_connection = 2;
        c.flow.rate.packets_per_sec = Some(10);
    })
    .await;
    let (_ep, client) = client_to(&server, true).await;
    let mut a = tunnel(&server, &client, echo).await.unwrap();
    let _b = tunnel(&server, &client, echo).await.unwrap();
    let (status, ps) = refusal(tunnel(&server, &client, echo).await);
    assert_eq!(status, 429);
    assert!(ps.contains("connection_limit_reached"), "{ps}");
    // 100 datagrams at once against 10 per second: the burst of 10 passes, 90 are dropped
    // and counted.
    for i in 0..100u8 {
        a.send(&[i]).unwrap();
    }
    let mut back = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), a.recv()).await {
        back += 1;
    }
    let flow = handler
        .stats()
        .live_flows()
        .into_iter()
        .find(|f| f.from_client.load(Ordering::Relaxed) == 100)
        .expect("the flow that got the burst");
    let rate = flow.drop_rate.load(Ordering::Relaxed);
    assert!(
        (89..=90).contains(&rate),
        "{rate} dropped by the rate limit"
    );
    assert_eq!(back + rate, 100, "every datagram came back or was counted");
}

/// Downloads `/bytes/N` on `client` and returns how long it took, checking every byte.
async fn download(server: &Server, client: &troupe::h3::Client, n: usize) -> Duration {
    let start = std::time::Instant::now();
    let resp = client
        .send(get(server, &format!("/bytes/{n}")))
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap();
    let took = start.elapsed();
    check_pattern(&body, n);
    took
}

/// A client floods one flow (its target never reads, and the flow is limited to 1,000
/// datagrams a second) while a 10 MiB download runs on the same connection: the download
/// completes, every flooded datagram is forwarded or counted, and the speeds with and without
/// the flood are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_into_one_slow_flow_does_not_stall_a_download_on_the_same_connection() {
    const N: usize = 10 << 20;
    // A target that never reads: its socket buffer fills, then the kernel drops.
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = sink.local_addr().unwrap();
    let (server, handler) = proxy(&[&target.to_string()], true, |c| {
        c.flow.rate.packets_per_sec = Some(1000);
        let routes = troupe::service::Builtin::new();
        c.fallback = Some(Arc::new(move |req| {
            let routes = routes.clone();
            async move { routes.handle(req).await }
        }));
    })
    .await;
    let (_ep, client) = client_to(&server, true).await;
    let quiet = download(&server, &client, N).await;

    let t = tunnel(&server, &client, target).await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let payload = [7u8; 1200];
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    t.send(&payload).unwrap();
                    sent += 1;
                }
                tokio::task::yield_now().await;
            }
            (t, sent)
        })
    };
    let flooded = tokio::time::timeout(Duration::from_secs(60), download(&server, &client, N))
        .await
        .expect("the download completes during the flood");
    stop.store(true, Ordering::Relaxed);
    let (t, sent) = flood.await.unwrap();
    let mb = |d: Duration| N as f64 / (1 << 20) as f64 / d.as_secs_f64();
    eprintln!(
        "10 MiB download: {:.1} MiB/s quiet, {:.1} MiB/s during a flood of {sent} datagrams into one flow",
        mb(quiet),
        mb(flooded)
    );
    // Every datagram the client sent is accounted for: it reached the flow, or the client's
    // connection dropped it (its fair share of the send queue) and counted it.
    let client_drops: u64 = t.connection().drops.counts().iter().map(|(_, n)| n).sum();
    let flow_seen = eventually_settled(&handler, sent - client_drops).await;
    let f = handler.stats().live_flows().remove(0);
    eventually(
        Duration::from_secs(5),
        "the flow forwarded or counted every datagram it got",
        || async { f.to_target.load(Ordering::Relaxed) + f.dropped() == flow_seen },
    )
    .await;
    assert!(
        f.drop_rate.load(Ordering::Relaxed) > 0,
        "the flood was rate limited"
    );
}

/// Waits until the flow has seen `at_most` datagrams or stopped counting (the rest were lost in
/// the network: QUIC DATAGRAM frames are not retransmitted); returns what it saw.
async fn eventually_settled(handler: &ConnectUdp, at_most: u64) -> u64 {
    let mut last = u64::MAX;
    loop {
        let seen = handler.stats().live_flows()[0]
            .from_client
            .load(Ordering::Relaxed);
        if seen >= at_most || seen == last {
            return seen;
        }
        last = seen;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the calling test again inside a network namespace that has only loopback (as root,
/// with `unshare -n`), so a proxy under test can send nothing off this machine even if it
/// were wrong. Returns `true` in the child (run the body), `false` in the parent (done).
fn in_loopback_only_netns(test: &str) -> bool {
    if std::env::var_os("TROUPE_IN_NETNS").is_some() {
        return true;
    }
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        assert!(
            std::env::var_os("TROUPE_REQUIRE_NETNS").is_none(),
            "{test} needs root to make a network namespace"
        );
        eprintln!("skipped: {test} needs root (unshare -n)");
        return false;
    }
    let out = std::process::Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up && exec \"$@\"", "sh"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env("TROUPE_IN_NETNS", "1")
        .output()
        .expect("run unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "in the namespace:\n{text}");
    assert!(
        text.contains("1 passed"),
        "the test ran in the namespace:\n{text}"
    );
    false
}

async fn refused(
    server: &Server,
    client: &troupe::h3::Client,
    host: TargetHost,
    port: u16,
) -> (http::StatusCode, String) {
    let authority = format!("localhost:{}", server.local_addr().port());
    refusal(UdpTunnel::open(client, &authority, &template(), &host, port, None).await)
}

/// Targets off this machine, inside a namespace with only loopback: private and metadata
/// addresses are refused by policy (403) before any socket exists; a public address that
/// passes the policy but has no route gets 502 `destination_ip_unroutable`; a name that does
/// not resolve gets `dns_error` (or `dns_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_machine_targets_are_refused_with_the_right_proxy_status() {
    if !in_loopback_only_netns("off_machine_targets_are_refused_with_the_right_proxy_status") {
        return;
    }
    let (server, handler) = proxy(&[], true, |c| {
        c.resolve_timeout = Duration::from_secs(2);
    })
    .await;
    let (_ep, client) = client_to(&server, true).await;
    let ip = |s: &str| TargetHost::Ip(s.parse().unwrap());
    for (host, says) in [
        (ip("10.0.0.1"), "private"),
        (ip("169.254.169.254"), "cloud metadata"),
        (ip("100.64.1.1"), "CGNAT"),
        (ip("fd00::1"), "unique local"),
        (ip("64:ff9b::a00:1"), "NAT64 10.0.0.1"),
        (ip("224.0.0.1"), "multicast"),
        (ip("ff02::1"), "multicast"),
    ] {
        let (status, ps) = refused(&server, &client, host.clone(), 53).await;
        assert_eq!(status, 403, "{host}");
        assert!(
            ps.contains("destination_ip_prohibited") && ps.contains(says),
            "{host}: {ps}"
        );
    }
    assert_eq!(handler.stats().flows_opened.load(Ordering::Relaxed), 0);
    // Allowed by policy, but this namespace has no route off loopback.
    let (status, ps) = refused(&server, &client, ip("8.8.8.8"), 53).await;
    assert_eq!(status, 502);
    assert!(ps.contains("destination_ip_unroutable"), "{ps}");
    // No resolver is reachable here.
    let (status, ps) = refused(
        &server,
        &client,
        TargetHost::Name("no-such-host.invalid".into()),
        53,
    )
    .await;
    assert!(status == 502 || status == 504, "{status}");
    assert!(
        ps.contains("dns_error") || ps.contains("dns_timeout"),
        "{ps}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_protocols_get_501_and_contexts_go_to_their_handler_or_are_dropped_and_counted() {
    let echo = echo_server().await;
    // Context id 2 is the application's: it answers each datagram with the payload reversed.
    let (server, handler) = proxy(&[&echo.to_string()], true, |c| {
        c.contexts.insert(
            2,
            Arc::new(|d: troupe::masque::ContextDatagram| {
                let reversed: Vec<u8> = d.payload.iter().rev().copied().collect();
                assert!(d.reply(&reversed), "the reply could not go");
            }),
        );
    })
    .await;
    let mut raw = common::raw::RawClient::connect_with_datagrams(server.local_addr()).await;
    let ws = raw.request(&[
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/chat"),
    ]);
    let out = raw.outcome(ws).await;
    assert_eq!(out.status.as_deref(), Some("501"));
    assert!(out
        .header("proxy-status")
        .unwrap()
        .contains("http_request_error"));

    let s = raw_connect_udp(&mut raw, echo, &handler).await;
    raw.send_datagram(s, b"\x00udp payload");
    raw.send_datagram(s, b"\x05context five");
    raw.send_datagram(s, b"\x40");
    raw.send_datagram(s, b"\x02hello");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut replies = Vec::new();
    loop {
        raw.exchange().await;
        let mut buf = [0u8; 2048];
        while let Ok(n) = raw.conn.dgram_recv(&mut buf) {
            replies.push(buf[..n].to_vec());
        }
        let f = handler.stats().live_flows().remove(0);
        let (to_target, context, app) = (
            f.to_target.load(Ordering::Relaxed),
            f.drop_context.load(Ordering::Relaxed),
            f.to_application.load(Ordering::Relaxed),
        );
        // The reply, and the UDP echo: context 0.
        if (to_target, context, app) == (1, 2, 1) && replies.len() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "to target {to_target}, context drops {context}, to the application {app}, \
             replies {replies:?}"
        );
    }
    let qsid = (s / 4) as u8;
    assert!(
        replies.contains(&[&[qsid, 2][..], b"olleh"].concat()),
        "{replies:?}"
    );
    assert!(
        replies.contains(&[&[qsid, 0][..], b"udp payload"].concat()),
        "{replies:?}"
    );
}
