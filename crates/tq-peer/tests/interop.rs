//! Interop with tokio-quiche, a peer nobody here wrote: our client against its server, its client
//! against our server; GET and POST, on loopback UDP.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use troupe::h3::{Body, ClientEndpoint, H3Settings, Server, ServerConfig};
use troupe::masque::egress::{Allow, EgressPolicy};
use troupe::masque::template::{TargetHost, UdpTemplate, DEFAULT_TEMPLATE};
use troupe::masque::{ConnectUdp, ProxyConfig, TunnelError, UdpTunnel};
use troupe::service::{pattern_byte, Builtin};
use troupe::transport::{QuicSettings, TlsConfig, Verify};

/// Kills the child process when dropped, so a failing test leaves nothing running.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("troupe-interop-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn check_pattern(body: &[u8], n: usize) {
    assert_eq!(body.len(), n);
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(i as u64)),
        "pattern mismatch"
    );
}

fn payload(n: usize) -> Bytes {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect()
}

fn rcgen_pair() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

/// Starts `tq-serve` with a fresh self-signed certificate for `localhost`; returns the guard
/// that stops it, its address and the certificate.
fn start_tq_serve(dir: &std::path::Path) -> (Reaped, SocketAddr, String) {
    let (cert_pem, key_pem) = rcgen_pair();
    std::fs::write(dir.join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &key_pem).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tq-serve"))
        .args(["--listen", "127.0.0.1:0", "--cert"])
        .arg(dir.join("cert.pem"))
        .arg("--key")
        .arg(dir.join("key.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tq-serve");
    let stdout = child.stdout.take().unwrap();
    let guard = Reaped(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("tq-serve listening on ")
        .unwrap_or_else(|| panic!("unexpected tq-serve output {line:?}"))
        .parse()
        .unwrap();
    (guard, addr, cert_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn troupe_client_against_tokio_quiche_server() {
    let dir = temp_dir("tqs");
    let (_guard, addr, cert_pem) = start_tq_serve(&dir);

    let tls = TlsConfig {
        identity: None,
        verify: Verify::CaPem(cert_pem.into_bytes()),
    };
    let ep = ClientEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        QuicSettings::default(),
        tls,
        H3Settings::default(),
    )
    .await
    .unwrap();
    let client = ep
        .connect(addr, "localhost")
        .await
        .expect("handshake with tokio-quiche");
    let base = format!("https://localhost:{}", addr.port());

    let resp = client
        .send(
            http::Request::get(format!("{base}/"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.into_body().collect().await.unwrap(),
        Bytes::from_static(b"hello from tq-serve\n")
    );

    let n = 1 << 20;
    let resp = client
        .send(
            http::Request::get(format!("{base}/bytes/{n}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    check_pattern(&resp.into_body().collect().await.unwrap(), n);

    let data = payload(3 << 20);
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        client.send(
            http::Request::post(format!("{base}/echo"))
                .body(Body::from(data.clone()))
                .unwrap(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.into_body().collect().await.unwrap() == data,
        "echo differs"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn our_server() -> Server {
    let svc = Builtin::new();
    Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::default(),
        move |req| {
            let svc = svc.clone();
            async move { svc.handle(req).await }
        },
    )
    .await
    .unwrap()
}

async fn tq_get(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tq-get"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run tq-get")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_quiche_client_against_troupe_server() {
    let server = our_server().await;
    let dir = temp_dir("tqg");
    let base = format!("https://localhost:{}", server.local_addr().port());

    let out = tq_get(vec![format!("{base}/"), "-k".into()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, troupe::service::GREETING.as_bytes());

    let n = 1 << 20;
    let out = tq_get(vec![
        format!("{base}/bytes/{n}"),
        "-k".into(),
        "-n".into(),
        "3".into(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 3 * n);
    for part in out.stdout.chunks(n) {
        check_pattern(part, n);
    }

    let data = payload(3 << 20);
    let input = dir.join("post.bin");
    std::fs::write(&input, &data).unwrap();
    let out = tq_get(vec![
        format!("{base}/echo"),
        "-k".into(),
        "--data".into(),
        input.display().to_string(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == data,
        "echo differs ({} bytes back)",
        out.stdout.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

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

/// The payload of datagram `seq`: `seq` big endian, then bytes derived from it; 4 to 1200 bytes.
fn datagram(seq: u32) -> Vec<u8> {
    let len = 4 + (seq as usize * 7919) % 1197;
    let mut p = seq.to_be_bytes().to_vec();
    p.extend((4..len).map(|i| (seq as usize * 31 + i) as u8));
    p
}

/// CONNECT-UDP from troupe's client through tokio-quiche's server side (its extended CONNECT
/// and flows, in `tq-serve`) to a UDP echo server: every datagram comes back intact, and a
/// refusal's status and Proxy-Status reach the tunnel's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn troupe_udp_tunnel_through_a_tokio_quiche_proxy() {
    let dir = temp_dir("tqm");
    let (_guard, addr, cert_pem) = start_tq_serve(&dir);
    let echo = echo_server().await;
    let tls = TlsConfig {
        identity: None,
        verify: Verify::CaPem(cert_pem.into_bytes()),
    };
    // QUIC datagrams on: tokio-quiche has no capsules, and it sends its DATAGRAM frames without
    // asking whether we took HTTP datagrams, so without them its echoes would be lost.
    let mut quic = QuicSettings::default();
    quic.datagrams = true;
    let ep = ClientEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        quic,
        tls,
        H3Settings::default(),
    )
    .await
    .unwrap();
    let client = ep.connect(addr, "localhost").await.unwrap();
    let authority = format!("localhost:{}", addr.port());
    let template = UdpTemplate::parse(DEFAULT_TEMPLATE).unwrap();

    // tq-serve relays to loopback only: anything else is its 403 with Proxy-Status.
    let refused = UdpTunnel::open(
        &client,
        &authority,
        &template,
        &TargetHost::Ip("192.0.2.1".parse().unwrap()),
        9,
        None,
    )
    .await;
    match refused {
        Err(TunnelError::Refused {
            status,
            proxy_status,
            ..
        }) => {
            assert_eq!(status, 403);
            assert_eq!(
                proxy_status.as_deref(),
                Some("tq-serve; error=destination_ip_prohibited")
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    let mut tunnel = UdpTunnel::open(
        &client,
        &authority,
        &template,
        &TargetHost::Ip(echo.ip()),
        echo.port(),
        None,
    )
    .await
    .expect("tunnel through tokio-quiche");
    const N: u32 = 2_000;
    const WINDOW: u32 = 32;
    let (mut next, mut got) = (0u32, 0u32);
    let mut seen = vec![false; N as usize];
    while got < N {
        while next < N && next - got < WINDOW {
            tunnel.send(&datagram(next)).unwrap();
            next += 1;
        }
        let p = tokio::time::timeout(Duration::from_secs(5), tunnel.recv())
            .await
            .unwrap_or_else(|_| panic!("no echo after {got} of {N}: {:?}", tunnel.stats()))
            .expect("tunnel closed");
        let seq = u32::from_be_bytes(p[..4].try_into().unwrap());
        assert_eq!(
            &p[..],
            &datagram(seq)[..],
            "datagram {seq} came back changed"
        );
        assert!(!seen[seq as usize], "datagram {seq} came back twice");
        seen[seq as usize] = true;
        got += 1;
    }
    // Every one went out in a QUIC DATAGRAM frame: tokio-quiche takes no capsules.
    let stats = tunnel.stats();
    assert_eq!(stats.sent_capsules.load(Ordering::Relaxed), 0);
    assert_eq!(stats.sent_datagrams.load(Ordering::Relaxed), u64::from(N));
    assert_eq!(stats.received.load(Ordering::Relaxed), u64::from(N));
    tunnel.close();
    let _ = std::fs::remove_dir_all(&dir);
}

async fn tq_udp(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tq-udp"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run tq-udp")
    })
    .await
    .unwrap()
}

/// CONNECT-UDP from tokio-quiche's client side (`tq-udp`) through `troupe`'s proxy to a UDP
/// echo server: 2,000 datagrams of 4 to 1,200 bytes both ways, each checked byte for byte by
/// tq-udp, counted by the proxy's flow; a target outside `--allow` is refused with 403 and
/// Proxy-Status, and opens no flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_quiche_udp_client_through_troupe_proxy() {
    let echo = echo_server().await;
    let mut pc = ProxyConfig::default();
    pc.egress = EgressPolicy::new(
        vec![echo.to_string().parse::<Allow>().unwrap()],
        Vec::new(),
        Vec::new(),
    );
    let handler = ConnectUdp::new(pc);
    let mut config = ServerConfig::default();
    config.h3.extended_connect = true;
    // tokio-quiche sends DATAGRAM frames whether or not the proxy took them (it has no
    // capsules to fall back on), so they must be on for anything to get through.
    config.quic.datagrams = true;
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), config, handler.clone())
        .await
        .unwrap();
    let proxy = format!("localhost:{}", server.local_addr().port());
    let stats = handler.stats();

    // Loopback is refused unless allowed, and only the echo server's port is.
    let out = tq_udp(vec![
        "--proxy".into(),
        proxy.clone(),
        "--target".into(),
        format!("127.0.0.1:{}", echo.port().wrapping_add(1).max(1)),
        "--insecure".into(),
        "--count".into(),
        "1".into(),
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("refused the tunnel: 403") && err.contains("destination_ip_prohibited"),
        "{err}"
    );
    assert_eq!(stats.flows_opened.load(Ordering::Relaxed), 0);

    let out = tq_udp(vec![
        "--proxy".into(),
        proxy,
        "--target".into(),
        echo.to_string(),
        "--insecure".into(),
        "--count".into(),
        "2000".into(),
    ])
    .await;
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{line}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        line.contains("sent=2000 received=2000 lost=0 corrupt=0"),
        "{line}"
    );
    assert_eq!(stats.flows_opened.load(Ordering::Relaxed), 1);
}
