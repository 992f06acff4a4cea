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
    tunnel + client_conn + flows + proxy.stats().ended_drops()
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
            handler.stats().live_flows().is_empty() && server.endpoint().connection_children() == 0
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
    assert_eq!(handler.stats().flows_opened.load(Ordering::Relaxed), 0);
    assert_eq!(handler.stats().refused.load(Ordering::Relaxed), 2);

    // A token: none or a wrong one is 401; the right one opens.
    let (server, handler) = proxy(&[&echo.to_string()], true, |c| {
        c.token = Some("s3cret".into())
    })
    .await;
    let (_ep, client) = client_to(&server, true).await;
    let authority = format!("localhost:{}", server.local_addr().port());
    let host = TargetHost::Ip(echo.ip());
    for token in [None, Some("wrong")] {
        match UdpTunnel::open(&client, &authority, &template(), &host, echo.port(), token).await {
            Err(TunnelError::Refused {
                status,
                proxy_status,
                ..
            }) => {
                assert_eq!(status, 401);
                assert!(proxy_status.unwrap().contains("http_request_denied"));
            }
            other => panic!("expected 401, got {other:?}"),
        }
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
        assert_eq!(server.endpoint().connection_children(), 1);
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
                    && server.endpoint().connection_children() == 0
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
        handler.stats().live_flows().is_empty() && server.endpoint().connection_children() == 0
    })
    .await;
    // The tunnel learns it: nothing more comes.
    assert!(tokio::time::timeout(Duration::from_secs(2), t.recv())
        .await
        .unwrap()
        .is_none());
    let _ = Arc::new(());
}
