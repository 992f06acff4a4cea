//! Interop with tokio-quiche, a peer nobody here wrote: our client against its server, its client
//! against our server; GET and POST, on loopback UDP.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use troupe::h3::{Body, ClientEndpoint, H3Settings, Server, ServerConfig};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn troupe_client_against_tokio_quiche_server() {
    let dir = temp_dir("tqs");
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
    let _guard = Reaped(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("tq-serve listening on ")
        .unwrap_or_else(|| panic!("unexpected tq-serve output {line:?}"))
        .parse()
        .unwrap();

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
